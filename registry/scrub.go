package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
)

// Scrub (zot's word) verifies what the data dir stores: every blob against
// its digest, every manifest's references (config, layers, index
// children), every tag's link; and finds stray temporary files and
// abandoned uploads. With Repair it fixes what can be fixed without losing
// acknowledged data:
//
//   - a blob whose content does not match its digest is moved to
//     <data>/quarantine/ (its bytes are kept, but no longer served or
//     taken for present, so that pushing the image again stores it anew),
//     and the Redis descriptor cache (registry.redis) forgets it, as it
//     forgets every blob a manifest references that is not stored;
//   - a tag whose manifest is missing (or was quarantined) is removed: it
//     answers 404 anyway, and a push can set it again;
//   - stray temporary files (older than a minute) and uploads abandoned
//     for longer than UploadAge are removed.
//
// A manifest that references a missing blob cannot be repaired here: it is
// reported, and pushing the image again fixes it.

// ScrubOptions selects what Scrub does.
type ScrubOptions struct {
	// Repair fixes what can be fixed (see above). Default false: report only.
	Repair bool `json:"repair"`
	// UploadAge is the age past which an upload is abandoned. Default 24h.
	UploadAge time.Duration `json:"upload_age,omitempty"`
}

// Scrub problem kinds.
const (
	ScrubCorruptBlob      = "corrupt_blob"      // content does not match the digest
	ScrubMissingReference = "missing_reference" // a manifest references a blob that is not there
	ScrubDanglingTag      = "dangling_tag"      // a tag whose manifest is not there
	ScrubStrayTemp        = "stray_temp"        // a temporary file left by a crash
	ScrubOrphanUpload     = "orphan_upload"     // an upload abandoned for longer than UploadAge
)

// ScrubProblem is one thing Scrub found.
type ScrubProblem struct {
	Kind   string        `json:"kind"`
	Repo   string        `json:"repo,omitempty"`
	Tag    string        `json:"tag,omitempty"`
	Digest digest.Digest `json:"digest,omitempty"`
	// Path is the file or directory concerned, relative to the data dir.
	Path   string `json:"path,omitempty"`
	Detail string `json:"detail"`
	// Repaired says that Repair fixed it; Action says how (or, without
	// Repair, how it would, or why it cannot be).
	Repaired bool   `json:"repaired"`
	Action   string `json:"action"`
}

// ScrubReport is what Scrub checked and found.
type ScrubReport struct {
	Repair    bool           `json:"repair"`
	Blobs     int            `json:"blobs"`
	Manifests int            `json:"manifests"`
	Tags      int            `json:"tags"`
	Uploads   int            `json:"uploads"`
	Problems  []ScrubProblem `json:"problems"`
	Duration  time.Duration  `json:"duration"`
}

// Unrepaired counts the problems left as they were.
func (r *ScrubReport) Unrepaired() int {
	n := 0
	for _, p := range r.Problems {
		if !p.Repaired {
			n++
		}
	}
	return n
}

// Scrub checks (and with Repair, repairs) a running server's data dir:
// repairs happen while the registry is read-only, as for GC. Scrub reads
// a filesystem store's files; on other storage it returns ErrScrubStorage.
func (s *Server) Scrub(ctx context.Context, opts ScrubOptions) (*ScrubReport, error) {
	if _, ok := s.store.fsRoot(); !ok {
		return nil, fmt.Errorf("%w (%s)", ErrScrubStorage, s.store.spec)
	}
	if opts.Repair {
		resume, err := s.ReadOnly(ctx, "scrub repair")
		if err != nil {
			return nil, err
		}
		defer resume()
	}
	rep, err := scrub(ctx, s.opts.DataDir, opts, s.descriptors)
	if rep == nil {
		return nil, err
	}
	if opts.Repair {
		if c := s.Catalog(); c != nil {
			c.Reload()
		}
		s.Events().Add(Event{Action: "scrub", Detail: scrubDetail(rep)})
	}
	return rep, err
}

// CanScrub reports whether Scrub can check this server's storage (a
// filesystem store).
func (s *Server) CanScrub() bool {
	_, ok := s.store.fsRoot()
	return ok
}

// ErrScrubStorage: scrub checks the files of a filesystem store; an
// object store verifies its objects itself.
var ErrScrubStorage = errors.New("scrub works on filesystem storage only")

