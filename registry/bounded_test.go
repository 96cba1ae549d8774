package registry_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/labreg/labreg/internal/testenv"
)

// procStatus reads a "VmRSS:"-style field of /proc/PID/status, in bytes.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + field + `:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no %s in /proc/%d/status", field, pid)
	}
	kb, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return kb << 10
}

// metricValue reads one unlabelled sample from the registry's /metrics.
func metricValue(t *testing.T, addr, metric string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), metric+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	t.Fatalf("no %s in /metrics", metric)
	return 0
}

// TestBoundedUnderSlowAndIdleClients is #10's acceptance test for bounded
// resources, against a `labreg serve` process: 1,000 uploads that send one
// byte every 10s and 2,000 idle keep-alive connections at once keep the
// server's peak RSS (VmHWM) at or under 200 MiB; a normal push and pull
// succeed meanwhile; the slow uploads end at the body timeout (8s here,
// 60s by default: the same mechanism), before their second byte.
func TestBoundedUnderSlowAndIdleClients(t *testing.T) {
	const (
		slow        = 1000
		idle        = 2000
		bodyTimeout = 8 * time.Second
		byteEvery   = 10 * time.Second
		maxRSS      = 200 << 20
	)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if need := uint64(2*(slow+idle) + 2000); lim.Cur < need {
		lim.Cur = min(need, lim.Max)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < need {
			t.Fatalf("need %d open files (server and clients), the limit is %d: %v", need, lim.Cur, err)
		}
	}
	srv := testenv.Serve(t, "", "--body-timeout", bodyTimeout.String())
	addr, pid := srv.Addr, srv.Pid()
	t.Logf("server RSS at start: %d MiB", procStatus(t, pid, "VmRSS")>>20)

	// 2,000 keep-alive connections, each after one request, then idle.
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range idle {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("idle connection %d: %v", len(conns), err)
		}
		conns = append(conns, c)
		fmt.Fprintf(c, "GET /v2/ HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET /v2/ on idle connection %d: %v %v", len(conns), resp, err)
		}
		io.Copy(io.Discard, resp.Body)
	}

	// 1,000 uploads that send one byte every 10s.
	uploads := make([]string, slow)
	for i := range uploads {
		uploads[i] = relUpload(t, addr, fmt.Sprintf("slow/u%d", i%10))
	}
	type ending struct {
		after time.Duration // since the last byte sent
		err   error
	}
	ended := make(chan ending, slow)
	var wg sync.WaitGroup
	for _, u := range uploads {
		c := stalledPatch(t, addr, u, 1000, "x")
		sent := time.Now()
		wg.Add(1)
		go func() {
			defer wg.Done()
			br := bufio.NewReader(c)
			for {
				c.SetReadDeadline(sent.Add(byteEvery))
				_, err := br.ReadByte() // the server's answer, or its close
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					// Still open after 10s: send the next byte.
					if _, err := c.Write([]byte("x")); err != nil {
						ended <- ending{time.Since(sent), err}
						return
					}
					sent = time.Now()
					continue
				}
				ended <- ending{time.Since(sent), nil}
				return
			}
		}()
	}
	waitFor(t, 10*time.Second, "1,000 slow uploads in flight", func() bool {
		return metricValue(t, addr, "labreg_uploads_in_flight") >= slow
	})
	inFlight := metricValue(t, addr, "labreg_uploads_in_flight")

	// Meanwhile a normal push and pull.
	img, err := random.Image(4<<20, 3)
	if err != nil {
		t.Fatal(err)
	}
	want := testenv.Push(t, addr+"/normal/app:1", img)
	ref, _ := name.ParseReference(addr+"/normal/app:1", name.Insecure)
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("pull during the slow uploads: %v", err)
	}
	layers, _ := got.Layers()
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatalf("pulling a layer during the slow uploads: %v", err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatalf("pulling a layer during the slow uploads: %v", err)
		}
		rc.Close()
	}
	if d, _ := got.Digest(); d != want {
		t.Errorf("pulled %s, pushed %s", d, want)
	}
	rss := procStatus(t, pid, "VmRSS")
	t.Logf("with %v uploads in flight and %d idle connections, after a push and pull: server RSS %d MiB", inFlight, idle, rss>>20)

	wg.Wait()
	close(ended)
	var early, late, errs int
	var longest time.Duration
	for e := range ended {
		longest = max(longest, e.after)
		switch {
		case e.err != nil:
			errs++
		case e.after < bodyTimeout-100*time.Millisecond:
			early++
		case e.after >= byteEvery:
			late++
		}
	}
	if early+late+errs > 0 {
		t.Errorf("of %d slow uploads: %d ended before the body timeout %s, %d outlived their next byte (%s), %d failed otherwise; longest %s",
			slow, early, bodyTimeout, late, byteEvery, errs, longest)
	}
	peak := procStatus(t, pid, "VmHWM")
	t.Logf("slow uploads ended %s at the latest after their byte; server peak RSS (VmHWM) %d MiB", longest.Round(time.Millisecond), peak>>20)
	if peak > maxRSS {
		t.Errorf("server peak RSS %d MiB, want <= %d MiB", peak>>20, maxRSS>>20)
	}
	// The idle connections are still served.
	c := conns[len(conns)-1]
	fmt.Fprintf(c, "GET /v2/ HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != 200 {
		t.Errorf("an idle keep-alive connection after the test: %v %v", resp, err)
	}
}

