package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/labreg/labreg/deploy"
	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
	"github.com/labreg/labreg/registry/ui"
)

// TestServicesPage (#13 acceptance 1, 2, 5) on the real swarm and real
// Chromium: with myhttpd:blue deployed by `labreg deploy`, the Services
// page lists the service with myhttpd:blue and its digest, and the tag page
// lists the service; deploying green from the browser converges, the page
// shows green and the service answers green; Rollback shows blue again and
// it answers blue; a failing image ends "rolled back" with the task's
// error. Deploys without the CSRF token, from a read-only UI, or without
// credentials when the UI asks for them change nothing in the swarm.
// Screenshots go to $LABREG_ARTIFACTS/ui-screenshots.
func TestServicesPage(t *testing.T) {
	docker := testenv.Docker(t)
	exe := testenv.Chromium(t)
	testenv.SwarmServices(t)
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	dir := t.TempDir()
	addr, srv := testenv.Registry(t, registry.Options{DataDir: dir})
	log := slog.New(slog.DiscardHandler)
	web, err := newWebUI(srv, addr, false, nil, dir, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(web)
	t.Cleanup(hs.Close)

	page := func(word string) v1.Image {
		return testenv.BusyboxImage(t, map[string]string{"www/index.html": word}, func(c *v1.Config) {
			c.Entrypoint = []string{"/bin/sh", "-c", "trap 'exit 0' TERM; /bin/busybox httpd -f -p 80 -h /www & wait"}
		})
	}
	blue := testenv.Push(t, addr+"/myhttpd:blue", page("blue")).String()
	green := testenv.Push(t, addr+"/myhttpd:green", page("green")).String()
	testenv.Push(t, addr+"/myhttpd:broken", testenv.BusyboxImage(t, nil, func(c *v1.Config) {
		c.Entrypoint = []string{"/bin/sh", "-c", "echo broken; exit 1"}
	}))
	node, err := exec.Command(docker, "info", "--format", "{{.Swarm.NodeID}}").Output()
	if err != nil {
		t.Fatal(err)
	}
	svc := "myhttpd-" + addr[strings.LastIndex(addr, ":")+1:]
	t.Cleanup(func() { removeService(t, docker, svc) })
	port := freeAddr(t)
	port = port[strings.LastIndex(port, ":")+1:]
	code, out, errs := runCLI(t, "deploy", svc, "--image", addr+"/myhttpd:blue", "--constraint", "node.id=="+strings.TrimSpace(string(node)),
		"--publish", "mode=host,"+port+":80", "--update-failure-action", "rollback", "--update-monitor", "3s",
		"--progress", "quiet", "--timeout", "2m")
	if code != 0 {
		t.Fatalf("labreg deploy blue: exit %d\n%s%s", code, out, errs)
	}
	answers := func(want string) {
		t.Helper()
		var got string
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			resp, err := http.Get("http://127.0.0.1:" + port + "/")
			if err != nil {
				got = err.Error()
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if got = strings.TrimSpace(string(b)); got == want {
				return
			}
		}
		t.Errorf("the service answers %q, want %q", got, want)
	}
	specImage := func() string {
		b, _ := exec.Command(docker, "service", "inspect", svc, "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}").Output()
		return strings.TrimSpace(string(b))
	}
	answers("blue")

	// Chromium.
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Headless, chromedp.Flag("disable-background-networking", true), chromedp.WindowSize(1000, 700))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	bctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	ctx, cancel3 := context.WithTimeout(bctx, 8*time.Minute)
	t.Cleanup(cancel3)
	shots := os.Getenv("LABREG_ARTIFACTS")
	if shots == "" {
		shots = t.TempDir()
	}
	shots = filepath.Join(shots, "ui-screenshots")
	os.MkdirAll(shots, 0o755)
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	shot := func(name string) {
		t.Helper()
		buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100) /* PNG */)
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		os.WriteFile(filepath.Join(shots, name+".png"), buf, 0o644)
	}
	sel := "#svc-" + svc
	text := func(css string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`(document.querySelector(%q)||{}).innerText||""`, css)))
		if err != nil {
			t.Fatalf("reading %s: %v", css, err)
		}
		return strings.TrimSpace(v)
	}
	// wait reloads the Services page until the service's last operation
	// from the page is done, and returns its outcome.
	wait := func(what string) string {
		t.Helper()
		for deadline := time.Now().Add(4 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
			do("reloading", chromedp.Navigate(hs.URL+"/services"))
			done, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`(document.querySelector(%q)||{dataset:{}}).dataset.done||""`, sel+" .op")))
			if err == nil && done == "true" {
				return text(sel + " .outcome")
			}
		}
		t.Fatalf("%s did not end within 4 minutes", what)
		return ""
	}
	short := func(d string) string { return d[len("sha256:") : len("sha256:")+12] }

	do("services page", chromedp.Navigate(hs.URL+"/services"), chromedp.WaitVisible(chromedp.CSS(sel)))
	if got := text(sel + " .ref"); got != "myhttpd:blue" {
		t.Errorf("Services page shows %q for %s, want myhttpd:blue", got, svc)
	}
	if got := text(sel + " .digest"); got != short(blue) {
		t.Errorf("Services page shows digest %q, want %s", got, short(blue))
	}
	if got := text(sel + " table.tasks"); !strings.Contains(got, "running") || !strings.Contains(got, short(blue)) {
		t.Errorf("Services page tasks %q: want a running task on blue's digest", got)
	}
	shot("services-1-blue")
	do("tag page", chromedp.Navigate(hs.URL+"/r/myhttpd/-/tag/blue"))
	if got := text("#services"); got != svc {
		t.Errorf("myhttpd:blue tag page lists services %q, want %s", got, svc)
	}

	do("deploy green", chromedp.Navigate(hs.URL+"/services"), chromedp.SetValue(chromedp.CSS("#tag-"+svc), "green"),
		chromedp.Click(chromedp.CSS("#deploy-"+svc)), chromedp.WaitVisible(chromedp.CSS("#flash")))
	shot("services-2-rollout")
	// Followed without JavaScript: while the rollout runs the page asks
	// the browser to reload it every 2 seconds.
	if resp, err := http.Get(hs.URL + "/services"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(b), "running…") && resp.Header.Get("Refresh") != "2" {
			t.Errorf("the Services page during a rollout has Refresh %q, want 2", resp.Header.Get("Refresh"))
		}
	}
	if got := wait("deploy green"); got != "converged" {
		t.Errorf("deploy green from the browser: %q (%s), want converged", got, text(sel+" .op"))
	}
	if got := text(sel + " .ref"); got != "myhttpd:green" {
		t.Errorf("after deploying green the page shows %q", got)
	}
	if !strings.HasSuffix(specImage(), "@"+green) {
		t.Errorf("after deploying green the service's spec names %s", specImage())
	}
	shot("services-3-green")
	answers("green")

	do("rollback", chromedp.Click(chromedp.CSS("#rollback-"+svc)), chromedp.WaitVisible(chromedp.CSS("#flash")))
	if got := wait("rollback"); got != "converged" {
		t.Errorf("rollback from the browser: %q (%s), want converged", got, text(sel+" .op"))
	}
	if got := text(sel + " .ref"); got != "myhttpd:blue" {
		t.Errorf("after the rollback the page shows %q", got)
	}
	shot("services-4-rolled-back")
	answers("blue")

	do("deploy broken", chromedp.SetValue(chromedp.CSS("#tag-"+svc), "broken"),
		chromedp.Click(chromedp.CSS("#deploy-"+svc)), chromedp.WaitVisible(chromedp.CSS("#flash")))
	if got := wait("deploy broken"); got != "rolled back" {
		t.Errorf("deploying a failing image from the browser: %q (%s), want rolled back", got, text(sel+" .op"))
	}
	if got := text(sel + " .task-err"); !strings.Contains(got, "non-zero exit") {
		t.Errorf("the failed deploy shows task error %q, want the task's non-zero exit", got)
	}
	shot("services-5-broken-rolled-back")
	if got := text(sel + " .update-task-err"); !strings.Contains(got, "non-zero exit") {
		t.Errorf("the service's update state shows task error %q, want the task's non-zero exit", got)
	}
	if resp, err := http.Get(hs.URL + "/api/services"); err != nil {
		t.Error(err)
	} else {
		var api ui.ServicesView
		err := json.NewDecoder(resp.Body).Decode(&api)
		resp.Body.Close()
		found := false
		for _, s := range api.Services {
			found = found || (s.Name == svc && s.Repo == "myhttpd" && s.Tag == "blue" && s.Digest == blue && s.Running == 1)
		}
		if err != nil || !found {
			t.Errorf("GET /api/services (%v) does not list %s on myhttpd:blue@%s with 1 running task: %+v", err, svc, blue, api.Services)
		}
	}
	if !strings.HasSuffix(specImage(), "@"+blue) {
		t.Errorf("after the failed deploy the service's spec names %s, want blue", specImage())
	}
	evs, _ := srv.Events().Page(0, 100, func(e registry.Event) bool { return e.Via == "ui" && e.Action != "delete" })
	var seen []string
	for _, e := range evs {
		seen = append(seen, e.Action+" "+e.Tag+": "+e.Detail)
	}
	if all := strings.Join(seen, "\n"); !strings.Contains(all, "deploy green: service "+svc+": converged") ||
		!strings.Contains(all, "rollback : service "+svc+": converged") || !strings.Contains(all, "deploy broken: service "+svc+": rolled back") {
		t.Errorf("events of the UI's deploys:\n%s", all)
	}

	// Refused: nothing changes in the swarm.
	before := specImage()
	post := func(base, path string, form url.Values, cookie bool, user string) int {
		req, _ := http.NewRequest("POST", base+path, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if cookie {
			req.AddCookie(&http.Cookie{Name: "labreg_csrf", Value: strings.Repeat("a", 32)})
		}
		if user != "" {
			req.SetBasicAuth(user, "s3cret")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	tok := strings.Repeat("a", 32)
	if c := post(hs.URL, "/services/"+svc+"/deploy", url.Values{"tag": {"green"}}, true, ""); c != http.StatusForbidden {
		t.Errorf("deploy without the CSRF token: %d, want 403", c)
	}
	if c := post(hs.URL, "/services/"+svc+"/rollback", url.Values{"csrf": {tok}}, false, ""); c != http.StatusForbidden {
		t.Errorf("rollback without the CSRF cookie: %d, want 403", c)
	}
	ro, err := newWebUI(srv, addr, true, nil, dir, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	rs := httptest.NewServer(ro)
	t.Cleanup(rs.Close)
	if c := post(rs.URL, "/services/"+svc+"/deploy", url.Values{"tag": {"green"}, "csrf": {tok}}, true, ""); c != http.StatusForbidden {
		t.Errorf("deploy from a read-only UI: %d, want 403", c)
	}
	htp := testenv.Htpasswd(t, "lab", "s3cret")
	authUI, err := ui.New(ui.Options{Catalog: srv.Catalog(), History: srv.Events(), Advertise: addr, Htpasswd: htp,
		Swarm: &uiSwarm{dc: mustDeployClient(t, addr), registry: addr, log: log}})
	if err != nil {
		t.Fatal(err)
	}
	as := httptest.NewServer(authUI)
	t.Cleanup(as.Close)
	if c := post(as.URL, "/services/"+svc+"/deploy", url.Values{"tag": {"green"}, "csrf": {tok}}, true, ""); c != http.StatusUnauthorized {
		t.Errorf("deploy without credentials: %d, want 401", c)
	}
	if c := post(as.URL, "/services/"+svc+"/deploy", url.Values{"tag": {"green"}, "csrf": {tok}}, true, "nobody"); c != http.StatusUnauthorized {
		t.Errorf("deploy with wrong credentials: %d, want 401", c)
	}
	if after := specImage(); after != before {
		t.Errorf("a refused deploy changed the service: %s -> %s", before, after)
	}

	// No swarm manager to ask: the page says why.
	t.Setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
	noSwarm, err := newWebUI(srv, addr, false, nil, dir, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	ns := httptest.NewServer(noSwarm)
	t.Cleanup(ns.Close)
	resp, err := http.Get(ns.URL + "/services")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `id="unavailable"`) || !strings.Contains(string(b), "did not answer as a swarm manager") {
		t.Errorf("Services page without an engine: %d\n%s", resp.StatusCode, b)
	}
}

func mustDeployClient(t *testing.T, addr string) *deploy.Client {
	dc, err := deploy.New(deploy.Options{Registry: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dc.Close() })
	return dc
}
