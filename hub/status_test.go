package hub

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"filippo.io/age"
	"github.com/hashicorp/go-memdb"
	"github.com/oklog/ulid/v2"

	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

// testNow is the hub's clock in tests, unless a test moves it.
var testNow = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// testHub is a hub in a temporary directory with a clock the test sets, and
// helpers that enrol agents and send records through the same code as a
// real sync: authenticate (the session's first step) and apply (what intake
// does once a bundle is verified).
type testHub struct {
	*Hub
	t *testing.T

	mu    sync.Mutex
	clock time.Time
}

// testAgent is one enrolled site agent, sending records.
type testAgent struct {
	id, site  string
	key       ed25519.PrivateKey
	secret    string
	recipient string
	seq       uint64 // last record sequence number
	bundle    uint64 // last bundle sequence number
	hash      string // hash of the last bundle
}

func newTestHub(t *testing.T) *testHub {
	t.Helper()
	dir := t.TempDir()
	if _, err := Init(dir); err != nil {
		t.Fatalf("Init: %v", err)
	}
	h, err := Open(dir, Options{NoSync: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	th := &testHub{Hub: h, t: t, clock: testNow}
	h.now = th.now
	return th
}

func (th *testHub) now() time.Time {
	th.mu.Lock()
	defer th.mu.Unlock()
	return th.clock
}

func (th *testHub) setNow(t time.Time) {
	th.mu.Lock()
	th.clock = t
	th.mu.Unlock()
}

// enrol issues an enrolment for a site without using it.
func (th *testHub) enrol(site, name, region, sector string) *protocol.Enrolment {
	th.t.Helper()
	e, err := th.Enrol(EnrolRequest{Site: site, Name: name, Region: region, Sector: sector, Addr: "127.0.0.1:4433"})
	if err != nil {
		th.t.Fatalf("Enrol %s: %v", site, err)
	}
	return e
}

// site enrols a site and its agent, which then says hello as at its first
// sync: the hub creates the agent as a session would.
func (th *testHub) site(site, name, region, sector string) *testAgent {
	th.t.Helper()
	e := th.enrol(site, name, region, sector)
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		th.t.Fatal(err)
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		th.t.Fatal(err)
	}
	a := &testAgent{id: e.AgentID, site: site, key: key, secret: e.Secret, recipient: id.Recipient().String()}
	th.hello(a, time.Time{})
	return a
}

// hello authenticates the agent as at the start of a sync session, with
// the oldest record it has not synced.
func (th *testHub) hello(a *testAgent, oldestUnsynced time.Time) {
	th.t.Helper()
	_, err := th.authenticate(&protocol.Hello{Version: protocol.Version, Agent: a.id, Site: a.site, EnrolSecret: a.secret,
		AgentRecipient: a.recipient, OldestUnsynced: oldestUnsynced}, a.key.Public().(ed25519.PublicKey))
	if err != nil {
		th.t.Fatalf("authenticate %s: %v", a.id, err)
	}
}

// pledge adds one pledge and returns its id.
func (th *testHub) pledge(site, donor, programme string, kind protocol.PledgeKind, item string, qty int64) string {
	th.t.Helper()
	ps, err := th.AddPledges([]protocol.Pledge{{Site: site, Donor: donor, Programme: programme, Kind: kind, Item: item, Qty: qty}})
	if err != nil {
		th.t.Fatalf("AddPledges: %v", err)
	}
	return ps[0].ID
}

// send applies records from a as one verified bundle, through the path
// intake takes, and returns their ids. Records get their id, sequence
// number, agent, site and time here.
func (th *testHub) send(a *testAgent, recs ...protocol.Record) []string {
	th.t.Helper()
	var ids []string
	for i := range recs {
		a.seq++
		r := &recs[i]
		r.ID, r.Seq, r.Agent, r.Site, r.At = ulid.Make().String(), a.seq, a.id, a.site, th.now()
		if err := r.Validate(); err != nil {
			th.t.Fatalf("test record %d: %v", i, err)
		}
		ids = append(ids, r.ID)
	}
	a.bundle++
	sum := sha256.Sum256(fmt.Appendf(nil, "%s/%d", a.id, a.bundle))
	b := &protocol.Bundle{
		Manifest: protocol.Manifest{Version: protocol.BundleVersion, Kind: protocol.KindRecords, From: a.id, Site: a.site, Seq: a.bundle,
			PrevHash: a.hash, Created: th.now(), Count: len(recs), FirstRecordSeq: recs[0].Seq, LastRecordSeq: recs[len(recs)-1].Seq},
		Hash:    hex.EncodeToString(sum[:]),
		Records: recs,
	}
	if _, err := th.apply(b); err != nil {
		th.t.Fatalf("apply bundle %d from %s: %v", a.bundle, a.id, err)
	}
	a.hash = b.Hash
	return ids
}

func (th *testHub) status(f StatusFilter) *Status {
	th.t.Helper()
	st, err := th.Status(f)
	if err != nil {
		th.t.Fatalf("Status(%+v): %v", f, err)
	}
	return st
}

func delivery(item string, qty int64, pledge string) protocol.Record {
	return protocol.Record{Type: protocol.TypeDelivery, Item: item, Qty: qty, Pledge: pledge, Condition: protocol.ConditionOK}
}

func confirmation(pledge string, qty, rejected int64, why protocol.RejectReason) protocol.Record {
	return protocol.Record{Type: protocol.TypeConfirmation, Pledge: pledge, Qty: qty, QtyRejected: rejected, Rejection: why,
		ReceivedBy: "I. Melnyk", Role: "chief engineer"}
}

// disc is a discrepancy as a test states it: its record by index in the
// records the setup sent.
type disc struct {
	kind, site, pledge string
	record             int
	detail             string // a part of the detail
}

func TestDiscrepancies(t *testing.T) {
	const siteA, siteB = "UA-KV-017", "UA-LV-004"
	type env struct {
		th   *testHub
		a, b *testAgent
		pa   string // a pledge of 4 firewalls at site A
		pb   string // a pledge of 2 servers at site B
	}
	tests := []struct {
		name  string
		setup func(e env) []string // returns the ids of the records sent
		want  []disc
		state string // of pledge pa, if set
	}{
		{
			name: "none when all is well",
			setup: func(e env) []string {
				return e.th.send(e.a, delivery("FortiGate 100F", 4, e.pa), confirmation(e.pa, 4, 0, ""))
			},
			state: PledgeFulfilled,
		},
		{
			name: "short at confirmation",
			setup: func(e env) []string {
				return e.th.send(e.a, confirmation(e.pa, 3, 1, protocol.RejectShort))
			},
			want:  []disc{{DiscShort, siteA, "P-1", 0, "1 rejected at confirmation: short"}},
			state: PledgeDisputed,
		},
		{
			name: "over delivery",
			setup: func(e env) []string {
				return e.th.send(e.a, delivery("FortiGate 100F", 5, e.pa))
			},
			want:  []disc{{DiscOver, siteA, "P-1", 0, "received 5 of 4 pledged"}},
			state: PledgeDisputed,
		},
		{
			name: "over delivery over several records is one discrepancy, on the latest",
			setup: func(e env) []string {
				ids := e.th.send(e.a, delivery("FortiGate 100F", 3, e.pa))
				return append(ids, e.th.send(e.a, delivery("FortiGate 100F", 3, e.pa))...)
			},
			want:  []disc{{DiscOver, siteA, "P-1", 1, "received 6 of 4 pledged"}},
			state: PledgeDisputed,
		},
		{
			name: "over confirmation",
			setup: func(e env) []string {
				return e.th.send(e.a, confirmation(e.pa, 4, 1, protocol.RejectExpired))
			},
			want: []disc{
				{DiscRejected, siteA, "P-1", 0, "1 rejected at confirmation: expired"},
				{DiscOver, siteA, "P-1", 0, "confirmed 4 + rejected 1 of 4 pledged"},
			},
			state: PledgeDisputed,
		},
		{
			name: "damaged delivery",
			setup: func(e env) []string {
				r := delivery("FortiGate 100F", 4, e.pa)
				r.Condition = protocol.ConditionDamaged
				return e.th.send(e.a, r)
			},
			want:  []disc{{DiscDamaged, siteA, "P-1", 0, `4 × "FortiGate 100F" arrived damaged`}},
			state: PledgeDisputed,
		},
		{
			name: "damaged at confirmation",
			setup: func(e env) []string {
				return e.th.send(e.a, confirmation(e.pa, 3, 1, protocol.RejectDamaged))
			},
			want:  []disc{{DiscDamaged, siteA, "P-1", 0, "1 rejected at confirmation: damaged"}},
			state: PledgeDisputed,
		},
		{
			name: "incomplete delivery",
			setup: func(e env) []string {
				r := delivery("FortiGate 100F", 4, e.pa)
				r.Condition = protocol.ConditionIncomplete
				return e.th.send(e.a, r)
			},
			want:  []disc{{DiscIncomplete, siteA, "P-1", 0, "arrived incomplete"}},
			state: PledgeDisputed,
		},
		{
			name: "rejected as the wrong item",
			setup: func(e env) []string {
				return e.th.send(e.a, confirmation(e.pa, 2, 2, protocol.RejectWrongItem))
			},
			want:  []disc{{DiscRejected, siteA, "P-1", 0, "2 rejected at confirmation: wrong-item"}},
			state: PledgeDisputed,
		},
		{
			name: "serial reported at two sites",
			setup: func(e env) []string {
				ra := delivery("FortiGate 100F", 1, e.pa)
				ra.Serials = []string{"FGT-0001"}
				rb := delivery("Dell R650", 1, e.pb)
				rb.Serials = []string{"SRV-1", "FGT-0001"}
				return append(e.th.send(e.a, ra), e.th.send(e.b, rb)...)
			},
			want: []disc{
				{DiscSerial, siteA, "P-1", 0, `serial "FGT-0001" was also reported at site UA-LV-004`},
				{DiscSerial, siteB, "P-2", 1, `serial "FGT-0001" was also reported at site UA-KV-017`},
			},
			state: PledgeDisputed,
		},
		{
			name: "serial of a voided record does not count",
			setup: func(e env) []string {
				ra := delivery("FortiGate 100F", 1, e.pa)
				ra.Serials = []string{"FGT-0001"}
				rb := delivery("Dell R650", 1, e.pb)
				rb.Serials = []string{"FGT-0001"}
				ids := append(e.th.send(e.a, ra), e.th.send(e.b, rb)...)
				return append(ids, e.th.send(e.b, protocol.Record{Type: protocol.TypeVoid, Target: ids[1], Reason: "typo"})...)
			},
			state: PledgePartial,
		},
		{
			name: "serial corrected by an amendment does not count",
			setup: func(e env) []string {
				ra := delivery("FortiGate 100F", 1, e.pa)
				ra.Serials = []string{"FGT-0001"}
				rb := delivery("Dell R650", 1, e.pb)
				rb.Serials = []string{"FGT-0001"}
				ids := append(e.th.send(e.a, ra), e.th.send(e.b, rb)...)
				return append(ids, e.th.send(e.b, protocol.Record{Type: protocol.TypeAmendment, Target: ids[1], Serials: []string{"SRV-7"}})...)
			},
			state: PledgePartial,
		},
		{
			name: "delivery matching no pledge",
			setup: func(e env) []string {
				return e.th.send(e.a, delivery("Cisco switch", 2, ""))
			},
			want:  []disc{{DiscUnmatched, siteA, "", 0, `delivery of 2 × "Cisco switch" matches no pledge`}},
			state: PledgeOpen,
		},
		{
			name: "delivery naming a pledge the hub does not know",
			setup: func(e env) []string {
				return e.th.send(e.a, delivery("Cisco switch", 2, "P-99"))
			},
			want:  []disc{{DiscUnmatched, siteA, "P-99", 0, "names pledge P-99, which the hub does not know"}},
			state: PledgeOpen,
		},
		{
			name: "confirmation of a cancelled pledge",
			setup: func(e env) []string {
				if err := e.th.CancelPledge(e.pa); err != nil {
					e.th.t.Fatal(err)
				}
				return e.th.send(e.a, confirmation(e.pa, 4, 0, ""))
			},
			want:  []disc{{DiscCancelled, siteA, "P-1", 0, "confirmation of pledge P-1, which was cancelled"}},
			state: PledgeCancelled,
		},
		{
			name: "record naming another site's pledge",
			setup: func(e env) []string {
				return e.th.send(e.a, delivery("Dell R650", 1, e.pb))
			},
			want:  []disc{{DiscWrongSite, siteA, "P-2", 0, "names pledge P-2 of site UA-LV-004"}},
			state: PledgeOpen,
		},
		{
			name: "a voided damaged delivery is no discrepancy",
			setup: func(e env) []string {
				r := delivery("FortiGate 100F", 4, e.pa)
				r.Condition = protocol.ConditionDamaged
				ids := e.th.send(e.a, r)
				return append(ids, e.th.send(e.a, protocol.Record{Type: protocol.TypeVoid, Target: ids[0], Reason: "wrong site"})...)
			},
			state: PledgeOpen,
		},
		{
			name: "an amendment to ok clears damage",
			setup: func(e env) []string {
				r := delivery("FortiGate 100F", 4, e.pa)
				r.Condition = protocol.ConditionDamaged
				ids := e.th.send(e.a, r)
				return append(ids, e.th.send(e.a, protocol.Record{Type: protocol.TypeAmendment, Target: ids[0], Condition: protocol.ConditionOK})...)
			},
			state: PledgeFulfilled,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			th := newTestHub(t)
			e := env{th: th, a: th.site(siteA, "Kyiv substation 17", "Kyiv", "energy"), b: th.site(siteB, "Lviv water 4", "Lviv", "water")}
			e.pa = th.pledge(siteA, "Estonia", "Tallinn Mechanism", protocol.KindHardware, "FortiGate 100F", 4)
			e.pb = th.pledge(siteB, "Netherlands", "Cyber Coalition", protocol.KindHardware, "Dell R650", 2)
			ids := tt.setup(e)
			st := th.status(StatusFilter{})

			var got []disc
			for _, d := range st.Discrepancies {
				got = append(got, disc{d.Kind, d.Site, d.Pledge, slices.Index(ids, d.Record), d.Detail})
			}
			if len(got) != len(tt.want) {
				t.Fatalf("discrepancies:\n got %+v\nwant %+v", got, tt.want)
			}
			for i := range got {
				g, w := got[i], tt.want[i]
				if g.kind != w.kind || g.site != w.site || g.pledge != w.pledge || g.record != w.record || !strings.Contains(g.detail, w.detail) {
					t.Errorf("discrepancy %d:\n got %+v\nwant %+v", i, g, w)
				}
			}
			if st.Totals.Discrepancies != len(tt.want) {
				t.Errorf("totals.discrepancies = %d, want %d", st.Totals.Discrepancies, len(tt.want))
			}
			perSite := map[string]int{}
			for _, w := range tt.want {
				perSite[w.site]++
			}
			for _, s := range st.Sites {
				if s.Discrepancies != perSite[s.ID] {
					t.Errorf("site %s discrepancies = %d, want %d", s.ID, s.Discrepancies, perSite[s.ID])
				}
			}
			if tt.state != "" {
				if got := pledgeState(t, st, e.pa); got != tt.state {
					t.Errorf("pledge %s state = %q, want %q", e.pa, got, tt.state)
				}
			}
		})
	}
}

