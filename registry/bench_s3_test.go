package registry_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"
	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/opencontainers/go-digest"

	"github.com/labreg/labreg/internal/testenv"
	"github.com/labreg/labreg/registry"
)

// s3BenchSize is the blob BenchmarkS3Blob moves: 256 MiB (#11 acceptance 8).
const s3BenchSize = 256 << 20

// BenchmarkS3Blob pushes and pulls a 256 MiB blob on one versitygw bucket
// through labreg (redirect off and on) and through distribution's own
// registry app (handlers.NewApp, what its registry binary serves, with
// the same s3-aws driver settings), and GETs the stored object straight
// from the store (the pull baseline). Contenders run interleaved in one
// loop; each push sends new content (a fresh digest), so no contender
// finds the blob already stored.
func BenchmarkS3Blob(b *testing.B) {
	store, bucket := testenv.S3(b)
	secret := writeSecret(b, strings.Repeat("bench!!!", 8))
	access, secretKey := store.KeyFiles(b)
	opts := registry.Options{Storage: store.URL(bucket), S3AccessKeyFile: access, S3SecretKeyFile: secretKey, HTTPSecretFile: secret}
	labreg, _ := testenv.Registry(b, opts)
	opts.Storage += "&redirect=true"
	labregRedirect, _ := testenv.Registry(b, opts)

	cfg := &configuration.Configuration{}
	cfg.Version = configuration.MajorMinorVersion(0, 1)
	cfg.Log.Level = "error"
	cfg.Log.AccessLog.Disabled = true
	cfg.HTTP.Secret = strings.Repeat("bench!!!", 8)
	cfg.Storage = configuration.Storage{
		"s3": configuration.Parameters{"bucket": bucket, "region": store.Region, "accesskey": store.AccessKey,
			"secretkey": store.SecretKey, "regionendpoint": store.Endpoint, "forcepathstyle": true, "secure": false, "v4auth": true},
		"delete":   configuration.Parameters{"enabled": true},
		"redirect": configuration.Parameters{"disable": true},
	}
	app := handlers.NewApp(context.Background(), cfg)
	dist := httptest.NewServer(app)
	b.Cleanup(dist.Close)
	b.Cleanup(func() { app.Shutdown() })

	blob := make([]byte, s3BenchSize)
	if _, err := rand.Read(blob); err != nil {
		b.Fatal(err)
	}
	fresh := func(i int) digest.Digest { // new content, new digest
		copy(blob, fmt.Sprintf("%016d", i))
		return digest.FromBytes(blob)
	}
	sess := session.Must(session.NewSession(&aws.Config{
		Endpoint: aws.String(store.Endpoint), Region: aws.String(store.Region), S3ForcePathStyle: aws.Bool(true),
		Credentials: credentials.NewStaticCredentials(store.AccessKey, store.SecretKey, ""),
	}))
	direct := s3.New(sess)

	push := []struct {
		name, base string
	}{{"distribution", dist.URL}, {"labreg", "http://" + labreg}}
	b.Run("push", func(b *testing.B) {
		ds := make([]time.Duration, len(push))
		n := 0
		for b.Loop() {
			for i, c := range push {
				n++
				d := fresh(n)
				start := time.Now()
				if err := s3BenchPush(c.base, "bench/push", blob, d); err != nil {
					b.Fatalf("%s: %v", c.name, err)
				}
				ds[i] += time.Since(start)
			}
		}
		s3ReportRates(b, push[0].name, ds[0], push[1].name, ds[1])
	})

	d := fresh(0)
	if err := s3BenchPush("http://"+labreg, "bench/pull", blob, d); err != nil {
		b.Fatal(err)
	}
	key := "docker/registry/v2/blobs/sha256/" + d.Encoded()[:2] + "/" + d.Encoded() + "/data"
	pulls := []struct {
		name string
		get  func() (int64, error)
	}{
		{"direct", func() (int64, error) {
			out, err := direct.GetObject(&s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
			if err != nil {
				return 0, err
			}
			defer out.Body.Close()
			return io.Copy(io.Discard, out.Body)
		}},
		{"distribution", func() (int64, error) { return s3BenchGet(dist.URL + "/v2/bench/pull/blobs/" + d.String()) }},
		{"labreg", func() (int64, error) { return s3BenchGet("http://" + labreg + "/v2/bench/pull/blobs/" + d.String()) }},
		{"labreg-redirect", func() (int64, error) {
			return s3BenchGet("http://" + labregRedirect + "/v2/bench/pull/blobs/" + d.String())
		}},
	}
	b.Run("pull", func(b *testing.B) {
		ds := make([]time.Duration, len(pulls))
		for b.Loop() {
			for i, c := range pulls {
				start := time.Now()
				n, err := c.get()
				if err == nil && n != s3BenchSize {
					err = fmt.Errorf("%d bytes", n)
				}
				if err != nil {
					b.Fatalf("%s: %v", c.name, err)
				}
				ds[i] += time.Since(start)
			}
		}
		mb := float64(s3BenchSize) * float64(b.N) / 1e6
		base := mb / ds[0].Seconds()
		b.ReportMetric(base, pulls[0].name+"-MB/s")
		for i := 1; i < len(pulls); i++ {
			r := mb / ds[i].Seconds()
			b.ReportMetric(r, pulls[i].name+"-MB/s")
			b.ReportMetric(r/base, pulls[i].name+"/direct")
		}
		b.ReportMetric(ds[1].Seconds()/ds[2].Seconds(), "labreg/distribution")
	})
}

func s3ReportRates(b *testing.B, baseName string, base time.Duration, name string, d time.Duration) {
	mb := float64(s3BenchSize) * float64(b.N) / 1e6
	b.ReportMetric(mb/base.Seconds(), baseName+"-MB/s")
	b.ReportMetric(mb/d.Seconds(), name+"-MB/s")
	b.ReportMetric(base.Seconds()/d.Seconds(), name+"/"+baseName)
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
