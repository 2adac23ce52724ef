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

// Agent states, and the state of a site's agents taken together (the best
// of them: one active agent makes the site active).
const (
	AgentActive      = "active"
	AgentSilent      = "silent" // no sync for longer than SilentAfter
	AgentRevoked     = "revoked"
	AgentPending     = "pending"      // enrolment issued, never used
	AgentNotEnrolled = "not enrolled" // no agent and no usable enrolment
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
	AgentState     string    `json:"agent_state"`           // active, silent, revoked, pending, not enrolled
	SilentDays     int       `json:"silent_days,omitempty"` // whole days since the last sync, when silent
}

// DonorStatus sums one donor's programme.
type DonorStatus struct {
	Donor       string `json:"donor"`
	Programme   string `json:"programme"`
	Pledges     int    `json:"pledges"`
	Pledged     int64  `json:"pledged"`
	Received    int64  `json:"received"`
	Confirmed   int64  `json:"confirmed"`
	Damaged     int64  `json:"damaged"`
	Outstanding int64  `json:"outstanding"`
	Disputed    int    `json:"disputed"`
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
	SilentDays     int       `json:"silent_days,omitempty"`
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

// Totals counts across the filtered picture. Cancelled pledges count in
// Pledges but not in the quantities.
type Totals struct {
	Sites         int   `json:"sites"`
	Pledges       int   `json:"pledges"`
	Records       int   `json:"records"`
	Pledged       int64 `json:"pledged"`
	Received      int64 `json:"received"`
	Confirmed     int64 `json:"confirmed"`
	Damaged       int64 `json:"damaged"`
	Outstanding   int64 `json:"outstanding"`
	Disputed      int   `json:"disputed"` // pledges with a discrepancy
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

// siteSync is what a site's agents say about its synchronisation.
type siteSync struct {
	lastSync       time.Time
	oldestUnsynced time.Time
	state          string
}

// agentState is an agent's state at now.
func agentState(a *ledger.Agent, now time.Time) string {
	switch {
	case a.IsRevoked():
		return AgentRevoked
	case now.Sub(a.LastSeen) > SilentAfter:
		return AgentSilent
	}
	return AgentActive
}

// silentDays is the number of whole days since t, for a silent agent.
func silentDays(state string, t, now time.Time) int {
	if state != AgentSilent || t.IsZero() {
		return 0
	}
	return int(now.Sub(t) / (24 * time.Hour))
}

// stateRank orders agent states: a site is as well as its best agent.
var stateRank = map[string]int{AgentActive: 4, AgentSilent: 3, AgentPending: 2, AgentRevoked: 1, AgentNotEnrolled: 0}

// siteSyncs derives each site's last sync, oldest unsynced record and agent
// state from the agents and enrolments tables. The site's last sync is its
// most recently seen agent's, and so is the oldest unsynced record that
// agent reported when it synced.
func siteSyncs(txn *memdb.Txn, now time.Time) (map[string]*siteSync, error) {
	out := map[string]*siteSync{}
	of := func(site string) *siteSync {
		s, ok := out[site]
		if !ok {
			s = &siteSync{state: AgentNotEnrolled}
			out[site] = s
		}
		return s
	}
	better := func(s *siteSync, state string) {
		if stateRank[state] > stateRank[s.state] {
			s.state = state
		}
	}
	ait, err := txn.Get(ledger.TableAgents, ledger.IndexID)
	if err != nil {
		return nil, err
	}
	for obj := ait.Next(); obj != nil; obj = ait.Next() {
		a := obj.(*ledger.Agent)
		s := of(a.Site)
		if a.LastSeen.After(s.lastSync) {
			s.lastSync, s.oldestUnsynced = a.LastSeen, a.OldestUnsynced
		}
		better(s, agentState(a, now))
	}
	eit, err := txn.Get(ledger.TableEnrolments, ledger.IndexID)
	if err != nil {
		return nil, err
	}
	for obj := eit.Next(); obj != nil; obj = eit.Next() {
		if e := obj.(*ledger.Enrolment); e.Used.IsZero() && now.Before(e.Expires) {
			better(of(e.Site), AgentPending)
		}
	}
	return out, nil
}

func aggregate(txn *memdb.Txn, f StatusFilter, now time.Time) (*Status, error) {
	st := &Status{Generated: now.Truncate(time.Second), Sites: []SiteStatus{}, Donors: []DonorStatus{},
		Pledges: []PledgeStatus{}, Discrepancies: []Discrepancy{}, Agents: []AgentStatus{}, Quarantined: []ledger.Bundle{}}
	sites := map[string]*SiteStatus{}
	siteOf := func(id string) *SiteStatus {
		s, ok := sites[id]
		if !ok {
			s = &SiteStatus{Site: ledger.Site{ID: id}, AgentState: AgentNotEnrolled}
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

	pledges := map[string]*protocol.Pledge{}
	pledge := func(id string) (*protocol.Pledge, error) {
		if id == "" {
			return nil, nil
		}
		if p, ok := pledges[id]; ok {
			return p, nil
		}
		obj, err := txn.First(ledger.TablePledges, ledger.IndexID, id)
		if err != nil {
			return nil, err
		}
		p, _ := obj.(*protocol.Pledge)
		pledges[id] = p
		return p, nil
	}
	// donorOK says whether a record naming pledgeID is in the picture.
	donorOK := func(pledgeID string) (bool, error) {
		if f.Donor == "" {
			return true, nil
		}
		p, err := pledge(pledgeID)
		return p != nil && p.Donor == f.Donor, err
	}

	// Records: per-record discrepancies, and the latest record that names
	// each pledge (where a pledge-level discrepancy is shown).
	latest := map[string]*protocol.Record{}
	err = eachRecord(txn, f.Site, func(r *protocol.Record) error {
		if r.Type == protocol.TypeAmendment || r.Type == protocol.TypeVoid {
			// A correction belongs where the record it corrects does.
			if f.Donor != "" {
				tobj, err := txn.First(ledger.TableRecords, ledger.IndexID, r.Target)
				if err != nil {
					return err
				}
				t, _ := tobj.(*protocol.Record)
				if t == nil {
					return nil
				}
				if ok, err := donorOK(t.Pledge); err != nil {
					return err
				} else if !ok {
					return nil
				}
			}
			siteOf(r.Site).Records++
			st.Totals.Records++
			return nil
		}
		if ok, err := donorOK(r.Pledge); err != nil {
			return err
		} else if !ok {
			return nil
		}
		siteOf(r.Site).Records++
		st.Totals.Records++
		eff, voided, err := ledger.Effective(txn, r)
		if err != nil {
			return err
		}
		if voided {
			return nil
		}
		ds, err := recordDiscrepancies(txn, &eff, false)
		if err != nil {
			return err
		}
		st.Discrepancies = append(st.Discrepancies, ds...)
		if eff.Pledge != "" {
			if l := latest[eff.Pledge]; l == nil || eff.At.After(l.At) || (eff.At.Equal(l.At) && eff.ID > l.ID) {
				latest[eff.Pledge] = r
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}

	donors := map[[2]string]*DonorStatus{}
	disputed := map[string]bool{}
	pit, err := txn.Get(ledger.TablePledges, ledger.IndexSeq)
	if err != nil {
		return nil, err
	}
	var pledgeStats []PledgeStatus
	for obj := pit.Next(); obj != nil; obj = pit.Next() {
		p := obj.(*protocol.Pledge)
		if (f.Site != "" && p.Site != f.Site) || (f.Donor != "" && p.Donor != f.Donor) {
			continue
		}
		t, err := ledger.PledgeTotals(txn, p.ID)
		if err != nil {
			return nil, err
		}
		if d, ok := pledgeDiscrepancy(p, t, latest[p.ID]); ok {
			st.Discrepancies = append(st.Discrepancies, d)
		}
		pledgeStats = append(pledgeStats, PledgeStatus{Pledge: *p, Received: t.Received, Confirmed: t.Confirmed, Rejected: t.Rejected, Damaged: t.Damaged})
	}
	for _, d := range st.Discrepancies {
		if d.Pledge != "" {
			disputed[d.Pledge] = true
		}
	}
	for _, ps := range pledgeStats {
		p := &ps.Pledge
		done := max(ps.Received, ps.Confirmed)
		ps.Outstanding = max(0, p.Qty-done)
		switch {
		case p.Cancelled:
			ps.State, ps.Outstanding = PledgeCancelled, 0
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
			d.Received += ps.Received
			d.Confirmed += ps.Confirmed
			d.Damaged += ps.Damaged
			d.Outstanding += ps.Outstanding
			st.Totals.Pledged += p.Qty
			st.Totals.Received += ps.Received
			st.Totals.Confirmed += ps.Confirmed
			st.Totals.Damaged += ps.Damaged
			st.Totals.Outstanding += ps.Outstanding
		}
		if ps.State == PledgeDisputed {
			d.Disputed++
			st.Totals.Disputed++
		}
	}
	if f.Donor != "" {
		// Discrepancies of other donors' pledges are not this donor's.
		mine := map[string]bool{}
		for _, p := range st.Pledges {
			mine[p.ID] = true
		}
		st.Discrepancies = slices.DeleteFunc(st.Discrepancies, func(d Discrepancy) bool { return !mine[d.Pledge] })
	}
	// Oldest first: record ids are ULIDs, ordered by time.
	slices.SortStableFunc(st.Discrepancies, func(a, b Discrepancy) int { return cmp.Compare(a.Record, b.Record) })
	for _, d := range st.Discrepancies {
		siteOf(d.Site).Discrepancies++
	}

	syncs, err := siteSyncs(txn, now)
	if err != nil {
		return nil, err
	}
	for id, ss := range syncs {
		if _, ok := sites[id]; !ok && f.Site == "" && f.Donor == "" {
			siteOf(id) // a site with agents but nothing else yet
		}
		if s, ok := sites[id]; ok {
			s.LastSync, s.OldestUnsynced, s.AgentState = ss.lastSync, ss.oldestUnsynced, ss.state
			s.SilentDays = silentDays(ss.state, ss.lastSync, now)
		}
	}
	for id, s := range sites {
		if (f.Site != "" && id != f.Site) || (f.Donor != "" && s.PledgesOpen+s.PledgesClosed == 0) {
			continue
		}
		st.Sites = append(st.Sites, *s)
	}
	slices.SortFunc(st.Sites, func(a, b SiteStatus) int { return cmp.Compare(a.ID, b.ID) })
	shown := map[string]bool{}
	for _, s := range st.Sites {
		shown[s.ID] = true
	}

	agentSite := map[string]string{}
	ait, err := txn.Get(ledger.TableAgents, ledger.IndexID)
	if err != nil {
		return nil, err
	}
	for obj := ait.Next(); obj != nil; obj = ait.Next() {
		a := obj.(*ledger.Agent)
		agentSite[a.ID] = a.Site
		if !shown[a.Site] {
			continue
		}
		as := AgentStatus{ID: a.ID, Site: a.Site, State: agentState(a, now), Enrolled: a.Enrolled, LastSeen: a.LastSeen,
			OldestUnsynced: a.OldestUnsynced, Bundles: a.BundleHWM, RevokeReason: a.RevokeReason}
		as.SilentDays = silentDays(as.State, a.LastSeen, now)
		st.Agents = append(st.Agents, as)
	}
	bit, err := txn.Get(ledger.TableBundles, ledger.IndexID)
	if err != nil {
		return nil, err
	}
	for obj := bit.Next(); obj != nil; obj = bit.Next() {
		b := obj.(*ledger.Bundle)
		if b.State != ledger.BundleQuarantined {
			continue
		}
		if site, ok := agentSite[b.From]; ok && !shown[site] && (f.Site != "" || f.Donor != "") {
			continue
		}
		st.Quarantined = append(st.Quarantined, *b)
	}

	for _, d := range donors {
		st.Donors = append(st.Donors, *d)
	}
	slices.SortFunc(st.Donors, func(a, b DonorStatus) int {
		return cmp.Or(cmp.Compare(a.Donor, b.Donor), cmp.Compare(a.Programme, b.Programme))
	})
	st.Totals.Sites, st.Totals.Pledges, st.Totals.Discrepancies = len(st.Sites), len(st.Pledges), len(st.Discrepancies)
	return st, nil
}

// eachRecord calls fn for every record, or for every record of one site
// (through its agents: a record's site is its agent's).
func eachRecord(txn *memdb.Txn, site string, fn func(r *protocol.Record) error) error {
	if site == "" {
		it, err := txn.Get(ledger.TableRecords, ledger.IndexSeq)
		if err != nil {
			return err
		}
		for obj := it.Next(); obj != nil; obj = it.Next() {
			if err := fn(obj.(*protocol.Record)); err != nil {
				return err
			}
		}
		return nil
	}
	ait, err := txn.Get(ledger.TableAgents, ledger.IndexSite, site)
	if err != nil {
		return err
	}
	var agents []string
	for obj := ait.Next(); obj != nil; obj = ait.Next() {
		agents = append(agents, obj.(*ledger.Agent).ID)
	}
	for _, a := range agents {
		it, err := txn.LowerBound(ledger.TableRecords, ledger.IndexSeq, a, uint64(0))
		if err != nil {
			return err
		}
		for obj := it.Next(); obj != nil; obj = it.Next() {
			r := obj.(*protocol.Record)
			if r.Agent != a {
				break
			}
			if r.Site != site {
				continue
			}
			if err := fn(r); err != nil {
				return err
			}
		}
	}
	return nil
}
