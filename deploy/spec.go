package deploy

import (
	"fmt"
	"strings"
	"time"

	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/swarm"
)

// Spec describes one service to deploy. When the service exists, only the
// fields that are set (non-zero, non-nil) change; the rest of its spec is
// kept, like `docker service update`.
type Spec struct {
	// Name is the service name. Required.
	Name string
	// Image is the image reference; short names resolve against the
	// registry (Options.Registry). Required.
	Image string
	// Mode is "replicated" or "global". Default (new service): replicated.
	Mode string
	// Replicas is the replica count of a replicated service. Default 1.
	Replicas *uint64
	// Ports are the published ports. Default publish mode: ingress.
	Ports []swarm.PortConfig
	// EndpointMode is "vip" or "dnsrr". Default vip.
	EndpointMode string
	// Networks are attached by name; missing ones are created as overlays.
	Networks []Network
	// Constraints are placement constraints, e.g. "node.labels.zone==seoul".
	Constraints []string
	// Env is KEY=VALUE pairs.
	Env []string
	// Mounts are volume/bind/tmpfs mounts.
	Mounts []mount.Mount
	// Configs are swarm configs created from files.
	Configs []File
	// Secrets are swarm secrets created from files; their content never
	// leaves this package except to the engine.
	Secrets []File
	// Update is the rolling-update policy.
	Update UpdatePolicy
	// Rollback is the policy swarm uses when it rolls back (failure action
	// rollback, or `labreg rollback`). FailureAction rollback is invalid here.
	Rollback UpdatePolicy
	// Labels are service labels.
	Labels map[string]string
	// Stack names the compose file the service comes from (LoadFile sets
	// it, see StackName). The service and the networks, secrets and configs
	// Deploy creates for it carry the label StackLabel=Stack, by which Down
	// finds them. Default "": no label.
	Stack string
	// Prepull, when set (compose: x-labreg.prepull), makes labreg deploy
	// prepull this service's image with Prepull.Parallelism unless the
	// command line says otherwise. Default nil: the command line decides.
	Prepull *Prepull
}

// Prepull is a service's own prepull setting (compose: x-labreg.prepull).
type Prepull struct {
	// Parallelism is how many nodes pull at once; 0 = all at once.
	Parallelism int
}

// Network is a swarm overlay network a service attaches to.
type Network struct {
	// Name of the network. Required.
	Name string
	// Subnet (CIDR) used when the network is created. Default: the engine's pools.
	Subnet string
	// Attachable lets standalone containers join it (docker run --net).
	Attachable bool
}

// File is a config or secret created from a local file. The swarm object is
// named Name-<content hash> so a changed file rolls out as a new object.
type File struct {
	// Name is the logical name; the target defaults to /run/secrets/Name
	// (secrets) or /Name (configs).
	Name string
	// Path is the local file with the content. Required.
	Path string
	// Target is the path (config) or file name (secret) inside the task.
	Target string
}

// UpdatePolicy is the rolling-update policy, in docker's words. Zero
// fields keep the service's current value (for a new service, swarm's
// defaults: parallelism 1, delay 0, failure action pause, order stop-first,
// monitor 5s).
type UpdatePolicy struct {
	Parallelism   *uint64
	Delay         *time.Duration
	FailureAction string // rollback, pause or continue
	Order         string // start-first or stop-first
	Monitor       time.Duration
}

