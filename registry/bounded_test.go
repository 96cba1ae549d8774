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