func pledgeState(t *testing.T, st *Status, id string) string {
	t.Helper()
	for _, p := range st.Pledges {
		if p.ID == id {
			return p.State
		}
	}
	t.Fatalf("pledge %s not in the status", id)
	return ""
}

// TestDiscrepancyFeedback checks that a discrepancy found when a record is
// applied is kept as feedback for the agent that sent it.
func TestDiscrepancyFeedback(t *testing.T) {
	th := newTestHub(t)
	a := th.site("UA-KV-017", "Kyiv substation 17", "Kyiv", "energy")
	p := th.pledge("UA-KV-017", "Estonia", "", protocol.KindHardware, "FortiGate 100F", 4)
	ids := th.send(a, delivery("FortiGate 100F", 5, p))
	var got []string
	th.led.Read(func(txn *memdb.Txn) error {
		it, err := txn.Get(ledger.TableFeedback, ledger.IndexRecord, ids[0])
		if err != nil {
			return err
		}
		for obj := it.Next(); obj != nil; obj = it.Next() {
			f := obj.(*ledger.Feedback)
			got = append(got, f.State+": "+f.Reason)
		}
		return nil
	})
	want := []string{"discrepancy: over: received 5 of 4 pledged"}
	if !slices.Equal(got, want) {
		t.Errorf("feedback = %q, want %q", got, want)
	}
}

