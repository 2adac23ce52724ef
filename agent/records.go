package agent

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/oklog/ulid/v2"

	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

// ErrNotFound is returned when an id names no record or pledge.
var ErrNotFound = errors.New("not found")

// Add stores a new record made at this site and returns it as stored, with
// its id and sequence number. The record is durable when Add returns. Files
// named in attach are copied into the attachment store first.
func (a *Agent) Add(rec protocol.Record, attach []string) (protocol.Record, error) {
	recs, err := a.AddBatch([]protocol.Record{rec}, [][]string{attach}, "")
	if err != nil {
		return protocol.Record{}, err
	}
	return recs[0], nil
}

// AddBatch stores several records at once, all or none. attach[i] lists
// the files to attach to recs[i]; attach may be shorter than recs, or nil.
// With a non-empty key, a batch stored before under the same key is not
// stored again: its records are returned instead, so a file taken from the
// inbox twice (after a crash between storing and moving it) yields its
// records once.
func (a *Agent) AddBatch(recs []protocol.Record, attach [][]string, key string) ([]protocol.Record, error) {
	recs = slices.Clone(recs)
	for i := range recs {
		var files []string
		if i < len(attach) {
			files = attach[i]
		}
		for _, path := range files {
			att, err := a.attachments.Add(path)
			if err != nil {
				return nil, err
			}
			recs[i].Attachments = append(recs[i].Attachments, att)
		}
		recs[i].ID = ulid.Make().String()
		recs[i].Agent = a.id.AgentID
		recs[i].Site = a.id.Site
		recs[i].At = a.now().UTC().Truncate(time.Millisecond)
	}
	var done []protocol.Record
	err := a.led.Write(func(tx *ledger.Txn) error {
		if key != "" {
			prev, err := tx.First(ledger.TableMeta, ledger.IndexID, key)
			if err != nil {
				return err
			}
			if prev != nil {
				for _, id := range strings.Fields(prev.(*ledger.Meta).Value) {
					if r, err := findRecord(tx.Txn, id); err == nil {
						done = append(done, *r)
					}
				}
				return nil
			}
		}
		seq := ledger.RecordsOf(tx.Txn).LastSeq(a.id.AgentID)
		ids := make([]string, len(recs))
		for i := range recs {
			rec := &recs[i]
			seq++
			rec.Seq = seq
			if err := a.resolveRefs(tx.Txn, rec); err != nil {
				return batchErr(len(recs), i, err)
			}
			if err := rec.Validate(); err != nil {
				return batchErr(len(recs), i, err)
			}
			if err := a.checkAgainstState(tx.Txn, rec); err != nil {
				return batchErr(len(recs), i, err)
			}
			if err := tx.Put(ledger.TableRecords, rec); err != nil {
				return err
			}
			ids[i] = rec.ID
		}
		done = recs
		if key != "" {
			return tx.Put(ledger.TableMeta, &ledger.Meta{Key: key, Value: strings.Join(ids, " ")})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return done, nil
}

func batchErr(n, i int, err error) error {
	if n == 1 {
		return err
	}
	return fmt.Errorf("record %d: %w", i+1, err)
}

// resolveRefs expands unambiguous id prefixes in the pledge and target fields,
// so site engineers can type the first characters of an id.
func (a *Agent) resolveRefs(txn *memdb.Txn, rec *protocol.Record) error {
	if rec.Target != "" {
		r, err := findRecord(txn, rec.Target)
		if err != nil {
			return err
		}
		rec.Target = r.ID
	}
	if rec.Pledge != "" {
		rec.Pledge = normalPledgeID(rec.Pledge)
		p, err := findPledge(txn, rec.Pledge)
		switch {
		case err == nil:
			rec.Pledge = p.ID
		case errors.Is(err, ErrNotFound) && rec.Type != protocol.TypeConfirmation:
			// A delivery may name a pledge from its waybill before the
			// pledge reached this site; the hub matches it.
		default:
			return err
		}
	}
	return nil
}

// checkAgainstState refuses records that contradict what the site already
// knows: corrections of unknown or voided records, confirmations of unknown
// pledges or beyond the pledged quantity.
func (a *Agent) checkAgainstState(txn *memdb.Txn, rec *protocol.Record) error {
	switch rec.Type {
	case protocol.TypeAmendment, protocol.TypeVoid:
		target, err := findRecord(txn, rec.Target)
		if err != nil {
			return err
		}
		if target.Type == protocol.TypeAmendment || target.Type == protocol.TypeVoid {
			return fmt.Errorf("%s is itself a correction; amend or void the original record %s", target.ID, target.Target)
		}
		if voided, err := isVoided(txn, target.ID); err != nil {
			return err
		} else if voided {
			return fmt.Errorf("record %s is voided; record it anew instead", target.ID)
		}
		if rec.Type == protocol.TypeAmendment && target.Type != protocol.TypeTraining &&
			(rec.Course != "" || rec.Date != "" || rec.Attendees != 0 || rec.Provider != "" || rec.Trainer != "") {
			return fmt.Errorf("record %s is a %s; training fields do not apply", target.ID, target.Type)
		}
	case protocol.TypeConfirmation:
		p, err := findPledge(txn, rec.Pledge)
		if err != nil {
			return err
		}
		if p.Cancelled {
			return fmt.Errorf("pledge %s was cancelled by the hub; record a delivery without --pledge if it arrived anyway", p.ID)
		}
		v, err := pledgeView(txn, p)
		if err != nil {
			return err
		}
		if left := p.Qty - v.Confirmed - v.Rejected; rec.Qty+rec.QtyRejected > left {
			return fmt.Errorf("qty: received %d + rejected %d exceeds the %d still expected on pledge %s (pledged %d)",
				rec.Qty, rec.QtyRejected, left, p.ID, p.Qty)
		}
	}
	return nil
}

// findRecord looks a record up by id or by an unambiguous id prefix.
func findRecord(txn *memdb.Txn, id string) (*protocol.Record, error) {
	recs := ledger.RecordsOf(txn)
	want := strings.ToUpper(id)
	r, err := recs.ByID(want)
	if err != nil || r != nil {
		return r, err
	}
	switch ids := recs.IDsWithPrefix(want, 2); len(ids) {
	case 0:
		return nil, fmt.Errorf("record %q: %w", id, ErrNotFound)
	case 1:
		return recs.ByID(ids[0])
	default:
		return nil, fmt.Errorf("record %q: ambiguous: several ids start with it; give more characters", id)
	}
}

// normalPledgeID folds what an engineer may type for a pledge id into the
// hub's form, "P-" and a number: lower case, spaces around it, a Cyrillic
// "Р" from a Ukrainian keyboard (it looks the same), a dash from a word
// processor.
func normalPledgeID(id string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case 'Р':
			return 'P'
		case '‐', '‑', '–', '—', '−':
			return '-'
		}
		return r
	}, strings.ToUpper(strings.TrimSpace(id)))
}

