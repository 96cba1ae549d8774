package deploy

import (
	"context"
	"fmt"
	"sort"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// ImageUse is one image a swarm service needs: what its current spec or
// previous spec (the rollback target) names, or what one of its tasks runs.
type ImageUse struct {
	// Service is the service name.
	Service string
	// Image is the reference as swarm has it (host/repo:tag@sha256:...).
	Image string
	// Digest is Image's digest ("" when it is not pinned).
	Digest string
	// Why is "current spec", "previous spec" or "task <id> on <node>".
	Why string
}

// ImagesInUse lists every image the swarm's services need now or to roll
// back: each service's current and previous spec, and every task that runs
// or is meant to. A garbage collection must not remove them (a rollback,
// or a task rescheduled onto another node, pulls them again). An engine
// that is not a swarm manager is an error: nothing could be checked.
func (c *Client) ImagesInUse(ctx context.Context) ([]ImageUse, error) {
	l, err := c.api.ServiceList(ctx, client.ServiceListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing services: %w", err)
	}
	var out []ImageUse
	name := map[string]string{}
	add := func(svc, image, why string) {
		if image == "" {
			return
		}
		_, d := splitDigest(image)
		out = append(out, ImageUse{Service: svc, Image: image, Digest: d, Why: why})
	}
	for _, s := range l.Items {
		name[s.ID] = s.Spec.Name
		if cs := s.Spec.TaskTemplate.ContainerSpec; cs != nil {
			add(s.Spec.Name, cs.Image, "current spec")
		}
		if p := s.PreviousSpec; p != nil && p.TaskTemplate.ContainerSpec != nil {
			add(s.Spec.Name, p.TaskTemplate.ContainerSpec.Image, "previous spec")
		}
	}
	tl, err := c.api.TaskList(ctx, client.TaskListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing tasks: %w", err)
	}
	for _, t := range tl.Items {
		if t.DesiredState != swarm.TaskStateRunning && t.Status.State != swarm.TaskStateRunning {
			continue
		}
		svc := name[t.ServiceID]
		if svc == "" {
			svc = t.ServiceID
		}
		add(svc, taskImage(&t), "task "+shortID(t.ID))
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Service < out[j].Service })
	return out, nil
}
