package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"fieldsync/agent"
	"fieldsync/internal/cli"
	"fieldsync/internal/progress"
)

func statusCmd(inv *invocation) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "unsynced records and bytes, last successful sync, last error, hub",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := inv.state(cmd)
			if err != nil {
				return err
			}
			st, err := a.Status()
			if err != nil {
				return err
			}
			if asJSON {
				return cli.PrintJSON(cmd.OutOrStdout(), st)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "agent      %s\nsite       %s (%s)\nhub        %s (%s)\n", st.Agent, st.Site, st.SiteName, st.Hub, st.HubFingerprint)
			fmt.Fprintf(w, "records    %d, %d not yet acknowledged by the hub (%s)\n", st.Records, st.Unsynced, progress.Bytes(st.UnsyncedBytes))
			if st.AttachmentsPending > 0 {
				fmt.Fprintf(w, "attached   %d file(s), %s, not yet held by the hub\n", st.AttachmentsPending, progress.Bytes(st.AttachmentBytesPending))
			}
			if !st.OldestUnsynced.IsZero() {
				fmt.Fprintf(w, "oldest     unsynced since %s\n", st.OldestUnsynced.Format(time.RFC3339))
			}
			fmt.Fprintf(w, "pledges    %d, %d open\n", st.Pledges, st.PledgesOpen)
			last := "never"
			if st.LastSync != "" {
				last = st.LastSync + " (took " + st.LastSyncTook + ")"
			}
			fmt.Fprintf(w, "last sync  %s\n", last)
			if t := st.Transfer; t != nil {
				now := fmt.Sprintf("syncing    since %s: %s", t.Since.Format(time.TimeOnly), t.What)
				if t.Total > 0 {
					now += ", " + progress.Reading{Done: t.Sent, Total: t.Total, Rate: float64(t.Rate),
						Left: time.Duration(t.LeftSeconds) * time.Second}.String()
				}
				fmt.Fprintln(w, now)
			}
			if st.Deferred != "" {
				fmt.Fprintf(w, "deferred   %s\n", st.Deferred)
			}
			if st.LastError != "" {
				fmt.Fprintf(w, "last error %s: %s\n", st.LastErrorAt, st.LastError)
			}
			if st.HubNotes > 0 {
				fmt.Fprintf(w, "hub notes  %d (see `agent list`)\n", st.HubNotes)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON document")
	return cmd
}

func syncCmd(inv *invocation) *cobra.Command {
	var opts agent.SyncOptions
	cmd := &cobra.Command{
		Use:   "sync",
		Short: "sync with the hub now, once; exits non-zero if the hub could not be reached",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := inv.state(cmd)
			if err != nil {
				return err
			}
			bar := progress.New(cmd.ErrOrStderr(), "upload")
			opts.Progress = bar.Update
			res, err := a.Sync(cmd.Context(), opts)
			bar.Done()
			if err != nil {
				return fmt.Errorf("sync: %w", err)
			}
			if res.LinkBytes == 0 && res.Deferred != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "not synced: %s\n", res.Deferred)
				return nil
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "synced with %s: %d bundle(s), %s sent, %d from hub, %s on the link, took %s\n",
				a.Identity().HubAddr, res.BundlesSent, progress.Bytes(res.BytesSent), res.DownApplied,
				progress.Bytes(res.LinkBytes), res.Took.Round(time.Millisecond))
			if res.Deferred != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "left for later: %s\n", res.Deferred)
			}
			return nil
		},
	}
	syncFlags(cmd, &opts)
	return cmd
}

// syncFlags are the link-frugality flags of `sync` and `run`.
func syncFlags(cmd *cobra.Command, opts *agent.SyncOptions) {
	cmd.Flags().BoolVar(&opts.RecordsOnly, "records-only", false, "send records but leave attachments for a better link")
	cmd.Flags().Var((*budgetFlag)(&opts.Budget), "budget", "cap on bytes put on the link per UTC day, e.g. 5MB/day (both directions, all overhead)")
}

// budgetFlag parses sizes like 5MB/day, 500kB, 1GB.
type budgetFlag int64

func (b *budgetFlag) String() string {
	if *b == 0 {
		return ""
	}
	return progress.Bytes(int64(*b)) + "/day"
}

func (b *budgetFlag) Type() string { return "SIZE/day" }

func (b *budgetFlag) Set(s string) error {
	v := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), "/day")
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		n      int64
	}{{"gb", 1 << 30}, {"mb", 1 << 20}, {"kb", 1 << 10}, {"g", 1 << 30}, {"m", 1 << 20}, {"k", 1 << 10}, {"b", 1}} {
		if strings.HasSuffix(v, u.suffix) {
			v, mult = strings.TrimSpace(strings.TrimSuffix(v, u.suffix)), u.n
			break
		}
	}
	n, err := strconv.ParseFloat(v, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("%q is not a size per day such as 5MB/day", s)
	}
	*b = budgetFlag(n * float64(mult))
	return nil
}

func exportCmd(inv *invocation) *cobra.Command {
	var to string
	cmd := &cobra.Command{
		Use:   "export --to DIR",
		Short: "write the bundles the hub lacks to DIR (a USB stick) for `hub import`",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := inv.state(cmd)
			if err != nil {
				return err
			}
			files, err := a.Export(inv.session.Abs(to))
			if err != nil {
				return fmt.Errorf("export: %w", err)
			}
			for _, f := range files {
				fmt.Fprintln(cmd.OutOrStdout(), f)
			}
			if len(files) == 0 {
				fmt.Fprintln(cmd.ErrOrStderr(), "nothing to export: the hub has every record")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "folder to write bundles to")
	cmd.MarkFlagRequired("to")
	return cmd
}

func importCmd(inv *invocation) *cobra.Command {
	return &cobra.Command{
		Use:   "import FILE...",
		Short: "apply bundles from the hub carried by hand (pledges, acknowledgements, feedback)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := inv.state(cmd)
			if err != nil {
				return err
			}
			for _, f := range args {
				n, err := a.Import(inv.session.Abs(f))
				if err != nil {
					return fmt.Errorf("import: %w", err)
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: %d item(s) applied\n", f, n)
			}
			return nil
		},
	}
}
