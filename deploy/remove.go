package deploy

import (
	"context"
	"errors"
	"fmt"

	"github.com/moby/moby/client"
)

// Removed is one service Remove removed (or would remove).
type Removed struct {
	Name, ID string
}

// Remove removes the services with the exact names (or full IDs) given,
// like `docker service rm` without its ID-prefix matching. Every name is
// looked up first: when one names no service, nothing is removed and the
// error lists candidates. With dryRun it only reports what would go.
func (c *Client) Remove(ctx context.Context, names []string, dryRun bool) ([]Removed, error) {
	var (
		out  []Removed
		errs []error
		seen = map[string]bool{}
	)
	for _, n := range names {
		svc, err := c.lookupService(ctx, n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !seen[svc.ID] {
			seen[svc.ID] = true
			out = append(out, Removed{Name: svc.Spec.Name, ID: svc.ID})
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if dryRun {
		return out, nil
	}
	for i, r := range out {
		if _, err := c.api.ServiceRemove(ctx, r.ID, client.ServiceRemoveOptions{}); err != nil {
			return out[:i], fmt.Errorf("removing service %s: %w", r.Name, err)
		}
	}
	return out, nil
}
