package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/labreg/labreg/deploy"
)

// printProgress renders deploy progress events as lines on w, one per
// event ("SERVICE slot 2: running   sha256:0123456789ab on worker1"),
// readable on a terminal and in CI logs alike. Replicated tasks are named
// by swarm's slot number, global tasks by node, as errors name them.
func printProgress(w io.Writer) func(deploy.Progress) {
	return func(p deploy.Progress) {
		if line := progressLine(p); line != "" {
			fmt.Fprintln(w, line)
		}
	}
}

func progressLine(p deploy.Progress) string {
	svc := p.Service
	switch p.Stage {
	case deploy.StageImage:
		return fmt.Sprintf("%s: image %s", svc, p.Image)
	case deploy.StagePush, deploy.StageCreated, deploy.StageRemoved:
		return p.Message
	case deploy.StageWarning:
		return fmt.Sprintf("%s: warning: %s", svc, p.Message)
	case deploy.StagePrepull:
		switch {
		case p.Message != "":
			return fmt.Sprintf("%s prepull: %s", svc, p.Message)
		case p.Err != "":
			return fmt.Sprintf("%s prepull: %s: %s", svc, p.Node, p.Err)
		default:
			return fmt.Sprintf("%s prepull: %s pulled in %s", svc, p.Node, p.Took.Round(time.Millisecond))
		}
	case deploy.StageRollback:
		if p.Message != "" {
			return fmt.Sprintf("%s rollback: %s", svc, p.Message)
		}
		return fmt.Sprintf("%s: rolling back to %s", svc, p.Image)
	case deploy.StageTask:
		var b strings.Builder
		fmt.Fprintf(&b, "%s %s: %-9s %s", svc, taskName(p), p.State, shortDigest(p.Image))
		if p.Slot != 0 && p.Node != "" {
			fmt.Fprintf(&b, " on %s", p.Node)
		}
		if p.Message != "" {
			fmt.Fprintf(&b, " (%s)", p.Message)
		}
		if p.Err != "" {
			fmt.Fprintf(&b, " %s", p.Err)
		}
		return b.String()
	case deploy.StageStuck:
		if p.Slot != 0 {
			return fmt.Sprintf("%s slot %d: %s", svc, p.Slot, p.Message)
		}
		return fmt.Sprintf("%s: %s", svc, p.Message)
	case deploy.StageOverall:
		if p.Message != "" {
			return fmt.Sprintf("%s overall progress: %s", svc, p.Message)
		}
		what := "%d out of %d tasks"
		if p.Rollback {
			what = "rolling back: %d out of %d tasks"
		}
		return fmt.Sprintf("%s overall progress: "+what, svc, p.Running, p.Total)
	case deploy.StageVerify:
		return fmt.Sprintf("%s verify: all %d tasks run %s; waiting %s to verify that they are stable", svc, p.Running, shortImage(p.Image), p.Took)
	case deploy.StageConverged:
		return fmt.Sprintf("%s verify: Service %s converged: %d/%d tasks run %s", svc, svc, p.Running, p.Total, shortImage(p.Image))
	case deploy.StageError:
		return fmt.Sprintf("%s error: %s", svc, p.Message)
	}
	return ""
}

// taskName is "slot 2" (replicated) or the node's name (global).
func taskName(p deploy.Progress) string {
	if p.Slot != 0 {
		return fmt.Sprintf("slot %d", p.Slot)
	}
	return p.Node
}

// shortDigest is "sha256:0123456789ab" of an image pinned by digest.
func shortDigest(image string) string {
	_, d, _ := strings.Cut(image, "@")
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

// shortImage shortens the digest of a pinned image.
func shortImage(image string) string {
	n, _, ok := strings.Cut(image, "@")
	if !ok {
		return image
	}
	return n + "@" + shortDigest(image)
}
