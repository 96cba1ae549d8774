package build

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/labreg/labreg/internal/units"
)

// fsEntry is one file of a stage's flattened filesystem.
type fsEntry struct {
	mode     fs.FileMode
	link     string
	uid, gid int
	data     []byte
}

// copy runs COPY/ADD: it resolves sources, places them under dest and adds
// one layer.
func (e *evaluator) copy(ctx context.Context, st *stage, code, from string, srcs []string, dest, chown, chmod string, unpack bool, unmatched map[string]struct{}) error {
	var mode fs.FileMode
	if chmod != "" {
		m, err := strconv.ParseUint(chmod, 8, 32)
		if err != nil || m > 0o7777 {
			return fmt.Errorf("--chmod=%s: not an octal mode", chmod)
		}
		mode = fs.FileMode(m)
	}
	if dest == "" {
		return errors.New("no destination")
	}
	destDir := strings.HasSuffix(dest, "/") || len(srcs) > 1 || slices.ContainsFunc(srcs, hasGlob)
	if !path.IsAbs(dest) {
		dest = path.Join("/", st.cfg.Config.WorkingDir, dest)
	}
	dest = path.Clean(dest)

	var sources []source
	if from != "" {
		if e.dry {
			return nil // the other stage's files exist only when it is built
		}
		var err error
		if sources, err = e.fromSources(ctx, from, srcs); err != nil {
			return err
		}
	} else {
		for _, s := range srcs {
			if e.dry && st.envUnknown && len(unmatched) > 0 {
				continue // may use the base image's ENV: checked when building
			}
			got, err := e.ctxDir.resolve(s, e.dry)
			if err != nil {
				return err
			}
			sources = append(sources, got...)
		}
		if len(sources) > 1 {
			destDir = true
		}
	}
	if e.dry {
		return nil
	}
	uid, gid := 0, 0
	if chown != "" {
		var err error
		if uid, gid, err = e.owner(ctx, st, chown); err != nil {
			return fmt.Errorf("--chown=%s: %w", chown, err)
		}
	}
	var entries []layerEntry
	for _, s := range sources {
		if unpack && !s.isDir && from == "" && len(s.files) == 1 {
			if ents, ok, err := untar(s.files[0], dest, uid, gid, chown != ""); err != nil {
				return fmt.Errorf("unpacking %q: %w", s.name, err)
			} else if ok {
				entries = append(entries, ents...)
				continue
			}
		}
		root := dest
		if !s.isDir && destDir {
			root = path.Join(dest, s.base)
		}
		if s.isDir {
			entries = append(entries, layerEntry{name: dest, mode: fs.ModeDir | 0o755, uid: uid, gid: gid})
		}
		for _, f := range s.files {
			le := layerEntry{name: path.Join(root, f.rel), mode: f.mode, link: f.link, uid: uid, gid: gid, size: f.size, open: f.open}
			if mode != 0 && f.mode&fs.ModeSymlink == 0 {
				le.mode = f.mode&fs.ModeType | mode
			}
			entries = append(entries, le)
		}
	}
	start := time.Now()
	l, err := writeLayer(entries, e.epoch, st.layerMT, e.tmpDir)
	if err != nil {
		return err
	}
	size, _ := l.Size()
	fmt.Fprintf(e.progress, "%s: %s (%d entries, %s compressed, %s)\n", e.name, code, len(entries),
		units.HumanSize(size), time.Since(start).Round(time.Millisecond))
	diffID, _ := l.DiffID()
	st.cfg.RootFS.Type = "layers"
	st.cfg.RootFS.DiffIDs = append(st.cfg.RootFS.DiffIDs, diffID)
	e.history(st, code, false)
	st.adds = append(st.adds, mutate.Addendum{Layer: l, MediaType: st.layerMT,
		History: st.cfg.History[len(st.cfg.History)-1]})
	st.img, st.fs = nil, nil
	return nil
}

// fromSources resolves COPY --from sources in another stage or an image.
func (e *evaluator) fromSources(ctx context.Context, from string, srcs []string) ([]source, error) {
	src := e.stageByName(from)
	if src == nil {
		img, err := e.resolve(ctx, from)
		if err != nil {
			return nil, fmt.Errorf("--from=%s: %w", from, err)
		}
		src = &stage{img: img}
	}
	files, err := src.filesystem()
	if err != nil {
		return nil, fmt.Errorf("--from=%s: %w", from, err)
	}
	var out []source
	for _, s := range srcs {
		p := path.Clean("/" + s)
		var matches []string
		if hasGlob(p) {
			for name := range files {
				if ok, _ := path.Match(p, name); ok {
					matches = append(matches, name)
				}
			}
			slices.Sort(matches)
		} else if _, ok := files[p]; ok {
			matches = []string{p}
		}
		if len(matches) == 0 {
			return nil, fmt.Errorf("source %q not found in --from=%s", s, from)
		}
		for _, m := range matches {
			fe := files[m]
			so := source{name: s, isDir: fe.mode.IsDir(), base: path.Base(m)}
			add := func(rel string, fe *fsEntry) {
				data := fe.data
				so.files = append(so.files, srcFile{rel: rel, mode: fe.mode, link: fe.link, size: int64(len(data)),
					open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }})
			}
			if !so.isDir {
				add("", fe)
			} else {
				var names []string
				for name := range files {
					if strings.HasPrefix(name, m+"/") || (m == "/" && name != "/") {
						names = append(names, name)
					}
				}
				slices.Sort(names)
				for _, name := range names {
					rel := strings.TrimPrefix(strings.TrimPrefix(name, m), "/")
					add(rel, files[name])
				}
			}
			out = append(out, so)
		}
	}
	return out, nil
}

