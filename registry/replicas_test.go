package registry_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
	"github.com/labreg/labreg/registry/ui"
)

// replicaPair is two replicas A and B on one bucket with one HTTP secret.
type replicaPair struct {
	addrA, addrB string
	srvA, srvB   *registry.Server
}

func newReplicaPair(t *testing.T) replicaPair {
	t.Helper()
	store, bucket := testenv.S3(t)
	secret := writeSecret(t, strings.Repeat("replica!", 8))
	var p replicaPair
	p.addrA, p.srvA = testenv.Registry(t, s3Replica(t, store, bucket, secret))
	p.addrB, p.srvB = testenv.Registry(t, s3Replica(t, store, bucket, secret))
	return p
}

// eventually polls check until it returns "" or the deadline passes, and
// returns the last complaint ("" once satisfied).
func eventually(deadline time.Time, check func() string) string {
	for {
		why := check()
		if why == "" || time.Now().After(deadline) {
			return why
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// s3PushBlobAs pushes content in one upload completed with digest d
// (sha256 or sha512).
func s3PushBlobAs(t *testing.T, base, repo string, content []byte, d digest.Digest) {
	t.Helper()
	status, hdr, body := biDo(t, "POST", base+"/v2/"+repo+"/blobs/uploads/", nil, false)
	if status != http.StatusAccepted {
		t.Fatalf("starting upload: %d %s", status, body)
	}
	loc := hdr.Get("Location")
	if strings.HasPrefix(loc, "/") {
		loc = base + loc
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	if status, _, body = biDo(t, "PUT", loc+sep+"digest="+d.String(), content, false); status != http.StatusCreated {
		t.Fatalf("completing upload as %s: %d %s", d, status, body)
	}
}

// TestS3ReplicasAgree is #11's acceptance 3: within 2 s of a push through
// A, B lists the artifact attached through A in the referrers API, serves
// a blob and a manifest pushed by sha512, lists the repository in
// /api/repositories (B's UI) and has the push event in its history. B's
// catalog index is built before the push, so B must follow A's writes.
func TestS3ReplicasAgree(t *testing.T) {
	p := newReplicaPair(t)
	baseA, baseB := "http://"+p.addrA, "http://"+p.addrB
	uiB, err := ui.New(ui.Options{Catalog: p.srvB.Catalog(), History: p.srvB.Events()})
	if err != nil {
		t.Fatal(err)
	}
	apiB := httptest.NewServer(uiB)
	t.Cleanup(apiB.Close)
	listRepos := func() []string {
		resp, err := http.Get(apiB.URL + "/api/repositories")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v ui.RepoPage
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			t.Fatalf("/api/repositories: %v", err)
		}
		var names []string
		for _, r := range v.Items {
			names = append(names, r.Name)
		}
		return names
	}
	if got := listRepos(); len(got) != 0 { // B's index is built now, empty
		t.Fatalf("B lists %v before any push", got)
	}

	const repo = "lab/shared"
	empty := []byte("{}")
	biPushBlob(t, baseA, repo, empty)
	emptyDesc := ocispec.Descriptor{MediaType: "application/vnd.oci.empty.v1+json", Digest: digest.FromBytes(empty), Size: 2}
	layer := []byte("a layer pushed through A by its sha512")
	layer512 := digest.SHA512.FromBytes(layer)
	s3PushBlobAs(t, baseA, repo, layer, layer512)
	image := rfJSON(t, ocispec.Manifest{Versioned: ocispecVersioned, MediaType: ocispec.MediaTypeImageManifest,
		Config: emptyDesc, Layers: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: layer512, Size: int64(len(layer))}}})
	image512 := digest.SHA512.FromBytes(image)
	rfPush(t, baseA, repo, "v1", image, ocispec.MediaTypeImageManifest)
	rfPush(t, baseA, repo, image512.String(), image, ocispec.MediaTypeImageManifest)
	subject := digest.FromBytes(image)
	art := rfJSON(t, ocispec.Manifest{Versioned: ocispecVersioned, MediaType: ocispec.MediaTypeImageManifest,
		ArtifactType: "application/vnd.example.signature", Config: emptyDesc, Layers: []ocispec.Descriptor{emptyDesc},
		Subject: &ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: subject, Size: int64(len(image))}})
	rfPush(t, baseA, repo, digest.FromBytes(art).String(), art, ocispec.MediaTypeImageManifest)
	pushed := time.Now()

	checks := []struct {
		what  string
		check func() string
	}{
		{"referrers through B", func() string {
			if _, got, _ := rfList(t, baseB, repo, subject, "", "", ""); !slices.Equal(got, []string{digest.FromBytes(art).String()}) {
				return fmt.Sprintf("lists %v", got)
			}
			return ""
		}},
		{"sha512 blob through B", func() string {
			status, _, body := biDo(t, "GET", baseB+"/v2/"+repo+"/blobs/"+layer512.String(), nil, false)
			if status != http.StatusOK || string(body) != string(layer) {
				return fmt.Sprintf("%d %q", status, biShort(string(body)))
			}
			return ""
		}},
		{"sha512 manifest through B", func() string {
			status, hdr, body := biDo(t, "GET", baseB+"/v2/"+repo+"/manifests/"+image512.String(), nil, false)
			if status != http.StatusOK || string(body) != string(image) || hdr.Get("Docker-Content-Digest") != image512.String() {
				return fmt.Sprintf("%d %s", status, hdr.Get("Docker-Content-Digest"))
			}
			return ""
		}},
		{"/api/repositories of B", func() string {
			if got := listRepos(); !slices.Equal(got, []string{repo}) {
				return fmt.Sprintf("lists %v", got)
			}
			return ""
		}},
		{"push event in B's history", func() string {
			evs, _ := p.srvB.Events().Page(0, 100, func(e registry.Event) bool {
				return e.Action == "push" && e.Repo == repo && e.Tag == "v1"
			})
			if len(evs) != 1 {
				return fmt.Sprintf("%d push events of %s:v1", len(evs), repo)
			}
			return ""
		}},
	}
	deadline := pushed.Add(2 * time.Second)
	for _, c := range checks {
		if why := eventually(deadline, c.check); why != "" {
			t.Errorf("%s, 2 s after the push through A: %s", c.what, why)
		}
	}
	t.Logf("B agreed with A %s after the push", time.Since(pushed).Round(time.Millisecond))

	// A pull through A is counted in B's history within 2 s too, as a
	// count (not an event).
	if status, _, _ := biDo(t, "GET", baseA+"/v2/"+repo+"/manifests/v1", nil, false); status != http.StatusOK {
		t.Fatalf("pulling %s:v1 through A: %d", repo, status)
	}
	pulled := time.Now()
	if why := eventually(pulled.Add(2*time.Second), func() string {
		if n := p.srvB.Events().Pulls(repo, "v1").Total; n != 1 {
			return fmt.Sprintf("%d pulls of %s:v1 counted", n, repo)
		}
		return ""
	}); why != "" {
		t.Errorf("pull in B's history, 2 s after the pull through A: %s", why)
	}
	if _, n := p.srvB.Events().Page(0, 100, func(e registry.Event) bool { return e.Action == "pull" }); n != 0 {
		t.Errorf("B keeps %d pull events; pulls are counted", n)
	}
}

