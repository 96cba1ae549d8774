package deploy

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// fakeEngine is an Engine whose calls are function fields (docker/cli's
// cli/command/service/progress tests fake the client the same way); a
// call without a function fails the test's deploy with errNotFaked. It is
// for table tests of pure logic: everything else runs on a real swarm.
type fakeEngine struct {
	serviceInspect func(id string) (swarm.Service, error)
	serviceList    func() ([]swarm.Service, error)
	serviceCreate  func(o client.ServiceCreateOptions) (string, error)
	serviceUpdate  func(id string, o client.ServiceUpdateOptions) error
	serviceRemove  func(id string) error
	taskList       func(ctx context.Context, f client.Filters) ([]swarm.Task, error)
	nodeList       func() ([]swarm.Node, error)
}

var errNotFaked = errors.New("not faked")

func (f *fakeEngine) ServiceInspect(_ context.Context, id string, _ client.ServiceInspectOptions) (client.ServiceInspectResult, error) {
	if f.serviceInspect == nil {
		return client.ServiceInspectResult{}, errNotFaked
	}
	s, err := f.serviceInspect(id)
	return client.ServiceInspectResult{Service: s}, err
}

func (f *fakeEngine) ServiceList(context.Context, client.ServiceListOptions) (client.ServiceListResult, error) {
	if f.serviceList == nil {
		return client.ServiceListResult{}, errNotFaked
	}
	s, err := f.serviceList()
	return client.ServiceListResult{Items: s}, err
}

func (f *fakeEngine) ServiceCreate(_ context.Context, o client.ServiceCreateOptions) (client.ServiceCreateResult, error) {
	if f.serviceCreate == nil {
		return client.ServiceCreateResult{}, errNotFaked
	}
	id, err := f.serviceCreate(o)
	return client.ServiceCreateResult{ID: id}, err
}

func (f *fakeEngine) ServiceUpdate(_ context.Context, id string, o client.ServiceUpdateOptions) (client.ServiceUpdateResult, error) {
	if f.serviceUpdate == nil {
		return client.ServiceUpdateResult{}, errNotFaked
	}
	return client.ServiceUpdateResult{}, f.serviceUpdate(id, o)
}

func (f *fakeEngine) ServiceRemove(_ context.Context, id string, _ client.ServiceRemoveOptions) (client.ServiceRemoveResult, error) {
	if f.serviceRemove == nil {
		return client.ServiceRemoveResult{}, errNotFaked
	}
	return client.ServiceRemoveResult{}, f.serviceRemove(id)
}

func (f *fakeEngine) TaskList(ctx context.Context, o client.TaskListOptions) (client.TaskListResult, error) {
	if f.taskList == nil {
		return client.TaskListResult{}, errNotFaked
	}
	t, err := f.taskList(ctx, o.Filters)
	return client.TaskListResult{Items: t}, err
}

func (f *fakeEngine) TaskLogs(context.Context, string, client.TaskLogsOptions) (client.TaskLogsResult, error) {
	return nil, errNotFaked
}

func (f *fakeEngine) NodeList(context.Context, client.NodeListOptions) (client.NodeListResult, error) {
	if f.nodeList == nil {
		return client.NodeListResult{}, errNotFaked
	}
	n, err := f.nodeList()
	return client.NodeListResult{Items: n}, err
}

func (f *fakeEngine) NodeInspect(context.Context, string, client.NodeInspectOptions) (client.NodeInspectResult, error) {
	return client.NodeInspectResult{}, errNotFaked
}

func (f *fakeEngine) NodeUpdate(context.Context, string, client.NodeUpdateOptions) (client.NodeUpdateResult, error) {
	return client.NodeUpdateResult{}, errNotFaked
}

func (f *fakeEngine) NetworkInspect(context.Context, string, client.NetworkInspectOptions) (client.NetworkInspectResult, error) {
	return client.NetworkInspectResult{}, errNotFaked
}

func (f *fakeEngine) NetworkList(context.Context, client.NetworkListOptions) (client.NetworkListResult, error) {
	return client.NetworkListResult{}, errNotFaked
}

func (f *fakeEngine) NetworkCreate(context.Context, string, client.NetworkCreateOptions) (client.NetworkCreateResult, error) {
	return client.NetworkCreateResult{}, errNotFaked
}

func (f *fakeEngine) SecretList(context.Context, client.SecretListOptions) (client.SecretListResult, error) {
	return client.SecretListResult{}, errNotFaked
}

