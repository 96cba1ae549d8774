package build

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
)

// layerEntry is one path in a layer being written.
type layerEntry struct {
	name     string // absolute, clean path in the image
	mode     fs.FileMode
	link     string // symlink target, or the hard link's target name when hardlink
	hardlink bool
	uid, gid int
	size     int64
	open     func() (io.ReadCloser, error)
}

// memLimit is the size above which a layer is spooled to a temporary file
// instead of memory.
const memLimit = 32 << 20

// writeLayer writes entries as a reproducible gzip tar layer: entries
// sorted by path, missing parent directories added (0755, root), every
// timestamp set to epoch, no user or group names. Big layers go to a file
// in tmpDir; the caller removes tmpDir.
func writeLayer(entries []layerEntry, epoch time.Time, mt types.MediaType, tmpDir string) (v1.Layer, error) {
	byName := map[string]layerEntry{}
	var total int64
	for _, e := range entries {
		byName[e.name] = e
		total += e.size
	}
	for _, e := range entries {
		for d := path.Dir(e.name); d != "/" && d != "."; d = path.Dir(d) {
			if _, ok := byName[d]; ok {
				break
			}
			byName[d] = layerEntry{name: d, mode: fs.ModeDir | 0o755}
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		if n != "/" {
			names = append(names, n)
		}
	}
	sort.Strings(names)

	var (
		out  io.Writer
		buf  *bytes.Buffer
		file *os.File
		err  error
	)
	if total > memLimit {
		if file, err = os.CreateTemp(tmpDir, "layer-*.tar.gz"); err != nil {
			return nil, fmt.Errorf("creating layer file: %w", err)
		}
		defer file.Close()
		out = file
	} else {
		buf = &bytes.Buffer{}
		out = buf
	}
	// Two goroutines share the work: this one reads files, writes the tar
	// stream and hashes it (the diff ID); the other compresses, hashes the
	// result (the digest) and stores it.
	compressed := sha256.New()
	counter := &countWriter{}
	pr, pw := io.Pipe()
	zdone := make(chan error, 1)
	go func() {
		zw, _ := gzip.NewWriterLevel(io.MultiWriter(out, compressed, counter), gzip.BestSpeed)
		_, err := io.CopyBuffer(zw, pr, make([]byte, 1<<20))
		if cerr := zw.Close(); err == nil {
			err = cerr
		}
		pr.CloseWithError(err)
		zdone <- err
	}()
	uncompressed := sha256.New()
	bw := bufio.NewWriterSize(pw, 1<<20)
	tw := tar.NewWriter(io.MultiWriter(bw, uncompressed))
	werr := func() error {
		for _, n := range names {
			if err := writeEntry(tw, byName[n], epoch); err != nil {
				return err
			}
		}
		if err := tw.Close(); err != nil {
			return fmt.Errorf("writing layer: %w", err)
		}
		return bw.Flush()
	}()
	pw.CloseWithError(werr)
	zerr := <-zdone
	if werr != nil {
		return nil, werr
	}
	if zerr != nil {
		return nil, fmt.Errorf("compressing layer: %w", zerr)
	}
	l := &blobLayer{
		digest:    hashOf(compressed),
		diffID:    hashOf(uncompressed),
		size:      counter.n,
		mediaType: mt,
	}
	if file != nil {
		if err := file.Close(); err != nil {
			return nil, fmt.Errorf("writing layer file: %w", err)
		}
		l.file = file.Name()
	} else {
		l.data = buf.Bytes()
	}
	return l, nil
}

func writeEntry(tw *tar.Writer, e layerEntry, epoch time.Time) error {
	h := &tar.Header{
		Name:    strings.TrimPrefix(e.name, "/"),
		Uid:     e.uid,
		Gid:     e.gid,
		ModTime: epoch,
	}
	h.Mode = int64(e.mode.Perm())
	if e.mode&fs.ModeSetuid != 0 {
		h.Mode |= 0o4000
	}
	if e.mode&fs.ModeSetgid != 0 {
		h.Mode |= 0o2000
	}
	if e.mode&fs.ModeSticky != 0 {
		h.Mode |= 0o1000
	}
	switch {
	case e.hardlink:
		h.Typeflag = tar.TypeLink
		h.Linkname = strings.TrimPrefix(e.link, "/")
	case e.mode.IsDir():
		h.Typeflag = tar.TypeDir
		h.Name += "/"
	case e.mode&fs.ModeSymlink != 0:
		h.Typeflag = tar.TypeSymlink
		h.Linkname = e.link
	case e.mode.IsRegular():
		h.Typeflag = tar.TypeReg
		h.Size = e.size
	default:
		return nil // devices, sockets, pipes: not copied
	}
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("writing %s into the layer: %w", e.name, err)
	}
	if h.Typeflag != tar.TypeReg || e.size == 0 {
		return nil
	}
	r, err := e.open()
	if err != nil {
		return fmt.Errorf("reading %s: %w", e.name, err)
	}
	defer r.Close()
	n, err := io.Copy(tw, r)
	if err != nil {
		return fmt.Errorf("copying %s into the layer: %w", e.name, err)
	}
	if n != e.size {
		return fmt.Errorf("copying %s into the layer: file changed size during the build", e.name)
	}
	return nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func hashOf(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

// blobLayer is a finished gzip layer held in memory or in a file.
type blobLayer struct {
	digest, diffID v1.Hash
	size           int64
	mediaType      types.MediaType
	data           []byte
	file           string
}

var _ v1.Layer = (*blobLayer)(nil)

func (l *blobLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *blobLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *blobLayer) Size() (int64, error)                { return l.size, nil }
func (l *blobLayer) MediaType() (types.MediaType, error) { return l.mediaType, nil }

func (l *blobLayer) Compressed() (io.ReadCloser, error) {
	if l.file != "" {
		return os.Open(l.file)
	}
	return io.NopCloser(bytes.NewReader(l.data)), nil
}

func (l *blobLayer) Uncompressed() (io.ReadCloser, error) {
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(rc)
	if err != nil {
		rc.Close()
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{zr, rc}, nil
}