// seedStatus builds a small picture: two donors, four sites in each agent
// state, pledges in each pledge state.
func seedStatus(t *testing.T) (*testHub, map[string]string) {
	th := newTestHub(t)
	kv := th.site("UA-KV-017", "Kyiv substation 17", "Kyiv", "energy")
	th.setNow(testNow.Add(-5*24*time.Hour - time.Hour))
	lv := th.site("UA-LV-004", "Lviv water 4", "Lviv", "water")
	th.hello(lv, testNow.Add(-6*24*time.Hour))
	dp := th.site("UA-DP-011", "Dnipro telecom 11", "Dnipropetrovsk", "telecom")
	th.setNow(testNow)
	th.enrol("UA-OD-002", "Odesa port 2", "Odesa", "transport")
	if _, err := th.Revoke(dp.id, "laptop stolen"); err != nil {
		t.Fatal(err)
	}
	p := map[string]string{
		"fulfilled": th.pledge("UA-KV-017", "Estonia", "Tallinn Mechanism", protocol.KindHardware, "FortiGate 100F", 4),
		"partial":   th.pledge("UA-KV-017", "Estonia", "Tallinn Mechanism", protocol.KindTraining, "OT incident response", 12),
		"disputed":  th.pledge("UA-LV-004", "Netherlands", "Cyber Coalition", protocol.KindHardware, "Dell R650", 2),
		"open":      th.pledge("UA-LV-004", "Netherlands", "Cyber Coalition", protocol.KindSoftware, "EDR licence", 50),
		"cancelled": th.pledge("UA-DP-011", "Germany", "", protocol.KindSatcom, "Starlink terminal", 6),
	}
	if err := th.CancelPledge(p["cancelled"]); err != nil {
		t.Fatal(err)
	}
	th.send(kv, confirmation(p["fulfilled"], 4, 0, ""),
		protocol.Record{Type: protocol.TypeTraining, Course: "OT incident response", Date: "2026-11-20", Attendees: 7, Pledge: p["partial"]})
	th.setNow(testNow.Add(-5*24*time.Hour - time.Hour))
	th.send(lv, delivery("Dell R650", 1, p["disputed"]), confirmation(p["disputed"], 1, 1, protocol.RejectShort))
	th.setNow(testNow)
	return th, p
}

