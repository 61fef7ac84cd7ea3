package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/klog/v2"

	"github.com/berth-io/berth/pkg/atomicfile"
	"github.com/berth-io/berth/pkg/pki"
	"github.com/berth-io/berth/pkg/token"
)

// apiTimeout bounds each API request, so an unreachable server is reported
// instead of hanging.
const apiTimeout = 30 * time.Second

// tokenOptions are the flags every `berth token` subcommand shares.
type tokenOptions struct {
	kubeconfig string
	dataDir    string
	// kubeconfigSet: --kubeconfig was given, so it wins over the environment.
	kubeconfigSet func() bool
}

// NewToken returns `berth token`: bootstrap tokens for joining nodes, and
// rotation of the server token (k3s's `k3s token`).
func NewToken() *cobra.Command {
	o := &tokenOptions{}
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage bootstrap tokens for joining nodes, and the server token",
		Long: `Manage bootstrap tokens for joining nodes, and the server token.

A bootstrap token is <id>.<secret>, stored as the Secret
kube-system/bootstrap-token-<id>; it can be given a lifetime and deleted, so
it is safer to hand out than the server token. Nodes join with the full form
K10<sha256 of the server CA>::<id>.<secret> that "berth token create" prints.`,
		Args: cobra.NoArgs,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&o.kubeconfig, "kubeconfig", DefaultKubeconfig, "kubeconfig of the cluster; when not given, $BERTH_KUBECONFIG or else $KUBECONFIG is used before this default")
	pf.StringVarP(&o.dataDir, "data-dir", "d", DefaultDataDir(), "data dir of the berth server (for its CA and server token)")
	o.kubeconfigSet = func() bool { return pf.Changed("kubeconfig") }

	cmd.AddCommand(o.createCommand(), o.listCommand(), o.deleteCommand(), o.generateCommand(), o.rotateCommand())
	return cmd
}