// TestS3GCAcrossReplicas is #11's acceptance 4: a GC started through B
// while a client is pushing through A turns A read-only (503 with
// Retry-After) until it is done; then a deleted image's blobs are 404
// through A and B, although both served them (and cached their
// descriptors in the shared Redis) before, and everything still
// referenced pulls through both.
func TestS3GCAcrossReplicas(t *testing.T) {
	store, bucket := testenv.S3(t)
	secret := writeSecret(t, strings.Repeat("gc-both!", 8))
	redis := "redis://" + testenv.Redis(t) + "/3"
	optsA := s3Replica(t, store, bucket, secret)
	optsA.Redis = redis
	optsB := s3Replica(t, store, bucket, secret)
	optsB.Redis = redis
	addrA, _ := testenv.Registry(t, optsA)
	addrB, srvB := testenv.Registry(t, optsB)
	baseA, baseB := "http://"+addrA, "http://"+addrB

	keep, err := random.Image(1<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	gone, err := random.Image(1<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Push(t, addrA+"/lab/keep:v1", keep)
	goneDigest := testenv.Push(t, addrA+"/lab/gone:v1", gone)
	var goneBlobs []string
	goneLayers, _ := gone.Layers()
	for _, l := range goneLayers {
		d, _ := l.Digest()
		goneBlobs = append(goneBlobs, d.String())
	}
	cfgName, _ := gone.ConfigName()
	goneBlobs = append(goneBlobs, cfgName.String())
	for _, base := range []string{baseA, baseB} { // served, descriptors cached
		for _, b := range goneBlobs {
			if status, _, _ := biDo(t, "GET", base+"/v2/lab/gone/blobs/"+b, nil, false); status != http.StatusOK {
				t.Fatalf("before GC: GET %s through %s: %d", b, base, status)
			}
		}
	}
	if status, _, body := biDo(t, "DELETE", baseA+"/v2/lab/gone/manifests/"+goneDigest.String(), nil, false); status != http.StatusAccepted {
		t.Fatalf("deleting the image: %d %s", status, body)
	}

	// A client pushing through A: an upload whose PATCH is in flight.
	status, hdr, body := biDo(t, "POST", baseA+"/v2/lab/pushing/blobs/uploads/", nil, false)
	if status != http.StatusAccepted {
		t.Fatalf("starting an upload through A: %d %s", status, body)
	}
	pr, pw := io.Pipe()
	req, _ := http.NewRequestWithContext(t.Context(), "PATCH", s3Absolute(addrA, hdr.Get("Location")), pr)
	req.Header.Set("Content-Type", "application/octet-stream")
	patched := make(chan int, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			patched <- 0
			return
		}
		resp.Body.Close()
		patched <- resp.StatusCode
	}()
	if _, err := pw.Write([]byte("the first bytes of a push through A")); err != nil {
		t.Fatal(err)
	}

	type gcOutcome struct {
		res *registry.GCResult
		err error
	}
	gcDone := make(chan gcOutcome, 1)
	go func() {
		res, err := srvB.GC(context.Background(), registry.GCOptions{})
		gcDone <- gcOutcome{res, err}
	}()

	// A turns read-only: a new push gets 503 with Retry-After. (The GC
	// cannot end before: it waits for A, which waits for the PATCH.)
	refused := eventually(time.Now().Add(20*time.Second), func() string {
		status, hdr, _ := biDo(t, "POST", baseA+"/v2/lab/other/blobs/uploads/", nil, false)
		if status != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
			return fmt.Sprintf("%d, Retry-After %q", status, hdr.Get("Retry-After"))
		}
		return ""
	})
	if refused != "" {
		t.Errorf("a push through A while B runs GC: %s, want 503 with Retry-After", refused)
	}
	pw.Close() // the push in flight ends; then the GC runs
	if st := <-patched; st != http.StatusAccepted {
		t.Errorf("the PATCH in flight when GC began: %d, want 202 (drained, not cut)", st)
	}
	var out gcOutcome
	select {
	case out = <-gcDone:
	case <-time.After(2 * time.Minute):
		t.Fatal("GC through B did not end")
	}
	if out.err != nil {
		t.Fatalf("GC through B: %v", out.err)
	}
	if len(out.res.Blobs) < len(goneBlobs) {
		t.Errorf("GC removed %d blobs, want at least the deleted image's %d", len(out.res.Blobs), len(goneBlobs))
	}

	for _, base := range []string{baseA, baseB} {
		for _, b := range goneBlobs {
			why := eventually(time.Now().Add(2*time.Second), func() string {
				for _, m := range []string{"HEAD", "GET"} {
					if status, _, body := biDo(t, m, base+"/v2/lab/gone/blobs/"+b, nil, false); status != http.StatusNotFound {
						return fmt.Sprintf("%s %d (%d bytes)", m, status, len(body))
					}
				}
				return ""
			})
			if why != "" {
				t.Errorf("removed blob %s through %s: %s, want 404", b, base, why)
			}
		}
		ref, _ := name.ParseReference(strings.TrimPrefix(base, "http://")+"/lab/keep:v1", name.Insecure)
		img, err := remote.Image(ref)
		if err != nil {
			t.Fatalf("pulling lab/keep:v1 through %s after GC: %v", base, err)
		}
		layers, _ := img.Layers()
		for _, l := range layers {
			rc, err := l.Compressed()
			if err == nil {
				_, err = io.Copy(io.Discard, rc) // verifies the digest
				rc.Close()
			}
			if err != nil {
				t.Errorf("a layer of lab/keep:v1 through %s after GC: %v", base, err)
			}
		}
	}
	// A accepts writes again once the lease is gone.
	if why := eventually(time.Now().Add(2*time.Second), func() string {
		if status, _, _ := biDo(t, "POST", baseA+"/v2/lab/other/blobs/uploads/", nil, false); status != http.StatusAccepted {
			return fmt.Sprint(status)
		}
		return ""
	}); why != "" {
		t.Errorf("a push through A after GC: %s, want 202", why)
	}
}

