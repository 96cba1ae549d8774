package main

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/moby/moby/api/types/swarm"
)

func TestParsePorts(t *testing.T) {
	tests := []struct {
		in      string
		want    swarm.PortConfig
		wantErr bool
	}{
		{in: "80:80", want: swarm.PortConfig{PublishedPort: 80, TargetPort: 80, PublishMode: "ingress", Protocol: "tcp"}},
		{in: "mode=host,8080:80", want: swarm.PortConfig{PublishedPort: 8080, TargetPort: 80, PublishMode: "host", Protocol: "tcp"}},
		{in: "mode=host,53:53/udp", want: swarm.PortConfig{PublishedPort: 53, TargetPort: 53, PublishMode: "host", Protocol: "udp"}},
		{in: "mode=host,published=8001,target=80", want: swarm.PortConfig{PublishedPort: 8001, TargetPort: 80, PublishMode: "host", Protocol: "tcp"}},
		{in: "mode=bogus,80:80", wantErr: true},
		{in: "mode=host,80", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parsePorts([]string{tc.in})
			if tc.wantErr {
				if err == nil {
					t.Fatalf("no error, got %+v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0] != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestDeployUsage: what the user typed wrong exits 2 with the reason.
func TestDeployUsage(t *testing.T) {
	tests := []struct {
		args []string
		want int
	}{
		{[]string{"deploy", "web", "--advertise", "127.0.0.1:5000"}, exitUsage},
		{[]string{"deploy", "web", "--image", "x", "--mode", "daemon", "--advertise", "127.0.0.1:5000"}, exitUsage},
		{[]string{"deploy", "web", "--image", "x", "--secret", "novalue"}, exitUsage},
		{[]string{"deploy", "web", "--image", "x", "--subnet", "10.0.0.0/24"}, exitUsage},
		{[]string{"deploy", "-f", "missing.yaml", "--advertise", "127.0.0.1:5000"}, exitUsage},
		{[]string{"deploy", "web", "--image", "x", "--prepull", "--prepull-parallelism", "-1", "--advertise", "127.0.0.1:5000"}, exitUsage},
		{[]string{"node", "label", "n1"}, exitUsage},
		{[]string{"rollback"}, exitUsage},
		{[]string{"rm"}, exitUsage},
		{[]string{"rollback", "web", "--registry", "127.0.0.1:5000"}, exitUsage}, // rollback never used --registry
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			if got := run(t.Context(), tc.args, streams{Out: &out, Err: &errb}); got != tc.want {
				t.Errorf("exit %d, want %d; stderr %q", got, tc.want, errb.String())
			}
		})
	}
}

// TestLayoutFlagDefaultsAgree: `labreg deploy` looks for the OCI layout
// where `labreg build --no-push` writes it when neither is told --layout.
func TestLayoutFlagDefaultsAgree(t *testing.T) {
	s := streams{In: strings.NewReader(""), Out: io.Discard, Err: io.Discard}
	b := newBuildCmd(s).Flags().Lookup("layout")
	d := newDeployCmd(s).Flags().Lookup("layout")
	if b == nil || d == nil || b.DefValue != d.DefValue {
		t.Fatalf("build --layout %v, deploy --layout %v: want the same default", b, d)
	}
}