// findPledge looks a pledge up by id or by an unambiguous id prefix.
func findPledge(txn *memdb.Txn, id string) (*protocol.Pledge, error) {
	obj, err := findByPrefix(txn, ledger.TablePledges, normalPledgeID(id))
	if err != nil {
		return nil, fmt.Errorf("pledge %q: %w (run `agent pledges` to see the pledges this site knows)", id, err)
	}
	return obj.(*protocol.Pledge), nil
}

func findByPrefix(txn *memdb.Txn, table, id string) (any, error) {
	if obj, err := txn.First(table, ledger.IndexID, id); err != nil {
		return nil, err
	} else if obj != nil {
		return obj, nil
	}
	it, err := txn.Get(table, ledger.IndexID+"_prefix", id)
	if err != nil {
		return nil, err
	}
	first := it.Next()
	if first == nil {
		return nil, ErrNotFound
	}
	if it.Next() != nil {
		return nil, errors.New("ambiguous: several ids start with it; give more characters")
	}
	return first, nil
}

func isVoided(txn *memdb.Txn, id string) (bool, error) {
	for r, err := range ledger.RecordsOf(txn).Correcting(id) {
		if err != nil || r.Type == protocol.TypeVoid {
			return err == nil, err
		}
	}
	return false, nil
}

