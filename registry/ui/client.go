package ui

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"

	"github.com/labreg/labreg/registry"
)

// Client talks to the JSON API of a running labreg UI.
type Client struct {
	// BaseURL is the UI's address, e.g. "http://127.0.0.1:8080".
	BaseURL string
	// Username and Password are sent as basic auth when set (the
	// registry's htpasswd credentials).
	Username, Password string
	// HTTP is the client to use. Default http.DefaultClient.
	HTTP *http.Client
}

// ErrUnreachable wraps the error of a client that found no UI listening:
// the connection was refused. Any other transport failure (TLS, a timeout,
// a cancelled context) is not this error: something may be listening.
var ErrUnreachable = errors.New("no labreg UI answers")

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	u := strings.TrimSuffix(c.BaseURL, "/") + path
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, u, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Username != "" {
		req.SetBasicAuth(c.Username, c.Password)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%w at %s: %w", ErrUnreachable, c.BaseURL, err)
		}
		return fmt.Errorf("%s %s: %w", method, u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized {
		return fmt.Errorf("%s %s: 401 unauthorized: log in to the registry first (docker login) so that its credentials can be used", method, u)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Errors []struct{ Code, Message string } `json:"errors"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &e) == nil && len(e.Errors) > 0 {
			return fmt.Errorf("%s %s: %s: %s", method, u, e.Errors[0].Code, e.Errors[0].Message)
		}
		return fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, strings.TrimSpace(string(b)))
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decoding answer: %w", method, u, err)
	}
	return nil
}

// Repositories fetches one page of repositories.
func (c *Client) Repositories(ctx context.Context, q RepoQuery) (*RepoPage, error) {
	v := url.Values{"page": {strconv.Itoa(q.Page)}, "per": {strconv.Itoa(q.Per)}}
	if q.Filter != "" {
		v.Set("q", q.Filter)
	}
	if q.Sort != "" {
		v.Set("sort", q.Sort)
	}
	if q.Empty {
		v.Set("empty", "1")
	}
	var p RepoPage
	return &p, c.do(ctx, http.MethodGet, "/api/repositories?"+v.Encode(), nil, &p)
}

// Tags fetches one page of a repository's tags, grouped by digest.
func (c *Client) Tags(ctx context.Context, repo string, q TagQuery) (*TagPage, error) {
	v := url.Values{"page": {strconv.Itoa(q.Page)}, "per": {strconv.Itoa(q.Per)}}
	if q.Filter != "" {
		v.Set("q", q.Filter)
	}
	if q.Sort != "" {
		v.Set("sort", q.Sort)
	}
	var p TagPage
	return &p, c.do(ctx, http.MethodGet, "/api/repositories/"+repo+"/-/tags?"+v.Encode(), nil, &p)
}

// GC runs (or dry-runs) garbage collection on the server.
func (c *Client) GC(ctx context.Context, req GCRequest) (*registry.GCResult, error) {
	var res registry.GCResult
	return &res, c.do(ctx, http.MethodPost, "/api/gc", req, &res)
}

// Scrub checks (and with Repair, repairs) the server's storage.
func (c *Client) Scrub(ctx context.Context, opts registry.ScrubOptions) (*registry.ScrubReport, error) {
	var rep registry.ScrubReport
	return &rep, c.do(ctx, http.MethodPost, "/api/scrub", opts, &rep)
}
