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

	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// baseResolver returns the image a FROM (or COPY --from) names.
type baseResolver func(ctx context.Context, ref string) (v1.Image, error)

// evaluator runs a Dockerfile's instructions. In dry mode (planning) it
// builds no layers and fetches no base image: it expands every
// instruction and checks every local source, so that a bad Dockerfile
// fails before anything is pulled or pushed.
type evaluator struct {
	df       *Dockerfile
	ctxDir   *buildContext
	args     map[string]string
	dry      bool
	resolve  baseResolver
	platform v1.Platform
	epoch    time.Time
	tmpDir   string
	progress io.Writer
	name     string // the image's short name for progress lines

	meta   *envList
	lex    *shell.Lex
	stages []*stage
}

type stage struct {
	name   string
	index  int
	base   v1.Image // nil for scratch (and in dry mode)
	cfg    *v1.ConfigFile
	adds   []mutate.Addendum
	vars   *envList // ENV and ARG values, for expansion
	shell  []string
	cmdSet bool
	// envUnknown: planning without the base image, whose ENV may define
	// variables the Dockerfile uses.
	envUnknown bool
	layerMT    types.MediaType
	oci        bool
	img        v1.Image
	fs         map[string]*fsEntry // flattened filesystem, for COPY --from
}

type fsEntry struct {
	mode     fs.FileMode
	link     string
	uid, gid int
	data     []byte
}

func (e *evaluator) run(ctx context.Context) (v1.Image, error) {
	var err error
	e.lex = shell.NewLex(e.df.Escape)
	if e.meta, err = e.df.metaArgs(e.args); err != nil {
		return nil, err
	}
	for i, sn := range e.df.Stages {
		st, err := e.from(ctx, i, sn)
		if err != nil {
			return nil, err
		}
		e.stages = append(e.stages, st)
		for _, nd := range sn.commands {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if err := e.dispatch(ctx, st, nd); err != nil {
				return nil, e.df.errAt(nd, err)
			}
		}
	}
	if e.dry {
		return nil, nil
	}
	return e.stages[len(e.stages)-1].image()
}

func (e *evaluator) from(ctx context.Context, i int, sn *stageNodes) (*stage, error) {
	baseName, _, err := e.lex.ProcessWord(sn.baseName, e.meta)
	if err != nil {
		return nil, e.df.errAt(sn.from, err)
	}
	if sn.platform != "" {
		return nil, e.df.errAt(sn.from, errors.New("--platform is not supported by the native engine"))
	}
	st := &stage{name: sn.name, index: i, vars: newEnvList(), shell: []string{"/bin/sh", "-c"}}
	if prev := e.stageByName(baseName); prev != nil && e.dry {
		st.cfg = prev.cfg.DeepCopy()
		st.layerMT, st.oci, st.envUnknown = prev.layerMT, prev.oci, prev.envUnknown
	} else if prev != nil {
		img, err := prev.image()
		if err != nil {
			return nil, err
		}
		if err := st.setBase(img, e.dry); err != nil {
			return nil, e.df.errAt(sn.from, err)
		}
		if prev.cfg != nil {
			st.cfg = prev.cfg.DeepCopy()
			st.shell = slices.Clone(prev.shell)
		}
	} else if baseName == "scratch" {
		st.cfg = &v1.ConfigFile{}
		st.layerMT, st.oci = types.OCILayer, true
	} else if e.dry {
		st.cfg = &v1.ConfigFile{}
		st.layerMT, st.oci = types.OCILayer, true
		st.envUnknown = true
	} else {
		fmt.Fprintf(e.progress, "%s: FROM %s\n", e.name, baseName)
		img, err := e.resolve(ctx, baseName)
		if err != nil {
			return nil, e.df.errAt(sn.from, err)
		}
		if err := st.setBase(img, e.dry); err != nil {
			return nil, e.df.errAt(sn.from, fmt.Errorf("base image %s: %w", baseName, err))
		}
		if len(st.cfg.Config.OnBuild) > 0 {
			return nil, e.df.errAt(sn.from, fmt.Errorf("base image %s has ONBUILD triggers, which the native engine does not run; use --engine buildkit", baseName))
		}
	}
	if st.cfg.OS == "" {
		st.cfg.OS = e.platform.OS
	}
	if st.cfg.Architecture == "" {
		st.cfg.Architecture = e.platform.Architecture
		st.cfg.Variant = e.platform.Variant
	}
	st.cfg.Created = v1.Time{Time: e.epoch}
	st.vars.fromSlice(st.cfg.Config.Env)
	if len(st.cfg.Config.Shell) > 0 {
		st.shell = slices.Clone(st.cfg.Config.Shell)
	}
	return st, nil
}