// filesystem flattens the stage's image into memory (for COPY --from and
// --chown name lookups).
func (st *stage) filesystem() (map[string]*fsEntry, error) {
	if st.fs != nil {
		return st.fs, nil
	}
	img, err := st.image()
	if err != nil {
		return nil, err
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	files := map[string]*fsEntry{"/": {mode: fs.ModeDir | 0o755}}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading image filesystem: %w", err)
		}
		name := path.Clean("/" + h.Name)
		fe := &fsEntry{mode: h.FileInfo().Mode(), link: h.Linkname, uid: h.Uid, gid: h.Gid}
		switch h.Typeflag {
		case tar.TypeReg:
			if fe.data, err = io.ReadAll(tr); err != nil {
				return nil, fmt.Errorf("reading %s from image: %w", name, err)
			}
		case tar.TypeLink:
			if t, ok := files[path.Clean("/"+h.Linkname)]; ok {
				fe = &fsEntry{mode: t.mode, uid: t.uid, gid: t.gid, data: t.data}
			}
		}
		files[name] = fe
	}
	st.fs = files
	return files, nil
}

// owner parses --chown USER[:GROUP]; names are looked up in the stage's
// /etc/passwd and /etc/group.
func (e *evaluator) owner(ctx context.Context, st *stage, chown string) (int, int, error) {
	u, g, hasGroup := strings.Cut(chown, ":")
	lookup := func(name, file string) (int, int, error) {
		if n, err := strconv.Atoi(name); err == nil && n >= 0 {
			return n, -1, nil
		}
		files, err := st.filesystem()
		if err != nil {
			return 0, 0, err
		}
		f, ok := files[file]
		if !ok {
			return 0, 0, fmt.Errorf("%q is not a number and the image has no %s", name, file)
		}
		sc := bufio.NewScanner(bytes.NewReader(f.data))
		for sc.Scan() {
			parts := strings.Split(sc.Text(), ":")
			if len(parts) >= 3 && parts[0] == name {
				id, err := strconv.Atoi(parts[2])
				if err != nil {
					break
				}
				gid := -1
				if len(parts) >= 4 {
					if n, err := strconv.Atoi(parts[3]); err == nil {
						gid = n
					}
				}
				return id, gid, nil
			}
		}
		return 0, 0, fmt.Errorf("no %q in the image's %s", name, file)
	}
	uid, primary, err := lookup(u, "/etc/passwd")
	if err != nil {
		return 0, 0, err
	}
	gid := uid
	if primary >= 0 {
		gid = primary
	}
	if hasGroup {
		if gid, _, err = lookup(g, "/etc/group"); err != nil {
			return 0, 0, err
		}
	}
	return uid, gid, nil
}

// untar unpacks a local tar archive for ADD. ok is false when the file is
// not an archive (then it is copied as is).
func untar(f srcFile, dest string, uid, gid int, chown bool) ([]layerEntry, bool, error) {
	rc, err := f.open()
	if err != nil {
		return nil, false, err
	}
	defer rc.Close()
	br := bufio.NewReader(rc)
	var r io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := newGzipReader(br)
		if err != nil {
			return nil, false, nil
		}
		r = zr
	}
	tr := tar.NewReader(r)
	var out []layerEntry
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if len(out) == 0 {
				return nil, false, nil // not a tar archive
			}
			return nil, true, err
		}
		name := path.Join(dest, path.Clean("/"+h.Name))
		le := layerEntry{name: name, mode: h.FileInfo().Mode(), link: h.Linkname, uid: h.Uid, gid: h.Gid}
		if chown {
			le.uid, le.gid = uid, gid
		}
		if h.Typeflag == tar.TypeLink {
			le.hardlink, le.link = true, path.Join(dest, path.Clean("/"+h.Linkname))
		}
		if h.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(tr)
			if err != nil {
				return nil, true, err
			}
			le.size = int64(len(data))
			le.open = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }
		}
		out = append(out, le)
	}
	if err := orderHardLinks(out); err != nil {
		return nil, true, err
	}
	return out, len(out) > 0, nil
}

// orderHardLinks makes the hard links among entries writable in a layer,
// whose entries are sorted by name while a link must follow its target:
// of the names sharing one file, the first in name order takes the file
// (contents, mode, owner) and the others become links to it. A link to a
// name that is not an earlier regular file of the archive is an error.
func orderHardLinks(entries []layerEntry) error {
	idx := map[string]int{} // name -> index of its last entry
	for i, le := range entries {
		idx[le.name] = i
	}
	groups := map[int][]int{} // file entry -> its link entries
	file := map[int]int{}     // link entry -> its file entry
	for i, le := range entries {
		if !le.hardlink {
			continue
		}
		j, ok := idx[le.link]
		if ok && j < i && entries[j].hardlink {
			j = file[j] // a link to a link: both name the file
		}
		if !ok || j >= i || !entries[j].mode.IsRegular() {
			return fmt.Errorf("hard link %s: its target %s is not a file earlier in the archive", le.name, le.link)
		}
		file[i] = j
		groups[j] = append(groups[j], i)
	}
	for file, links := range groups {
		first := file
		for _, l := range links {
			if entries[l].name < entries[first].name {
				first = l
			}
		}
		if first != file {
			name := entries[first].name
			entries[first] = entries[file]
			entries[first].name = name
		}
		for _, l := range append(links, file) {
			if l != first {
				entries[l] = layerEntry{name: entries[l].name, mode: entries[first].mode, hardlink: true,
					link: entries[first].name, uid: entries[first].uid, gid: entries[first].gid}
			}
		}
	}
	return nil
}