// Validate checks the spec and names what is wrong.
func (s Spec) Validate() error {
	var bad []string
	if s.Name == "" {
		bad = append(bad, "no service name")
	}
	if s.Image == "" {
		bad = append(bad, "no image")
	}
	switch s.Mode {
	case "", "replicated", "global":
	default:
		bad = append(bad, fmt.Sprintf("mode %q is not replicated or global", s.Mode))
	}
	if s.Mode == "global" && s.Replicas != nil {
		bad = append(bad, "replicas cannot be set for a global service")
	}
	switch s.EndpointMode {
	case "", "vip", "dnsrr":
	default:
		bad = append(bad, fmt.Sprintf("endpoint mode %q is not vip or dnsrr", s.EndpointMode))
	}
	switch s.Update.FailureAction {
	case "", "rollback", "pause", "continue":
	default:
		bad = append(bad, fmt.Sprintf("update failure action %q is not rollback, pause or continue", s.Update.FailureAction))
	}
	switch s.Rollback.FailureAction {
	case "", "pause", "continue":
	default:
		bad = append(bad, fmt.Sprintf("rollback failure action %q is not pause or continue", s.Rollback.FailureAction))
	}
	for _, o := range []struct{ what, order string }{{"update", s.Update.Order}, {"rollback", s.Rollback.Order}} {
		switch o.order {
		case "", "start-first", "stop-first":
		default:
			bad = append(bad, fmt.Sprintf("%s order %q is not start-first or stop-first", o.what, o.order))
		}
	}
	for _, f := range append(append([]File{}, s.Configs...), s.Secrets...) {
		if f.Name == "" || f.Path == "" {
			bad = append(bad, fmt.Sprintf("config/secret %q needs a name and a file", f.Name+"="+f.Path))
		}
	}
	for _, n := range s.Networks {
		if n.Name == "" {
			bad = append(bad, "network without a name")
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("service %q: %s", s.Name, strings.Join(bad, "; "))
	}
	return nil
}

// apply writes the set fields of s onto base (the current spec of an
// existing service, or a zero spec) with image as the pinned image and
// the resolved network/config/secret references.
func (s Spec) apply(base swarm.ServiceSpec, image string, nets []swarm.NetworkAttachmentConfig,
	configs []*swarm.ConfigReference, secrets []*swarm.SecretReference,
) swarm.ServiceSpec {
	sp := base
	sp.Name = s.Name
	if sp.TaskTemplate.ContainerSpec == nil {
		sp.TaskTemplate.ContainerSpec = &swarm.ContainerSpec{}
	}
	cs := *sp.TaskTemplate.ContainerSpec
	cs.Image = image
	if s.Env != nil {
		cs.Env = s.Env
	}
	if s.Mounts != nil {
		cs.Mounts = s.Mounts
	}
	if configs != nil {
		cs.Configs = configs
	}
	if secrets != nil {
		cs.Secrets = secrets
	}
	sp.TaskTemplate.ContainerSpec = &cs
	if s.Labels != nil || s.Stack != "" {
		labels := map[string]string{}
		for k, v := range sp.Labels { // base's map is the existing service's: not changed in place
			labels[k] = v
		}
		for k, v := range s.Labels {
			labels[k] = v
		}
		if s.Stack != "" {
			labels[StackLabel] = s.Stack
		}
		sp.Labels = labels
	}

	switch {
	case s.Mode == "global":
		sp.Mode = swarm.ServiceMode{Global: &swarm.GlobalService{}}
	case s.Mode == "replicated" || s.Replicas != nil || (sp.Mode.Replicated == nil && sp.Mode.Global == nil):
		n := uint64(1)
		if sp.Mode.Replicated != nil && sp.Mode.Replicated.Replicas != nil {
			n = *sp.Mode.Replicated.Replicas
		}
		if s.Replicas != nil {
			n = *s.Replicas
		}
		sp.Mode = swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &n}}
	}

	if s.Constraints != nil {
		pl := swarm.Placement{}
		if sp.TaskTemplate.Placement != nil {
			pl = *sp.TaskTemplate.Placement
		}
		pl.Constraints = s.Constraints
		sp.TaskTemplate.Placement = &pl
	}
	if nets != nil {
		sp.TaskTemplate.Networks = nets
	}

	if s.Ports != nil || s.EndpointMode != "" {
		ep := swarm.EndpointSpec{}
		if sp.EndpointSpec != nil {
			ep = *sp.EndpointSpec
		}
		if s.Ports != nil {
			ep.Ports = s.Ports
		}
		if s.EndpointMode != "" {
			ep.Mode = swarm.ResolutionMode(s.EndpointMode)
		}
		sp.EndpointSpec = &ep
	}

	sp.UpdateConfig = s.Update.apply(sp.UpdateConfig)
	sp.RollbackConfig = s.Rollback.apply(sp.RollbackConfig)
	return sp
}

// apply writes the set fields of u onto cur.
func (u UpdatePolicy) apply(cur *swarm.UpdateConfig) *swarm.UpdateConfig {
	if u != (UpdatePolicy{}) {
		uc := swarm.UpdateConfig{Parallelism: 1}
		if cur != nil {
			uc = *cur
		}
		if u.Parallelism != nil {
			uc.Parallelism = *u.Parallelism
		}
		if u.Delay != nil {
			uc.Delay = *u.Delay
		}
		if u.FailureAction != "" {
			uc.FailureAction = swarm.FailureAction(u.FailureAction)
		}
		if u.Order != "" {
			uc.Order = swarm.UpdateOrder(u.Order)
		}
		if u.Monitor != 0 {
			uc.Monitor = u.Monitor
		}
		return &uc
	}
	return cur
}
