package deploy

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// StackLabel is the label Deploy puts on a service from a compose file and
// on the networks, secrets and configs it creates for it; its value is the
// stack name (StackName). Down removes exactly what carries it.
const StackLabel = "com.labreg.stack"

// StackName is the stack a compose file deploys: the file's base name
// without its .yaml/.yml extension (deploy/examples/quiz-b.yaml: "quiz-b").
func StackName(path string) string {
	base := filepath.Base(path)
	for _, ext := range []string{".yaml", ".yml"} {
		if b, ok := strings.CutSuffix(base, ext); ok && b != "" {
			return b
		}
	}
	return base
}

// createdLabels are the labels of an object Deploy creates: the
// created-by marker, StackLabel when stack is set, and extra.
func createdLabels(stack string, extra map[string]string) map[string]string {
	l := map[string]string{"labreg.created-by": "labreg deploy"}
	if stack != "" {
		l[StackLabel] = stack
	}
	for k, v := range extra {
		l[k] = v
	}
	return l
}

// Object is a swarm object Down removes or keeps.
type Object struct {
	Kind string // "service", "network", "secret" or "config"
	Name string
	ID   string
	// Reason says why a kept object stays (empty for removed ones).
	Reason string
}

func (o Object) String() string { return o.Kind + " " + o.Name }

// DownOptions tunes Down.
type DownOptions struct {
	// DryRun lists what would be removed and kept without removing anything.
	DryRun bool
	// Services are the service names of the compose file: one that exists
	// without the stack's label is reported as kept (it was not deployed
	// from the file). Optional.
	Services []string
	// Timeout bounds the wait for the removed services' tasks to leave
	// their networks. Default 1m.
	Timeout time.Duration
}

// DownResult is what Down removed (or, with DryRun, would remove) and what
// it kept, each in removal order.
type DownResult struct {
	Removed []Object
	Kept    []Object
}

