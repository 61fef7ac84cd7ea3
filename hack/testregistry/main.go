// Command testregistry serves container images from a registry held in
// memory (go-containerregistry's registry package), for tests that must
// really pull: the conformance suite's ImageVolume test pulls with policy
// Always. It loads docker-archive tarballs (as cmd/berth-images writes them)
// and serves each image under its own repository and tag with the registry
// host dropped, so a containerd mirror for that host (registries.yaml)
// finds it:
//
//	testregistry -addr 10.97.0.1:5000 dist/conformance/images/kitten-1.8-amd64.tar
//
// serves registry.k8s.io/e2e-test-images/kitten:1.8 as
// 10.97.0.1:5000/e2e-test-images/kitten:1.8 over plain HTTP. It prints
// "ready" once every image is in, and runs until killed. Test tool only:
// berth never links it.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("testregistry: ")
	addr := flag.String("addr", "127.0.0.1:5000", "address to listen on (plain HTTP)")
	flag.Parse()
	if flag.NArg() == 0 {
		log.Fatal("name at least one image tarball")
	}
	if err := run(*addr, flag.Args()); err != nil {
		log.Fatal(err)
	}
}

func run(addr string, files []string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{Handler: registry.New(registry.Logger(log.New(os.Stderr, "testregistry: ", 0)))}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	for _, f := range files {
		if err := push(ln.Addr().String(), f); err != nil {
			return err
		}
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
		return srv.Close()
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}

// push loads every tagged image of a docker-archive tarball into the
// registry at addr, under its repository path without the registry host.
func push(addr, file string) error {
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(file) })
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	for _, desc := range m {
		for _, t := range desc.RepoTags {
			src, err := name.NewTag(t, name.StrictValidation)
			if err != nil {
				return fmt.Errorf("%s: tag %q: %w", file, t, err)
			}
			img, err := tarball.ImageFromPath(file, &src)
			if err != nil {
				return fmt.Errorf("%s: %s: %w", file, t, err)
			}
			dst, err := name.NewTag(addr+"/"+src.RepositoryStr()+":"+src.TagStr(), name.Insecure)
			if err != nil {
				return err
			}
			if err := remote.Write(dst, img); err != nil {
				return fmt.Errorf("pushing %s as %s: %w", t, dst, err)
			}
			log.Printf("serving %s as %s", t, dst)
		}
	}
	return nil
}
