package deploy

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// Status is the state of the swarm's services, tasks and nodes.
type Status struct {
	Services []ServiceStatus
	Nodes    []NodeStatus
}

// ServiceStatus is one service.
type ServiceStatus struct {
	Name, ID string
	// Image is the spec's (pinned) image.
	Image string
	// Mode is "replicated" or "global".
	Mode string
	// Running and Desired count tasks.
	Running, Desired int
	// UpdateState and UpdateMessage are swarm's last update status.
	UpdateState, UpdateMessage string
	Tasks                      []TaskStatus
	// Digests maps each digest a running task runs to the registry tags
	// that point at it now (empty when no tag does, or the registry could
	// not be asked: see TagErr).
	Digests map[string][]string
	// TagErr says why tags could not be listed.
	TagErr string
}

// TaskStatus is one task of a service.
type TaskStatus struct {
	ID, Node     string
	Slot         int
	State        string
	DesiredState string
	Image        string
	Digest       string
	Err          string
	Since        time.Time
}

// NodeStatus is one swarm node.
type NodeStatus struct {
	ID, Hostname, Role, Availability, State, Addr, Engine string
	Leader                                                bool
	Labels                                                map[string]string
}

// Status reports services (all, or the one with the exact name or full ID
// service), their tasks with the
// digest each runs, the registry tags pointing at those digests, and the
// nodes.
func (c *Client) Status(ctx context.Context, service string) (Status, error) {
	var st Status
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return st, err
	}
	st.Nodes = nodes
	host := map[string]string{}
	for _, n := range nodes {
		host[n.ID] = n.Hostname
	}
	var svcs []swarm.Service
	if service != "" {
		svc, err := c.lookupService(ctx, service)
		if err != nil {
			return st, err
		}
		svcs = []swarm.Service{svc}
	} else {
		r, err := c.api.ServiceList(ctx, client.ServiceListOptions{})
		if err != nil {
			return st, fmt.Errorf("listing services: %w", err)
		}
		svcs = r.Items
	}
	sort.Slice(svcs, func(i, j int) bool { return svcs[i].Spec.Name < svcs[j].Spec.Name })
	for _, svc := range svcs {
		ss := ServiceStatus{Name: svc.Spec.Name, ID: svc.ID, Mode: "replicated", Digests: map[string][]string{}}
		if cs := svc.Spec.TaskTemplate.ContainerSpec; cs != nil {
			ss.Image = cs.Image
		}
		if svc.Spec.Mode.Global != nil {
			ss.Mode = "global"
		} else if r := svc.Spec.Mode.Replicated; r != nil && r.Replicas != nil {
			ss.Desired = int(*r.Replicas)
		}
		if u := svc.UpdateStatus; u != nil {
			ss.UpdateState, ss.UpdateMessage = string(u.State), u.Message
		}
		tl, err := c.api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", svc.ID)})
		if err != nil {
			return st, fmt.Errorf("listing tasks of %s: %w", ss.Name, err)
		}
		sort.Slice(tl.Items, func(i, j int) bool {
			a, b := tl.Items[i], tl.Items[j]
			if a.Slot != b.Slot {
				return a.Slot < b.Slot
			}
			return a.Status.Timestamp.After(b.Status.Timestamp)
		})
		for _, t := range tl.Items {
			img := taskImage(&t)
			_, d := splitDigest(img)
			ts := TaskStatus{ID: t.ID, Node: nodeName(t.NodeID, host), Slot: t.Slot, State: string(t.Status.State),
				DesiredState: string(t.DesiredState), Image: img, Digest: d, Err: t.Status.Err, Since: t.Status.Timestamp}
			ss.Tasks = append(ss.Tasks, ts)
			if t.Status.State == swarm.TaskStateRunning && t.DesiredState == swarm.TaskStateRunning {
				ss.Running++
				if d != "" {
					ss.Digests[d] = nil
				}
			}
		}
		if ss.Mode == "global" {
			ss.Desired = ss.Running
			for _, t := range tl.Items {
				if t.DesiredState == swarm.TaskStateRunning && t.Status.State != swarm.TaskStateRunning {
					ss.Desired++
				}
			}
		}
		if len(ss.Digests) > 0 {
			if err := c.tagsFor(ctx, ss.Image, ss.Digests); err != nil {
				ss.TagErr = err.Error()
			}
		}
		st.Services = append(st.Services, ss)
	}
	return st, nil
}

