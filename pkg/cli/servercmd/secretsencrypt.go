package servercmd

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/berth-io/berth/pkg/cli"
	"github.com/berth-io/berth/pkg/secretsencrypt"
	"github.com/berth-io/berth/pkg/token"
)

// encryptOptions are the flags every `berth secrets-encrypt` command shares.
type encryptOptions struct {
	dataDir string
	server  string
	token   string
}

// NewSecretsEncrypt returns `berth secrets-encrypt` (k3s's command): it asks
// the running server, over its public port, to change or report its
// secrets encryption. The server does the work because its apiserver must
// load each change before the next step may rely on it.
func NewSecretsEncrypt() *cobra.Command {
	o := &encryptOptions{}
	cmd := &cobra.Command{
		Use:   "secrets-encrypt",
		Short: "Control secrets encryption at rest on a running server",
		Long: `Control secrets encryption at rest on a running berth server (started with
--secrets-encryption). The apiserver reloads the encryption config by itself,
so no step needs a restart.

  status       encryption on or off, rotation stage, keys, hash agreement
  rotate-keys  one step: add a new active key, rewrite every Secret, drop the old keys
  prepare      add a new, inactive key                 (stage start/reencrypt_finished → prepare)
  rotate       make the prepared key the active one     (stage prepare → rotate)
  reencrypt    rewrite every Secret with the active key, then drop the others
  enable       encrypt new writes again and rewrite every Secret
  disable      write plaintext and rewrite every Secret (the keys stay, to read old data)

The command authenticates with the server token (<data-dir>/server/token,
readable by root only) and checks the server against <data-dir>/server/tls/server-ca.crt.`,
		Args: cobra.NoArgs,
	}
	pf := cmd.PersistentFlags()
	pf.StringVarP(&o.dataDir, "data-dir", "d", cli.DefaultDataDir(), "data dir of the berth server (for its token and CA)")
	pf.StringVarP(&o.server, "server", "s", "https://127.0.0.1:6443", "the server's URL (its --https-listen-port)")
	pf.StringVarP(&o.token, "token", "t", "", "the server token (default: <data-dir>/server/token)")

	var output string
	status := &cobra.Command{
		Use:   "status",
		Short: "Print encryption status, rotation stage, hash agreement and keys",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("-o %q: want text or json", output)
			}
			st, err := o.status(cmd.Context())
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	status.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	cmd.AddCommand(status)

	for _, c := range []struct {
		name, short string
		force, skip bool
	}{
		{secretsencrypt.CmdEnable, "Encrypt new writes with the first key again, and rewrite every Secret", false, false},
		{secretsencrypt.CmdDisable, "Write Secrets in plaintext, and rewrite every Secret (the keys stay)", false, false},
		{secretsencrypt.CmdPrepare, "Add a new, inactive key", true, false},
		{secretsencrypt.CmdRotate, "Make the key added by prepare the active one", true, false},
		{secretsencrypt.CmdReencrypt, "Rewrite every Secret with the active key, then remove the other keys", true, true},
		{secretsencrypt.CmdRotateKeys, "Add a new active key, rewrite every Secret with it and remove the old keys, in one step", true, false},
	} {
		req := secretsencrypt.Request{Command: c.name}
		wait := true
		sub := &cobra.Command{
			Use:   c.name,
			Short: c.short,
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return o.apply(cmd, req, wait)
			},
		}
		if c.force {
			sub.Flags().BoolVarP(&req.Force, "force", "f", false, "skip the rotation-stage check")
		}
		if c.skip {
			sub.Flags().BoolVar(&req.Skip, "skip", false, "keep the inactive keys after rewriting")
		}
		sub.Flags().BoolVar(&wait, "wait", true, "wait until the server has finished (rewriting Secrets can take a while)")
		cmd.AddCommand(sub)
	}
	return cmd
}

