package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"fieldsync/hub"
	"fieldsync/internal/cli"
	"fieldsync/protocol"
)

// invocation is one run of the command line: in its own process, or inside
// `hub serve` on behalf of a client (then held is the serving hub).
type invocation struct {
	args   []string
	cwd    string
	stderr io.Writer
	held   *hub.Hub
	logger *slog.Logger

	dir     string
	verbose bool
	session *cli.Session[*hub.Hub]
}

func newRoot(inv *invocation) *cobra.Command {
	root := &cobra.Command{
		Use:   "hub",
		Short: "fieldsync hub: enrol sites, issue pledges, receive and aggregate what sites report",
		Long: `hub receives what site agents record — deliveries, trainings, confirmations —
as signed, encrypted bundles over QUIC or carried by hand, applies each record
exactly once, and shows what was pledged, received, confirmed and disputed.

All state lives in one data directory (--dir, default $FIELDSYNC_DIR).`,
		PersistentPreRun: func(cmd *cobra.Command, _ []string) {
			if inv.logger == nil {
				inv.logger = cli.NewLogger(inv.stderr, cmd.Name() == "serve" || cmd.Name() == "run", inv.verbose)
			}
			inv.session = &cli.Session[*hub.Hub]{
				Dir: inv.dir, Args: inv.args, Cwd: inv.cwd, Stderr: cmd.ErrOrStderr(), Missing: hub.ErrNotInitialised,
				Open: func(dir string) (*hub.Hub, error) { return hub.Open(dir, hub.Options{Logger: inv.logger}) },
			}
			if inv.held != nil {
				inv.session.Held = &inv.held
			}
		},
		PersistentPostRunE: func(*cobra.Command, []string) error {
			return inv.session.Release((*hub.Hub).Close)
		},
	}
	root.PersistentFlags().StringVar(&inv.dir, "dir", cli.DefaultDir("hub"), "data directory (env FIELDSYNC_DIR)")
	root.PersistentFlags().BoolVarP(&inv.verbose, "verbose", "v", false, "log what happens to stderr")
	root.AddCommand(initCmd(inv), serveCmd(inv), enrollCmd(inv), revokeCmd(inv), pledgeCmd(inv),
		statusCmd(inv), exportCmd(inv), importCmd(inv))
	return root
}

func (inv *invocation) state(cmd *cobra.Command) (*hub.Hub, error) {
	return inv.session.State(cmd.Context(), cmd.OutOrStdout())
}

func initCmd(inv *invocation) *cobra.Command {
	return &cobra.Command{
		Use:   "init",
		Short: "create the hub's keys and operator token; prints the hub fingerprint",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info, err := hub.Init(inv.dir)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), info.Fingerprint)
			fmt.Fprintf(cmd.ErrOrStderr(), "hub created in %s\n  age recipient: %s\n  operator token: %s\n",
				inv.dir, info.Recipient, inv.dir+string(os.PathSeparator)+"operator.token")
			return nil
		},
	}
}

func enrollCmd(inv *invocation) *cobra.Command {
	var req hub.EnrolRequest
	var out string
	var valid time.Duration
	cmd := &cobra.Command{
		Use:   "enroll --site ID --name NAME --addr HOST:PORT --out FILE",
		Short: "write a one-time enrolment file for one site agent; prints the agent id",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			h, err := inv.state(cmd)
			if err != nil {
				return err
			}
			req.Valid = valid
			e, err := h.Enrol(req)
			if err != nil {
				return fmt.Errorf("enrol site %q: %w", req.Site, err)
			}
			path := inv.session.Abs(out)
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if errors.Is(err, os.ErrExist) {
				return fmt.Errorf("%s already exists; choose another --out", out)
			}
			if err != nil {
				return fmt.Errorf("write enrolment file: %w", err)
			}
			if err := e.Write(f); err != nil {
				f.Close()
				return fmt.Errorf("write enrolment file: %w", err)
			}
			if err := f.Close(); err != nil {
				return fmt.Errorf("write enrolment file: %w", err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), e.AgentID)
			fmt.Fprintf(cmd.ErrOrStderr(), "enrolment for site %s written to %s (valid until %s, one use); carry it to the site and run `agent init --enroll %s`\n",
				e.Site, out, e.Expires.Format(time.RFC3339), out)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&req.Site, "site", "", "site id, e.g. UA-KV-017")
	fl.StringVar(&req.Name, "name", "", "site name")
	fl.StringVar(&req.Sector, "sector", "", "sector, e.g. energy, telecom, water")
	fl.StringVar(&req.Region, "region", "", "region (oblast)")
	fl.StringVar(&req.Addr, "addr", "", "HOST:PORT the agent dials to reach this hub")
	fl.StringVar(&out, "out", "", "enrolment file to write")
	fl.DurationVar(&valid, "valid", hub.DefaultEnrolmentValidity, "how long the file can be used")
	for _, f := range []string{"site", "name", "addr", "out"} {
		cmd.MarkFlagRequired(f)
	}
	return cmd
}

