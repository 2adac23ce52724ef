package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"fieldsync/agent"
	"fieldsync/internal/cli"
	"fieldsync/protocol"
)

func initCmd(inv *invocation) *cobra.Command {
	var enrolPath string
	cmd := &cobra.Command{
		Use:   "init --enroll FILE",
		Short: "create this agent's keys and pin the hub from an enrolment file (works offline)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := os.Open(inv.session.Abs(enrolPath))
			if err != nil {
				return fmt.Errorf("open enrolment file: %w", err)
			}
			defer f.Close()
			enrol, err := protocol.ParseEnrolment(f)
			if err != nil {
				return fmt.Errorf("read enrolment file %s: %w", enrolPath, err)
			}
			id, err := agent.Init(inv.dir, enrol)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), id.AgentID)
			fmt.Fprintf(cmd.ErrOrStderr(), "agent %s for site %s (%s) created in %s; hub %s pinned (%s)\n",
				id.AgentID, id.Site, id.SiteName, inv.dir, id.HubAddr, id.HubKeyPin)
			return nil
		},
	}
	cmd.Flags().StringVar(&enrolPath, "enroll", "", "enrolment file written by `hub enroll`")
	cmd.MarkFlagRequired("enroll")
	return cmd
}

// recordFlags are the fields a site engineer can give a record on the command
// line; the inbox uses the same names with - written _.
type recordFlags struct {
	item, condition, receivedBy, role, waybill, note, rejection string
	course, date, provider, trainer, pledge                     string
	qty, rejected, attendees                                    int64
	serials, attach                                             []string
}

func (f *recordFlags) deliveryFlags(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.item, "item", "", "what arrived, e.g. \"FortiGate 100F firewall\"")
	fl.Int64Var(&f.qty, "qty", 0, "how many arrived")
	fl.StringArrayVar(&f.serials, "serial", nil, "a serial number (repeat for each)")
	fl.StringVar(&f.condition, "condition", "", "ok, damaged or incomplete")
	fl.StringVar(&f.receivedBy, "received-by", "", "who received it")
	fl.StringVar(&f.note, "note", "", "free text")
	fl.StringArrayVar(&f.attach, "attach", nil, "a file to attach, e.g. a waybill scan (repeat for each)")
}

func (f *recordFlags) trainingFlags(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.course, "course", "", "the course given")
	fl.StringVar(&f.date, "date", "", "when, as YYYY-MM-DD")
	fl.Int64Var(&f.attendees, "attendees", 0, "how many people attended (no names)")
	fl.StringVar(&f.provider, "provider", "", "who provided the training")
	fl.StringVar(&f.trainer, "trainer", "", "who gave it")
}

func (f *recordFlags) record(typ protocol.RecordType) protocol.Record {
	return protocol.Record{
		Type: typ, Pledge: f.pledge, Item: f.item, Qty: f.qty, QtyRejected: f.rejected,
		Rejection: protocol.RejectReason(f.rejection), Serials: f.serials, Condition: protocol.Condition(f.condition),
		ReceivedBy: f.receivedBy, Role: f.role, Waybill: f.waybill, Course: f.course, Date: f.date,
		Attendees: f.attendees, Provider: f.provider, Trainer: f.trainer, Note: f.note,
	}
}

// add stores a record and prints its id alone on the first line.
func (inv *invocation) add(cmd *cobra.Command, rec protocol.Record, attach []string) error {
	a, err := inv.state(cmd)
	if err != nil {
		return err
	}
	paths := make([]string, len(attach))
	for i, p := range attach {
		paths[i] = inv.session.Abs(p)
	}
	stored, err := a.Add(rec, paths)
	if err != nil {
		return fmt.Errorf("record %s: %w", rec.Type, err)
	}
	fmt.Fprintln(cmd.OutOrStdout(), stored.ID)
	if stored.Pledge != "" && stored.Type != protocol.TypeConfirmation {
		if _, err := a.Pledge(stored.Pledge); err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "note: pledge %s has not reached this site yet; the hub will match it\n", stored.Pledge)
		}
	}
	return nil
}

func recordCmd(inv *invocation) *cobra.Command {
	cmd := &cobra.Command{Use: "record", Short: "record a delivery or a training"}
	var d recordFlags
	delivery := &cobra.Command{
		Use:   "delivery --item TEXT --qty N",
		Short: "record a delivery that arrived; prints its id",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return inv.add(cmd, d.record(protocol.TypeDelivery), d.attach)
		},
	}
	d.deliveryFlags(delivery)
	delivery.Flags().StringVar(&d.pledge, "pledge", "", "the pledge this delivery fulfils")
	var t recordFlags
	training := &cobra.Command{
		Use:   "training --course TEXT --date YYYY-MM-DD --attendees N",
		Short: "record a training given to the site's staff; prints its id",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return inv.add(cmd, t.record(protocol.TypeTraining), nil)
		},
	}
	t.trainingFlags(training)
	training.Flags().StringVar(&t.pledge, "pledge", "", "the pledge this training fulfils")
	cmd.AddCommand(delivery, training)
	return cmd
}