// PledgeView is a pledge with what this site has reported against it.
type PledgeView struct {
	protocol.Pledge
	Received  int64  `json:"received"`  // delivered, by delivery records naming the pledge
	Confirmed int64  `json:"confirmed"` // confirmed received
	Rejected  int64  `json:"rejected"`  // confirmed rejected
	State     string `json:"state"`     // open, partial, fulfilled, cancelled
}

func pledgeView(txn *memdb.Txn, p *protocol.Pledge) (PledgeView, error) {
	t, err := ledger.RecordsOf(txn).PledgeTotals(p.ID)
	if err != nil {
		return PledgeView{}, err
	}
	v := PledgeView{Pledge: *p, Received: t.Received, Confirmed: t.Confirmed, Rejected: t.Rejected}
	switch done := max(v.Received, v.Confirmed); {
	case p.Cancelled:
		v.State = "cancelled"
	case done >= p.Qty:
		v.State = "fulfilled"
	case done > 0:
		v.State = "partial"
	default:
		v.State = "open"
	}
	return v, nil
}

// Pledges returns what the hub expects this site to receive, oldest first;
// with open set, only those not yet fulfilled or cancelled.
func (a *Agent) Pledges(open bool) ([]PledgeView, error) {
	var out []PledgeView
	err := a.led.Read(func(txn *memdb.Txn) error {
		it, err := txn.Get(ledger.TablePledges, ledger.IndexSeq)
		if err != nil {
			return err
		}
		for obj := it.Next(); obj != nil; obj = it.Next() {
			v, err := pledgeView(txn, obj.(*protocol.Pledge))
			if err != nil {
				return err
			}
			if open && (v.State == "fulfilled" || v.State == "cancelled") {
				continue
			}
			out = append(out, v)
		}
		return nil
	})
	return out, err
}

// Pledge returns one pledge by id or unambiguous prefix.
func (a *Agent) Pledge(id string) (PledgeView, error) {
	var v PledgeView
	err := a.led.Read(func(txn *memdb.Txn) error {
		p, err := findPledge(txn, id)
		if err != nil {
			return err
		}
		v, err = pledgeView(txn, p)
		return err
	})
	return v, err
}

// Sync states of a record at the agent.
const (
	SyncPending = "pending" // not yet sent to the hub
	SyncSent    = "sent"    // sealed into a bundle the hub has not acknowledged
	SyncSynced  = "synced"  // the hub acknowledged it
)

// RecordView is a record as a site engineer sees it: as amended, with its
// sync state and what the hub said about it.
type RecordView struct {
	protocol.Record
	Voided    bool   `json:"voided,omitempty"`
	Sync      string `json:"sync"`
	Bundle    uint64 `json:"bundle,omitempty"`
	HubState  string `json:"hub_state,omitempty"`
	HubReason string `json:"hub_reason,omitempty"`
}

