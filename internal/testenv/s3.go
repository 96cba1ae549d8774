package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"
)

// S3Store is an S3-compatible store (versitygw) on 127.0.0.1, one per
// test binary, shared by the tests of that binary; each test gets its own
// bucket. WorkerS3's store listens on every address instead.
type S3Store struct {
	// Endpoint is http://127.0.0.1:PORT.
	Endpoint string
	// Port is the store's PORT.
	Port string
	// AccessKey and SecretKey are the store's root credentials.
	AccessKey, SecretKey string
	// Region is the store's region, us-east-1.
	Region string
	client *s3.S3
	pid    int
}

// Pid is the store's process id (to read its /proc/PID files, e.g. the
// bytes it has sent).
func (s *S3Store) Pid() int { return s.pid }

// sharedS3 is one versitygw of the test binary, started on first use.
type sharedS3 struct {
	once  sync.Once
	store *S3Store
	err   error
}

var (
	s3Loopback, s3Every sharedS3
	s3Buckets           atomic.Int64
)

// S3 returns the test binary's versitygw on 127.0.0.1, started on first
// use, and a fresh empty bucket for this test, removed with its objects at
// the end. versitygw is $LABREG_VERSITYGW (set by .ci/run) or versitygw in
// PATH; without it the test skips loudly, or fails under LABREG_E2E=1.
func S3(t testing.TB) (*S3Store, string) {
	t.Helper()
	return s3Loopback.bucket(t, "127.0.0.1", "loopback")
}

// WorkerS3 is S3 with a versitygw listening on every address (its own,
// one per test binary), so that worker nodes and their containers reach it
// at Node.HostIP:PORT (URLAt) while the test uses 127.0.0.1:PORT.
func WorkerS3(t testing.TB) (*S3Store, string) {
	t.Helper()
	return s3Every.bucket(t, "0.0.0.0", "every")
}

func (sh *sharedS3) bucket(t testing.TB, host, name string) (*S3Store, string) {
	t.Helper()
	bin := Binary(t, "LABREG_VERSITYGW", "versitygw", "versitygw (S3-compatible store)",
		"go install github.com/versity/versitygw/cmd/versitygw@v1.8.0")
	sh.once.Do(func() { sh.store, sh.err = startVersitygw(bin, host, name) })
	if sh.err != nil {
		t.Fatalf("starting versitygw: %v", sh.err)
	}
	bucket := fmt.Sprintf("labreg-%d-%d", os.Getpid(), s3Buckets.Add(1))
	if _, err := sh.store.client.CreateBucket(&s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatalf("creating bucket %s: %v", bucket, err)
	}
	t.Cleanup(func() { sh.store.removeBucket(bucket) })
	return sh.store, bucket
}

// URL is the registry.storage value for bucket on this store.
func (s *S3Store) URL(bucket string) string {
	return "s3://" + bucket + "?endpoint=" + s.Endpoint + "&region=" + s.Region
}

// URLAt is URL with the store reached at host (a Node's HostIP) instead
// of 127.0.0.1: only a WorkerS3 store answers there.
func (s *S3Store) URLAt(bucket, host string) string {
	return "s3://" + bucket + "?endpoint=http://" + net.JoinHostPort(host, s.Port) + "&region=" + s.Region
}

// KeyFiles writes the store's credentials to two files (as swarm secrets
// would be) and returns their paths.
func (s *S3Store) KeyFiles(t testing.TB) (access, secret string) {
	t.Helper()
	dir := t.TempDir()
	access, secret = filepath.Join(dir, "s3-access-key"), filepath.Join(dir, "s3-secret-key")
	for p, v := range map[string]string{access: s.AccessKey, secret: s.SecretKey} {
		if err := os.WriteFile(p, []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return access, secret
}

// Objects lists the keys in bucket.
func (s *S3Store) Objects(t testing.TB, bucket string) []string {
	t.Helper()
	var keys []string
	err := s.client.ListObjectsV2Pages(&s3.ListObjectsV2Input{Bucket: aws.String(bucket)},
		func(p *s3.ListObjectsV2Output, _ bool) bool {
			for _, o := range p.Contents {
				keys = append(keys, aws.StringValue(o.Key))
			}
			return true
		})
	if err != nil {
		t.Fatalf("listing bucket %s: %v", bucket, err)
	}
	return keys
}

func (s *S3Store) removeBucket(bucket string) {
	_ = s.client.ListObjectsV2Pages(&s3.ListObjectsV2Input{Bucket: aws.String(bucket)},
		func(p *s3.ListObjectsV2Output, _ bool) bool {
			for _, o := range p.Contents {
				_, _ = s.client.DeleteObject(&s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: o.Key})
			}
			return true
		})
	_, _ = s.client.DeleteBucket(&s3.DeleteBucketInput{Bucket: aws.String(bucket)})
}

// startVersitygw runs `versitygw --port HOST:PORT --access K --secret S
// posix DIR` until the test binary exits (the child dies with it), in
// /tmp/labreg-versitygw-<pid>/<name>; directories of earlier binaries that
// are gone are removed first.
func startVersitygw(bin, host, name string) (*S3Store, error) {
	sweepVersitygwDirs()
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("labreg-versitygw-%d", os.Getpid()), name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	addr := net.JoinHostPort(host, port)
	local := net.JoinHostPort("127.0.0.1", port)
	st := &S3Store{Endpoint: "http://" + local, Port: port, AccessKey: "labregtestaccess", SecretKey: "labregtestsecret0123456789", Region: "us-east-1"}
	cmd := exec.Command(bin, "--port", addr, "--access", st.AccessKey, "--secret", st.SecretKey, "--region", st.Region, "posix", dir)
	logf, err := os.Create(filepath.Join(dir, "versitygw.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	exited, err := startChild(cmd)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", local, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(logf.Name())
			return nil, fmt.Errorf("versitygw exited (%v): %s", cmd.ProcessState, strings.TrimSpace(string(log)))
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("versitygw did not listen on %s within 30s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	sess, err := session.NewSession(aws.NewConfig().
		WithEndpoint(st.Endpoint).WithRegion(st.Region).WithS3ForcePathStyle(true).
		WithCredentials(credentials.NewStaticCredentials(st.AccessKey, st.SecretKey, "")))
	if err != nil {
		return nil, err
	}
	st.client = s3.New(sess)
	st.pid = cmd.Process.Pid
	return st, nil
}

// sweepVersitygwDirs removes the data directories of test binaries that
// have exited.
func sweepVersitygwDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "labreg-versitygw-*"))
	for _, d := range dirs {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), "labreg-versitygw-"))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			os.RemoveAll(d)
		}
	}
}