// OfflineScrub checks the data dir of srv (the server's Options, from the
// same config: DataDir, Redis and Logger are used) directly. With Repair
// it holds the data dir's lock exclusively and refuses while a server has
// the data dir open (repair through that server instead).
func OfflineScrub(ctx context.Context, srv Options, opts ScrubOptions) (*ScrubReport, error) {
	dataDir, log := srv.DataDir, srv.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "storage")); err != nil {
		return nil, fmt.Errorf("no registry storage in %s: %w", dataDir, err)
	}
	if opts.Repair {
		if ServerRunning(dataDir) {
			return nil, fmt.Errorf("%s: %w; repair through it (labreg scrub without --offline)", dataDir, ErrInUse)
		}
		f, err := os.OpenFile(filepath.Join(dataDir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("locking data directory %s: %w", dataDir, err)
		}
		defer f.Close()
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			return nil, fmt.Errorf("%s: %w", dataDir, ErrInUse)
		}
	}
	cache, err := descriptorCacheOf(srv)
	if err != nil {
		return nil, err
	}
	defer cache.close()
	rep, err := scrub(ctx, dataDir, opts, cache)
	if rep == nil {
		return nil, err
	}
	if opts.Repair {
		if rerr := recordOffline(dataDir, Event{Action: "scrub", Via: "offline", Detail: scrubDetail(rep)}); rerr != nil {
			log.Warn("recording the scrub in the history", "err", rerr)
		}
	}
	return rep, err
}

func scrubDetail(r *ScrubReport) string {
	return fmt.Sprintf("%d problems, %d repaired", len(r.Problems), len(r.Problems)-r.Unrepaired())
}

// scrubber is one run of scrub.
type scrubber struct {
	data, root string // the data dir; its filesystem store (see fsPath)
	opts       ScrubOptions
	rep        *ScrubReport
	bad        map[string]bool // hex of blobs corrupt or missing
	// cache is the Redis blob descriptor cache (nil: none). With Repair
	// it forgets the blobs quarantined (before and after) and every blob
	// a manifest references that is not stored: a cache that still
	// described one would make a push skip it.
	cache   *descriptorCache
	missing map[digest.Digest]bool // referenced, not stored (or quarantined)
}

// scrub checks dataDir. With Repair, when the cache cannot be cleared
// before a blob is quarantined it stops with an error, nothing
// quarantined; when it cannot be cleared after, it returns the report and
// an error.
func scrub(ctx context.Context, dataDir string, opts ScrubOptions, cache *descriptorCache) (*ScrubReport, error) {
	if opts.UploadAge == 0 {
		opts.UploadAge = 24 * time.Hour
	}
	start := time.Now()
	s := &scrubber{
		data: dataDir, root: filepath.Join(dataDir, "storage"),
		opts: opts, rep: &ScrubReport{Repair: opts.Repair, Problems: []ScrubProblem{}}, bad: map[string]bool{},
		cache: cache, missing: map[digest.Digest]bool{},
	}
	if err := s.blobs(ctx); err != nil {
		return nil, err
	}
	if err := s.repositories(ctx); err != nil {
		return nil, err
	}
	temps, err := strayTemps(dataDir, start.Add(-time.Minute))
	if err != nil {
		return nil, fmt.Errorf("looking for stray temporary files: %w", err)
	}
	for _, p := range temps {
		s.problem(ScrubProblem{Kind: ScrubStrayTemp, Path: s.rel(p), Detail: "a temporary file left by an interrupted write"},
			"remove it", func() error { return os.Remove(p) })
	}
	s.rep.Duration = time.Since(start)
	if opts.Repair && len(s.missing) > 0 {
		gone := removed{blobs: slices.Sorted(maps.Keys(s.missing))}
		if err := s.cache.dropAgain(ctx, gone); err != nil {
			return s.rep, fmt.Errorf("scrub: blobs quarantined or missing were %w", err)
		}
	}
	return s.rep, nil
}

func (s *scrubber) rel(p string) string {
	if r, err := filepath.Rel(s.data, p); err == nil {
		return r
	}
	return p
}

// problem records p; with Repair it runs fix and records the outcome.
// fix nil: nothing can be done here (action says what can).
func (s *scrubber) problem(p ScrubProblem, action string, fix func() error) {
	p.Action = action
	if s.opts.Repair && fix != nil {
		if err := fix(); err != nil && !errors.Is(err, fs.ErrNotExist) {
			p.Action = action + " failed: " + errnoText(err)
		} else {
			p.Repaired = true
		}
	}
	s.rep.Problems = append(s.rep.Problems, p)
}

