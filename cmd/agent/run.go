package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"fieldsync/agent"
	"fieldsync/internal/cli"
	"fieldsync/internal/datadir"
)

func runCmd(inv *invocation) *cobra.Command {
	var opts agent.RunOptions
	cmd := &cobra.Command{
		Use:   "run",
		Short: "daemon: watch the inbox folder and sync whenever the hub is reachable",
		Long: `run keeps the agent working: files dropped in the inbox become records, and
records go to the hub whenever it can be reached, retrying with backoff while
it cannot. Other agent commands keep working while it runs: they are passed
to the daemon.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := inv.session.Own()
			if err != nil {
				return err
			}
			if opts.Inbox != "" {
				opts.Inbox = inv.session.Abs(opts.Inbox)
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			var wg sync.WaitGroup
			defer wg.Wait()
			serveErr := make(chan error, 1)
			wg.Go(func() {
				serveErr <- cli.ServeCommands(ctx, inv.dir, func(req datadir.Request, stderr io.Writer) *cobra.Command {
					return newRoot(&invocation{args: req.Args, cwd: req.Dir, stderr: stderr, held: a, logger: inv.logger})
				}, inv.logger)
			})
			fmt.Fprintf(cmd.ErrOrStderr(), "agent %s running: inbox %s, hub %s\n", a.Identity().AgentID, a.InboxDir(), a.Identity().HubAddr)
			err = a.Run(ctx, opts)
			cancel()
			if serr := <-serveErr; err == nil && serr != nil && ctx.Err() == nil {
				err = serr
			}
			return err
		},
	}
	cmd.Flags().StringVar(&opts.Inbox, "inbox", "", "inbox folder (default DIR/inbox)")
	cmd.Flags().DurationVar(&opts.Settle, "settle", 2*time.Second, "how long a dropped file must stay unchanged before it is taken")
	syncFlags(cmd, &opts.Sync)
	return cmd
}