func (o *tokenOptions) createCommand() *cobra.Command {
	var (
		ttl                 time.Duration
		description         string
		usages, extraGroups []string
	)
	cmd := &cobra.Command{
		Use:   "create [TOKEN]",
		Short: "Create a bootstrap token and print it in the K10 form nodes join with",
		Long: `Create a bootstrap token (random unless TOKEN, <id>.<secret>, is given)
and print it as K10<sha256 of the server CA>::<id>.<secret>.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tok, err := bootstrapArg(args)
			if err != nil {
				return err
			}
			cs, restCfg, err := o.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			// The CA comes first: a token is never created without being
			// printable.
			caPEM, err := o.serverCA(ctx, cs, restCfg)
			if err != nil {
				return err
			}
			if hash := token.CAHash(caPEM); tok.CAHash != "" && tok.CAHash != hash {
				return fmt.Errorf("TOKEN carries the CA hash %s, but this cluster's CA hashes to %s: it belongs to another cluster", tok.CAHash, hash)
			}
			full, err := token.FormatBootstrap(caPEM, tok.BootstrapToken())
			if err != nil {
				return err
			}
			groups := extraGroups
			if !cmd.Flags().Changed("groups") {
				groups = nil // CreateBootstrap's default, which depends on --usages
			}
			if err := token.CreateBootstrap(ctx, cs, tok.BootstrapToken(), ttl, description, usages, groups); err != nil {
				return reachError(err, restCfg)
			}
			fmt.Fprintln(cmd.OutOrStdout(), full)
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&ttl, "ttl", 24*time.Hour, "lifetime of the token; 0 means it never expires")
	f.StringVar(&description, "description", "", "human-readable description of the token's use")
	f.StringSliceVar(&usages, "usages", []string{"signing", "authentication"}, "what the token may be used for: signing, authentication")
	f.StringSliceVar(&extraGroups, "groups", []string{token.DefaultBootstrapGroup}, "extra groups the token authenticates in (each system:bootstrappers:…)")
	return cmd
}

// bootstrapArg returns the bootstrap token in args (bare or K10), or a new
// random one. Errors never quote the argument: it is a secret.
func bootstrapArg(args []string) (token.Token, error) {
	s := ""
	if len(args) > 0 {
		s = args[0]
	} else {
		var err error
		if s, err = token.GenerateBootstrap(); err != nil {
			return token.Token{}, err
		}
	}
	t, err := token.Parse(s)
	if err != nil || !t.Bootstrap {
		return token.Token{}, errors.New(`TOKEN is not a bootstrap token: want <id>.<secret> (id [a-z0-9]{6}, secret [a-z0-9]{16}), bare or in K10 form; "berth token generate" makes one`)
	}
	return t, nil
}

func (o *tokenOptions) listCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List bootstrap tokens (ids only, never the secrets)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cs, restCfg, err := o.client()
			if err != nil {
				return err
			}
			infos, err := token.ListBootstrap(cmd.Context(), cs)
			if err != nil {
				return reachError(err, restCfg)
			}
			if len(infos) == 0 {
				fmt.Fprintln(cmd.ErrOrStderr(), "No bootstrap tokens.")
				return nil
			}
			printBootstrapTable(cmd.OutOrStdout(), infos, time.Now())
			for _, in := range infos {
				if in.Problem != "" {
					klog.Warningf("Bootstrap token %s will not authenticate: %s", in.ID, in.Problem)
				}
			}
			return nil
		},
	}
}

// printBootstrapTable prints infos as kubeadm's `token list` does, with
// the id where kubeadm shows the whole token.
func printBootstrapTable(w io.Writer, infos []token.BootstrapInfo, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "TOKEN\tTTL\tEXPIRES\tUSAGES\tDESCRIPTION\tEXTRA GROUPS")
	for _, in := range infos {
		ttl, expires := "<forever>", "<never>"
		if !in.Expires.IsZero() {
			expires = in.Expires.Format(time.RFC3339)
			ttl = "<invalid>" // expired, awaiting the token cleaner
			if left := in.Expires.Sub(now); left > 0 {
				ttl = duration.HumanDuration(left)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", in.ID, ttl, expires,
			orNone(strings.Join(in.Usages, ",")), orNone(in.Description), orNone(strings.Join(in.Groups, ",")))
	}
	tw.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

func (o *tokenOptions) deleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "delete ID|TOKEN...",
		Short: "Delete bootstrap tokens, by id or by token",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cs, restCfg, err := o.client()
			if err != nil {
				return err
			}
			var errs []error
			for i, a := range args {
				id, err := token.BootstrapID(a)
				if err != nil {
					errs = append(errs, fmt.Errorf("argument %d: %w", i+1, err))
					continue
				}
				if err := token.DeleteBootstrap(cmd.Context(), cs, id); err != nil {
					errs = append(errs, reachError(err, restCfg))
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "bootstrap token %s deleted\n", id)
			}
			return errors.Join(errs...)
		},
	}
}

func (o *tokenOptions) generateCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "generate",
		Short: "Print a random bootstrap token; creates nothing (see create TOKEN)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tok, err := token.GenerateBootstrap()
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			return nil
		},
	}
}

func (o *tokenOptions) rotateCommand() *cobra.Command {
	var newToken string
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Replace the server token in the data dir (restart the server afterwards)",
		Long: `Replace the server token in <data-dir>/server/token with --new-token, or a
random one, and print it. The server uses the new token once restarted;
agents and servers joining afterwards need it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			serverDir := ServerDir(o.dataDir)
			caPEM, caPath, err := ReadServerCA(o.dataDir)
			if err != nil {
				return err
			}
			tokenPath := filepath.Join(serverDir, "token")
			old, err := os.ReadFile(tokenPath)
			if err != nil {
				return fmt.Errorf("rotate server token: %w", err)
			}
			tok, err := token.RotateServerToken(tokenPath, caPEM, caPath, newToken)
			if err != nil {
				return err
			}
			// The server re-seals the cluster's bootstrap data in a shared
			// datastore with the new token at its next start, and then
			// removes this file.
			if err := atomicfile.Write(filepath.Join(serverDir, token.PreviousFile), old, 0o600); err != nil {
				return fmt.Errorf("keep the previous token: %w", err)
			}
			if err := syncNodeToken(filepath.Join(serverDir, "node-token"), tok); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok.String())
			fmt.Fprintf(cmd.ErrOrStderr(), `Server token in %s rotated.
Restart berth server for it to take effect, and give the new token to agents
and servers before they next start. If the server is started with --token,
--token-file or BERTH_TOKEN, change that too: it refuses a token that
differs from the stored one.
`, tokenPath)
			return nil
		},
	}
	cmd.Flags().StringVar(&newToken, "new-token", "", "the new server token: a password or a K10 token for this cluster's CA (default: random)")
	return cmd
}