// TestS3KillMidUpload is #11's acceptance 5: `labreg serve` A is killed
// with SIGKILL in the middle of an upload's second PATCH; the client asks
// B where the upload stands, sends the rest through B and commits it
// there with the right digest.
func TestS3KillMidUpload(t *testing.T) {
	store, bucket := testenv.S3(t)
	access, secretKey := store.KeyFiles(t)
	secret := writeSecret(t, strings.Repeat("killed!!", 8))
	a := testenv.Serve(t, "", "--storage", store.URL(bucket), "--s3-access-key-file", access,
		"--s3-secret-key-file", secretKey, "--http-secret-file", secret)
	addrB, _ := testenv.Registry(t, s3Replica(t, store, bucket, secret))

	content := make([]byte, 12<<20)
	if _, err := rand.Read(content); err != nil {
		t.Fatal(err)
	}
	first := content[:6<<20]
	want := digest.FromBytes(content)

	status, hdr, body := biDo(t, "POST", "http://"+a.Addr+"/v2/lab/killed/blobs/uploads/", nil, false)
	if status != http.StatusAccepted {
		t.Fatalf("starting the upload through A: %d %s", status, body)
	}
	r := s3Do(t, "PATCH", s3Absolute(a.Addr, hdr.Get("Location")), first,
		http.Header{"Content-Type": {"application/octet-stream"}, "Content-Range": {fmt.Sprintf("0-%d", len(first)-1)}})
	if r.StatusCode != http.StatusAccepted {
		t.Fatalf("first PATCH through A: %s %s", r.Status, r.body)
	}
	loc := r.Header.Get("Location")

	// The second PATCH is cut by A's death.
	pr, pw := io.Pipe()
	req, _ := http.NewRequestWithContext(t.Context(), "PATCH", s3Absolute(a.Addr, loc), pr)
	req.Header.Set("Content-Type", "application/octet-stream")
	cut := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("answered %s", resp.Status)
		}
		cut <- err
	}()
	if _, err := pw.Write(content[len(first) : len(first)+(1<<20)]); err != nil {
		t.Fatal(err)
	}
	if err := a.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	pw.CloseWithError(errors.New("A died"))
	<-cut

	// Where does the upload stand? B answers from the store.
	st := s3Do(t, "GET", s3Absolute(addrB, loc), nil, nil)
	if st.StatusCode != http.StatusNoContent {
		t.Fatalf("upload status through B after A died: %s %s", st.Status, st.body)
	}
	var end int
	if _, err := fmt.Sscanf(st.Header.Get("Range"), "0-%d", &end); err != nil {
		t.Fatalf("upload status through B: Range %q", st.Header.Get("Range"))
	}
	offset := end + 1
	if offset != len(first) {
		t.Logf("B reports %d bytes stored (the first PATCH had %d)", offset, len(first))
	}
	if offset > len(content) || offset < len(first) {
		t.Fatalf("B reports %d bytes stored; the first PATCH had %d", offset, len(first))
	}
	rest := content[offset:]
	r = s3Do(t, "PATCH", s3Absolute(addrB, st.Header.Get("Location")), rest,
		http.Header{"Content-Type": {"application/octet-stream"}, "Content-Range": {fmt.Sprintf("%d-%d", offset, len(content)-1)}})
	if r.StatusCode != http.StatusAccepted {
		t.Fatalf("PATCH of the rest through B: %s %s", r.Status, r.body)
	}
	put := s3Absolute(addrB, r.Header.Get("Location"))
	sep := "?"
	if strings.Contains(put, "?") {
		sep = "&"
	}
	r = s3Do(t, "PUT", put+sep+"digest="+want.String(), nil, nil)
	if r.StatusCode != http.StatusCreated || r.Header.Get("Docker-Content-Digest") != want.String() {
		t.Fatalf("committing through B: %s %s %s", r.Status, r.Header.Get("Docker-Content-Digest"), r.body)
	}
	if got := s3GetBlob(t, addrB, "lab/killed", want.String()); !bytes.Equal(got, content) {
		t.Errorf("the committed blob through B: %d bytes differ from the %d sent", len(got), len(content))
	}
}

