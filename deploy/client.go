// Package deploy rolls images from a labreg registry out to a Docker Swarm
// cluster through the Docker Engine API: it creates or updates services with
// the image digest pinned, forwards registry credentials like
// `docker service create --with-registry-auth`, watches the rollout per slot
// (replicated) or per node (global) and reports a rollout as converged only
// when every task of the new spec runs the requested digest on a node that
// is up. Paused and rolled-back updates are failures (*RolloutError), unlike
// the docker CLI (docker/cli#6752), and so are a node that went down under
// the rollout and a task swarm cannot place (its "no suitable node" reason
// is reported). Services are addressed by exact name or full ID, never by
// an ID prefix.
//
// The package never prints: progress leaves as structured events through
// Options.OnProgress (one vocabulary, Progress), results are returned as
// values. The engine is reached through Engine, the calls deploy makes; the
// rollout decision (rollout.go) is a pure function of what one poll sees.
package deploy

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/moby/moby/client"
)

// Options configures a Client. The zero value of each field is its default.
type Options struct {
	// Registry is the HOST:PORT every node pulls from; short image names
	// ("myhttpd:green") resolve against it. Required for short names.
	Registry string
	// DockerConfigDir is the docker CLI config directory the registry
	// credentials are read from (config.json and credential helpers).
	// Default: $DOCKER_CONFIG, else ~/.docker.
	DockerConfigDir string
	// OnProgress receives progress events (see Progress). Default: none.
	OnProgress func(Progress)
	// Logger receives debug logs (never credentials). Default: discard.
	Logger *slog.Logger
	// PollInterval is how often a rollout is polled. Default 100ms.
	PollInterval time.Duration
}

// Client deploys services to the swarm the Docker Engine at DOCKER_HOST (or
// the default socket) manages.
type Client struct {
	api  Engine
	opts Options
}

// New connects to the Docker Engine named by DOCKER_HOST / DOCKER_TLS_VERIFY /
// DOCKER_CERT_PATH (default: the local socket); the client negotiates the
// API version on first use (DOCKER_API_VERSION fixes it).
func New(opts Options) (*Client, error) {
	if opts.OnProgress == nil {
		opts.OnProgress = func(Progress) {}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 100 * time.Millisecond
	}
	api, err := client.New(client.FromEnv)
	if err != nil {
		return nil, fmt.Errorf("connecting to the Docker Engine: %w", err)
	}
	return &Client{api: api, opts: opts}, nil
}

// Close releases the engine connection.
func (c *Client) Close() error { return c.api.Close() }

// Ping checks that the engine answers.
func (c *Client) Ping(ctx context.Context) error {
	if _, err := c.api.Ping(ctx, client.PingOptions{}); err != nil {
		return fmt.Errorf("reaching the Docker Engine at %s: %w", c.api.DaemonHost(), err)
	}
	return nil
}
