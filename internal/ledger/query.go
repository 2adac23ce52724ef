package ledger

import (
	"cmp"
	"slices"

	"fieldsync/protocol"
)

// Effective returns a record as it stands after its amendments, applied in
// sequence order, and whether a void cancelled it. Records are never
// rewritten; this and Corrected are the only places corrections take
// effect.
func (v Records) Effective(rec *protocol.Record) (protocol.Record, bool, error) {
	var fixes []*protocol.Record
	for f, err := range v.Correcting(rec.ID) {
		if err != nil {
			return *rec, false, err
		}
		fixes = append(fixes, f)
	}
	out, voided := Corrected(rec, fixes)
	return out, voided, nil
}

// Corrected returns rec as fixes, the amendments and voids that target it,
// leave it (applied in sequence order), and whether one of them voids it:
// Effective, for a caller that has gathered the corrections itself.
func Corrected(rec *protocol.Record, fixes []*protocol.Record) (protocol.Record, bool) {
	out := *rec
	fixes = slices.SortedFunc(slices.Values(fixes), func(a, b *protocol.Record) int { return cmp.Compare(a.Seq, b.Seq) })
	voided := false
	for _, f := range fixes {
		if f.Type == protocol.TypeVoid {
			voided = true
			continue
		}
		protocol.Amend(&out, f)
	}
	return out, voided
}

// Totals are what a site reported against one pledge, corrections applied
// and voided records left out.
type Totals struct {
	Received  int64 // delivered (or attendees trained), by records naming the pledge
	Confirmed int64 // confirmed received
	Rejected  int64 // confirmed rejected
	Damaged   int64 // delivered damaged or rejected as damaged
}

// add adds u to t.
func (t *Totals) add(u Totals) {
	t.Received += u.Received
	t.Confirmed += u.Confirmed
	t.Rejected += u.Rejected
	t.Damaged += u.Damaged
}

// recordTotals is what one record, as it stands and not voided, adds to
// the totals of the pledge it names.
func recordTotals(r *protocol.Record) Totals {
	var t Totals
	switch r.Type {
	case protocol.TypeDelivery:
		t.Received = r.Qty
		if r.Condition == protocol.ConditionDamaged {
			t.Damaged = r.Qty
		}
	case protocol.TypeTraining:
		t.Received = r.Attendees
	case protocol.TypeConfirmation:
		t.Confirmed, t.Rejected = r.Qty, r.QtyRejected
		if r.Rejection == protocol.RejectDamaged {
			t.Damaged = r.QtyRejected
		}
	}
	return t
}

// PledgeTotals sums the records that name a pledge, corrections applied.
// Only records that have corrections are read: for the others the store
// kept what they add when they were stored.
func (v Records) PledgeTotals(pledge string) (Totals, error) {
	var t Totals
	if v.s == nil {
		return t, nil
	}
	var corrected []uint32
	v.s.mu.RLock()
	for _, e := range v.s.byPledge[pledge] {
		if e.ord >= v.n {
			break
		}
		if fixes := v.s.byTarget[string(v.s.idLocked(e.ord))]; len(fixes) > 0 && fixes[0] < v.n {
			corrected = append(corrected, e.ord)
		} else {
			t.add(e.adds)
		}
	}
	v.s.mu.RUnlock()
	var err error
	v.yieldOrds(corrected, func(rec *protocol.Record, e error) bool {
		if err = e; err != nil {
			return false
		}
		r, voided, e := v.Effective(rec)
		if err = e; err != nil {
			return false
		}
		if !voided {
			t.add(recordTotals(&r))
		}
		return true
	})
	return t, err
}
