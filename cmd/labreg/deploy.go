package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/docker/cli/opts"
	"github.com/docker/cli/opts/swarmopts"
	"github.com/moby/moby/api/types/swarm"
	"github.com/spf13/cobra"

	"github.com/labreg/labreg/config"
	"github.com/labreg/labreg/deploy"
)

// deployFlags are the flags of `labreg deploy`, in docker's words.
type deployFlags struct {
	file, image, mode, endpointMode, progress string
	layout                                    string
	replicas                                  uint64
	publish, networks, constraints, env       []string
	mounts, configs, secrets                  []string
	subnet                                    string
	attachable                                bool
	update, rollback                          policyFlags
	withRegistryAuth, prepull, detach         bool
	prepullParallelism                        int
	timeout                                   time.Duration
}

type policyFlags struct {
	parallelism          uint64
	delay, monitor       time.Duration
	failureAction, order string
}

func (p policyFlags) policy(cmd *cobra.Command, prefix string) deploy.UpdatePolicy {
	var u deploy.UpdatePolicy
	if cmd.Flags().Changed(prefix + "-parallelism") {
		v := p.parallelism
		u.Parallelism = &v
	}
	if cmd.Flags().Changed(prefix + "-delay") {
		v := p.delay
		u.Delay = &v
	}
	u.Monitor, u.FailureAction, u.Order = p.monitor, p.failureAction, p.order
	return u
}

func (p *policyFlags) register(cmd *cobra.Command, prefix, what string) {
	f := cmd.Flags()
	f.Uint64Var(&p.parallelism, prefix+"-parallelism", 1, "maximum number of tasks "+what+" simultaneously (0 to "+what+" all at once)")
	f.DurationVar(&p.delay, prefix+"-delay", 0, "delay between "+what+"s (ns|us|ms|s|m|h)")
	f.DurationVar(&p.monitor, prefix+"-monitor", 0, "duration after each task "+what+" to monitor for failure (default 5s)")
	actions := "pause|continue|rollback"
	if prefix == "rollback" {
		actions = "pause|continue"
	}
	f.StringVar(&p.failureAction, prefix+"-failure-action", "", "action on "+what+" failure: "+actions+" (default pause)")
	f.StringVar(&p.order, prefix+"-order", "", what+" order: start-first|stop-first (default stop-first)")
}

