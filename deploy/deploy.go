package deploy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// DeployOptions tunes one Deploy or Rollback. The zero value forwards
// registry credentials and waits up to 10 minutes.
type DeployOptions struct {
	// NoRegistryAuth stops forwarding the docker CLI's credentials for the
	// image's registry to the swarm (--with-registry-auth=false). Nodes then
	// pull anonymously. Default: forward when credentials exist.
	NoRegistryAuth bool
	// Prepull makes every eligible node pull the image before the rolling
	// update starts (see Prepull). Default false.
	Prepull bool
	// PrepullParallelism is how many nodes pull at once during the
	// prepull (see Prepull): 0 means all at once, as does a number at
	// least the count of eligible nodes; negative is an error. Default 0;
	// labreg's CLI defaults to DefaultPrepullParallelism.
	PrepullParallelism int
	// Detach returns after the request without watching the rollout.
	Detach bool
	// Timeout bounds the prepull (when Prepull is set) and the rollout
	// watch together: a deploy that has not converged Timeout after the
	// prepull started (or the update was sent) is a *RolloutError with
	// State "timeout". Default 10m.
	Timeout time.Duration
	// Layout is the OCI layout directory (`labreg build --no-push
	// --layout DIR`) an image missing from the registry is pushed from
	// when the local engine does not have it either. Default
	// DefaultLayout ("oci-layout", build's default); a directory that
	// does not exist is skipped.
	Layout string
}

// DefaultPrepullParallelism is labreg deploy's --prepull-parallelism:
// at most 50 nodes pull from the registry at once.
const DefaultPrepullParallelism = 50

func (o DeployOptions) timeout() time.Duration {
	if o.Timeout <= 0 {
		return 10 * time.Minute
	}
	return o.Timeout
}

// Deploy creates the service s describes, or updates it when it exists,
// with its image resolved against the registry and pinned to the digest the
// registry serves now. It returns when every task of the new spec runs that
// digest, or a *RolloutError when swarm pauses or rolls the update back.
func (c *Client) Deploy(ctx context.Context, s Spec, opts DeployOptions) (Result, error) {
	res := Result{Service: s.Name}
	if err := s.Validate(); err != nil {
		return res, err
	}
	image, err := ResolveImage(s.Image, c.opts.Registry)
	if err != nil {
		return res, err
	}
	host := imageHost(image)
	auth := ""
	if !opts.NoRegistryAuth {
		cr, err := c.lookupCredentials(host)
		if err != nil {
			return res, err
		}
		c.opts.Logger.Debug("registry auth", "forward", cr.has(), "registry", host)
		if auth, err = cr.encoded(); err != nil {
			return res, err
		}
	}
	pinned, err := c.pinDigest(ctx, image, auth)
	if err != nil && (cerrdefs.IsNotFound(err) || strings.Contains(err.Error(), "manifest unknown")) {
		// Not in the registry: push it when this engine has it (e.g. a
		// `docker build -t myhttpd:green` that was never pushed), else
		// from the OCI layout of a `labreg build --no-push`.
		pushed, perr := c.pushLocal(ctx, s.Image, image, auth)
		if perr == nil && !pushed {
			pushed, perr = c.pushLayout(ctx, opts.Layout, image)
		}
		if perr != nil {
			return res, perr
		}
		if pushed {
			pinned, err = c.pinDigest(ctx, image, auth)
		}
	}
	if err != nil {
		return res, err
	}
	res.Image = pinned
	c.opts.OnProgress(Progress{Service: s.Name, Stage: StageImage, Image: pinned})

	nets, err := c.ensureNetworks(ctx, s.Networks, s.Stack)
	if err != nil {
		return res, err
	}
	secrets, err := c.ensureSecrets(ctx, s.Secrets, s.Stack)
	if err != nil {
		return res, err
	}
	configs, err := c.ensureConfigs(ctx, s.Configs, s.Stack)
	if err != nil {
		return res, err
	}

	// By exact name only: the engine's lookup would also take an ID
	// prefix, and update whatever service's ID starts with s.Name.
	cur, err := c.lookupService(ctx, s.Name)
	var nf *ServiceNotFoundError
	exists := err == nil
	switch {
	case err != nil && !errors.As(err, &nf):
		return res, err
	case exists && cur.Spec.Name != s.Name:
		return res, fmt.Errorf("%q is the ID of service %s: deploy takes the service's name", s.Name, cur.Spec.Name)
	}
	// One deadline for the prepull and the rollout watch.
	deadline := time.Now().Add(opts.timeout())
	if opts.Prepull {
		base := swarm.ServiceSpec{}
		if exists {
			base = cur.Spec
		}
		sp := s.apply(base, pinned, nets, configs, secrets)
		pctx, cancel := context.WithDeadline(ctx, deadline)
		_, err := c.Prepull(pctx, s.Name, pinned, sp.TaskTemplate.Placement, auth, opts.PrepullParallelism)
		cancel()
		if err != nil {
			return res, err
		}
	}
	ws := watchSpec{name: s.Name, goal: goal{want: pinned}, timeout: opts.timeout(), deadline: deadline, noAuth: opts.NoRegistryAuth || auth == ""}
	if !exists {
		sp := s.apply(swarm.ServiceSpec{}, pinned, nets, configs, secrets)
		r, err := c.api.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: sp, EncodedRegistryAuth: auth})
		if err != nil {
			return res, fmt.Errorf("creating service %s: %w", s.Name, err)
		}
		res.ID, res.Created, res.Warnings = r.ID, true, r.Warnings
		ws.created = true
	} else {
		svc := cur
		sp := s.apply(svc.Spec, pinned, nets, configs, secrets)
		r, err := c.api.ServiceUpdate(ctx, svc.ID, client.ServiceUpdateOptions{
			Version: svc.Version, Spec: sp, EncodedRegistryAuth: auth,
		})
		if err != nil {
			return res, fmt.Errorf("updating service %s: %w", s.Name, err)
		}
		res.ID, res.Warnings = svc.ID, r.Warnings
		ws.before = svc.UpdateStatus
	}
	for _, w := range res.Warnings {
		c.opts.OnProgress(Progress{Service: s.Name, Stage: StageWarning, Message: w})
	}
	if opts.Detach {
		return res, nil
	}
	ws.id = res.ID
	wr, err := c.watch(ctx, ws)
	wr.Created, wr.Warnings = res.Created, res.Warnings
	return wr, err
}