// syncNodeToken keeps node-token equal to token. The server creates it as
// a symlink to token, which needs nothing; a regular file (copied in by
// hand) is rewritten; a missing one is left for the server to link.
func syncNodeToken(path string, tok token.Token) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && fi.Mode()&fs.ModeSymlink != 0) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("node token: %w", err)
	}
	if err := atomicfile.Write(path, []byte(tok.String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("node token: %w", err)
	}
	return nil
}

// client builds a clientset from the kubeconfig: --kubeconfig, else
// BERTH_KUBECONFIG, else KUBECONFIG (a list, as for kubectl), else berth's
// admin kubeconfig.
func (o *tokenOptions) client() (kubernetes.Interface, *rest.Config, error) {
	rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: o.kubeconfig}
	source := o.kubeconfig
	if !o.kubeconfigSet() {
		if v := os.Getenv("BERTH_KUBECONFIG"); v != "" {
			rules.ExplicitPath, source = v, v
		} else if v := os.Getenv("KUBECONFIG"); v != "" {
			rules = &clientcmd.ClientConfigLoadingRules{Precedence: filepath.SplitList(v)}
			source = "KUBECONFIG=" + v
		}
	}
	// clientcmd's own errors for these name neither the cause nor the fix.
	if p := rules.ExplicitPath; p != "" {
		f, err := os.Open(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, nil, fmt.Errorf("kubeconfig %s does not exist: berth server writes it once ready; is it running on this host? Otherwise pass --kubeconfig or set BERTH_KUBECONFIG", p)
		case errors.Is(err, fs.ErrPermission):
			return nil, nil, fmt.Errorf("read kubeconfig: %w (the admin kubeconfig is readable by root only: run with sudo)", err)
		case err != nil:
			return nil, nil, fmt.Errorf("read kubeconfig: %w", err)
		}
		f.Close()
	}
	restCfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, nil, fmt.Errorf("kubeconfig %s: %w", source, err)
	}
	restCfg.Timeout = apiTimeout
	restCfg.UserAgent = "berth-token"
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, nil, fmt.Errorf("kubeconfig %s: %w", source, err)
	}
	return cs, restCfg, nil
}

// serverCA returns the server CA certificate PEM, byte for byte what the
// server hashes into its token and serves at /cacerts: the data dir's
// server-ca.crt, checked against the CA the kubeconfig trusts (a mismatch
// means the data dir and the kubeconfig are different clusters). Without
// the file (another host, or not root) it is fetched from /cacerts.
func (o *tokenOptions) serverCA(ctx context.Context, cs kubernetes.Interface, restCfg *rest.Config) ([]byte, error) {
	// <data-dir>/server/tls as server.Config.TLSDir lays it out.
	caPath := pki.FilesIn(filepath.Join(o.dataDir, "server", "tls")).ServerCA.Cert
	caPEM, err := os.ReadFile(caPath)
	if err == nil {
		if err := sameCA(caPEM, restCfg); err != nil {
			return nil, fmt.Errorf("the kubeconfig and the data dir %s are not the same cluster (pass the right --data-dir or --kubeconfig): %s: %w", o.dataDir, caPath, err)
		}
		return caPEM, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read server CA: %w", err)
	}
	klog.V(1).Infof("No server CA at %s; fetching it from the server's /cacerts", caPath)
	served, err := cs.Discovery().RESTClient().Get().AbsPath("/cacerts").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("no server CA at %s (pass the server's --data-dir), and fetching /cacerts from %s failed: %w", caPath, restCfg.Host, reachError(err, restCfg))
	}
	if _, err := certutil.ParseCertsPEM(served); err != nil {
		return nil, fmt.Errorf("no server CA at %s (pass the server's --data-dir), and %s/cacerts is not a certificate: %w", caPath, restCfg.Host, err)
	}
	return served, nil
}

