package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"fieldsync/hub"
	"fieldsync/internal/progress"
)

func printStatus(w io.Writer, st *hub.Status) error {
	t := st.Totals
	fmt.Fprintf(w, "%d site(s), %d pledge(s): %d pledged, %d received, %d confirmed, %d outstanding; %d record(s), %d discrepancy(ies)\n\n",
		t.Sites, t.Pledges, t.Pledged, t.Received, t.Confirmed, t.Outstanding, t.Records, t.Discrepancies)
	if len(st.Syncing) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SYNCING NOW\tSITE\tFROM\tFOR\tLAST HEARD\tRECEIVED\tSENDING")
		for _, s := range st.Syncing {
			sending := "-"
			if s.Sending != "" {
				sending = fmt.Sprintf("%s: %s of %s", s.Sending, progress.Bytes(s.At), progress.Bytes(s.Size))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Agent, s.Site, s.Remote, st.Generated.Sub(s.Since),
				secondsAgo(s.LastHeard, st.Generated), progress.Bytes(s.Received), sending)
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SITE\tNAME\tREGION\tOPEN\tCLOSED\tRECORDS\tISSUES\tLAST SYNC\tAGENT")
	for _, s := range st.Sites {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", s.ID, s.Name, dash(s.Region), s.PledgesOpen, s.PledgesClosed,
			s.Records, s.Discrepancies, hub.Ago(s.LastSync, st.Generated), s.AgentState)
	}
	tw.Flush()
	if len(st.Donors) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DONOR\tPROGRAMME\tPLEDGES\tPLEDGED\tRECEIVED\tCONFIRMED\tDISPUTED")
		for _, d := range st.Donors {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\n", d.Donor, dash(d.Programme), d.Pledges, d.Pledged, d.Received, d.Confirmed, d.Disputed)
		}
		tw.Flush()
	}
	if st.Pledges == nil && t.Pledges > 0 {
		fmt.Fprintf(w, "\n%d pledge(s), not listed: hub status --all, --site ID or --donor D, or hub export\n", t.Pledges)
	}
	if len(st.Pledges) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PLEDGE\tSITE\tDONOR\tITEM\tPLEDGED\tRECEIVED\tCONFIRMED\tOUTSTANDING\tSTATE")
		for _, p := range st.Pledges {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n", p.ID, p.Site, p.Donor, clip(p.Item, 36), p.Qty, p.Received, p.Confirmed, p.Outstanding, p.State)
		}
		tw.Flush()
	}
	if len(st.Discrepancies) > 0 {
		if more := st.Totals.Discrepancies - len(st.Discrepancies); more > 0 && st.Pledges == nil {
			fmt.Fprintf(w, "\nDISCREPANCIES (the latest %d; %d more: hub status --all, --site ID, or hub export)\n", len(st.Discrepancies), more)
		} else {
			fmt.Fprintln(w, "\nDISCREPANCIES")
		}
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, d := range st.Discrepancies {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.Kind, d.Site, dash(d.Pledge), d.Record, d.Detail)
		}
		tw.Flush()
	}
	if len(st.Quarantined) > 0 {
		fmt.Fprintln(w, "\nQUARANTINED BUNDLES")
		for _, b := range st.Quarantined {
			fmt.Fprintf(w, "%s #%d: %s\n", b.From, b.Seq, b.Reason)
		}
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func clip(s string, n int) string {
	if len([]rune(s)) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}

// secondsAgo says how long before now t was, to the second: a session's
// last message matters by the second, where hub.Ago rounds to minutes.
func secondsAgo(t, now time.Time) string {
	if d := now.Sub(t); d >= time.Second {
		return d.Round(time.Second).String() + " ago"
	}
	return "now"
}
