package build

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// GoBuild runs the Dockerfile's "# labreg:go-build FILE PACKAGE"
// directives: each compiles the Go main package PACKAGE (an import path or
// a path relative to the context, resolved from the context directory)
// into FILE in the build context, statically (CGO_ENABLED=0) for
// linux/goarch and reproducibly (-trimpath, no build ID, no VCS stamp), so
// that an ordinary COPY FILE picks it up — with labreg or with docker
// build. Compiler output goes to progress.
func GoBuild(ctx context.Context, df *Dockerfile, contextDir, goarch string, progress io.Writer) error {
	for _, d := range df.Directives {
		if d.Name != "go-build" {
			continue
		}
		if len(d.Args) != 2 {
			return &DockerfileError{File: df.Path, Line: d.Line, Instruction: "labreg:go-build",
				Err: fmt.Errorf("want \"# labreg:go-build FILE PACKAGE\", got %d arguments", len(d.Args))}
		}
		file, pkg := d.Args[0], d.Args[1]
		clean, err := checkInside(file)
		if err != nil {
			return &DockerfileError{File: df.Path, Line: d.Line, Instruction: "labreg:go-build", Err: err}
		}
		goBin, err := exec.LookPath("go")
		if err != nil {
			return &DockerfileError{File: df.Path, Line: d.Line, Instruction: "labreg:go-build",
				Err: fmt.Errorf("needs the Go toolchain (go) in PATH to compile %s", pkg)}
		}
		out, err := filepath.Abs(filepath.Join(contextDir, filepath.FromSlash(clean)))
		if err != nil {
			return fmt.Errorf("go-build output: %w", err)
		}
		fmt.Fprintf(progress, "go build -o %s %s\n", out, pkg)
		cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-buildvcs=false",
			"-ldflags=-s -w -buildid=", "-o", out, pkg)
		cmd.Dir = contextDir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch, "GOFLAGS=")
		var msg strings.Builder
		cmd.Stdout = progress
		cmd.Stderr = io.MultiWriter(progress, &msg)
		if err := cmd.Run(); err != nil {
			return &DockerfileError{File: df.Path, Line: d.Line, Instruction: "labreg:go-build",
				Err: fmt.Errorf("go build %s: %v: %s", pkg, err, strings.TrimSpace(msg.String()))}
		}
	}
	return nil
}
