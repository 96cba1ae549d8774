package registry

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/aws/aws-sdk-go/aws/awserr"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/distribution/distribution/v3/configuration"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"

	"github.com/labreg/labreg/config"
	"github.com/labreg/labreg/registry/cluster"

	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws" // s3:// storage
)

// backend is the registry's one storage: the driver labreg's own code
// uses and the section distribution's app builds its driver from, both
// made from the same values here.
type backend struct {
	spec   config.Storage
	driver storagedriver.StorageDriver
	// name and params are distribution's storage driver and its
	// parameters (credentials included: never log them).
	name   string
	params configuration.Parameters
}

// openBackend builds the storage driver that opts describe and, for a
// shared store, checks that the bucket answers to the credentials.
func openBackend(ctx context.Context, opts Options) (*backend, error) {
	spec, err := config.ParseStorage(opts.Storage)
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	st := &backend{spec: spec}
	if !spec.S3 {
		st.name = "filesystem"
		st.params = configuration.Parameters{"rootdirectory": filepath.Join(opts.DataDir, "storage")}
	} else {
		access, secret, err := s3Credentials(opts)
		if err != nil {
			return nil, fmt.Errorf("storage %s: %w", spec, err)
		}
		st.name = "s3"
		st.params = configuration.Parameters{
			"bucket":    spec.Bucket,
			"region":    spec.Region,
			"accesskey": access,
			"secretkey": secret,
			"v4auth":    true,
		}
		if spec.Prefix != "" {
			st.params["rootdirectory"] = "/" + spec.Prefix
		}
		if spec.Endpoint != "" {
			st.params["regionendpoint"] = spec.Endpoint
			st.params["forcepathstyle"] = true
			st.params["secure"] = strings.HasPrefix(spec.Endpoint, "https://")
		}
	}
	if st.driver, err = factory.Create(ctx, st.name, st.params); err != nil {
		return nil, fmt.Errorf("storage %s: %w", spec, err)
	}
	return st, nil
}

// fsRoot is the root directory of a filesystem store; ok is false for
// any other driver. The filesystem-only fast paths use it.
func (st *backend) fsRoot() (root string, ok bool) {
	if st.name != "filesystem" {
		return "", false
	}
	root, _ = st.params["rootdirectory"].(string)
	return root, root != ""
}

// cas is the shared store as the cluster's compare-and-swap and change
// signal, with the same bucket, prefix and credentials as the driver.
func (st *backend) cas() (*cluster.S3, error) {
	str := func(k string) string { v, _ := st.params[k].(string); return v }
	return cluster.NewS3(cluster.S3Config{Bucket: str("bucket"), Region: str("region"), Endpoint: str("regionendpoint"),
		Prefix: str("rootdirectory"), AccessKey: str("accesskey"), Secret: str("secretkey")})
}

// section is distribution's storage configuration for the same driver.
func (st *backend) section() configuration.Storage {
	s := configuration.Storage{st.name: st.params}
	if st.spec.S3 {
		// distribution redirects blob GETs to presigned URLs unless told
		// not to. With the redirect the store sends the bytes, not labreg;
		// without it distribution copies the store's HTTP reply body to
		// the client: bytes that arrive through user space (an HTTP body,
		// TLS to real S3) have no file for sendfile or splice to take.
		s["redirect"] = configuration.Parameters{"disable": !st.spec.Redirect}
	}
	return s
}

// s3Credentials reads the key files named in opts, else the standard AWS
// places: the environment, then the shared credentials file. Instance
// metadata is not asked (no network traffic beyond the store).
func s3Credentials(opts Options) (access, secret string, err error) {
	if opts.S3AccessKeyFile != "" || opts.S3SecretKeyFile != "" {
		if access, err = readSecretFile("S3 access key file", opts.S3AccessKeyFile); err != nil {
			return "", "", err
		}
		if secret, err = readSecretFile("S3 secret key file", opts.S3SecretKeyFile); err != nil {
			return "", "", err
		}
		return access, secret, nil
	}
	v, err := credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvProvider{},
		&credentials.SharedCredentialsProvider{},
	}).Get()
	if err != nil {
		return "", "", errors.New("no S3 credentials: set registry.s3_access_key_file and registry.s3_secret_key_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or write ~/.aws/credentials")
	}
	return v.AccessKeyID, v.SecretAccessKey, nil
}

// readSecretFile reads a one-line secret; what names it in errors.
func readSecretFile(what, path string) (string, error) {
	if path == "" {
		return "", fmt.Errorf("%s: not set", what)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s %s is empty", what, path)
	}
	return s, nil
}

// checkShared probes a shared store with the credentials (a missing bucket
// or a refused key is one line here, not a 500 later) and checks that
// every replica signs upload state with the same HTTP secret: the first
// replica on a bucket records the secret's HMAC, later ones must match it.
// To change the secret, stop every replica and delete the object.
func (st *backend) checkShared(ctx context.Context, secret string) error {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte("labreg http secret"))
	want := hex.EncodeToString(mac.Sum(nil))
	got, err := st.driver.GetContent(ctx, secretCheckPath)
	var nf storagedriver.PathNotFoundError
	if errors.As(err, &nf) {
		// The first replica records it; of two first replicas at once
		// the store lets one create it (a conditional write), and the
		// other compares with it.
		cas, cerr := st.cas()
		if cerr != nil {
			return cerr
		}
		if _, err = cas.Create(ctx, secretCheckPath, []byte(want)); err == nil {
			return nil
		}
		if !errors.Is(err, cluster.ErrConflict) {
			return st.explain(err)
		}
		got, err = st.driver.GetContent(ctx, secretCheckPath)
	}
	switch {
	case err != nil:
		return st.explain(err)
	case strings.TrimSpace(string(got)) != want:
		return fmt.Errorf("http secret file: the replicas already on %s use another HTTP secret; give every replica the same registry.http_secret_file", st.spec)
	}
	return nil
}

// explain turns a store error into one line that says what to fix.
func (st *backend) explain(err error) error {
	var de storagedriver.Error
	if errors.As(err, &de) && de.Detail != nil {
		err = de.Detail
	}
	var ae awserr.Error
	if !errors.As(err, &ae) {
		return fmt.Errorf("storage %s: %w", st.spec, err)
	}
	switch ae.Code() {
	case "NoSuchBucket":
		return fmt.Errorf("storage %s: bucket %q does not exist", st.spec, st.spec.Bucket)
	case "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidClientTokenId", "Forbidden":
		return fmt.Errorf("storage %s: the store refused the S3 credentials (%s)", st.spec, ae.Code())
	}
	if o := ae.OrigErr(); o != nil { // RequestError: the store did not answer
		var ue *url.Error
		if errors.As(o, &ue) {
			o = ue.Err
		}
		return fmt.Errorf("storage %s: cannot reach the store: %v", st.spec, o)
	}
	return fmt.Errorf("storage %s: %s: %s", st.spec, ae.Code(), ae.Message())
}

// StorageUsed is the size of everything in the registry's storage (blobs,
// links, uploads in progress, labreg's own index), walked through the
// storage driver: on a shared store it is the whole cluster's.
func (c *Catalog) StorageUsed(ctx context.Context) (int64, error) {
	var n int64
	err := c.driver.Walk(ctx, "/", func(fi storagedriver.FileInfo) error {
		if !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	if isPathNotFound(err) {
		return 0, nil
	}
	return n, err
}
