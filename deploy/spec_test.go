package deploy

import (
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"
)

func TestResolveImage(t *testing.T) {
	tests := []struct{ in, reg, want, err string }{
		{in: "myhttpd:green", reg: "211.183.3.100:5000", want: "211.183.3.100:5000/myhttpd:green"},
		{in: "myhttpd", reg: "211.183.3.100:5000", want: "211.183.3.100:5000/myhttpd:latest"},
		{in: "user1/centos:7", reg: "10.0.0.1:5000", want: "10.0.0.1:5000/user1/centos:7"},
		{in: "localhost:5000/myhttpd:blue", reg: "10.0.0.1:5000", want: "localhost:5000/myhttpd:blue"},
		{in: "reg.lab/app:1", reg: "10.0.0.1:5000", want: "reg.lab/app:1"},
		{in: "app@sha256:" + sixtyFour, reg: "r:5000", want: "r:5000/app@sha256:" + sixtyFour},
		{in: "myhttpd:green", reg: "", err: "no registry host"},
		{in: "", reg: "r:5000", err: "no image"},
		{in: "UPPER:case", reg: "r:5000", err: "parsing image reference"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ResolveImage(tc.in, tc.reg)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

const sixtyFour = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// TestApplyKeepsWhatIsNotSet: `labreg deploy web --image X` on an existing
// service changes the image only, like `docker service update --image`.
func TestApplyKeepsWhatIsNotSet(t *testing.T) {
	three := uint64(3)
	base := swarm.ServiceSpec{
		Annotations:  swarm.Annotations{Name: "web"},
		TaskTemplate: swarm.TaskSpec{ContainerSpec: &swarm.ContainerSpec{Image: "old", Env: []string{"A=1"}}},
		Mode:         swarm.ServiceMode{Replicated: &swarm.ReplicatedService{Replicas: &three}},
		EndpointSpec: &swarm.EndpointSpec{Mode: "dnsrr", Ports: []swarm.PortConfig{{TargetPort: 80, PublishedPort: 80}}},
		UpdateConfig: &swarm.UpdateConfig{Parallelism: 2, Monitor: time.Second, FailureAction: "rollback"},
	}
	one := uint64(1)
	tests := []struct {
		name  string
		spec  Spec
		check func(t *testing.T, got swarm.ServiceSpec)
	}{
		{"image only", Spec{Name: "web", Image: "x"}, func(t *testing.T, got swarm.ServiceSpec) {
			if *got.Mode.Replicated.Replicas != 3 || got.EndpointSpec.Mode != "dnsrr" || len(got.EndpointSpec.Ports) != 1 ||
				got.TaskTemplate.ContainerSpec.Env[0] != "A=1" || got.UpdateConfig.Parallelism != 2 {
				t.Errorf("unset fields changed: %+v", got)
			}
		}},
		{"replicas and monitor", Spec{Name: "web", Image: "x", Replicas: &one, Update: UpdatePolicy{Monitor: 5 * time.Second}},
			func(t *testing.T, got swarm.ServiceSpec) {
				if *got.Mode.Replicated.Replicas != 1 || got.UpdateConfig.Monitor != 5*time.Second || got.UpdateConfig.FailureAction != "rollback" {
					t.Errorf("got replicas %d, update %+v", *got.Mode.Replicated.Replicas, got.UpdateConfig)
				}
			}},
		{"to global", Spec{Name: "web", Image: "x", Mode: "global"}, func(t *testing.T, got swarm.ServiceSpec) {
			if got.Mode.Global == nil || got.Mode.Replicated != nil {
				t.Errorf("mode %+v", got.Mode)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.spec.apply(base, "reg/x:1@sha256:"+sixtyFour, nil, nil, nil)
			if got.TaskTemplate.ContainerSpec.Image != "reg/x:1@sha256:"+sixtyFour {
				t.Errorf("image %q", got.TaskTemplate.ContainerSpec.Image)
			}
			tc.check(t, got)
			if base.TaskTemplate.ContainerSpec.Image != "old" {
				t.Errorf("apply changed the base spec")
			}
		})
	}
}

// TestValidateOrder: each order is checked on its own; the two values
// concatenated ("start-firststop-first") once passed as one.
func TestValidateOrder(t *testing.T) {
	tests := []struct {
		update, rollback string
		bad              string
	}{
		{"", "", ""},
		{"start-first", "stop-first", ""},
		{"stop-first", "", ""},
		{"start-firststop-first", "", `update order "start-firststop-first"`},
		{"", "stop-firststart-first", `rollback order "stop-firststart-first"`},
		{"start-first", "sideways", `rollback order "sideways"`},
	}
	for _, tc := range tests {
		s := Spec{Name: "web", Image: "web:1", Update: UpdatePolicy{Order: tc.update}, Rollback: UpdatePolicy{Order: tc.rollback}}
		err := s.Validate()
		switch {
		case tc.bad == "" && err != nil:
			t.Errorf("%q/%q: %v", tc.update, tc.rollback, err)
		case tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad)):
			t.Errorf("%q/%q: %v, want an error saying %s", tc.update, tc.rollback, err, tc.bad)
		}
	}
}
