package ui

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/labreg/labreg/internal/units"
	"github.com/labreg/labreg/registry"
)

type pageTemplate struct{ t *template.Template }

var pageNames = []string{"repositories", "tags", "image", "confirm", "events", "status", "gc", "scrub", "error", "services"}

var funcs = template.FuncMap{
	"size":        units.HumanSize,
	"when":        when,
	"short":       shortDigest,
	"repoURL":     func(repo string) string { return "/r/" + repo },
	"tagURL":      func(repo, tag string) string { return "/r/" + repo + "/-/tag/" + url.PathEscape(tag) },
	"manifestURL": func(repo string, d digest.Digest) string { return "/r/" + repo + "/-/manifest/" + d.String() },
	"join":        strings.Join,
	"list":        func(s ...string) []string { return s },
	"add":         func(a, b int) int { return a + b },
	"pageURL": func(q url.Values, n int) string {
		v := url.Values{}
		for k, vs := range q {
			v[k] = vs
		}
		v.Set("page", strconv.Itoa(n))
		return "?" + v.Encode()
	},
	"withQuery": func(q url.Values, k, val string) string {
		v := url.Values{}
		for k, vs := range q {
			v[k] = vs
		}
		v.Set(k, val)
		v.Del("page")
		return "?" + v.Encode()
	},
	"shortStr":    func(d string) string { return shortDigest(digest.Digest(d)) },
	"updateState": updateState,
	"iso":         func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"sortedKeys": func(m map[string]string) []string {
		ks := make([]string, 0, len(m))
		for k := range m {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		return ks
	},
	"setKeys": func(m map[string]struct{}) []string {
		ks := make([]string, 0, len(m))
		for k := range m {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		return ks
	},
}

func parsePages() (map[string]*pageTemplate, error) {
	out := map[string]*pageTemplate{}
	for _, n := range pageNames {
		t, err := template.New("").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+n+".html")
		if err != nil {
			return nil, fmt.Errorf("ui: parsing template %s: %w", n, err)
		}
		out[n] = &pageTemplate{t}
	}
	return out, nil
}

func when(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04 UTC")
}

func shortDigest(d digest.Digest) string {
	e := d.Encoded()
	if len(e) > 12 {
		e = e[:12]
	}
	return e
}

// page is what every template receives.
type page struct {
	Title    string
	Nav      string
	CSRF     string
	ReadOnly bool // the UI offers no deletes
	Busy     string
	Flash    string
	HasGC    bool
	HasSwarm bool
	MirrorOf string // the origin, when the registry is a mirror
	Query    url.Values
	Data     any
}

func (u *UI) render(w http.ResponseWriter, r *http.Request, status int, name, title string, data any) {
	p := page{Title: title, Nav: name, CSRF: csrfToken(w, r), ReadOnly: u.opts.ReadOnly,
		Flash: r.URL.Query().Get("flash"), HasGC: u.opts.GC != nil && !u.opts.ReadOnly, HasSwarm: u.opts.Swarm != nil, Query: r.URL.Query(), Data: data}
	p.MirrorOf = u.opts.MirrorOf
	p.Query.Del("flash")
	if busy, why := u.opts.ReadOnlyState(); busy {
		p.Busy = why
	}
	var b bytes.Buffer
	if err := u.pages[name].t.ExecuteTemplate(&b, "layout", p); err != nil {
		u.log.Error("rendering page", "page", name, "err", err)
		http.Error(w, "rendering page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(b.Bytes())
}

func (u *UI) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := statusOf(err)
	if status >= 500 {
		u.log.Error("ui", "path", r.URL.Path, "err", err)
	}
	u.render(w, r, status, "error", http.StatusText(status), err.Error())
}

func statusOf(err error) int {
	var busy *registry.BusyError
	switch {
	case errors.Is(err, registry.ErrNotFound):
		return http.StatusNotFound
	case errors.As(err, &busy):
		return http.StatusServiceUnavailable
	case errors.Is(err, errBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, errForbidden):
		return http.StatusForbidden
	case errors.Is(err, errConflict):
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

var (
	errBadRequest = errors.New("bad request")
	errForbidden  = errors.New("forbidden")
)

func (u *UI) repositories(w http.ResponseWriter, r *http.Request) {
	p, err := u.repoPage(r.Context(), repoQuery(r.URL.Query()))
	if err != nil {
		u.fail(w, r, err)
		return
	}
	u.render(w, r, http.StatusOK, "repositories", "Repositories", p)
}

// splitRest splits "<repo>/-/<verb>/<arg>" (the repo alone has no "/-/":
// "-" is not a valid path component of a repository name).
func splitRest(rest string) (repo, verb, arg string) {
	repo, tail, found := strings.Cut(rest, "/-/")
	repo = strings.Trim(repo, "/")
	if !found {
		return repo, "", ""
	}
	verb, arg, _ = strings.Cut(tail, "/")
	return repo, verb, arg
}

func (u *UI) repoGET(w http.ResponseWriter, r *http.Request) {
	repo, verb, arg := splitRest(r.PathValue("rest"))
	ctx := r.Context()
	switch verb {
	case "":
		p, err := u.tagPage(ctx, repo, tagQuery(r.URL.Query()))
		if err != nil {
			u.fail(w, r, err)
			return
		}
		v := &tagsView{TagPage: p, Rows: make([]template.HTML, 0, len(p.Groups)), Pulls: pullCharts(u.opts.History.Pulls(repo, ""))}
		for _, g := range p.Groups {
			row, err := u.tagRow(repo, g)
			if err != nil {
				u.fail(w, r, err)
				return
			}
			v.Rows = append(v.Rows, row)
		}
		u.render(w, r, http.StatusOK, "tags", repo, v)
	case "tag", "manifest":
		d, err := u.opts.Catalog.Resolve(ctx, repo, arg)
		if err != nil {
			u.fail(w, r, err)
			return
		}
		v, err := u.imageView(r, repo, d, verb, arg)
		if err != nil {
			u.fail(w, r, err)
			return
		}
		v.Services = u.servicesUsing(ctx, d)
		v.Charts = pullCharts(*v.Pulls)
		u.render(w, r, http.StatusOK, "image", v.Ref, v)
	case "delete-manifest":
		if u.opts.ReadOnly {
			u.fail(w, r, fmt.Errorf("the UI is read-only (--ui-readonly): %w", errForbidden))
			return
		}
		d, err := digest.Parse(arg)
		if err != nil {
			u.fail(w, r, fmt.Errorf("digest %q: %v: %w", arg, err, errBadRequest))
			return
		}
		img, err := imageOf(ctx, u.opts.Catalog, repo, d)
		if err != nil {
			u.fail(w, r, err)
			return
		}
		why, _ := u.inUse(ctx, d)
		u.render(w, r, http.StatusOK, "confirm", "Delete "+repo+"@"+shortDigest(d), &confirmView{Image: img, InUse: why})
	default:
		u.fail(w, r, fmt.Errorf("no page %s: %w", r.URL.Path, registry.ErrNotFound))
	}
}

// tagsView is the tags page: rows are rendered once per repository,
// digest and set of tags (what a row shows) and kept.
type tagsView struct {
	*TagPage
	Rows  []template.HTML
	Pulls *PullCharts // of the whole repository
}

type rowData struct {
	Repo     string
	ReadOnly bool
	G        TagGroup
}

// maxRows bounds the rendered-row cache.
const maxRows = 100_000

func (u *UI) tagRow(repo string, g TagGroup) (template.HTML, error) {
	var k strings.Builder
	k.WriteString(repo)
	k.WriteByte(0)
	k.WriteString(string(g.Digest))
	for _, t := range g.Tags {
		k.WriteByte(0)
		k.WriteString(t.Name)
	}
	key := k.String()
	u.rowsMu.Lock()
	row, ok := u.rows[key]
	u.rowsMu.Unlock()
	if ok {
		return row, nil
	}
	var b bytes.Buffer
	if err := u.pages["tags"].t.ExecuteTemplate(&b, "tagrow", rowData{Repo: repo, ReadOnly: u.opts.ReadOnly, G: g}); err != nil {
		return "", fmt.Errorf("rendering tag row: %w", err)
	}
	row = template.HTML(b.String()) // html/template escaped it
	u.rowsMu.Lock()
	if len(u.rows) >= maxRows {
		clear(u.rows)
	}
	u.rows[key] = row
	u.rowsMu.Unlock()
	return row, nil
}

// ImageView is the tag detail page.
type ImageView struct {
	*Image
	Ref       string // repo:tag or repo@digest
	Tag       string // "" when opened by digest
	Pull      string
	Update    string
	Referrers []Referrer
	// Services are the swarm services whose tasks run this digest.
	Services []string
	// Pulls is the pull history of the tag, or of the digest when the
	// page is opened by digest.
	Pulls *registry.PullStats `json:"pulls,omitempty"`
	// Charts draw Pulls on the page.
	Charts *PullCharts `json:"-"`
}

// Referrer is one manifest whose subject is the image.
type Referrer struct {
	Digest       digest.Digest     `json:"digest"`
	ArtifactType string            `json:"artifact_type"`
	Size         int64             `json:"size"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

func (u *UI) imageView(r *http.Request, repo string, d digest.Digest, verb, arg string) (*ImageView, error) {
	img, err := imageOf(r.Context(), u.opts.Catalog, repo, d)
	if err != nil {
		return nil, err
	}
	v := &ImageView{Image: img}
	name := u.opts.Advertise + "/" + repo
	if verb == "tag" {
		v.Tag = arg
		v.Ref = repo + ":" + arg
		name += ":" + arg
	} else {
		v.Ref = repo + "@" + d.String()
		name += "@" + d.String()
	}
	v.Pull = "docker pull " + name
	st := u.opts.History.Pulls(repo, arg)
	v.Pulls = &st
	v.Update = "docker service update --with-registry-auth --image " + name + " SERVICE"
	if u.opts.Referrers != nil {
		descs, err := u.opts.Referrers.Referrers(r.Context(), repo, d, "")
		if err != nil {
			u.log.Warn("listing referrers", "repo", repo, "digest", d, "err", err)
		}
		for _, ds := range descs {
			v.Referrers = append(v.Referrers, Referrer{Digest: ds.Digest, ArtifactType: ds.ArtifactType, Size: ds.Size, Annotations: ds.Annotations})
		}
	}
	return v, nil
}

// refuseWrite answers a form POST that changes something with 403 when
// the UI is read-only or the CSRF check fails, and reports whether it did.
func (u *UI) refuseWrite(w http.ResponseWriter, r *http.Request) bool {
	if u.opts.ReadOnly {
		u.fail(w, r, fmt.Errorf("the UI is read-only (--ui-readonly): %w", errForbidden))
		return true
	}
	if err := checkCSRF(r); err != nil {
		u.fail(w, r, fmt.Errorf("%v: %w", err, errForbidden))
		return true
	}
	return false
}

func (u *UI) repoPOST(w http.ResponseWriter, r *http.Request) {
	repo, verb, arg := splitRest(r.PathValue("rest"))
	if u.refuseWrite(w, r) {
		return
	}
	// The registry records the deletes in its history (one place where a
	// manifest changes), with this actor.
	ctx := registry.WithActor(r.Context(), registry.Actor{User: user(r), Addr: r.RemoteAddr, Via: "ui"})
	switch verb {
	case "delete-tags":
		tags := r.PostForm["tag"]
		if len(tags) == 0 {
			u.fail(w, r, fmt.Errorf("no tag selected: %w", errBadRequest))
			return
		}
		for _, t := range tags {
			if _, err := u.opts.Catalog.DeleteTag(ctx, repo, t); err != nil {
				u.fail(w, r, err)
				return
			}
		}
		redirect(w, r, "/r/"+repo, fmt.Sprintf("Deleted tag %s (other tags on the same digest stay).", strings.Join(tags, ", ")))
	case "delete-manifest":
		d, err := digest.Parse(arg)
		if err != nil {
			u.fail(w, r, fmt.Errorf("digest %q: %v: %w", arg, err, errBadRequest))
			return
		}
		if err := u.checkDeleteInUse(r, repo, d); err != nil {
			u.fail(w, r, err)
			return
		}
		tags, err := u.opts.Catalog.DeleteManifest(ctx, repo, d)
		if err != nil {
			u.fail(w, r, err)
			return
		}
		msg := "Deleted manifest " + shortDigest(d)
		if len(tags) > 0 {
			msg += " and its tags " + strings.Join(tags, ", ")
		}
		redirect(w, r, "/r/"+repo, msg+". Run garbage collection to free its blobs.")
	default:
		u.fail(w, r, fmt.Errorf("no action %s: %w", r.URL.Path, registry.ErrNotFound))
	}
}

func redirect(w http.ResponseWriter, r *http.Request, to, flash string) {
	http.Redirect(w, r, to+"?flash="+url.QueryEscape(flash), http.StatusSeeOther)
}

// EventsView is the events page.
type EventsView struct {
	Events             []registry.Event
	Total, Page, Pages int
	Repo, Action       string
}

func (u *UI) eventsView(v url.Values) *EventsView {
	per := intParam(v, "per", 100, 1000)
	page := intParam(v, "page", 1, 1<<30)
	ev := &EventsView{Repo: v.Get("repo"), Action: v.Get("action"), Page: page}
	var keep func(registry.Event) bool
	if ev.Repo != "" || ev.Action != "" {
		keep = func(e registry.Event) bool {
			return (ev.Repo == "" || strings.Contains(e.Repo, ev.Repo)) && (ev.Action == "" || e.Action == ev.Action)
		}
	}
	ev.Events, ev.Total = u.opts.History.Page((page-1)*per, per, keep)
	ev.Pages = max(1, (ev.Total+per-1)/per)
	return ev
}

func (u *UI) events(w http.ResponseWriter, r *http.Request) {
	u.render(w, r, http.StatusOK, "events", "Events", u.eventsView(r.URL.Query()))
}

// StatusView is the status page.
type StatusView struct {
	Version     string    `json:"version"`
	DataDir     string    `json:"data_dir"`
	StorageUsed int64     `json:"storage_used"`
	Advertise   string    `json:"advertise"`
	UIReadOnly  bool      `json:"ui_readonly"`
	Busy        string    `json:"read_only_reason,omitempty"`
	Settings    []Setting `json:"config"`
	// Scrub says the storage can be verified here (POST /scrub, /api/scrub).
	Scrub bool `json:"scrub"`
}

func (u *UI) statusView(ctx context.Context) *StatusView {
	s := &StatusView{Version: u.opts.Version, DataDir: u.opts.DataDir, StorageUsed: u.storageUsed(ctx),
		Advertise: u.opts.Advertise, UIReadOnly: u.opts.ReadOnly, Scrub: u.opts.Scrub != nil}
	if busy, why := u.opts.ReadOnlyState(); busy {
		s.Busy = why
	}
	for _, st := range u.opts.Settings {
		s.Settings = append(s.Settings, redact(st))
	}
	return s
}

func (u *UI) status(w http.ResponseWriter, r *http.Request) {
	u.render(w, r, http.StatusOK, "status", "Status", u.statusView(r.Context()))
}

// GCView is the garbage-collection page.
type GCView struct {
	Result *registry.GCResult
	Shown  []registry.GCBlob
	Opts   registry.GCOptions
}

func (u *UI) gcForm(w http.ResponseWriter, r *http.Request) {
	if u.opts.GC == nil || u.opts.ReadOnly {
		u.fail(w, r, fmt.Errorf("garbage collection is not available in a read-only UI: %w", errForbidden))
		return
	}
	u.render(w, r, http.StatusOK, "gc", "Garbage collection", &GCView{})
}

func (u *UI) gcRun(w http.ResponseWriter, r *http.Request) {
	if u.opts.GC == nil || u.opts.ReadOnly {
		u.fail(w, r, fmt.Errorf("garbage collection is not available in a read-only UI: %w", errForbidden))
		return
	}
	if err := checkCSRF(r); err != nil {
		u.fail(w, r, fmt.Errorf("%v: %w", err, errForbidden))
		return
	}
	opts := registry.GCOptions{
		DryRun:           r.PostFormValue("mode") != "run",
		RemoveUntagged:   r.PostFormValue("untagged") == "1",
		RemoveEmptyRepos: r.PostFormValue("empty") == "1",
	}
	unchecked, err := u.gcKeep(r.Context(), &opts, r.PostFormValue("ignore_swarm") == "1")
	if err != nil {
		u.fail(w, r, err)
		return
	}
	res, err := u.opts.GC.GC(r.Context(), opts)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	res.Unchecked = unchecked
	v := &GCView{Result: res, Opts: opts, Shown: res.Blobs}
	if len(v.Shown) > 500 {
		v.Shown = v.Shown[:500]
	}
	u.render(w, r, http.StatusOK, "gc", "Garbage collection", v)
}

// ScrubView is the scrub result page.
type ScrubView struct {
	Report *registry.ScrubReport
}

func (u *UI) scrubRun(w http.ResponseWriter, r *http.Request) {
	if u.opts.Scrub == nil {
		u.fail(w, r, fmt.Errorf("scrub is not available: %w", errForbidden))
		return
	}
	if err := checkCSRF(r); err != nil {
		u.fail(w, r, fmt.Errorf("%v: %w", err, errForbidden))
		return
	}
	opts := registry.ScrubOptions{Repair: r.PostFormValue("mode") == "repair"}
	if opts.Repair && u.opts.ReadOnly {
		u.fail(w, r, fmt.Errorf("scrub repair is not available in a read-only UI: %w", errForbidden))
		return
	}
	rep, err := u.opts.Scrub.Scrub(r.Context(), opts)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	u.render(w, r, http.StatusOK, "scrub", "Scrub", &ScrubView{Report: rep})
}
