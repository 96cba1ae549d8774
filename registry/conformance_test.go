package registry_test

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// The OCI distribution-spec conformance suite, pinned. It is a main
// package (no ginkgo): it reads OCI_* settings, runs every test and writes
// results/junit.xml; its exit code is not relied on here.
const (
	conformancePkg     = "github.com/opencontainers/distribution-spec/conformance"
	conformanceVersion = "v0.0.0-20260831232431-97274622c111"
)

// conformanceEnv is the suite's configuration: every API and data set it
// has that labreg claims, on top of its defaults (which already enable
// referrers, subject, sha512, non-distributable layers, custom fields,
// empty blobs...). Left at their defaults (off): sparse manifests (the
// spec lets a registry reject manifests whose blobs were never pushed;
// distribution does, and so does labreg) and tag query parameters on
// manifest PUT (a draft distribution-spec feature).
var conformanceEnv = []string{
	"OCI_TLS=disabled",
	"OCI_VERSION=1.1",
	"OCI_API_PULL=true",
	"OCI_API_PUSH=true",
	"OCI_API_BLOBS_ATOMIC=true",
	"OCI_API_BLOBS_DELETE=true",
	"OCI_API_BLOBS_DIGEST_HEADER=true",
	"OCI_API_BLOBS_MOUNT_ANONYMOUS=true",
	"OCI_API_BLOBS_UPLOAD_CANCEL=true",
	"OCI_API_MANIFESTS_ATOMIC=true",
	"OCI_API_MANIFESTS_DELETE=true",
	"OCI_API_MANIFESTS_DIGEST_HEADER=true",
	"OCI_API_TAGS_ATOMIC=true",
	"OCI_API_TAGS_DELETE=true",
	"OCI_API_TAGS_LIST=true",
	"OCI_API_REFERRER=true",
	"OCI_DATA_IMAGE=true",
	"OCI_DATA_INDEX=true",
	"OCI_DATA_INDEX_LIST=true",
	"OCI_DATA_ARTIFACT=true",
	"OCI_DATA_SUBJECT=true",
	"OCI_DATA_SUBJECT_MISSING=true",
	"OCI_DATA_ARTIFACT_LIST=true",
	"OCI_DATA_SUBJECT_LIST=true",
	"OCI_DATA_DATA_FIELD=true",
	"OCI_DATA_NONDISTRIBUTABLE=true",
	"OCI_DATA_CUSTOM_FIELDS=true",
	"OCI_DATA_NO_LAYERS=true",
	"OCI_DATA_EMPTY_BLOB=true",
	"OCI_DATA_SHA512=true",
	"OCI_LOG=warn", // failed tests with their reasons
}

// TestConformance runs the OCI distribution-spec conformance suite against
// `labreg serve` with default settings and requires 0 failures. The
// reference distribution 3.1.2 fails 91 of its tests (referrers, subject,
// sha512).
func TestConformance(t *testing.T) {
	runConformance(t, testenv.Serve(t, "").Addr)
}

