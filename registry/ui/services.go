package ui

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/labreg/labreg/deploy"
	"github.com/labreg/labreg/registry"
)

// Swarm is the swarm the registry serves, through the engine next to it:
// what runs where, and blue/green deploys and rollbacks through the same
// code path as `labreg deploy` / `labreg rollback` (digest pinned,
// credentials forwarded, watched to convergence). Progress is written to
// progress as `labreg deploy` prints it. cmd/labreg implements it over
// *deploy.Client.
type Swarm interface {
	Status(ctx context.Context) (deploy.Status, error)
	Deploy(ctx context.Context, service, image string, progress io.Writer) (deploy.Result, error)
	Rollback(ctx context.Context, service string, progress io.Writer) (deploy.Result, error)
}

// swarmTimeout bounds the engine queries of one page view (an engine
// that does not answer must not hang the page).
const swarmTimeout = 10 * time.Second

// rolloutTimeout bounds a deploy or rollback started from the UI.
const rolloutTimeout = 10 * time.Minute

// Operation is a deploy or rollback started from the UI, running or done.
type Operation struct {
	Service string    `json:"service"`
	Action  string    `json:"action"` // "deploy" or "rollback"
	Image   string    `json:"image,omitempty"`
	User    string    `json:"user,omitempty"`
	Started time.Time `json:"started"`
	Done    bool      `json:"done"`
	// Outcome is "converged", "rolled back", "paused", ... (a
	// *deploy.RolloutError's state) or "failed"; "" while running.
	Outcome string `json:"outcome,omitempty"`
	// Result is the image every task runs after it converged.
	Result string `json:"result,omitempty"`
	// Error is what went wrong, TaskErr the failing task's error.
	Error   string `json:"error,omitempty"`
	TaskErr string `json:"task_error,omitempty"`
	// Progress is what `labreg deploy` would have printed.
	Progress string `json:"progress"`
}

// lockedBuffer is the progress of one operation, written by the rollout
// and read by page views.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type operations struct {
	mu   sync.Mutex
	ops  map[string]*Operation
	logs map[string]*lockedBuffer
}

// ServiceView is one service on the Services page.
type ServiceView struct {
	deploy.ServiceStatus
	// Repo and Tag are the service image's repository in this registry
	// and its tag ("" when the image comes from elsewhere); Digest its
	// pinned digest, Tags this registry's tags on that digest now.
	Repo, Tag, Digest string
	Tags              []string
	// Choices are the other tags of Repo (deploy targets).
	Choices []string
	// Updating: swarm is rolling this service out or back.
	Updating bool
	// TaskErr is the error of the newest failed task when the last update
	// paused or rolled back (what made swarm stop).
	TaskErr string
	Op      *Operation `json:",omitempty"`
}

// ServicesView is the Services page and GET /api/services.
type ServicesView struct {
	// Unavailable says why there is nothing to show (no engine, not a
	// swarm manager).
	Unavailable string         `json:"unavailable,omitempty"`
	Services    []*ServiceView `json:"services"`
	Nodes       []deploy.NodeStatus
	// Live: something is rolling out; the page refreshes itself.
	Live bool `json:"live"`
}

