package ui

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestScrubFromUI: the status page offers scrub (repair only when the UI
// may write), /api/scrub answers a report, and a read-only UI refuses a
// repair.
func TestScrubFromUI(t *testing.T) {
	f := newFixture(t, false)
	ro := newFixture(t, true)
	testenv.Push(t, f.addr+"/s/one:a", image(t, "amd64", time.Date(2026, 3, 14, 9, 26, 0, 0, time.UTC), nil, 100))

	html := getBody(t, f.ui.URL+"/status")
	mustContain(t, "status page", html, `id="scrubform"`, `id="scrub-check"`, `id="scrub-repair"`)
	if html := getBody(t, ro.ui.URL+"/status"); !strings.Contains(html, `id="scrub-check"`) || strings.Contains(html, `id="scrub-repair"`) {
		t.Errorf("read-only UI's status page: check offered %v, repair offered %v",
			strings.Contains(html, `id="scrub-check"`), strings.Contains(html, `id="scrub-repair"`))
	}

	post := func(base, body string) (*http.Response, registry.ScrubReport) {
		resp, err := http.Post(base+"/api/scrub", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var rep registry.ScrubReport
		json.NewDecoder(resp.Body).Decode(&rep)
		return resp, rep
	}
	if resp, rep := post(f.ui.URL, `{"repair":true}`); resp.StatusCode != 200 || !rep.Repair || rep.Blobs != 3 || rep.Tags != 1 || len(rep.Problems) != 0 {
		t.Errorf("POST /api/scrub: %d %+v", resp.StatusCode, rep)
	}
	if resp, _ := post(ro.ui.URL, `{"repair":true}`); resp.StatusCode != http.StatusForbidden {
		t.Errorf("repair through a read-only UI: %d, want 403", resp.StatusCode)
	}
	if resp, _ := post(ro.ui.URL, `{}`); resp.StatusCode != 200 {
		t.Errorf("check through a read-only UI: %d, want 200", resp.StatusCode)
	}

	// The form on the status page.
	tok := strings.Repeat("b", 32)
	req, _ := http.NewRequest("POST", f.ui.URL+"/scrub", strings.NewReader(url.Values{"csrf": {tok}, "mode": {"check"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(&http.Cookie{Name: csrfCookie, Value: tok})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.WriteString(string(buf[:n]))
		if err != nil {
			break
		}
	}
	if resp.StatusCode != 200 || !strings.Contains(b.String(), `id="scrub-summary"`) || !strings.Contains(b.String(), "Checked 3 blobs") {
		t.Errorf("POST /scrub: %d\n%s", resp.StatusCode, b.String())
	}
}
