package testenv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/labreg/labreg/registry"
)

// RegistryName is the name the nodes of a ZoneLab use for the registry.
const RegistryName = "registry.lab"

// ZoneLab is a Lab in two zones, each with a labreg pull-through mirror of
// the origin registry, as deploy/examples/mirror.yaml runs them. Every node
// names the registry RegistryName:PORT (Lab.Registry), and each node's
// dockerd has its own /etc/hosts (Node.Hosts, in a mount namespace of its
// own) that resolves that name per zone:
//
//	manager           -> Origin     (the manager's link address)
//	worker1, worker2  -> Mirrors["seoul"] (worker1's link address)
//	worker3           -> Mirrors["busan"] (worker3's link address)
//
// The three registries run in this process and listen on the same PORT,
// each on its own host address. Every node trusts them over plain HTTP:
// its daemon.json lists LabSubnet, and the engine matches the address the
// name resolves to against that range. Lab.Local is the origin's address
// (pushes go there), Lab.Server the origin. Each mirror fetches from the
// origin through a listener of the origin's own, so Origin.Gets tells per
// mirror what it fetched.
type ZoneLab struct {
	*Lab
	Origin  *LabRegistry
	Mirrors map[string]*LabRegistry // by zone
}

// Zone names of the ZoneLab's mirrors.
const (
	ZoneSeoul = "seoul"
	ZoneBusan = "busan"
)

// NewZoneLab starts the lab's four nodes (each with its own hosts file),
// the origin registry (origin as for Registry) and one mirror per zone.
func NewZoneLab(t testing.TB, origin registry.Options) *ZoneLab {
	t.Helper()
	Docker(t)
	lab := startLab(t, true)
	w1, w3 := lab.Worker("worker1"), lab.Worker("worker3")
	z := &ZoneLab{Lab: lab, Mirrors: map[string]*LabRegistry{}}
	var err error
	// One port on three addresses: the origin takes a free one, the mirrors
	// the same on theirs. Another test's listener on every address and
	// that port in the meantime makes a mirror fail to bind: try again.
	for try := 0; ; try++ {
		z.Origin, err = newLabRegistry(t, origin, lab.Manager.HostIP+":0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(z.Origin.Addr)
		err = nil
		for zone, at := range map[string]*Node{ZoneSeoul: w1, ZoneBusan: w3} {
			via, verr := z.Origin.listen(zone, "127.0.0.1:0")
			if verr != nil {
				t.Fatal(verr)
			}
			m, merr := newLabRegistry(t, registry.Options{ProxyRemoteURL: "http://" + via}, net.JoinHostPort(at.HostIP, port))
			if merr != nil {
				err = merr
				break
			}
			z.Mirrors[zone] = m
		}
		if err == nil {
			lab.Registry = RegistryName + ":" + port
			break
		}
		for _, m := range z.Mirrors {
			m.Stop()
		}
		z.Origin.Stop()
		clear(z.Mirrors)
		if try == 4 || !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("zone lab: %v", err)
		}
	}
	lab.Server, lab.Local = z.Origin.Server, z.Origin.Addr
	resolve := map[*Node]*LabRegistry{lab.Manager: z.Origin, w1: z.Mirrors[ZoneSeoul],
		lab.Worker("worker2"): z.Mirrors[ZoneSeoul], w3: z.Mirrors[ZoneBusan]}
	for n, r := range resolve {
		host, _, _ := net.SplitHostPort(r.Addr)
		if err := n.SetHosts(map[string]string{RegistryName: host}); err != nil {
			t.Fatal(err)
		}
	}
	return z
}

// LabRegistry is one registry of a ZoneLab, served by this process. It
// counts the GET requests it serves by path, per listener: "nodes" for its
// address (Addr), the zone for a mirror's own listener on the origin.
type LabRegistry struct {
	Addr   string // HOST:PORT the nodes reach it at
	Server *registry.Server

	hook    atomic.Pointer[func(*http.Request)]
	mu      sync.Mutex
	gets    map[string]map[string]int // listener -> path -> GETs
	servers []*http.Server
	stop    sync.Once
	stopped chan struct{}
	cancel  context.CancelFunc
}

func newLabRegistry(t testing.TB, opts registry.Options, addr string) (*LabRegistry, error) {
	if opts.DataDir == "" {
		opts.DataDir = filepath.Join(t.TempDir(), "data")
	}
	quietLogrus.Do(func() { registry.RouteLogrus(slog.New(slog.DiscardHandler)) })
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := registry.New(ctx, opts)
	if err != nil {
		cancel()
		return nil, err
	}
	r := &LabRegistry{Server: srv, gets: map[string]map[string]int{}, cancel: cancel, stopped: make(chan struct{})}
	if r.Addr, err = r.listen("nodes", addr); err != nil {
		cancel()
		return nil, err
	}
	t.Cleanup(r.Stop)
	return r, nil
}

// listen serves the registry on addr as well, counting its requests under
// name, and returns the address bound.
func (r *LabRegistry) listen(name, addr string) (string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("listening on %s: %w", addr, err)
	}
	h := r.Server.Handler()
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodGet && strings.HasPrefix(req.URL.Path, "/v2/") && req.URL.Path != "/v2/" {
			r.mu.Lock()
			if r.gets[name] == nil {
				r.gets[name] = map[string]int{}
			}
			r.gets[name][req.URL.Path]++
			r.mu.Unlock()
		}
		if f := r.hook.Load(); f != nil {
			(*f)(req)
		}
		h.ServeHTTP(w, req)
	})}
	r.mu.Lock()
	r.servers = append(r.servers, hs)
	r.mu.Unlock()
	go hs.Serve(ln)
	return ln.Addr().String(), nil
}

// Stopped is closed when Stop is called.
func (r *LabRegistry) Stopped() <-chan struct{} { return r.stopped }

// OnRequest has f called with every request before it is served (nil: no
// more); f may block, e.g. until Stop.
func (r *LabRegistry) OnRequest(f func(*http.Request)) {
	if f == nil {
		r.hook.Store(nil)
		return
	}
	r.hook.Store(&f)
}

// Gets returns the GET requests for /v2/ paths served through listener
// ("nodes", or a zone on the origin), by path.
func (r *LabRegistry) Gets(listener string) map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.gets[listener])
}

// Stop closes the registry's listeners and every connection at once, as a
// registry whose machine went away: requests in flight are cut.
func (r *LabRegistry) Stop() {
	r.stop.Do(func() {
		r.mu.Lock()
		servers := r.servers
		r.mu.Unlock()
		close(r.stopped)
		for _, hs := range servers {
			hs.Close()
		}
		r.cancel()
	})
}
