package deploy_test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggtarball "github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// TestBlueGreenRollback is the lab's blue/green exercise: deploy blue,
// update to green, roll back; the published port serves blue, green, blue
// and `labreg status` shows the digests with their tags.
func TestBlueGreenRollback(t *testing.T) {
	docker := testenv.Swarm(t)
	reg, _ := testenv.Registry(t, registry.Options{})
	blue := pageImage(t, reg+"/myhttpd:blue", nil, "blue page\n")
	green := pageImage(t, reg+"/myhttpd:green", nil, "green page\n")
	svc := "myhttpd-" + suffix(t)
	removeService(t, docker, svc)
	port := freePort(t)
	env := []string{"DOCKER_CONFIG=" + dockerConfig(t, reg, "", "")}
	common := []string{"--advertise", reg, "--progress", "plain", "--update-delay", "0s", "--update-monitor", "200ms",
		"--rollback-delay", "0s", "--rollback-monitor", "200ms"}
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)

	r := labreg(t, env, append([]string{"deploy", svc, "--image", "myhttpd:blue", "--replicas", "1",
		"--constraint", onManager(t, docker), "--publish", fmt.Sprintf("mode=host,%d:80", port)}, common...)...)
	if r.code != 0 {
		t.Fatalf("deploy blue: exit %d", r.code)
	}
	if !strings.Contains(r.out, reg+"/myhttpd:blue@"+blue) {
		t.Errorf("deploy blue: stdout does not name the pinned image %s@%s", reg+"/myhttpd:blue", blue)
	}
	if !progressLine(r.err, svc, "slot 1", "running", blue) {
		t.Errorf("deploy blue: progress shows no running slot with digest %s", blue[:19])
	}
	if got := get(t, url); got != "blue page\n" {
		t.Fatalf("after blue: GET = %q", got)
	}

	r = labreg(t, env, append([]string{"deploy", svc, "--image", "myhttpd:green"}, common[:4]...)...)
	if r.code != 0 {
		t.Fatalf("deploy green: exit %d", r.code)
	}
	if got := get(t, url); got != "green page\n" {
		t.Fatalf("after green: GET = %q", got)
	}

	r = labreg(t, env, "status", svc)
	if r.code != 0 {
		t.Fatalf("status: exit %d", r.code)
	}
	if !strings.Contains(r.out, green) || !strings.Contains(r.out, "tags: green") {
		t.Errorf("status does not show digest %s with tag green", green)
	}

	r = labreg(t, env, "rollback", svc, "--progress", "plain")
	if r.code != 0 {
		t.Fatalf("rollback: exit %d", r.code)
	}
	if !strings.Contains(r.out, blue) {
		t.Errorf("rollback: stdout does not name blue's digest %s", blue)
	}
	if got := get(t, url); got != "blue page\n" {
		t.Fatalf("after rollback: GET = %q", got)
	}
	r = labreg(t, env, "status", svc)
	if !strings.Contains(r.out, blue) || !strings.Contains(r.out, "tags: blue") {
		t.Errorf("status after rollback does not show digest %s with tag blue", blue)
	}
}

