package deploy

import (
	"fmt"
	"strings"

	"github.com/moby/moby/api/types/swarm"
)

// eligibleNodes returns the IDs of the nodes a task with these placement
// constraints may run on now: ready, active, and matching every
// constraint (swarm's syntax: key==value or key!=value, values compared
// case-insensitively). The keys understood are node.id, node.hostname,
// node.role, node.platform.os, node.platform.arch, node.labels.KEY and
// engine.labels.KEY; any other key is an error naming it, because a paced
// prepull that counted the nodes wrong would wait for a task swarm never
// places.
func eligibleNodes(nodes []swarm.Node, constraints []string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, n := range nodes {
		if n.Status.State != swarm.NodeStateReady || n.Spec.Availability != swarm.NodeAvailabilityActive {
			continue
		}
		ok := true
		for _, c := range constraints {
			m, err := matchConstraint(n, c)
			if err != nil {
				return nil, err
			}
			ok = ok && m
		}
		if ok {
			out[n.ID] = true
		}
	}
	return out, nil
}

func matchConstraint(n swarm.Node, c string) (bool, error) {
	op, eq := "==", true
	i := strings.Index(c, "==")
	if j := strings.Index(c, "!="); j >= 0 && (i < 0 || j < i) {
		i, op, eq = j, "!=", false
	}
	if i < 0 {
		return false, fmt.Errorf("constraint %q: want KEY==VALUE or KEY!=VALUE", c)
	}
	key, want := strings.TrimSpace(c[:i]), strings.TrimSpace(c[i+len(op):])
	var have string
	var present bool
	lk := strings.ToLower(key)
	switch {
	case lk == "node.id":
		have, present = n.ID, true
	case lk == "node.hostname":
		have, present = n.Description.Hostname, true
	case lk == "node.role":
		have, present = string(n.Spec.Role), true
	case lk == "node.platform.os":
		have, present = n.Description.Platform.OS, true
	case lk == "node.platform.arch":
		have, present = n.Description.Platform.Architecture, true
	case strings.HasPrefix(lk, "node.labels."):
		have, present = n.Spec.Labels[key[len("node.labels."):]]
	case strings.HasPrefix(lk, "engine.labels."):
		have, present = n.Description.Engine.Labels[key[len("engine.labels."):]]
	default:
		return false, fmt.Errorf("constraint %q: labreg cannot count the nodes key %s selects (a paced prepull needs to; --prepull-parallelism 0 pulls everywhere at once)", c, key)
	}
	match := present && strings.EqualFold(have, want)
	if eq {
		return match, nil
	}
	return !match, nil
}