// sameCA checks that the kubeconfig trusts caPEM's certificate (when it
// names a CA at all).
func sameCA(caPEM []byte, restCfg *rest.Config) error {
	trusted := restCfg.TLSClientConfig.CAData
	if len(trusted) == 0 && restCfg.TLSClientConfig.CAFile != "" {
		var err error
		if trusted, err = os.ReadFile(restCfg.TLSClientConfig.CAFile); err != nil {
			return fmt.Errorf("read the kubeconfig's CA: %w", err)
		}
	}
	if len(trusted) == 0 {
		return nil
	}
	server, err := certutil.ParseCertsPEM(caPEM)
	if err != nil {
		return fmt.Errorf("server CA: %w", err)
	}
	kube, err := certutil.ParseCertsPEM(trusted)
	if err != nil {
		return fmt.Errorf("the kubeconfig's CA: %w", err)
	}
	for _, c := range kube {
		if bytes.Equal(c.Raw, server[0].Raw) {
			return nil
		}
	}
	return fmt.Errorf("the kubeconfig trusts another CA than this one (%q)", server[0].Subject.CommonName)
}

// reachError adds what to check to an error that is not an answer from the
// API server: the server is down, elsewhere, or not the cluster the
// kubeconfig is for.
func reachError(err error, restCfg *rest.Config) error {
	var status apierrors.APIStatus
	switch {
	case errors.As(err, &status):
		if apierrors.IsUnauthorized(err) || apierrors.IsForbidden(err) {
			return fmt.Errorf("%w (the kubeconfig's credentials are not allowed to manage kube-system Secrets at %s)", err, restCfg.Host)
		}
		return err
	case isCertError(err):
		return fmt.Errorf("the server at %s does not present a certificate the kubeconfig trusts; is the kubeconfig for this cluster? %w", restCfg.Host, err)
	case isNetError(err):
		return fmt.Errorf("cannot reach the berth server at %s: is it running, and is the kubeconfig for it? %w", restCfg.Host, err)
	}
	return err
}

func isCertError(err error) bool {
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var ci x509.CertificateInvalidError
	return errors.As(err, &ua) || errors.As(err, &hn) || errors.As(err, &ci)
}

func isNetError(err error) bool {
	var ne net.Error
	var ue *url.Error
	return errors.As(err, &ne) || errors.As(err, &ue) || errors.Is(err, context.DeadlineExceeded)
}

// ServerDir is <data-dir>/server, as server.Config.ServerDir lays it out
// (the CLI does not import the server).
func ServerDir(dataDir string) string { return filepath.Join(dataDir, "server") }

// ReadServerCA reads the server CA of the berth server whose data dir is
// dataDir, for commands that talk to it or change its token.
func ReadServerCA(dataDir string) (pem []byte, path string, err error) {
	path = pki.FilesIn(filepath.Join(ServerDir(dataDir), "tls")).ServerCA.Cert
	pem, err = os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, path, fmt.Errorf("%s is not the data dir of a berth server that has started once: there is no %s (pass --data-dir)", dataDir, path)
	}
	if err != nil {
		return nil, path, fmt.Errorf("read server CA: %w (run as root)", err)
	}
	return pem, path, nil
}
