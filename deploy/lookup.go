package deploy

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// ServiceNotFoundError is a service name (or ID) that names no service.
// Services are addressed by exact name or full ID, never by an ID prefix
// (the engine's own lookup falls back to one, so `g` would find a service
// whose ID starts with g).
type ServiceNotFoundError struct {
	// Name is what was asked for.
	Name string
	// Candidates are services whose name or ID starts with Name, or whose
	// name contains it ("name (ID 1a2b3c4d5e6f)").
	Candidates []string
}

func (e *ServiceNotFoundError) Error() string {
	msg := fmt.Sprintf("no service named %q", e.Name)
	if len(e.Candidates) > 0 {
		msg += "; services with a similar name or ID: " + strings.Join(e.Candidates, ", ")
	}
	return msg
}

// ErrAmbiguousService is returned when a name is one service's name and
// another's full ID.
var ErrAmbiguousService = errors.New("ambiguous service")

// isFullID reports whether s has the form of a swarm object ID (25
// lower-case base-36 characters).
func isFullID(s string) bool {
	if len(s) != 25 {
		return false
	}
	for _, r := range s {
		if (r < '0' || r > '9') && (r < 'a' || r > 'z') {
			return false
		}
	}
	return true
}

// lookupService finds the service named ref exactly, or with the full ID
// ref; any other ref is a *ServiceNotFoundError listing candidates.
func (c *Client) lookupService(ctx context.Context, ref string) (swarm.Service, error) {
	l, err := c.api.ServiceList(ctx, client.ServiceListOptions{})
	if err != nil {
		return swarm.Service{}, fmt.Errorf("listing services: %w", err)
	}
	return pickService(l.Items, ref)
}

// pickService is lookupService over the listed services.
func pickService(svcs []swarm.Service, ref string) (swarm.Service, error) {
	var byName, byID []swarm.Service
	for _, s := range svcs {
		if s.Spec.Name == ref {
			byName = append(byName, s)
		}
		if ref != "" && s.ID == ref && isFullID(ref) {
			byID = append(byID, s)
		}
	}
	switch {
	case len(byName) == 1 && len(byID) == 1 && byName[0].ID != byID[0].ID:
		return swarm.Service{}, fmt.Errorf("%w: %q is the name of service %s (ID %s) and the ID of service %s",
			ErrAmbiguousService, ref, byName[0].Spec.Name, shortID(byName[0].ID), byID[0].Spec.Name)
	case len(byName) == 1:
		return byName[0], nil
	case len(byName) > 1:
		var c []string
		for _, s := range byName {
			c = append(c, fmt.Sprintf("%s (ID %s)", s.Spec.Name, shortID(s.ID)))
		}
		return swarm.Service{}, fmt.Errorf("%w: %d services are named %q: %s", ErrAmbiguousService, len(byName), ref, strings.Join(c, ", "))
	case len(byID) == 1:
		return byID[0], nil
	}
	e := &ServiceNotFoundError{Name: ref}
	for _, s := range svcs {
		if ref != "" && (strings.HasPrefix(s.Spec.Name, ref) || strings.HasPrefix(s.ID, ref) || strings.Contains(s.Spec.Name, ref)) {
			e.Candidates = append(e.Candidates, fmt.Sprintf("%s (ID %s)", s.Spec.Name, shortID(s.ID)))
		}
	}
	sort.Strings(e.Candidates)
	return swarm.Service{}, e
}