// Records lists local records in sequence order; with pending set, only those
// the hub has not acknowledged.
func (a *Agent) Records(pending bool) ([]RecordView, error) {
	var out []RecordView
	err := a.led.Read(func(txn *memdb.Txn) error {
		st, err := a.syncPoints(txn)
		if err != nil {
			return err
		}
		from := uint64(0)
		if pending {
			from = st.acked + 1
		}
		bundleNotes := map[uint64]*ledger.Feedback{}
		fit, err := txn.Get(ledger.TableFeedback, ledger.IndexID)
		if err != nil {
			return err
		}
		for obj := fit.Next(); obj != nil; obj = fit.Next() {
			if f := obj.(*ledger.Feedback); f.Record == "" && f.Bundle > 0 {
				bundleNotes[f.Bundle] = f
			}
		}
		recs := ledger.RecordsOf(txn)
		for rec, err := range recs.OfAgent(a.id.AgentID, from) {
			if err != nil {
				return err
			}
			v := RecordView{Record: *rec}
			if rec.Type != protocol.TypeAmendment && rec.Type != protocol.TypeVoid {
				eff, voided, err := recs.Effective(rec)
				if err != nil {
					return err
				}
				v.Record, v.Voided = eff, voided
			}
			v.Sync, v.Bundle = st.state(rec.Seq)
			if fb, err := txn.First(ledger.TableFeedback, ledger.IndexRecord, rec.ID); err != nil {
				return err
			} else if fb != nil {
				v.HubState, v.HubReason = fb.(*ledger.Feedback).State, fb.(*ledger.Feedback).Reason
			} else if state, reason := st.note(rec.Seq); state != "" {
				v.HubState, v.HubReason = state, reason
			} else if len(bundleNotes) > 0 {
				// Feedback on a whole bundle (one quarantined after it came
				// by hand) speaks for each of its records.
				if f := bundleNotes[st.bundleOf(rec.Seq)]; f != nil {
					v.HubState, v.HubReason = f.State, f.Reason
				}
			}
			out = append(out, v)
		}
		return nil
	})
	return out, err
}

// syncPoints is where the agent's records stand against its bundles.
type syncPoints struct {
	acked   uint64           // highest record seq acknowledged by the hub
	sealed  uint64           // highest record seq sealed into a bundle
	bundles []*ledger.Bundle // sealed, unacknowledged bundles
	notes   []*ledger.Bundle // acknowledged bundles the hub did not simply apply
	applied []*ledger.Bundle // the other acknowledged bundles
}

// bundleOf returns the bundle that carried record seq (0 if none).
func (s syncPoints) bundleOf(seq uint64) uint64 {
	for _, list := range [][]*ledger.Bundle{s.bundles, s.notes, s.applied} {
		for _, b := range list {
			if seq >= b.FirstSeq && seq <= b.LastSeq {
				return b.Seq
			}
		}
	}
	return 0
}

// note returns what the hub said of the bundle that carried record seq, if
// it did not simply apply it: "quarantined", "agent … was revoked".
func (s syncPoints) note(seq uint64) (state, reason string) {
	for _, b := range s.notes {
		if seq >= b.FirstSeq && seq <= b.LastSeq {
			state, reason, _ = strings.Cut(b.Reason, ": ")
			return state, reason
		}
	}
	return "", ""
}

func (s syncPoints) state(seq uint64) (string, uint64) {
	switch {
	case seq <= s.acked:
		return SyncSynced, 0
	case seq <= s.sealed:
		for _, b := range s.bundles {
			if seq >= b.FirstSeq && seq <= b.LastSeq {
				return SyncSent, b.Seq
			}
		}
		return SyncSent, 0
	default:
		return SyncPending, 0
	}
}

func (a *Agent) syncPoints(txn *memdb.Txn) (syncPoints, error) {
	var s syncPoints
	it, err := txn.Get(ledger.TableBundles, ledger.IndexID+"_prefix", a.id.AgentID)
	if err != nil {
		return s, err
	}
	for obj := it.Next(); obj != nil; obj = it.Next() {
		b := obj.(*ledger.Bundle)
		if b.From != a.id.AgentID {
			continue
		}
		s.sealed = max(s.sealed, b.LastSeq)
		if b.State == ledger.BundleAcked {
			s.acked = max(s.acked, b.LastSeq)
			if b.Reason != "" {
				s.notes = append(s.notes, b)
			} else {
				s.applied = append(s.applied, b)
			}
		} else {
			s.bundles = append(s.bundles, b)
		}
	}
	return s, nil
}
