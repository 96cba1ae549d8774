package config

import (
	"strings"
	"testing"
)

func TestParseStorage(t *testing.T) {
	tests := []struct {
		in   string
		want Storage
		err  string
	}{
		{in: "", want: Storage{}},
		{in: "filesystem", want: Storage{}},
		{in: "s3://reg?endpoint=http://127.0.0.1:7070", want: Storage{S3: true, Bucket: "reg", Endpoint: "http://127.0.0.1:7070", Region: "us-east-1"}},
		{in: "s3://reg/lab/one?endpoint=https://s3.lab:9000/&region=eu-west-3&redirect=true",
			want: Storage{S3: true, Bucket: "reg", Prefix: "lab/one", Endpoint: "https://s3.lab:9000", Region: "eu-west-3", Redirect: true}},
		{in: "s3://reg?region=eu-west-3", want: Storage{S3: true, Bucket: "reg", Region: "eu-west-3"}},
		{in: "s3://reg", err: "region= is required"},
		{in: "s3://AK:SK@reg?region=x", err: "credentials do not belong"},
		{in: "s3://Bad_Bucket?region=x", err: "not an S3 bucket name"},
		{in: "s3://reg?endpoint=ftp://x", err: "not an http:// or https:// URL"},
		{in: "s3://reg?endpoint=http://x/path", err: "only scheme, host and port"},
		{in: "s3://reg?region=x&redirect=maybe", err: "redirect="},
		{in: "s3://reg?region=x&bucket=y", err: `unknown storage parameter "bucket"`},
		{in: "/var/lib/labreg", err: "neither filesystem nor s3://"},
	}
	for _, tt := range tests {
		got, err := ParseStorage(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseStorage(%q) = %v, want an error with %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseStorage(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			continue
		}
		// What String renders parses back to the same storage.
		if back, err := ParseStorage(got.String()); err != nil || back != got {
			t.Errorf("ParseStorage(%q).String() = %q parses to %+v, %v", tt.in, got.String(), back, err)
		}
	}
}

func TestStorageSettingsErrorsNameTheKey(t *testing.T) {
	tests := []struct {
		name  string
		flags map[string]string
		env   map[string]string
		want  string
	}{
		{"bad storage", map[string]string{"storage": "s3://reg"}, nil, "registry.storage: region= is required"},
		{"shared without secret", map[string]string{"storage": "s3://reg?region=x"}, nil, "registry.http_secret_file: required with shared storage"},
		{"one key file", map[string]string{"s3-access-key-file": "/a"}, nil, "registry.s3_access_key_file and registry.s3_secret_key_file"},
		{"bad redis", nil, map[string]string{"LABREG_REDIS": "localhost:6379"}, "registry.redis: not redis://"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(Sources{Env: envOf(tt.env), Flags: tt.flags})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load = %v, want an error with %q", err, tt.want)
			}
		})
	}
	c, err := Load(Sources{Env: envOf(map[string]string{"LABREG_STORAGE": "s3://reg?endpoint=http://127.0.0.1:7070", "LABREG_HTTP_SECRET_FILE": "/run/secrets/http"})})
	if err != nil {
		t.Fatalf("Load with s3 storage and a secret file: %v", err)
	}
	if c.Registry.Storage != "s3://reg?endpoint=http://127.0.0.1:7070" {
		t.Errorf("registry.storage = %q", c.Registry.Storage)
	}
}

func TestRedisPasswordIsRedacted(t *testing.T) {
	c, err := Load(Sources{Env: envOf(nil), Flags: map[string]string{"redis": "redis://lab:hunter2@10.0.0.5:6379/1"}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Registry.Redis != "redis://lab:hunter2@10.0.0.5:6379/1" {
		t.Errorf("registry.redis = %q: the value itself must stay intact", c.Registry.Redis)
	}
	out, err := c.YAML()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "hunter2") || !strings.Contains(string(out), "redis://lab:REDACTED@10.0.0.5:6379/1") {
		t.Errorf("labreg config shows:\n%s", out)
	}
	for _, f := range c.Fields() {
		if strings.Contains(f.String(), "hunter2") {
			t.Errorf("%s displays the password", f.Key)
		}
	}
	r, err := ParseRedis(c.Registry.Redis)
	if err != nil || r != (Redis{Addr: "10.0.0.5:6379", Username: "lab", Password: "hunter2", DB: 1}) {
		t.Errorf("ParseRedis = %+v, %v", r, err)
	}
}
