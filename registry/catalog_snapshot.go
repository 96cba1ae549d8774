package registry

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// A server's catalog index survives restarts, so that the UI lists every
// repository as soon as the server starts, in time proportional to what
// changed since the index was last saved rather than to the registry's
// size. Beside the summary cache (summary.go) the data dir holds:
//
//	catalog-index       the snapshot: every repository, its size and its
//	                    tags (digest, push time), written at a clean stop
//	                    and every snapshotEvery while the index changes
//	                    (temp file, fsync, rename)
//	catalog-index.log   what changed since: one line per change this
//	                    server saw ("R repo tag"; tag "" for anything in
//	                    repo), "*" for a reload (GC, scrub, an offline
//	                    tool); appended, not fsynced: a crash of the
//	                    process loses none of it
//	catalog-index.log.prev  the log of the snapshot being written
//
// A start reads the snapshot, replays the logs (each line marks what it
// names for a refresh from storage at the next read) and serves. The
// shared store's journal (journal.go) adds what other replicas changed
// meanwhile. Then a verification reads the whole storage in the
// background, as a start without a snapshot would, and corrects what
// the snapshot and the logs could not know (a change made by another
// program, a log line lost with the machine); it is logged when it had
// to. No snapshot is used when it belongs to another store, predates an
// offline tool's change, follows a "*" in the log, or, on a shared store,
// is older than the journal keeps.

// snapshotEvery is how often a running server saves its index when it
// changed.
const snapshotEvery = time.Minute

// snapshotLogMax bounds the change log of a server whose index is never
// loaded (no UI): past it the log is replaced by "*", and the next start
// reads the whole storage.
const snapshotLogMax = 4 << 20

// verifyDelay is how long after a start from a snapshot the verification
// waits, so that the first requests do not compete with it.
const verifyDelay = 2 * time.Second

const snapshotMagic = "labreg-catalog-index 1"

// snapshotFiles are where a server's catalog keeps its index
// (catalog-index*) and what identifies the index's storage.
type snapshotFiles struct {
	path, log string
	// store identifies the storage (config.Storage.String without
	// redirect); a snapshot of another store is not used.
	store string
	// maxAge, when not zero, is the oldest snapshot used (on a shared
	// store: how long the journal keeps what other replicas changed).
	maxAge time.Duration
}

// persistIndex makes the catalog keep its index in dataDir across
// restarts; store identifies the storage, maxAge bounds the age of a
// snapshot used (0: any).
func (c *Catalog) persistIndex(dataDir, store string, maxAge time.Duration) {
	p := filepath.Join(dataDir, "catalog-index")
	c.snap = &snapshotFiles{path: p, log: p + ".log", store: store, maxAge: maxAge}
	if fi, err := os.Stat(c.snap.log); err == nil {
		c.logBytes = fi.Size()
	}
}

// logChange appends one line to the change log. Call with c.mu held.
func (c *Catalog) logChange(line string) {
	if c.snap == nil {
		return
	}
	if c.logBytes+int64(len(line)) > snapshotLogMax {
		// The next start cannot use the snapshot anyway.
		if putFile(c.snap.log, []byte("*\n")) == nil {
			c.logBytes = 2
		}
		return
	}
	if appendLine(c.snap.log, []byte(line)) == nil {
		c.logBytes += int64(len(line))
	}
}

// snapRepo is one repository of a snapshot.
type snapRepo struct {
	name  string
	size  int64
	dirty bool
	tags  []snapTag
	stale []string
}

type snapTag struct {
	name   string
	digest digest.Digest
	pushed time.Time
}

// snapshot is the parsed catalog-index file.
type snapshot struct {
	store   string
	offline string
	written time.Time
	repos   []snapRepo // sorted by name
}

// SaveIndex writes the catalog's index to its snapshot now, when the
// index is loaded and changed since the last one (a server does at a
// clean stop, and every snapshotEvery). A catalog that keeps no index
// does nothing.
func (c *Catalog) SaveIndex() error {
	if c.snap == nil {
		return nil
	}
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	c.mu.Lock()
	if !c.loaded || c.version == c.savedVersion {
		c.mu.Unlock()
		return nil
	}
	version := c.version
	snap := c.captureLocked()
	// The log goes with the snapshot being written: lines appended from
	// now on are what changed after it. A .prev left by a write that
	// failed stays (and this log with it): it is removed once a snapshot
	// is written.
	prev := c.snap.log + ".prev"
	if _, err := os.Stat(prev); errors.Is(err, os.ErrNotExist) {
		if err := os.Rename(c.snap.log, prev); err == nil {
			c.logBytes = 0
		}
	}
	c.mu.Unlock()
	if err := writeFileAtomic(c.snap.path, snap.encode()); err != nil {
		return fmt.Errorf("saving the catalog index: %w", err)
	}
	if err := os.Remove(prev); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("saving the catalog index: %w", err)
	}
	c.mu.Lock()
	c.savedVersion = max(c.savedVersion, version)
	c.mu.Unlock()
	return nil
}

