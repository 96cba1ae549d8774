package registry

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
)

// randomID is 16 random hex digits: names that never repeat.
func randomID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// tempPath is a temporary file's name beside p (P.<random>.tmp): what
// removeStrayTemps removes when a crash leaves one.
func tempPath(p string) string { return p + "." + randomID() + ".tmp" }

// putFile writes a small file the way distribution's filesystem driver
// PutContent does: to a temporary name in the same directory, fsynced,
// renamed into place. Readers never see a partial file.
func putFile(p string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o777); err != nil {
		return err
	}
	tmp := tempPath(p)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o666)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// writeFileAtomic is putFile followed by an fsync of the directory, so
// that the rename itself survives a crash.
func writeFileAtomic(p string, b []byte) error {
	if err := putFile(p, b); err != nil {
		return err
	}
	return syncDirs(filepath.Dir(p))
}

// syncDirs fsyncs directories, so that names just created or renamed in
// them are on disk before the client is told the blob is committed.
func syncDirs(dirs ...string) error {
	for _, d := range dirs {
		f, err := os.Open(d)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("syncing directory %s: %w", d, err)
		}
	}
	return nil
}