// servicesView asks the swarm and joins it with this registry's tags.
func (u *UI) servicesView(ctx context.Context) *ServicesView {
	v := &ServicesView{Services: []*ServiceView{}}
	if u.opts.Swarm == nil {
		v.Unavailable = "this web UI has no swarm engine configured"
		return v
	}
	sctx, cancel := context.WithTimeout(ctx, swarmTimeout)
	defer cancel()
	st, err := u.opts.Swarm.Status(sctx)
	if err != nil {
		v.Unavailable = "the Docker Engine next to labreg serve did not answer as a swarm manager: " + err.Error()
		return v
	}
	v.Nodes = st.Nodes
	tagsOf := map[string][]registry.Tag{}
	for _, s := range st.Services {
		sv := &ServiceView{ServiceStatus: s}
		sv.Updating = s.UpdateState == "updating" || s.UpdateState == "rollback_started"
		if s.UpdateState == "paused" || strings.HasPrefix(s.UpdateState, "rollback_") {
			var newest time.Time
			for _, t := range s.Tasks {
				if (t.State == "failed" || t.State == "rejected") && t.Err != "" && t.Since.After(newest) {
					newest, sv.TaskErr = t.Since, t.Err
				}
			}
		}
		sv.Repo, sv.Tag, sv.Digest = u.localImage(s.Image)
		if sv.Repo != "" {
			tags, ok := tagsOf[sv.Repo]
			if !ok {
				if _, tags, err = u.opts.Catalog.Tags(ctx, sv.Repo); err != nil {
					tags = nil
				}
				tagsOf[sv.Repo] = tags
			}
			for _, t := range tags {
				if string(t.Digest) == sv.Digest {
					sv.Tags = append(sv.Tags, t.Name)
				}
				if t.Name != sv.Tag || string(t.Digest) != sv.Digest {
					sv.Choices = append(sv.Choices, t.Name)
				}
			}
			sort.Slice(sv.Choices, func(i, j int) bool { return natLess(sv.Choices[i], sv.Choices[j]) })
		}
		sv.Op = u.operation(s.Name)
		v.Live = v.Live || sv.Updating || (sv.Op != nil && !sv.Op.Done)
		v.Services = append(v.Services, sv)
	}
	return v
}

// localImage splits host/repo:tag@digest when host is this registry's
// advertised address.
func (u *UI) localImage(image string) (repo, tag, dgst string) {
	host, rest, ok := strings.Cut(image, "/")
	if !ok || u.opts.Advertise == "" || !strings.EqualFold(host, u.opts.Advertise) {
		return "", "", ""
	}
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		rest, dgst = rest[:i], rest[i+1:]
	}
	if i := strings.LastIndex(rest, ":"); i >= 0 {
		rest, tag = rest[:i], rest[i+1:]
	}
	return rest, tag, dgst
}

// operation is a snapshot of the service's last UI operation, or nil.
func (u *UI) operation(service string) *Operation {
	u.ops.mu.Lock()
	defer u.ops.mu.Unlock()
	op := u.ops.ops[service]
	if op == nil {
		return nil
	}
	c := *op
	c.Progress = u.ops.logs[service].String()
	return &c
}

// servicesUsing lists the services whose running tasks run dgst.
func (u *UI) servicesUsing(ctx context.Context, dgst digest.Digest) []string {
	if u.opts.Swarm == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, swarmTimeout)
	defer cancel()
	st, err := u.opts.Swarm.Status(ctx)
	if err != nil {
		return nil
	}
	var out []string
	for _, s := range st.Services {
		for _, t := range s.Tasks {
			if t.Digest == string(dgst) && t.State == "running" {
				out = append(out, s.Name)
				break
			}
		}
	}
	return out
}

// updateState says swarm's update state in words.
func updateState(s string) string {
	switch s {
	case "updating":
		return "updating"
	case "paused":
		return "paused"
	case "completed":
		return "completed"
	case "rollback_started":
		return "rolling back"
	case "rollback_paused":
		return "rollback paused"
	case "rollback_completed":
		return "rolled back"
	}
	return s
}

func (u *UI) services(w http.ResponseWriter, r *http.Request) {
	v := u.servicesView(r.Context())
	if v.Live {
		w.Header().Set("Refresh", "2") // followed without JavaScript
	}
	u.render(w, r, http.StatusOK, "services", "Services", v)
}

func (u *UI) apiServices(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, u.servicesView(r.Context()))
}

