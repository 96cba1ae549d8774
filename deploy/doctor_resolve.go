package deploy

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	neturl "net/url"
	"os"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"
)

// A registry named by a host name (registry.lab:5000, not an IP) may
// resolve to another address on each node: zone mirrors are reached that
// way (zone DNS or each node's /etc/hosts). Doctor's probe job then runs
// labreg itself on every node (`labreg doctor node-probe`, in the node's
// network, with the node's /etc/hosts and resolv.conf, as its engine
// resolves names), and each node's check says where the name leads there
// and that it serves the probe's pinned digest.

// NodeProbeCommand is the labreg command the probe job runs on each node
// for a registry named by a host name: labreg doctor node-probe.
var NodeProbeCommand = []string{"doctor", "node-probe"}

// nodeProbeBinary is where the probe image holds labreg.
const nodeProbeBinary = "/labreg"

// NodeProbe resolves the host of hostPort (HOST:PORT) as this machine
// does and asks every address it resolves to for the manifest ref
// (REPO@sha256:...), checking that the bytes have that digest. It returns
// one line saying where the name leads and what each address served, and
// whether all of them served the pinned digest (an address that wants
// credentials counts as serving it: see errCredentials).
func NodeProbe(ctx context.Context, hostPort, ref string, tlsOn bool) (line string, ok bool) {
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil {
		return fmt.Sprintf("registry address %q: want HOST:PORT", hostPort), false
	}
	repo, dgst, ok := strings.Cut(ref, "@")
	if !ok || !strings.HasPrefix(dgst, "sha256:") {
		return fmt.Sprintf("probe reference %q: want REPO@sha256:DIGEST", ref), false
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	addrs, err := net.DefaultResolver.LookupHost(lctx, host)
	cancel()
	if err != nil {
		return probeLine(host, nil, nil, ref), false
	}
	scheme := "http"
	if tlsOn {
		scheme = "https"
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy:           nil,                                   // the engine's own proxy settings are not the container's
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // the digest is checked; trust is the engine's pull's business
	}}
	errs := make([]error, len(addrs))
	for i, a := range addrs {
		errs[i] = serves(ctx, hc, scheme+"://"+net.JoinHostPort(a, port)+"/v2/"+repo+"/manifests/"+dgst, dgst)
	}
	ok = true
	for _, e := range errs {
		ok = ok && (e == nil || errors.Is(e, errCredentials))
	}
	return probeLine(host, addrs, errs, ref), ok
}

// errCredentials: the address wants credentials, which the probe does not
// have (they are not put in the job's spec, where anyone could read them).
// The node's engine pulled the probe by that same name with the forwarded
// credentials, which shows that the address serves the pinned digest.
var errCredentials = errors.New("wants credentials")

// serves GETs url and checks that the body's digest is dgst.
func serves(ctx context.Context, hc *http.Client, url, dgst string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := hc.Do(req)
	var ue *neturl.Error
	if errors.As(err, &ue) {
		return ue.Err // the line names the address already
	}
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized {
		return errCredentials
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("manifest by digest: %s", resp.Status)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(resp.Body, 4<<20)); err != nil {
		return fmt.Errorf("reading the manifest: %w", err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != dgst {
		return fmt.Errorf("served %s, not the pinned digest", shortDigest("@"+got))
	}
	return nil
}

// probeLine is NodeProbe's report: where host leads on this node (addrs,
// none when it does not resolve) and what each address served (errs[i]
// nil: the pinned ref).
func probeLine(host string, addrs []string, errs []error, ref string) string {
	if len(addrs) == 0 {
		return fmt.Sprintf("%s does not resolve there (no /etc/hosts entry, no DNS answer)", host)
	}
	repo, _, _ := strings.Cut(ref, "@")
	pinned := repo + "@" + shortDigest(ref)
	var bad, auth []string
	for i, e := range errs {
		switch {
		case errors.Is(e, errCredentials):
			auth = append(auth, addrs[i])
		case e != nil:
			bad = append(bad, fmt.Sprintf("%s: %v", addrs[i], e))
		}
	}
	note := ""
	if len(auth) > 0 {
		note = fmt.Sprintf("; %s wants credentials: the node's engine pulled it with the forwarded ones", strings.Join(auth, ", "))
	}
	to := strings.Join(addrs, ", ")
	switch {
	case len(bad) == 0 && len(addrs) == 1:
		return fmt.Sprintf("%s resolves to %s there, which serves %s (the pinned digest%s)", host, to, pinned, note)
	case len(bad) == 0:
		return fmt.Sprintf("%s resolves to %s there, which all serve %s (the pinned digest%s)", host, to, pinned, note)
	}
	return fmt.Sprintf("%s resolves to %s there, which does not serve %s: %s", host, to, pinned, strings.Join(bad, "; "))
}

// namedRegistry reports whether advertise names its host by a name
// rather than an IP address.
func namedRegistry(advertise string) bool {
	h, _, err := net.SplitHostPort(advertise)
	if err != nil {
		h = advertise
	}
	_, err = netip.ParseAddr(h)
	return err != nil
}

// staticSelf returns the path of this labreg when it can run on a node in
// an image of its own: a statically linked Linux executable (CGO_ENABLED=0,
// as labreg's own image builds it). Otherwise it says why not.
func staticSelf() (string, error) {
	if runtime.GOOS != "linux" {
		return "", fmt.Errorf("this labreg is built for %s, not linux", runtime.GOOS)
	}
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	f, err := elf.Open(exe)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", exe, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", errors.New("this labreg is dynamically linked (build it with CGO_ENABLED=0 to have it run on the nodes, as labreg's own image does)")
		}
	}
	return exe, nil
}

// nodeProbeImage is the probe image with labreg (the executable at self)
// added at /labreg. The layer is the same for the same executable, so a
// registry that has it is not sent it again.
func nodeProbeImage(self string) (v1.Image, error) {
	base, err := probeImage()
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(self)
	if err != nil {
		return nil, err
	}
	opener := func() (io.ReadCloser, error) {
		f, err := os.Open(self)
		if err != nil {
			return nil, err
		}
		pr, pw := io.Pipe()
		go func() {
			defer f.Close()
			tw := tar.NewWriter(pw)
			err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(nodeProbeBinary, "/"), Mode: 0o755, Size: st.Size(), ModTime: time.Unix(0, 0)})
			if err == nil {
				_, err = io.Copy(tw, f)
			}
			if err == nil {
				err = tw.Close()
			}
			pw.CloseWithError(err)
		}()
		return pr, nil
	}
	layer, err := tarball.LayerFromOpener(opener, tarball.WithCompressionLevel(gzip.BestSpeed))
	if err != nil {
		return nil, err
	}
	return mutate.AppendLayers(base, layer)
}

// probeOutput reads the line a probe task printed (its last line on
// stdout).
func (c *Client) probeOutput(ctx context.Context, taskID string) (string, error) {
	lctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	rc, err := c.api.TaskLogs(lctx, taskID, client.TaskLogsOptions{ShowStdout: true})
	if err != nil {
		return "", err
	}
	defer rc.Close()
	var out strings.Builder
	if _, err := stdcopy.StdCopy(&out, io.Discard, rc); err != nil {
		return "", err
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	if last == "" {
		return "", errors.New("it printed nothing")
	}
	return last, nil
}
