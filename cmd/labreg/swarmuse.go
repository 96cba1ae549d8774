package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/labreg/labreg/config"
	"github.com/labreg/labreg/deploy"
	"github.com/labreg/labreg/registry"
)

// swarmInUse asks the engine which images swarm services use (current
// spec, previous spec, running tasks), as digest -> "used by service web
// (current spec, task abc)": what GC keeps and UI deletes confirm.
func swarmInUse(ctx context.Context, dc *deploy.Client) (map[digest.Digest]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second) // an engine that hangs is one that cannot be asked
	defer cancel()
	uses, err := dc.ImagesInUse(ctx)
	if err != nil {
		return nil, err
	}
	type key struct{ d, svc string }
	whys := map[key][]string{}
	tasks := map[key]int{}
	var order []key
	for _, u := range uses {
		if u.Digest == "" {
			continue
		}
		k := key{u.Digest, u.Service}
		if _, ok := whys[k]; !ok {
			order = append(order, k)
		}
		if strings.HasPrefix(u.Why, "task ") {
			tasks[k]++
			if _, ok := whys[k]; !ok {
				whys[k] = nil // k is seen even when only tasks use it
			}
			continue
		}
		whys[k] = append(whys[k], u.Why)
	}
	sort.SliceStable(order, func(i, j int) bool { return order[i].svc < order[j].svc })
	out := map[digest.Digest]string{}
	for _, k := range order {
		d, err := digest.Parse(k.d)
		if err != nil {
			continue
		}
		w := whys[k]
		switch n := tasks[k]; {
		case n == 1:
			w = append(w, "1 task")
		case n > 1:
			w = append(w, fmt.Sprintf("%d tasks", n))
		}
		part := fmt.Sprintf("service %s (%s)", k.svc, strings.Join(w, ", "))
		if prev, ok := out[d]; ok {
			out[d] = prev + ", " + part
		} else {
			out[d] = "used by " + part
		}
	}
	return out, nil
}

// offlineKeep fills opts.Keep for an offline GC the way the UI does for
// an online one (ui.UI.gcKeep): only --remove-untagged can remove a
// manifest a service uses; when the swarm cannot be asked, a dry run goes
// on and says so, a real run is refused unless ignore (--ignore-swarm).
func offlineKeep(ctx context.Context, c *config.Config, st streams, opts *registry.GCOptions, ignore bool) (string, error) {
	if !opts.RemoveUntagged {
		return "", nil
	}
	dc, err := deploy.New(deploy.Options{Registry: c.Registry.Advertise, Logger: newLogger(c, st.Err)})
	if err == nil {
		defer dc.Close()
		var keep map[digest.Digest]string
		if keep, err = swarmInUse(ctx, dc); err == nil {
			opts.Keep = keep
			return "", nil
		}
	}
	msg := fmt.Sprintf("could not check which images swarm services use (%v)", err)
	if opts.DryRun || ignore {
		return msg, nil
	}
	return "", fmt.Errorf("%s, so untagged manifests are not removed: a service pinned to one could not roll back or reschedule; start the engine, or pass --ignore-swarm", msg)
}