// serviceAction starts a deploy of another tag of the service's
// repository, or a rollback, and redirects to the Services page, which
// follows it.
func (u *UI) serviceAction(w http.ResponseWriter, r *http.Request) {
	name, action := r.PathValue("name"), r.PathValue("action")
	if u.refuseWrite(w, r) {
		return
	}
	if u.opts.Swarm == nil {
		u.fail(w, r, fmt.Errorf("this web UI has no swarm engine configured: %w", errForbidden))
		return
	}
	if action != "deploy" && action != "rollback" {
		u.fail(w, r, fmt.Errorf("no action %s: %w", action, registry.ErrNotFound))
		return
	}
	ctx := r.Context()
	st, err := u.opts.Swarm.Status(ctx)
	if err != nil {
		u.fail(w, r, err)
		return
	}
	var svc *deploy.ServiceStatus
	for i := range st.Services {
		if st.Services[i].Name == name {
			svc = &st.Services[i]
		}
	}
	if svc == nil {
		u.fail(w, r, fmt.Errorf("no service named %q: %w", name, registry.ErrNotFound))
		return
	}
	op := &Operation{Service: name, Action: action, User: user(r), Started: time.Now()}
	var repo, tag string
	if action == "deploy" {
		repo, _, _ = u.localImage(svc.Image)
		tag = r.PostFormValue("tag")
		if repo == "" {
			u.fail(w, r, fmt.Errorf("service %s runs %s, not an image of this registry (%s): %w", name, svc.Image, u.opts.Advertise, errBadRequest))
			return
		}
		if _, err := u.opts.Catalog.Resolve(ctx, repo, tag); err != nil {
			u.fail(w, r, fmt.Errorf("tag %q of %s: %w", tag, repo, err))
			return
		}
		op.Image = u.opts.Advertise + "/" + repo + ":" + tag
	}
	u.ops.mu.Lock()
	if u.ops.ops == nil {
		u.ops.ops, u.ops.logs = map[string]*Operation{}, map[string]*lockedBuffer{}
	}
	if cur := u.ops.ops[name]; cur != nil && !cur.Done {
		u.ops.mu.Unlock()
		u.fail(w, r, fmt.Errorf("a %s of %s started at %s is still running: %w", cur.Action, name, cur.Started.Format(time.TimeOnly), errConflict))
		return
	}
	log := &lockedBuffer{}
	u.ops.ops[name], u.ops.logs[name] = op, log
	u.ops.mu.Unlock()

	done := make(chan struct{})
	go func() {
		defer close(done)
		// The rollout outlives the request; it ends by itself (converged,
		// rolled back, timeout).
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rolloutTimeout+time.Minute)
		defer cancel()
		var res deploy.Result
		var err error
		if action == "deploy" {
			res, err = u.opts.Swarm.Deploy(ctx, name, op.Image, log)
		} else {
			res, err = u.opts.Swarm.Rollback(ctx, name, log)
		}
		// The outcome, recorded as an event before the page shows it done.
		var o Operation
		var re *deploy.RolloutError
		switch {
		case err == nil:
			o.Outcome, o.Result = "converged", res.Image
		case errors.As(err, &re):
			o.Outcome, o.Error, o.TaskErr = re.State, err.Error(), re.TaskErr
			if re.State == "rollback_completed" {
				o.Outcome = "rolled back"
			}
		default:
			o.Outcome, o.Error = "failed", err.Error()
		}
		ev := registry.Event{Action: action, Repo: repo, Tag: tag, User: op.User, Addr: r.RemoteAddr, Via: "ui",
			Detail: fmt.Sprintf("service %s: %s", name, o.Outcome)}
		if _, d, ok := strings.Cut(res.Image, "@"); ok {
			ev.Digest = digest.Digest(d)
		}
		if o.Error != "" {
			ev.Detail += ": " + o.Error
		}
		u.opts.History.Add(ev)
		u.ops.mu.Lock()
		op.Done, op.Outcome, op.Result, op.Error, op.TaskErr = true, o.Outcome, o.Result, o.Error, o.TaskErr
		u.ops.mu.Unlock()
	}()
	// A quick outcome (a refused update) shows at once; a rollout is
	// followed on the Services page.
	select {
	case <-done:
	case <-time.After(time.Second):
	}
	flash := fmt.Sprintf("%s of %s started", action, name)
	if op := u.operation(name); op.Done {
		flash = fmt.Sprintf("%s of %s: %s", action, name, op.Outcome)
	}
	http.Redirect(w, r, "/services?flash="+url.QueryEscape(flash)+"#svc-"+name, http.StatusSeeOther)
}
