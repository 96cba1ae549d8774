// Package deps pins modules that several packages are about to use.
package deps

import (
	_ "github.com/chromedp/chromedp"
	_ "github.com/compose-spec/compose-go/v2/loader"
	_ "github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/docker/cli/cli/config"
	_ "github.com/google/go-containerregistry/pkg/v1/remote"
	_ "github.com/moby/buildkit/client"
	_ "github.com/moby/buildkit/frontend/dockerfile/instructions"
	_ "github.com/moby/buildkit/util/progress/progressui"
	_ "github.com/moby/moby/client"
	_ "github.com/moby/patternmatcher"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "github.com/spf13/cobra"
	_ "go.yaml.in/yaml/v3"
)