// captureLocked copies the index into a snapshot. Call with c.mu held.
func (c *Catalog) captureLocked() *snapshot {
	names := c.names
	if !c.sorted {
		names = make([]string, 0, len(c.repos))
		for n := range c.repos {
			names = append(names, n)
		}
		sort.Strings(names)
	}
	s := &snapshot{store: c.snap.store, offline: c.offlineSeen, written: time.Now(), repos: make([]snapRepo, 0, len(names))}
	for _, n := range names {
		e, ok := c.repos[n]
		if !ok {
			continue
		}
		// One being refreshed may change: read it again after a restart.
		r := snapRepo{name: n, size: e.sum.Size, dirty: e.dirty || e.refreshing > 0, tags: make([]snapTag, 0, len(e.tags))}
		for tn, t := range e.tags {
			r.tags = append(r.tags, snapTag{name: tn, digest: t.digest, pushed: t.pushed})
		}
		sort.Slice(r.tags, func(i, j int) bool { return r.tags[i].name < r.tags[j].name })
		for tn := range e.stale {
			r.stale = append(r.stale, tn)
		}
		sort.Strings(r.stale)
		s.repos = append(s.repos, r)
	}
	return s
}

// encode renders the snapshot, one line per repository, tag or stale tag:
//
//	labreg-catalog-index 1
//	store STORE
//	offline MARK                 ("-" for none)
//	written UNIXNANO
//	r NAME SIZE [dirty]
//	t TAG DIGEST PUSHED-UNIXNANO  (a tag of the repository above)
//	s TAG                         (a tag of it to read again)
//	end COUNT                     (of repositories)
//
// Names, tags and digests hold no blanks; the last line guards against
// a file cut short.
func (s *snapshot) encode() []byte {
	var b bytes.Buffer
	b.Grow(64 + len(s.repos)*300)
	offline := strings.TrimSpace(s.offline)
	if offline == "" {
		offline = "-"
	}
	fmt.Fprintf(&b, "%s\nstore %s\noffline %s\nwritten %d\n", snapshotMagic, s.store, offline, s.written.UnixNano())
	var num []byte
	for _, r := range s.repos {
		b.WriteString("r ")
		b.WriteString(r.name)
		b.WriteByte(' ')
		b.Write(strconv.AppendInt(num[:0], r.size, 10))
		if r.dirty {
			b.WriteString(" dirty")
		}
		b.WriteByte('\n')
		for _, t := range r.tags {
			b.WriteString("t ")
			b.WriteString(t.name)
			b.WriteByte(' ')
			b.WriteString(string(t.digest))
			b.WriteByte(' ')
			var ns int64
			if !t.pushed.IsZero() {
				ns = t.pushed.UnixNano()
			}
			b.Write(strconv.AppendInt(num[:0], ns, 10))
			b.WriteByte('\n')
		}
		for _, t := range r.stale {
			b.WriteString("s ")
			b.WriteString(t)
			b.WriteByte('\n')
		}
	}
	fmt.Fprintf(&b, "end %d\n", len(s.repos))
	return b.Bytes()
}

