package hub

import (
	"cmp"
	"fmt"
	"hash/maphash"
	"maps"
	"slices"
	"sync"
	"time"

	iradix "github.com/hashicorp/go-immutable-radix"
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
	// Syncing is the sync sessions in progress, of the sites in Sites.
	Syncing []Session `json:"syncing"`
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

// Status returns the aggregated picture as of the call: everything the hub
// acknowledged before it is in.
//
// The hub keeps the aggregate in memory between calls and takes in only
// what changed since the last one (see statusCache), so a call costs what
// changed, not what the hub holds; but the unfiltered status lists every
// pledge and discrepancy, and those lists are made anew after a change.
// The returned Status shares its lists with other callers: treat it as
// read-only.
func (h *Hub) Status(f StatusFilter) (*Status, error) {
	snap, err := h.status.current(h.led)
	if err != nil {
		return nil, err
	}
	return h.withSyncing(snap.view(f, h.now().UTC(), -1), f), nil
}

// withSyncing adds the sessions in progress to st: they are not in the
// ledger, and change by the second.
func (h *Hub) withSyncing(st *Status, f StatusFilter) *Status {
	st.Syncing = h.sessions.list()
	if f != (StatusFilter{}) {
		// A donor's view names only the donor's sites, and is the kind of
		// document that is sent on: no other site's addresses in it.
		shown := map[string]bool{}
		for _, s := range st.Sites {
			shown[s.ID] = true
		}
		st.Syncing = slices.DeleteFunc(st.Syncing, func(s Session) bool { return !shown[s.Site] })
	}
	return st
}

// StatusSummary is the unfiltered Status without the lists that grow with
// the ledger: Pledges is nil, and Discrepancies holds only the latest n,
// oldest first, while Totals counts them all. It is what the dashboard's
// overview shows, and it costs what changed since the last call, never
// what the hub holds.
func (h *Hub) StatusSummary(n int) (*Status, error) {
	snap, err := h.status.current(h.led)
	if err != nil {
		return nil, err
	}
	return h.withSyncing(snap.view(StatusFilter{}, h.now().UTC(), max(0, n)), StatusFilter{}), nil
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
// state from the agents and enrolments tables (see syncsOf).
func siteSyncs(txn *memdb.Txn, now time.Time) (map[string]*siteSync, error) {
	agents, err := rows[ledger.Agent](txn, ledger.TableAgents)
	if err != nil {
		return nil, err
	}
	enrols, err := rows[ledger.Enrolment](txn, ledger.TableEnrolments)
	if err != nil {
		return nil, err
	}
	return syncsOf(agents, enrols, now), nil
}

// syncsOf derives each site's last sync, oldest unsynced record and agent
// state from its agents (in id order) and enrolments. The site's last sync
// is its most recently seen agent's, and so is the oldest unsynced record
// that agent reported when it synced.
func syncsOf(agents []*ledger.Agent, enrols []*ledger.Enrolment, now time.Time) map[string]*siteSync {
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
	for _, a := range agents {
		s := of(a.Site)
		if a.LastSeen.After(s.lastSync) {
			s.lastSync, s.oldestUnsynced = a.LastSeen, a.OldestUnsynced
		}
		better(s, agentState(a, now))
	}
	for _, e := range enrols {
		if e.Used.IsZero() && now.Before(e.Expires) {
			better(of(e.Site), AgentPending)
		}
	}
	return out
}

// rows returns every object of a table, in id order.
func rows[T any](txn *memdb.Txn, table string) ([]*T, error) {
	it, err := txn.Get(table, ledger.IndexID)
	if err != nil {
		return nil, err
	}
	var out []*T
	for obj := it.Next(); obj != nil; obj = it.Next() {
		out = append(out, obj.(*T))
	}
	return out, nil
}

// statusCache keeps the aggregate behind Status between calls.
//
// Recomputing the picture means walking every record, seconds at a hub
// with millions of them. Instead the cache keeps what each pledge's records
// add up to and each record's discrepancies, and takes in only what changed:
// watch channels on the tables say in O(1) whether anything did; records
// are never rewritten or deleted, so the new ones are those past each
// agent's last sequence number taken in; pledges are never deleted, and
// every change gives one a new change number. A correction, a pledge issued
// or cancelled, or a serial number reported again makes the cache
// recompute the records and pledges it concerns, and nothing else. The
// result is exactly what a full recomputation gives.
//
// What depends on the clock (an agent silent for days, an enrolment that
// expired) is derived per call from the cached rows.
type statusCache struct {
	mu   sync.Mutex
	db   *memdb.MemDB    // the ledger's store agg derives from
	agg  *statusAgg      // nil until the first call, and after a failure
	snap *statusSnapshot // agg as the lists that Status hands out
}

// current brings the aggregate up to date with the ledger and returns it.
func (c *statusCache) current(led *ledger.Ledger) (*statusSnapshot, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	db := led.DB()
	if c.snap != nil && c.db == db && !c.agg.changed() {
		return c.snap, nil
	}
	if c.db != db {
		// A store the ledger swapped in (or the first): its watch channels
		// are not ours.
		c.db, c.agg, c.snap = db, nil, nil
	}
	err := led.Read(func(txn *memdb.Txn) error {
		if c.agg == nil {
			agg, err := buildStatusAgg(txn)
			if err != nil {
				return err
			}
			c.agg, c.snap = agg, nil
		} else if err := c.agg.update(txn); err != nil {
			return err
		}
		c.snap = c.agg.materialize(c.snap)
		return nil
	})
	if err != nil {
		// A half-applied update is no base to build on: start afresh.
		c.db, c.agg, c.snap = nil, nil, nil
		return nil, fmt.Errorf("aggregate status: %w", err)
	}
	return c.snap, nil
}

// The tables the aggregate derives from, in the order of statusAgg.watch.
const (
	watchRecords = iota
	watchPledges
	watchSites
	watchAgents
	watchEnrolments
	watchBundles
	watchTables
)

var watchedTables = [watchTables]string{ledger.TableRecords, ledger.TablePledges, ledger.TableSites,
	ledger.TableAgents, ledger.TableEnrolments, ledger.TableBundles}

// statusAgg is the aggregate as of one state of the ledger.
type statusAgg struct {
	watch [watchTables]<-chan struct{} // closed when the table changes after that state

	// From the records table.
	taken    int                 // records taken in: the first this many stored
	records  int                 // records of every kind
	siteRecs map[string]*int     // records per site (a pointer: one lookup per record)
	orphans  map[string][]string // corrected record id → sites of corrections that came before it

	// The unfiltered discrepancies, by record (see discKey): those of
	// records, and over-deliveries. An immutable tree: snapshots share it.
	discs     discIndex
	discSites map[string]int // discs per site

	// From the pledges table, and the records that name pledges.
	pledgeSeq uint64                // the last pledge change taken in
	pledges   map[string]*pledgeAgg // by id, with the ids records name that the hub does not know
	order     []*pledgeAgg          // known pledges, by change number
	reordered bool                  // order changed since the last materialize
	touched   map[*pledgeAgg]bool   // pledges changed since the last materialize
	building  bool                  // the first build: nothing is shared yet
	entries   *pledgeArray          // order as the lists show it, as of the last materialize
	bySite    map[string][]int      // indexes in entries of each site's pledges; replaced on reorder
	byDonor   map[string][]int      // the same per donor
	tally     *siteTally            // entries summed up; shared with the last snapshot

	sites     map[string]ledger.Site // the sites table
	siteSet   map[string]bool        // every site any table but enrolments names
	siteIDs   []string               // siteSet, sorted; replaced when it grows
	recsMoved bool                   // siteRecs changed since the last materialize
	discMoved bool                   // discSites changed since the last materialize

	// Small tables, kept as rows.
	agents      []*ledger.Agent // by id
	enrols      []*ledger.Enrolment
	quarantined []ledger.Bundle
}

// pledgeAgg is what the records naming one pledge add up to.
type pledgeAgg struct {
	id         string
	p          *protocol.Pledge // nil while the hub does not know the pledge
	totals     ledger.Totals
	latest     *protocol.Record // the latest report naming it, not voided: where an over-delivery shows
	latestHome *protocol.Record // the same among the reports of the pledge's own site
	records    []siteCount      // records about it (those naming it and their corrections), by site
	discs      []siteCount      // record discrepancies naming it, by site
	pos        int              // index in order
}

type siteCount struct {
	site string
	n    int
}

func count(cs []siteCount, site string) int {
	for _, c := range cs {
		if c.site == site {
			return c.n
		}
	}
	return 0
}

// addCount adds d to site's count. Unless inPlace, the slice is copied
// first: a snapshot may share it.
func addCount(cs []siteCount, site string, d int, inPlace bool) []siteCount {
	if !inPlace {
		cs = slices.Clone(cs)
	}
	for i := range cs {
		if cs[i].site == site {
			if cs[i].n += d; cs[i].n == 0 {
				cs = slices.Delete(cs, i, i+1)
			}
			return cs
		}
	}
	return append(cs, siteCount{site, d})
}

// add takes in one report naming the pledge, as corrected (eff) and as
// stored (r), which is not voided.
func (pa *pledgeAgg) add(eff, r *protocol.Record) {
	t := &pa.totals
	switch eff.Type {
	case protocol.TypeDelivery:
		t.Received += eff.Qty
		if eff.Condition == protocol.ConditionDamaged {
			t.Damaged += eff.Qty
		}
	case protocol.TypeTraining:
		t.Received += eff.Attendees
	case protocol.TypeConfirmation:
		t.Confirmed += eff.Qty
		t.Rejected += eff.QtyRejected
		if eff.Rejection == protocol.RejectDamaged {
			t.Damaged += eff.QtyRejected
		}
	}
	if later(r, pa.latest) {
		pa.latest = r
	}
	if pa.p != nil && r.Site == pa.p.Site && later(r, pa.latestHome) {
		pa.latestHome = r
	}
}

// later reports whether r was made after l (ties broken by id).
func later(r, l *protocol.Record) bool {
	return l == nil || r.At.After(l.At) || (r.At.Equal(l.At) && r.ID > l.ID)
}

func newStatusAgg() *statusAgg {
	return &statusAgg{siteRecs: map[string]*int{}, orphans: map[string][]string{},
		discs: discIndex{iradix.New(), iradix.New(), iradix.New()}, discSites: map[string]int{}, pledges: map[string]*pledgeAgg{}, touched: map[*pledgeAgg]bool{},
		siteSet: map[string]bool{}, recsMoved: true, discMoved: true}
}

// changed reports whether any table the aggregate derives from changed.
func (a *statusAgg) changed() bool {
	for _, ch := range a.watch {
		select {
		case <-ch:
			return true
		default:
		}
	}
	return false
}

// rewatch takes the watch channels of txn's state, and reports which tables
// changed since the last.
func (a *statusAgg) rewatch(txn *memdb.Txn) (changed [watchTables]bool, err error) {
	for i, table := range watchedTables {
		it, err := txn.Get(table, ledger.IndexID)
		if err != nil {
			return changed, err
		}
		if a.watch[i] == nil {
			changed[i] = true
		} else {
			select {
			case <-a.watch[i]:
				changed[i] = true
			default:
			}
		}
		a.watch[i] = it.WatchCh()
	}
	return changed, nil
}

func (a *statusAgg) pledge(id string) *pledgeAgg {
	pa, ok := a.pledges[id]
	if !ok {
		pa = &pledgeAgg{id: id}
		a.pledges[id] = pa
	}
	return pa
}

// knowSite notes a site some table names.
func (a *statusAgg) knowSite(id string) {
	if !a.siteSet[id] {
		a.siteSet[id] = true
		a.siteIDs = nil
	}
}

// countRecord counts one record at its site.
func (a *statusAgg) countRecord(r *protocol.Record) {
	a.records++
	a.recsMoved = true
	n := a.siteRecs[r.Site]
	if n == nil {
		n = new(int)
		a.siteRecs[r.Site] = n
		a.knowSite(r.Site)
	}
	*n++
}

func (a *statusAgg) touch(pa *pledgeAgg) {
	if !a.building {
		a.touched[pa] = true
	}
}

// attribute counts one record at site as one about pledge, for the views
// of the pledge's donor.
func (a *statusAgg) attribute(pledge, site string) {
	if pledge == "" {
		return
	}
	pa := a.pledge(pledge)
	pa.records = addCount(pa.records, site, 1, a.building)
	a.touch(pa)
}

// countDiscs adds d to the discrepancy counts of the sites and pledges ds
// name.
func (a *statusAgg) countDiscs(ds []storedDisc, d int) {
	a.discMoved = a.discMoved || len(ds) > 0
	for _, x := range ds {
		addTo(a.discSites, x.Site, d)
		if x.Pledge != "" {
			pa := a.pledge(x.Pledge)
			pa.discs = addCount(pa.discs, x.Site, d, a.building)
			a.touch(pa)
		}
	}
}

// donorOf returns the donor of a pledge, if the hub knows the pledge.
func (a *statusAgg) donorOf(pledge string) string {
	if pa, ok := a.pledges[pledge]; ok && pa.p != nil {
		return pa.p.Donor
	}
	return ""
}

// stored returns ds as the discrepancy index keeps them.
func (a *statusAgg) stored(ds []Discrepancy) []storedDisc {
	out := make([]storedDisc, len(ds))
	for i, d := range ds {
		out[i] = storedDisc{d, a.donorOf(d.Pledge)}
	}
	return out
}

// loadRows reads the small tables that changed.
func (a *statusAgg) loadRows(txn *memdb.Txn, changed [watchTables]bool) error {
	if changed[watchSites] {
		sites, err := rows[ledger.Site](txn, ledger.TableSites)
		if err != nil {
			return err
		}
		a.sites = make(map[string]ledger.Site, len(sites))
		for _, s := range sites {
			a.sites[s.ID] = *s
			a.knowSite(s.ID)
		}
	}
	if changed[watchAgents] {
		agents, err := rows[ledger.Agent](txn, ledger.TableAgents)
		if err != nil {
			return err
		}
		a.agents = agents
		for _, ag := range agents {
			a.knowSite(ag.Site)
		}
	}
	if changed[watchEnrolments] {
		enrols, err := rows[ledger.Enrolment](txn, ledger.TableEnrolments)
		if err != nil {
			return err
		}
		a.enrols = enrols
	}
	if changed[watchBundles] {
		it, err := txn.Get(ledger.TableBundles, ledger.IndexID)
		if err != nil {
			return err
		}
		a.quarantined = []ledger.Bundle{}
		for obj := it.Next(); obj != nil; obj = it.Next() {
			if b := obj.(*ledger.Bundle); b.State == ledger.BundleQuarantined {
				a.quarantined = append(a.quarantined, *b)
			}
		}
	}
	return nil
}

// eachNewRecord calls fn for every record not taken in yet, in the order
// they were stored. Records are never rewritten or deleted, so the new ones
// are those stored after the ones taken in.
func (a *statusAgg) eachNewRecord(txn *memdb.Txn, fn func(r *protocol.Record) error) error {
	recs := ledger.RecordsOf(txn)
	for r, err := range recs.Since(a.taken) {
		if err != nil {
			return err
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	a.taken = recs.Len()
	return nil
}

// buildStatusAgg computes the aggregate from scratch, in one pass over the
// records.
func buildStatusAgg(txn *memdb.Txn) (*statusAgg, error) {
	a := newStatusAgg()
	a.building = true
	changed, err := a.rewatch(txn)
	if err != nil {
		return nil, err
	}
	if err := a.loadRows(txn, changed); err != nil {
		return nil, err
	}
	pit, err := txn.Get(ledger.TablePledges, ledger.IndexSeq)
	if err != nil {
		return nil, err
	}
	for obj := pit.Next(); obj != nil; obj = pit.Next() {
		p := obj.(*protocol.Pledge)
		pa := a.pledge(p.ID)
		pa.p, pa.pos = p, len(a.order)
		a.order = append(a.order, pa)
		a.pledgeSeq = p.Seq
		a.knowSite(p.Site)
	}
	a.reordered = true

	// Records with corrections: only they need ledger.Effective.
	recs := ledger.RecordsOf(txn)
	corrected := map[string]bool{}
	for _, id := range recs.Corrected() {
		corrected[id] = true
	}

	// Serial numbers are checked against other sites after the pass, and
	// only those that more than one record states: a serial only its own
	// record states is reported nowhere else. Counted by hash, saturating at
	// 2; a collision costs an exact check, never a wrong answer.
	seed := maphash.MakeSeed()
	serialCount := map[uint64]uint8{}
	type stated struct{ eff, r *protocol.Record }
	var withSerials []stated // reports with serial numbers, not voided: as corrected and as stored
	var recDiscs []storedDisc
	// take takes in a report that is not voided, as corrected (eff) and as
	// stored (r).
	take := func(eff, r *protocol.Record) {
		var p *protocol.Pledge
		if r.Pledge != "" {
			pa := a.pledge(r.Pledge)
			pa.add(eff, r)
			p = pa.p
		}
		if ds := ownDiscrepancies(nil, eff, p); len(ds) > 0 {
			sd := a.stored(ds)
			recDiscs = append(recDiscs, sd...)
			a.countDiscs(sd, 1)
		}
		if len(eff.Serials) > 0 && isReport(eff) {
			withSerials = append(withSerials, stated{eff, r})
		}
	}
	// One pass in the order records were stored, which reads each block of
	// the store once. Corrections are gathered on the way, and the reports
	// they correct taken in after it, rather than looking each up: at a hub
	// a record's corrections are usually stored far from it.
	var corrections []*protocol.Record
	targets := map[string]*protocol.Record{}   // the records corrections target, by id
	fixesOf := map[string][]*protocol.Record{} // corrections, by the id they target
	var pending []*protocol.Record             // reports with corrections
	err = a.eachNewRecord(txn, func(r *protocol.Record) error {
		a.countRecord(r)
		for _, s := range r.Serials {
			h := maphash.String(seed, s)
			serialCount[h] = min(2, serialCount[h]+1)
		}
		if corrected[r.ID] {
			targets[r.ID] = r
		}
		if isCorrection(r) {
			corrections = append(corrections, r)
			fixesOf[r.Target] = append(fixesOf[r.Target], r)
			return nil
		}
		if r.Pledge != "" {
			pa := a.pledge(r.Pledge)
			pa.records = addCount(pa.records, r.Site, 1, true)
		}
		if corrected[r.ID] {
			pending = append(pending, r)
		} else {
			take(r, r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, r := range pending {
		if eff, voided := ledger.Corrected(r, fixesOf[r.ID]); !voided {
			take(&eff, r)
		}
	}
	for _, c := range corrections {
		if t := targets[c.Target]; t == nil {
			a.orphans[c.Target] = append(a.orphans[c.Target], c.Site)
		} else {
			a.attribute(t.Pledge, c.Site)
		}
	}
	for _, w := range withSerials {
		// Serials no record but this one states need no look.
		alone := func(s string) bool {
			return serialCount[maphash.String(seed, s)] < 2 && slices.Contains(w.r.Serials, s)
		}
		elsewhere := serialLookup(recs, slices.DeleteFunc(slices.Clone(w.eff.Serials), alone), w.eff.Site)
		ds, err := serialDiscrepancies(nil, w.eff, func(s string) (string, error) {
			if alone(s) {
				return "", nil
			}
			return elsewhere(s)
		})
		if err != nil {
			return nil, err
		}
		sd := a.stored(ds)
		recDiscs = append(recDiscs, sd...)
		a.countDiscs(sd, 1)
	}
	// A record's serial discrepancies come after its others: a stable sort
	// keeps them so.
	slices.SortStableFunc(recDiscs, func(x, y storedDisc) int { return cmp.Compare(x.Record, y.Record) })
	t := a.discs.txn()
	for i := 0; i < len(recDiscs); {
		j := i + 1
		for j < len(recDiscs) && recDiscs[j].Record == recDiscs[i].Record {
			j++
		}
		for k := i; k < j; k++ {
			t.put(discOfRecord, k-i, recDiscs[k])
		}
		i = j
	}
	a.discs = t.commit()
	a.building = false
	return a, nil
}

// update takes in what changed in the ledger since the aggregate's state.
func (a *statusAgg) update(txn *memdb.Txn) error {
	changed, err := a.rewatch(txn)
	if err != nil {
		return err
	}
	if err := a.loadRows(txn, changed); err != nil {
		return err
	}
	if !changed[watchRecords] && !changed[watchPledges] {
		return nil
	}
	recs := ledger.RecordsOf(txn)
	resum := map[*pledgeAgg]bool{}         // pledges to sum again from their records
	dirty := map[string]*protocol.Record{} // reports whose discrepancies to find again
	serials := map[string]bool{}           // serial numbers whose reports to check again
	fresh := map[string]bool{}             // records new in this update

	if changed[watchPledges] {
		// A pledge issued or cancelled: whether and how its records match
		// it changes, and so do its sums.
		it, err := txn.LowerBound(ledger.TablePledges, ledger.IndexSeq, a.pledgeSeq+1)
		if err != nil {
			return err
		}
		moved := map[*pledgeAgg]bool{}
		var tail []*pledgeAgg
		for obj := it.Next(); obj != nil; obj = it.Next() {
			p := obj.(*protocol.Pledge)
			pa := a.pledge(p.ID)
			pa.p, a.pledgeSeq = p, p.Seq
			resum[pa], moved[pa] = true, true
			a.knowSite(p.Site)
			tail = append(tail, pa)
			for r, err := range recs.Naming(p.ID) {
				if err != nil {
					return err
				}
				if !isCorrection(r) {
					dirty[r.ID] = r
				}
			}
		}
		if len(tail) > 0 {
			a.order = append(slices.DeleteFunc(a.order, func(pa *pledgeAgg) bool { return moved[pa] }), tail...)
			for i, pa := range a.order {
				pa.pos = i
			}
			a.reordered = true
		}
	}

	if changed[watchRecords] {
		var news, corrections []*protocol.Record
		err := a.eachNewRecord(txn, func(r *protocol.Record) error {
			a.countRecord(r)
			fresh[r.ID] = true
			news = append(news, r)
			for _, s := range r.Serials {
				serials[s] = true
			}
			if isCorrection(r) {
				corrections = append(corrections, r)
			} else {
				dirty[r.ID] = r
				a.attribute(r.Pledge, r.Site)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, r := range news {
			sites, ok := a.orphans[r.ID]
			if !ok {
				continue
			}
			// Corrections that came before the record they correct: they
			// count for its pledge now, and the serial numbers they set
			// are its own now.
			for _, site := range sites {
				a.attribute(r.Pledge, site)
			}
			delete(a.orphans, r.ID)
			if err := fixSerials(txn, r, serials); err != nil {
				return err
			}
		}
		for _, c := range corrections {
			t, err := recs.ByID(c.Target)
			if err != nil {
				return err
			}
			if t == nil {
				a.orphans[c.Target] = append(a.orphans[c.Target], c.Site)
				continue
			}
			a.attribute(t.Pledge, c.Site)
			if fresh[t.ID] {
				continue // taken in whole below
			}
			// How t stands changes, and with it whether the serial numbers
			// it and its corrections state count.
			if err := fixSerials(txn, t, serials); err != nil {
				return err
			}
			if isCorrection(t) {
				continue // no sums change: see ledger.Effective
			}
			dirty[t.ID] = t
			if t.Pledge != "" {
				resum[a.pledge(t.Pledge)] = true
			}
		}
	}

	// Whether a serial number was reported at another site depends on every
	// record that states it.
	for r, err := range recs.WithSerials(slices.Collect(maps.Keys(serials))...) {
		if err != nil {
			return err
		}
		if r.Type == protocol.TypeAmendment {
			t, err := recs.ByID(r.Target)
			if err != nil {
				return err
			}
			if t == nil {
				continue
			}
			r = t
		}
		if !isCorrection(r) {
			dirty[r.ID] = r
		}
	}

	for pa := range resum {
		if err := a.resum(txn, pa); err != nil {
			return err
		}
	}
	replaced := map[string][2][]storedDisc{}
	for id, r := range dirty {
		eff, voided, err := recs.Effective(r)
		if err != nil {
			return err
		}
		if fresh[id] && !voided && r.Pledge != "" {
			if pa := a.pledge(r.Pledge); !resum[pa] {
				pa.add(&eff, r)
				a.touch(pa)
			}
		}
		var ds []Discrepancy
		if !voided {
			var p *protocol.Pledge
			if pa, ok := a.pledges[eff.Pledge]; ok {
				p = pa.p
			}
			ds = ownDiscrepancies(nil, &eff, p)
			if ds, err = serialDiscrepancies(ds, &eff, serialLookup(recs, eff.Serials, eff.Site)); err != nil {
				return err
			}
		}
		sd := a.stored(ds)
		if old := a.discsOf(id); !slices.Equal(old, sd) {
			a.countDiscs(old, -1)
			a.countDiscs(sd, 1)
			replaced[id] = [2][]storedDisc{old, sd}
		}
	}
	if len(replaced) > 0 {
		a.replaceDiscs(replaced)
	}
	return nil
}

// fixSerials adds to serials those that r and its corrections state.
func fixSerials(txn *memdb.Txn, r *protocol.Record, serials map[string]bool) error {
	for _, s := range r.Serials {
		serials[s] = true
	}
	for c, err := range ledger.RecordsOf(txn).Correcting(r.ID) {
		if err != nil {
			return err
		}
		for _, s := range c.Serials {
			serials[s] = true
		}
	}
	return nil
}

// resum sums a pledge again from the records that name it, as
// ledger.Records.PledgeTotals does.
func (a *statusAgg) resum(txn *memdb.Txn, pa *pledgeAgg) error {
	pa.totals, pa.latest, pa.latestHome = ledger.Totals{}, nil, nil
	recs := ledger.RecordsOf(txn)
	for r, err := range recs.Naming(pa.id) {
		if err != nil {
			return err
		}
		if isCorrection(r) {
			continue
		}
		eff, voided, err := recs.Effective(r)
		if err != nil {
			return err
		}
		if !voided {
			pa.add(&eff, r)
		}
	}
	a.touch(pa)
	return nil
}

func byRecord(a, b Discrepancy) int { return cmp.Compare(a.Record, b.Record) }

// The classes of discrepancies in the tree of the unfiltered ones, in the
// order they show for one record.
const (
	discOfRecord = 0 // found in a record
	discOver     = 1 // over-delivery of a pledge, shown against its latest record
)

// discKey is where a discrepancy sits in the tree of the unfiltered ones:
// by record, then class, then its place among the record's discrepancies.
// Record ids are ULIDs, so the tree is ordered by time too.
func discKey(record string, class byte, i int) []byte {
	k := make([]byte, 0, len(record)+4)
	return append(append(k, record...), 0, class, byte(i>>8), byte(i))
}

// discIndex holds the unfiltered discrepancies in three immutable trees,
// which snapshots share: all of them, by discKey; those found in records,
// by site and discKey, for the views of a site; and all of them by the
// donor of the pledge they name and discKey, for the views of a donor.
type discIndex struct {
	all, bySite, byDonor *iradix.Tree
}

// storedDisc is a discrepancy and the donor it is kept under ("" for none:
// no pledge, or one the hub does not know).
type storedDisc struct {
	Discrepancy
	donor string
}

type discTxn struct{ all, bySite, byDonor *iradix.Txn }

func (x discIndex) txn() discTxn {
	return discTxn{x.all.Txn(), x.bySite.Txn(), x.byDonor.Txn()}
}

func (t discTxn) commit() discIndex {
	return discIndex{t.all.CommitOnly(), t.bySite.CommitOnly(), t.byDonor.CommitOnly()}
}

// under prefixes a key with a site or donor and a NUL (which ids and names
// never hold).
func under(prefix string, k []byte) []byte {
	return append(append(append(make([]byte, 0, len(prefix)+1+len(k)), prefix...), 0), k...)
}

// put keeps d as the i-th discrepancy of its record in class.
func (t discTxn) put(class byte, i int, d storedDisc) {
	k := discKey(d.Record, class, i)
	t.all.Insert(k, d)
	if class == discOfRecord {
		t.bySite.Insert(under(d.Site, k), d.Discrepancy)
	}
	if d.donor != "" {
		t.byDonor.Insert(under(d.donor, k), d.Discrepancy)
	}
}

// del forgets what put kept.
func (t discTxn) del(class byte, i int, d storedDisc) {
	k := discKey(d.Record, class, i)
	t.all.Delete(k)
	if class == discOfRecord {
		t.bySite.Delete(under(d.Site, k))
	}
	if d.donor != "" {
		t.byDonor.Delete(under(d.donor, k))
	}
}

// discsOf returns the discrepancies found in one record.
func (a *statusAgg) discsOf(id string) []storedDisc {
	var out []storedDisc
	a.discs.all.Root().WalkPrefix(discKey(id, discOfRecord, 0)[:len(id)+2], func(_ []byte, v any) bool {
		out = append(out, v.(storedDisc))
		return false
	})
	return out
}

// replaceDiscs replaces the discrepancies found in records: byID holds
// each record's old ones and new ones.
func (a *statusAgg) replaceDiscs(byID map[string][2][]storedDisc) {
	// One by one, not by prefix: the Len of go-immutable-radix v1.3.1
	// goes wrong after some DeletePrefix calls.
	t := a.discs.txn()
	for _, ds := range byID {
		for i, d := range ds[0] {
			t.del(discOfRecord, i, d)
		}
		for i, d := range ds[1] {
			t.put(discOfRecord, i, d)
		}
	}
	a.discs = t.commit()
}

// pledgeEntry is a pledge as the lists show it. It never changes once
// made: a change makes a new one.
type pledgeEntry struct {
	PledgeStatus              // as the unfiltered status has it
	over         *Discrepancy // over-delivery, shown against the latest report naming it
	overHome     *Discrepancy // the same as the view of the pledge's site has it: against that site's latest report
	homeState    string       // the state in that view, which sees that site's discrepancies only
	records      []siteCount  // records about it, by site
}

// entry makes the pledge's entry.
func (pa *pledgeAgg) entry() *pledgeEntry {
	p, t := pa.p, pa.totals
	e := &pledgeEntry{PledgeStatus: PledgeStatus{Pledge: *p, Received: t.Received, Confirmed: t.Confirmed, Rejected: t.Rejected, Damaged: t.Damaged},
		records: pa.records}
	if d, ok := pledgeDiscrepancy(p, t, pa.latest); ok {
		e.over = &d
	}
	if d, ok := pledgeDiscrepancy(p, t, pa.latestHome); ok {
		e.overHome = &d
	}
	e.Outstanding, e.State = pledgeProgress(p, t, e.over != nil || len(pa.discs) > 0)
	_, e.homeState = pledgeProgress(p, t, e.overHome != nil || count(pa.discs, p.Site) > 0)
	return e
}

// pledgeProgress is a pledge's outstanding quantity and its state.
func pledgeProgress(p *protocol.Pledge, t ledger.Totals, disputed bool) (int64, string) {
	done := max(t.Received, t.Confirmed)
	outstanding := max(0, p.Qty-done)
	switch {
	case p.Cancelled:
		return 0, PledgeCancelled
	case disputed:
		return outstanding, PledgeDisputed
	case done >= p.Qty:
		return outstanding, PledgeFulfilled
	case done > 0:
		return outstanding, PledgePartial
	}
	return outstanding, PledgeOpen
}

// pledgeChunk is how many entries share a chunk of a pledgeArray.
const pledgeChunk = 256

// pledgeArray is an immutable array of pledge entries, in chunks: a change
// copies only the chunks it touches, and shares the rest with the array it
// changes.
type pledgeArray struct {
	chunks [][]*pledgeEntry
	n      int
}

func newPledgeArray(es []*pledgeEntry) *pledgeArray {
	a := &pledgeArray{n: len(es)}
	for i := 0; i < len(es); i += pledgeChunk {
		j := min(i+pledgeChunk, len(es))
		a.chunks = append(a.chunks, es[i:j:j])
	}
	return a
}

func (a *pledgeArray) at(i int) *pledgeEntry { return a.chunks[i/pledgeChunk][i%pledgeChunk] }

// with returns the array with the entries in set put at their indexes.
func (a *pledgeArray) with(set map[int]*pledgeEntry) *pledgeArray {
	b := &pledgeArray{chunks: slices.Clone(a.chunks), n: a.n}
	copied := map[int]bool{}
	for i, e := range set {
		c := i / pledgeChunk
		if !copied[c] {
			b.chunks[c], copied[c] = slices.Clone(b.chunks[c]), true
		}
		b.chunks[c][i%pledgeChunk] = e
	}
	return b
}

// all yields the entries in order.
func (a *pledgeArray) all(yield func(*pledgeEntry) bool) {
	for _, c := range a.chunks {
		for _, e := range c {
			if !yield(e) {
				return
			}
		}
	}
}

// siteTally sums pledges per site, donor and programme, and in all.
type siteTally struct {
	totals       Totals
	donorRows    map[[2]string]DonorStatus
	open, closed map[string]int // pledges per site
}

func newSiteTally() *siteTally {
	return &siteTally{donorRows: map[[2]string]DonorStatus{}, open: map[string]int{}, closed: map[string]int{}}
}

func (t *siteTally) clone() *siteTally {
	return &siteTally{totals: t.totals, donorRows: maps.Clone(t.donorRows), open: maps.Clone(t.open), closed: maps.Clone(t.closed)}
}

// add counts ps in the tally, or with sign -1 takes it out again.
func (t *siteTally) add(ps *PledgeStatus, sign int) {
	if ps.State == PledgeFulfilled || ps.State == PledgeCancelled {
		addTo(t.closed, ps.Site, sign)
	} else {
		addTo(t.open, ps.Site, sign)
	}
	key := [2]string{ps.Donor, ps.Programme}
	d := t.donorRows[key]
	d.Donor, d.Programme = ps.Donor, ps.Programme
	d.Pledges += sign
	if !ps.Cancelled {
		n := int64(sign)
		d.Pledged += n * ps.Qty
		d.Received += n * ps.Received
		d.Confirmed += n * ps.Confirmed
		d.Damaged += n * ps.Damaged
		d.Outstanding += n * ps.Outstanding
		t.totals.Pledged += n * ps.Qty
		t.totals.Received += n * ps.Received
		t.totals.Confirmed += n * ps.Confirmed
		t.totals.Damaged += n * ps.Damaged
		t.totals.Outstanding += n * ps.Outstanding
	}
	if ps.State == PledgeDisputed {
		d.Disputed += sign
		t.totals.Disputed += sign
	}
	if d.Pledges == 0 {
		delete(t.donorRows, key)
	} else {
		t.donorRows[key] = d
	}
}

func addTo(m map[string]int, k string, d int) {
	if m[k] += d; m[k] == 0 {
		delete(m, k)
	}
}

func (t *siteTally) donors() []DonorStatus {
	out := slices.Collect(maps.Values(t.donorRows))
	if out == nil {
		out = []DonorStatus{}
	}
	slices.SortFunc(out, func(a, b DonorStatus) int {
		return cmp.Or(cmp.Compare(a.Donor, b.Donor), cmp.Compare(a.Programme, b.Programme))
	})
	return out
}

func (t *siteTally) hasPledges(site string) bool { return t.open[site]+t.closed[site] > 0 }

// statusSnapshot is the aggregate as one state of the ledger has it. It
// never changes once made, and shares what did not change with the
// snapshot before it: making one costs what changed.
type statusSnapshot struct {
	pledges   *pledgeArray // every known pledge, by change number
	bySite    map[string][]int
	byDonor   map[string][]int
	discs     discIndex      // the unfiltered discrepancies
	tally     *siteTally     // pledges summed up, unfiltered
	donors    []DonorStatus  // from tally
	records   int            // records of every kind
	siteRecs  map[string]int // records per site
	siteDiscs map[string]int // unfiltered discrepancies per site
	siteIDs   []string       // the sites any table but enrolments names, sorted

	sites       map[string]ledger.Site
	agents      []*ledger.Agent
	enrols      []*ledger.Enrolment
	quarantined []ledger.Bundle

	// The unfiltered lists, made when first asked for.
	listsOnce  sync.Once
	pledgeList []PledgeStatus
	discList   []Discrepancy
}

// materialize makes the snapshot of the aggregate's state, sharing with
// prev what did not change.
func (a *statusAgg) materialize(prev *statusSnapshot) *statusSnapshot {
	switch {
	case a.entries == nil || a.reordered:
		es := make([]*pledgeEntry, len(a.order))
		a.tally = newSiteTally()
		t := a.discs.txn()
		if a.entries != nil {
			a.entries.all(func(e *pledgeEntry) bool {
				if e.over != nil {
					t.del(discOver, 0, storedDisc{*e.over, e.Donor})
					addTo(a.discSites, e.over.Site, -1)
				}
				return true
			})
		}
		for i, pa := range a.order {
			pa.pos = i
			es[i] = pa.entry()
			a.tally.add(&es[i].PledgeStatus, 1)
			if o := es[i].over; o != nil {
				t.put(discOver, 0, storedDisc{*o, es[i].Donor})
				addTo(a.discSites, o.Site, 1)
			}
		}
		a.discs, a.entries, a.discMoved = t.commit(), newPledgeArray(es), true
		a.bySite, a.byDonor = map[string][]int{}, map[string][]int{}
		for i, e := range es {
			a.bySite[e.Site] = append(a.bySite[e.Site], i)
			a.byDonor[e.Donor] = append(a.byDonor[e.Donor], i)
		}
	case len(a.touched) > 0:
		set := map[int]*pledgeEntry{}
		a.tally = a.tally.clone()
		t := a.discs.txn()
		for pa := range a.touched {
			if pa.p == nil {
				continue // a pledge the hub does not know is in no list
			}
			old, e := a.entries.at(pa.pos), pa.entry()
			a.tally.add(&old.PledgeStatus, -1)
			a.tally.add(&e.PledgeStatus, 1)
			if old.over != nil {
				t.del(discOver, 0, storedDisc{*old.over, old.Donor})
				addTo(a.discSites, old.over.Site, -1)
			}
			if e.over != nil {
				t.put(discOver, 0, storedDisc{*e.over, e.Donor})
				addTo(a.discSites, e.over.Site, 1)
			}
			a.discMoved = a.discMoved || old.over != nil || e.over != nil
			set[pa.pos] = e
		}
		a.discs, a.entries = t.commit(), a.entries.with(set)
	}
	a.reordered = false
	clear(a.touched)

	s := &statusSnapshot{pledges: a.entries, bySite: a.bySite, byDonor: a.byDonor, discs: a.discs, tally: a.tally, records: a.records,
		sites: a.sites, agents: a.agents, enrols: a.enrols, quarantined: a.quarantined}
	if prev != nil && prev.tally == a.tally {
		s.donors = prev.donors
	} else {
		s.donors = a.tally.donors()
	}
	if prev == nil || a.recsMoved {
		s.siteRecs = make(map[string]int, len(a.siteRecs))
		for id, n := range a.siteRecs {
			s.siteRecs[id] = *n
		}
	} else {
		s.siteRecs = prev.siteRecs
	}
	if prev == nil || a.discMoved {
		s.siteDiscs = maps.Clone(a.discSites)
	} else {
		s.siteDiscs = prev.siteDiscs
	}
	a.recsMoved, a.discMoved = false, false
	if a.siteIDs == nil {
		a.siteIDs = slices.Sorted(maps.Keys(a.siteSet))
	}
	s.siteIDs = a.siteIDs
	return s
}

// lists returns the unfiltered lists of pledges and discrepancies, making
// them at the first call. They grow with the ledger: only callers that
// show every pledge or discrepancy ask for them.
func (s *statusSnapshot) lists() ([]PledgeStatus, []Discrepancy) {
	s.listsOnce.Do(func() {
		s.pledgeList = make([]PledgeStatus, 0, s.pledges.n)
		s.pledges.all(func(e *pledgeEntry) bool {
			s.pledgeList = append(s.pledgeList, e.PledgeStatus)
			return true
		})
		s.discList = make([]Discrepancy, 0, s.discs.all.Len())
		s.discs.all.Root().Walk(func(_ []byte, v any) bool {
			s.discList = append(s.discList, v.(storedDisc).Discrepancy)
			return false
		})
	})
	return s.pledgeList, s.discList
}

// latestDiscs returns the last n unfiltered discrepancies, oldest first.
func (s *statusSnapshot) latestDiscs(n int) []Discrepancy {
	out := []Discrepancy{}
	it := s.discs.all.Root().ReverseIterator()
	for len(out) < n {
		_, v, ok := it.Previous()
		if !ok {
			break
		}
		out = append(out, v.(storedDisc).Discrepancy)
	}
	slices.Reverse(out)
	return out
}

// view is the status through filter f at now. With latest of 0 or more,
// an unfiltered view leaves out the pledges and shows only the latest
// discrepancies (see StatusSummary).
func (s *statusSnapshot) view(f StatusFilter, now time.Time, latest int) *Status {
	st := &Status{Generated: now.Truncate(time.Second)}
	syncs := syncsOf(s.agents, s.enrols, now)
	site := func(id string, records, open, closed, discs int) SiteStatus {
		ss := SiteStatus{Site: ledger.Site{ID: id}, AgentState: AgentNotEnrolled,
			Records: records, PledgesOpen: open, PledgesClosed: closed, Discrepancies: discs}
		if row, ok := s.sites[id]; ok {
			ss.Site = row
		}
		if sy := syncs[id]; sy != nil {
			ss.LastSync, ss.OldestUnsynced, ss.AgentState = sy.lastSync, sy.oldestUnsynced, sy.state
			ss.SilentDays = silentDays(sy.state, sy.lastSync, now)
		}
		return ss
	}
	agents := func(shown func(site string) bool) []AgentStatus {
		out := []AgentStatus{}
		for _, a := range s.agents {
			if !shown(a.Site) {
				continue
			}
			as := AgentStatus{ID: a.ID, Site: a.Site, State: agentState(a, now), Enrolled: a.Enrolled, LastSeen: a.LastSeen,
				OldestUnsynced: a.OldestUnsynced, Bundles: a.BundleHWM, RevokeReason: a.RevokeReason}
			as.SilentDays = silentDays(as.State, a.LastSeen, now)
			out = append(out, as)
		}
		return out
	}

	if f == (StatusFilter{}) {
		st.Totals = s.tally.totals
		st.Totals.Pledges, st.Totals.Records, st.Totals.Discrepancies = s.pledges.n, s.records, s.discs.all.Len()
		if latest < 0 {
			st.Pledges, st.Discrepancies = s.lists()
		} else {
			st.Discrepancies = s.latestDiscs(latest)
		}
		st.Donors, st.Quarantined = s.donors, s.quarantined
		ids := s.siteIDs
		for id := range syncs {
			if _, found := slices.BinarySearch(s.siteIDs, id); !found {
				// A site known only from an enrolment waiting to be used.
				if len(ids) == len(s.siteIDs) {
					ids = slices.Clone(s.siteIDs)
				}
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
		st.Sites = make([]SiteStatus, 0, len(ids))
		for _, id := range ids {
			st.Sites = append(st.Sites, site(id, s.siteRecs[id], s.tally.open[id], s.tally.closed[id], s.siteDiscs[id]))
		}
		st.Agents = agents(func(string) bool { return true })
		st.Totals.Sites = len(st.Sites)
		return st
	}

	// A site's view sees its own records only: the states of its pledges
	// and where over-deliveries show follow from them. A donor's view sees
	// the records naming its pledges, and the discrepancies of its pledges.
	var overs []Discrepancy
	records := map[string]int{}
	mine := map[string]bool{}
	if f.Donor != "" {
		// Records naming the donor's pledges, wherever the pledge is, and
		// the corrections of such records.
		for _, i := range s.byDonor[f.Donor] {
			for _, c := range s.pledges.at(i).records {
				if f.Site == "" || c.site == f.Site {
					records[c.site] += c.n
				}
			}
		}
	}
	picked := s.byDonor[f.Donor]
	if f.Site != "" {
		picked = s.bySite[f.Site]
	}
	st.Pledges = make([]PledgeStatus, 0, len(picked))
	for _, i := range picked {
		e := s.pledges.at(i)
		if (f.Site != "" && e.Site != f.Site) || (f.Donor != "" && e.Donor != f.Donor) {
			continue
		}
		ps := e.PledgeStatus
		if f.Site != "" {
			ps.State = e.homeState
			if e.overHome != nil {
				overs = append(overs, *e.overHome)
			}
		}
		st.Pledges = append(st.Pledges, ps)
		if f.Site != "" && f.Donor != "" {
			mine[ps.ID] = true
		}
	}
	// A site's view: the discrepancies found in its records, of its
	// donor's pledges if it is a donor's view too, and its own overs. A
	// donor's view: those of its pledges.
	st.Discrepancies = []Discrepancy{}
	tree, prefix := s.discs.byDonor, f.Donor
	if f.Site != "" {
		tree, prefix = s.discs.bySite, f.Site
	}
	tree.Root().WalkPrefix(under(prefix, nil), func(_ []byte, v any) bool {
		if d := v.(Discrepancy); f.Site == "" || f.Donor == "" || mine[d.Pledge] {
			st.Discrepancies = append(st.Discrepancies, d)
		}
		return false
	})
	if len(overs) > 0 {
		slices.SortFunc(overs, byRecord)
		st.Discrepancies = mergeDiscs(st.Discrepancies, overs)
	}
	if f.Donor == "" {
		records[f.Site] = s.siteRecs[f.Site]
	}

	t := newSiteTally()
	for i := range st.Pledges {
		t.add(&st.Pledges[i], 1)
	}
	discs := map[string]int{}
	for _, d := range st.Discrepancies {
		discs[d.Site]++
	}
	var ids []string
	if f.Donor == "" {
		if _, ok := s.sites[f.Site]; ok || s.siteRecs[f.Site] > 0 || t.hasPledges(f.Site) {
			ids = []string{f.Site}
		}
	} else {
		ids = slices.Collect(maps.Keys(t.open))
		for id := range t.closed {
			if t.open[id] == 0 {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
	}
	shown := map[string]bool{}
	st.Sites = make([]SiteStatus, 0, len(ids))
	for _, id := range ids {
		shown[id] = true
		st.Sites = append(st.Sites, site(id, records[id], t.open[id], t.closed[id], discs[id]))
	}
	st.Agents = agents(func(site string) bool { return shown[site] })
	agentSite := map[string]string{}
	for _, a := range s.agents {
		agentSite[a.ID] = a.Site
	}
	st.Quarantined = []ledger.Bundle{}
	for _, b := range s.quarantined {
		if site, ok := agentSite[b.From]; ok && !shown[site] {
			continue
		}
		st.Quarantined = append(st.Quarantined, b)
	}
	st.Donors = t.donors()
	st.Totals = t.totals
	for _, n := range records {
		st.Totals.Records += n
	}
	st.Totals.Sites, st.Totals.Pledges, st.Totals.Discrepancies = len(st.Sites), len(st.Pledges), len(st.Discrepancies)
	return st
}

// mergeDiscs merges two lists sorted by record; for one record, x's come
// first.
func mergeDiscs(x, y []Discrepancy) []Discrepancy {
	out := make([]Discrepancy, 0, len(x)+len(y))
	for len(x) > 0 && len(y) > 0 {
		if y[0].Record < x[0].Record {
			out, y = append(out, y[0]), y[1:]
		} else {
			out, x = append(out, x[0]), x[1:]
		}
	}
	return append(append(out, x...), y...)
}

// eachRecord calls fn for every record, or for every record of one site
// (through its agents: a record's site is its agent's), in the order they
// were stored.
func eachRecord(txn *memdb.Txn, site string, fn func(r *protocol.Record) error) error {
	recs := ledger.RecordsOf(txn)
	if site == "" {
		for r, err := range recs.All() {
			if err != nil {
				return err
			}
			if err := fn(r); err != nil {
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
	for r, err := range recs.OfAgents(agents...) {
		if err != nil {
			return err
		}
		if r.Site != site {
			continue
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}
