package testenv

import (
	"bytes"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws/credentials"
	v4 "github.com/aws/aws-sdk-go/aws/signer/v4"
)

// S3Proxy stands between registries and an S3Store: it delays each
// request (a slow store across a WAN), counts requests by what S3 bills
// them as, and can make the store ignore conditional writes (as a store
// without them would): the conditions are dropped and the request signed
// again with the store's credentials.
type S3Proxy struct {
	// Endpoint is http://127.0.0.1:PORT.
	Endpoint string
	store    *S3Store

	mu     sync.Mutex
	counts map[string]int
	delay  func() time.Duration
	strip  bool
	answer func(*http.Request) int
}

// S3ProxyOptions configures an S3Proxy.
type S3ProxyOptions struct {
	// Delay, when set, is how long each request waits before it is sent on.
	Delay func() time.Duration
	// IgnoreConditions drops If-Match and If-None-Match from every write.
	IgnoreConditions bool
}

// NewS3Proxy starts a proxy to store on 127.0.0.1, closed at the test's end.
func NewS3Proxy(t testing.TB, store *S3Store, opts S3ProxyOptions) *S3Proxy {
	t.Helper()
	target, _ := url.Parse(store.Endpoint)
	p := &S3Proxy{store: store, counts: map[string]int{}, delay: opts.Delay, strip: opts.IgnoreConditions}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ErrorLog = log.New(io.Discard, "", 0) // a client that gave up is no news
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.count(r)
		p.mu.Lock()
		delay := p.delay
		p.mu.Unlock()
		p.mu.Lock()
		answer := p.answer
		p.mu.Unlock()
		if answer != nil {
			if st := answer(r); st != 0 {
				io.Copy(io.Discard, r.Body)
				w.WriteHeader(st)
				return
			}
		}
		if delay != nil {
			select {
			case <-time.After(delay()):
			case <-r.Context().Done():
				return
			}
		}
		if p.strip && r.Method != http.MethodGet && r.Method != http.MethodHead &&
			(r.Header.Get("If-Match") != "" || r.Header.Get("If-None-Match") != "") {
			if err := p.resign(r); err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
		}
		rp.ServeHTTP(w, r)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	p.Endpoint = "http://" + ln.Addr().String()
	return p
}

// resign drops r's conditions and signs it again.
func (p *S3Proxy) resign(r *http.Request) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	r.Body.Close()
	for _, h := range []string{"If-Match", "If-None-Match", "Authorization", "X-Amz-Date"} {
		r.Header.Del(h)
	}
	signer := v4.NewSigner(credentials.NewStaticCredentials(p.store.AccessKey, p.store.SecretKey, ""))
	r.URL.Scheme, r.URL.Host = "http", r.Host // sign what the store will see
	_, err = signer.Sign(r, bytes.NewReader(body), "s3", p.store.Region, time.Now())
	r.URL.Scheme, r.URL.Host = "", ""
	r.ContentLength = int64(len(body))
	return err
}

// SetDelay changes the delay of the requests that follow (nil: none).
func (p *S3Proxy) SetDelay(d func() time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// SetAnswer makes the proxy answer the requests for which answer returns a
// status itself, with that status and no body (nil: none).
func (p *S3Proxy) SetAnswer(answer func(*http.Request) int) {
	p.mu.Lock()
	p.answer = answer
	p.mu.Unlock()
}

// URL is the registry.storage value for bucket through the proxy.
func (p *S3Proxy) URL(bucket string) string {
	return "s3://" + bucket + "?endpoint=" + p.Endpoint + "&region=" + p.store.Region
}

// count files r under what S3 bills it as: LIST (a GET of the bucket),
// GET, HEAD, PUT, POST, DELETE.
func (p *S3Proxy) count(r *http.Request) {
	kind := r.Method
	q := r.URL.Query()
	if r.Method == http.MethodGet && (q.Has("list-type") || q.Has("prefix") || q.Has("delimiter") ||
		strings.Count(strings.Trim(r.URL.Path, "/"), "/") == 0) {
		kind = "LIST"
	}
	p.mu.Lock()
	p.counts[kind]++
	p.mu.Unlock()
}

// Counts returns the requests counted so far by kind, and resets them.
func (p *S3Proxy) Counts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.counts
	p.counts = map[string]int{}
	return c
}

// S3 standard request prices, in dollars per request (us-east-1, 2026):
// PUT, COPY, POST and LIST $0.005 per 1,000; GET, HEAD and the rest
// $0.0004 per 1,000; DELETE free.
const (
	s3WritePrice = 0.005 / 1000
	s3ReadPrice  = 0.0004 / 1000
)

// S3Cost is what counts (from Counts) cost at S3 standard request prices.
func S3Cost(counts map[string]int) float64 {
	var c float64
	for kind, n := range counts {
		switch kind {
		case "PUT", "POST", "LIST":
			c += float64(n) * s3WritePrice
		case "DELETE":
		default:
			c += float64(n) * s3ReadPrice
		}
	}
	return c
}
