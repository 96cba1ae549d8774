// Command webserver is the static file server of labreg's example images
// (the base image images/webserver/1, FROM which myhttpd and samsung are
// built): it serves a directory over HTTP, index.html for directories,
// and stops cleanly on SIGTERM so that `docker stop` and rolling updates
// do not wait for a kill. It is compiled with CGO_ENABLED=0 into a
// scratch image.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("addr", ":80", "listen address")
	root := flag.String("root", "/www", "directory to serve")
	flag.Parse()
	if err := run(*addr, *root); err != nil {
		fmt.Fprintln(os.Stderr, "webserver:", err)
		os.Exit(1)
	}
}

func run(addr, root string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if st, err := os.Stat(root); err != nil || !st.IsDir() {
		return fmt.Errorf("document root %s is not a directory", root)
	}
	srv := &http.Server{Addr: addr, Handler: handler(root), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Printf("serving %s on %s", root, addr)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// handler serves files below root; the hostname header tells which
// container answered (handy behind a swarm service's load balancing).
func handler(root string) http.Handler {
	files := http.FileServer(http.Dir(root))
	host, _ := os.Hostname()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Served-By", host)
		files.ServeHTTP(w, r)
	})
}