// decodeSnapshot parses what encode wrote.
func decodeSnapshot(data []byte) (*snapshot, error) {
	s := &snapshot{}
	line := func() []byte {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			l := data
			data = nil
			return l
		}
		l := data[:i]
		data = data[i+1:]
		return l
	}
	header := func(key string) (string, error) {
		v, ok := bytes.CutPrefix(line(), []byte(key+" "))
		if !ok {
			return "", fmt.Errorf("no %s line", key)
		}
		return string(v), nil
	}
	if string(line()) != snapshotMagic {
		return nil, errors.New("not a catalog index of this version")
	}
	var err error
	if s.store, err = header("store"); err != nil {
		return nil, err
	}
	if s.offline, err = header("offline"); err != nil {
		return nil, err
	}
	if s.offline == "-" {
		s.offline = ""
	}
	w, err := header("written")
	if err != nil {
		return nil, err
	}
	ns, err := strconv.ParseInt(w, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("written: %w", err)
	}
	s.written = time.Unix(0, ns)
	var r *snapRepo
	for len(data) > 0 {
		l := line()
		if n, ok := bytes.CutPrefix(l, []byte("end ")); ok {
			count, ok := atoi(n)
			if !ok || int(count) != len(s.repos) || len(data) != 0 {
				return nil, fmt.Errorf("bad end %q after %d repositories", l, len(s.repos))
			}
			return s, nil
		}
		if len(l) < 2 || l[1] != ' ' {
			return nil, fmt.Errorf("bad line %q", l)
		}
		f := l[2:]
		switch l[0] {
		case 'r':
			name, rest, _ := bytes.Cut(f, []byte{' '})
			sz, dirty, _ := bytes.Cut(rest, []byte{' '})
			size, ok := atoi(sz)
			if len(name) == 0 || !ok {
				return nil, fmt.Errorf("bad line %q", l)
			}
			s.repos = append(s.repos, snapRepo{name: string(name), size: size, dirty: string(dirty) == "dirty"})
			r = &s.repos[len(s.repos)-1]
		case 't':
			tag, rest, _ := bytes.Cut(f, []byte{' '})
			dg, pushed, _ := bytes.Cut(rest, []byte{' '})
			ns, ok := atoi(pushed)
			if r == nil || len(tag) == 0 || len(dg) == 0 || !ok {
				return nil, fmt.Errorf("bad line %q", l)
			}
			t := snapTag{name: string(tag), digest: digest.Digest(dg)}
			if ns != 0 {
				t.pushed = time.Unix(0, ns).UTC()
			}
			r.tags = append(r.tags, t)
		case 's':
			if r == nil || len(f) == 0 {
				return nil, fmt.Errorf("bad line %q", l)
			}
			r.stale = append(r.stale, string(f))
		default:
			return nil, fmt.Errorf("bad line %q", l)
		}
	}
	return nil, errors.New("cut short")
}

// atoi parses a decimal int64 (a leading "-" allowed).
func atoi(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		d := int64(c - '0')
		if c < '0' || c > '9' || n > (math.MaxInt64-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	if neg {
		n = -n
	}
	return n, true
}

// readSnapshot reads the snapshot and the change logs written after it,
// and says why it cannot be used, if it cannot: the index is then read
// from storage. touched lists the changes the logs hold.
func (c *Catalog) readSnapshot() (s *snapshot, touched [][2]string, why error) {
	b, err := os.ReadFile(c.snap.path)
	if err != nil {
		return nil, nil, err
	}
	if s, err = decodeSnapshot(b); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", c.snap.path, err)
	}
	c.mu.Lock()
	offline := c.offlineSeen
	c.mu.Unlock()
	switch {
	case s.store != c.snap.store:
		return nil, nil, fmt.Errorf("the snapshot is of storage %s, not %s", s.store, c.snap.store)
	case strings.TrimSpace(s.offline) != strings.TrimSpace(offline):
		return nil, nil, errors.New("an offline tool changed the storage since the snapshot")
	case c.snap.maxAge > 0 && time.Since(s.written) > c.snap.maxAge:
		return nil, nil, fmt.Errorf("the snapshot is %s old, older than the journal keeps (%s)", time.Since(s.written).Round(time.Second), c.snap.maxAge)
	}
	for _, p := range []string{c.snap.log + ".prev", c.snap.log} {
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(make([]byte, 4096), 64<<10)
		for sc.Scan() {
			l := sc.Text()
			if l == "*" {
				return nil, nil, errors.New("the storage was reloaded (GC, scrub) after the snapshot")
			}
			f := strings.SplitN(l, " ", 3)
			if len(f) == 3 && f[0] == "R" && f[1] != "" {
				touched = append(touched, [2]string{f[1], f[2]})
			}
		}
	}
	return s, touched, nil
}

