package deploy_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// stallImage is a one-layer test image and the digest of that layer.
func stallImage(t *testing.T, id string) (v1.Image, v1.Hash) {
	t.Helper()
	img := buildImage(t, map[string]string{"id": id}, "/bin/sleep", "1000")
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	layer, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	return img, layer
}

// stallingFront is the registry at backend ("HOST:PORT") as nodes see it
// through a proxy listening on listen ("127.0.0.1:0", "0.0.0.0:0"):
// everything is served except GETs of the blob layer, which never answer.
// It returns the proxy's port and a channel closed at the first stalled GET.
func stallingFront(t *testing.T, backend, listen string, layer v1.Hash) (port string, stalled <-chan struct{}) {
	t.Helper()
	stop, first := make(chan struct{}), make(chan struct{})
	var once sync.Once
	u, _ := url.Parse("http://" + backend)
	proxy := httputil.NewSingleHostReverseProxy(u)
	front := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+layer.String()) {
			once.Do(func() { close(first) })
			select {
			case <-r.Context().Done():
			case <-stop:
			}
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	front.Listener = ln
	front.Start()
	t.Cleanup(func() { close(stop); front.Close() })
	_, port, _ = net.SplitHostPort(ln.Addr().String())
	return port, first
}
