package registry_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"
	"github.com/opencontainers/go-digest"

	"github.com/labreg/labreg/internal/testenv"
)

// s3BenchSize is the blob BenchmarkS3Blob moves: 256 MiB (#11 acceptance
// 8); 4 MiB under LABREG_BENCH_SMALL=1.
var s3BenchSize = testenv.BenchSize[int64](256<<20, 4<<20)

// BenchmarkS3Blob (#11 acceptance 8) pushes and pulls a 256 MiB blob
// through labreg and through distribution's own registry binary
// (testenv.DistributionBinary, built from the module labreg embeds) on
// one versitygw store, and GETs the stored object straight from the
// store (the pull baseline). Contenders:
//
//	direct           GetObject from the store (pull only)
//	distribution     distribution's `registry serve` on its own bucket, s3
//	                 driver with the same settings as labreg's, redirect off,
//	                 its example config's in-memory blob-descriptor cache
//	labreg           `labreg serve --storage s3://…` (redirect off)
//	labreg-redirect  the same with &redirect=true: blob GETs are answered
//	                 with a presigned URL of the store (pull only)
//
// Both registries run as separate processes, labreg as `labreg serve`
// built from this module: in the benchmark's process labreg would share
// its garbage collector and CPUs with the clients and the 256 MiB blob,
// and distribution would not, so the comparison would not be like for like.
//
// Every round pushes new content (a fresh digest) to both registries,
// then pulls it from every contender, contenders in a rotating order;
// the round's objects are deleted after it. Reported: median MB/s of
// every contender and ratios of medians; the conditions (CPUs, load, TCP
// congestion control, which all processes use alike) are logged. Run:
//
//	go test -run '^$' -bench S3Blob -benchtime 5x ./registry/
func BenchmarkS3Blob(b *testing.B) {
	store, bucket := testenv.S3(b)
	_, distBucket := testenv.S3(b)
	secret := writeSecret(b, strings.Repeat("bench!!!", 8))
	access, secretKey := store.KeyFiles(b)
	serve := func(storage string) string {
		return testenv.Serve(b, "", "--storage", storage, "--s3-access-key-file", access,
			"--s3-secret-key-file", secretKey, "--http-secret-file", secret).Addr
	}
	labreg := serve(store.URL(bucket))
	labregRedirect := serve(store.URL(bucket) + "&redirect=true")
	dist := testenv.StartDistribution(b, fmt.Sprintf(`s3:
  bucket: %s
  region: %s
  regionendpoint: %s
  forcepathstyle: true
  secure: false
  v4auth: true
  accesskey: %s
  secretkey: %s
redirect:
  disable: true
delete:
  enabled: true
cache:
  blobdescriptor: inmemory
`, distBucket, store.Region, store.Endpoint, store.AccessKey, store.SecretKey)).Addr

	blob := make([]byte, s3BenchSize)
	if _, err := rand.Read(blob); err != nil {
		b.Fatal(err)
	}
	sess := session.Must(session.NewSession(&aws.Config{
		Endpoint: aws.String(store.Endpoint), Region: aws.String(store.Region), S3ForcePathStyle: aws.Bool(true),
		Credentials: credentials.NewStaticCredentials(store.AccessKey, store.SecretKey, ""),
	}))
	direct := s3.New(sess)
	key := func(d digest.Digest) string {
		return "docker/registry/v2/blobs/sha256/" + d.Encoded()[:2] + "/" + d.Encoded() + "/data"
	}

	var d digest.Digest // this round's blob
	pushes := []struct {
		name, base string
	}{{"distribution", "http://" + dist}, {"labreg", "http://" + labreg}}
	pulls := []struct {
		name string
		get  func() (int64, error)
	}{
		{"direct", func() (int64, error) {
			out, err := direct.GetObject(&s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key(d))})
			if err != nil {
				return 0, err
			}
			defer out.Body.Close()
			return io.Copy(io.Discard, out.Body)
		}},
		{"distribution", func() (int64, error) { return s3BenchGet("http://" + dist + "/v2/bench/blob/blobs/" + d.String()) }},
		{"labreg", func() (int64, error) { return s3BenchGet("http://" + labreg + "/v2/bench/blob/blobs/" + d.String()) }},
		{"labreg-redirect", func() (int64, error) {
			return s3BenchGet("http://" + labregRedirect + "/v2/bench/blob/blobs/" + d.String())
		}},
	}
	pushTimes := make([][]time.Duration, len(pushes))
	pullTimes := make([][]time.Duration, len(pulls))
	cond := benchConditions()
	round := 0
	for b.Loop() {
		round++
		copy(blob, fmt.Sprintf("%016d", round)) // new content, new digest
		d = digest.FromBytes(blob)
		for k := range pushes {
			i := (k + round) % len(pushes)
			start := time.Now()
			if err := s3BenchPush(pushes[i].base, "bench/blob", blob, d); err != nil {
				b.Fatalf("push to %s: %v", pushes[i].name, err)
			}
			pushTimes[i] = append(pushTimes[i], time.Since(start))
		}
		for k := range pulls {
			i := (k + round) % len(pulls)
			start := time.Now()
			n, err := pulls[i].get()
			if err == nil && n != s3BenchSize {
				err = fmt.Errorf("%d bytes", n)
			}
			if err != nil {
				b.Fatalf("pull from %s: %v", pulls[i].name, err)
			}
			pullTimes[i] = append(pullTimes[i], time.Since(start))
		}
		for _, bk := range []string{bucket, distBucket} {
			if _, err := direct.DeleteObject(&s3.DeleteObjectInput{Bucket: aws.String(bk), Key: aws.String(key(d))}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	rate := func(ds []time.Duration) float64 { return float64(s3BenchSize) / 1e6 / medianOf(ds).Seconds() }
	b.Logf("S3 blob, %d MiB, %d round(s), medians; %s, then load %s", s3BenchSize>>20, round, cond, loadAvg())
	for i, c := range pushes {
		b.ReportMetric(rate(pushTimes[i]), "push-"+c.name+"-MB/s")
		b.Logf("  push %-16s %7.1f MB/s", c.name, rate(pushTimes[i]))
	}
	b.ReportMetric(rate(pushTimes[1])/rate(pushTimes[0]), "push-labreg/distribution")
	for i, c := range pulls {
		b.ReportMetric(rate(pullTimes[i]), "pull-"+c.name+"-MB/s")
		b.Logf("  pull %-16s %7.1f MB/s", c.name, rate(pullTimes[i]))
	}
	b.ReportMetric(rate(pullTimes[2])/rate(pullTimes[1]), "pull-labreg/distribution")
	b.ReportMetric(rate(pullTimes[3])/rate(pullTimes[0]), "pull-labreg-redirect/direct")
	b.Logf("  push labreg/distribution %.2f, pull labreg/distribution %.2f, pull labreg-redirect/direct %.2f",
		rate(pushTimes[1])/rate(pushTimes[0]), rate(pullTimes[2])/rate(pullTimes[1]), rate(pullTimes[3])/rate(pullTimes[0]))
}

// medianOf is the median of v (the mean of the middle two of an even
// count) for the benchmarks' figures.
func medianOf[T ~int64 | ~float64](v []T) T {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// benchConditions describes the machine a benchmark of processes runs on:
// CPUs, load now and the TCP congestion control every process here uses
// (the system's: the registries' processes cannot be given another).
func benchConditions() string {
	cc, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control")
	return fmt.Sprintf("%d CPUs, GOMAXPROCS %d, load %s, TCP congestion control %s",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), loadAvg(), strings.TrimSpace(string(cc)))
}

// loadAvg is the 1, 5 and 15-minute load averages ("?" where unknown).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}

// s3BenchPush uploads content monolithically (POST, then PUT with the body).
func s3BenchPush(base, repo string, content []byte, d digest.Digest) error {
	resp, err := http.Post(base+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("POST: %s", resp.Status)
	}
	loc := resp.Header.Get("Location")
	if strings.HasPrefix(loc, "/") {
		loc = base + loc
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	req, _ := http.NewRequest(http.MethodPut, loc+sep+"digest="+d.String(), bytes.NewReader(content))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("PUT: %s", resp.Status)
	}
	return nil
}

// s3BenchGet GETs u (following a redirect to the store) and counts the bytes.
func s3BenchGet(u string) (int64, error) {
	resp, err := http.Get(u)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET: %s", resp.Status)
	}
	return io.Copy(io.Discard, resp.Body)
}