// TestBoundedMetrics is #18's acceptance 5, against a `labreg serve`
// process: 80,000 requests with made-up methods (each a new name) leave
// /metrics at or under 1 MB and the server's peak RSS (VmHWM) at or under
// 200 MiB. A made-up method is counted as method="other", every one of
// them; a known method keeps its name.
func TestBoundedMetrics(t *testing.T) {
	const (
		requests   = 80000
		conns      = 4
		maxMetrics = 1 << 20
		maxRSS     = 200 << 20
	)
	srv := testenv.Serve(t, "")
	addr, pid := srv.Addr, srv.Pid()
	t.Logf("server RSS at start: %d MiB", procStatus(t, pid, "VmRSS")>>20)
	madeUp := func(i int) string { return fmt.Sprintf("MADEUP%06d", i) }

	// Each connection gets its share of the requests pipelined: a writer
	// sends them all while a reader takes the answers.
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 2*conns)
	for c := range conns {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(2 * time.Minute))
		wg.Add(2)
		go func() {
			defer wg.Done()
			w := bufio.NewWriter(conn)
			for i := c; i < requests; i += conns {
				fmt.Fprintf(w, "%s /v2/ HTTP/1.1\r\nHost: %s\r\n\r\n", madeUp(i), addr)
			}
			if err := w.Flush(); err != nil {
				errs <- fmt.Errorf("connection %d: sending: %w", c, err)
			}
		}()
		go func() {
			defer wg.Done()
			r := bufio.NewReader(conn)
			for i := c; i < requests; i += conns {
				resp, err := http.ReadResponse(r, nil)
				if err != nil {
					errs <- fmt.Errorf("connection %d: answer to %s: %w", c, madeUp(i), err)
					conn.Close() // unblocks the writer
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode >= 500 {
					errs <- fmt.Errorf("connection %d: %s /v2/ answered %d", c, madeUp(i), resp.StatusCode)
					conn.Close()
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d requests with made-up methods over %d connections in %s", requests, conns, time.Since(start).Round(time.Millisecond))
	// One request with a known method, whose name the metrics keep.
	if resp, err := http.Get("http://" + addr + "/v2/"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}

	start = time.Now()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	t.Logf("/metrics: %d bytes in %s", len(body), time.Since(start).Round(time.Millisecond))
	if len(body) > maxMetrics {
		t.Errorf("/metrics is %d bytes, want <= %d", len(body), maxMetrics)
	}
	peak := procStatus(t, pid, "VmHWM")
	t.Logf("server peak RSS (VmHWM) %d MiB", peak>>20)
	if peak > maxRSS {
		t.Errorf("server peak RSS %d MiB, want <= %d MiB", peak>>20, maxRSS>>20)
	}

	// Every made-up request is counted, as "other"; none by its name.
	var other float64
	sawGet := false
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "labreg_http_requests_total{") {
			continue
		}
		if strings.Contains(line, "MADEUP") {
			t.Fatalf("a made-up method is a label value by name: %s", line)
		}
		sawGet = sawGet || strings.Contains(line, `method="GET"`)
		if strings.Contains(line, `method="other"`) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			other += v
		}
	}
	if other != requests {
		t.Errorf(`labreg_http_requests_total{method="other"} sums to %v, want %d (every made-up request)`, other, requests)
	}
	if !sawGet {
		t.Errorf(`no labreg_http_requests_total{method="GET"}: a known method lost its name`)
	}
}
