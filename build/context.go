package build

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// buildContext is a build context directory with its .dockerignore
// applied. Sources are resolved inside it and never leave it.
type buildContext struct {
	dir    string // absolute, symlinks resolved
	ignore *patternmatcher.PatternMatcher
	all    []string // every non-ignored path (slash, relative), lazily
}

func openContext(dir string) (*buildContext, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("build context %s: %w", dir, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, fmt.Errorf("build context %s: %w", dir, err)
	}
	c := &buildContext{dir: real}
	f, err := os.Open(filepath.Join(real, ".dockerignore"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("reading .dockerignore: %w", err)
	default:
		defer f.Close()
		pats, err := ignorefile.ReadAll(f)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", filepath.Join(dir, ".dockerignore"), err)
		}
		if len(pats) > 0 {
			pm, err := patternmatcher.New(pats)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", filepath.Join(dir, ".dockerignore"), err)
			}
			c.ignore = pm
		}
	}
	return c, nil
}

// ignored reports whether rel (slash-separated, relative) is excluded by
// .dockerignore.
func (c *buildContext) ignored(rel string) bool {
	if c.ignore == nil || rel == "." {
		return false
	}
	m, err := c.ignore.MatchesOrParentMatches(rel)
	return err == nil && m
}

// srcFile is one file, directory or symlink to put into a layer.
type srcFile struct {
	rel  string // path below the source root ("" for the root itself)
	mode fs.FileMode
	link string
	size int64
	open func() (io.ReadCloser, error)
}

// source is what one COPY/ADD source names.
type source struct {
	name  string // the source as written, for messages
	isDir bool   // the source is a directory: its contents are copied
	base  string // base name of the source (for a file copied into a directory)
	files []srcFile
}

func hasGlob(s string) bool { return strings.ContainsAny(s, "*?[") }

// checkInside rejects sources that name something outside the context.
func checkInside(src string) (string, error) {
	s := filepath.ToSlash(src)
	if path.IsAbs(s) {
		return "", fmt.Errorf("source %q is an absolute path; sources must be inside the build context", src)
	}
	clean := path.Clean(s)
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return "", fmt.Errorf("source %q is outside the build context", src)
	}
	return clean, nil
}

// resolve finds what src names in the context. With statOnly, it checks
// that the source exists and stays inside without listing directories.
func (c *buildContext) resolve(src string, statOnly bool) ([]source, error) {
	clean, err := checkInside(src)
	if err != nil {
		return nil, err
	}
	if hasGlob(clean) {
		all, err := c.list()
		if err != nil {
			return nil, err
		}
		var out []source
		for _, p := range all {
			if ok, _ := path.Match(clean, p); !ok {
				continue
			}
			s, err := c.resolveOne(src, p, statOnly)
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("no source files match %q in the build context", src)
		}
		return out, nil
	}
	s, err := c.resolveOne(src, clean, statOnly)
	if err != nil {
		return nil, err
	}
	return []source{s}, nil
}

func (c *buildContext) resolveOne(src, clean string, statOnly bool) (source, error) {
	full := filepath.Join(c.dir, filepath.FromSlash(clean))
	if _, err := os.Lstat(full); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return source{}, fmt.Errorf("source %q not found in build context", src)
		}
		return source{}, fmt.Errorf("source %q: %w", src, err)
	}
	if c.ignored(clean) {
		return source{}, fmt.Errorf("source %q not found in build context (excluded by .dockerignore)", src)
	}
	real, err := filepath.EvalSymlinks(full)
	if err != nil {
		return source{}, fmt.Errorf("source %q: %w", src, err)
	}
	if r, err := filepath.Rel(c.dir, real); err != nil || r == ".." || strings.HasPrefix(r, ".."+string(filepath.Separator)) {
		return source{}, fmt.Errorf("source %q is a symlink to %s, outside the build context", src, real)
	}
	st, err := os.Stat(real)
	if err != nil {
		return source{}, fmt.Errorf("source %q: %w", src, err)
	}
	s := source{name: src, isDir: st.IsDir(), base: path.Base(clean)}
	if statOnly {
		return s, nil
	}
	if !st.IsDir() {
		s.files = []srcFile{fileOf("", real, st)}
		return s, nil
	}
	relReal, _ := filepath.Rel(c.dir, real)
	err = filepath.WalkDir(real, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		sub, _ := filepath.Rel(real, p)
		sub = filepath.ToSlash(sub)
		if sub == "." {
			return nil
		}
		if c.ignored(path.Join(filepath.ToSlash(relReal), sub)) {
			if d.IsDir() && (c.ignore == nil || !c.ignore.Exclusions()) {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		f := fileOf(sub, p, info)
		if info.Mode()&fs.ModeSymlink != 0 {
			if f.link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		s.files = append(s.files, f)
		return nil
	})
	if err != nil {
		return source{}, fmt.Errorf("reading source %q: %w", src, err)
	}
	return s, nil
}

func fileOf(rel, full string, info fs.FileInfo) srcFile {
	f := srcFile{rel: rel, mode: info.Mode()}
	if info.Mode().IsRegular() {
		f.size = info.Size()
		f.open = func() (io.ReadCloser, error) { return os.Open(full) }
	}
	return f
}

// list returns every non-ignored path of the context, sorted.
func (c *buildContext) list() ([]string, error) {
	if c.all != nil {
		return c.all, nil
	}
	var all []string
	err := filepath.WalkDir(c.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(c.dir, p)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		if c.ignored(rel) {
			if d.IsDir() && !c.ignore.Exclusions() {
				return filepath.SkipDir
			}
			return nil
		}
		all = append(all, rel)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing build context: %w", err)
	}
	sort.Strings(all)
	c.all = all
	return all, nil
}