// loadSnapshot installs the snapshot as the index, with the changes the
// logs name marked for a refresh. It reports whether it did; why says
// why not (nil: there is no snapshot). Call it while c.loading is yours.
func (c *Catalog) loadSnapshot(gen uint64) (ok bool, why error) {
	s, touched, err := c.readSnapshot()
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	entries := make(map[string]*repoEntry, len(s.repos))
	names := make([]string, 0, len(s.repos))
	for _, r := range s.repos {
		e := &repoEntry{name: r.name, tags: make(map[string]tagEntry, len(r.tags)), dirty: r.dirty}
		var last time.Time
		for _, t := range r.tags {
			e.tags[t.name] = tagEntry{digest: t.digest, pushed: t.pushed}
			if t.pushed.After(last) {
				last = t.pushed
			}
		}
		if len(r.stale) > 0 {
			e.stale = make(map[string]bool, len(r.stale))
			for _, t := range r.stale {
				e.stale[t] = true
			}
		}
		e.sum = Repository{Name: r.name, Tags: len(r.tags), Size: r.size, LastPush: last}
		entries[r.name] = e
		names = append(names, r.name)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return false, errors.New("reloaded while the snapshot was read")
	}
	sorted := true
	for n, e := range c.repos { // a Touch that came in meanwhile wins
		if _, ok := entries[n]; !ok {
			sorted = false
		}
		entries[n] = e
	}
	c.repos = entries
	if sorted {
		c.names, c.sorted = names, true
	} else {
		c.sorted = false
	}
	for _, t := range touched {
		c.touchLocked(t[0], t[1], false)
	}
	c.loaded = true
	c.fromSnapshot = true
	if len(touched) == 0 {
		c.savedVersion = c.version // what the files hold: nothing to save
	}
	return true, nil
}

// verify reads every repository from storage and corrects the index
// where it differs from what storage holds; entries touched since it
// began are left to their refresh. It returns the number of repositories
// it corrected.
func (c *Catalog) verify(ctx context.Context) (int, error) {
	select {
	case <-c.cacheReady:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	c.mu.Lock()
	gen, begun := c.gen, c.touchSeq
	c.mu.Unlock()
	read, err := c.readAll(ctx)
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen || !c.loaded {
		return 0, nil // reloaded: the next read reads storage anyway
	}
	busy := func(e *repoEntry) bool { return e.touched > begun || e.dirty || len(e.stale) > 0 }
	fixed := 0
	seen := make(map[string]bool, len(read))
	for _, v := range read {
		if v.gone {
			continue
		}
		seen[v.name] = true
		e, ok := c.repos[v.name]
		if ok && (busy(e) || sameEntry(e, v)) {
			continue
		}
		if !ok {
			c.sorted = false
		}
		c.repos[v.name] = v
		fixed++
	}
	for n, e := range c.repos {
		if !seen[n] && !busy(e) {
			delete(c.repos, n)
			c.sorted = false
			fixed++
		}
	}
	if fixed > 0 {
		c.version++
	}
	c.fromSnapshot = false
	return fixed, nil
}

// sameEntry reports whether two entries list the same tags and summary.
func sameEntry(a, b *repoEntry) bool {
	if a.sum != b.sum || len(a.tags) != len(b.tags) {
		return false
	}
	for n, t := range a.tags {
		if u, ok := b.tags[n]; !ok || u.digest != t.digest || !u.pushed.Equal(t.pushed) {
			return false
		}
	}
	return true
}

// keepIndex saves the index every snapshotEvery while it changes, and
// compacts the summary cache file when it has grown, until ctx ends (a
// server runs it while it serves, and calls SaveIndex once more after its
// last request). After a start from a snapshot it verifies the index
// against storage once, verifyDelay after the index was loaded.
func (c *Catalog) keepIndex(ctx context.Context) {
	if c.snap == nil {
		return
	}
	t := time.NewTicker(snapshotEvery)
	defer t.Stop()
	var verifyAt <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.snapLoaded:
			verifyAt = time.After(verifyDelay)
			continue
		case <-verifyAt:
			verifyAt = nil
			start := time.Now()
			n, err := c.verify(ctx)
			switch {
			case err != nil && ctx.Err() == nil:
				c.warn("verifying the catalog index against storage", "err", err)
			case err == nil:
				c.info("catalog index verified against storage", "corrected_repositories", n, "took", time.Since(start).Round(time.Millisecond))
			}
		case <-t.C:
		}
		if err := c.SaveIndex(); err != nil {
			c.warn("saving the catalog index", "err", err)
		}
		if err := c.compactCache(); err != nil {
			c.warn("compacting the summary cache", "err", err)
		}
	}
}

func (c *Catalog) warn(msg string, args ...any) {
	if c.log != nil {
		c.log.Warn(msg, args...)
	}
}

func (c *Catalog) info(msg string, args ...any) {
	if c.log != nil {
		c.log.Info(msg, args...)
	}
}