// file is the file of driver path p (layout.go).
func (s *scrubber) file(p string) string { return fsPath(s.root, p) }

func (s *scrubber) blobData(hx string) string {
	return s.file(blobDataPath(digest.NewDigestFromEncoded(digest.SHA256, hx)))
}

// blobs hashes every blob.
func (s *scrubber) blobs(ctx context.Context) error {
	base := s.file(blobsPath(digest.SHA256))
	prefixes, err := os.ReadDir(base)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing blobs: %w", err)
	}
	type corrupt struct {
		dgst   digest.Digest
		p, got string
	}
	var found []corrupt
	for _, pd := range prefixes {
		dirs, err := os.ReadDir(filepath.Join(base, pd.Name()))
		if err != nil {
			return fmt.Errorf("listing blobs: %w", err)
		}
		for _, d := range dirs {
			if err := ctx.Err(); err != nil {
				return err
			}
			hx := d.Name()
			dgst := digest.Digest("sha256:" + hx)
			if dgst.Validate() != nil {
				continue
			}
			p := s.blobData(hx)
			got, err := hashFile(p)
			if errors.Is(err, fs.ErrNotExist) {
				continue // a directory without data: distribution ignores it too
			}
			s.rep.Blobs++
			if err != nil {
				return fmt.Errorf("reading blob %s: %s", dgst, errnoText(err))
			}
			if got != hx {
				s.bad[hx] = true
				found = append(found, corrupt{dgst, p, got})
			}
		}
	}
	if s.opts.Repair && len(found) > 0 {
		var gone removed
		for _, c := range found {
			gone.blobs = append(gone.blobs, c.dgst)
			s.missing[c.dgst] = true // dropped again at the end
		}
		if err := s.cache.drop(ctx, gone); err != nil {
			return fmt.Errorf("scrub: %w", err)
		}
	}
	for _, c := range found {
		q := filepath.Join(s.data, "quarantine", c.dgst.Encoded()+"."+time.Now().UTC().Format("20060102T150405"))
		s.problem(ScrubProblem{Kind: ScrubCorruptBlob, Digest: c.dgst, Path: s.rel(c.p), Detail: "content hashes to sha256:" + c.got},
			"move it to "+s.rel(q)+" (kept, no longer served): push the images that use it again",
			func() error {
				if err := os.MkdirAll(filepath.Dir(q), 0o755); err != nil {
					return err
				}
				if err := os.Rename(c.p, q); err != nil {
					return err
				}
				return os.RemoveAll(filepath.Dir(c.p))
			})
	}
	return nil
}

func hashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// present reports whether a sha256 blob is stored and sound.
func (s *scrubber) present(hx string) bool {
	if s.bad[hx] {
		return false
	}
	_, err := os.Stat(s.blobData(hx))
	return err == nil
}

// readLinkFile reads a link file (a digest).
func readLinkFile(p string) (digest.Digest, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	d, err := digest.Parse(strings.TrimSpace(string(b)))
	if err != nil {
		return "", fmt.Errorf("not a digest: %q", b)
	}
	return d, nil
}

// repositories checks every repository's manifests, tags and uploads.
func (s *scrubber) repositories(ctx context.Context) error {
	base := s.file(reposPath())
	var repos []string
	err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		switch d.Name() {
		case "_manifests", "_layers", "_uploads":
			repos = append(repos, filepath.Dir(p))
			return filepath.SkipDir
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("listing repositories: %w", err)
	}
	sort.Strings(repos)
	seen := map[string]bool{}
	for _, dir := range repos {
		if seen[dir] {
			continue
		}
		seen[dir] = true
		if err := ctx.Err(); err != nil {
			return err
		}
		name, _ := filepath.Rel(base, dir)
		name = filepath.ToSlash(name)
		s.manifests(name)
		s.tags(name)
		s.uploads(name)
	}
	return nil
}

