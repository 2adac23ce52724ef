package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"fieldsync/hub"
	"fieldsync/internal/cli"
	"fieldsync/internal/datadir"
	"fieldsync/protocol"
)

func serveCmd(inv *invocation) *cobra.Command {
	var opts hub.ServeOptions
	cmd := &cobra.Command{
		Use:   "serve --listen ADDR [--http ADDR]",
		Short: "serve the QUIC sync endpoint, the dashboard and API, and watch the drop folder",
		Long: `serve runs the hub: agents sync over QUIC on --listen; operators use the
dashboard and the JSON API on --http (loopback by default, operator token
required); bundles copied into the drop folder are applied. Other hub
commands keep working while it runs: they are passed to it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			h, err := inv.session.Own()
			if err != nil {
				return err
			}
			if opts.Drop != "" {
				opts.Drop = inv.session.Abs(opts.Drop)
			}
			opts.Ready = func(q, web net.Addr) {
				fmt.Fprintf(cmd.ErrOrStderr(), "hub %s serving: sync on %s (udp)", h.Info().Fingerprint, q)
				if web != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), ", dashboard on http://%s/", web)
				}
				fmt.Fprintln(cmd.ErrOrStderr())
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			var wg sync.WaitGroup
			defer wg.Wait()
			wg.Go(func() {
				err := cli.ServeCommands(ctx, inv.dir, func(req datadir.Request, stderr io.Writer) *cobra.Command {
					return newRoot(&invocation{args: req.Args, cwd: req.Dir, stderr: stderr, held: h, logger: inv.logger})
				}, inv.logger)
				if err != nil && ctx.Err() == nil {
					fmt.Fprintf(os.Stderr, "hub: control socket: %v (other hub commands will wait for the lock)\n", err)
				}
			})
			return h.Serve(ctx, opts)
		},
	}
	cmd.Flags().StringVar(&opts.Listen, "listen", "127.0.0.1:4433", "UDP address for agents to sync with")
	cmd.Flags().StringVar(&opts.HTTP, "http", "127.0.0.1:8080", "address of the dashboard and JSON API (empty to disable)")
	cmd.Flags().StringVar(&opts.Drop, "drop", "", "drop folder for bundles carried by hand (default DIR/drop)")
	return cmd
}

// The unfiltered table lists every pledge and discrepancy when both fit
// in shortList; otherwise it shows the latest latestDiscrepancies and
// says how to see the rest (Totals counts them all).
const (
	shortList           = 100
	latestDiscrepancies = 20
)

func statusCmd(inv *invocation) *cobra.Command {
	var f hub.StatusFilter
	var asJSON, all bool
	cmd := &cobra.Command{
		Use:   "status [--site ID] [--donor D] [--all] [--json]",
		Short: "the aggregated picture: pledged, received, confirmed, outstanding, disputed",
		Long: `The aggregated picture: pledged, received, confirmed, outstanding, disputed.

Without --site or --donor, on a hub with more than 100 pledges or
discrepancies, the table shows totals, sites, donors and the latest
discrepancies; --all adds every pledge and every discrepancy (a hub with
200,000 pledges prints 200,000 lines). --json always prints the whole
document, as GET /api/v1/status does.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			h, err := inv.state(cmd)
			if err != nil {
				return err
			}
			var st *hub.Status
			if summary := f == (hub.StatusFilter{}) && !all && !asJSON; summary {
				// The lists that grow with the ledger cost a pass over
				// them; the summary costs what changed since the last call.
				st, err = h.StatusSummary(latestDiscrepancies)
				if err == nil && st.Totals.Pledges <= shortList && st.Totals.Discrepancies <= shortList {
					st, err = h.Status(f) // a small hub: everything fits on a screen
				}
			} else {
				st, err = h.Status(f)
			}
			if err != nil {
				return err
			}
			if asJSON {
				return cli.PrintJSON(cmd.OutOrStdout(), st)
			}
			return printStatus(cmd.OutOrStdout(), st)
		},
	}
	cmd.Flags().StringVar(&f.Site, "site", "", "only this site")
	cmd.Flags().StringVar(&f.Donor, "donor", "", "only this donor")
	cmd.Flags().BoolVar(&all, "all", false, "list every pledge and discrepancy, not only the latest discrepancies")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the whole status as one JSON document")
	return cmd
}

