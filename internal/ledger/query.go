package ledger

import (
	"cmp"
	"slices"

	"fieldsync/protocol"
)

// Effective returns a record as it stands after its amendments, applied in
// sequence order, and whether a void cancelled it. Records are never
// rewritten; this is the only place corrections take effect.
func (v Records) Effective(rec *protocol.Record) (protocol.Record, bool, error) {
	out := *rec
	var fixes []*protocol.Record
	for f, err := range v.Correcting(rec.ID) {
		if err != nil {
			return out, false, err
		}
		fixes = append(fixes, f)
	}
	slices.SortFunc(fixes, func(a, b *protocol.Record) int { return cmp.Compare(a.Seq, b.Seq) })
	voided := false
	for _, f := range fixes {
		if f.Type == protocol.TypeVoid {
			voided = true
			continue
		}
		protocol.Amend(&out, f)
	}
	return out, voided, nil
}

// Totals are what a site reported against one pledge, corrections applied
// and voided records left out.
type Totals struct {
	Received  int64 // delivered (or attendees trained), by records naming the pledge
	Confirmed int64 // confirmed received
	Rejected  int64 // confirmed rejected
	Damaged   int64 // delivered damaged or rejected as damaged
}

// PledgeTotals sums the records that name a pledge.
func (v Records) PledgeTotals(pledge string) (Totals, error) {
	var t Totals
	for rec, err := range v.Naming(pledge) {
		if err != nil {
			return t, err
		}
		r, voided, err := v.Effective(rec)
		if err != nil {
			return t, err
		}
		if voided {
			continue
		}
		switch r.Type {
		case protocol.TypeDelivery:
			t.Received += r.Qty
			if r.Condition == protocol.ConditionDamaged {
				t.Damaged += r.Qty
			}
		case protocol.TypeTraining:
			t.Received += r.Attendees
		case protocol.TypeConfirmation:
			t.Confirmed += r.Qty
			t.Rejected += r.QtyRejected
			if r.Rejection == protocol.RejectDamaged {
				t.Damaged += r.QtyRejected
			}
		}
	}
	return t, nil
}