func revokeCmd(inv *invocation) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "revoke AGENT-OR-SITE",
		Short: "revoke an agent (or all agents of a site): it can no longer connect, and what it sends is quarantined",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			h, err := inv.state(cmd)
			if err != nil {
				return err
			}
			ids, err := h.Revoke(args[0], reason)
			if err != nil {
				return fmt.Errorf("revoke: %w", err)
			}
			for _, id := range ids {
				fmt.Fprintln(cmd.OutOrStdout(), id)
			}
			if len(ids) == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s was already revoked\n", args[0])
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "revoked by operator", "why (kept in the ledger)")
	return cmd
}

func pledgeCmd(inv *invocation) *cobra.Command {
	cmd := &cobra.Command{Use: "pledge", Short: "issue pledges: expected deliveries and trainings for a site"}
	var p protocol.Pledge
	var kind string
	add := &cobra.Command{
		Use:   "add --site ID --donor D --kind KIND --item TEXT --qty N",
		Short: "add one pledge; prints its id",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			h, err := inv.state(cmd)
			if err != nil {
				return err
			}
			p.Kind = protocol.PledgeKind(kind)
			ps, err := h.AddPledges([]protocol.Pledge{p})
			if err != nil {
				return fmt.Errorf("add pledge: %w", err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), ps[0].ID)
			if !h.KnownSite(p.Site) {
				fmt.Fprintf(cmd.ErrOrStderr(), "note: site %q is not enrolled yet; the pledge waits for its agent\n", p.Site)
			}
			return nil
		},
	}
	fl := add.Flags()
	fl.StringVar(&p.Site, "site", "", "site id")
	fl.StringVar(&p.Donor, "donor", "", "donor, e.g. \"Estonia\"")
	fl.StringVar(&p.Programme, "programme", "", "programme, e.g. \"Tallinn Mechanism\"")
	fl.StringVar(&kind, "kind", "", "hardware, software, satcom or training")
	fl.StringVar(&p.Item, "item", "", "item or course")
	fl.Int64Var(&p.Qty, "qty", 0, "quantity (attendees for a training)")
	for _, f := range []string{"site", "donor", "kind", "item", "qty"} {
		add.MarkFlagRequired(f)
	}
	imp := &cobra.Command{
		Use:   "import FILE.csv",
		Short: "add pledges from a CSV file (columns site, donor, programme, kind, item, qty); prints their ids",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(inv.session.Abs(args[0]))
			if err != nil {
				return fmt.Errorf("open pledge file: %w", err)
			}
			defer f.Close()
			ps, err := hub.ParsePledgeCSV(f)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			h, err := inv.state(cmd)
			if err != nil {
				return err
			}
			ps, err = h.AddPledges(ps)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			for _, p := range ps {
				fmt.Fprintln(cmd.OutOrStdout(), p.ID)
			}
			return nil
		},
	}
	cancel := &cobra.Command{
		Use:   "cancel PLEDGE-ID",
		Short: "cancel a pledge; the site learns it at its next sync",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			h, err := inv.state(cmd)
			if err != nil {
				return err
			}
			return h.CancelPledge(args[0])
		},
	}
	cmd.AddCommand(add, imp, cancel)
	return cmd
}
