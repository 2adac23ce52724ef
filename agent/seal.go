package agent

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"filippo.io/age"
	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/atomicfile"
	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

// MaxRecordsPerBundle caps one bundle, so a long offline backlog travels as
// several bundles that are acknowledged one by one.
const MaxRecordsPerBundle = 10_000

// MaxBundleRawBytes caps the records' JSON in one bundle, before
// compression.
const MaxBundleRawBytes = 16 << 20

// recordSize estimates a record's JSON size without encoding it.
func recordSize(r *protocol.Record) int {
	n := 400 + len(r.Item) + len(r.Note) + len(r.Course) + len(r.ReceivedBy) + len(r.Reason)
	for _, s := range r.Serials {
		n += len(s) + 3
	}
	return n + 200*len(r.Attachments)
}

// Seal seals every pending record into bundles in the outbox and returns how
// many bundles it made. A sealed bundle is durable before Seal records it.
func (a *Agent) Seal() (int, error) {
	a.sealMu.Lock()
	defer a.sealMu.Unlock()
	n := 0
	for {
		made, err := a.sealOne()
		if err != nil {
			return n, err
		}
		if !made {
			return n, nil
		}
		n++
	}
}

func (a *Agent) sealOne() (bool, error) {
	recipient, err := age.ParseHybridRecipient(a.id.HubRecipient)
	if err != nil {
		return false, fmt.Errorf("hub recipient in identity: %w", err)
	}
	var recs []protocol.Record
	var last *ledger.Bundle
	err = a.led.Read(func(txn *memdb.Txn) error {
		var err error
		last, err = a.lastBundle(txn)
		if err != nil {
			return err
		}
		from := uint64(1)
		if last != nil {
			from = last.LastSeq + 1
		}
		raw := 0
		for r, err := range ledger.RecordsOf(txn).OfAgent(a.id.AgentID, from) {
			if err != nil {
				return err
			}
			if len(recs) == MaxRecordsPerBundle {
				break
			}
			// Records with thousands of serials are large: cap the bytes
			// too, so a bundle stays well inside the format's limits and
			// the agent's memory.
			size := recordSize(r)
			if len(recs) > 0 && raw+size > MaxBundleRawBytes {
				break
			}
			raw += size
			recs = append(recs, *r)
		}
		return nil
	})
	if err != nil || len(recs) == 0 {
		return false, err
	}
	m := protocol.Manifest{
		Kind:           protocol.KindRecords,
		From:           a.id.AgentID,
		To:             a.id.HubKeyPin,
		Site:           a.id.Site,
		Seq:            1,
		FirstRecordSeq: recs[0].Seq,
		LastRecordSeq:  recs[len(recs)-1].Seq,
		Created:        a.now().UTC().Truncate(time.Second),
	}
	if last != nil {
		m.Seq, m.PrevHash = last.Seq+1, last.Hash
	}
	if secret := a.enrolSecret(); secret != "" {
		// Until the hub has accepted this agent, every bundle carries the
		// enrolment, so the first contact may as well be a USB stick.
		m.Enrol = &protocol.EnrolProof{
			Secret:    secret,
			Key:       protocol.EncodePublicKey(a.key.Public().(ed25519.PublicKey)),
			Recipient: a.ageID.Recipient().String(),
		}
	}
	var buf bytes.Buffer
	hash, err := protocol.SealBundle(&buf, m, recs, a.key, recipient)
	if err != nil {
		return false, fmt.Errorf("seal bundle %d: %w", m.Seq, err)
	}
	if err := atomicfile.Write(a.outboxPath(m.Seq), buf.Bytes(), 0o600); err != nil {
		return false, err
	}
	err = a.led.Write(func(tx *ledger.Txn) error {
		return tx.Put(ledger.TableBundles, &ledger.Bundle{
			From: a.id.AgentID, Seq: m.Seq, Hash: hash, PrevHash: m.PrevHash, FirstSeq: m.FirstRecordSeq,
			LastSeq: m.LastRecordSeq, Count: len(recs), Size: int64(buf.Len()), Created: m.Created,
			State: ledger.BundleSealed, Updated: m.Created,
		})
	})
	if err != nil {
		return false, err
	}
	a.log.Info("bundle sealed", "bundle", m.Seq, "records", len(recs), "bytes", buf.Len())
	return true, nil
}

func (a *Agent) outboxPath(seq uint64) string {
	return filepath.Join(a.dir, outboxDir, fmt.Sprintf("%s-%d.age", a.id.AgentID, seq))
}

// lastBundle returns the newest bundle this agent sealed.
func (a *Agent) lastBundle(txn *memdb.Txn) (*ledger.Bundle, error) {
	it, err := txn.ReverseLowerBound(ledger.TableBundles, ledger.IndexID, a.id.AgentID, uint64(1<<63))
	if err != nil {
		return nil, err
	}
	if b, ok := it.Next().(*ledger.Bundle); ok && b.From == a.id.AgentID {
		return b, nil
	}
	return nil, nil
}

