package deploy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
)

// projectName prefixes compose's default object names; labreg strips it so
// that a network written "samsung" is the swarm network "samsung".
const projectName = "labreg"

// LoadFile reads a compose file and returns one Spec per service, in name
// order, each with Stack set to StackName(path). The subset labreg deploys:
// image, environment, ports (incl. mode host), volumes, networks (overlay;
// ipam subnet, attachable), configs and secrets from files, and deploy:
// mode, replicas, placement.constraints, update_config, rollback_config,
// endpoint_mode. Relative file paths are
// relative to the compose file; ${VAR} interpolates from the environment.
func LoadFile(ctx context.Context, path string) ([]Spec, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(abs)
	if err != nil {
		return nil, fmt.Errorf("reading compose file: %w", err)
	}
	env := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	p, err := loader.LoadWithContext(ctx, types.ConfigDetails{
		WorkingDir:  filepath.Dir(abs),
		ConfigFiles: []types.ConfigFile{{Filename: abs, Content: data}},
		Environment: env,
	}, func(o *loader.Options) {
		o.SetProjectName(projectName, true)
		o.ResolvePaths = true
	})
	if err != nil {
		return nil, fmt.Errorf("compose file %s: %w", path, err)
	}
	names := make([]string, 0, len(p.Services))
	for n := range p.Services {
		names = append(names, n)
	}
	sort.Strings(names)
	var specs []Spec
	for _, n := range names {
		s, err := serviceSpec(p, p.Services[n])
		if err != nil {
			return nil, fmt.Errorf("compose file %s: service %s: %w", path, n, err)
		}
		s.Stack = StackName(path)
		specs = append(specs, s)
	}
	if len(specs) == 0 {
		return nil, fmt.Errorf("compose file %s: no services", path)
	}
	return specs, nil
}

func objName(key, name string) string {
	if name == "" || name == projectName+"_"+key {
		return key
	}
	return name
}

func serviceSpec(p *types.Project, sc types.ServiceConfig) (Spec, error) {
	s := Spec{Name: sc.Name, Image: sc.Image}
	if s.Image == "" {
		return s, fmt.Errorf("no image")
	}
	// Always set (possibly empty) lists so a redeploy replaces them.
	s.Env = []string{}
	for k, v := range sc.Environment {
		if v == nil {
			if ev, ok := os.LookupEnv(k); ok {
				s.Env = append(s.Env, k+"="+ev)
			}
			continue
		}
		s.Env = append(s.Env, k+"="+*v)
	}
	sort.Strings(s.Env)
	s.Ports = []swarm.PortConfig{}
	for _, pc := range sc.Ports {
		port := swarm.PortConfig{TargetPort: pc.Target, PublishMode: swarm.PortConfigPublishModeIngress, Protocol: network.TCP}
		if pc.Published != "" {
			n, err := strconv.ParseUint(pc.Published, 10, 16)
			if err != nil {
				return s, fmt.Errorf("ports: published %q is not a port (ranges are not supported)", pc.Published)
			}
			port.PublishedPort = uint32(n)
		}
		if pc.Mode != "" {
			port.PublishMode = swarm.PortConfigPublishMode(pc.Mode)
		}
		if pc.Protocol != "" {
			port.Protocol = network.IPProtocol(pc.Protocol)
		}
		s.Ports = append(s.Ports, port)
	}
	s.Mounts = []mount.Mount{}
	for _, v := range sc.Volumes {
		m := mount.Mount{Type: mount.Type(v.Type), Source: v.Source, Target: v.Target, ReadOnly: v.ReadOnly}
		if v.Type == types.VolumeTypeVolume && v.Source != "" {
			if vc, ok := p.Volumes[v.Source]; ok {
				m.Source = objName(v.Source, vc.Name)
			}
		}
		s.Mounts = append(s.Mounts, m)
	}
	s.Networks = []Network{}
	netNames := make([]string, 0, len(sc.Networks))
	for n := range sc.Networks {
		netNames = append(netNames, n)
	}
	sort.Strings(netNames)
	for _, key := range netNames {
		nc, ok := p.Networks[key]
		if !ok {
			return s, fmt.Errorf("network %s is not defined (add it under networks)", key)
		}
		if key == "default" && len(nc.Ipam.Config) == 0 && !nc.Attachable && nc.Name == projectName+"_default" {
			continue // compose's implicit default network; swarm services need none
		}
		if nc.Driver != "" && nc.Driver != "overlay" {
			return s, fmt.Errorf("network %s: driver %q (labreg creates overlay networks)", key, nc.Driver)
		}
		n := Network{Name: objName(key, nc.Name), Attachable: nc.Attachable}
		if len(nc.Ipam.Config) > 0 {
			n.Subnet = nc.Ipam.Config[0].Subnet
		}
		s.Networks = append(s.Networks, n)
	}
	s.Secrets = []File{}
	for _, ref := range sc.Secrets {
		sec, ok := p.Secrets[ref.Source]
		if !ok || sec.File == "" {
			return s, fmt.Errorf("secret %s: define it under secrets: with file: (external and environment secrets are not supported)", ref.Source)
		}
		s.Secrets = append(s.Secrets, File{Name: objName(ref.Source, sec.Name), Path: sec.File, Target: ref.Target})
	}
	s.Configs = []File{}
	for _, ref := range sc.Configs {
		cfg, ok := p.Configs[ref.Source]
		if !ok || cfg.File == "" {
			return s, fmt.Errorf("config %s: define it under configs, with a file", ref.Source)
		}
		s.Configs = append(s.Configs, File{Name: objName(ref.Source, cfg.Name), Path: cfg.File, Target: ref.Target})
	}
	s.Constraints = []string{}
	if d := sc.Deploy; d != nil {
		s.Mode = d.Mode
		if s.Mode == "" {
			s.Mode = "replicated"
		}
		if d.Replicas != nil {
			n := uint64(*d.Replicas)
			s.Replicas = &n
		}
		s.Constraints = append(s.Constraints, d.Placement.Constraints...)
		s.EndpointMode = d.EndpointMode
		s.Update = composePolicy(d.UpdateConfig)
		s.Rollback = composePolicy(d.RollbackConfig)
		if len(d.Labels) > 0 {
			s.Labels = map[string]string(d.Labels)
		}
	}
	pp, err := composePrepull(sc.Extensions["x-labreg"])
	if err != nil {
		return s, err
	}
	s.Prepull = pp
	return s, s.Validate()
}

