package build

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// The benchmarks time whole processes, the way a user runs them, on the
// same machine in the same run:
//
//	native:   labreg build (the native engine) — build and push
//	docker:   DOCKER_BUILDKIT=0 docker build (classic builder) + docker push
//	buildctl: buildctl build --frontend dockerfile.v0, pushing to the registry
//
// Each reports <tool>-ms per build and docker/native and buildctl/native
// ratios. Run with: make bench, or
//
//	go test -run '^$' -bench Build -benchtime 3x ./build/
//
// Contexts: (a) images/myhttpd/blue (FROM the example base image), (b) a
// generated 2,000-file / 200 MiB context FROM scratch. Every iteration
// changes one file of the context, so that each tool really builds and
// pushes a new layer; "unchanged" runs the same context again (nothing to
// build or upload).

type benchTools struct {
	labreg, docker, buildctl, bkAddr, reg string
}

func setupBench(b *testing.B) benchTools {
	b.Helper()
	tools := benchTools{
		labreg: testenv.BuildLabreg(b),
		docker: testenv.Docker(b),
	}
	tools.bkAddr = testenv.Buildkit(b)
	tools.buildctl = testenv.Tool(b, "buildctl", "build it with .ci/run")
	tools.reg, _ = testenv.Registry(b, registry.Options{})
	// docker build pulls the base image into the engine's store.
	b.Cleanup(func() { exec.Command(tools.docker, "rmi", "-f", tools.reg+"/webserver:1").Run() })
	return tools
}

func runTimed(b *testing.B, dir string, env []string, name string, args ...string) time.Duration {
	b.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(start)
	if err != nil {
		b.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return d
}

// stamp changes the context so that every tool has a new layer to build.
func stamp(b *testing.B, dir string, i int) {
	b.Helper()
	if err := os.WriteFile(filepath.Join(dir, "stamp.txt"), []byte(fmt.Sprintf("%d %d\n", i, time.Now().UnixNano())), 0o644); err != nil {
		b.Fatal(err)
	}
}

// copyDir copies a small directory tree (the example image directory).
func copyDir(b *testing.B, src, dst string) {
	b.Helper()
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if info.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, info.Mode().Perm())
	})
	if err != nil {
		b.Fatal(err)
	}
}

// generateContext writes files files of size bytes each (pseudo-random,
// so incompressible, in 20 directories) and a Dockerfile copying them all.
func generateContext(b *testing.B, dir string, files, size int) {
	b.Helper()
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, size)
	for i := 0; i < files; i++ {
		for j := 0; j+8 <= len(buf); j += 8 {
			v := r.Uint64()
			for k := 0; k < 8; k++ {
				buf[j+k] = byte(v >> (8 * k))
			}
		}
		p := filepath.Join(dir, fmt.Sprintf("d%02d", i%20), fmt.Sprintf("f%04d.bin", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY . /data/\n"), 0o644); err != nil {
		b.Fatal(err)
	}
}

func (bt benchTools) native(b *testing.B, dir, tag string) time.Duration {
	return runTimed(b, dir, nil, bt.labreg, "build", "--registry", bt.reg, "--engine", "native", "-t", tag, ".")
}

func (bt benchTools) dockerBuildPush(b *testing.B, dir, tag string) time.Duration {
	ref := bt.reg + "/" + tag
	env := []string{"DOCKER_BUILDKIT=0"}
	d := runTimed(b, dir, env, bt.docker, "build", "-q", "--build-arg", "REGISTRY="+bt.reg, "-t", ref, ".")
	d += runTimed(b, dir, env, bt.docker, "push", "-q", ref)
	// Each changed build leaves the previous image untagged: remove it when the benchmark ends.
	if id, err := exec.Command(bt.docker, "image", "inspect", "-f", "{{.Id}}", ref).Output(); err == nil {
		b.Cleanup(func() { exec.Command(bt.docker, "rmi", "-f", strings.TrimSpace(string(id))).Run() })
	}
	return d
}

func (bt benchTools) buildctlPush(b *testing.B, dir, tag string) time.Duration {
	return runTimed(b, dir, []string{"BUILDKIT_HOST=" + bt.bkAddr}, bt.buildctl, "build",
		"--frontend", "dockerfile.v0", "--local", "context=.", "--local", "dockerfile=.",
		"--opt", "build-arg:REGISTRY="+bt.reg,
		"--output", "type=image,name="+bt.reg+"/"+tag+",push=true,registry.insecure=true")
}

// benchCompare runs each tool b.N times on dir (stamping it first when
// change is set) and reports the mean wall time of each and the ratios.
func benchCompare(b *testing.B, bt benchTools, dir, repo string, change bool) {
	tags := map[string]string{"native": repo + ":native", "docker": repo + ":docker", "buildctl": repo + ":buildctl"}
	run := map[string]func(*testing.B, string, string) time.Duration{
		"native": bt.native, "docker": bt.dockerBuildPush, "buildctl": bt.buildctlPush,
	}
	order := []string{"native", "docker", "buildctl"}
	if !change { // warm up: the "unchanged" case rebuilds what is already there
		for _, tool := range order {
			run[tool](b, dir, tags[tool])
		}
	}
	total := map[string]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, tool := range order {
			if change {
				stamp(b, dir, i)
			}
			total[tool] += run[tool](b, dir, tags[tool])
		}
	}
	b.StopTimer()
	ms := func(tool string) float64 { return float64(total[tool].Microseconds()) / 1000 / float64(b.N) }
	for _, tool := range order {
		b.ReportMetric(ms(tool), tool+"-ms")
	}
	b.ReportMetric(ms("docker")/ms("native"), "docker/native")
	b.ReportMetric(ms("buildctl")/ms("native"), "buildctl/native")
	b.ReportMetric(0, "ns/op")
}

