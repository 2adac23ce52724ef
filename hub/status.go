package hub

import (
	"cmp"
	"slices"
	"time"

	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

// Pledge states at the hub.
const (
	PledgeOpen      = "open"
	PledgePartial   = "partial"
	PledgeFulfilled = "fulfilled"
	PledgeDisputed  = "disputed"
	PledgeCancelled = "cancelled"
)

// SilentAfter is how long without a sync before an agent counts as silent.
const SilentAfter = 3 * 24 * time.Hour

// StatusFilter narrows the status to one site or one donor.
type StatusFilter struct {
	Site  string
	Donor string
}

// PledgeStatus is one pledge with what was reported against it.
type PledgeStatus struct {
	protocol.Pledge
	Received    int64  `json:"received"`
	Confirmed   int64  `json:"confirmed"`
	Rejected    int64  `json:"rejected"`
	Damaged     int64  `json:"damaged"`
	Outstanding int64  `json:"outstanding"`
	State       string `json:"state"`
}

// SiteStatus is one site at a glance.
type SiteStatus struct {
	ledger.Site
	PledgesOpen    int       `json:"pledges_open"`
	PledgesClosed  int       `json:"pledges_closed"`
	Records        int       `json:"records"`
	Discrepancies  int       `json:"discrepancies"`
	LastSync       time.Time `json:"last_sync,omitzero"`
	OldestUnsynced time.Time `json:"oldest_unsynced,omitzero"`
	AgentState     string    `json:"agent_state"` // active, silent, revoked, not enrolled
}

// DonorStatus sums one donor's programme.
type DonorStatus struct {
	Donor     string `json:"donor"`
	Programme string `json:"programme"`
	Pledges   int    `json:"pledges"`
	Pledged   int64  `json:"pledged"`
	Received  int64  `json:"received"`
	Confirmed int64  `json:"confirmed"`
	Disputed  int    `json:"disputed"`
}

// AgentStatus is one agent as the hub knows it.
type AgentStatus struct {
	ID             string    `json:"id"`
	Site           string    `json:"site"`
	State          string    `json:"state"`
	Enrolled       time.Time `json:"enrolled"`
	LastSeen       time.Time `json:"last_seen,omitzero"`
	OldestUnsynced time.Time `json:"oldest_unsynced,omitzero"`
	Bundles        uint64    `json:"bundles"`
	RevokeReason   string    `json:"revoke_reason,omitempty"`
}

// Status is the aggregated picture: the document behind `hub status --json`
// and /api/v1/status.
type Status struct {
	Generated     time.Time       `json:"generated"`
	Totals        Totals          `json:"totals"`
	Sites         []SiteStatus    `json:"sites"`
	Donors        []DonorStatus   `json:"donors"`
	Pledges       []PledgeStatus  `json:"pledges"`
	Discrepancies []Discrepancy   `json:"discrepancies"`
	Agents        []AgentStatus   `json:"agents"`
	Quarantined   []ledger.Bundle `json:"quarantined"`
}

// Totals counts across the filtered picture.
type Totals struct {
	Sites         int   `json:"sites"`
	Pledges       int   `json:"pledges"`
	Records       int   `json:"records"`
	Pledged       int64 `json:"pledged"`
	Received      int64 `json:"received"`
	Confirmed     int64 `json:"confirmed"`
	Outstanding   int64 `json:"outstanding"`
	Discrepancies int   `json:"discrepancies"`
}

// Status computes the aggregated picture.
func (h *Hub) Status(f StatusFilter) (*Status, error) {
	var st *Status
	err := h.led.Read(func(txn *memdb.Txn) error {
		var err error
		st, err = aggregate(txn, f, h.now().UTC())
		return err
	})
	return st, err
}

func aggregate(txn *memdb.Txn, f StatusFilter, now time.Time) (*Status, error) {
	st := &Status{Generated: now.Truncate(time.Second), Sites: []SiteStatus{}, Donors: []DonorStatus{},
		Pledges: []PledgeStatus{}, Discrepancies: []Discrepancy{}, Agents: []AgentStatus{}, Quarantined: []ledger.Bundle{}}
	sites := map[string]*SiteStatus{}
	siteOf := func(id string) *SiteStatus {
		s, ok := sites[id]
		if !ok {
			s = &SiteStatus{Site: ledger.Site{ID: id}, AgentState: "not enrolled"}
			sites[id] = s
		}
		return s
	}
	it, err := txn.Get(ledger.TableSites, ledger.IndexID)
	if err != nil {
		return nil, err
	}
	for obj := it.Next(); obj != nil; obj = it.Next() {
		s := obj.(*ledger.Site)
		siteOf(s.ID).Site = *s
	}

	// Records: per-record discrepancies and per-pledge sums.
	disputed := map[string]bool{}
	rit, err := txn.Get(ledger.TableRecords, ledger.IndexID)
	if err != nil {
		return nil, err
	}
	for obj := rit.Next(); obj != nil; obj = rit.Next() {
		r := obj.(*protocol.Record)
		if f.Site != "" && r.Site != f.Site {
			continue
		}
		siteOf(r.Site).Records++
		st.Totals.Records++
		if r.Type == protocol.TypeAmendment || r.Type == protocol.TypeVoid {
			continue
		}
		eff, voided, err := ledger.Effective(txn, r)
		if err != nil {
			return nil, err
		}
		if voided {
			continue
		}
		ds, err := recordDiscrepancies(txn, &eff)
		if err != nil {
			return nil, err
		}
		for _, d := range ds {
			if d.Pledge != "" {
				disputed[d.Pledge] = true
			}
			siteOf(r.Site).Discrepancies++
		}
		st.Discrepancies = append(st.Discrepancies, ds...)
	}

	donors := map[[2]string]*DonorStatus{}
	pit, err := txn.Get(ledger.TablePledges, ledger.IndexSeq)
	if err != nil {
		return nil, err
	}
	for obj := pit.Next(); obj != nil; obj = pit.Next() {
		p := obj.(*protocol.Pledge)
		if (f.Site != "" && p.Site != f.Site) || (f.Donor != "" && p.Donor != f.Donor) {
			continue
		}
		t, err := ledger.PledgeTotals(txn, p.ID)
		if err != nil {
			return nil, err
		}
		ps := PledgeStatus{Pledge: *p, Received: t.Received, Confirmed: t.Confirmed, Rejected: t.Rejected, Damaged: t.Damaged}
		done := max(t.Received, t.Confirmed)
		ps.Outstanding = max(0, p.Qty-done)
		switch {
		case p.Cancelled:
			ps.State = PledgeCancelled
		case disputed[p.ID]:
			ps.State = PledgeDisputed
		case done >= p.Qty:
			ps.State = PledgeFulfilled
		case done > 0:
			ps.State = PledgePartial
		default:
			ps.State = PledgeOpen
		}
		st.Pledges = append(st.Pledges, ps)
		s := siteOf(p.Site)
		if ps.State == PledgeFulfilled || ps.State == PledgeCancelled {
			s.PledgesClosed++
		} else {
			s.PledgesOpen++
		}
		key := [2]string{p.Donor, p.Programme}
		d, ok := donors[key]
		if !ok {
			d = &DonorStatus{Donor: p.Donor, Programme: p.Programme}
			donors[key] = d
		}
		d.Pledges++
		if !p.Cancelled {
			d.Pledged += p.Qty
			d.Received += t.Received
			d.Confirmed += t.Confirmed
			st.Totals.Pledged += p.Qty
			st.Totals.Received += t.Received
			st.Totals.Confirmed += t.Confirmed
			st.Totals.Outstanding += ps.Outstanding
		}
		if ps.State == PledgeDisputed {
			d.Disputed++
		}
	}
	if f.Donor != "" {
		// Discrepancies of other donors' pledges are not this donor's.
		keep := st.Discrepancies[:0]
		mine := map[string]bool{}
		for _, p := range st.Pledges {
			mine[p.ID] = true
		}
		for _, d := range st.Discrepancies {
			if mine[d.Pledge] {
				keep = append(keep, d)
			}
		}
		st.Discrepancies = keep
	}

	ait, err := txn.Get(ledger.TableAgents, ledger.IndexID)
	if err != nil {
		return nil, err
	}
	for obj := ait.Next(); obj != nil; obj = ait.Next() {
		a := obj.(*ledger.Agent)
		if f.Site != "" && a.Site != f.Site {
			continue
		}
		as := AgentStatus{ID: a.ID, Site: a.Site, Enrolled: a.Enrolled, LastSeen: a.LastSeen,
			OldestUnsynced: a.OldestUnsynced, Bundles: a.BundleHWM, RevokeReason: a.RevokeReason}
		switch {
		case a.IsRevoked():
			as.State = "revoked"
		case now.Sub(a.LastSeen) > SilentAfter:
			as.State = "silent"
		default:
			as.State = "active"
		}
		st.Agents = append(st.Agents, as)
		s := siteOf(a.Site)
		if a.LastSeen.After(s.LastSync) {
			s.LastSync, s.OldestUnsynced = a.LastSeen, a.OldestUnsynced
		}
		if s.AgentState != "active" {
			s.AgentState = as.State
		}
	}
	bit, err := txn.Get(ledger.TableBundles, ledger.IndexID)
	if err != nil {
		return nil, err
	}
	for obj := bit.Next(); obj != nil; obj = bit.Next() {
		if b := obj.(*ledger.Bundle); b.State == ledger.BundleQuarantined {
			st.Quarantined = append(st.Quarantined, *b)
		}
	}

	for id, s := range sites {
		if (f.Site != "" && id != f.Site) || (f.Donor != "" && s.PledgesOpen+s.PledgesClosed == 0) {
			continue
		}
		st.Sites = append(st.Sites, *s)
	}
	slices.SortFunc(st.Sites, func(a, b SiteStatus) int { return cmp.Compare(a.ID, b.ID) })
	for _, d := range donors {
		st.Donors = append(st.Donors, *d)
	}
	slices.SortFunc(st.Donors, func(a, b DonorStatus) int {
		return cmp.Or(cmp.Compare(a.Donor, b.Donor), cmp.Compare(a.Programme, b.Programme))
	})
	st.Totals.Sites, st.Totals.Pledges, st.Totals.Discrepancies = len(st.Sites), len(st.Pledges), len(st.Discrepancies)
	return st, nil
}