func exportCmd(inv *invocation) *cobra.Command {
	var format, out, agentID string
	cmd := &cobra.Command{
		Use:   "export --format csv|json|hxl|bundle --out FILE",
		Short: "write the aggregated picture and every record for other tools (or, with --format bundle, a bundle for one agent to carry by hand)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			h, err := inv.state(cmd)
			if err != nil {
				return err
			}
			path := inv.session.Abs(out)
			if format == "bundle" {
				if agentID == "" {
					return fmt.Errorf("--format bundle needs --agent ID (see `hub status`)")
				}
				return h.ExportDown(agentID, path)
			}
			n, err := h.Export(format, path)
			if err != nil {
				return fmt.Errorf("export: %w", err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "%d rows written to %s\n", n, out)
			return nil
		},
	}
	cmd.Flags().StringVar(&format, "format", "csv", "csv, json, hxl, or bundle")
	cmd.Flags().StringVar(&out, "out", "", "file to write")
	cmd.Flags().StringVar(&agentID, "agent", "", "with --format bundle: the agent the bundle is for")
	cmd.MarkFlagRequired("out")
	return cmd
}

func importCmd(inv *invocation) *cobra.Command {
	var reply string
	cmd := &cobra.Command{
		Use:   "import FILE...",
		Short: "apply bundles carried by hand; with --reply DIR, write bundles back for the agents",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			h, err := inv.state(cmd)
			if err != nil {
				return err
			}
			files, err := expandBundles(inv.session, args)
			if err != nil {
				return err
			}
			failed := 0
			agents := map[string]bool{}
			for _, f := range files {
				res, err := h.ImportFile(f)
				if err != nil {
					failed++
					fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s: %s\n", f, res.State, res.Reason)
					if res.State == "" {
						fmt.Fprintf(cmd.ErrOrStderr(), "%s: %v\n", f, err)
					}
					continue
				}
				if res.Seq == 0 {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: %s attachment from %s\n", f, res.State, res.Agent)
					continue
				}
				agents[res.Agent] = true
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s bundle %d from %s (%s): %d record(s), %d new\n", f, res.State, res.Seq, res.Agent, res.Site, res.Records, res.Applied)
				if res.Reason != "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n", f, res.Reason)
				}
			}
			if reply != "" {
				for a := range agents {
					p := inv.session.Abs(reply) + string(os.PathSeparator) + hub.ReplyPrefix + a + ".age"
					if err := h.ExportDown(a, p); err != nil {
						return err
					}
					fmt.Fprintf(cmd.ErrOrStderr(), "reply for %s written to %s (run `agent import` on it at the site)\n", a, p)
				}
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d bundle(s) not applied (reasons above)", failed, len(files))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&reply, "reply", "", "folder to write a bundle back for each agent (acknowledgements, pledges, feedback)")
	return cmd
}

// expandBundles turns the arguments of `hub import` into bundle files: a
// folder (a USB stick's) stands for the .age files in it, in name order.
func expandBundles(s *cli.Session[*hub.Hub], args []string) ([]string, error) {
	var files []string
	for _, a := range args {
		p := s.Abs(a)
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("import: %w", err)
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		m, err := filepath.Glob(filepath.Join(p, "*.age"))
		if err != nil {
			return nil, err
		}
		// Bundles before attachments: the hub takes an attachment only
		// once a record names it.
		sort.Slice(m, func(i, j int) bool {
			ai, aj := strings.Contains(filepath.Base(m[i]), protocol.AttachmentFileInfix), strings.Contains(filepath.Base(m[j]), protocol.AttachmentFileInfix)
			if ai != aj {
				return aj
			}
			return m[i] < m[j]
		})
		// Skip the bundles this hub wrote back for agents (--reply).
		m = slices.DeleteFunc(m, func(f string) bool { return strings.HasPrefix(filepath.Base(f), hub.ReplyPrefix) })
		if len(m) == 0 {
			return nil, fmt.Errorf("import: no .age bundles in %s", a)
		}
		files = append(files, m...)
	}
	return files, nil
}
