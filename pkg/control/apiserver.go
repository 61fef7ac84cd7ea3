package control

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/rest"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"

	"github.com/berth-io/berth/pkg/component"
	"github.com/berth-io/berth/pkg/ports"
)

// APIServer runs kube-apiserver in-process.
type APIServer struct {
	// Args is the full kube-apiserver command line.
	Args []string
	// Address is host:port the apiserver serves on (for readiness).
	Address string
	// CAFile verifies the apiserver's serving certificate.
	CAFile string
	// ClientCert and ClientKey authenticate the readiness probe.
	ClientCert, ClientKey string

	runner *component.Runner
	opts   *options.ServerRunOptions
}

func (a *APIServer) Name() string { return "kube-apiserver" }

// Prepare parses the arguments, so bad pass-through flags fail before any
// component starts, and checks the port is free so the error names it.
func (a *APIServer) Prepare(context.Context) error {
	a.opts = options.NewServerRunOptions()
	nfs := a.opts.Flags()
	if err := parse("kube-apiserver", nfs.FlagSets, nfs.Order, a.Args); err != nil {
		return err
	}
	return ports.CheckFree(a.Address)
}

func (a *APIServer) Start(ctx context.Context) error {
	s := a.opts
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	// The apiserver's loopback clients should not log warnings it issued itself.
	rest.SetDefaultWarningHandler(rest.NoWarnings{})
	a.runner = component.NewRunner(a.Name(), func(ctx context.Context) error {
		completed, err := s.Complete(ctx)
		if err != nil {
			return err
		}
		if errs := completed.Validate(); len(errs) != 0 {
			return utilerrors.NewAggregate(errs)
		}
		return app.Run(ctx, completed)
	})
	return a.runner.Start(ctx)
}

func (a *APIServer) Failed() <-chan error { return a.runner.Failed() }

// Ready polls /readyz until the apiserver answers 200.
func (a *APIServer) Ready(ctx context.Context) error {
	client, err := a.probeClient()
	if err != nil {
		return err
	}
	url := "https://" + a.Address + "/readyz"
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("apiserver not ready (last answer: %s): %w", last, ctx.Err())
		case <-a.runner.Done():
			return errors.New("apiserver exited while starting")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (a *APIServer) probeClient() (*http.Client, error) {
	caPEM, err := os.ReadFile(a.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(a.ClientCert, a.ClientKey)
	if err != nil {
		return nil, err
	}
	return &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
		}},
	}, nil
}

func (a *APIServer) Stop(ctx context.Context) error {
	if a.runner == nil {
		return nil
	}
	return a.runner.Stop(ctx)
}
