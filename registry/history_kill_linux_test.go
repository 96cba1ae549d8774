package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// compactTemp is the name of a compaction's temporary file.
var compactTemp = regexp.MustCompile(`^events\.jsonl\.[0-9a-f]{16}\.tmp$`)

// watchCompactions reports on the returned channel each time a
// compaction's temporary file is created in dir (inotify: within
// microseconds), until stop is closed.
func watchCompactions(t *testing.T, dir string, stop <-chan struct{}) <-chan struct{} {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	seen := make(chan struct{}, 16)
	go func() {
		defer unix.Close(fd)
		buf := make([]byte, 64<<10)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if n, _ := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 10); n <= 0 {
				continue
			}
			n, err := unix.Read(fd, buf)
			for off := 0; err == nil && off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				nameBytes := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
				if compactTemp.Match(bytes.TrimRight(nameBytes, "\x00")) {
					select {
					case seen <- struct{}{}:
					default:
					}
				}
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}()
	return seen
}

// strictHistory parses every line of dir's events.jsonl as one of the
// history's kinds (an event, counts, a journal entry's pulls, a journal
// mark): a line that does not parse fails the test. A last line without
// its newline (an append the kill cut) is returned apart, not parsed.
func strictHistory(t *testing.T, dir string) (lines int, torn string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if i := bytes.LastIndexByte(b, '\n'); i < len(b)-1 {
		torn, b = string(b[i+1:]), b[:i+1]
	}
	for n, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if line == "" && len(b) == 0 {
			break
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("events.jsonl line %d does not parse: %v: %.200q", n+1, err, line)
		}
		var ok bool
		switch {
		case m["action"] != nil:
			var e registry.Event
			ok = json.Unmarshal([]byte(line), &e) == nil && !e.Time.IsZero()
		case m["counts"] != nil:
			var c struct {
				Repo, Ref string
				Counts    []int64
			}
			ok = json.Unmarshal([]byte(line), &c) == nil && c.Repo != "" && len(c.Counts)%2 == 0
		case m["pulls"] != nil || m["journal"] != nil:
			ok = true
		}
		if !ok {
			t.Fatalf("events.jsonl line %d is not of a history kind: %.200q", n+1, line)
		}
		lines++
	}
	return lines, torn
}

