package agent

import (
	"encoding/json"
	"sync"
	"time"

	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/ledger"
	"fieldsync/internal/progress"
	"fieldsync/protocol"
)

// Status is the agent's sync state: the document behind `agent status`.
type Status struct {
	Agent          string `json:"agent"`
	Site           string `json:"site"`
	SiteName       string `json:"site_name"`
	Hub            string `json:"hub"`
	HubFingerprint string `json:"hub_fingerprint"`
	Records        int    `json:"records"`
	Unsynced       int    `json:"unsynced_records"`
	UnsyncedBytes  int64  `json:"unsynced_bytes"` // sealed bundles not yet acknowledged, plus an estimate for unsealed records
	// Attachments the hub has not confirmed holding, and their size.
	AttachmentsPending     int       `json:"attachments_pending"`
	AttachmentBytesPending int64     `json:"attachment_bytes_pending"`
	OldestUnsynced         time.Time `json:"oldest_unsynced,omitzero"`
	Pledges                int       `json:"pledges"`
	PledgesOpen            int       `json:"pledges_open"`
	LastSync               string    `json:"last_sync,omitempty"`
	LastSyncTook           string    `json:"last_sync_took,omitempty"`
	LastError              string    `json:"last_error,omitempty"`
	LastErrorAt            string    `json:"last_error_at,omitempty"`
	// Deferred is what the last sync left for later and why, after the
	// time it said so ("2026-11-23T10:00:00Z today's link budget is spent; …").
	Deferred string `json:"deferred,omitempty"`
	Enrolled bool   `json:"enrolled_at_hub"` // the hub accepted this agent at least once
	HubNotes int    `json:"hub_notes"`       // records the hub refused, quarantined or found a discrepancy in
	// Transfer is the sync in progress, if one is.
	Transfer *TransferStatus `json:"transfer,omitempty"`
}

// TransferStatus is how a sync in progress is going.
type TransferStatus struct {
	Since time.Time `json:"since"` // when the sync began
	// What the sync does now: "sealing", "connecting", "records" and
	// "attachments" (uploads, with byte counts), "receiving" (from the hub).
	What  string `json:"what"`
	Sent  int64  `json:"sent_bytes"`
	Total int64  `json:"total_bytes"`
	// Rate is the phase's bytes per second so far, and LeftSeconds the time
	// left at that rate; both 0 until measurable.
	Rate        int64 `json:"rate_bytes_per_second"`
	LeftSeconds int64 `json:"left_seconds"`
}

// transfer is what a running sync tells Status.
type transfer struct {
	since time.Time
	mu    sync.Mutex
	what  string
	meter *progress.Meter
}

// track returns a Progress that records the phase what of the running
// sync for Status, and passes the updates on to next (if set).
func (a *Agent) track(what string, next Progress) Progress {
	t := a.transfer.Load()
	if t == nil {
		return next
	}
	meter := &progress.Meter{}
	return func(sent, total int64) {
		t.mu.Lock()
		t.what, t.meter = what, meter
		t.mu.Unlock()
		meter.Update(sent, total)
		if next != nil {
			next(sent, total)
		}
	}
}

// phase notes what the running sync does now, when it has no byte count.
func (a *Agent) phase(what string) {
	if t := a.transfer.Load(); t != nil {
		t.mu.Lock()
		t.what, t.meter = what, nil
		t.mu.Unlock()
	}
}

// transferStatus returns the running sync's state, or nil.
func (a *Agent) transferStatus() *TransferStatus {
	t := a.transfer.Load()
	if t == nil {
		return nil
	}
	t.mu.Lock()
	what, meter := t.what, t.meter
	t.mu.Unlock()
	ts := &TransferStatus{Since: t.since, What: what}
	if meter != nil {
		r := meter.Read()
		ts.Sent, ts.Total, ts.Rate, ts.LeftSeconds = r.Done, r.Total, int64(r.Rate), int64(r.Left.Seconds())
	}
	return ts
}

// Status reports what is waiting to sync and how the last sync went.
func (a *Agent) Status() (Status, error) {
	s := Status{Agent: a.id.AgentID, Site: a.id.Site, SiteName: a.id.SiteName, Hub: a.id.HubAddr,
		HubFingerprint: a.id.HubKeyPin, Enrolled: a.enrolSecret() == "", Transfer: a.transferStatus()}
	err := a.led.Read(func(txn *memdb.Txn) error {
		pts, err := a.syncPoints(txn)
		if err != nil {
			return err
		}
		for _, b := range pts.bundles {
			s.UnsyncedBytes += b.Size
		}
		seen := map[string]bool{}
		for r, err := range ledger.RecordsOf(txn).OfAgent(a.id.AgentID, 0) {
			if err != nil {
				return err
			}
			s.Records++
			for _, att := range r.Attachments {
				if seen[att.SHA256] {
					continue
				}
				seen[att.SHA256] = true
				if held, err := txn.First(ledger.TableMeta, ledger.IndexID, blobMetaPrefix+att.SHA256); err != nil {
					return err
				} else if held == nil {
					s.AttachmentsPending++
					s.AttachmentBytesPending += att.Size
				}
			}
			if r.Seq <= pts.acked {
				continue
			}
			s.Unsynced++
			if s.OldestUnsynced.IsZero() {
				s.OldestUnsynced = r.At
			}
			if r.Seq > pts.sealed {
				// Not sealed yet: count its JSON size; compression makes the
				// bundle smaller, so this errs on the safe side.
				b, _ := json.Marshal(r)
				s.UnsyncedBytes += int64(len(b))
			}
		}
		pit, err := txn.Get(ledger.TablePledges, ledger.IndexID)
		if err != nil {
			return err
		}
		for obj := pit.Next(); obj != nil; obj = pit.Next() {
			v, err := pledgeView(txn, obj.(*protocol.Pledge))
			if err != nil {
				return err
			}
			s.Pledges++
			if v.State == "open" || v.State == "partial" {
				s.PledgesOpen++
			}
		}
		fit, err := txn.Get(ledger.TableFeedback, ledger.IndexID)
		if err != nil {
			return err
		}
		for obj := fit.Next(); obj != nil; obj = fit.Next() {
			s.HubNotes++
		}
		for key, dst := range map[string]*string{
			metaLastSync: &s.LastSync, metaLastSyncTook: &s.LastSyncTook, metaLastError: &s.LastError, metaLastErrorAt: &s.LastErrorAt,
			metaDeferred: &s.Deferred,
		} {
			obj, err := txn.First(ledger.TableMeta, ledger.IndexID, key)
			if err != nil {
				return err
			}
			if obj != nil {
				*dst = obj.(*ledger.Meta).Value
			}
		}
		return nil
	})
	return s, err
}
