package registry

// Compaction of the history file (events.go): in place, without losing a
// line on a crash.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"
)

// maybeCompact starts a compaction in the background once the file has
// grown by max(compact size, its compacted size) past the last
// compaction's output. l.mu is held.
func (l *EventLog) maybeCompact() {
	if l.compacting || l.size-l.base < max(l.compact, l.base) || l.now().Sub(l.failedAt) < compactRetry {
		return
	}
	l.compacting = true
	go func() {
		err := l.compactOnce(context.Background()) // the history's own: it ends by itself
		l.mu.Lock()
		l.compacting = false
		if err != nil {
			l.failedAt = l.now()
		}
		l.cond.Broadcast()
		l.mu.Unlock()
		if err != nil {
			l.log.Warn("compacting the history", "path", l.path, "err", err)
		}
	}()
}

// Compact compacts the file now (after the compaction under way, if any).
// A ctx that ends stops it before it replaces the file.
func (l *EventLog) Compact(ctx context.Context) error {
	l.mu.Lock()
	for l.compacting {
		l.cond.Wait()
	}
	l.compacting = true
	l.mu.Unlock()
	err := l.compactOnce(ctx)
	l.mu.Lock()
	l.compacting = false
	l.cond.Broadcast()
	l.mu.Unlock()
	return err
}

// errLocked: an offline GC or scrub holds <data>/.lock.
var errLocked = errors.New("the data directory is locked by an offline gc or scrub; trying again later")

// compactOnce rewrites the file (see the top of events.go). l.compacting
// is set by the caller.
func (l *EventLog) compactOnce(ctx context.Context) error {
	l.mu.Lock()
	f, now := l.f, l.now()
	l.mu.Unlock()
	if f == nil {
		return errors.New("the history file is not open")
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	// The lines up to upto are read without holding appends up.
	upto := fi.Size()
	var h history
	h.pulls = pullCounters{}
	whole, err := readHistory(io.NewSectionReader(f, 0, upto), &h, l.keep, hourOf(now))
	if err != nil {
		return fmt.Errorf("reading: %w", err)
	}
	upto = whole // a torn line (a foreign writer killed) is left behind
	h.trim(l.keep, now)
	tmp, err := l.writeCompacted(&h)
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			os.Remove(tmp)
		}
	}()
	if l.afterRead != nil {
		l.afterRead()
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	// With appends held: copy what came after upto, rename.
	lock, err := os.OpenFile(l.lockPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("opening the data directory's lock: %w", err)
	}
	defer lock.Close() // and unlocks
	if err := l.swap(lock, tmp, upto, &h, now); err != nil {
		return err
	}
	done = true
	return syncDirs(filepath.Dir(l.path))
}

// swap copies the lines appended after upto to the compacted file tmp,
// renames it over the history and appends to it from now on, with h (and
// the lines copied) as the history in memory; appends wait meanwhile.
// lock is the data dir's lock, taken shared (errLocked when it cannot be).
func (l *EventLog) swap(lock *os.File, tmp string, upto int64, h *history, now time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		return errLocked
	}
	nf, err := os.OpenFile(tmp, os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	compacted, err := nf.Seek(0, io.SeekEnd)
	var fi, nfi os.FileInfo
	if err == nil {
		fi, err = l.f.Stat()
	}
	if err == nil {
		_, err = io.Copy(nf, io.NewSectionReader(l.f, upto, fi.Size()-upto))
	}
	if err == nil {
		err = nf.Sync()
	}
	if err == nil {
		nfi, err = nf.Stat()
	}
	if err == nil {
		err = os.Rename(tmp, l.path)
	}
	if err != nil {
		nf.Close()
		return fmt.Errorf("replacing the file: %w", err)
	}
	// The lines appended meanwhile, in memory as in the file.
	if _, err := readHistory(io.NewSectionReader(l.f, upto, fi.Size()-upto), h, l.keep, hourOf(now)); err != nil {
		l.log.Warn("reading the history's newest lines", "path", l.path, "err", err)
	}
	l.f.Close()
	l.f, l.size, l.base = nf, nfi.Size(), compacted
	l.hist, l.foldedAt = *h, hourOf(now)
	return nil
}

// writeCompacted writes h to a new temporary file beside the history
// (putFile's naming: removeStrayTemps removes one a crash leaves),
// fsynced, and returns its name.
func (l *EventLog) writeCompacted(h *history) (string, error) {
	name := tempPath(l.path)
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", err
	}
	err = writeHistory(f, h)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", fmt.Errorf("writing the compacted history: %w", err)
	}
	return name, nil
}

// writeHistory writes h as lines: the journal mark, the events, the
// counts of each repository and reference (sorted).
func writeHistory(w io.Writer, h *history) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	if h.journal > 0 {
		if err := enc.Encode(struct {
			Journal int64 `json:"journal"`
		}{h.journal}); err != nil {
			return err
		}
	}
	for _, e := range h.events {
		if err := enc.Encode(e); err != nil {
			return err
		}
	}
	var line []byte
	repos := make([]string, 0, len(h.pulls))
	for r := range h.pulls {
		repos = append(repos, r)
	}
	sort.Strings(repos)
	for _, repo := range repos {
		refs := h.pulls[repo]
		names := make([]string, 0, len(refs))
		for ref := range refs {
			names = append(names, ref)
		}
		sort.Strings(names)
		for _, ref := range names {
			line = appendCountsLine(line[:0], repo, ref, encodeCells(refs[ref]))
			if _, err := bw.Write(line); err != nil {
				return err
			}
		}
	}
	return bw.Flush()
}