// manifests checks that each manifest revision of a repository and what it
// references are stored.
func (s *scrubber) manifests(name string) {
	revs, _ := filepath.Glob(filepath.Join(s.file(linkDir(name, "manifests")), "sha256", "*", "link"))
	for _, link := range revs {
		hx := filepath.Base(filepath.Dir(link))
		dgst := digest.Digest("sha256:" + hx)
		s.rep.Manifests++
		if !s.present(hx) {
			s.missing[dgst] = true
			s.problem(ScrubProblem{Kind: ScrubMissingReference, Repo: name, Digest: dgst, Detail: "the manifest's own blob is missing or corrupt"},
				"push the missing blobs again (docker push checks each one)", nil)
			continue
		}
		b, err := os.ReadFile(s.blobData(hx))
		if err != nil {
			continue
		}
		var m rawManifest
		if json.Unmarshal(b, &m) != nil {
			continue // not a manifest scrub understands: distribution accepted it
		}
		var refs []descriptorRef
		if m.Config.Digest != "" {
			refs = append(refs, descriptorRef{m.Config.Digest, m.Config.URLs})
		}
		for _, l := range m.Layers {
			refs = append(refs, descriptorRef{l.Digest, l.URLs})
		}
		for _, c := range m.Manifests {
			refs = append(refs, descriptorRef{c.Digest, nil})
		}
		for _, r := range refs {
			if r.d.Algorithm() != digest.SHA256 || r.d.Validate() != nil || len(r.urls) > 0 {
				continue // other algorithms are stored under a sha256 alias; foreign layers are not stored
			}
			if !s.present(r.d.Encoded()) {
				s.missing[r.d] = true
				s.problem(ScrubProblem{Kind: ScrubMissingReference, Repo: name, Digest: dgst,
					Detail: "references " + r.d.String() + ", which is missing or corrupt"},
					"push the missing blobs again (docker push checks each one)", nil)
			}
		}
	}
}

type descriptorRef struct {
	d    digest.Digest
	urls []string
}

// tags checks that each tag's manifest is stored.
func (s *scrubber) tags(name string) {
	tagDirs, _ := os.ReadDir(s.file(tagsPath(name)))
	for _, td := range tagDirs {
		if !td.IsDir() {
			continue
		}
		tag := td.Name()
		s.rep.Tags++
		tdir := s.file(path.Join(tagsPath(name), tag))
		d, err := readLinkFile(s.file(tagLinkPath(name, tag)))
		why := ""
		switch {
		case err != nil:
			why = "its link is unreadable: " + errnoText(err)
		case d.Algorithm() != digest.SHA256:
			if _, err := os.Stat(s.file(linkPath(name, "manifests", d))); err != nil {
				why = "its manifest " + d.String() + " is not in the repository"
			}
		default:
			if _, err := os.Stat(s.file(linkPath(name, "manifests", d))); err != nil {
				why = "its manifest " + d.String() + " is not in the repository"
			} else if !s.present(d.Encoded()) {
				why = "its manifest " + d.String() + " is missing or corrupt"
			}
		}
		if why == "" {
			continue
		}
		s.problem(ScrubProblem{Kind: ScrubDanglingTag, Repo: name, Tag: tag, Digest: d, Path: s.rel(tdir), Detail: why},
			"remove the tag (it answers 404; push it again)", func() error { return os.RemoveAll(tdir) })
	}
}

// uploads finds uploads abandoned for longer than UploadAge, or without
// the start time every upload has.
func (s *scrubber) uploads(name string) {
	ups, _ := os.ReadDir(s.file(uploadsPath(name)))
	for _, u := range ups {
		if !u.IsDir() {
			continue
		}
		s.rep.Uploads++
		udir := s.file(uploadPath(name, u.Name()))
		why := ""
		b, err := os.ReadFile(s.file(uploadStartedPath(name, u.Name())))
		if err != nil {
			if fi, err := os.Stat(udir); err == nil && time.Since(fi.ModTime()) < time.Minute {
				continue // being created
			}
			why = "it has no start time"
		} else if t, err := time.Parse(time.RFC3339, strings.TrimSpace(string(b))); err != nil {
			why = "its start time is unreadable"
		} else if age := time.Since(t); age > s.opts.UploadAge {
			why = fmt.Sprintf("started %s ago", age.Round(time.Minute))
		}
		if why == "" {
			continue
		}
		s.problem(ScrubProblem{Kind: ScrubOrphanUpload, Repo: name, Path: s.rel(udir), Detail: "an abandoned upload: " + why},
			"remove it", func() error { return os.RemoveAll(udir) })
	}
}