// unacked returns the sealed bundles the hub has not acknowledged, oldest first.
func (a *Agent) unacked() ([]*ledger.Bundle, error) {
	var out []*ledger.Bundle
	err := a.led.Read(func(txn *memdb.Txn) error {
		st, err := a.syncPoints(txn)
		out = st.bundles
		return err
	})
	return out, err
}

// acked reports whether the hub has acknowledged bundle seq.
func (a *Agent) acked(seq uint64) (bool, error) {
	var ok bool
	err := a.led.Read(func(txn *memdb.Txn) error {
		obj, err := txn.First(ledger.TableBundles, ledger.IndexID, a.id.AgentID, seq)
		if b, isBundle := obj.(*ledger.Bundle); isBundle {
			ok = b.State == ledger.BundleAcked
		}
		return err
	})
	return ok, err
}

// markAcked records that the hub durably holds every bundle up to seq.
func (a *Agent) markAcked(upTo uint64, state, reason string) error {
	now := a.now().UTC()
	return a.led.Write(func(tx *ledger.Txn) error {
		it, err := tx.Get(ledger.TableBundles, ledger.IndexID+"_prefix", a.id.AgentID)
		if err != nil {
			return err
		}
		var todo []ledger.Bundle
		for obj := it.Next(); obj != nil; obj = it.Next() {
			b := obj.(*ledger.Bundle)
			if b.From == a.id.AgentID && b.Seq <= upTo && b.State != ledger.BundleAcked {
				todo = append(todo, *b)
			}
		}
		for _, b := range todo {
			b.State, b.Updated = ledger.BundleAcked, now
			if b.Seq == upTo && state != "" && state != protocol.AckApplied && state != protocol.AckDuplicate {
				b.Reason = state + ": " + reason
			}
			if err := tx.Put(ledger.TableBundles, &b); err != nil {
				return err
			}
		}
		return nil
	})
}

// applyDown applies a bundle the hub sent down: pledges for this site,
// feedback on what the site sent, and the hub's acknowledgement point. Every
// item is idempotent, so the same bundle by QUIC and by hand is harmless.
func (a *Agent) applyDown(b *protocol.Bundle) error {
	var ackTo uint64
	err := a.led.Write(func(tx *ledger.Txn) error {
		for _, it := range b.Down {
			switch {
			case it.Pledge != nil:
				p := it.Pledge
				if p.Site != a.id.Site {
					return fmt.Errorf("hub bundle carries pledge %s for site %s, not this site", p.ID, p.Site)
				}
				if err := p.Validate(); err != nil {
					return fmt.Errorf("hub bundle pledge %s: %w", p.ID, err)
				}
				old, err := tx.First(ledger.TablePledges, ledger.IndexID, p.ID)
				if err != nil {
					return err
				}
				if old != nil && old.(*protocol.Pledge).Seq >= p.Seq {
					continue
				}
				if old != nil {
					if err := tx.Delete(ledger.TablePledges, old); err != nil {
						return err
					}
				}
				if err := tx.Put(ledger.TablePledges, p); err != nil {
					return err
				}
			case it.Feedback != nil:
				f := it.Feedback
				if err := tx.Put(ledger.TableFeedback, &ledger.Feedback{Agent: a.id.AgentID, Seq: f.Seq,
					Record: f.Record, Bundle: f.Bundle, State: f.State, Reason: f.Reason, At: f.At}); err != nil {
					return err
				}
			case it.Acked > 0:
				ackTo = max(ackTo, it.Acked)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	// A bundle signed by the hub for this agent proves it was admitted.
	if err := a.forgetEnrolSecret(); err != nil {
		return err
	}
	if ackTo == 0 {
		return nil
	}
	if err := a.markAcked(ackTo, "", ""); err != nil {
		return err
	}
	// A site that only carries bundles by hand never syncs: this is where
	// its outbox is emptied.
	a.removeOutbox(ackTo)
	return nil
}

// hubKey returns the hub's signing key from the identity.
func (a *Agent) hubKey() ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(a.id.HubKey)
	if err != nil || len(k) != 32 {
		return nil, fmt.Errorf("identity holds no valid hub key; re-enrol the agent")
	}
	if protocol.Fingerprint(k) != a.id.HubKeyPin {
		return nil, fmt.Errorf("hub key in identity does not match its pin; re-enrol the agent")
	}
	return k, nil
}

// removeOutbox deletes acknowledged bundle files; the hub holds them now.
func (a *Agent) removeOutbox(upTo uint64) {
	ents, _ := os.ReadDir(filepath.Join(a.dir, outboxDir))
	for _, e := range ents {
		var seq uint64
		if _, err := fmt.Sscanf(e.Name(), a.id.AgentID+"-%d.age", &seq); err == nil && seq <= upTo {
			os.Remove(filepath.Join(a.dir, outboxDir, e.Name()))
		}
	}
}
