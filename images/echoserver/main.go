// Command echoserver is berth's HTTP test server (image
// berth.local/echoserver). Any path answers, as text, the pod's hostname,
// the client's address and what the server saw of the request; /hostname
// answers the hostname alone (handy for load-balancing checks) and /healthz
// answers "ok". It listens on -port, else $PORT, else 8080, and shuts down
// cleanly (exit 0) on SIGTERM or SIGINT, as PID 1 of a container must.
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
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	defPort := os.Getenv("PORT")
	if defPort == "" {
		defPort = "8080"
	}
	port := flag.String("port", defPort, "TCP port to listen on (env PORT)")
	flag.Parse()

	hostname, err := os.Hostname()
	if err != nil {
		log.Fatalf("echoserver: hostname: %v", err)
	}
	srv := &http.Server{
		Addr:              ":" + *port,
		Handler:           handler(hostname),
		ReadHeaderTimeout: 10 * time.Second,
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Printf("echoserver: %s listening on :%s", hostname, *port)

	select {
	case err := <-errc:
		log.Fatalf("echoserver: %v", err)
	case <-ctx.Done():
	}
	log.Print("echoserver: shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("echoserver: shutdown: %v", err)
	}
}

func handler(hostname string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/hostname", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, hostname)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("%s %s %s", r.RemoteAddr, r.Method, r.URL.RequestURI())
		var b strings.Builder
		fmt.Fprintf(&b, "hostname: %s\n", hostname)
		fmt.Fprintf(&b, "client: %s\n", r.RemoteAddr)
		fmt.Fprintf(&b, "method: %s\n", r.Method)
		fmt.Fprintf(&b, "uri: %s\n", r.URL.RequestURI())
		fmt.Fprintf(&b, "host: %s\n", r.Host)
		fmt.Fprintf(&b, "proto: %s\n", r.Proto)
		keys := make([]string, 0, len(r.Header))
		for k := range r.Header {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			for _, v := range r.Header[k] {
				fmt.Fprintf(&b, "header: %s: %s\n", k, v)
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, b.String())
	})
	return mux
}
