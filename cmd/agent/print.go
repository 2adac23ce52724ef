package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"fieldsync/agent"
	"fieldsync/protocol"
)

func printPledges(w io.Writer, ps []agent.PledgeView) error {
	if len(ps) == 0 {
		fmt.Fprintln(w, "no pledges (they arrive from the hub at sync)")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PLEDGE\tKIND\tITEM\tDONOR\tPROGRAMME\tPLEDGED\tRECEIVED\tCONFIRMED\tREJECTED\tSTATE")
	for _, p := range ps {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n", p.ID, p.Kind, clip(p.Item, 40), p.Donor,
			dash(p.Programme), p.Qty, p.Received, p.Confirmed, p.Rejected, p.State)
	}
	return tw.Flush()
}

func printRecords(w io.Writer, rs []agent.RecordView) error {
	if len(rs) == 0 {
		fmt.Fprintln(w, "no records")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSEQ\tTYPE\tWHAT\tQTY\tPLEDGE\tSYNC\tHUB")
	for _, r := range rs {
		what, qty := describe(r.Record)
		if r.Voided {
			what = "(void) " + what
		}
		hub := dash(r.HubState)
		if r.HubReason != "" {
			hub += ": " + r.HubReason
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Seq, r.Type, clip(what, 40), qty,
			dash(r.Pledge), r.Sync, hub)
	}
	return tw.Flush()
}

func describe(r protocol.Record) (what, qty string) {
	switch r.Type {
	case protocol.TypeTraining:
		return r.Course + " " + r.Date, fmt.Sprint(r.Attendees)
	case protocol.TypeAmendment:
		return "corrects " + r.Target, "-"
	case protocol.TypeVoid:
		return "voids " + r.Target + ": " + r.Reason, "-"
	case protocol.TypeConfirmation:
		q := fmt.Sprint(r.Qty)
		if r.QtyRejected > 0 {
			q += fmt.Sprintf(" (+%d rejected: %s)", r.QtyRejected, r.Rejection)
		}
		return "confirms " + r.Pledge, q
	}
	what = r.Item
	if r.Condition != "" && r.Condition != protocol.ConditionOK {
		what += " [" + string(r.Condition) + "]"
	}
	return what, fmt.Sprint(r.Qty)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func clip(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len([]rune(s)) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}