func confirmCmd(inv *invocation) *cobra.Command {
	var f recordFlags
	cmd := &cobra.Command{
		Use:   "confirm PLEDGE-ID",
		Short: "confirm an expected delivery or training against its pledge; prints the confirmation's id",
		Long: `confirm records the proof of delivery for one pledge: how many were received
(default: all still expected) and how many rejected with a reason, serials
seen, who signed for it, the waybill reference and scans.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f.pledge = args[0]
			if !cmd.Flags().Changed("qty") {
				a, err := inv.state(cmd)
				if err != nil {
					return err
				}
				p, err := a.Pledge(args[0])
				if err != nil {
					return err
				}
				f.qty = max(0, p.Qty-p.Confirmed-p.Rejected-f.rejected)
			}
			return inv.add(cmd, f.record(protocol.TypeConfirmation), f.attach)
		},
	}
	fl := cmd.Flags()
	fl.Int64Var(&f.qty, "qty", 0, "how many were received in good order (default: all still expected)")
	fl.Int64Var(&f.rejected, "rejected", 0, "how many were rejected")
	fl.StringVar(&f.rejection, "rejection", "", "why they were rejected: damaged, short, wrong-item or expired")
	fl.StringArrayVar(&f.serials, "serial", nil, "a serial number seen (repeat for each)")
	fl.StringVar(&f.condition, "condition", "", "ok, damaged or incomplete")
	fl.StringVar(&f.receivedBy, "received-by", "", "who signed for it")
	fl.StringVar(&f.role, "role", "", "the signer's role")
	fl.StringVar(&f.waybill, "waybill", "", "waybill or goods-received-note reference")
	fl.StringVar(&f.note, "note", "", "free text")
	fl.StringArrayVar(&f.attach, "attach", nil, "a file to attach (repeat for each)")
	return cmd
}

func amendCmd(inv *invocation) *cobra.Command {
	var f recordFlags
	cmd := &cobra.Command{
		Use:   "amend ID [--FIELD VALUE]...",
		Short: "correct an earlier record; the correction is a new record, prints its id",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().NFlag() == 0 || (cmd.Flags().NFlag() == 1 && cmd.Flags().Changed("dir")) {
				return fmt.Errorf("give at least one field to correct, e.g. --qty 3 (see --help)")
			}
			rec := f.record(protocol.TypeAmendment)
			rec.Target = args[0]
			return inv.add(cmd, rec, f.attach)
		},
	}
	f.deliveryFlags(cmd)
	f.trainingFlags(cmd)
	fl := cmd.Flags()
	fl.Int64Var(&f.rejected, "rejected", 0, "how many were rejected (confirmations)")
	fl.StringVar(&f.rejection, "rejection", "", "why they were rejected (confirmations)")
	fl.StringVar(&f.role, "role", "", "the signer's role (confirmations)")
	fl.StringVar(&f.waybill, "waybill", "", "waybill reference (confirmations)")
	return cmd
}

func voidCmd(inv *invocation) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "void ID --reason TEXT",
		Short: "cancel an earlier record (it stays in the ledger, marked void); prints the void's id",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return inv.add(cmd, protocol.Record{Type: protocol.TypeVoid, Target: args[0], Reason: reason}, nil)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why the record is void")
	cmd.MarkFlagRequired("reason")
	return cmd
}

func pledgesCmd(inv *invocation) *cobra.Command {
	var open, asJSON bool
	cmd := &cobra.Command{
		Use:   "pledges",
		Short: "what the hub expects this site to receive, with what has been confirmed so far",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := inv.state(cmd)
			if err != nil {
				return err
			}
			ps, err := a.Pledges(open)
			if err != nil {
				return err
			}
			if asJSON {
				return cli.PrintJSON(cmd.OutOrStdout(), map[string]any{"pledges": nonNil(ps)})
			}
			return printPledges(cmd.OutOrStdout(), ps)
		},
	}
	cmd.Flags().BoolVar(&open, "open", false, "only pledges not yet fulfilled or cancelled")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON document")
	return cmd
}

func listCmd(inv *invocation) *cobra.Command {
	var pending, asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "local records with their sync state and what the hub said about them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := inv.state(cmd)
			if err != nil {
				return err
			}
			rs, err := a.Records(pending)
			if err != nil {
				return err
			}
			if asJSON {
				return cli.PrintJSON(cmd.OutOrStdout(), map[string]any{"records": nonNil(rs)})
			}
			return printRecords(cmd.OutOrStdout(), rs)
		},
	}
	cmd.Flags().BoolVar(&pending, "pending", false, "only records the hub has not acknowledged")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON document")
	return cmd
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
