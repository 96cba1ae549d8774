package registry_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

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
}
