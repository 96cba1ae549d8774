package registry

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
)

// StorageRetryAfter is what a write refused for a full disk is told to wait.
const StorageRetryAfter = 60 * time.Second

// writeStorageError answers a failure to write to storage: 503
// UNAVAILABLE with Retry-After when the disk or quota is full, else 500
// UNKNOWN; the message names the condition (the errno's text), never a
// path.
func writeStorageError(w http.ResponseWriter, err error) {
	writeStorageFailure(w, isNoSpace(err), errnoText(err), "the upload was discarded")
}

// writeStorageFailure answers a write the storage refused: 503 UNAVAILABLE
// with Retry-After when the disk or quota is full, else 500 UNKNOWN; cond
// names the condition (never a path), lost says what became of the
// request's data.
func writeStorageFailure(w http.ResponseWriter, full bool, cond, lost string) {
	if full {
		w.Header().Set("Retry-After", strconv.Itoa(int(StorageRetryAfter.Seconds())))
		WriteError(w, http.StatusServiceUnavailable, errcode.ErrorCodeUnavailable.WithMessage(
			"the registry's storage is full ("+cond+"); "+lost+": retry once space is freed"))
		return
	}
	WriteError(w, http.StatusInternalServerError, errcode.ErrorCodeUnknown.WithMessage(
		"the registry could not write to its storage ("+cond+"); "+lost+": retry"))
}

// isNoSpace reports a full disk or quota.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// FreeSpace is the space left on the data dir's file system.
type FreeSpace struct {
	Free, Size int64
}

// Percent is the free share of the file system, 0-100.
func (f FreeSpace) Percent() float64 {
	if f.Size <= 0 {
		return 100
	}
	return 100 * float64(f.Free) / float64(f.Size)
}

// freeSpace reads the free space (for unprivileged users) of dir's file system.
func freeSpace(dir string) (FreeSpace, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return FreeSpace{}, err
	}
	return FreeSpace{Free: int64(st.Bavail) * st.Bsize, Size: int64(st.Blocks) * st.Bsize}, nil
}

// FreeSpace reports the space left on the data dir's file system.
func (s *Server) FreeSpace() (FreeSpace, error) { return freeSpace(s.opts.DataDir) }

// lowSpace returns why the data dir is below the free-space threshold, or "".
func (s *Server) lowSpace() string {
	fs, err := freeSpace(s.opts.DataDir)
	if err != nil {
		return "cannot read free space: " + errnoText(err)
	}
	if p := fs.Percent(); p < s.opts.MinFreePercent {
		return fmt.Sprintf("%.2f%% free (%d of %d bytes), below the %g%% threshold", p, fs.Free, fs.Size, s.opts.MinFreePercent)
	}
	return ""
}

// errnoText is err's errno text, or a generic word: never a path.
func errnoText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return "I/O error"
}

// appendLine appends line to the file at p in one write, or not at all: a
// failed or short write (a full disk) is cut off again, so that the file
// stays as it was and the next append starts on a line of its own.
func appendLine(p string, line []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	n, err := f.Write(line)
	if err == nil && n < len(line) {
		err = fmt.Errorf("short write (%d of %d bytes)", n, len(line))
	}
	if err != nil {
		if terr := f.Truncate(fi.Size()); terr != nil {
			return errors.Join(err, fmt.Errorf("cutting off the partial line: %w", terr))
		}
		return err
	}
	return nil
}

// tempName matches the temporary files putFile writes (<name>.<16 hex>.tmp).
var tempName = regexp.MustCompile(`\.[0-9a-f]{16}\.tmp$`)

// strayTemps lists putFile's temporary files under root last modified
// before before: a crash between their creation and their rename leaves
// them behind.
func strayTemps(root string, before time.Time) ([]string, error) {
	var out []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() || !tempName.MatchString(d.Name()) {
			return nil
		}
		if fi, err := d.Info(); err == nil && fi.ModTime().Before(before) {
			out = append(out, p)
		}
		return nil
	})
	return out, err
}

// strayTempsDelay is how long after its start a server looks for stray
// temporary files.
const strayTempsDelay = 5 * time.Second

// removeStrayTemps removes the temporary files a crash left in the data
// dir, from before start; it runs in the background strayTempsDelay after
// a server starts.
func (s *Server) removeStrayTemps(start time.Time) {
	temps, err := strayTemps(s.opts.DataDir, start)
	if err != nil {
		s.log.Warn("looking for stray temporary files", "err", err)
	}
	for _, p := range temps {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("removing a stray temporary file", "path", p, "err", err)
		}
	}
	if len(temps) > 0 {
		s.log.Info("removed stray temporary files", "count", len(temps))
	}
}
