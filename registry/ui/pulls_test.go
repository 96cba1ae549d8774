package ui

import (
	"encoding/json"
	"encoding/xml"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestPulls: pulls through the registry are counted per tag (or digest)
// and hour; /api serves the counts of a repository and of one reference,
// the tag endpoint carries them, the pages chart them in inline SVG (well
// formed, one bar per hour and day with pulls), and the events list has
// no pull in it.
func TestPulls(t *testing.T) {
	f := newFixture(t, false)
	img := image(t, "amd64", time.Now(), nil, 100)
	d := testenv.Push(t, f.addr+"/lab/pulled:v1", img)
	testenv.Push(t, f.addr+"/lab/pulled:v2", img)
	for _, ref := range []string{":v1", ":v1", ":v1", ":v2", "@" + d.String()} {
		if _, err := remote.Get(mustRef(t, f.addr+"/lab/pulled"+ref)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := remote.Head(mustRef(t, f.addr+"/lab/pulled:v1")); err != nil { // a HEAD is no pull
		t.Fatal(err)
	}

	getJSON := func(path string, v any) {
		t.Helper()
		resp, err := http.Get(f.ui.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
		}
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
	}
	for _, tt := range []struct {
		path  string
		total int64
	}{
		{"/api/repositories/lab/pulled/-/pulls", 5},
		{"/api/repositories/lab/pulled/-/pulls/v1", 3},
		{"/api/repositories/lab/pulled/-/pulls/v2", 1},
		{"/api/repositories/lab/pulled/-/pulls/" + d.String(), 1},
		{"/api/repositories/lab/never/-/pulls", 0},
	} {
		var st registry.PullStats
		getJSON(tt.path, &st)
		if st.Total != tt.total || len(st.Hours) != 168 || len(st.Days) != 90 ||
			st.Hours[167].Pulls != tt.total || st.Days[89].Pulls != tt.total || time.Since(st.Hours[167].Start) > time.Hour {
			t.Errorf("GET %s: total %d, %d hours (last %+v), %d days (last %+v); want %d pulls this hour and today",
				tt.path, st.Total, len(st.Hours), st.Hours[len(st.Hours)-1], len(st.Days), st.Days[len(st.Days)-1], tt.total)
		}
	}
	var raw map[string]json.RawMessage
	getJSON("/api/repositories/lab/pulled/-/pulls/v1", &raw)
	for _, k := range []string{"repo", "ref", "total", "hours", "days"} {
		if raw[k] == nil {
			t.Errorf("the pulls JSON has no %q: %v", k, raw)
		}
	}
	var view struct {
		Pulls *registry.PullStats `json:"pulls"`
	}
	getJSON("/api/repositories/lab/pulled/-/tags/v1", &view)
	if view.Pulls == nil || view.Pulls.Total != 3 || view.Pulls.Ref != "v1" {
		t.Errorf("the tag endpoint's pulls: %+v", view.Pulls)
	}

	svgs := regexp.MustCompile(`(?s)<svg class="pullchart".*?</svg>`)
	for _, tt := range []struct {
		page  string
		total string
	}{
		{"/r/lab/pulled", "5"},
		{"/r/lab/pulled/-/tag/v1", "3"},
		{"/r/lab/pulled/-/manifest/" + d.String(), "1"},
	} {
		html := getBody(t, f.ui.URL+tt.page)
		if !strings.Contains(html, `<span id="pulls-total">`+tt.total+`</span>`) {
			t.Errorf("%s does not count %s pulls", tt.page, tt.total)
		}
		charts := svgs.FindAllString(html, -1)
		if len(charts) != 2 {
			t.Fatalf("%s has %d charts, want 2 (per hour, per day)", tt.page, len(charts))
		}
		for _, c := range charts {
			var svg struct {
				Rects []struct {
					Title string `xml:"title"`
				} `xml:"rect"`
			}
			if err := xml.Unmarshal([]byte(c), &svg); err != nil {
				t.Errorf("%s: a chart is not well-formed SVG: %v", tt.page, err)
			}
			if len(svg.Rects) != 1 || !strings.HasSuffix(svg.Rects[0].Title, "UTC: "+tt.total+" pulls") {
				t.Errorf("%s: chart bars %+v, want one of %s pulls", tt.page, svg.Rects, tt.total)
			}
		}
	}

	var ev EventsView
	getJSON("/api/events?action=pull", &ev)
	if ev.Total != 0 {
		t.Errorf("%d pull events; pulls are counted, not listed", ev.Total)
	}
	getJSON("/api/events?repo=lab/pulled", &ev)
	if ev.Total != 2 {
		t.Errorf("%d events of lab/pulled, want its 2 pushes", ev.Total)
	}
}