func (f *fakeEngine) SecretCreate(context.Context, client.SecretCreateOptions) (client.SecretCreateResult, error) {
	return client.SecretCreateResult{}, errNotFaked
}

func (f *fakeEngine) ConfigList(context.Context, client.ConfigListOptions) (client.ConfigListResult, error) {
	return client.ConfigListResult{}, errNotFaked
}

func (f *fakeEngine) ConfigCreate(context.Context, client.ConfigCreateOptions) (client.ConfigCreateResult, error) {
	return client.ConfigCreateResult{}, errNotFaked
}

func (f *fakeEngine) ImageInspect(context.Context, string, ...client.ImageInspectOption) (client.ImageInspectResult, error) {
	return client.ImageInspectResult{}, errNotFaked
}

func (f *fakeEngine) ImageTag(context.Context, client.ImageTagOptions) (client.ImageTagResult, error) {
	return client.ImageTagResult{}, errNotFaked
}

func (f *fakeEngine) ImagePush(context.Context, string, client.ImagePushOptions) (client.ImagePushResponse, error) {
	return nil, errNotFaked
}

func (f *fakeEngine) DistributionInspect(context.Context, string, client.DistributionInspectOptions) (client.DistributionInspectResult, error) {
	return client.DistributionInspectResult{}, errNotFaked
}

func (f *fakeEngine) Info(context.Context, client.InfoOptions) (client.SystemInfoResult, error) {
	return client.SystemInfoResult{}, errNotFaked
}

func (f *fakeEngine) Ping(context.Context, client.PingOptions) (client.PingResult, error) {
	return client.PingResult{}, errNotFaked
}

func (f *fakeEngine) DaemonHost() string { return "fake://" }
func (f *fakeEngine) Close() error       { return nil }

var _ Engine = (*fakeEngine)(nil)

// fakeClient is a Client on e whose progress events go to events.
func fakeClient(e Engine, events *[]Progress) *Client {
	return &Client{api: e, opts: Options{
		OnProgress:      func(p Progress) { *events = append(*events, p) },
		Logger:          slog.New(slog.DiscardHandler),
		PollInterval:    time.Millisecond,
		DockerConfigDir: "/nonexistent",
	}}
}

// Two services: "g", and "samsung" whose ID starts with g (the engine's
// own lookup takes an ID prefix, so `docker service inspect g` may find
// samsung).
var (
	svcG       = swarm.Service{ID: "7k2mq0d5x8b3n1c4v6z9a0s2d", Spec: swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "g"}}}
	svcSamsung = swarm.Service{ID: "g1k2m3n4b5v6c7x8z9a0s1d2f", Spec: swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "samsung"}}}
	svcGlobal  = swarm.Service{ID: "q9w8e7r6t5y4u3i2o1p0a9s8d", Spec: swarm.ServiceSpec{Annotations: swarm.Annotations{Name: "glob"}}}
)

func TestLookupService(t *testing.T) {
	all := []swarm.Service{svcG, svcSamsung, svcGlobal}
	tests := []struct {
		ref, want string
		err       string
	}{
		{ref: "g", want: "g"},
		{ref: "samsung", want: "samsung"},
		{ref: svcSamsung.ID, want: "samsung"}, // an explicit full ID is fine
		{ref: "g1k2", err: `no service named "g1k2"; services with a similar name or ID: samsung (ID g1k2m3n4b5v6)`},
		{ref: "gl", err: `no service named "gl"; services with a similar name or ID: glob (ID q9w8e7r6t5y4)`},
		{ref: "nope", err: `no service named "nope"`},
	}
	for _, tc := range tests {
		got, err := pickService(all, tc.ref)
		switch {
		case tc.err != "":
			if err == nil || err.Error() != tc.err {
				t.Errorf("%q: %v, want error %q", tc.ref, err, tc.err)
			}
		case err != nil:
			t.Errorf("%q: %v", tc.ref, err)
		case got.Spec.Name != tc.want:
			t.Errorf("%q found %s, want %s", tc.ref, got.Spec.Name, tc.want)
		}
	}
	twins := []swarm.Service{svcG, {ID: "abc", Spec: swarm.ServiceSpec{Annotations: swarm.Annotations{Name: svcSamsung.ID}}}, svcSamsung}
	if _, err := pickService(twins, svcSamsung.ID); !errors.Is(err, ErrAmbiguousService) {
		t.Errorf("a name that is another service's ID: %v, want ErrAmbiguousService", err)
	}
}

