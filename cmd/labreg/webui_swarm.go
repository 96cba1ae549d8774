package main

import (
	"context"
	"io"
	"log/slog"

	"github.com/labreg/labreg/deploy"
	"github.com/labreg/labreg/registry/ui"
)

// uiSwarm is the web UI's swarm: deploy.Client's Status, and Deploy and
// Rollback exactly as `labreg deploy SERVICE --image IMAGE` and `labreg
// rollback SERVICE` run them (digest pinned, the docker CLI's credentials
// of the user running labreg serve forwarded, watched to convergence),
// printing what they would print.
type uiSwarm struct {
	dc       *deploy.Client
	registry string
	log      *slog.Logger
}

var _ ui.Swarm = (*uiSwarm)(nil)

func (s *uiSwarm) Status(ctx context.Context) (deploy.Status, error) { return s.dc.Status(ctx, "") }

// client is a deploy client whose progress goes to w (the one client's
// OnProgress is fixed at New).
func (s *uiSwarm) client(w io.Writer) (*deploy.Client, error) {
	return deploy.New(deploy.Options{Registry: s.registry, OnProgress: printProgress(w), Logger: s.log})
}

func (s *uiSwarm) Deploy(ctx context.Context, service, image string, w io.Writer) (deploy.Result, error) {
	dc, err := s.client(w)
	if err != nil {
		return deploy.Result{}, err
	}
	defer dc.Close()
	res, err := dc.Deploy(ctx, deploy.Spec{Name: service, Image: image}, deploy.DeployOptions{})
	if err == nil {
		printResult(w, res, false)
	}
	return res, err
}

func (s *uiSwarm) Rollback(ctx context.Context, service string, w io.Writer) (deploy.Result, error) {
	dc, err := s.client(w)
	if err != nil {
		return deploy.Result{}, err
	}
	defer dc.Close()
	res, err := dc.Rollback(ctx, service, deploy.DeployOptions{})
	if err == nil {
		printResult(w, res, false)
	}
	return res, err
}
