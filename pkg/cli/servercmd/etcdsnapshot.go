package servercmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"

	"github.com/berth-io/berth/pkg/cli"
	"github.com/berth-io/berth/pkg/config"
	"github.com/berth-io/berth/pkg/etcd"
	"github.com/berth-io/berth/pkg/pki"
)

// snapshotOptions are the flags `berth etcd-snapshot` shares with `berth
// server` (same names, so the server's config file and BERTH_* variables
// apply to both).
type snapshotOptions struct {
	dataDir     string
	nodeName    string
	snapshotDir string
	compress    bool
	clientPort  int
}

// NewEtcdSnapshot returns `berth etcd-snapshot`.
//
// It works on the data dir of the server on this host: the snapshot
// directory is read directly, and a save connects to the local etcd member
// with the etcd client certificate in <data-dir>/server/tls/etcd (so it
// needs the rights to read that key: root for /var/lib/berth). No server
// endpoint is involved, so it works whenever etcd runs, even while the
// apiserver is not ready.
func NewEtcdSnapshot() *cobra.Command {
	o := &snapshotOptions{}
	cmd := &cobra.Command{
		Use:   "etcd-snapshot",
		Short: "Save, list, delete and prune snapshots of this server's embedded etcd",
		Long: `Save, list, delete and prune snapshots of this server's embedded etcd.

Snapshots are files <name>-<node>-<unix time>[.zip] in --etcd-snapshot-dir,
each with a <file>.sha256 beside it (sha256sum format). Restore one with
  berth server --cluster-reset --cluster-reset-restore-path=<file>

Flags may also come from BERTH_<FLAG> variables and the server's config file.`,
		Args: cobra.NoArgs,
	}
	pf := cmd.PersistentFlags()
	pf.StringP("config", "c", cli.DefaultConfigFile, "config file (env BERTH_CONFIG_FILE)")
	pf.StringVarP(&o.dataDir, "data-dir", "d", cli.DefaultDataDir(), "data dir of the berth server")
	pf.StringVar(&o.nodeName, "node-name", "", "node name in snapshot names (default: the hostname)")
	pf.StringVar(&o.snapshotDir, "etcd-snapshot-dir", "", "snapshot directory (default: <data-dir>/server/db/snapshots)")
	pf.BoolVar(&o.compress, "etcd-snapshot-compress", false, "zip-compress the snapshot")
	pf.IntVar(&o.clientPort, "etcd-client-port", etcd.DefaultClientPort, "the embedded etcd's client port")

	save := &cobra.Command{
		Use:   "save",
		Short: "Take a snapshot now",
		Args:  cobra.NoArgs,
	}
	name := save.Flags().String("name", etcd.OnDemandName, "snapshot name prefix")
	save.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := o.complete(cmd); err != nil {
			return err
		}
		return o.save(cmd, *name)
	}

	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List snapshots with size and sha256",
		Args:    cobra.NoArgs,
	}
	output := ls.Flags().StringP("output", "o", "table", "output format: table, json or yaml")
	ls.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := o.complete(cmd); err != nil {
			return err
		}
		return o.list(cmd, *output)
	}

	del := &cobra.Command{
		Use:   "delete NAME...",
		Short: "Delete snapshots (and their checksum files) by file name",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.complete(cmd); err != nil {
				return err
			}
			if err := etcd.Delete(o.snapshotDir, args...); err != nil {
				return err
			}
			for _, a := range args {
				fmt.Fprintf(cmd.OutOrStdout(), "deleted %s\n", filepath.Join(o.snapshotDir, a))
			}
			return nil
		},
	}

	prune := &cobra.Command{
		Use:   "prune",
		Short: "Delete this node's oldest snapshots of a name beyond the retention",
		Args:  cobra.NoArgs,
	}
	pruneName := prune.Flags().String("name", etcd.OnDemandName, "snapshot name prefix to prune (scheduled snapshots: "+etcd.ScheduledName+")")
	retention := prune.Flags().Int("snapshot-retention", 5, "number of snapshots to keep")
	prune.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := o.complete(cmd); err != nil {
			return err
		}
		deleted, err := etcd.Prune(o.snapshotDir, *pruneName, o.nodeName, *retention)
		for _, d := range deleted {
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %s\n", filepath.Join(o.snapshotDir, d))
		}
		return err
	}

	cmd.AddCommand(save, ls, del, prune)
	return cmd
}

// complete applies BERTH_* variables and the config file (ignoring the
// server's keys this command does not have) and fills the defaults.
func (o *snapshotOptions) complete(cmd *cobra.Command) error {
	fs := cmd.Flags()
	environ := os.Environ()
	path, explicit := config.FilePath(fs, "config", environ, cli.DefaultConfigFile)
	res, err := config.Apply(config.Options{
		Flags: fs, File: path, FileRequired: explicit, EnvPrefix: "BERTH_", Environ: environ,
		// Per-invocation flags never come from the server's settings.
		Skip: []string{"config", "help", "version", "v", "vmodule", "name", "output", "snapshot-retention"},
	})
	if err != nil {
		return err
	}
	for _, w := range res.Warnings {
		klog.V(2).Info(w) // the server's own keys are expected here
	}
	if o.dataDir, err = filepath.Abs(o.dataDir); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	serverDir := filepath.Join(o.dataDir, "server")
	if o.snapshotDir == "" {
		o.snapshotDir = etcd.DefaultSnapshotDir(serverDir)
	}
	if o.nodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("--node-name not given and no hostname: %w", err)
		}
		o.nodeName = strings.ToLower(h)
	}
	return nil
}

func (o *snapshotOptions) save(cmd *cobra.Command, name string) error {
	serverDir := filepath.Join(o.dataDir, "server")
	if !etcd.IsMember(serverDir) {
		return fmt.Errorf("no embedded etcd in %s: snapshots need a server started with --cluster-init (SQLite and external datastores have their own backups)", etcd.DBDir(serverDir))
	}
	files := pki.EtcdFilesIn(filepath.Join(serverDir, "tls"))
	if f, err := os.Open(files.Client.Key); err != nil {
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("cannot read the etcd client key %s: run as root (or as the user running the server)", files.Client.Key)
		}
		return fmt.Errorf("etcd client key: %w", err)
	} else {
		f.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s := &etcd.Snapshots{
		Dir: o.snapshotDir, NodeName: o.nodeName, Compress: o.compress, TLS: files,
		Endpoint: fmt.Sprintf("https://127.0.0.1:%d", o.clientPort),
	}
	info, err := s.Save(ctx, name)
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "saved snapshot %s (%d bytes, sha256 %s)\n", info.Location, info.Size, info.SHA256)
	return nil
}

func (o *snapshotOptions) list(cmd *cobra.Command, output string) error {
	snaps, err := etcd.List(o.snapshotDir)
	if err != nil {
		return err
	}
	if snaps == nil {
		snaps = []etcd.SnapshotInfo{}
	}
	out := cmd.OutOrStdout()
	switch output {
	case "json":
		b, err := json.MarshalIndent(snaps, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "%s\n", b)
		return err
	case "yaml":
		b, err := yaml.Marshal(snaps)
		if err != nil {
			return err
		}
		_, err = out.Write(b)
		return err
	case "table", "":
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSIZE\tCREATED\tSHA256")
		for _, s := range snaps {
			sum := s.SHA256
			if sum == "" {
				sum = "(no checksum file)"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", s.Name, s.Size, s.CreatedAt.Format(time.RFC3339), sum)
		}
		return tw.Flush()
	default:
		return fmt.Errorf("-o %q: want table, json or yaml", output)
	}
}
