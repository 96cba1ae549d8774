package deploy

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// ProbeRepo is the repository doctor pushes its probe image to (tag
// "probe"): one small layer, the same digest on every run.
const ProbeRepo = "labreg-doctor"

// probeImage is a one-file image whose command does not exist: a task of it
// that got past "preparing" has pulled it, and nothing runs.
func probeImage() (v1.Image, error) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	body := []byte("labreg doctor probe\n")
	_ = tw.WriteHeader(&tar.Header{Name: "labreg-doctor-probe", Mode: 0o644, Size: int64(len(body)), ModTime: time.Unix(0, 0)})
	_, _ = tw.Write(body)
	_ = tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b.Bytes())), nil })
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Cmd = []string{"/labreg-doctor-probe-is-not-a-command"}
	return mutate.ConfigFile(img, cf)
}

// pushProbe pushes the probe image to advertise and returns its pinned
// reference. The push checks nothing about trust (the nodes do): with TLS it
// does not verify the certificate from here.
func (c *Client) pushProbe(ctx context.Context, advertise string, tlsOn bool, cr credentials, img v1.Image, tag string) (string, error) {
	var opts []name.Option
	if !tlsOn {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.NewTag(advertise+"/"+ProbeRepo+":"+tag, opts...)
	if err != nil {
		return "", fmt.Errorf("registry.advertise %q: %w", advertise, err)
	}
	tr := remote.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the nodes verify; the digest pins the content
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithAuth(cr.authenticator()), remote.WithTransport(tr)); err != nil {
		return "", fmt.Errorf("pushing the probe image %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return ref.String() + "@" + d.String(), nil
}

// probeNodes runs the probe image as a global job and returns one check per
// node: pulled, could not pull (with the fix for that node), no result in
// time, or not probed (down, drained).
func (c *Client) probeNodes(ctx context.Context, advertise string, opts DoctorOptions, authOn bool) ([]Check, error) {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	cr, err := c.lookupCredentials(advertise)
	if err != nil {
		return nil, err
	}
	// A registry named by a host name: labreg itself runs on each node
	// and says where the name leads there (doctor_resolve.go).
	var pre []Check
	resolve := namedRegistry(advertise)
	host, _, _ := strings.Cut(advertise, ":") // the name, when resolve
	img, err := probeImage()
	tag := "probe"
	if resolve {
		self, serr := staticSelf()
		if serr != nil {
			resolve = false
			pre = append(pre, Check{Name: "registry name per node", OK: true,
				Detail: fmt.Sprintf("not checked where %s leads on each node: %v; the node checks say only whether each node pulls", host, serr)})
		} else {
			img, err = nodeProbeImage(self)
			tag = "node-probe"
		}
	}
	if err != nil {
		return nil, fmt.Errorf("making the probe image: %w", err)
	}
	image, err := c.pushProbe(ctx, advertise, opts.TLS, cr, img, tag)
	if err != nil {
		return nil, err
	}
	auth, err := cr.encoded()
	if err != nil {
		return nil, err
	}
	nl, err := c.api.NodeList(ctx, client.NodeListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	hostnames := map[string]string{}
	results := map[string]Check{} // node ID -> check
	var eligible []string
	for _, n := range nl.Items {
		h := n.Description.Hostname
		hostnames[n.ID] = h
		ch := Check{Name: "node " + h, Node: h}
		switch {
		case n.Status.State != swarm.NodeStateReady:
			ch.Detail = fmt.Sprintf("%s: not probed", n.Status.State)
			ch.Fix = fmt.Sprintf("start docker on %s, or remove it: docker node rm %s", h, h)
			results[n.ID] = ch
		case n.Spec.Availability != swarm.NodeAvailabilityActive:
			ch.OK, ch.Detail = true, fmt.Sprintf("%s: runs no tasks, not probed", n.Spec.Availability)
			results[n.ID] = ch
		default:
			eligible = append(eligible, n.ID)
		}
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	none := swarm.RestartPolicyConditionNone
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: "labreg-doctor-" + hex.EncodeToString(b), Labels: map[string]string{"labreg.doctor": "probe"}},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: image},
			RestartPolicy: &swarm.RestartPolicy{Condition: none},
		},
		Mode: swarm.ServiceMode{GlobalJob: &swarm.GlobalJob{}},
	}
	if resolve {
		spec.TaskTemplate.ContainerSpec.Command = nodeProbeArgs(advertise, image, opts.TLS)
		// the node's own network, /etc/hosts and resolv.conf: the names
		// resolve as they do for the node's engine
		spec.TaskTemplate.Networks = []swarm.NetworkAttachmentConfig{{Target: "host"}}
	}
	r, err := c.api.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: spec, EncodedRegistryAuth: auth})
	if err != nil {
		return nil, fmt.Errorf("creating the probe job: %w", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_, _ = c.api.ServiceRemove(rctx, r.ID, client.ServiceRemoveOptions{})
	}()
	scheme := "http"
	if opts.TLS {
		scheme = "https"
	}
	cannotPull := func(h string) Check {
		ch := Check{Name: "node " + h, Node: h,
			Detail: fmt.Sprintf("cannot pull %s/%s:%s (its docker log says why: not trusted, not reachable, or no credentials)", advertise, ProbeRepo, tag)}
		if resolve {
			ch.Detail = fmt.Sprintf("cannot pull %s/%s:%s, so where %s leads there is not known (its docker log says why: the registry it leads to is down or lacks it, not trusted, or no credentials)", advertise, ProbeRepo, tag, host)
		}
		if opts.TLS {
			ch.Fix = fmt.Sprintf("on %s: trust the registry's certificate: copy its CA to /etc/docker/certs.d/%s/ca.crt (no restart needed)", h, advertise)
		} else {
			ch.Fix = insecureFix(h, advertise)
		}
		ch.Fix += fmt.Sprintf("; and check that %s reaches it: curl %s://%s/v2/", h, scheme, advertise)
		if resolve {
			ch.Fix += fmt.Sprintf(" (getent hosts %s there says where the name leads: its zone's mirror or the origin)", host)
		}
		if authOn && !cr.has() {
			ch.Fix += fmt.Sprintf("; the registry wants credentials: docker login %s on this machine (labreg forwards them)", advertise)
		}
		return ch
	}
	deadline := time.Now().Add(timeout)
	last := map[string]swarm.TaskState{}
	for {
		tl, err := c.api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", r.ID)})
		if err != nil {
			return nil, fmt.Errorf("listing the probe job's tasks: %w", err)
		}
		for _, t := range tl.Items {
			if _, done := results[t.NodeID]; done || t.NodeID == "" {
				continue
			}
			h := hostnames[t.NodeID]
			st := t.Status.State
			last[t.NodeID] = st
			switch {
			case probePullFailed(t.Status.Err) || st == swarm.TaskStateRejected:
				results[t.NodeID] = cannotPull(h)
			case resolve && probeEnded(st):
				results[t.NodeID] = c.nodeProbeCheck(ctx, h, advertise, host, t)
			case resolve:
				// pulled; its result comes when it has run
			case probePastPull(st):
				results[t.NodeID] = Check{Name: "node " + h, Node: h, OK: true,
					Detail: fmt.Sprintf("pulled %s/%s:probe", advertise, ProbeRepo)}
			}
		}
		pending := 0
		for _, id := range eligible {
			if _, ok := results[id]; !ok {
				pending++
			}
		}
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			for _, id := range eligible {
				if _, ok := results[id]; ok {
					continue
				}
				h := hostnames[id]
				st := last[id]
				if st == "" {
					st = "no task"
				}
				results[id] = Check{Name: "node " + h, Node: h,
					Detail: fmt.Sprintf("no result within %s (%s)", timeout, st),
					Fix:    fmt.Sprintf("check that %s reaches %s: curl %s://%s/v2/ on %s", h, advertise, scheme, advertise, h)}
			}
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(c.opts.PollInterval):
		}
	}
	out := make([]Check, 0, len(results)+len(pre))
	out = append(out, pre...)
	for _, ch := range results {
		out = append(out, ch)
	}
	sort.SliceStable(out[len(pre):], func(i, j int) bool { return out[len(pre)+i].Node < out[len(pre)+j].Node })
	return out, nil
}