// pushLocal pushes typed (as the user wrote it) or full from this engine's
// image store to full in the registry, when the engine has it. It reports
// whether it pushed.
func (c *Client) pushLocal(ctx context.Context, typed, full, auth string) (bool, error) {
	src := ""
	for _, cand := range []string{full, typed} {
		if _, err := c.api.ImageInspect(ctx, cand); err == nil {
			src = cand
			break
		}
	}
	if src == "" {
		return false, nil
	}
	if src != full {
		if _, err := c.api.ImageTag(ctx, client.ImageTagOptions{Source: src, Target: full}); err != nil {
			return false, fmt.Errorf("tagging local image %s as %s: %w", src, full, err)
		}
	}
	c.opts.OnProgress(Progress{Stage: StagePush, Image: full, Message: fmt.Sprintf("%s is not in the registry: pushing it from the local engine (%s)", full, src)})
	if auth == "" {
		auth = "e30=" // base64url("{}"): the engine wants the header
	}
	resp, err := c.api.ImagePush(ctx, full, client.ImagePushOptions{RegistryAuth: auth})
	if err != nil {
		return false, fmt.Errorf("pushing local image %s: %w", full, err)
	}
	defer resp.Close()
	if err := resp.Wait(ctx); err != nil {
		return false, fmt.Errorf("pushing local image %s: %w", full, err)
	}
	return true, nil
}

