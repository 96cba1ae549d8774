package build

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// WaitRegistry waits until the registry at host (HOST:PORT) answers its
// /v2/ endpoint (any answer, 401 included) or timeout passes. insecure
// allows plain HTTP.
func WaitRegistry(ctx context.Context, host string, insecure bool, timeout time.Duration) error {
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(host, opts...)
	if err != nil {
		return fmt.Errorf("registry %q: %w", host, err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := transport.Ping(pctx, reg, http.DefaultTransport)
		pcancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("registry %s did not answer within %s: %w", host, timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