func TestStatusAggregates(t *testing.T) {
	th, p := seedStatus(t)
	st := th.status(StatusFilter{})

	for state, id := range p {
		if got := pledgeState(t, st, id); got != state {
			t.Errorf("pledge %s state = %q, want %q", id, got, state)
		}
	}
	wantTotals := Totals{Sites: 4, Pledges: 5, Records: 4, Pledged: 4 + 12 + 2 + 50, Received: 7 + 1, Confirmed: 4 + 1,
		Outstanding: 0 + 5 + 1 + 50, Disputed: 1, Discrepancies: 1}
	if st.Totals != wantTotals {
		t.Errorf("totals:\n got %+v\nwant %+v", st.Totals, wantTotals)
	}

	type siteWant struct {
		open, closed, records int
		state                 string
		silentDays            int
		lastSync, oldest      time.Time
	}
	wantSites := map[string]siteWant{
		"UA-KV-017": {open: 1, closed: 1, records: 2, state: AgentActive, lastSync: testNow},
		"UA-LV-004": {open: 2, records: 2, state: AgentSilent, silentDays: 5, lastSync: testNow.Add(-5*24*time.Hour - time.Hour), oldest: testNow.Add(-6 * 24 * time.Hour)},
		"UA-DP-011": {closed: 1, state: AgentRevoked, lastSync: testNow.Add(-5*24*time.Hour - time.Hour)},
		"UA-OD-002": {state: AgentPending},
	}
	for _, s := range st.Sites {
		w, ok := wantSites[s.ID]
		if !ok {
			t.Errorf("unexpected site %s", s.ID)
			continue
		}
		got := siteWant{s.PledgesOpen, s.PledgesClosed, s.Records, s.AgentState, s.SilentDays, s.LastSync, s.OldestUnsynced}
		if got != w {
			t.Errorf("site %s:\n got %+v\nwant %+v", s.ID, got, w)
		}
	}
	if len(st.Sites) != len(wantSites) {
		t.Errorf("%d sites, want %d", len(st.Sites), len(wantSites))
	}

	wantDonors := []DonorStatus{
		{Donor: "Estonia", Programme: "Tallinn Mechanism", Pledges: 2, Pledged: 16, Received: 7, Confirmed: 4, Outstanding: 5},
		{Donor: "Germany", Pledges: 1},
		{Donor: "Netherlands", Programme: "Cyber Coalition", Pledges: 2, Pledged: 52, Received: 1, Confirmed: 1, Outstanding: 51, Disputed: 1},
	}
	if !slices.Equal(st.Donors, wantDonors) {
		t.Errorf("donors:\n got %+v\nwant %+v", st.Donors, wantDonors)
	}
	agentStates := map[string]string{}
	for _, a := range st.Agents {
		agentStates[a.Site] = a.State
	}
	if want := map[string]string{"UA-KV-017": AgentActive, "UA-LV-004": AgentSilent, "UA-DP-011": AgentRevoked}; !mapsEqual(agentStates, want) {
		t.Errorf("agent states = %v, want %v", agentStates, want)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestStatusFilters(t *testing.T) {
	th, _ := seedStatus(t)
	tests := []struct {
		filter        StatusFilter
		sites         []string
		donors        []string
		pledges       int
		records       int
		discrepancies int
		agents        int
	}{
		{StatusFilter{Site: "UA-KV-017"}, []string{"UA-KV-017"}, []string{"Estonia"}, 2, 2, 0, 1},
		{StatusFilter{Site: "UA-LV-004"}, []string{"UA-LV-004"}, []string{"Netherlands"}, 2, 2, 1, 1},
		{StatusFilter{Site: "UA-NOPE"}, nil, nil, 0, 0, 0, 0},
		{StatusFilter{Donor: "Estonia"}, []string{"UA-KV-017"}, []string{"Estonia"}, 2, 2, 0, 1},
		{StatusFilter{Donor: "Netherlands"}, []string{"UA-LV-004"}, []string{"Netherlands"}, 2, 2, 1, 1},
		{StatusFilter{Site: "UA-KV-017", Donor: "Netherlands"}, nil, nil, 0, 0, 0, 0},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%+v", tt.filter), func(t *testing.T) {
			st := th.status(tt.filter)
			var sites, donors []string
			for _, s := range st.Sites {
				sites = append(sites, s.ID)
			}
			for _, d := range st.Donors {
				donors = append(donors, d.Donor)
			}
			if !slices.Equal(sites, tt.sites) || !slices.Equal(donors, tt.donors) {
				t.Errorf("sites %v donors %v, want %v %v", sites, donors, tt.sites, tt.donors)
			}
			if len(st.Pledges) != tt.pledges || st.Totals.Records != tt.records || len(st.Discrepancies) != tt.discrepancies || len(st.Agents) != tt.agents {
				t.Errorf("pledges %d records %d discrepancies %d agents %d, want %d %d %d %d",
					len(st.Pledges), st.Totals.Records, len(st.Discrepancies), len(st.Agents), tt.pledges, tt.records, tt.discrepancies, tt.agents)
			}
		})
	}
}