// Rollback returns service (its exact name or full ID) to its previous spec (`docker service rollback`)
// with the registry credentials forwarded again, and watches it like
// Deploy: rollback_paused is a *RolloutError.
func (c *Client) Rollback(ctx context.Context, service string, opts DeployOptions) (Result, error) {
	res := Result{Service: service}
	svc, err := c.lookupService(ctx, service)
	if err != nil {
		return res, err
	}
	if svc.PreviousSpec == nil {
		return res, fmt.Errorf("service %s has no previous spec to roll back to", service)
	}
	auth := ""
	if !opts.NoRegistryAuth && svc.PreviousSpec.TaskTemplate.ContainerSpec != nil {
		host := imageHost(svc.PreviousSpec.TaskTemplate.ContainerSpec.Image)
		cr, err := c.lookupCredentials(host)
		if err != nil {
			return res, err
		}
		if auth, err = cr.encoded(); err != nil {
			return res, err
		}
	}
	r, err := c.api.ServiceUpdate(ctx, svc.ID, client.ServiceUpdateOptions{
		Version: svc.Version, Spec: svc.Spec, EncodedRegistryAuth: auth, Rollback: "previous",
	})
	if err != nil {
		return res, fmt.Errorf("rolling back service %s: %w", service, err)
	}
	if svc.PreviousSpec.TaskTemplate.ContainerSpec != nil {
		c.opts.OnProgress(Progress{Service: svc.Spec.Name, Stage: StageRollback, Rollback: true, Image: svc.PreviousSpec.TaskTemplate.ContainerSpec.Image})
	}
	for _, w := range r.Warnings {
		c.opts.OnProgress(Progress{Service: svc.Spec.Name, Stage: StageWarning, Message: w})
	}
	if opts.Detach {
		return Result{Service: svc.Spec.Name, ID: svc.ID}, nil
	}
	wr, err := c.watch(ctx, watchSpec{
		id: svc.ID, name: svc.Spec.Name, goal: goal{rollback: true, before: svc.UpdateStatus}, timeout: opts.timeout(),
	})
	wr.Warnings = r.Warnings
	return wr, err
}

// ensureNetworks creates missing overlay networks, labelled with stack (see
// createdLabels), and checks the subnet of existing ones.
func (c *Client) ensureNetworks(ctx context.Context, nets []Network, stack string) ([]swarm.NetworkAttachmentConfig, error) {
	if nets == nil {
		return nil, nil
	}
	out := []swarm.NetworkAttachmentConfig{}
	for _, n := range nets {
		ins, err := c.api.NetworkInspect(ctx, n.Name, client.NetworkInspectOptions{})
		switch {
		case err == nil:
			if n.Subnet != "" && !hasSubnet(ins.Network.IPAM, n.Subnet) {
				return nil, fmt.Errorf("network %s exists without subnet %s (has %v); remove it or drop --subnet", n.Name, n.Subnet, subnets(ins.Network.IPAM))
			}
			out = append(out, swarm.NetworkAttachmentConfig{Target: ins.Network.ID})
		case cerrdefs.IsNotFound(err):
			o := client.NetworkCreateOptions{Driver: "overlay", Scope: "swarm", Attachable: n.Attachable,
				Labels: createdLabels(stack, nil)}
			if n.Subnet != "" {
				p, err := netip.ParsePrefix(n.Subnet)
				if err != nil {
					return nil, fmt.Errorf("network %s: subnet %q is not a CIDR: %w", n.Name, n.Subnet, err)
				}
				// swarm accepts an overlapping overlay but never schedules
				// its tasks (they stay "new"): refuse it here.
				if other, err := c.subnetUser(ctx, p); err != nil {
					return nil, err
				} else if other != "" {
					return nil, fmt.Errorf("network %s: subnet %s overlaps network %s", n.Name, n.Subnet, other)
				}
				o.IPAM = &network.IPAM{Driver: "default", Config: []network.IPAMConfig{{Subnet: p}}}
			}
			r, err := c.api.NetworkCreate(ctx, n.Name, o)
			if err != nil {
				return nil, fmt.Errorf("creating overlay network %s: %w", n.Name, err)
			}
			c.opts.OnProgress(Progress{Stage: StageCreated, Message: fmt.Sprintf("network %s: created (overlay %s)", n.Name, n.Subnet)})
			out = append(out, swarm.NetworkAttachmentConfig{Target: r.ID})
		default:
			return nil, fmt.Errorf("inspecting network %s: %w", n.Name, err)
		}
	}
	return out, nil
}

// subnetUser names a swarm network whose subnet overlaps p, or "".
func (c *Client) subnetUser(ctx context.Context, p netip.Prefix) (string, error) {
	l, err := c.api.NetworkList(ctx, client.NetworkListOptions{Filters: make(client.Filters).Add("scope", "swarm")})
	if err != nil {
		return "", fmt.Errorf("listing networks: %w", err)
	}
	for _, n := range l.Items {
		for _, cfg := range n.IPAM.Config {
			if cfg.Subnet.IsValid() && cfg.Subnet.Overlaps(p) {
				return n.Name, nil
			}
		}
	}
	return "", nil
}