// TestRollbackByExactName: `rollback g` rolls back g, not samsung (whose
// ID starts with g), and reports the rollout as events.
func TestRollbackByExactName(t *testing.T) {
	one := uint64(1)
	g := svcG
	g.Spec.TaskTemplate.ContainerSpec = &swarm.ContainerSpec{Image: imgNew}
	g.Spec.Mode = swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &one}}
	g.PreviousSpec = &swarm.ServiceSpec{TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: imgOld}}}
	var updated []string
	after := g // what swarm shows once the rollback completed
	after.Spec.TaskTemplate.ContainerSpec = &swarm.ContainerSpec{Image: imgOld}
	after.UpdateStatus = update(swarm.UpdateStateRollbackCompleted, "rollback completed")
	e := &fakeEngine{
		serviceList: func() ([]swarm.Service, error) { return []swarm.Service{svcSamsung, g}, nil },
		serviceUpdate: func(id string, o client.ServiceUpdateOptions) error {
			if o.Rollback != "previous" {
				t.Errorf("update of %s without rollback=previous", id)
			}
			updated = append(updated, id)
			return nil
		},
		serviceInspect: func(id string) (swarm.Service, error) {
			if id != g.ID {
				t.Errorf("inspected %s, want g's ID", id)
			}
			return after, nil
		},
		taskList: func(_ context.Context, f client.Filters) ([]swarm.Task, error) {
			return []swarm.Task{running("t1", 1, "n1", imgOld)}, nil
		},
		nodeList: func() ([]swarm.Node, error) { return threeWorkers[:1], nil },
	}
	var events []Progress
	res, err := fakeClient(e, &events).Rollback(t.Context(), "g", DeployOptions{NoRegistryAuth: true, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(updated, []string{g.ID}) {
		t.Errorf("updated %v, want only g (%s)", updated, g.ID)
	}
	if res.Tasks != 1 || res.Image != imgOld {
		t.Errorf("result %d tasks of %s, want 1 of %s", res.Tasks, res.Image, imgOld)
	}
	want := []Progress{
		{Service: "g", Stage: StageRollback, Rollback: true, Image: imgOld},
		{Service: "g", Stage: StageTask, Rollback: true, Slot: 1, Node: "worker1", State: "running", Image: imgOld},
		{Service: "g", Stage: StageOverall, Rollback: true, Running: 1, Total: 1},
		{Service: "g", Stage: StageConverged, Rollback: true, Running: 1, Total: 1, Image: imgOld},
	}
	if !reflect.DeepEqual(events, want) {
		t.Errorf("events:\n%+v\nwant:\n%+v", events, want)
	}
}

// TestRemoveUnknownRemovesNothing: one unknown name, and nothing goes.
func TestRemoveUnknownRemovesNothing(t *testing.T) {
	var removed []string
	e := &fakeEngine{
		serviceList:   func() ([]swarm.Service, error) { return []swarm.Service{svcG, svcSamsung}, nil },
		serviceRemove: func(id string) error { removed = append(removed, id); return nil },
	}
	var events []Progress
	c := fakeClient(e, &events)
	_, err := c.Remove(t.Context(), []string{"g", "g1"}, false)
	if err == nil || !strings.Contains(err.Error(), `no service named "g1"`) || !strings.Contains(err.Error(), "samsung") {
		t.Errorf("error %v, want one naming g1 and the candidate samsung", err)
	}
	if len(removed) != 0 {
		t.Errorf("removed %v although a name was unknown", removed)
	}
	got, err := c.Remove(t.Context(), []string{"g"}, true)
	if err != nil || len(got) != 1 || got[0].ID != svcG.ID || len(removed) != 0 {
		t.Errorf("dry run: %v %v, removed %v; want g listed, nothing removed", got, err, removed)
	}
	if _, err := c.Remove(t.Context(), []string{"g"}, false); err != nil || !reflect.DeepEqual(removed, []string{svcG.ID}) {
		t.Errorf("remove g: %v, removed %v, want only g", err, removed)
	}
}

func (f *fakeEngine) NetworkRemove(context.Context, string, client.NetworkRemoveOptions) (client.NetworkRemoveResult, error) {
	return client.NetworkRemoveResult{}, errNotFaked
}

func (f *fakeEngine) SecretRemove(context.Context, string, client.SecretRemoveOptions) (client.SecretRemoveResult, error) {
	return client.SecretRemoveResult{}, errNotFaked
}

func (f *fakeEngine) ConfigRemove(context.Context, string, client.ConfigRemoveOptions) (client.ConfigRemoveResult, error) {
	return client.ConfigRemoveResult{}, errNotFaked
}

// TestDeployPrepullTimeout: a node whose pull never finishes (its prepull
// task stays preparing) ends the deploy at DeployOptions.Timeout with a
// *RolloutError naming the node; the service is never created and the
// prepull job is removed. (TestPrepullTimeout does it on the real swarm
// with a stalled registry.)
func TestDeployPrepullTimeout(t *testing.T) {
	var created, removed []string
	e := &fakeEngine{
		serviceList: func() ([]swarm.Service, error) { return nil, nil },
		serviceCreate: func(o client.ServiceCreateOptions) (string, error) {
			created = append(created, o.Spec.Name)
			if o.Spec.Labels["labreg.prepull"] != "web" || o.Spec.Mode.GlobalJob == nil {
				t.Errorf("created %s, not a prepull job for web", o.Spec.Name)
			}
			return "job1", nil
		},
		serviceRemove: func(id string) error { removed = append(removed, id); return nil },
		nodeList:      func() ([]swarm.Node, error) { return threeWorkers[:1], nil },
		taskList: func(context.Context, client.Filters) ([]swarm.Task, error) {
			return []swarm.Task{task("p1", 0, "n1", swarm.TaskStatePreparing, swarm.TaskStateComplete, imgNew, "")}, nil
		},
	}
	var events []Progress
	const timeout = 300 * time.Millisecond
	start := time.Now()
	_, err := fakeClient(e, &events).Deploy(t.Context(), Spec{Name: "web", Image: imgNew},
		DeployOptions{Prepull: true, NoRegistryAuth: true, Timeout: timeout})
	took := time.Since(start)
	var re *RolloutError
	if !errors.As(err, &re) || re.State != "timeout" || !strings.Contains(re.Message, "not pulled yet on worker1 (preparing)") {
		t.Fatalf("err = %v, want a timeout naming worker1", err)
	}
	if took < timeout {
		t.Errorf("returned after %s, before the timeout %s", took, timeout)
	}
	if len(created) != 1 || !reflect.DeepEqual(removed, []string{"job1"}) {
		t.Errorf("created %v, removed %v: want only the prepull job, removed", created, removed)
	}
}

// TestPrepullDeadlineMidPoll: a deadline that passes while a poll is
// listing tasks still names the node whose pull had not finished (a fresh
// look after the deadline), not "no ready node has taken a prepull task"
// from the poll it cut short. (TestPrepullTimeout once failed that way on
// the real swarm under load.)
func TestPrepullDeadlineMidPoll(t *testing.T) {
	fire := make(chan struct{})
	deadline := DeadlineAt(t.Context(), fire)
	var once sync.Once
	e := &fakeEngine{
		serviceList:   func() ([]swarm.Service, error) { return nil, nil },
		serviceCreate: func(client.ServiceCreateOptions) (string, error) { return "job1", nil },
		serviceRemove: func(string) error { return nil },
		nodeList:      func() ([]swarm.Node, error) { return threeWorkers[:1], nil },
		taskList: func(ctx context.Context, _ client.Filters) ([]swarm.Task, error) {
			first := false
			once.Do(func() { first = true })
			if first { // the deadline passes during this poll's task list
				close(fire)
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return []swarm.Task{task("p1", 0, "n1", swarm.TaskStatePreparing, swarm.TaskStateComplete, imgNew, "")}, nil
		},
	}
	var events []Progress
	_, err := fakeClient(e, &events).Deploy(deadline, Spec{Name: "web", Image: imgNew},
		DeployOptions{Prepull: true, NoRegistryAuth: true})
	var re *RolloutError
	if !errors.As(err, &re) || re.State != "timeout" || !strings.Contains(re.Message, "not pulled yet on worker1 (preparing)") {
		t.Fatalf("err = %v, want a timeout naming worker1", err)
	}
}

// DeadlineAt returns a context whose deadline passes when ch is closed
// (its Err is then context.DeadlineExceeded, as a real deadline's), so that
// a test times out at a known state instead of at a wall-clock time.
// Exported for the external tests (deploy_test).
func DeadlineAt(parent context.Context, ch <-chan struct{}) context.Context {
	d := &stateDeadline{Context: parent, done: make(chan struct{})}
	go func() {
		select {
		case <-ch:
		case <-parent.Done():
		}
		close(d.done)
	}()
	return d
}

type stateDeadline struct {
	context.Context
	done chan struct{}
}

func (d *stateDeadline) Done() <-chan struct{} { return d.done }

func (d *stateDeadline) Err() error {
	select {
	case <-d.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}
