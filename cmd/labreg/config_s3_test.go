package main

import (
	"strings"
	"testing"
)

// TestConfigStorageSettings: `labreg config` shows the storage settings and
// never a secret; shared storage without an HTTP secret file is refused
// with the key named.
func TestConfigStorageSettings(t *testing.T) {
	code, out, errs := runCLI(t, "config", "--storage", "s3://reg/lab?endpoint=http://127.0.0.1:7070",
		"--http-secret-file", "/run/secrets/http", "--redis", "redis://lab:hunter2@10.0.0.5:6379")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{
		`storage: "s3://reg/lab?endpoint=http://127.0.0.1:7070"  # LABREG_STORAGE, --storage`,
		`http_secret_file: "/run/secrets/http"  # LABREG_HTTP_SECRET_FILE, --http-secret-file`,
		`s3_access_key_file: ""  # LABREG_S3_ACCESS_KEY_FILE, --s3-access-key-file`,
		`redis: "redis://lab:REDACTED@10.0.0.5:6379"  # LABREG_REDIS, --redis`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("labreg config lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "hunter2") {
		t.Errorf("labreg config shows the Redis password:\n%s", out)
	}

	code, _, errs = runCLI(t, "config", "--storage", "s3://reg?endpoint=http://127.0.0.1:7070")
	if code == 0 || !strings.Contains(errs, "registry.http_secret_file: required with shared storage") {
		t.Errorf("shared storage without a secret: exit %d, stderr %q", code, errs)
	}
}