// TestRegistryAuthForwarding: the registry wants a password and the engine
// never logged in. With the docker CLI's credentials forwarded (the
// default) the service runs; with --with-registry-auth=false labreg fails
// before touching the service, naming the registry and the auth error.
func TestRegistryAuthForwarding(t *testing.T) {
	docker := testenv.Swarm(t)
	reg := authRegistry(t, "lab", "s3cret-pw")
	id := suffix(t)
	page := "private page " + id + "\n" // unique content: the node must really pull
	pageImage(t, reg+"/private:v1", &authn.Basic{Username: "lab", Password: "s3cret-pw"}, page)
	env := []string{"DOCKER_CONFIG=" + dockerConfig(t, reg, "lab", "s3cret-pw")}
	port := freePort(t)

	tests := []struct {
		name     string
		authFlag string
		wantCode int
		wantErr  []string
	}{
		{name: "without forwarding", authFlag: "--with-registry-auth=false", wantCode: 1,
			wantErr: []string{"registry " + reg, "without credentials", "no basic auth credentials", "docker login " + reg}},
		{name: "forwarded", authFlag: "--with-registry-auth=true", wantCode: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc := "private-" + id
			removeService(t, docker, svc)
			r := labreg(t, env, "deploy", svc, "--image", "private:v1", "--advertise", reg, "--progress", "plain",
				"--constraint", onManager(t, docker), "--publish", fmt.Sprintf("mode=host,%d:80", port), tc.authFlag)
			if r.code != tc.wantCode {
				t.Fatalf("exit %d, want %d", r.code, tc.wantCode)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(r.err, w) {
					t.Errorf("stderr does not say %q", w)
				}
			}
			for _, out := range []string{r.out, r.err} {
				if strings.Contains(out, "s3cret-pw") || strings.Contains(out, base64.StdEncoding.EncodeToString([]byte("lab:s3cret-pw"))) {
					t.Errorf("output shows the password")
				}
			}
			if tc.wantCode == 0 {
				if got := get(t, fmt.Sprintf("http://127.0.0.1:%d/", port)); got != page {
					t.Errorf("GET = %q, want %q", got, page)
				}
			} else if out, _ := exec.Command(docker, "service", "inspect", svc).CombinedOutput(); !strings.Contains(string(out), "no such service") && !strings.Contains(string(out), "not found") {
				t.Errorf("service %s exists after a failed pin: %s", svc, out)
			}
		})
	}
}

// TestFailedUpdateRollsBack: an update to an image whose process exits at
// once, with --update-failure-action rollback. Swarm rolls back; labreg
// exits 3 (docker exits 0: docker/cli#6752), names the task error, and the
// service runs the old digest again when it returns.
func TestFailedUpdateRollsBack(t *testing.T) {
	docker := testenv.Swarm(t)
	reg, _ := testenv.Registry(t, registry.Options{})
	id := suffix(t)
	good := pageImage(t, reg+"/app:good", nil, "good "+id+"\n")
	pushImage(t, reg+"/app:crash", nil, map[string]string{"crash": id}, "/bin/false")
	svc := "crash-" + id
	removeService(t, docker, svc)
	env := []string{"DOCKER_CONFIG=" + dockerConfig(t, reg, "", "")}
	r := labreg(t, env, "deploy", svc, "--image", "app:good", "--advertise", reg, "--progress", "plain",
		"--constraint", onManager(t, docker), "--update-failure-action", "rollback", "--update-monitor", "1s", "--update-delay", "0s",
		"--rollback-monitor", "200ms", "--rollback-delay", "0s")
	if r.code != 0 {
		t.Fatalf("deploy good: exit %d", r.code)
	}
	r = labreg(t, env, "deploy", svc, "--image", "app:crash", "--advertise", reg, "--progress", "plain")
	if r.code != 3 {
		t.Errorf("deploy crash: exit %d, want 3 (rollout rolled back)", r.code)
	}
	for _, w := range []string{"rollback completed", "non-zero exit (1)"} {
		if !strings.Contains(r.err, w) {
			t.Errorf("deploy crash: error does not say %q", w)
		}
	}
	st := labreg(t, env, "status", svc)
	if !strings.Contains(st.out, "digest "+good+"  tags: good") {
		t.Errorf("after the rollback the service does not run the good digest %s", good)
	}
	if !strings.Contains(st.out, "replicated 1/1") {
		t.Errorf("after the rollback 1/1 tasks should run")
	}
}