// TestConformanceS3 runs the same suite against a registry on S3 storage
// (versitygw, a bucket of its own): labreg's referrers index, sha512
// aliases and upload cleanup go through the storage driver, so nothing it
// adds may depend on a local filesystem. 0 failures.
func TestConformanceS3(t *testing.T) {
	store, bucket := testenv.S3(t)
	access, secret := store.KeyFiles(t)
	secretFile := filepath.Join(t.TempDir(), "http-secret")
	if err := os.WriteFile(secretFile, []byte(strings.Repeat("conformance", 4)), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, _ := testenv.Registry(t, registry.Options{
		Storage: store.URL(bucket), S3AccessKeyFile: access, S3SecretKeyFile: secret, HTTPSecretFile: secretFile,
	})
	runConformance(t, addr)
}

// runConformance runs the suite against the registry at addr and fails t
// on any failure.
func runConformance(t *testing.T, addr string) {
	t.Helper()
	suite := conformanceBinary(t)
	results := filepath.Join(t.TempDir(), "results")
	cmd := exec.CommandContext(t.Context(), suite)
	cmd.Dir = t.TempDir() // no oci-conformance.yaml there
	cmd.Env = append(testenv.EnvWithout("OCI_"), conformanceEnv...)
	cmd.Env = append(cmd.Env, "OCI_REGISTRY="+addr, "OCI_RESULTS_DIR="+results)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	t.Logf("conformance suite ran in %s (exit: %v)", time.Since(start).Round(time.Millisecond), err)

	rep, perr := readJUnit(filepath.Join(results, "junit.xml"))
	if perr != nil {
		t.Fatalf("reading the suite's results: %v\nsuite output:\n%s", perr, confTail(out.String(), 4000))
	}
	counts := map[string]int{}
	var failed []string
	for _, tc := range rep.cases() {
		counts[tc.Status]++
		if tc.Status == "failure" || tc.Status == "error" || tc.Failure != nil || tc.Error != nil {
			failed = append(failed, tc.Name)
		}
	}
	t.Logf("junit.xml: %d tests, %d failures, %d errors, %d skipped, %d disabled; test cases by status: %v",
		rep.Tests, rep.Failures, rep.Errors, rep.Skipped, rep.Disabled, counts)
	if n := rep.Failures + rep.Errors; n > 0 || len(failed) > 0 {
		t.Errorf("%d conformance failures (%d failing test cases):\n  %s\nsuite output:\n%s",
			n, len(failed), strings.Join(failed, "\n  "), confTail(out.String(), 8000))
	}
	// The suite must really have run: a registry that answers nothing
	// would otherwise "pass" with every test skipped.
	if rep.Tests < 800 || counts["passed"] < 600 {
		t.Errorf("suite ran %d tests, %d test cases passed; expected over 800 and 600\n%s",
			rep.Tests, counts["passed"], confTail(out.String(), 4000))
	}
}

// conformanceBinary builds the pinned conformance suite in a throwaway
// module (this needs the Go module proxy) and caches the binary in the
// user cache dir, keyed by version. A failed build fails the test.
func conformanceBinary(t *testing.T) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "labreg", "oci-conformance-"+conformanceVersion)
	bin := filepath.Join(dir, "conformance")
	if st, err := os.Stat(bin); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
		return bin
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("no cache for the conformance suite (%v): building it for this run only", err)
		dir = t.TempDir()
		bin = filepath.Join(dir, "conformance")
	}
	mod := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	tmpBin := filepath.Join(dir, fmt.Sprintf(".conformance-%d", os.Getpid()))
	steps := [][]string{
		{"go", "mod", "init", "labreg.test/conformance"},
		{"go", "get", conformancePkg + "@" + conformanceVersion},
		{"go", "build", "-o", tmpBin, conformancePkg},
	}
	for _, s := range steps {
		cmd := exec.CommandContext(ctx, s[0], s[1:]...)
		cmd.Dir = mod
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			os.Remove(tmpBin)
			t.Fatalf("building the OCI conformance suite: %s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	if err := os.Rename(tmpBin, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

// junitReport is the part of the suite's junit.xml read here.
type junitReport struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Errors   int          `xml:"errors,attr"`
	Skipped  int          `xml:"skipped,attr"`
	Disabled int          `xml:"disabled,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Cases []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name    string    `xml:"name,attr"`
	Status  string    `xml:"status,attr"`
	Failure *struct{} `xml:"failure"`
	Error   *struct{} `xml:"error"`
}

func (r *junitReport) cases() []junitCase {
	var out []junitCase
	for _, s := range r.Suites {
		out = append(out, s.Cases...)
	}
	return out
}

func readJUnit(path string) (*junitReport, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r junitReport
	if err := xml.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(r.Suites) == 0 {
		return nil, errors.New(path + ": no test suites")
	}
	return &r, nil
}

func confTail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
