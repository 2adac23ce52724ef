package hub

import (
	"fmt"
	"slices"

	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

// Discrepancy kinds.
const (
	DiscShort      = "short"      // fewer received than pledged, reported at confirmation
	DiscOver       = "over"       // more received than pledged
	DiscDamaged    = "damaged"    // items arrived damaged
	DiscIncomplete = "incomplete" // items arrived incomplete
	DiscRejected   = "rejected"   // items rejected at confirmation (wrong item, expired)
	DiscSerial     = "serial"     // a serial number reported at two sites
	DiscUnmatched  = "unmatched"  // a delivery that names no known pledge
	DiscCancelled  = "cancelled"  // a delivery or confirmation of a cancelled pledge
	DiscWrongSite  = "wrong-site" // a record names a pledge of another site
)

// Discrepancy is something wrong with what a site reported, attached to the
// record that showed it and, where there is one, to its pledge.
type Discrepancy struct {
	Kind   string `json:"kind"`
	Site   string `json:"site"`
	Pledge string `json:"pledge,omitempty"`
	Record string `json:"record"`
	Detail string `json:"detail"`
}

// recordDiscrepancies finds what is wrong with one applied record, given the
// state it was applied to (which includes the record itself) and the pledge
// it names (nil if none or unknown). With withTotals it also checks the
// pledge for over-delivery, as intake does to tell the site at once; the
// aggregated status checks each pledge once instead (see
// pledgeDiscrepancy), so that an over-delivered pledge is one discrepancy,
// not one per record.
func recordDiscrepancies(recs ledger.Records, rec *protocol.Record, p *protocol.Pledge, withTotals bool) ([]Discrepancy, error) {
	out := ownDiscrepancies(nil, rec, p)
	if withTotals && p != nil && !p.Cancelled && p.Site == rec.Site && isReport(rec) {
		total, err := recs.PledgeTotals(p.ID)
		if err != nil {
			return nil, err
		}
		switch {
		case rec.Type == protocol.TypeConfirmation && total.Confirmed+total.Rejected > p.Qty:
			out = appendDiscrepancy(out, rec, DiscOver, "confirmed %d + rejected %d of %d pledged", total.Confirmed, total.Rejected, p.Qty)
		case rec.Type != protocol.TypeConfirmation && total.Received > p.Qty:
			out = appendDiscrepancy(out, rec, DiscOver, "received %d of %d pledged", total.Received, p.Qty)
		}
	}
	return serialDiscrepancies(out, rec, serialLookup(recs, rec.Serials, rec.Site))
}

// isReport reports whether a record reports something (a delivery, a
// training, a confirmation), as opposed to correcting another record. Only
// reports carry discrepancies.
func isReport(rec *protocol.Record) bool {
	switch rec.Type {
	case protocol.TypeDelivery, protocol.TypeConfirmation, protocol.TypeTraining:
		return true
	}
	return false
}

// isCorrection reports whether a record amends or voids another.
func isCorrection(rec *protocol.Record) bool {
	return rec.Type == protocol.TypeAmendment || rec.Type == protocol.TypeVoid
}

func appendDiscrepancy(out []Discrepancy, rec *protocol.Record, kind, format string, args ...any) []Discrepancy {
	return append(out, Discrepancy{Kind: kind, Site: rec.Site, Pledge: rec.Pledge, Record: rec.ID, Detail: fmt.Sprintf(format, args...)})
}

// ownDiscrepancies appends what is wrong with rec by itself and against p,
// the pledge it names (nil if it names none or one the hub does not know):
// everything but serial numbers seen elsewhere and over-delivery.
func ownDiscrepancies(out []Discrepancy, rec *protocol.Record, p *protocol.Pledge) []Discrepancy {
	if !isReport(rec) {
		return out
	}
	switch {
	case rec.Pledge == "" && rec.Type == protocol.TypeDelivery:
		out = appendDiscrepancy(out, rec, DiscUnmatched, "delivery of %d × %q matches no pledge", rec.Qty, rec.Item)
	case rec.Pledge != "" && p == nil:
		out = appendDiscrepancy(out, rec, DiscUnmatched, "names pledge %s, which the hub does not know", rec.Pledge)
	case p != nil && p.Site != rec.Site:
		out = appendDiscrepancy(out, rec, DiscWrongSite, "names pledge %s of site %s", p.ID, p.Site)
	case p != nil && p.Cancelled:
		out = appendDiscrepancy(out, rec, DiscCancelled, "%s of pledge %s, which was cancelled", rec.Type, p.ID)
	}
	switch rec.Condition {
	case protocol.ConditionDamaged:
		out = appendDiscrepancy(out, rec, DiscDamaged, "%d × %q arrived damaged", rec.Qty, rec.Item)
	case protocol.ConditionIncomplete:
		out = appendDiscrepancy(out, rec, DiscIncomplete, "%d × %q arrived incomplete", rec.Qty, rec.Item)
	}
	if rec.Type == protocol.TypeConfirmation && rec.QtyRejected > 0 {
		kind := DiscRejected
		switch rec.Rejection {
		case protocol.RejectShort:
			kind = DiscShort
		case protocol.RejectDamaged:
			kind = DiscDamaged
		}
		out = appendDiscrepancy(out, rec, kind, "%d rejected at confirmation: %s", rec.QtyRejected, rec.Rejection)
	}
	return out
}

// serialDiscrepancies appends a discrepancy for each serial number of rec
// that elsewhere says another site reported too. They come last among a
// record's discrepancies.
func serialDiscrepancies(out []Discrepancy, rec *protocol.Record, elsewhere func(serial string) (string, error)) ([]Discrepancy, error) {
	if !isReport(rec) {
		return out, nil
	}
	for _, s := range rec.Serials {
		if other, err := elsewhere(s); err != nil {
			return nil, err
		} else if other != "" {
			out = appendDiscrepancy(out, rec, DiscSerial, "serial %q was also reported at site %s", s, other)
		}
	}
	return out, nil
}

// pledgeDiscrepancy finds over-delivery on a pledge from its totals, shown
// against last, the latest record that names the pledge.
func pledgeDiscrepancy(p *protocol.Pledge, t ledger.Totals, last *protocol.Record) (Discrepancy, bool) {
	if p.Cancelled || last == nil {
		return Discrepancy{}, false
	}
	d := Discrepancy{Kind: DiscOver, Site: last.Site, Pledge: p.ID, Record: last.ID}
	switch {
	case t.Received > p.Qty:
		d.Detail = fmt.Sprintf("received %d of %d pledged", t.Received, p.Qty)
	case t.Confirmed+t.Rejected > p.Qty:
		d.Detail = fmt.Sprintf("confirmed %d + rejected %d of %d pledged", t.Confirmed, t.Rejected, p.Qty)
	default:
		return Discrepancy{}, false
	}
	return d, true
}

// pledgeByID returns the pledge with id, or nil if there is none (or id is
// empty).
func pledgeByID(txn *memdb.Txn, id string) (*protocol.Pledge, error) {
	if id == "" {
		return nil, nil
	}
	obj, err := txn.First(ledger.TablePledges, ledger.IndexID, id)
	p, _ := obj.(*protocol.Pledge)
	return p, err
}

// checkRecord records the discrepancies of a newly applied record as
// feedback for the agent that sent it.
func checkRecord(txn *memdb.Txn, rec *protocol.Record, fb *feedbackWriter) error {
	p, err := pledgeByID(txn, rec.Pledge)
	if err != nil {
		return err
	}
	ds, err := recordDiscrepancies(ledger.RecordsOf(txn), rec, p, true)
	if err != nil {
		return err
	}
	for _, d := range ds {
		if err := fb.add(rec.ID, "discrepancy", d.Kind+": "+d.Detail); err != nil {
			return err
		}
	}
	return nil
}

// serialsElsewhere returns, for those of serials that another site
// reported, one such site. Voided records do not count, nor records whose
// serials were corrected since: only what a site stands by now. Each record
// that states any of the serials is read once: a report may state thousands
// of serial numbers, and so may the records it shares them with.
func serialsElsewhere(recs ledger.Records, serials []string, site string) (map[string]string, error) {
	found := map[string]string{}
	for c, err := range recs.WithSerials(serials...) {
		if err != nil {
			return nil, err
		}
		if c.Site == site {
			continue
		}
		r := c
		if r.Type == protocol.TypeAmendment {
			// The amended record is what counts.
			t, err := recs.ByID(r.Target)
			if err != nil {
				return nil, err
			}
			if t == nil {
				continue
			}
			r = t
		}
		eff, voided, err := recs.Effective(r)
		if err != nil {
			return nil, err
		}
		if voided {
			continue
		}
		// What c states and the record as it stands still states.
		for _, s := range c.Serials {
			if _, done := found[s]; !done && slices.Contains(serials, s) && slices.Contains(eff.Serials, s) {
				found[s] = r.Site
			}
		}
	}
	return found, nil
}

// serialLookup returns a function that says which other site reported a
// serial number of serials ("" if none), reading what it needs on its
// first call: most records' discrepancy checks never ask.
func serialLookup(recs ledger.Records, serials []string, site string) func(string) (string, error) {
	var found map[string]string
	var err error
	return func(s string) (string, error) {
		if found == nil && err == nil {
			found, err = serialsElsewhere(recs, serials, site)
		}
		return found[s], err
	}
}
