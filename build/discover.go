package build

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Dir is an image directory: a directory with a Dockerfile. Its path
// images/<repo>/<tag>/ names the image <repo>:<tag>.
type Dir struct {
	Path string // as found (relative when the argument was)
	Repo string // parent directory's name
	Tag  string // directory's name
}

// Discover finds the image directories under each of dirs: a directory
// with a Dockerfile is one image; otherwise every directory below it with
// a Dockerfile is (images/samsung gives samsung/1.0 and samsung/2.0,
// images/ gives them all). Results are sorted by path; an argument with no
// Dockerfile anywhere below it is an error.
func Discover(dirs ...string) ([]Dir, error) {
	var out []Dir
	seen := map[string]bool{}
	for _, arg := range dirs {
		st, err := os.Stat(arg)
		if err != nil {
			return nil, fmt.Errorf("image directory: %w", err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("image directory %s: not a directory", arg)
		}
		var found []Dir
		err = filepath.WalkDir(arg, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() {
				return nil
			}
			if p != arg && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(p, "Dockerfile")); err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			dir, err := dirOf(p)
			if err != nil {
				return err
			}
			found = append(found, dir)
			return filepath.SkipDir // an image's context is not searched for more images
		})
		if err != nil {
			return nil, fmt.Errorf("searching %s for Dockerfiles: %w", arg, err)
		}
		if len(found) == 0 {
			return nil, fmt.Errorf("%s: no Dockerfile in it or below it", arg)
		}
		for _, d := range found {
			abs, _ := filepath.Abs(d.Path)
			if !seen[abs] {
				seen[abs] = true
				out = append(out, d)
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

func dirOf(p string) (Dir, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return Dir{}, err
	}
	return Dir{Path: p, Repo: strings.ToLower(filepath.Base(filepath.Dir(abs))), Tag: filepath.Base(abs)}, nil
}
