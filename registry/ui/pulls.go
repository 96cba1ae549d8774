package ui

import (
	"fmt"
	"html/template"
	"net/http"
	"strings"

	"github.com/labreg/labreg/registry"
)

// Pulls are counted per repository, tag (or digest) and hour by the
// registry (registry.PullStats); the repository and tag pages chart them
// as inline SVG (no script), and the API serves them:
//
//	GET /api/repositories/<repo>/-/pulls          the whole repository
//	GET /api/repositories/<repo>/-/pulls/<ref>    one tag or digest

// PullCharts is the two charts of a page: per hour and per day, each
// with its caption.
type PullCharts struct {
	registry.PullStats
	Hourly, Daily           template.HTML
	HourlyLabel, DailyLabel string
}

func pullCharts(st registry.PullStats) *PullCharts {
	c := &PullCharts{PullStats: st,
		Hourly: pullChart(st.Hours, "2006-01-02 15:00", 3),
		Daily:  pullChart(st.Days, "2006-01-02", 5)}
	c.HourlyLabel = fmt.Sprintf("per hour, last %d hours", len(st.Hours))
	if len(st.Hours)%24 == 0 {
		c.HourlyLabel = fmt.Sprintf("per hour, last %d days", len(st.Hours)/24)
	}
	c.DailyLabel = fmt.Sprintf("per day, last %d days (UTC)", len(st.Days))
	return c
}

// pullChart draws counts as a bar chart, one bar of width bar per count,
// each with a tooltip (its start in layout, UTC, and its pulls). It holds
// numbers and dates only.
func pullChart(counts []registry.PullCount, layout string, bar int) template.HTML {
	const height = 40
	var peak, total int64
	for _, c := range counts {
		peak = max(peak, c.Pulls)
		total += c.Pulls
	}
	width := len(counts) * bar
	var b strings.Builder
	from, to := "", ""
	if len(counts) > 0 {
		from, to = counts[0].Start.UTC().Format(layout), counts[len(counts)-1].Start.UTC().Format(layout)
	}
	fmt.Fprintf(&b, `<svg class="pullchart" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%d pulls from %s to %s UTC, peak %d">`,
		width, height+1, width, height+1, total, from, to, peak)
	fmt.Fprintf(&b, `<line class="axis" x1="0" y1="%d" x2="%d" y2="%d"></line>`, height, width, height)
	for i, c := range counts {
		if c.Pulls == 0 {
			continue
		}
		h := max(1, int(c.Pulls*height/max(peak, 1)))
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d"><title>%s UTC: %d pulls</title></rect>`,
			i*bar, height-h, max(1, bar-1), h, c.Start.UTC().Format(layout), c.Pulls)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) // numbers and formatted dates only
}

// apiPulls answers GET /api/repositories/<repo>/-/pulls[/<ref>].
func (u *UI) apiPulls(w http.ResponseWriter, repo, ref string) {
	writeJSON(w, http.StatusOK, u.opts.History.Pulls(repo, ref))
}