// Down removes the services labelled StackLabel=stack, then the networks,
// secrets and configs labelled with it that no other service uses; nothing
// without the label is touched. A network goes once the removed services'
// tasks have left it (within opts.Timeout).
func (c *Client) Down(ctx context.Context, stack string, opts DownOptions) (DownResult, error) {
	var res DownResult
	if stack == "" {
		return res, fmt.Errorf("down: no stack name")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = time.Minute
	}
	byLabel := make(client.Filters).Add("label", StackLabel+"="+stack)
	all, err := c.api.ServiceList(ctx, client.ServiceListOptions{})
	if err != nil {
		return res, fmt.Errorf("listing services: %w", err)
	}
	ours := map[string]bool{} // service IDs
	names := map[string]bool{}
	for _, s := range all.Items {
		if s.Spec.Labels[StackLabel] == stack {
			ours[s.ID] = true
			names[s.Spec.Name] = true
			res.Removed = append(res.Removed, Object{Kind: "service", Name: s.Spec.Name, ID: s.ID})
		}
	}
	for _, n := range opts.Services {
		if names[n] {
			continue
		}
		for _, s := range all.Items {
			if s.Spec.Name == n {
				why := "not deployed from this file (no " + StackLabel + "=" + stack + " label)"
				if other := s.Spec.Labels[StackLabel]; other != "" {
					why = "deployed from stack " + other
				}
				res.Kept = append(res.Kept, Object{Kind: "service", Name: n, ID: s.ID, Reason: why})
			}
		}
	}
	sortObjects(res.Removed)
	// Who else uses what: a network, secret or config of the stack that a
	// service outside it uses stays.
	users := map[string][]string{} // object ID -> names of other services
	for _, s := range all.Items {
		if ours[s.ID] {
			continue
		}
		for _, id := range serviceRefs(s.Spec) {
			users[id] = append(users[id], s.Spec.Name)
		}
	}
	var rest []Object
	nets, err := c.api.NetworkList(ctx, client.NetworkListOptions{Filters: byLabel})
	if err != nil {
		return res, fmt.Errorf("listing networks: %w", err)
	}
	for _, n := range nets.Items {
		rest = append(rest, Object{Kind: "network", Name: n.Name, ID: n.ID})
	}
	secs, err := c.api.SecretList(ctx, client.SecretListOptions{Filters: byLabel})
	if err != nil {
		return res, fmt.Errorf("listing secrets: %w", err)
	}
	for _, s := range secs.Items {
		rest = append(rest, Object{Kind: "secret", Name: s.Spec.Name, ID: s.ID})
	}
	cfgs, err := c.api.ConfigList(ctx, client.ConfigListOptions{Filters: byLabel})
	if err != nil {
		return res, fmt.Errorf("listing configs: %w", err)
	}
	for _, s := range cfgs.Items {
		rest = append(rest, Object{Kind: "config", Name: s.Spec.Name, ID: s.ID})
	}
	sortObjects(rest)
	var remove []Object
	for _, o := range rest {
		if u := append(users[o.ID], users[o.Name]...); len(u) > 0 {
			sort.Strings(u)
			o.Reason = "in use by service " + strings.Join(u, ", ")
			res.Kept = append(res.Kept, o)
			continue
		}
		remove = append(remove, o)
	}
	if opts.DryRun {
		res.Removed = append(res.Removed, remove...)
		return res, nil
	}
	for _, o := range res.Removed {
		if _, err := c.api.ServiceRemove(ctx, o.ID, client.ServiceRemoveOptions{}); err != nil {
			return res, fmt.Errorf("removing service %s: %w", o.Name, err)
		}
		c.opts.OnProgress(Progress{Service: o.Name, Stage: StageRemoved, Message: fmt.Sprintf("service %s: removed", o.Name)})
	}
	// Tasks of the removed services hold their networks (and, on the
	// manager, their secrets and configs) until they are gone.
	deadline := time.Now().Add(opts.Timeout)
	for _, o := range remove {
		for {
			err := c.removeObject(ctx, o)
			if err == nil || cerrdefs.IsNotFound(err) { // not found: already on its way out
				err = c.waitGone(ctx, o, deadline)
			}
			if err == nil {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return res, fmt.Errorf("removing %s (after removing the services of stack %s): %w", o, stack, err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(250 * time.Millisecond):
			}
		}
		c.opts.OnProgress(Progress{Stage: StageRemoved, Message: fmt.Sprintf("%s: removed", o)})
		res.Removed = append(res.Removed, o)
	}
	return res, nil
}

// waitGone waits until a removed network has left the engine's list: swarm
// marks it for deletion and drops it once no task holds it, so a `down`
// that returns leaves nothing behind.
func (c *Client) waitGone(ctx context.Context, o Object, deadline time.Time) error {
	if o.Kind != "network" {
		return nil
	}
	for {
		_, err := c.api.NetworkInspect(ctx, o.ID, client.NetworkInspectOptions{})
		if cerrdefs.IsNotFound(err) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("network %s still there after its removal", o.Name)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (c *Client) removeObject(ctx context.Context, o Object) error {
	var err error
	switch o.Kind {
	case "network":
		_, err = c.api.NetworkRemove(ctx, o.ID, client.NetworkRemoveOptions{})
	case "secret":
		_, err = c.api.SecretRemove(ctx, o.ID, client.SecretRemoveOptions{})
	case "config":
		_, err = c.api.ConfigRemove(ctx, o.ID, client.ConfigRemoveOptions{})
	default:
		err = fmt.Errorf("unknown kind %q", o.Kind)
	}
	return err
}

// serviceRefs are the IDs of the networks, secrets and configs a service
// spec uses (a network may be given by name).
func serviceRefs(sp swarm.ServiceSpec) []string {
	var ids []string
	for _, n := range sp.TaskTemplate.Networks {
		ids = append(ids, n.Target)
	}
	if cs := sp.TaskTemplate.ContainerSpec; cs != nil {
		for _, s := range cs.Secrets {
			ids = append(ids, s.SecretID)
		}
		for _, s := range cs.Configs {
			ids = append(ids, s.ConfigID)
		}
	}
	return ids
}

// sortObjects orders by kind (networks, secrets, configs as given) then name.
func sortObjects(o []Object) {
	rank := map[string]int{"service": 0, "network": 1, "secret": 2, "config": 3}
	sort.SliceStable(o, func(i, j int) bool {
		if rank[o[i].Kind] != rank[o[j].Kind] {
			return rank[o[i].Kind] < rank[o[j].Kind]
		}
		return o[i].Name < o[j].Name
	})
}