// probePullFailed: swarm only logs why a pull failed; the task then fails
// to create its container from an image the node does not have.
func probePullFailed(err string) bool {
	e := strings.ToLower(err)
	return strings.Contains(e, "no such image") || strings.Contains(e, "pull access denied") ||
		strings.Contains(e, "manifest unknown") || strings.Contains(e, "unauthorized")
}

// probePastPull: the task got beyond preparing, so the image was there.
func probePastPull(s swarm.TaskState) bool {
	switch s {
	case swarm.TaskStateReady, swarm.TaskStateStarting, swarm.TaskStateRunning,
		swarm.TaskStateComplete, swarm.TaskStateFailed, swarm.TaskStateShutdown:
		return true
	}
	return false
}

// probeEnded: a node-probe task that ran to its end (or could not start).
func probeEnded(s swarm.TaskState) bool {
	switch s {
	case swarm.TaskStateComplete, swarm.TaskStateFailed, swarm.TaskStateShutdown:
		return true
	}
	return false
}

// nodeProbeArgs is the command of the node-probe job: labreg doctor
// node-probe [--tls] ADVERTISE REPO@DIGEST, for the image's own pinned
// digest.
func nodeProbeArgs(advertise, image string, tlsOn bool) []string {
	args := append([]string{nodeProbeBinary}, NodeProbeCommand...)
	if tlsOn {
		args = append(args, "--tls")
	}
	_, dgst := splitDigest(image)
	return append(args, advertise, ProbeRepo+"@"+dgst)
}

// nodeProbeCheck is node h's check from its ended node-probe task t: the
// line it printed, ok when it exited 0. host is advertise's name.
func (c *Client) nodeProbeCheck(ctx context.Context, h, advertise, host string, t swarm.Task) Check {
	ch := Check{Name: "node " + h, Node: h}
	line, err := c.probeOutput(ctx, t.ID)
	switch {
	case err != nil && t.Status.State == swarm.TaskStateComplete:
		ch.OK, ch.Detail = true, fmt.Sprintf("pulled %s/%s and %s serves its digest there (the probe's report could not be read: %v)", advertise, ProbeRepo, host, err)
		return ch
	case err != nil:
		ch.Detail = fmt.Sprintf("pulled the probe, which did not report: %s (%v)", taskErr(&t), err)
		ch.Fix = fmt.Sprintf("on %s: docker logs of the labreg-doctor task say why", h)
		return ch
	}
	ch.Detail = line
	ch.OK = t.Status.State == swarm.TaskStateComplete
	if !ch.OK {
		ch.Fix = fmt.Sprintf("on %s: make %s resolve to a registry (its zone's mirror, or the origin) that serves every image: its /etc/hosts or the zone's DNS; and check that it runs: curl http://%s/v2/", h, host, advertise)
	}
	return ch
}
