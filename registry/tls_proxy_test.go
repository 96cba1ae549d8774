package registry_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// their paths and a pool that trusts the certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "labreg test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestTLS: with a certificate and key the registry speaks HTTPS only, and a
// client that trusts the certificate pushes and pulls over it.
func TestTLS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	addr, _ := testenv.Registry(t, registry.Options{TLSCert: certFile, TLSKey: keyFile})
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}

	resp, err := (&http.Client{Transport: tr}).Get("https://" + addr + "/v2/")
	if err != nil {
		t.Fatalf("GET https /v2/: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET https /v2/ = %s", resp.Status)
	}
	if resp, err := http.Get("http://" + addr + "/v2/"); err == nil && resp.StatusCode == http.StatusOK {
		resp.Body.Close()
		t.Fatal("the TLS registry also answered plain HTTP with 200")
	}

	img := testenv.BusyboxImage(t, map[string]string{"www/index.html": "tls"}, nil)
	ref, err := name.ParseReference(addr + "/tls/app:1") // no name.Insecure: https only
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithTransport(tr)); err != nil {
		t.Fatalf("push over TLS: %v", err)
	}
	got, err := remote.Image(ref, remote.WithTransport(tr))
	if err != nil {
		t.Fatalf("pull over TLS: %v", err)
	}
	want, _ := img.Digest()
	if d, _ := got.Digest(); d != want {
		t.Fatalf("pulled %s, pushed %s", d, want)
	}
}

// TestPullThroughCache: a registry with ProxyRemoteURL serves an image it
// never had (manifest and every layer) from its upstream, and refuses pushes.
func TestPullThroughCache(t *testing.T) {
	upstream, _ := testenv.Registry(t, registry.Options{})
	img := testenv.BusyboxImage(t, map[string]string{"www/index.html": "cached"}, nil)
	want := testenv.Push(t, upstream+"/library/app:1", img)

	cacheAddr, _ := testenv.Registry(t, registry.Options{ProxyRemoteURL: "http://" + upstream})
	ref, err := name.ParseReference(cacheAddr+"/library/app:1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("pull through the cache: %v", err)
	}
	if d, _ := got.Digest(); d != want {
		t.Fatalf("cache served %s, upstream has %s", d, want)
	}
	layers, err := got.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatalf("layer through the cache: %v", err)
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			t.Fatalf("reading a layer through the cache: %v", err)
		}
	}
	// Pushing to a pull-through cache is refused.
	push, _ := name.ParseReference(cacheAddr+"/library/other:1", name.Insecure)
	if err := remote.Write(push, img); err == nil {
		t.Error("push to a pull-through cache succeeded")
	}
}