// TestS3OneGCAtATime: while a GC started through A holds the cluster's
// lease (it waits for B, which drains a push in flight), a GC started
// through B is refused as busy; A's GC then completes.
func TestS3OneGCAtATime(t *testing.T) {
	p := newReplicaPair(t)
	status, hdr, body := biDo(t, "POST", "http://"+p.addrB+"/v2/lab/pushing/blobs/uploads/", nil, false)
	if status != http.StatusAccepted {
		t.Fatalf("starting an upload through B: %d %s", status, body)
	}
	pr, pw := io.Pipe()
	req, _ := http.NewRequestWithContext(t.Context(), "PATCH", s3Absolute(p.addrB, hdr.Get("Location")), pr)
	req.Header.Set("Content-Type", "application/octet-stream")
	patched := make(chan struct{})
	go func() {
		defer close(patched)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	if _, err := pw.Write([]byte("in flight")); err != nil {
		t.Fatal(err)
	}
	gcA := make(chan error, 1)
	go func() {
		_, err := p.srvA.GC(context.Background(), registry.GCOptions{})
		gcA <- err
	}()
	// B turns read-only for A's GC: A holds the lease.
	if why := eventually(time.Now().Add(20*time.Second), func() string {
		if ro, reason := p.srvB.ReadOnlyState(); !ro || !strings.Contains(reason, "garbage collection on replica") {
			return fmt.Sprintf("read-only %v (%q)", ro, reason)
		}
		return ""
	}); why != "" {
		t.Fatalf("B while A runs GC: %s", why)
	}
	_, err := p.srvB.GC(context.Background(), registry.GCOptions{})
	var busy *registry.BusyError
	if !errors.As(err, &busy) {
		t.Errorf("GC through B while A's runs: %v, want a BusyError", err)
	}
	pw.Close()
	<-patched
	select {
	case err := <-gcA:
		if err != nil {
			t.Errorf("GC through A: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("GC through A did not end")
	}
}
