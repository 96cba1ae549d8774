package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// missingBases adds, for every FROM that names an image in a target's own
// registry which no target produces and that registry does not have, the
// image directory that makes it when one stands beside the target's
// (<images>/<repo>/<tag>/Dockerfile): `labreg build images/samsung` on an
// empty registry builds images/webserver/1 first. Added bases are planned
// like the others, and their own bases in turn.
func (b *Builder) missingBases(ctx context.Context, plans []*planned, mode string, progress io.Writer) ([]*planned, error) {
	produced := map[string]bool{}
	for _, p := range plans {
		produced[refKey(p.Ref)] = true
	}
	for i := 0; i < len(plans); i++ {
		p := plans[i]
		for _, base := range p.Bases {
			r, err := parseRef(base, p.Insecure)
			if err != nil || r.Context().RegistryStr() != p.Ref.Context().RegistryStr() {
				continue
			}
			key := refKey(r)
			if produced[key] {
				continue
			}
			dir := filepath.Join(filepath.Dir(filepath.Dir(p.Context)), r.Context().RepositoryStr(), r.Identifier())
			if _, err := os.Stat(filepath.Join(dir, "Dockerfile")); err != nil {
				continue
			}
			if has, err := b.inRegistry(ctx, r); err != nil || has {
				continue // present, or the build itself will say why it cannot be read
			}
			t := p.Target
			t.Context, t.Dockerfile, t.Ref = dir, "", r.String()
			np, err := b.plan(ctx, t, mode, progress)
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(progress, "%s: base of %s, not in the registry: building %s first\n", shortName(r), shortName(p.Ref), dir)
			produced[key] = true
			plans = append(plans, np)
		}
	}
	return plans, nil
}

// inRegistry reports whether ref's registry has it (a HEAD of the
// manifest), asking with the Builder's keychain and transport, which are
// those the engine pulls the base with.
func (b *Builder) inRegistry(ctx context.Context, ref name.Reference) (bool, error) {
	kc, tr := b.Keychain, b.Transport
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	if tr == nil {
		tr = remote.DefaultTransport
	}
	_, err := remote.Head(ref, remote.WithContext(ctx), remote.WithAuthFromKeychain(kc), remote.WithTransport(tr))
	switch {
	case err == nil:
		return true, nil
	case isNotFound(err):
		return false, nil
	default:
		return false, err
	}
}

// isNotFound says whether a registry answered err's request with 404.
func isNotFound(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == http.StatusNotFound
}