// TestExport checks the exports against the contract: CSV in UTF-8 with
// ISO 8601 dates, stable ids and one row per record; HXL the same with a
// row of hashtags under the header.
func TestExport(t *testing.T) {
	th := newTestHub(t)
	a := th.site("UA-KV-017", "Київська підстанція 17", "Київ", "energy")
	fw := th.pledge("UA-KV-017", "Estonia", "Tallinn Mechanism", protocol.KindHardware, "FortiGate 100F", 4)
	tr := th.pledge("UA-KV-017", "Estonia", "Tallinn Mechanism", protocol.KindTraining, "OT incident response", 12)
	d := delivery("FortiGate 100F", 4, fw)
	d.Serials, d.Condition, d.Note = []string{"FGT-1", "FGT-2"}, protocol.ConditionDamaged, "ящик пошкоджено,\n\"дуже\""
	ids := th.send(a, d, protocol.Record{Type: protocol.TypeTraining, Course: "OT incident response", Date: "2026-11-20", Attendees: 12, Provider: "CERT-EE", Pledge: tr})
	ids = append(ids, th.send(a, protocol.Record{Type: protocol.TypeVoid, Target: ids[0], Reason: "recorded twice"})...)

	export := func(format string) []byte {
		var buf bytes.Buffer
		rows, err := th.Rows()
		if err == nil {
			err = th.WriteExport(&buf, format, rows)
		}
		if err != nil {
			t.Fatalf("export %s: %v", format, err)
		}
		return buf.Bytes()
	}
	hxl := export("hxl")
	if !bytes.Equal(hxl, export("hxl")) {
		t.Error("two exports of the same state differ")
	}
	if !utf8.Valid(hxl) || !bytes.Contains(hxl, []byte("Київська підстанція 17")) {
		t.Error("the export is not UTF-8 with the site's name as given")
	}
	table, err := csv.NewReader(bytes.NewReader(hxl)).ReadAll()
	if err != nil {
		t.Fatalf("the HXL export is not CSV: %v", err)
	}
	if len(table) != 2+len(ids) {
		t.Fatalf("%d rows, want a header, a hashtag row and %d records", len(table), len(ids))
	}
	col := map[string]int{}
	for i, tag := range table[1] {
		col[tag] = i
	}
	for _, tag := range []string{"#org+funding", "#activity+prog", "#item+name", "#item+code", "#adm1+name", "#sector",
		"#status", "#date+occurred", "#reached", "#meta+id"} {
		if _, ok := col[tag]; !ok {
			t.Errorf("no %s column in the hashtag row %q", tag, table[1])
		}
	}
	if table[0][col["#meta+id"]] != "id" {
		t.Errorf("the header row is %q", table[0])
	}
	get := func(row int, tag string) string { return table[2+row][col[tag]] }
	for i, id := range ids {
		if got := get(i, "#meta+id"); got != id {
			t.Errorf("row %d id %q, want %q", i, got, id)
		}
		if _, err := time.Parse(time.DateOnly, get(i, "#date+occurred")); err != nil {
			t.Errorf("row %d: #date+occurred %q is not an ISO 8601 date", i, get(i, "#date+occurred"))
		}
		if _, err := time.Parse(time.RFC3339, get(i, "#date+reported")); err != nil {
			t.Errorf("row %d: #date+reported %q is not an ISO 8601 time", i, get(i, "#date+reported"))
		}
	}
	want := []map[string]string{
		{"#activity+type": "delivery", "#org+funding": "Estonia", "#activity+prog": "Tallinn Mechanism", "#item+name": "FortiGate 100F",
			"#item+num": "4", "#item+code": "FGT-1;FGT-2", "#status+condition": "damaged", "#status": "voided",
			"#adm1+name": "Київ", "#sector": "energy", "#loc+code": "UA-KV-017", "#date+occurred": "2026-11-23",
			"#description": "ящик пошкоджено,\n\"дуже\""},
		{"#activity+type": "training", "#item+name": "OT incident response", "#reached": "12", "#date+occurred": "2026-11-20",
			"#org+impl": "CERT-EE", "#activity+code": tr, "#status": "active"},
		{"#activity+type": "void", "#meta+corrects": ids[0], "#status": "correction", "#description": "recorded twice"},
	}
	for i, w := range want {
		for tag, v := range w {
			if got := get(i, tag); got != v {
				t.Errorf("row %d %s = %q, want %q", i, tag, got, v)
			}
		}
	}

	csvOut := export("csv")
	if !bytes.HasPrefix(hxl, csvOut[:bytes.IndexByte(csvOut, '\n')+1]) || bytes.Contains(csvOut, []byte("#meta+id")) {
		t.Error("the CSV export should be the HXL one without the hashtag row")
	}
	if err := th.WriteExport(io.Discard, "xlsx", nil); err == nil || !strings.Contains(err.Error(), "use csv, json or hxl") {
		t.Errorf("export xlsx: %v", err)
	}
}