func BenchmarkBuild(b *testing.B) {
	bt := setupBench(b)
	root := testenv.RepoRoot(b)
	// The example base image, which (a) is built FROM.
	runTimed(b, root, nil, bt.labreg, "build", "--registry", bt.reg, filepath.Join(root, "images", "webserver"))

	blue := b.TempDir()
	copyDir(b, filepath.Join(root, "images", "myhttpd", "blue"), blue)
	b.Run("a-myhttpd-blue/changed", func(b *testing.B) { benchCompare(b, bt, blue, "bench/blue", true) })
	b.Run("a-myhttpd-blue/unchanged", func(b *testing.B) { benchCompare(b, bt, blue, "bench/blue", false) })

	// 200 files and 2 MiB under LABREG_BENCH_SMALL=1 (make test).
	files, size := testenv.BenchSize(2000, 200), testenv.BenchSize(200<<20, 2<<20)
	big := b.TempDir()
	generateContext(b, big, files, size/files)
	b.Run(fmt.Sprintf("b-%d-files-%dMiB/changed", files, size>>20), func(b *testing.B) { benchCompare(b, bt, big, "bench/big", true) })
}

// BenchmarkNativeUnchanged is the 150 ms target alone: a whole `labreg
// build` process rebuilding images/myhttpd/blue and finding everything in
// the registry already (no docker or buildkitd needed).
func BenchmarkNativeUnchanged(b *testing.B) {
	labreg := testenv.BuildLabreg(b)
	testenv.Tool(b, "go", "install Go")
	reg, _ := testenv.Registry(b, registry.Options{})
	root := testenv.RepoRoot(b)
	runTimed(b, root, nil, labreg, "build", "--registry", reg, filepath.Join(root, "images", "webserver"))
	blue := filepath.Join(root, "images", "myhttpd", "blue")
	runTimed(b, root, nil, labreg, "build", "--registry", reg, blue)
	times := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		times = append(times, runTimed(b, root, nil, labreg, "build", "--registry", reg, blue))
	}
	b.StopTimer()
	slices.Sort(times)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	// On a shared machine the median includes waiting for a CPU; the best
	// run is what the process itself costs.
	b.ReportMetric(ms(times[0]), "best-ms")
	b.ReportMetric(ms(times[len(times)/2]), "median-ms")
	b.ReportMetric(ms(times[len(times)-1]), "worst-ms")
	// The floor: starting the same binary and doing nothing.
	var floor []time.Duration
	for i := 0; i < b.N; i++ {
		floor = append(floor, runTimed(b, root, nil, labreg, "version"))
	}
	slices.Sort(floor)
	b.ReportMetric(ms(floor[0]), "version-best-ms")
	b.ReportMetric(ms(floor[len(floor)/2]), "version-median-ms")
	b.ReportMetric(0, "ns/op")
}