func (st *stage) setBase(img v1.Image, dry bool) error {
	if dry || img == nil {
		st.cfg = &v1.ConfigFile{}
		st.layerMT, st.oci = types.OCILayer, true
		return nil
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("reading config: %w", err)
	}
	mt, err := img.MediaType()
	if err != nil {
		return fmt.Errorf("reading manifest: %w", err)
	}
	st.base = img
	st.cfg = cf.DeepCopy()
	if mt == types.DockerManifestSchema2 {
		st.layerMT = types.DockerLayer
	} else {
		st.layerMT, st.oci = types.OCILayer, true
	}
	return nil
}

func (e *evaluator) stageByName(name string) *stage {
	for _, s := range e.stages {
		if s.name != "" && s.name == strings.ToLower(name) {
			return s
		}
	}
	if n, err := strconv.Atoi(name); err == nil && n >= 0 && n < len(e.stages) {
		return e.stages[n]
	}
	return nil
}

// image assembles the stage's image: base + new layers + config.
func (st *stage) image() (v1.Image, error) {
	if st.img != nil {
		return st.img, nil
	}
	base := st.base
	if base == nil {
		base = emptyImage(st.oci)
	}
	img, err := mutate.Append(base, st.adds...)
	if err != nil {
		return nil, fmt.Errorf("assembling image: %w", err)
	}
	// The config we kept has the right history and diff IDs already.
	if img, err = mutate.ConfigFile(img, st.cfg); err != nil {
		return nil, fmt.Errorf("assembling image config: %w", err)
	}
	st.img = img
	return img, nil
}

// expand expands the instruction's words with the stage's variables.
// unmatched collects names that had no value.
func (e *evaluator) expand(st *stage, cmd any, unmatched map[string]struct{}) error {
	if _, isArg := cmd.(*instructions.ArgCommand); isArg {
		return nil
	}
	ex, ok := cmd.(instructions.SupportsSingleWordExpansion)
	if !ok {
		return nil
	}
	return ex.Expand(func(word string) (string, error) {
		w, um, err := e.lex.ProcessWord(word, st.vars)
		for k := range um {
			unmatched[k] = struct{}{}
		}
		return w, err
	})
}

func (e *evaluator) history(st *stage, code string, empty bool) {
	st.cfg.History = append(st.cfg.History, v1.History{
		Created:    v1.Time{Time: e.epoch},
		CreatedBy:  code + " # labreg",
		EmptyLayer: empty,
	})
}