// tagsFor fills digests with the tags of image's repository that point at
// each digest, asking the registry with the docker CLI's credentials.
func (c *Client) tagsFor(ctx context.Context, image string, digests map[string][]string) error {
	n, _ := splitDigest(image)
	ref, err := name.ParseReference(n, name.Insecure)
	if err != nil {
		return fmt.Errorf("parsing %s: %w", n, err)
	}
	repo := ref.Context()
	cr, err := c.lookupCredentials(repo.RegistryStr())
	if err != nil {
		return err
	}
	ro := []remote.Option{remote.WithContext(ctx), remote.WithAuth(cr.authenticator())}
	tags, err := remote.List(repo, ro...)
	if err != nil {
		return fmt.Errorf("listing tags of %s: %w", repo, err)
	}
	var (
		mu sync.Mutex
		wg sync.WaitGroup
		// at most 8 HEADs at once
		sem = make(chan struct{}, 8)
	)
	for _, tag := range tags {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			d, err := remote.Head(repo.Tag(tag), ro...)
			if err != nil {
				return
			}
			mu.Lock()
			if v, ok := digests[d.Digest.String()]; ok {
				digests[d.Digest.String()] = append(v, tag)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	for d := range digests {
		sort.Strings(digests[d])
	}
	return nil
}

// Nodes lists the swarm's nodes.
func (c *Client) Nodes(ctx context.Context) ([]NodeStatus, error) {
	r, err := c.api.NodeList(ctx, client.NodeListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	var out []NodeStatus
	for _, n := range r.Items {
		ns := NodeStatus{ID: n.ID, Hostname: n.Description.Hostname, Role: string(n.Spec.Role),
			Availability: string(n.Spec.Availability), State: string(n.Status.State), Addr: n.Status.Addr,
			Engine: n.Description.Engine.EngineVersion, Labels: n.Spec.Labels}
		if n.ManagerStatus != nil {
			ns.Leader = n.ManagerStatus.Leader
		}
		out = append(out, ns)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Hostname < out[j].Hostname })
	return out, nil
}

// LabelNode adds (set) and removes (rm) labels of the node named by ID,
// ID prefix or hostname (`docker node update --label-add/--label-rm`).
func (c *Client) LabelNode(ctx context.Context, node string, set map[string]string, rm []string) (NodeStatus, error) {
	r, err := c.api.NodeInspect(ctx, node, client.NodeInspectOptions{})
	if err != nil {
		return NodeStatus{}, fmt.Errorf("inspecting node %s: %w", node, err)
	}
	n := r.Node
	spec := n.Spec
	labels := map[string]string{}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	for k, v := range set {
		labels[k] = v
	}
	for _, k := range rm {
		if _, ok := labels[k]; !ok {
			return NodeStatus{}, fmt.Errorf("node %s has no label %q", node, k)
		}
		delete(labels, k)
	}
	spec.Labels = labels
	if _, err := c.api.NodeUpdate(ctx, n.ID, client.NodeUpdateOptions{Version: n.Version, Spec: spec}); err != nil {
		return NodeStatus{}, fmt.Errorf("updating labels of node %s: %w", node, err)
	}
	return NodeStatus{ID: n.ID, Hostname: n.Description.Hostname, Role: string(spec.Role),
		Availability: string(spec.Availability), State: string(n.Status.State), Labels: labels}, nil
}
