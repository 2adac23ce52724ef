package main

import (
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	"fieldsync/agent"
	"fieldsync/internal/cli"
)

// invocation is one run of the command line: in its own process, or inside
// the daemon on behalf of a client (then held is the daemon's agent).
type invocation struct {
	args   []string
	cwd    string
	stderr io.Writer
	held   *agent.Agent
	logger *slog.Logger

	dir     string
	verbose bool
	session *cli.Session[*agent.Agent]
}

func newRoot(inv *invocation) *cobra.Command {
	root := &cobra.Command{
		Use:   "agent",
		Short: "fieldsync site agent: record what arrived, offline, and sync it to the hub",
		Long: `agent records deliveries, trainings and confirmations of pledges at a site,
fully offline, and syncs them to the hub as signed, encrypted bundles.

All state lives in one data directory (--dir, default $FIELDSYNC_DIR).`,
		PersistentPreRun: func(cmd *cobra.Command, _ []string) {
			if inv.logger == nil {
				inv.logger = cli.NewLogger(inv.stderr, cmd.Name() == "serve" || cmd.Name() == "run", inv.verbose)
			}
			inv.session = &cli.Session[*agent.Agent]{
				Dir: inv.dir, Args: inv.args, Cwd: inv.cwd, Stderr: cmd.ErrOrStderr(), Missing: agent.ErrNotInitialised,
				Open: func(dir string) (*agent.Agent, error) {
					return agent.Open(dir, agent.Options{Logger: inv.logger})
				},
			}
			if inv.held != nil {
				inv.session.Held = &inv.held
			}
		},
		PersistentPostRunE: func(*cobra.Command, []string) error {
			return inv.session.Release((*agent.Agent).Close)
		},
	}
	root.PersistentFlags().StringVar(&inv.dir, "dir", cli.DefaultDir("agent"), "data directory (env FIELDSYNC_DIR)")
	root.PersistentFlags().BoolVarP(&inv.verbose, "verbose", "v", false, "log what happens to stderr")
	root.AddCommand(
		initCmd(inv), recordCmd(inv), pledgesCmd(inv), confirmCmd(inv), amendCmd(inv), voidCmd(inv),
		listCmd(inv), statusCmd(inv), syncCmd(inv), runCmd(inv), exportCmd(inv), importCmd(inv),
	)
	return root
}

// state opens the agent for a command (or forwards the command to the
// daemon holding the directory).
func (inv *invocation) state(cmd *cobra.Command) (*agent.Agent, error) {
	return inv.session.State(cmd.Context(), cmd.OutOrStdout())
}
