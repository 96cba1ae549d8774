package ui

import (
	"context"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/labreg/labreg/registry"
)

// RepoQuery selects a page of repositories.
type RepoQuery struct {
	Filter string // substring of the name
	Sort   string // "name" (default) or "push" (newest first)
	Page   int    // 1-based. Default 1
	Per    int    // Default 50, at most 1000
	Empty  bool   // include repositories without tags
}

// RepoPage is one page of repositories.
type RepoPage struct {
	Query RepoQuery             `json:"-"`
	Items []registry.Repository `json:"repositories"`
	// Total matched the filter; HiddenEmpty were left out for having no tags.
	Total       int `json:"total"`
	HiddenEmpty int `json:"hidden_empty"`
	Page        int `json:"page"`
	Pages       int `json:"pages"`
}

func intParam(v url.Values, k string, def, max int) int {
	n, err := strconv.Atoi(v.Get(k))
	if err != nil || n < 1 {
		return def
	}
	return min(n, max)
}

func repoQuery(v url.Values) RepoQuery {
	return RepoQuery{
		Filter: strings.TrimSpace(v.Get("q")),
		Sort:   v.Get("sort"),
		Page:   intParam(v, "page", 1, 1<<30),
		Per:    intParam(v, "per", 50, 1000),
		Empty:  v.Get("empty") == "1",
	}
}

func (u *UI) repoPage(ctx context.Context, q RepoQuery) (*RepoPage, error) {
	all, err := u.opts.Catalog.Repositories(ctx) // sorted by name
	if err != nil {
		return nil, err
	}
	p := &RepoPage{Query: q}
	items := make([]registry.Repository, 0, len(all))
	f := strings.ToLower(q.Filter)
	for _, r := range all {
		if f != "" && !strings.Contains(r.Name, f) {
			continue
		}
		if r.Tags == 0 && !q.Empty {
			p.HiddenEmpty++
			continue
		}
		items = append(items, r)
	}
	if q.Sort == "push" {
		slices.SortStableFunc(items, func(a, b registry.Repository) int { return b.LastPush.Compare(a.LastPush) })
	}
	p.Total = len(items)
	p.Items, p.Page, p.Pages = paginate(items, q.Page, q.Per)
	return p, nil
}

func paginate[T any](items []T, page, per int) ([]T, int, int) {
	pages := max(1, (len(items)+per-1)/per)
	page = min(max(page, 1), pages)
	lo := min((page-1)*per, len(items))
	hi := min(lo+per, len(items))
	return items[lo:hi], page, pages
}

// TagQuery selects a page of a repository's tags.
type TagQuery struct {
	Filter string // substring of the tag
	Sort   string // "name" (natural order, default) or "created" (newest first)
	Page   int
	Per    int // Default 100, at most 1000
}

// TagGroup is the tags of one repository that share a digest.
type TagGroup struct {
	Digest digest.Digest  `json:"digest"`
	Tags   []registry.Tag `json:"tags"`
	Pushed time.Time      `json:"pushed,omitzero"`
	*registry.Summary
}

// TagPage is one page of tag groups.
type TagPage struct {
	Query  TagQuery            `json:"-"`
	Repo   registry.Repository `json:"repository"`
	Groups []TagGroup          `json:"groups"`
	// Total is the number of tags that matched the filter; Groups the
	// number of distinct digests among them.
	Total       int `json:"total"`
	TotalGroups int `json:"total_groups"`
	Page        int `json:"page"`
	Pages       int `json:"pages"`
}

func tagQuery(v url.Values) TagQuery {
	return TagQuery{
		Filter: strings.TrimSpace(v.Get("q")),
		Sort:   v.Get("sort"),
		Page:   intParam(v, "page", 1, 1<<30),
		Per:    intParam(v, "per", 100, 1000),
	}
}

func (u *UI) tagPage(ctx context.Context, repo string, q TagQuery) (*TagPage, error) {
	sum, tags, err := u.opts.Catalog.Tags(ctx, repo)
	if err != nil {
		return nil, err
	}
	p := &TagPage{Query: q, Repo: sum}
	if q.Filter != "" {
		tags = slices.DeleteFunc(tags, func(t registry.Tag) bool { return !strings.Contains(t.Name, q.Filter) })
	}
	less := func(a, b registry.Tag) bool { return natLess(a.Name, b.Name) }
	if q.Sort == "created" {
		less = func(a, b registry.Tag) bool {
			ca, cb := created(a), created(b)
			if !ca.Equal(cb) {
				return ca.After(cb)
			}
			return natLess(a.Name, b.Name)
		}
	}
	sort.Slice(tags, func(i, j int) bool { return less(tags[i], tags[j]) })
	p.Total = len(tags)
	// Group by digest, each group where its first tag sorts.
	at := map[digest.Digest]int{}
	var groups []TagGroup
	for _, t := range tags {
		i, ok := at[t.Digest]
		if !ok {
			i = len(groups)
			at[t.Digest] = i
			groups = append(groups, TagGroup{Digest: t.Digest, Summary: t.Summary})
		}
		g := &groups[i]
		g.Tags = append(g.Tags, t)
		if t.Pushed.After(g.Pushed) {
			g.Pushed = t.Pushed
		}
	}
	p.TotalGroups = len(groups)
	p.Groups, p.Page, p.Pages = paginate(groups, q.Page, q.Per)
	return p, nil
}

func created(t registry.Tag) time.Time {
	if t.Summary != nil && !t.Summary.Created.IsZero() {
		return t.Summary.Created
	}
	return t.Pushed
}

// natLess orders strings with digit runs compared as numbers: 1.9 < 1.10.
func natLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := isDigit(a[0]), isDigit(b[0])
		switch {
		case da && db:
			na, ra := digits(a)
			nb, rb := digits(b)
			ta, tb := strings.TrimLeft(na, "0"), strings.TrimLeft(nb, "0")
			if len(ta) != len(tb) {
				return len(ta) < len(tb)
			}
			if ta != tb {
				return ta < tb
			}
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			a, b = ra, rb
		case a[0] != b[0]:
			return a[0] < b[0]
		default:
			a, b = a[1:], b[1:]
		}
	}
	return len(a) < len(b)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func digits(s string) (string, string) {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	return s[:i], s[i:]
}
