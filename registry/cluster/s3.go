package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/awserr"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/request"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"
)

// S3Config says where an S3 store is, as the registry's storage names it.
type S3Config struct {
	Bucket, Region string
	// Endpoint is the store's URL for an S3-compatible store ("" for AWS).
	Endpoint string
	// Prefix is the storage's root directory in the bucket ("" for none),
	// as distribution's s3 driver maps it: key = Prefix + path.
	Prefix            string
	AccessKey, Secret string
}

// S3 is a bucket as a CAS and a Signal.
type S3 struct {
	client *s3.S3
	cfg    S3Config
}

var (
	_ CAS    = (*S3)(nil)
	_ Signal = (*S3)(nil)
)

// requestTimeout bounds one request to the store: a store that hangs
// fails the call instead of holding a lease's renewal forever.
const requestTimeout = 30 * time.Second

// NewS3 opens the bucket cfg names. It makes no request.
func NewS3(cfg S3Config) (*S3, error) {
	c := aws.NewConfig().WithRegion(cfg.Region).
		WithCredentials(credentials.NewStaticCredentials(cfg.AccessKey, cfg.Secret, "")).
		WithHTTPClient(&http.Client{Timeout: requestTimeout}).
		WithMaxRetries(0) // a conditional write is not retried blindly
	if cfg.Endpoint != "" {
		c = c.WithEndpoint(cfg.Endpoint).WithS3ForcePathStyle(true)
	}
	sess, err := session.NewSession(c)
	if err != nil {
		return nil, fmt.Errorf("s3 session: %w", err)
	}
	return &S3{client: s3.New(sess), cfg: cfg}, nil
}

func (s *S3) String() string { return "s3://" + s.cfg.Bucket }

// key maps a storage path ("/labreg/gc/lease") to its object key, as
// distribution's s3 driver does.
func (s *S3) key(p string) *string {
	return aws.String(strings.TrimLeft(strings.TrimRight(s.cfg.Prefix, "/")+"/"+strings.TrimLeft(p, "/"), "/"))
}

// status is the HTTP status of a failed request (0: none).
func status(err error) int {
	var rf awserr.RequestFailure
	if errors.As(err, &rf) {
		return rf.StatusCode()
	}
	return 0
}

func (s *S3) Get(ctx context.Context, key string) ([]byte, string, error) {
	out, err := s.client.GetObjectWithContext(ctx, &s3.GetObjectInput{Bucket: &s.cfg.Bucket, Key: s.key(key)})
	if status(err) == http.StatusNotFound {
		return nil, "", ErrNotExist
	}
	if err != nil {
		return nil, "", fmt.Errorf("reading %s: %w", key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		return nil, "", fmt.Errorf("reading %s: %w", key, err)
	}
	return b, aws.StringValue(out.ETag), nil
}

func (s *S3) put(ctx context.Context, key string, data []byte, hdr map[string]string) (string, error) {
	out, err := s.client.PutObjectWithContext(ctx, &s3.PutObjectInput{
		Bucket: &s.cfg.Bucket, Key: s.key(key), Body: bytes.NewReader(data),
		ContentType: aws.String("application/json"),
	}, request.WithSetRequestHeaders(hdr))
	switch status(err) {
	case 0:
	case http.StatusPreconditionFailed, http.StatusConflict:
		// 409: another conditional write on the key was under way; it
		// or a later one wins, this one did not.
		return "", ErrConflict
	case http.StatusNotFound:
		if hdr["If-Match"] != "" {
			return "", ErrConflict // gone since it was read
		}
	}
	if err != nil {
		return "", fmt.Errorf("writing %s: %w", key, err)
	}
	return aws.StringValue(out.ETag), nil
}

func (s *S3) Create(ctx context.Context, key string, data []byte) (string, error) {
	return s.put(ctx, key, data, map[string]string{"If-None-Match": "*"})
}

func (s *S3) Replace(ctx context.Context, key, version string, data []byte) (string, error) {
	return s.put(ctx, key, data, map[string]string{"If-Match": version})
}

func (s *S3) Put(ctx context.Context, key string, data []byte) error {
	_, err := s.put(ctx, key, data, nil)
	return err
}

func (s *S3) Delete(ctx context.Context, key, version string) error {
	_, err := s.client.DeleteObjectWithContext(ctx, &s3.DeleteObjectInput{Bucket: &s.cfg.Bucket, Key: s.key(key)},
		request.WithSetRequestHeaders(map[string]string{"If-Match": version}))
	switch status(err) {
	case 0:
		return nil
	case http.StatusPreconditionFailed, http.StatusConflict, http.StatusNotFound:
		return ErrConflict
	}
	return fmt.Errorf("deleting %s: %w", key, err)
}

func (s *S3) Changed(ctx context.Context, key, version string) (string, bool, error) {
	in := &s3.GetObjectInput{Bucket: &s.cfg.Bucket, Key: s.key(key)}
	if version != "" {
		in.IfNoneMatch = aws.String(version)
	}
	// A HEAD would do, but S3 bills HEAD as a GET and a 304 has no body.
	out, err := s.client.GetObjectWithContext(ctx, in)
	switch status(err) {
	case 0:
	case http.StatusNotModified:
		return version, false, nil
	case http.StatusNotFound:
		return "", version != "", nil
	}
	if err != nil {
		return version, false, fmt.Errorf("reading %s: %w", key, err)
	}
	io.Copy(io.Discard, out.Body)
	out.Body.Close()
	v := aws.StringValue(out.ETag)
	return v, v != version, nil
}
