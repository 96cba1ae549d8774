package deploy_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"testing"
	"time"

	"github.com/labreg/labreg/deploy"
	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// BenchmarkRollout compares, on the same engine in the same run, the wall
// time of `labreg deploy SERVICE --image REF` with `docker service update
// --image REF --with-registry-auth SERVICE` for the same change (flip
// between two tags) and the same update policy (2 replicas, parallelism 1,
// delay 0, monitor 1s). It reports:
//
//	labreg-s, docker-s  mean wall time of one rollout
//	ratio               labreg-s / docker-s (target <= 1.05)
//	detect-ms           worst end-of-rollout detection latency of the
//	                    deploy library: when it saw convergence minus the
//	                    engine timestamp of the last task reaching running
//	                    (target <= 300)
//
// Run: LABREG_E2E=1 go test ./deploy -run '^$' -bench Rollout -benchtime 4x
func BenchmarkRollout(b *testing.B) {
	docker := testenv.Swarm(b)
	reg, _ := testenv.Registry(b, registry.Options{})
	id := suffix(b)
	tags := []string{"a", "b"}
	for _, tag := range tags {
		pageImage(b, reg+"/bench:"+tag, nil, "bench "+tag+" "+id+"\n")
	}
	env := []string{"DOCKER_CONFIG=" + dockerConfig(b, reg, "", "")}
	policy := []string{"--constraint", onManager(b, docker), "--replicas", "2", "--update-parallelism", "1", "--update-delay", "0s", "--update-monitor", "1s"}
	svcL, svcD, svcI := "bench-labreg-"+id, "bench-docker-"+id, "bench-lib-"+id
	for _, s := range []string{svcL, svcD, svcI} {
		removeService(b, docker, s)
	}
	// Same starting point for both: created by labreg with tag a.
	for _, s := range []string{svcL, svcD} {
		if r := labreg(b, env, append([]string{"deploy", s, "--image", "bench:a", "--advertise", reg, "--progress", "quiet"}, policy...)...); r.code != 0 {
			b.Fatalf("creating %s: exit %d", s, r.code)
		}
	}
	dc, err := deploy.New(deploy.Options{Registry: reg, DockerConfigDir: dockerConfig(b, reg, "", "")})
	if err != nil {
		b.Fatal(err)
	}
	defer dc.Close()
	ctx := context.Background()
	two, one, zero := uint64(2), uint64(1), time.Duration(0)
	spec := deploy.Spec{Name: svcI, Image: "bench:a", Replicas: &two, Constraints: []string{onManager(b, docker)},
		Update: deploy.UpdatePolicy{Parallelism: &one, Delay: &zero, Monitor: time.Second}}
	if _, err := dc.Deploy(ctx, spec, deploy.DeployOptions{}); err != nil {
		b.Fatal(err)
	}

	var tl, td time.Duration
	var detect []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tag := tags[(i+1)%2]
		r := labreg(b, env, "deploy", svcL, "--image", "bench:"+tag, "--advertise", reg, "--progress", "quiet")
		if r.code != 0 {
			b.Fatalf("labreg deploy: exit %d", r.code)
		}
		tl += r.took

		cmd := exec.Command(docker, "service", "update", "--image", reg+"/bench:"+tag, "--with-registry-auth", svcD)
		cmd.Env = append(os.Environ(), env...)
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("docker service update: %v\n%s", err, out)
		}
		td += time.Since(start)

		spec.Image = "bench:" + tag
		res, err := dc.Deploy(ctx, spec, deploy.DeployOptions{})
		if err != nil {
			b.Fatal(err)
		}
		detect = append(detect, res.Converged.Sub(res.LastRunning))
	}
	b.StopTimer()
	sort.Slice(detect, func(i, j int) bool { return detect[i] < detect[j] })
	n := float64(b.N)
	b.ReportMetric(tl.Seconds()/n, "labreg-s")
	b.ReportMetric(td.Seconds()/n, "docker-s")
	b.ReportMetric(tl.Seconds()/td.Seconds(), "ratio")
	b.ReportMetric(float64(detect[len(detect)-1].Milliseconds()), "detect-ms")
	fmt.Fprintf(os.Stderr, "detection latencies: %v\n", detect)
}