func subnets(ipam network.IPAM) []string {
	var s []string
	for _, c := range ipam.Config {
		s = append(s, c.Subnet.String())
	}
	return s
}

func hasSubnet(ipam network.IPAM, want string) bool {
	for _, s := range subnets(ipam) {
		if s == want {
			return true
		}
	}
	return false
}

// objectName is name-<first 12 hex of the content's sha256>, so a changed
// file becomes a new swarm object and rolls out with the service.
func objectName(f File) (string, []byte, error) {
	data, err := os.ReadFile(f.Path)
	if err != nil {
		return "", nil, fmt.Errorf("reading %s for %s: %w", f.Path, f.Name, err)
	}
	sum := sha256.Sum256(data)
	return f.Name + "-" + hex.EncodeToString(sum[:])[:12], data, nil
}

// ensureSecrets creates the secrets (content-named) that do not exist yet,
// labelled with stack. Secret contents are sent to the engine only; errors
// name files, never values.
func (c *Client) ensureSecrets(ctx context.Context, files []File, stack string) ([]*swarm.SecretReference, error) {
	if files == nil {
		return nil, nil
	}
	out := []*swarm.SecretReference{}
	for _, f := range files {
		name, data, err := objectName(f)
		if err != nil {
			return nil, err
		}
		id := ""
		l, err := c.api.SecretList(ctx, client.SecretListOptions{Filters: make(client.Filters).Add("name", name)})
		if err != nil {
			return nil, fmt.Errorf("listing secrets: %w", err)
		}
		for _, s := range l.Items {
			if s.Spec.Name == name {
				id = s.ID
			}
		}
		if id == "" {
			r, err := c.api.SecretCreate(ctx, client.SecretCreateOptions{Spec: swarm.SecretSpec{
				Annotations: swarm.Annotations{Name: name, Labels: createdLabels(stack, map[string]string{"labreg.name": f.Name})},
				Data:        data,
			}})
			if err != nil {
				return nil, fmt.Errorf("creating secret %s from %s: %w", name, f.Path, err)
			}
			id = r.ID
			c.opts.OnProgress(Progress{Stage: StageCreated, Message: fmt.Sprintf("secret %s: created from %s", name, f.Path)})
		}
		target := f.Target
		if target == "" {
			target = f.Name
		}
		out = append(out, &swarm.SecretReference{SecretID: id, SecretName: name,
			File: &swarm.SecretReferenceFileTarget{Name: target, UID: "0", GID: "0", Mode: 0o444}})
	}
	return out, nil
}

// ensureConfigs creates the configs (content-named) that do not exist yet,
// labelled with stack.
func (c *Client) ensureConfigs(ctx context.Context, files []File, stack string) ([]*swarm.ConfigReference, error) {
	if files == nil {
		return nil, nil
	}
	out := []*swarm.ConfigReference{}
	for _, f := range files {
		name, data, err := objectName(f)
		if err != nil {
			return nil, err
		}
		id := ""
		l, err := c.api.ConfigList(ctx, client.ConfigListOptions{Filters: make(client.Filters).Add("name", name)})
		if err != nil {
			return nil, fmt.Errorf("listing configs: %w", err)
		}
		for _, s := range l.Items {
			if s.Spec.Name == name {
				id = s.ID
			}
		}
		if id == "" {
			r, err := c.api.ConfigCreate(ctx, client.ConfigCreateOptions{Spec: swarm.ConfigSpec{
				Annotations: swarm.Annotations{Name: name, Labels: createdLabels(stack, map[string]string{"labreg.name": f.Name})},
				Data:        data,
			}})
			if err != nil {
				return nil, fmt.Errorf("creating config %s from %s: %w", name, f.Path, err)
			}
			id = r.ID
			c.opts.OnProgress(Progress{Stage: StageCreated, Message: fmt.Sprintf("config %s: created from %s", name, f.Path)})
		}
		target := f.Target
		if target == "" {
			target = "/" + f.Name
		}
		out = append(out, &swarm.ConfigReference{ConfigID: id, ConfigName: name,
			File: &swarm.ConfigReferenceFileTarget{Name: target, UID: "0", GID: "0", Mode: 0o444}})
	}
	return out, nil
}