// composePrepull reads a service's x-labreg extension:
//
//	x-labreg:
//	  prepull: true              # or false, or:
//	  prepull: {parallelism: 20} # 0 = all nodes at once
//
// prepull: true pulls DefaultPrepullParallelism nodes at a time.
func composePrepull(x any) (*Prepull, error) {
	if x == nil {
		return nil, nil
	}
	m, ok := x.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("x-labreg: want a mapping")
	}
	for k := range m {
		if k != "prepull" {
			return nil, fmt.Errorf("x-labreg: unknown key %q (known: prepull)", k)
		}
	}
	switch v := m["prepull"].(type) {
	case nil:
		return nil, nil
	case bool:
		if !v {
			return nil, nil
		}
		return &Prepull{Parallelism: DefaultPrepullParallelism}, nil
	case map[string]any:
		p := &Prepull{Parallelism: DefaultPrepullParallelism}
		for k, val := range v {
			if k != "parallelism" {
				return nil, fmt.Errorf("x-labreg.prepull: unknown key %q (known: parallelism)", k)
			}
			n, ok := asInt(val)
			if !ok || n < 0 {
				return nil, fmt.Errorf("x-labreg.prepull.parallelism: %v is not a number of nodes (0 = all at once)", val)
			}
			p.Parallelism = n
		}
		return p, nil
	default:
		return nil, fmt.Errorf("x-labreg.prepull: want true, false or {parallelism: N}, not %v", v)
	}
}

func asInt(v any) (int, bool) {
	switch n := v.(type) {
	case int:
		return n, true
	case int64:
		return int(n), true
	case uint64:
		return int(n), true
	case float64:
		if n == float64(int(n)) {
			return int(n), true
		}
	}
	return 0, false
}

func composePolicy(u *types.UpdateConfig) UpdatePolicy {
	var p UpdatePolicy
	if u == nil {
		return p
	}
	p.Parallelism = u.Parallelism
	d := time.Duration(u.Delay)
	p.Delay = &d
	p.FailureAction, p.Order, p.Monitor = u.FailureAction, u.Order, time.Duration(u.Monitor)
	return p
}
