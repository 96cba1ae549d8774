// Command labreg is a private registry and image pipeline for a Docker Swarm
// cluster: `labreg serve` runs the registry and its web UI, `labreg build`
// builds and pushes images, `labreg deploy` rolls them out.
//
// This package only wires flags to the library packages and maps errors to
// exit codes; all behaviour lives in config, registry, build and deploy.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	// Root CAs for when the system has none (labreg's FROM scratch image),
	// so an https:// S3 endpoint or upstream registry verifies.
	_ "golang.org/x/crypto/x509roots/fallback"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], streams{In: os.Stdin, Out: os.Stdout, Err: os.Stderr})
	stop()
	os.Exit(code)
}
