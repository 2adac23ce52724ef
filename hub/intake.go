package hub

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/atomicfile"
	"fieldsync/internal/ledger"
	"fieldsync/internal/wal"
	"fieldsync/protocol"
)

// Result says what happened to one bundle.
type Result struct {
	File    string `json:"file,omitempty"`
	Agent   string `json:"agent,omitempty"`
	Site    string `json:"site,omitempty"`
	Seq     uint64 `json:"seq,omitempty"`
	Records int    `json:"records"`
	Applied int    `json:"applied"` // records new to the hub
	State   string `json:"state"`   // one of the protocol.Ack… states
	Reason  string `json:"reason,omitempty"`
}

// IntakeError is returned for a bundle that was refused or quarantined.
type IntakeError struct{ Result Result }

func (e *IntakeError) Error() string {
	return fmt.Sprintf("bundle %s %s: %s", e.Result.File, e.Result.State, e.Result.Reason)
}

// IntakeFile verifies and applies the bundle in the file at path, exactly
// once. The file is left where it is; a copy is archived (applied) or kept in
// quarantine. A refused or quarantined bundle returns an *IntakeError whose
// Result says why; nothing already stored changes.
func (h *Hub) IntakeFile(path string) (Result, error) {
	res := Result{File: filepath.Base(path)}
	f, err := os.Open(path)
	if err != nil {
		return res, fmt.Errorf("open bundle %s: %w", path, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > protocol.MaxBundleSize {
		return h.refuse(res, protocol.ReasonTooLarge, fmt.Sprintf("file is %d bytes, over the %d-byte bundle limit", st.Size(), int64(protocol.MaxBundleSize)))
	}

	h.intakeMu.Lock()
	defer h.intakeMu.Unlock()

	var sender *ledger.Agent
	var newcomer bool
	b, err := protocol.OpenBundle(f, h.ageID, func(m *protocol.Manifest) (ed25519.PublicKey, error) {
		a, err := h.agent(m.From)
		if err != nil {
			return nil, err
		}
		if a == nil && m.Enrol != nil {
			// A first contact by hand: check the enrolment now, admit the
			// agent only once its signature has verified with this key.
			err := h.led.Read(func(txn *memdb.Txn) error {
				_, err := checkEnrolment(txn, m.From, m.Site, m.Enrol.Secret, m.Enrol.Recipient, h.now().UTC())
				return err
			})
			if err != nil {
				return nil, err
			}
			a = &ledger.Agent{ID: m.From, Site: m.Site, Key: m.Enrol.Key}
			newcomer = true
		}
		if a == nil {
			return nil, fmt.Errorf("agent %q is not enrolled at this hub", m.From)
		}
		sender = a
		return base64.StdEncoding.DecodeString(a.Key)
	})
	if err == nil && newcomer {
		err = h.admitByHand(b.Manifest)
		if err == nil {
			sender, err = h.agent(b.Manifest.From)
		}
	}
	if err != nil {
		kind := "other"
		if be, ok := errors.AsType[*protocol.BundleError](err); ok {
			kind = be.Reason
		}
		return h.refuse(res, kind, err.Error())
	}
	m := b.Manifest
	res.Agent, res.Site, res.Seq, res.Records = m.From, sender.Site, m.Seq, len(b.Records)
	if m.Kind != protocol.KindRecords {
		return h.refuse(res, protocol.ReasonMalformed, fmt.Sprintf("a %q bundle is not for the hub", m.Kind))
	}
	if sender.IsRevoked() {
		return h.quarantine(path, res, b, inChain(sender, m), fmt.Sprintf("agent %s was revoked on %s", sender.ID, sender.Revoked.Format(time.RFC3339)))
	}
	if m.Site != sender.Site {
		return h.quarantine(path, res, b, inChain(sender, m), fmt.Sprintf("bundle claims site %q but agent %s is enrolled for %q", m.Site, sender.ID, sender.Site))
	}
	switch {
	case m.Seq <= sender.BundleHWM:
		prev, err := h.bundle(m.From, m.Seq)
		if err != nil {
			return res, err
		}
		if prev != nil && prev.Hash != b.Hash {
			return h.quarantine(path, res, b, false, fmt.Sprintf("bundle %d from %s differs from the one already applied (replayed or forged)", m.Seq, m.From))
		}
		res.State, res.Reason = protocol.AckDuplicate, fmt.Sprintf("bundle %d was applied before; nothing changed", m.Seq)
		return res, nil
	case m.Seq > sender.BundleHWM+1:
		return h.hold(path, res, sender)
	case m.PrevHash != sender.LastHash:
		return h.quarantine(path, res, b, false, fmt.Sprintf("bundle %d does not follow bundle %d from %s (hash chain broken)", m.Seq, sender.BundleHWM, m.From))
	}

	if err := h.archive(path, m.From, m.Seq); err != nil {
		return res, err
	}
	applied, err := h.apply(b)
	if err != nil {
		var ie *IntakeError
		if errors.As(err, &ie) {
			return h.quarantine(path, res, b, true, ie.Result.Reason)
		}
		return res, err
	}
	res.State, res.Applied = protocol.AckApplied, applied
	h.metrics.recordsApplied.Add(float64(applied))
	h.log.Info("bundle applied", "agent", m.From, "site", m.Site, "bundle", m.Seq, "records", len(b.Records), "new", applied)

	// A bundle that arrived early may now follow.
	if next := h.heldPath(m.From, m.Seq+1); fileExists(next) {
		h.intakeMu.Unlock()
		nres, err := h.IntakeFile(next)
		h.intakeMu.Lock()
		if err == nil {
			os.Remove(next)
		} else {
			h.log.Warn("held bundle not applied", "agent", m.From, "bundle", m.Seq+1, "err", err, "state", nres.State)
		}
	}
	return res, nil
}

// maxApplyBytes bounds the records one bundle applies: they go into one
// ledger Write, which must stay under the log's entry limit. Agents seal
// bundles of at most half of this (agent.MaxBundleRawBytes, 16 MiB).
const maxApplyBytes = wal.MaxEntrySize / 2

// apply stores a verified bundle's records and moves the agent's chain on,
// in one durable write. Records already stored by (agent, seq) are skipped:
// that is what makes every record apply exactly once.
//
// It reads everything it decides on before it writes any record, and then
// writes the records in one run: in a memdb write transaction, a read of an
// index between two writes to it makes the next write copy that index's
// nodes afresh, which tripled the cost of applying a large bundle.
func (h *Hub) apply(b *protocol.Bundle) (int, error) {
	m := b.Manifest
	now := h.now().UTC()
	applied := 0
	err := h.led.Write(func(tx *ledger.Txn) error {
		obj, err := tx.First(ledger.TableAgents, ledger.IndexID, m.From)
		if err != nil || obj == nil {
			return fmt.Errorf("agent %s vanished during intake", m.From)
		}
		a := *obj.(*ledger.Agent)
		fresh, err := newRecords(tx.Txn, &a, b.Records)
		if err != nil {
			return err
		}
		// What is wrong with each record itself, against the state before
		// the bundle: a record's own bundle is of its own site, and so
		// never what makes its serial numbers seen elsewhere. Over-delivery
		// is a matter of the pledge's totals, checked once per pledge below
		// rather than per record.
		recs := ledger.RecordsOf(tx.Txn)
		pledges := map[string]*protocol.Pledge{} // looked up once per bundle
		pledgeOf := func(id string) (*protocol.Pledge, error) {
			if p, ok := pledges[id]; ok {
				return p, nil
			}
			p, err := pledgeByID(tx.Txn, id)
			pledges[id] = p
			return p, err
		}
		found := make([][]Discrepancy, len(fresh))
		for i, j := range fresh {
			p, err := pledgeOf(b.Records[j].Pledge)
			if err != nil {
				return err
			}
			if found[i], err = recordDiscrepancies(recs, &b.Records[j], p, false); err != nil {
				return err
			}
		}
		lastOf := map[string]*protocol.Record{} // pledge → its last record in this bundle
		if len(b.RecordJSON) == len(b.Records) {
			size := 0
			for _, j := range fresh {
				size += len(b.RecordJSON[j]) + 24 // and its framing
			}
			if size > maxApplyBytes {
				// The Write would exceed the log's entry limit and fail on
				// every retry: refuse the bundle for good instead.
				return &IntakeError{Result: Result{State: protocol.AckQuarantined, Reason: fmt.Sprintf(
					"bundle holds %d bytes of new records, over the %d a bundle may apply at once", size, maxApplyBytes)}}
			}
			tx.Grow(size)
		}
		for _, j := range fresh {
			if err := putRecord(tx, b, j); err != nil {
				return err
			}
			if rec := &b.Records[j]; rec.Pledge != "" {
				lastOf[rec.Pledge] = rec
			}
		}
		applied = len(fresh)
		fb := newFeedbackWriter(tx, a.ID, m.Seq, now)
		for i, ds := range found {
			for _, d := range ds {
				if err := fb.add(b.Records[fresh[i]].ID, protocol.FeedbackDiscrepancy, d.Kind+": "+d.Detail); err != nil {
					return err
				}
			}
		}
		recs = ledger.RecordsOf(tx.Txn) // with the bundle's records
		for _, id := range slices.Sorted(maps.Keys(lastOf)) {
			p, err := pledgeOf(id)
			if err != nil {
				return err
			}
			if p == nil || p.Site != a.Site {
				continue
			}
			t, err := recs.PledgeTotals(id)
			if err != nil {
				return err
			}
			if d, over := pledgeDiscrepancy(p, t, lastOf[id]); over {
				if err := fb.add(d.Record, protocol.FeedbackDiscrepancy, d.Kind+": "+d.Detail); err != nil {
					return err
				}
			}
		}
		a.BundleHWM, a.LastHash, a.LastSeen = m.Seq, b.Hash, now
		if err := tx.Put(ledger.TableAgents, &a); err != nil {
			return err
		}
		return tx.Put(ledger.TableBundles, &ledger.Bundle{
			From: m.From, Seq: m.Seq, Hash: b.Hash, PrevHash: m.PrevHash, FirstSeq: m.FirstRecordSeq,
			LastSeq: m.LastRecordSeq, Count: len(b.Records), Created: m.Created, State: ledger.BundleApplied, Updated: now,
		})
	})
	return applied, err
}

// putRecord stores record i of b. A bundle opened by protocol.OpenBundle
// has the line each record came in, which the ledger logs as it is rather
// than encode the record again.
func putRecord(tx *ledger.Txn, b *protocol.Bundle, i int) error {
	if len(b.RecordJSON) == len(b.Records) {
		return tx.PutRecord(&b.Records[i], b.RecordJSON[i])
	}
	return tx.Put(ledger.TableRecords, &b.Records[i])
}

// newRecords returns the indexes of the records of a bundle from agent a
// that the hub does not hold yet, in order; or an *IntakeError if one
// claims another sender, or an (agent, seq) or an id that another record
// has, in the ledger or earlier in the bundle, or a seq below the agent's
// last applied that the hub does not hold. (The bundle's seqs increase,
// which the bundle decoder checked.)
func newRecords(txn *memdb.Txn, a *ledger.Agent, recs []protocol.Record) ([]int, error) {
	quarantine := func(format string, args ...any) error {
		return &IntakeError{Result: Result{State: protocol.AckQuarantined, Reason: fmt.Sprintf(format, args...)}}
	}
	fresh := make([]int, 0, len(recs))
	ids := make(map[string]bool, len(recs))
	stored := ledger.RecordsOf(txn)
	last := stored.LastSeq(a.ID)
	for i := range recs {
		rec := &recs[i]
		if rec.Agent != a.ID || rec.Site != a.Site {
			return nil, quarantine("record %s claims agent %q site %q, not the sender's", rec.ID, rec.Agent, rec.Site)
		}
		if ids[rec.ID] {
			return nil, quarantine("record id %s is already used by another record", rec.ID)
		}
		ids[rec.ID] = true
		old, err := stored.At(rec.Agent, rec.Seq)
		if err != nil {
			return nil, err
		}
		if old != nil {
			if old.ID != rec.ID {
				return nil, quarantine("record %d of agent %s was already applied with another id", rec.Seq, rec.Agent)
			}
			continue
		}
		if rec.Seq <= last {
			// A gap below records already applied: an agent numbers its
			// records in order and bundles follow their chain, so this is
			// no agent's doing (and it would make the store insert rather
			// than append).
			return nil, quarantine("record %s has seq %d, below %d, the last applied from agent %s", rec.ID, rec.Seq, last, rec.Agent)
		}
		if dup, err := stored.ByID(rec.ID); err != nil {
			return nil, err
		} else if dup != nil {
			return nil, quarantine("record id %s is already used by another record", rec.ID)
		}
		fresh = append(fresh, i)
	}
	return fresh, nil
}

// refuse reports a bundle that cannot be trusted at all. Nothing is stored.
func (h *Hub) refuse(res Result, kind, reason string) (Result, error) {
	res.State, res.Reason = protocol.AckRefused, reason
	h.metrics.bundlesRefused.WithLabelValues(kind).Inc()
	h.log.Warn("bundle refused", "file", res.File, "agent", res.Agent, "reason", reason)
	return res, &IntakeError{Result: res}
}

// inChain reports whether m is the next bundle of the agent's chain.
func inChain(a *ledger.Agent, m protocol.Manifest) bool {
	return m.Seq == a.BundleHWM+1 && m.PrevHash == a.LastHash
}

// quarantine keeps an authentic bundle that must not be applied, with its
// reason, and tells the agent why at its next sync. A quarantined bundle that
// is the next of its agent's chain moves the chain on (advance), so that
// what the agent sends after it is not held behind it forever; one that
// conflicts with the chain (a replay, a fork) does not.
func (h *Hub) quarantine(path string, res Result, b *protocol.Bundle, advance bool, reason string) (Result, error) {
	res.State, res.Reason = protocol.AckQuarantined, reason
	m := b.Manifest
	now := h.now().UTC()
	dst := filepath.Join(h.dir, quarantineDir, fmt.Sprintf("%s-%d-%d.age", m.From, m.Seq, now.UnixNano()))
	if err := copyFile(path, dst); err != nil {
		return res, fmt.Errorf("quarantine bundle: %w", err)
	}
	err := h.led.Write(func(tx *ledger.Txn) error {
		if prev, err := tx.First(ledger.TableBundles, ledger.IndexID, m.From, m.Seq); err != nil {
			return err
		} else if prev != nil && prev.(*ledger.Bundle).State == ledger.BundleApplied {
			// Never shadow the applied bundle of the same number.
		} else if err := tx.Put(ledger.TableBundles, &ledger.Bundle{From: m.From, Seq: m.Seq, Hash: b.Hash,
			PrevHash: m.PrevHash, FirstSeq: m.FirstRecordSeq, LastSeq: m.LastRecordSeq, Count: len(b.Records),
			Created: m.Created, State: ledger.BundleQuarantined, Reason: reason, Updated: now}); err != nil {
			return err
		}
		if advance {
			obj, err := tx.First(ledger.TableAgents, ledger.IndexID, m.From)
			if err != nil {
				return err
			}
			if obj != nil {
				a := *obj.(*ledger.Agent)
				a.BundleHWM, a.LastHash, a.LastSeen = m.Seq, b.Hash, now
				if err := tx.Put(ledger.TableAgents, &a); err != nil {
					return err
				}
			}
		}
		return newFeedbackWriter(tx, m.From, m.Seq, now).add("", "quarantined", reason)
	})
	if err != nil {
		return res, err
	}
	h.metrics.bundlesRefused.WithLabelValues("quarantined").Inc()
	h.log.Warn("bundle quarantined", "agent", m.From, "bundle", m.Seq, "reason", reason)
	return res, &IntakeError{Result: res}
}

// hold keeps a bundle that arrived before one it follows.
func (h *Hub) hold(path string, res Result, a *ledger.Agent) (Result, error) {
	dst := h.heldPath(a.ID, res.Seq)
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return res, err
	}
	if err := copyFile(path, dst); err != nil {
		return res, fmt.Errorf("hold bundle: %w", err)
	}
	res.State = protocol.AckHeld
	res.Reason = fmt.Sprintf("bundles %d to %d from %s are missing; this one waits for them", a.BundleHWM+1, res.Seq-1, a.ID)
	return res, nil
}

func (h *Hub) heldPath(agent string, seq uint64) string {
	return filepath.Join(h.dir, bundlesDir, "held", agent, fmt.Sprintf("%d.age", seq))
}

// archive keeps the applied bundle as received, for audit and re-export.
func (h *Hub) archive(path, agent string, seq uint64) error {
	dst := filepath.Join(h.dir, bundlesDir, agent, fmt.Sprintf("%d.age", seq))
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	return copyFile(path, dst)
}

func (h *Hub) agent(id string) (*ledger.Agent, error) {
	var a *ledger.Agent
	err := h.led.Read(func(txn *memdb.Txn) error {
		obj, err := txn.First(ledger.TableAgents, ledger.IndexID, id)
		if obj != nil {
			a = obj.(*ledger.Agent)
		}
		return err
	})
	return a, err
}

func (h *Hub) bundle(from string, seq uint64) (*ledger.Bundle, error) {
	var b *ledger.Bundle
	err := h.led.Read(func(txn *memdb.Txn) error {
		obj, err := txn.First(ledger.TableBundles, ledger.IndexID, from, seq)
		if obj != nil {
			b = obj.(*ledger.Bundle)
		}
		return err
	})
	return b, err
}

// feedbackWriter appends feedback for one agent within a write.
type feedbackWriter struct {
	tx     *ledger.Txn
	agent  string
	bundle uint64
	at     time.Time
	seq    uint64
	loaded bool
}

func newFeedbackWriter(tx *ledger.Txn, agent string, bundle uint64, at time.Time) *feedbackWriter {
	return &feedbackWriter{tx: tx, agent: agent, bundle: bundle, at: at}
}

func (w *feedbackWriter) add(record, state, reason string) error {
	if !w.loaded {
		it, err := w.tx.ReverseLowerBound(ledger.TableFeedback, ledger.IndexID, w.agent, uint64(1<<63))
		if err != nil {
			return err
		}
		if f, ok := it.Next().(*ledger.Feedback); ok && f.Agent == w.agent {
			w.seq = f.Seq
		}
		w.loaded = true
	}
	w.seq++
	return w.tx.Put(ledger.TableFeedback, &ledger.Feedback{Agent: w.agent, Seq: w.seq, Record: record,
		Bundle: w.bundle, State: state, Reason: reason, At: w.at})
}

func copyFile(src, dst string) error {
	return atomicfile.Copy(dst, src, 0o600)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// admitByHand stores an agent whose first bundle carried its enrolment.
func (h *Hub) admitByHand(m protocol.Manifest) error {
	return h.led.Write(func(tx *ledger.Txn) error {
		a, err := admit(tx, m.From, m.Site, m.Enrol.Secret, m.Enrol.Key, m.Enrol.Recipient, h.now().UTC())
		if err != nil {
			return err
		}
		h.log.Info("agent enrolled by a bundle carried by hand", "agent", a.ID, "site", a.Site)
		return tx.Put(ledger.TableAgents, a)
	})
}