func printStatus(w io.Writer, st *secretsencrypt.Status) {
	if !st.Configured {
		fmt.Fprintln(w, "Encryption Status: Disabled, no configuration file found")
		return
	}
	fmt.Fprintf(w, "Encryption Status: %s\n", map[bool]string{true: "Enabled", false: "Disabled"}[st.Enabled])
	fmt.Fprintf(w, "Current Rotation Stage: %s\n", st.Stage)
	if st.HashMatch {
		fmt.Fprintln(w, "Server Encryption Hashes: All hashes match")
	} else {
		fmt.Fprintf(w, "Server Encryption Hashes: %s\n", st.HashError)
	}
	if st.Running {
		fmt.Fprintf(w, "Running: %s, %d Secrets rewritten so far\n", st.Command, st.Progress.Done)
	}
	if st.LastError != "" {
		fmt.Fprintf(w, "Last Error: %s\n", st.LastError)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "Active\tKey Type\tName")
	fmt.Fprintln(tw, "------\t--------\t----")
	for _, k := range st.Keys {
		mark := ""
		if k.Active {
			mark = " *"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", mark, k.Type, k.Name)
	}
	tw.Flush()
}

func (o *encryptOptions) apply(cmd *cobra.Command, req secretsencrypt.Request, wait bool) error {
	body, _ := json.Marshal(req)
	var resp secretsencrypt.Response
	if err := o.do(cmd.Context(), http.MethodPut, secretsencrypt.ConfigPath, body, &resp); err != nil {
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout(), resp.Message)
	if !resp.Started || !wait {
		if resp.Started {
			fmt.Fprintln(cmd.ErrOrStderr(), "The server goes on in the background: berth secrets-encrypt status")
		}
		return nil
	}
	// The server does the work; follow it until it is done.
	last := -1
	for {
		select {
		case <-cmd.Context().Done():
			return cmd.Context().Err()
		case <-time.After(300 * time.Millisecond):
		}
		st, err := o.status(cmd.Context())
		if err != nil {
			return err
		}
		if st.Running {
			if st.Progress != nil && st.Progress.Done != last && st.Progress.Done > 0 {
				last = st.Progress.Done
				fmt.Fprintf(cmd.ErrOrStderr(), "%d Secrets rewritten\n", last)
			}
			continue
		}
		if st.LastError != "" {
			return fmt.Errorf("%s failed on the server: %s", req.Command, st.LastError)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "Done: stage %s, active key %s\n", st.Stage, activeKey(st))
		return nil
	}
}

func activeKey(st *secretsencrypt.Status) string {
	for _, k := range st.Keys {
		if k.Active {
			return k.Name
		}
	}
	return "none (encryption disabled)"
}

func (o *encryptOptions) status(ctx context.Context) (*secretsencrypt.Status, error) {
	var st secretsencrypt.Status
	if err := o.do(ctx, http.MethodGet, secretsencrypt.StatusPath, nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// do sends one request to the server, verified against the data dir's
// server CA, with the server token.
func (o *encryptOptions) do(ctx context.Context, method, path string, body []byte, out any) error {
	serverDir := cli.ServerDir(o.dataDir)
	caPEM, caPath, err := cli.ReadServerCA(o.dataDir)
	if err != nil {
		return err
	}
	secret := o.token
	if secret == "" {
		b, err := os.ReadFile(filepath.Join(serverDir, "token"))
		if err != nil {
			return fmt.Errorf("read the server token: %w (run as root, or pass --token)", err)
		}
		secret = string(b)
	}
	tok, err := token.Parse(secret)
	if err != nil || tok.Bootstrap {
		return errors.New("the token is not a server token (see <data-dir>/server/token)")
	}
	if tok.CAHash != "" && tok.CAHash != token.CAHash(caPEM) {
		return fmt.Errorf("the token is for another cluster than the CA in %s", caPath)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	hc := &http.Client{
		Timeout: time.Minute,
		Transport: &http.Transport{
			Proxy:           nil, // the server is local, or named by --server
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		},
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(o.server, "/")+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("--server %q: %w", o.server, err)
	}
	req.SetBasicAuth("server", tok.Password)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the berth server at %s (is it running? pass --server https://<address>:<https-listen-port>): %w", o.server, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		msg := strings.TrimSpace(string(b))
		if resp.StatusCode == http.StatusNotFound {
			msg = "this server does not serve secrets-encrypt (an older berth?)"
		}
		return fmt.Errorf("server at %s: %s", o.server, msg)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("server at %s answered %q: %w", o.server, b, err)
	}
	return nil
}