// TestKillDuringHistoryCompaction is #21's acceptance 3: `labreg serve`
// is killed with SIGKILL while it compacts its history, again and again,
// at different moments of the compaction (from the creation of its
// temporary file, after 0 to 15 ms), while clients pull and push. The
// first compaction is of a history written before pulls were counted (a
// line per pull). After every kill the file parses, every pull a client
// saw answered and every push acknowledged is in it, nothing is counted
// twice, and the old history's counts are whole.
func TestKillDuringHistoryCompaction(t *testing.T) {
	data := t.TempDir()
	now := time.Now().UTC()

	// Images to pull: 4 repositories, 3 tags each, with long names (a
	// pull's line is about 250 bytes: the file grows fast).
	var keys []string
	{
		srv := testenv.Serve(t, data)
		for r := range 4 {
			for tag := range 3 {
				k := fmt.Sprintf("kill/app%d-%s:v%d-%s", r, strings.Repeat("r", 90), tag, strings.Repeat("t", 100))
				testenv.Push(t, srv.Addr+"/"+k, catImage(t, 256))
				keys = append(keys, k)
			}
		}
		srv.Signal(os.Interrupt)
		srv.Wait(t, 20*time.Second)
	}

	// A history as an earlier labreg wrote it: a line per pull (30,000
	// pulls of 600 tags over 5 days) and 300 pushes.
	legacy := map[string]int64{}
	var old bytes.Buffer
	f, err := os.OpenFile(filepath.Join(data, "events.jsonl"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30_000 {
		k := i % 600
		b, _ := json.Marshal(registry.Event{Time: now.Add(-time.Duration(30_000-i) * 15 * time.Second), Action: "pull",
			Repo: fmt.Sprintf("old/repo%d", k/3), Tag: fmt.Sprintf("v%d", k%3), Addr: "10.1.2.3:40000", Via: "registry"})
		old.Write(append(b, '\n'))
		legacy[fmt.Sprintf("old/repo%d:v%d", k/3, k%3)]++
	}
	for i := range 300 {
		b, _ := json.Marshal(registry.Event{Time: now.Add(-time.Duration(300-i) * time.Minute), Action: "push",
			Repo: fmt.Sprintf("old/repo%d", i), Tag: "v0", Digest: digest.Digest("sha256:" + strings.Repeat("c", 64)), Addr: "10.1.2.3:40000", Via: "registry"})
		old.Write(append(b, '\n'))
	}
	f.Write(old.Bytes())
	f.Close()
	t.Logf("the old history: %.1f MB", float64(old.Len())/1e6)

	var (
		mu     sync.Mutex
		acked  = map[string]int64{} // pulls a client saw answered
		sent   = map[string]int64{} // pulls asked for
		pushed []string             // repo:tag of acknowledged pushes
	)
	rng := rand.New(rand.NewPCG(21, 3))
	const runs = 8
	beforeRename := 0
	for run := range runs {
		if run == 1 { // the old history compacted once; the kills after are of compactions under load
			compactedOnce(t, data)
		}
		srv := testenv.Serve(t, data, "--events-compact-size", "65536")
		stop := make(chan struct{})
		ctx, cancel := context.WithCancel(t.Context())
		compactions := watchCompactions(t, data, stop)
		// Pullers and a pusher until the kill.
		var wg sync.WaitGroup
		client := &http.Client{Timeout: 10 * time.Second}
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					k := keys[(g+i)%len(keys)]
					repo, tag, _ := strings.Cut(k, ":")
					req, _ := http.NewRequest(http.MethodGet, "http://"+srv.Addr+"/v2/"+repo+"/manifests/"+tag, nil)
					req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
					mu.Lock()
					sent[k]++
					mu.Unlock()
					resp, err := client.Do(req)
					if err != nil {
						return // killed
					}
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode == http.StatusOK {
						mu.Lock()
						acked[k]++
						mu.Unlock()
					}
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				img, err := random.Image(128, 1)
				if err != nil {
					return
				}
				ref, _ := name.NewTag(fmt.Sprintf("%s/kill/pushed:r%d-%d", srv.Addr, run, i), name.Insecure)
				if remote.Write(ref, img, remote.WithContext(ctx)) != nil {
					return
				}
				mu.Lock()
				pushed = append(pushed, fmt.Sprintf("kill/pushed:r%d-%d", run, i))
				mu.Unlock()
			}
		}()
		// Kill 0 to 15 ms after a compaction creates its temporary file.
		select {
		case <-compactions:
		case <-time.After(30 * time.Second):
			close(stop)
			cancel()
			wg.Wait()
			t.Fatalf("run %d: no compaction in 30 s", run)
		}
		delay := time.Duration(rng.Int64N(int64(15 * time.Millisecond)))
		if run%3 == 0 {
			delay = 0
		}
		time.Sleep(delay)
		if err := srv.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		srv.Wait(t, 10*time.Second)
		close(stop)
		cancel()
		wg.Wait()
		temps, _ := filepath.Glob(filepath.Join(data, "events.jsonl.*.tmp"))
		if len(temps) > 0 {
			beforeRename++
		}

		// The file as the kill left it parses, but for an append the kill
		// cut (never answered).
		lines, torn := strictHistory(t, data)
		// What a restarted registry reads from it.
		check, err := registry.New(t.Context(), registry.Options{DataDir: data, EventsCompactSize: 1 << 40})
		if err != nil {
			t.Fatal(err)
		}
		h := check.Events()
		mu.Lock()
		for k, n := range legacy {
			repo, tag, _ := strings.Cut(k, ":")
			if got := h.Pulls(repo, tag).Total; got != n {
				t.Errorf("run %d: the old history's %s counts %d pulls, want %d", run, k, got, n)
			}
		}
		var ackedAll, counted int64
		for _, k := range keys {
			repo, tag, _ := strings.Cut(k, ":")
			got := h.Pulls(repo, tag).Total
			if got < acked[k] || got > sent[k] {
				t.Errorf("run %d: %s counts %d pulls; %d were answered, %d asked for", run, k, got, acked[k], sent[k])
			}
			ackedAll += acked[k]
			counted += got
		}
		evs, _ := h.Page(0, 1<<20, func(e registry.Event) bool { return e.Action == "push" && e.Repo == "kill/pushed" })
		have := map[string]bool{}
		for _, e := range evs {
			have[e.Repo+":"+e.Tag] = true
		}
		for _, p := range pushed {
			if !have[p] {
				t.Errorf("run %d: the acknowledged push of %s is not in the history", run, p)
			}
		}
		if _, n := h.Page(0, 1, func(e registry.Event) bool { return e.Repo != "" && strings.HasPrefix(e.Repo, "old/") }); n != 300 {
			t.Errorf("run %d: %d of the old history's 300 pushes", run, n)
		}
		t.Logf("run %d: killed %s after a compaction began (%s); %d lines%s; %d pulls answered so far, %d counted; %d pushes",
			run, delay.Round(10*time.Microsecond), map[bool]string{true: "before its rename", false: "after its rename"}[len(temps) > 0],
			lines, map[bool]string{true: ", a torn last line " + fmt.Sprintf("%q", torn), false: ""}[torn != ""], ackedAll, counted, len(pushed))
		mu.Unlock()
		if t.Failed() {
			return
		}
	}
	if beforeRename < runs/3 {
		t.Errorf("only %d of %d kills landed before the compaction's rename", beforeRename, runs)
	}
	// A last start: the crash's temporary files are removed, the history
	// compacted and whole.
	compactedOnce(t, data)
	fi, _ := os.Stat(filepath.Join(data, "events.jsonl"))
	t.Logf("after %d kills: the history is %.2f MB (the old one was %.1f MB)", runs, float64(fi.Size())/1e6, float64(old.Len())/1e6)
}

// compactedOnce starts `labreg serve` on data, waits until no compaction's
// temporary file is left and the history is under 1 MB (the legacy one
// written at the start is 4 MB; compacted, its pulls are counters: about
// 0.5 MB, more with each run's pulls), and stops it.
func compactedOnce(t *testing.T, data string) {
	t.Helper()
	srv := testenv.Serve(t, data, "--events-compact-size", "65536")
	deadline := time.Now().Add(20 * time.Second)
	for {
		temps, _ := filepath.Glob(filepath.Join(data, "events.jsonl.*.tmp"))
		fi, err := os.Stat(filepath.Join(data, "events.jsonl"))
		if len(temps) == 0 && err == nil && fi.Size() < 1<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("20 s after a start: temporary files %v, history %d bytes (%v)", temps, fi.Size(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	srv.Signal(os.Interrupt)
	srv.Wait(t, 20*time.Second)
	if _, torn := strictHistory(t, data); torn != "" {
		t.Errorf("after a clean stop the history ends in a torn line %q", torn)
	}
}