// TestSamsungFile deploys the shipped samsung example: network samsung-*
// with subnet 10.10.3.0/24, the zone==seoul constraint in the spec, the
// secret readable at /run/secrets/samsung_admin inside the task and in no
// output of labreg.
func TestSamsungFile(t *testing.T) {
	docker := testenv.Swarm(t)
	reg, _ := testenv.Registry(t, registry.Options{})
	id := suffix(t)
	page := "<title>samsung v1 " + id + "</title>\n"
	pageImage(t, reg+"/samsung:1.0", nil, page)
	secret := "pw-" + suffix(t) + suffix(t)
	secretFile := filepath.Join(t.TempDir(), "admin")
	if err := os.WriteFile(secretFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	network := "samsung-" + id
	port := freePort(t)
	env := []string{"DOCKER_CONFIG=" + dockerConfig(t, reg, "", ""),
		"SAMSUNG_NETWORK=" + network, "SAMSUNG_PORT=" + itoa(port), "SAMSUNG_SECRET_FILE=" + secretFile}

	// This single node plays worker1: zone=seoul.
	host, _ := exec.Command(docker, "info", "--format", "{{.Name}}").Output()
	node := strings.TrimSpace(string(host))
	if r := labreg(t, env, "node", "label", node, "zone=seoul"); r.code != 0 {
		t.Fatalf("node label: exit %d", r.code)
	}
	t.Cleanup(func() { labreg(t, env, "node", "label", node, "--rm", "zone") })

	// The example is for one service named samsung; give it a unique name.
	file := filepath.Join(t.TempDir(), "samsung.yaml")
	src, err := os.ReadFile(filepath.Join("examples", "samsung.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	svc := "samsung-" + id
	yml := strings.Replace(string(src), "\n  samsung:\n    image:", "\n  "+svc+":\n    image:", 1)
	yml = strings.Replace(yml, "replicas: 2", "replicas: 1", 1) // one node, one host port
	yml = strings.Replace(yml, "          - node.labels.zone == seoul\n", "          - node.labels.zone == seoul\n          - "+onManager(t, docker)+"\n", 1)
	if err := os.WriteFile(file, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-registered first: the service goes before its
	// network and secret (a left-over network would hold 10.10.3.0/24).
	t.Cleanup(func() {
		if out, err := exec.Command(docker, "network", "rm", network).CombinedOutput(); err != nil {
			t.Errorf("removing network %s: %v: %s", network, err, out)
		}
		out, _ := exec.Command(docker, "secret", "ls", "-q", "--filter", "label=labreg.name=samsung_admin").Output()
		for _, s := range strings.Fields(string(out)) {
			exec.Command(docker, "secret", "rm", s).Run()
		}
	})
	removeService(t, docker, svc)

	r := labreg(t, env, "deploy", "-f", file, "--advertise", reg, "--progress", "plain")
	if r.code != 0 {
		t.Fatalf("deploy -f: exit %d", r.code)
	}
	if got := get(t, fmt.Sprintf("http://127.0.0.1:%d/", port)); got != page {
		t.Errorf("GET = %q, want %q", got, page)
	}
	out, err := exec.Command(docker, "network", "inspect", network, "--format", "{{.Driver}} {{range .IPAM.Config}}{{.Subnet}}{{end}} {{.Attachable}}").CombinedOutput()
	if got := strings.TrimSpace(string(out)); err != nil || got != "overlay 10.10.3.0/24 true" {
		t.Errorf("network %s: %q (%v), want overlay 10.10.3.0/24 attachable", network, got, err)
	}
	out, _ = exec.Command(docker, "service", "inspect", svc, "--format", "{{json .Spec.TaskTemplate.Placement.Constraints}}").CombinedOutput()
	if !strings.Contains(string(out), "node.labels.zone == seoul") {
		t.Errorf("constraints in the spec: %s", out)
	}
	ctr, _ := exec.Command(docker, "ps", "-q", "--filter", "label=com.docker.swarm.service.name="+svc).Output()
	c := strings.Fields(string(ctr))
	if len(c) != 1 {
		t.Fatalf("want one container of %s, got %q", svc, c)
	}
	got, err := exec.Command(docker, "exec", c[0], "cat", "/run/secrets/samsung_admin").CombinedOutput()
	if err != nil || string(got) != secret {
		t.Errorf("/run/secrets/samsung_admin in the task = %q (%v), want the secret file's content", got, err)
	}
	// A second overlay on 10.10.3.0/24 would never schedule: refused.
	o := labreg(t, env, "deploy", "other-"+id, "--image", "samsung:1.0", "--advertise", reg,
		"--network", "other-"+id, "--subnet", "10.10.3.0/24")
	if o.code == 0 || !strings.Contains(o.err, "overlaps network "+network) {
		t.Errorf("overlapping subnet: exit %d, want an error naming network %s", o.code, network)
	}
	st := labreg(t, env, "status", svc)
	inspect, _ := exec.Command(docker, "service", "inspect", svc).CombinedOutput()
	for what, o := range map[string]string{"deploy stdout": r.out, "deploy stderr": r.err, "status": st.out + st.err, "service spec": string(inspect)} {
		if strings.Contains(o, secret) {
			t.Errorf("the secret value appears in the %s", what)
		}
	}
}

// TestPrepull: --prepull makes every eligible node pull the new image
// (with the forwarded credentials) before the service is created, prints
// the pull time per node and leaves no helper service behind.
func TestPrepull(t *testing.T) {
	docker := testenv.Swarm(t)
	reg := authRegistry(t, "lab", "pw-prepull")
	id := suffix(t)
	pageImage(t, reg+"/pre:v1", &authn.Basic{Username: "lab", Password: "pw-prepull"}, "prepull "+id+"\n")
	env := []string{"DOCKER_CONFIG=" + dockerConfig(t, reg, "lab", "pw-prepull")}
	svc := "pre-" + id
	removeService(t, docker, svc)
	r := labreg(t, env, "deploy", svc, "--image", "pre:v1", "--advertise", reg, "--progress", "plain", "--prepull",
		"--constraint", onManager(t, docker))
	if r.code != 0 {
		t.Fatalf("deploy --prepull: exit %d", r.code)
	}
	host, _ := exec.Command(docker, "info", "--format", "{{.Name}}").Output()
	if want := "prepull: " + strings.TrimSpace(string(host)) + " pulled in "; !strings.Contains(r.err, want) {
		t.Errorf("progress does not say %q", want)
	}
	out, _ := exec.Command(docker, "service", "ls", "-q", "--filter", "label=labreg.prepull="+svc).Output()
	if len(strings.TrimSpace(string(out))) != 0 {
		t.Errorf("prepull job left behind: %s", out)
	}
}

// TestPushLocal: an image that only this engine has (built, never pushed)
// is pushed to the registry under the advertised name, then deployed.
func TestPushLocal(t *testing.T) {
	docker := testenv.Swarm(t)
	reg, _ := testenv.Registry(t, registry.Options{})
	id := suffix(t)
	local := "labreg-local-" + id + ":v1"
	page := "local only " + id + "\n"
	img := buildImage(t, map[string]string{"www/index.html": page},
		"/bin/sh", "-c", "trap 'exit 0' TERM; /bin/busybox httpd -f -p 80 -h /www & wait")
	tag, err := name.NewTag(local)
	if err != nil {
		t.Fatal(err)
	}
	var tarball bytes.Buffer
	if err := ggtarball.Write(tag, img, &tarball); err != nil {
		t.Fatal(err)
	}
	load := exec.Command(docker, "load")
	load.Stdin = &tarball
	if out, err := load.CombinedOutput(); err != nil {
		t.Fatalf("docker load: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command(docker, "rmi", local, reg+"/"+local).Run() })
	svc := "local-" + id
	removeService(t, docker, svc)
	port := freePort(t)
	r := labreg(t, []string{"DOCKER_CONFIG=" + dockerConfig(t, reg, "", "")}, "deploy", svc, "--image", local,
		"--advertise", reg, "--progress", "plain", "--constraint", onManager(t, docker),
		"--publish", fmt.Sprintf("mode=host,%d:80", port))
	if r.code != 0 {
		t.Fatalf("deploy of a local-only image: exit %d", r.code)
	}
	if !strings.Contains(r.err, "pushing it from the local engine") {
		t.Errorf("progress does not say that the local image was pushed")
	}
	if !strings.Contains(r.out, reg+"/"+local+"@") {
		t.Errorf("stdout does not name %s pinned", reg+"/"+local)
	}
	if got := get(t, fmt.Sprintf("http://127.0.0.1:%d/", port)); got != page {
		t.Errorf("GET = %q, want %q", got, page)
	}
}
