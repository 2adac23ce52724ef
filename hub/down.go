package hub

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

// downlink sends an agent, in a session, what it lacks: its site's pledges
// changed after what its hello says it holds, feedback on what it sent, and
// where its bundles stand, in hub bundles signed by the hub and encrypted to
// the agent. Nothing waits for an answer: the agent's next hello says what
// it holds, so a hub bundle lost with the connection is sent again then.
type downlink struct {
	h     *Hub
	agent string
	w     io.Writer
	from  down // where the agent stands once it has what went down so far
	sent  int  // hub bundles sent in this session
}

// send sends everything the agent lacks, in as many hub bundles as it
// takes (MaxDownItems each).
func (d *downlink) send() error {
	for {
		data, next, err := d.h.downBundle(d.agent, d.from, false)
		if err != nil || data == nil {
			return err
		}
		if err := protocol.WriteMessage(d.w, &protocol.DownBundle{Seq: next.seq, Data: data}); err != nil {
			return err
		}
		d.from = next
		d.sent++
	}
}

// close records the seq of the last hub bundle sent, so that the next
// session numbers its own after it.
func (d *downlink) close() error {
	if d.sent == 0 {
		return nil
	}
	return d.h.led.Write(func(tx *ledger.Txn) error {
		obj, err := tx.First(ledger.TableAgents, ledger.IndexID, d.agent)
		if err != nil || obj == nil {
			return err
		}
		a := *obj.(*ledger.Agent)
		a.DownSeq = max(a.DownSeq, d.from.seq)
		return tx.Put(ledger.TableAgents, &a)
	})
}

// MaxDownItems caps the pledges and feedback in one bundle sent down, well
// inside protocol.MaxDownBundleSize; a backlog goes down in several.
const MaxDownItems = 2000

// down is where an agent stands in what the hub sends it: the seq of the
// last hub bundle, and the pledge changes and feedback it holds.
type down struct {
	seq, pledgeHWM, feedbackHWM uint64
}

// downBundle seals what agentID lacks beyond from: the next hub bundle, and
// where the agent stands once it has it. With all set it includes
// everything, for a bundle carried by hand. It returns nil data when there
// is nothing to send.
func (h *Hub) downBundle(agentID string, from down, all bool) ([]byte, down, error) {
	d := from
	var items []protocol.DownItem
	var a *ledger.Agent
	err := h.led.Read(func(txn *memdb.Txn) error {
		obj, err := txn.First(ledger.TableAgents, ledger.IndexID, agentID)
		if err != nil || obj == nil {
			return fmt.Errorf("agent %q is not enrolled (it must sync once, or be enrolled by hand)", agentID)
		}
		a = obj.(*ledger.Agent)
		pledgeFrom, fbFrom := from.pledgeHWM, from.feedbackHWM
		if all {
			pledgeFrom, fbFrom = 0, 0
		}
		// Limit what one bundle carries, in change order, so that the
		// high-water marks cover exactly what was sent; the rest follows in
		// the next bundle.
		room := MaxDownItems
		if all {
			room = protocol.MaxItems - 1
		}
		it, err := txn.Get(ledger.TablePledges, ledger.IndexSite, a.Site)
		if err != nil {
			return err
		}
		var changed []*protocol.Pledge
		for obj := it.Next(); obj != nil; obj = it.Next() {
			if p := obj.(*protocol.Pledge); p.Seq > pledgeFrom {
				changed = append(changed, p)
			}
		}
		slices.SortFunc(changed, func(x, y *protocol.Pledge) int { return cmp.Compare(x.Seq, y.Seq) })
		for _, p := range changed[:min(len(changed), room)] {
			items = append(items, protocol.DownItem{Pledge: p})
			d.pledgeHWM = max(d.pledgeHWM, p.Seq)
		}
		fit, err := txn.LowerBound(ledger.TableFeedback, ledger.IndexID, agentID, fbFrom+1)
		if err != nil {
			return err
		}
		for obj := fit.Next(); obj != nil && len(items) < room; obj = fit.Next() {
			f := obj.(*ledger.Feedback)
			if f.Agent != agentID {
				break
			}
			items = append(items, protocol.DownItem{Feedback: &protocol.Feedback{Seq: f.Seq, Record: f.Record,
				Bundle: f.Bundle, State: f.State, Reason: f.Reason, At: f.At}})
			d.feedbackHWM = max(d.feedbackHWM, f.Seq)
		}
		return nil
	})
	if err != nil {
		return nil, d, err
	}
	if a.BundleHWM > 0 {
		items = append(items, protocol.DownItem{Acked: a.BundleHWM})
	}
	if len(items) == 0 || (!all && len(items) == 1 && a.BundleHWM > 0) {
		// Only the acknowledgement point, which the HelloOK and the Acks
		// of the session tell the agent.
		return nil, from, nil
	}
	recipient, err := parseRecipient(a.Recipient)
	if err != nil {
		return nil, d, fmt.Errorf("agent %s recipient: %w", agentID, err)
	}
	d.seq = max(from.seq, a.DownSeq) + 1
	m := protocol.Manifest{Kind: protocol.KindHub, From: "hub", To: agentID, Site: a.Site, Seq: d.seq, Created: h.now().UTC().Truncate(time.Second)}
	var buf bytes.Buffer
	if _, err := protocol.SealBundle(&buf, m, items, h.key, recipient); err != nil {
		return nil, d, fmt.Errorf("seal bundle for %s: %w", agentID, err)
	}
	return buf.Bytes(), d, nil
}
