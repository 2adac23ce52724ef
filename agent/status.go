package agent

import (
	"encoding/json"
	"time"

	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

// Status is the agent's sync state: the document behind `agent status`.
type Status struct {
	Agent          string    `json:"agent"`
	Site           string    `json:"site"`
	SiteName       string    `json:"site_name"`
	Hub            string    `json:"hub"`
	HubFingerprint string    `json:"hub_fingerprint"`
	Records        int       `json:"records"`
	Unsynced       int       `json:"unsynced_records"`
	UnsyncedBytes  int64     `json:"unsynced_bytes"` // sealed bundles not yet acknowledged, plus an estimate for unsealed records
	OldestUnsynced time.Time `json:"oldest_unsynced,omitzero"`
	Pledges        int       `json:"pledges"`
	PledgesOpen    int       `json:"pledges_open"`
	LastSync       string    `json:"last_sync,omitempty"`
	LastSyncTook   string    `json:"last_sync_took,omitempty"`
	LastError      string    `json:"last_error,omitempty"`
	LastErrorAt    string    `json:"last_error_at,omitempty"`
	Enrolled       bool      `json:"enrolled_at_hub"` // the hub accepted this agent at least once
	HubNotes       int       `json:"hub_notes"`       // records the hub refused, quarantined or found a discrepancy in
}

// Status reports what is waiting to sync and how the last sync went.
func (a *Agent) Status() (Status, error) {
	s := Status{Agent: a.id.AgentID, Site: a.id.Site, SiteName: a.id.SiteName, Hub: a.id.HubAddr,
		HubFingerprint: a.id.HubKeyPin, Enrolled: a.enrolSecret() == ""}
	err := a.led.Read(func(txn *memdb.Txn) error {
		pts, err := a.syncPoints(txn)
		if err != nil {
			return err
		}
		for _, b := range pts.bundles {
			s.UnsyncedBytes += b.Size
		}
		it, err := txn.LowerBound(ledger.TableRecords, ledger.IndexSeq, a.id.AgentID, uint64(0))
		if err != nil {
			return err
		}
		for obj := it.Next(); obj != nil; obj = it.Next() {
			r := obj.(*protocol.Record)
			if r.Agent != a.id.AgentID {
				break
			}
			s.Records++
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