func newDeployCmd(io streams) *cobra.Command {
	var fl deployFlags
	cmd := &cobra.Command{
		Use:   "deploy [SERVICE] --image REF | deploy -f FILE",
		Short: "Create or update a swarm service from the registry and watch it converge",
		Long: `Create or update a swarm service and wait until every task runs the requested image digest.

A short image name (myhttpd:green) resolves against registry.advertise, the address every node
pulls from. The digest is pinned, the docker CLI's registry credentials for that registry are
forwarded to the swarm (--with-registry-auth, on by default), and the rollout is watched per slot
(replicated) or per node (global). A paused or rolled-back update exits with status 3 and names
the failing task's error.

With -f, services, networks, configs and secrets come from a compose file (a subset: image,
deploy.mode/replicas/placement.constraints/update_config/rollback_config/endpoint_mode, ports,
networks with ipam subnet and attachable, configs and secrets from files, environment).`,
		Example: `  labreg deploy myhttpd --image myhttpd:blue --replicas 3 --publish 80:80
  labreg deploy myhttpd --image myhttpd:green --update-failure-action rollback
  labreg deploy -f deploy/examples/samsung.yaml`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// --config is docker's swarm config here; labreg's config file
			// goes before the command, as docker's global flags do.
			for _, v := range fl.configs {
				if !strings.Contains(v, "=") {
					return usageError{fmt.Errorf("--config %q: deploy's --config is a swarm config (src=FILE,target=PATH); give labreg's config file before the command (labreg --config %s deploy)", v, v)}
				}
			}
			c, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			var specs []deploy.Spec
			if fl.file != "" {
				if len(args) > 0 || fl.image != "" {
					return usageError{errors.New("-f FILE takes no SERVICE or --image")}
				}
				specs, err = deploy.LoadFile(cmd.Context(), fl.file)
				if err != nil {
					return usageError{err}
				}
			} else {
				if len(args) != 1 || fl.image == "" {
					return usageError{errors.New("deploy needs SERVICE and --image REF (or -f FILE)")}
				}
				s, err := fl.spec(cmd, args[0])
				if err != nil {
					return usageError{err}
				}
				specs = []deploy.Spec{s}
			}
			for _, s := range specs {
				if err := s.Validate(); err != nil {
					return usageError{err}
				}
			}
			if fl.prepullParallelism < 0 {
				return usageError{fmt.Errorf("--prepull-parallelism %d: want 0 (every node at once) or a number of nodes", fl.prepullParallelism)}
			}
			dc, err := newDeployClient(c, io, fl.progress)
			if err != nil {
				return err
			}
			defer dc.Close()
			o := deploy.DeployOptions{NoRegistryAuth: !fl.withRegistryAuth, Prepull: fl.prepull, Detach: fl.detach, Timeout: fl.timeout, Layout: fl.layout,
				PrepullParallelism: fl.prepullParallelism}
			for _, s := range specs {
				o := o
				if s.Prepull != nil {
					// x-labreg.prepull in the compose file; the flag wins
					o.Prepull = true
					if !cmd.Flags().Changed("prepull-parallelism") {
						o.PrepullParallelism = s.Prepull.Parallelism
					}
				}
				r, err := dc.Deploy(cmd.Context(), s, o)
				if err != nil {
					return rolloutErr(err)
				}
				printResult(io.Out, r, fl.detach)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&fl.file, "file", "f", "", "compose file with services, networks, configs and secrets")
	f.StringVar(&fl.image, "image", "", "image reference (short names resolve against registry.advertise)")
	f.StringVar(&fl.mode, "mode", "", "service mode: replicated|global (default replicated)")
	f.Uint64Var(&fl.replicas, "replicas", 1, "number of tasks")
	f.StringArrayVarP(&fl.publish, "publish", "p", nil, "publish a port: [mode=host,]published:target or docker's long syntax")
	f.StringArrayVar(&fl.networks, "network", nil, "attach to this overlay network (created when missing)")
	f.StringVar(&fl.subnet, "subnet", "", "subnet (CIDR) for networks created by --network")
	f.BoolVar(&fl.attachable, "attachable", false, "make networks created by --network attachable")
	f.StringArrayVar(&fl.constraints, "constraint", nil, "placement constraint, e.g. node.labels.zone==seoul")
	f.StringVar(&fl.endpointMode, "endpoint-mode", "", "endpoint mode: vip|dnsrr (default vip)")
	f.StringArrayVarP(&fl.env, "env", "e", nil, "set an environment variable KEY=VALUE")
	f.StringArrayVar(&fl.mounts, "mount", nil, "attach a filesystem mount (docker's --mount syntax)")
	f.StringArrayVar(&fl.configs, "config", nil, "swarm config from a file: src=FILE,target=PATH (labreg's own config file: labreg --config FILE deploy)")
	f.StringArrayVar(&fl.secrets, "secret", nil, "secret from a file: NAME=FILE (in the task at /run/secrets/NAME)")
	fl.update.register(cmd, "update", "update")
	fl.rollback.register(cmd, "rollback", "rollback")
	f.BoolVar(&fl.withRegistryAuth, "with-registry-auth", true, "forward the docker CLI's registry credentials to the swarm")
	f.StringVar(&fl.layout, "layout", deploy.DefaultLayout, "OCI layout directory (labreg build --no-push --layout) to push the image from when the registry lacks it")
	f.BoolVar(&fl.prepull, "prepull", false, "make every eligible node pull the image before the rolling update")
	f.IntVar(&fl.prepullParallelism, "prepull-parallelism", deploy.DefaultPrepullParallelism, "with --prepull: at most this many nodes pull at once, paced by swarm (0 = all at once; more than the nodes = all at once)")
	f.BoolVarP(&fl.detach, "detach", "d", false, "do not wait for the rollout to converge")
	f.DurationVar(&fl.timeout, "timeout", 10*time.Minute, "give up on the prepull and the rollout after this long")
	addProgressFlag(cmd, &fl.progress, "rollout progress")
	bindConfig(cmd, "registry.advertise", "client.registry", "log.")
	return cmd
}

func newRollbackCmd(io streams) *cobra.Command {
	var (
		withAuth, detach bool
		timeout          time.Duration
		progress         string
	)
	cmd := &cobra.Command{
		Use:   "rollback SERVICE",
		Short: "Return a service to its previous spec and watch it converge",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			dc, err := newDeployClient(c, io, progress)
			if err != nil {
				return err
			}
			defer dc.Close()
			r, err := dc.Rollback(cmd.Context(), args[0], deploy.DeployOptions{NoRegistryAuth: !withAuth, Detach: detach, Timeout: timeout})
			if err != nil {
				return rolloutErr(err)
			}
			printResult(io.Out, r, detach)
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&withAuth, "with-registry-auth", true, "forward the docker CLI's registry credentials to the swarm")
	f.BoolVarP(&detach, "detach", "d", false, "do not wait for the rollback to converge")
	f.DurationVar(&timeout, "timeout", 10*time.Minute, "give up watching the rollback after this long")
	addProgressFlag(cmd, &progress, "rollback progress")
	// No client.registry: the previous spec names its image in full.
	bindConfig(cmd, "registry.advertise", "log.")
	return cmd
}

func newDeployClient(c *config.Config, st streams, progress string) (*deploy.Client, error) {
	w, err := progressWriter(progress, st.Err)
	if err != nil {
		return nil, err
	}
	var on func(deploy.Progress)
	if w != nil {
		on = printProgress(w)
	}
	return deploy.New(deploy.Options{Registry: c.Registry.Advertise, OnProgress: on, Logger: newLogger(c, st.Err)})
}

// quietDeployClient loads cmd's configuration and opens a deploy client
// that reports no progress, for the commands that only read or change
// swarm state (doctor, node, status). The caller closes the client.
func quietDeployClient(cmd *cobra.Command, st streams) (*config.Config, *deploy.Client, error) {
	c, err := loadConfig(cmd)
	if err != nil {
		return nil, nil, err
	}
	dc, err := newDeployClient(c, st, progressQuiet)
	if err != nil {
		return nil, nil, err
	}
	return c, dc, nil
}

func rolloutErr(err error) error {
	var re *deploy.RolloutError
	if errors.As(err, &re) {
		return codedError{code: exitRollout, err: err}
	}
	return err
}

func printResult(w io.Writer, r deploy.Result, detached bool) {
	if detached {
		fmt.Fprintf(w, "%s\t%s\trequested\n", r.Service, r.Image)
		return
	}
	fmt.Fprintf(w, "%s\t%s\t%d tasks running\n", r.Service, r.Image, r.Tasks)
}

// spec turns the flags into a deploy.Spec; only flags the user set change
// an existing service.
func (fl *deployFlags) spec(cmd *cobra.Command, name string) (deploy.Spec, error) {
	ch := cmd.Flags().Changed
	s := deploy.Spec{Name: name, Image: fl.image, Mode: fl.mode, EndpointMode: fl.endpointMode,
		Update: fl.update.policy(cmd, "update"), Rollback: fl.rollback.policy(cmd, "rollback")}
	if ch("replicas") {
		v := fl.replicas
		s.Replicas = &v
	}
	if ch("publish") {
		ports, err := parsePorts(fl.publish)
		if err != nil {
			return s, err
		}
		s.Ports = ports
	}
	if ch("network") {
		for _, n := range fl.networks {
			s.Networks = append(s.Networks, deploy.Network{Name: n, Subnet: fl.subnet, Attachable: fl.attachable})
		}
	} else if ch("subnet") || ch("attachable") {
		return s, errors.New("--subnet and --attachable need --network")
	}
	if ch("constraint") {
		s.Constraints = fl.constraints
	}
	if ch("env") {
		s.Env = fl.env
	}
	if ch("mount") {
		var mo opts.MountOpt
		for _, m := range fl.mounts {
			if err := mo.Set(m); err != nil {
				return s, fmt.Errorf("--mount %q: %w", m, err)
			}
		}
		s.Mounts = mo.Value()
	}
	for _, v := range fl.configs {
		f, err := parseFileRef(v, "src", "source")
		if err != nil {
			return s, fmt.Errorf("--config %q: %w", v, err)
		}
		s.Configs = append(s.Configs, f)
	}
	for _, v := range fl.secrets {
		n, file, ok := strings.Cut(v, "=")
		if !ok || n == "" || file == "" || strings.Contains(n, ",") {
			return s, fmt.Errorf("--secret %q: want NAME=FILE", v)
		}
		s.Secrets = append(s.Secrets, deploy.File{Name: n, Path: file})
	}
	return s, nil
}

// parseFileRef parses "src=FILE,target=PATH" (also source=).
func parseFileRef(v string, keys ...string) (deploy.File, error) {
	var f deploy.File
	for _, part := range strings.Split(v, ",") {
		k, val, ok := strings.Cut(part, "=")
		if !ok {
			return f, fmt.Errorf("%q is not key=value", part)
		}
		switch {
		case k == keys[0] || k == keys[1]:
			f.Path = val
		case k == "target":
			f.Target = val
		default:
			return f, fmt.Errorf("unknown key %q (want src and target)", k)
		}
	}
	if f.Path == "" {
		return f, errors.New("no src=FILE")
	}
	f.Name = filepath.Base(f.Path)
	return f, nil
}

// parsePorts accepts docker's --publish forms plus "mode=host,P:T".
func parsePorts(vals []string) ([]swarm.PortConfig, error) {
	var po swarmopts.PortOpt
	for _, v := range vals {
		norm := v
		var kv, short []string
		for _, part := range strings.Split(v, ",") {
			if strings.Contains(part, "=") {
				kv = append(kv, part)
			} else {
				short = append(short, part)
			}
		}
		if len(kv) > 0 && len(short) == 1 {
			pub, tgt, ok := strings.Cut(short[0], ":")
			if !ok {
				return nil, fmt.Errorf("--publish %q: want [mode=host,]PUBLISHED:TARGET", v)
			}
			proto := ""
			if t, p, ok := strings.Cut(tgt, "/"); ok {
				tgt, proto = t, ",protocol="+p
			}
			norm = strings.Join(kv, ",") + ",published=" + pub + ",target=" + tgt + proto
		}
		if err := po.Set(norm); err != nil {
			return nil, fmt.Errorf("--publish %q: %w", v, err)
		}
	}
	return po.Value(), nil
}