func (e *evaluator) dispatch(ctx context.Context, st *stage, nd *node) error {
	ins, err := instructions.ParseInstruction(nd.n)
	if err != nil {
		return cleanParseErr(err)
	}
	unmatched := map[string]struct{}{}
	if err := e.expand(st, ins, unmatched); err != nil {
		return err
	}
	code := strings.TrimSpace(nd.n.Original)
	c := &st.cfg.Config
	switch cmd := ins.(type) {
	case *instructions.RunCommand:
		return ErrNeedsRun
	case *instructions.EnvCommand:
		for _, kv := range cmd.Env {
			st.vars.Set(kv.Key, kv.Value)
			c.Env = setEnv(c.Env, kv.Key, kv.Value)
		}
	case *instructions.ArgCommand:
		for _, kv := range cmd.Args {
			if v, ok := e.args[kv.Key]; ok {
				st.vars.Set(kv.Key, v)
				continue
			}
			if kv.Value == nil {
				if v, ok := e.meta.Get(kv.Key); ok {
					st.vars.Set(kv.Key, v)
				}
				continue
			}
			v, _, err := e.lex.ProcessWord(*kv.Value, st.vars)
			if err != nil {
				return err
			}
			st.vars.Set(kv.Key, v)
		}
	case *instructions.LabelCommand:
		if c.Labels == nil {
			c.Labels = map[string]string{}
		}
		for _, kv := range cmd.Labels {
			c.Labels[kv.Key] = kv.Value
		}
	case *instructions.MaintainerCommand:
		st.cfg.Author = cmd.Maintainer
	case *instructions.WorkdirCommand:
		p := cmd.Path
		if !path.IsAbs(p) {
			p = path.Join("/", c.WorkingDir, p)
		}
		c.WorkingDir = path.Clean(p)
	case *instructions.UserCommand:
		c.User = cmd.User
	case *instructions.ExposeCommand:
		if c.ExposedPorts == nil {
			c.ExposedPorts = map[string]struct{}{}
		}
		for _, p := range cmd.Ports {
			p, _, err := e.lex.ProcessWord(p, st.vars)
			if err != nil {
				return err
			}
			if !strings.Contains(p, "/") {
				p += "/tcp"
			}
			num, proto, _ := strings.Cut(p, "/")
			if _, err := strconv.ParseUint(num, 10, 16); err != nil || (proto != "tcp" && proto != "udp" && proto != "sctp") {
				return fmt.Errorf("invalid port %q", p)
			}
			c.ExposedPorts[p] = struct{}{}
		}
	case *instructions.VolumeCommand:
		if c.Volumes == nil {
			c.Volumes = map[string]struct{}{}
		}
		for _, v := range cmd.Volumes {
			if v == "" {
				return errors.New("VOLUME specified can not be an empty string")
			}
			c.Volumes[v] = struct{}{}
		}
	case *instructions.StopSignalCommand:
		c.StopSignal = cmd.Signal
	case *instructions.ShellCommand:
		st.shell = slices.Clone(cmd.Shell)
		c.Shell = slices.Clone(cmd.Shell)
	case *instructions.CmdCommand:
		c.Cmd = st.cmdLine(cmd.ShellDependantCmdLine)
		st.cmdSet = true
	case *instructions.EntrypointCommand:
		c.Entrypoint = st.cmdLine(cmd.ShellDependantCmdLine)
		if !st.cmdSet {
			c.Cmd = nil
		}
	case *instructions.HealthCheckCommand:
		h := cmd.Health
		c.Healthcheck = &v1.HealthConfig{
			Test: h.Test, Interval: h.Interval, Timeout: h.Timeout,
			StartPeriod: h.StartPeriod, Retries: h.Retries,
		}
	case *instructions.OnbuildCommand:
		c.OnBuild = append(c.OnBuild, cmd.Expression)
	case *instructions.CopyCommand:
		if len(cmd.SourceContents) > 0 {
			return errors.New("heredoc sources are not supported by the native engine")
		}
		if len(cmd.ExcludePatterns) > 0 || cmd.Parents {
			return errors.New("--exclude and --parents are not supported by the native engine")
		}
		return e.copy(ctx, st, code, cmd.From, cmd.SourcePaths, cmd.DestPath, cmd.Chown, cmd.Chmod, false, unmatched)
	case *instructions.AddCommand:
		if len(cmd.SourceContents) > 0 {
			return errors.New("heredoc sources are not supported by the native engine")
		}
		if cmd.Checksum != "" || len(cmd.ExcludePatterns) > 0 {
			return errors.New("--checksum and --exclude are not supported by the native engine")
		}
		for _, s := range cmd.SourcePaths {
			if strings.Contains(s, "://") || strings.HasPrefix(s, "git@") {
				return fmt.Errorf("source %q: remote sources are not supported by the native engine (offline); use COPY with a local file", s)
			}
		}
		unpack := cmd.Unpack == nil || *cmd.Unpack
		return e.copy(ctx, st, code, "", cmd.SourcePaths, cmd.DestPath, cmd.Chown, cmd.Chmod, unpack, unmatched)
	default:
		return fmt.Errorf("not supported by the native engine")
	}
	e.history(st, code, true)
	return nil
}

func (st *stage) cmdLine(c instructions.ShellDependantCmdLine) []string {
	if c.PrependShell {
		return append(slices.Clone(st.shell), strings.Join(c.CmdLine, " "))
	}
	return slices.Clone(c.CmdLine)
}

func setEnv(env []string, k, v string) []string {
	for i, kv := range env {
		if kk, _, _ := strings.Cut(kv, "="); kk == k {
			env[i] = k + "=" + v
			return env
		}
	}
	return append(env, k+"="+v)
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
		humanSize(size), time.Since(start).Round(time.Millisecond))
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

func humanSize(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
