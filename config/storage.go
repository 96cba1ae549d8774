package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// Storage is a parsed registry.storage value: the filesystem under
// <data>/storage, or a bucket of an S3-compatible store.
type Storage struct {
	// S3 is false for the filesystem.
	S3 bool
	// Bucket and Prefix (no leading or trailing slash) say where in the
	// store the registry lives.
	Bucket, Prefix string
	// Endpoint is the store's URL (http or https); empty means AWS itself.
	// With an endpoint, requests use path-style addressing.
	Endpoint string
	// Region signs requests. Default "us-east-1" when an endpoint is given.
	Region string
	// Redirect answers blob GETs with a redirect to a presigned URL of the
	// store instead of proxying the bytes. Default false.
	Redirect bool
}

// Shared reports whether more than one process may use this storage at
// once (replicas), which needs one HTTP secret for all of them.
func (s Storage) Shared() bool { return s.S3 }

// String renders the storage as registry.storage accepts it. It holds no
// credentials: those never go in the URL.
func (s Storage) String() string {
	if !s.S3 {
		return "filesystem"
	}
	v := "s3://" + s.Bucket
	if s.Prefix != "" {
		v += "/" + s.Prefix
	}
	var q []string
	if s.Endpoint != "" {
		q = append(q, "endpoint="+s.Endpoint)
	}
	if s.Region != "" {
		q = append(q, "region="+url.QueryEscape(s.Region))
	}
	if s.Redirect {
		q = append(q, "redirect=true")
	}
	if len(q) > 0 {
		v += "?" + strings.Join(q, "&")
	}
	return v
}

// ParseStorage parses a registry.storage value: "" or "filesystem", or
// s3://BUCKET[/PREFIX]?endpoint=URL&region=REGION[&redirect=true].
func ParseStorage(v string) (Storage, error) {
	if v == "" || v == "filesystem" {
		return Storage{}, nil
	}
	u, err := url.Parse(v)
	if err != nil || u.Scheme != "s3" {
		return Storage{}, fmt.Errorf("%q is neither filesystem nor s3://BUCKET[/PREFIX]?endpoint=URL&region=REGION", v)
	}
	if u.User != nil {
		return Storage{}, errors.New("credentials do not belong in the storage URL: use registry.s3_access_key_file and registry.s3_secret_key_file, or the AWS environment variables")
	}
	s := Storage{S3: true, Bucket: u.Host, Prefix: strings.Trim(u.Path, "/")}
	if !validBucket(s.Bucket) {
		return Storage{}, fmt.Errorf("%q is not an S3 bucket name (3-63 characters: a-z, 0-9, '.', '-')", s.Bucket)
	}
	for k, vs := range u.Query() {
		val := vs[len(vs)-1]
		switch k {
		case "endpoint":
			e, err := url.Parse(val)
			if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" {
				return Storage{}, fmt.Errorf("endpoint %q is not an http:// or https:// URL", val)
			}
			if e.Path != "" && e.Path != "/" || e.RawQuery != "" {
				return Storage{}, fmt.Errorf("endpoint %q: only scheme, host and port are allowed", val)
			}
			s.Endpoint = e.Scheme + "://" + e.Host
		case "region":
			s.Region = val
		case "redirect":
			b, err := strconv.ParseBool(val)
			if err != nil {
				return Storage{}, fmt.Errorf("redirect=%q is not true or false", val)
			}
			s.Redirect = b
		default:
			return Storage{}, fmt.Errorf("unknown storage parameter %q (endpoint, region, redirect)", k)
		}
	}
	if s.Endpoint == "" && s.Region == "" {
		return Storage{}, errors.New("region= is required without endpoint= (AWS S3)")
	}
	if s.Region == "" {
		s.Region = "us-east-1"
	}
	return s, nil
}

func validBucket(b string) bool {
	if len(b) < 3 || len(b) > 63 {
		return false
	}
	for _, r := range b {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-') {
			return false
		}
	}
	return true
}

// Redis is a parsed registry.redis value.
type Redis struct {
	Addr     string // HOST:PORT
	Username string
	Password string
	DB       int
}

// ParseRedis parses redis://[USER[:PASSWORD]@]HOST:PORT[/DB].
func ParseRedis(v string) (Redis, error) {
	u, err := url.Parse(v)
	if err != nil || u.Scheme != "redis" || u.Host == "" {
		return Redis{}, errors.New("not redis://[USER[:PASSWORD]@]HOST:PORT[/DB]")
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return Redis{}, fmt.Errorf("%q is not HOST:PORT", u.Host)
	}
	r := Redis{Addr: u.Host}
	if u.User != nil {
		r.Username = u.User.Username()
		r.Password, _ = u.User.Password()
	}
	if db := strings.Trim(u.Path, "/"); db != "" {
		if r.DB, err = strconv.Atoi(db); err != nil || r.DB < 0 {
			return Redis{}, fmt.Errorf("database %q is not a number", db)
		}
	}
	return r, nil
}

// redact hides the password of a URL-shaped value for display.
func redact(v string) string {
	u, err := url.Parse(v)
	if err != nil || u.User == nil {
		return v
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "REDACTED")
	}
	return u.String()
}
