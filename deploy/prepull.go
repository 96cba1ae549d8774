package deploy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// PullTime is how long one node took to pull the image.
type PullTime struct {
	Node string
	Took time.Duration
	Err  string
}

// prepull makes every node eligible under placement pull image before the
// rolling update, so that nodes that pull faster do not get all the new
// tasks (the lab's "1000 servers" imbalance). It runs a global job with the
// same constraints and forwarded credentials whose container never starts
// the application (its entrypoint does not exist): a task that got past
// "preparing" has the image. It prints the pull time per node.
func (c *Client) prepull(ctx context.Context, service, image string, placement *swarm.Placement, auth string) error {
	_, err := c.Prepull(ctx, service, image, placement, auth)
	return err
}

// Prepull is prepull returning the per-node pull times.
func (c *Client) Prepull(ctx context.Context, service, image string, placement *swarm.Placement, auth string) ([]PullTime, error) {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "labreg-prepull-" + service + "-" + hex.EncodeToString(b)
	if len(name) > 63 {
		name = name[len(name)-63:]
	}
	none := swarm.RestartPolicyConditionNone
	spec := swarm.ServiceSpec{
		Annotations: swarm.Annotations{Name: name, Labels: map[string]string{"labreg.prepull": service}},
		TaskTemplate: swarm.TaskSpec{
			ContainerSpec: &swarm.ContainerSpec{Image: image, Command: []string{"/.labreg-prepull-does-not-run"}},
			Placement:     placement,
			RestartPolicy: &swarm.RestartPolicy{Condition: none},
		},
		Mode: swarm.ServiceMode{GlobalJob: &swarm.GlobalJob{}},
	}
	r, err := c.api.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: spec, EncodedRegistryAuth: auth})
	if err != nil {
		return nil, fmt.Errorf("creating prepull job for %s: %w", service, err)
	}
	defer func() {
		// remove even when ctx was cancelled
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_, _ = c.api.ServiceRemove(rctx, r.ID, client.ServiceRemoveOptions{})
	}()
	fmt.Fprintf(c.opts.Progress, "%s prepull: every eligible node pulls %s\n", service, shortImage(image))
	start := time.Now()
	seen := map[string]time.Time{} // task -> first seen preparing
	done := map[string]PullTime{}  // node -> result
	tick := time.NewTicker(c.opts.PollInterval)
	defer tick.Stop()
	var nodes map[string]string
	for {
		if nodes == nil {
			if nodes, err = c.activeNodes(ctx); err != nil {
				return nil, err
			}
		}
		tl, err := c.api.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", r.ID)})
		if err != nil {
			return nil, fmt.Errorf("listing prepull tasks: %w", err)
		}
		pending := 0
		for _, t := range tl.Items {
			if _, ok := done[t.NodeID]; ok {
				continue
			}
			st := t.Status.State
			if numbered[st] <= numbered[swarm.TaskStatePreparing] {
				if _, ok := seen[t.ID]; !ok && st == swarm.TaskStatePreparing {
					seen[t.ID] = time.Now()
				}
				pending++
				continue
			}
			from, ok := seen[t.ID]
			if !ok {
				from = start
			}
			pt := PullTime{Node: nodeName(t.NodeID, nodes), Took: time.Since(from)}
			if st == swarm.TaskStateRejected || isPullError(t.Status.Err) {
				pt.Err = taskErr(&t)
				fmt.Fprintf(c.opts.Progress, "%s prepull: %s: %s\n", service, pt.Node, oneLine(pt.Err))
			} else {
				fmt.Fprintf(c.opts.Progress, "%s prepull: %s pulled in %s\n", service, pt.Node, pt.Took.Round(time.Millisecond))
			}
			done[t.NodeID] = pt
		}
		if len(tl.Items) > 0 && pending == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("prepull of %s: %w", image, ctx.Err())
		case <-tick.C:
		}
	}
	var out []PullTime
	var failed []string
	for _, pt := range done {
		out = append(out, pt)
		if pt.Err != "" {
			failed = append(failed, pt.Node+": "+pt.Err)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	if len(failed) > 0 {
		sort.Strings(failed)
		return out, fmt.Errorf("prepull of %s failed on %d node(s): %s", image, len(failed), strings.Join(failed, "; "))
	}
	return out, nil
}

func isPullError(e string) bool {
	e = strings.ToLower(e)
	return strings.Contains(e, "no such image") || strings.Contains(e, "pull access denied") ||
		strings.Contains(e, "manifest unknown") || strings.Contains(e, "unauthorized")
}
