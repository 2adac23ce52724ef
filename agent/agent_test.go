package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"fieldsync/protocol"
)

func TestOpenNotInitialised(t *testing.T) {
	_, err := Open(t.TempDir(), Options{NoSync: true})
	if !errors.Is(err, ErrNotInitialised) {
		t.Fatalf("got %v, want ErrNotInitialised", err)
	}
	oneLine(t, err)
}

func TestInitTwice(t *testing.T) {
	h, _ := newHub(t)
	e := enrol(t, h, testSite)
	dir := t.TempDir()
	if _, err := Init(dir, e); err != nil {
		t.Fatal(err)
	}
	_, err := Init(dir, e)
	if err == nil || !strings.Contains(err.Error(), "already holds an agent") {
		t.Fatalf("second init: got %v, want a refusal", err)
	}
	for name, mode := range map[string]os.FileMode{identityFile: 0o600, keyFile: 0o600, ageKeyFile: 0o600} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Mode().Perm(); got != mode {
			t.Errorf("%s has mode %v, want %v", name, got, mode)
		}
	}
}

// TestAddRefuses checks that every record Add refuses names what is wrong,
// in one line, and changes nothing.
func TestAddRefuses(t *testing.T) {
	f := newFixture(t)
	a := f.a
	give(t, a,
		protocol.Pledge{ID: "P-1", Seq: 1, Site: testSite, Donor: "Estonia", Kind: protocol.KindHardware, Item: "FortiGate 100F", Qty: 5},
		protocol.Pledge{ID: "P-2", Seq: 2, Site: testSite, Donor: "Japan", Kind: protocol.KindHardware, Item: "Switch", Qty: 3, Cancelled: true},
	)
	d := add(t, a, delivery("Dell R650 server", 3))
	voided := add(t, a, delivery("Entered twice", 1))
	add(t, a, protocol.Record{Type: protocol.TypeVoid, Target: voided.ID, Reason: "entered twice"})
	am := add(t, a, protocol.Record{Type: protocol.TypeAmendment, Target: d.ID, Qty: 2})
	// 2 received and 1 rejected of 5: 2 are still expected on P-1.
	add(t, a, protocol.Record{Type: protocol.TypeConfirmation, Pledge: "P-1", Qty: 2, QtyRejected: 1, Rejection: protocol.RejectDamaged})

	for _, tc := range []struct {
		name  string
		rec   protocol.Record
		field string // the FieldError's field, if the record's own fields are wrong
		want  string // in the message
	}{
		{"delivery qty 0", delivery("Switch", 0), "qty", "qty: a delivery needs a quantity of at least 1"},
		{"negative qty", delivery("Switch", -2), "qty", "qty: must be between 0 and"},
		{"delivery without item", protocol.Record{Type: protocol.TypeDelivery, Qty: 1}, "item", "item:"},
		{"bad condition", protocol.Record{Type: protocol.TypeDelivery, Item: "Switch", Qty: 1, Condition: "broken"}, "condition", `condition: "broken" is not one of ok, damaged, incomplete`},
		{"bad serial", protocol.Record{Type: protocol.TypeDelivery, Item: "Switch", Qty: 1, Serials: []string{"a\nb"}}, "serial", "serial:"},
		{"training without course", protocol.Record{Type: protocol.TypeTraining, Date: "2025-03-01", Attendees: 3}, "course", "course:"},
		{"training date not a date", protocol.Record{Type: protocol.TypeTraining, Course: "OT IR", Date: "01/03/2025", Attendees: 3}, "date", `date: "01/03/2025" is not a date in the form YYYY-MM-DD`},
		{"training date not in the calendar", protocol.Record{Type: protocol.TypeTraining, Course: "OT IR", Date: "2025-02-30", Attendees: 3}, "date", "is not a calendar date"},
		{"training without date", protocol.Record{Type: protocol.TypeTraining, Course: "OT IR", Attendees: 3}, "date", "date: a training needs its date"},
		{"training without attendees", protocol.Record{Type: protocol.TypeTraining, Course: "OT IR", Date: "2025-03-01"}, "attendees", "attendees: a training needs at least 1 attendee"},
		{"unknown type", protocol.Record{Type: "donation", Item: "x", Qty: 1}, "type", `type: "donation" is not one of`},
		{"confirmation without pledge", protocol.Record{Type: protocol.TypeConfirmation, Qty: 1}, "pledge", "pledge: a confirmation names the pledge"},
		{"confirmation of unknown pledge", protocol.Record{Type: protocol.TypeConfirmation, Pledge: "P-99", Qty: 1}, "", `pledge "P-99": not found`},
		{"confirmation of cancelled pledge", protocol.Record{Type: protocol.TypeConfirmation, Pledge: "P-2", Qty: 1}, "", "pledge P-2 was cancelled by the hub"},
		{"received over expected", protocol.Record{Type: protocol.TypeConfirmation, Pledge: "P-1", Qty: 3}, "", "qty: received 3 + rejected 0 exceeds the 2 still expected on pledge P-1 (pledged 5)"},
		{"received and rejected over expected", protocol.Record{Type: protocol.TypeConfirmation, Pledge: "P-1", Qty: 2, QtyRejected: 1, Rejection: protocol.RejectShort}, "", "qty: received 2 + rejected 1 exceeds the 2 still expected"},
		{"rejection without reason", protocol.Record{Type: protocol.TypeConfirmation, Pledge: "P-1", Qty: 1, QtyRejected: 1}, "rejection", "rejection: rejected items need a reason"},
		{"unknown rejection reason", protocol.Record{Type: protocol.TypeConfirmation, Pledge: "P-1", QtyRejected: 1, Rejection: "lost"}, "rejection", `rejection: "lost" is not one of`},
		{"amendment without target", protocol.Record{Type: protocol.TypeAmendment, Qty: 1}, "target", "target: an amendment names the record"},
		{"amendment of unknown record", protocol.Record{Type: protocol.TypeAmendment, Target: "01NOPE", Qty: 1}, "", `record "01NOPE": not found`},
		{"amendment of voided record", protocol.Record{Type: protocol.TypeAmendment, Target: voided.ID, Qty: 1}, "", "record " + voided.ID + " is voided"},
		{"amendment of a correction", protocol.Record{Type: protocol.TypeAmendment, Target: am.ID, Qty: 1}, "", am.ID + " is itself a correction; amend or void the original record " + d.ID},
		{"amendment with training fields on a delivery", protocol.Record{Type: protocol.TypeAmendment, Target: d.ID, Course: "OT IR"}, "", "is a delivery; training fields do not apply"},
		{"void of voided record", protocol.Record{Type: protocol.TypeVoid, Target: voided.ID, Reason: "again"}, "", "is voided"},
		{"void of a correction", protocol.Record{Type: protocol.TypeVoid, Target: am.ID, Reason: "wrong"}, "", "is itself a correction"},
		{"void without reason", protocol.Record{Type: protocol.TypeVoid, Target: d.ID}, "reason", "reason: a void needs a reason"},
		{"void with a blank reason", protocol.Record{Type: protocol.TypeVoid, Target: d.ID, Reason: " \t"}, "reason", "reason: a void needs a reason"},
		{"void without target", protocol.Record{Type: protocol.TypeVoid, Reason: "x"}, "target", "target: a void names the record"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := lastSeq(t, a)
			_, err := a.Add(tc.rec, nil)
			if err == nil {
				t.Fatal("stored; want a refusal")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %q, want it to contain %q", err, tc.want)
			}
			oneLine(t, err)
			if tc.field != "" {
				var fe *protocol.FieldError
				if !errors.As(err, &fe) || fe.Field != tc.field {
					t.Errorf("got %#v, want a FieldError for %q", err, tc.field)
				}
			}
			if got := lastSeq(t, a); got != before {
				t.Errorf("last seq went from %d to %d: a refused record changed the ledger", before, got)
			}
		})
	}
}

// TestAddAccepts checks records at the edges of what is allowed.
func TestAddAccepts(t *testing.T) {
	f := newFixture(t)
	a := f.a
	give(t, a, protocol.Pledge{ID: "P-1", Seq: 1, Site: testSite, Donor: "Estonia", Kind: protocol.KindHardware, Item: "FortiGate 100F", Qty: 5})
	d := add(t, a, delivery("Dell R650 server", 3))
	tr := add(t, a, protocol.Record{Type: protocol.TypeTraining, Course: "OT incident response", Date: "2024-02-29", Attendees: 12})
	for _, tc := range []struct {
		name string
		rec  protocol.Record
	}{
		{"delivery naming a pledge not yet here", protocol.Record{Type: protocol.TypeDelivery, Item: "Switch", Qty: 1, Pledge: "P-77"}},
		{"delivery with every condition field", protocol.Record{Type: protocol.TypeDelivery, Item: "Switch", Qty: 2, Condition: protocol.ConditionDamaged, Serials: []string{"SN1", "SN2"}, ReceivedBy: "O. Koval"}},
		{"training amended with training fields", protocol.Record{Type: protocol.TypeAmendment, Target: tr.ID, Attendees: 14, Trainer: "I. Shevchenko"}},
		{"confirmation of part", protocol.Record{Type: protocol.TypeConfirmation, Pledge: "P-1", Qty: 2, QtyRejected: 1, Rejection: protocol.RejectWrongItem}},
		{"confirmation of exactly what is left", protocol.Record{Type: protocol.TypeConfirmation, Pledge: "P-1", Qty: 2}},
		{"void with a reason", protocol.Record{Type: protocol.TypeVoid, Target: d.ID, Reason: "entered at the wrong site"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := a.Add(tc.rec, nil); err != nil {
				t.Fatal(err)
			}
		})
	}
	// The pledge is now fully accounted for: nothing more can be confirmed.
	_, err := a.Add(protocol.Record{Type: protocol.TypeConfirmation, Pledge: "P-1", Qty: 1}, nil)
	if err == nil || !strings.Contains(err.Error(), "exceeds the 0 still expected") {
		t.Fatalf("confirmation beyond the pledge: got %v", err)
	}
}

func TestAddAssigns(t *testing.T) {
	f := newFixture(t)
	a := f.a
	at := time.Date(2025, 3, 4, 5, 6, 7, 891234567, time.FixedZone("EET", 2*3600))
	a.now = func() time.Time { return at }
	id := a.Identity()

	first := add(t, a, protocol.Record{Type: protocol.TypeDelivery, Item: "Switch", Qty: 1,
		// What the caller says about identity is replaced.
		ID: "mine", Seq: 99, Agent: "someone", Site: "elsewhere"})
	batch, err := a.AddBatch([]protocol.Record{delivery("a", 1), delivery("b", 2)}, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	last := add(t, a, delivery("c", 3))
	got := append(append([]protocol.Record{first}, batch...), last)
	seen := map[string]bool{}
	for i, r := range got {
		if _, err := ulid.ParseStrict(r.ID); err != nil {
			t.Errorf("record %d has id %q, not a ULID: %v", i+1, r.ID, err)
		}
		if seen[r.ID] {
			t.Errorf("id %s given twice", r.ID)
		}
		seen[r.ID] = true
		if r.Seq != uint64(i+1) {
			t.Errorf("record %d has seq %d, want %d", i+1, r.Seq, i+1)
		}
		if r.Agent != id.AgentID || r.Site != id.Site {
			t.Errorf("record %d is from %s at %s, want %s at %s", i+1, r.Agent, r.Site, id.AgentID, id.Site)
		}
		if want := at.UTC().Truncate(time.Millisecond); !r.At.Equal(want) || r.At.Location() != time.UTC {
			t.Errorf("record %d made at %v, want %v", i+1, r.At, want)
		}
	}
	// What Add returned is what was stored.
	if v := view(t, a, first.ID); v.Seq != 1 || v.Item != "Switch" {
		t.Errorf("stored %+v", v.Record)
	}
}

func TestAddBatch(t *testing.T) {
	give1 := func(t *testing.T, a *Agent) {
		give(t, a, protocol.Pledge{ID: "P-1", Seq: 1, Site: testSite, Donor: "Estonia", Kind: protocol.KindHardware, Item: "FortiGate", Qty: 5})
	}
	confirm := func(qty int64) protocol.Record {
		return protocol.Record{Type: protocol.TypeConfirmation, Pledge: "P-1", Qty: qty}
	}
	for _, tc := range []struct {
		name    string
		recs    []protocol.Record
		wantErr string
	}{
		{"all stored", []protocol.Record{delivery("a", 1), confirm(2), confirm(3)}, ""},
		{"one bad record stores none", []protocol.Record{delivery("a", 1), delivery("b", 0), delivery("c", 1)}, "record 2: qty:"},
		{"a later record is checked against the earlier ones", []protocol.Record{confirm(3), confirm(3)}, "record 2: qty: received 3 + rejected 0 exceeds the 2 still expected"},
		{"the last record bad", []protocol.Record{delivery("a", 1), {Type: protocol.TypeVoid, Target: "01NOPE", Reason: "x"}}, `record 2: record "01NOPE": not found`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newFixture(t).a
			give1(t, a)
			got, err := a.AddBatch(tc.recs, nil, "")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				oneLine(t, err)
				if n := lastSeq(t, a); n != 0 {
					t.Fatalf("%d records stored by a refused batch", n)
				}
				// Nothing was used up: the next record is the first.
				if r := add(t, a, delivery("after", 1)); r.Seq != 1 {
					t.Errorf("next record has seq %d, want 1", r.Seq)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.recs) || lastSeq(t, a) != uint64(len(tc.recs)) {
				t.Fatalf("stored %d (last seq %d), want %d", len(got), lastSeq(t, a), len(tc.recs))
			}
		})
	}
}

func TestAddBatchKey(t *testing.T) {
	a := newFixture(t).a
	recs := []protocol.Record{delivery("a", 1), delivery("b", 2)}
	first, err := a.AddBatch(recs, [][]string{nil, nil}, "inbox:abc")
	if err != nil {
		t.Fatal(err)
	}
	again, err := a.AddBatch(recs, [][]string{nil, nil}, "inbox:abc")
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != len(first) {
		t.Fatalf("second batch returned %d records, want %d", len(again), len(first))
	}
	for i := range first {
		if again[i].ID != first[i].ID || again[i].Seq != first[i].Seq {
			t.Errorf("record %d: second batch returned %s/%d, want the stored %s/%d", i+1, again[i].ID, again[i].Seq, first[i].ID, first[i].Seq)
		}
	}
	if n := lastSeq(t, a); n != 2 {
		t.Fatalf("last seq %d after the same batch twice, want 2", n)
	}
	// Another key, or none, stores again.
	if _, err := a.AddBatch(recs, nil, "inbox:def"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddBatch(recs, nil, ""); err != nil {
		t.Fatal(err)
	}
	if n := lastSeq(t, a); n != 6 {
		t.Fatalf("last seq %d, want 6", n)
	}
	// A refused batch does not take its key.
	bad := []protocol.Record{delivery("x", 0)}
	if _, err := a.AddBatch(bad, nil, "inbox:bad"); err == nil {
		t.Fatal("bad batch stored")
	}
	if got, err := a.AddBatch([]protocol.Record{delivery("x", 1)}, nil, "inbox:bad"); err != nil || len(got) != 1 || got[0].Seq != 7 {
		t.Fatalf("batch under a key a refused batch tried: %v, %v", got, err)
	}
}

func TestAddAttachments(t *testing.T) {
	a := newFixture(t).a
	scan := filepath.Join(t.TempDir(), "waybill.pdf")
	if err := os.WriteFile(scan, []byte("%PDF-1.4 signed waybill"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := a.Add(delivery("Switch", 1), []string{scan})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Attachments) != 1 || r.Attachments[0].Name != "waybill.pdf" || r.Attachments[0].Size != 23 {
		t.Fatalf("attachments %+v", r.Attachments)
	}
	if _, err := a.Add(delivery("Switch", 1), []string{filepath.Join(t.TempDir(), "missing.pdf")}); err == nil {
		t.Fatal("a missing attachment was accepted")
	}
}

// TestPrefix checks that amend, void and confirm take an unambiguous prefix
// of an id and store the whole id.
func TestPrefix(t *testing.T) {
	f := newFixture(t)
	a := f.a
	give(t, a,
		protocol.Pledge{ID: "P-100", Seq: 1, Site: testSite, Donor: "Estonia", Kind: protocol.KindHardware, Item: "FortiGate", Qty: 50},
		protocol.Pledge{ID: "P-20", Seq: 2, Site: testSite, Donor: "Estonia", Kind: protocol.KindHardware, Item: "Switch", Qty: 50},
		protocol.Pledge{ID: "P-200", Seq: 3, Site: testSite, Donor: "Estonia", Kind: protocol.KindHardware, Item: "Router", Qty: 50},
		protocol.Pledge{ID: "P-201", Seq: 4, Site: testSite, Donor: "Estonia", Kind: protocol.KindHardware, Item: "Router", Qty: 50},
	)
	var recs []protocol.Record
	for range 3 {
		recs = append(recs, add(t, a, delivery("Server", 10)))
	}
	target := recs[0].ID
	// The shortest prefix of target that no other id starts with, and the
	// longest prefix every id shares.
	unique, shared := target[:1], target
	for _, r := range recs[1:] {
		n := commonPrefix(target, r.ID)
		if n+1 > len(unique) {
			unique = target[:n+1]
		}
		if n < len(shared) {
			shared = target[:n]
		}
	}
	if shared == "" || len(unique) == len(target) {
		t.Fatalf("ids %v give no useful prefixes", recs)
	}

	for _, tc := range []struct {
		name    string
		rec     protocol.Record
		want    string // the stored target or pledge
		wantErr string
	}{
		{"amend by whole id", protocol.Record{Type: protocol.TypeAmendment, Target: target, Note: "a"}, target, ""},
		{"amend by unique prefix", protocol.Record{Type: protocol.TypeAmendment, Target: unique, Note: "b"}, target, ""},
		{"amend by lower-case prefix", protocol.Record{Type: protocol.TypeAmendment, Target: strings.ToLower(unique), Note: "c"}, target, ""},
		{"amend by ambiguous prefix", protocol.Record{Type: protocol.TypeAmendment, Target: shared, Note: "d"}, "", "ambiguous: several ids start with it"},
		{"amend by unknown prefix", protocol.Record{Type: protocol.TypeAmendment, Target: "7ZZZ", Note: "e"}, "", `record "7ZZZ": not found`},
		{"void by ambiguous prefix", protocol.Record{Type: protocol.TypeVoid, Target: shared, Reason: "x"}, "", "ambiguous"},
		{"confirm by unique prefix", protocol.Record{Type: protocol.TypeConfirmation, Pledge: "P-1", Qty: 1}, "P-100", ""},
		{"confirm by exact id that is also a prefix", protocol.Record{Type: protocol.TypeConfirmation, Pledge: "P-20", Qty: 1}, "P-20", ""},
		{"confirm by ambiguous prefix", protocol.Record{Type: protocol.TypeConfirmation, Pledge: "P-2", Qty: 1}, "", `pledge "P-2": ambiguous`},
		{"delivery by ambiguous pledge prefix", protocol.Record{Type: protocol.TypeDelivery, Item: "x", Qty: 1, Pledge: "P-2"}, "", "ambiguous"},
		{"delivery by unique pledge prefix", protocol.Record{Type: protocol.TypeDelivery, Item: "x", Qty: 1, Pledge: "P-1"}, "P-100", ""},
		{"delivery naming an unknown pledge keeps it", protocol.Record{Type: protocol.TypeDelivery, Item: "x", Qty: 1, Pledge: "P-9"}, "P-9", ""},
		{"void by unique prefix", protocol.Record{Type: protocol.TypeVoid, Target: unique, Reason: "entered twice"}, target, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := a.Add(tc.rec, nil)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				oneLine(t, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ref := got.Target
			if tc.rec.Target == "" {
				ref = got.Pledge
			}
			if ref != tc.want {
				t.Errorf("stored reference %q, want %q", ref, tc.want)
			}
		})
	}
	if !view(t, a, target).Voided {
		t.Error("the record voided by prefix is not voided")
	}
}

func commonPrefix(x, y string) int {
	n := 0
	for n < len(x) && n < len(y) && x[n] == y[n] {
		n++
	}
	return n
}

// TestRecords checks the effective view of records and their sync states
// as bundles are sealed and acknowledged.
func TestRecords(t *testing.T) {
	f := newFixture(t)
	a := f.a
	d := add(t, a, protocol.Record{Type: protocol.TypeDelivery, Item: "Dell R650 server", Qty: 3, Serials: []string{"S1", "S2", "S3"}})
	add(t, a, protocol.Record{Type: protocol.TypeAmendment, Target: d.ID, Qty: 2, Note: "recounted"})
	add(t, a, protocol.Record{Type: protocol.TypeAmendment, Target: d.ID, Serials: []string{"S1", "S3"}})
	v := add(t, a, delivery("Entered twice", 1))
	add(t, a, protocol.Record{Type: protocol.TypeVoid, Target: v.ID, Reason: "entered twice"})
	if _, err := a.Seal(); err != nil { // bundle 1: records 1 to 5
		t.Fatal(err)
	}
	late := add(t, a, delivery("Switch", 4))
	if _, err := a.Seal(); err != nil { // bundle 2: record 6
		t.Fatal(err)
	}
	pending := add(t, a, delivery("Router", 1)) // record 7, not sealed

	type want struct {
		sync      string
		bundle    uint64
		hubState  string
		hubReason string
	}
	check := func(t *testing.T, wants map[string]want) {
		t.Helper()
		for id, w := range wants {
			got := view(t, a, id)
			if got.Sync != w.sync || got.Bundle != w.bundle || got.HubState != w.hubState || got.HubReason != w.hubReason {
				t.Errorf("record %d: sync %q bundle %d hub %q %q; want %q %d %q %q", got.Seq,
					got.Sync, got.Bundle, got.HubState, got.HubReason, w.sync, w.bundle, w.hubState, w.hubReason)
			}
		}
	}

	t.Run("effective view", func(t *testing.T) {
		got := view(t, a, d.ID)
		if got.Qty != 2 || got.Note != "recounted" || strings.Join(got.Serials, ",") != "S1,S3" || got.Item != "Dell R650 server" || got.Voided {
			t.Errorf("amended delivery shows %+v", got.Record)
		}
		if got.Seq != d.Seq || got.ID != d.ID || got.Type != protocol.TypeDelivery {
			t.Errorf("amendment changed identity fields: %+v", got.Record)
		}
		if !view(t, a, v.ID).Voided {
			t.Error("voided delivery not shown voided")
		}
		all, err := a.Records(false)
		if err != nil {
			t.Fatal(err)
		}
		var types []string
		for _, r := range all {
			types = append(types, string(r.Type))
		}
		if got, want := strings.Join(types, ","), "delivery,amendment,amendment,delivery,void,delivery,delivery"; got != want {
			t.Errorf("records in order %s, want %s", got, want)
		}
	})
	t.Run("sealed and pending", func(t *testing.T) {
		check(t, map[string]want{d.ID: {SyncSent, 1, "", ""}, late.ID: {SyncSent, 2, "", ""}, pending.ID: {SyncPending, 0, "", ""}})
	})
	t.Run("first bundle acknowledged", func(t *testing.T) {
		if err := a.markAcked(1, protocol.AckApplied, ""); err != nil {
			t.Fatal(err)
		}
		check(t, map[string]want{d.ID: {SyncSynced, 0, "", ""}, late.ID: {SyncSent, 2, "", ""}, pending.ID: {SyncPending, 0, "", ""}})
		recs, err := a.Records(true)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 2 || recs[0].ID != late.ID || recs[1].ID != pending.ID {
			t.Errorf("pending list %v, want records 6 and 7", recs)
		}
	})
	t.Run("second bundle quarantined", func(t *testing.T) {
		if err := a.markAcked(2, protocol.AckQuarantined, "agent A-1 was revoked on 2025-03-01T00:00:00Z"); err != nil {
			t.Fatal(err)
		}
		check(t, map[string]want{
			d.ID:       {SyncSynced, 0, "", ""},
			late.ID:    {SyncSynced, 0, "quarantined", "agent A-1 was revoked on 2025-03-01T00:00:00Z"},
			pending.ID: {SyncPending, 0, "", ""},
		})
	})
	t.Run("acknowledging again changes nothing", func(t *testing.T) {
		if err := a.markAcked(2, protocol.AckDuplicate, ""); err != nil {
			t.Fatal(err)
		}
		check(t, map[string]want{late.ID: {SyncSynced, 0, "quarantined", "agent A-1 was revoked on 2025-03-01T00:00:00Z"}})
	})
	t.Run("hub feedback on a record", func(t *testing.T) {
		err := a.applyDown(&protocol.Bundle{Down: []protocol.DownItem{{Feedback: &protocol.Feedback{
			Seq: 1, Record: d.ID, Bundle: 1, State: protocol.FeedbackDiscrepancy, Reason: "short: 2 of 3 arrived",
		}}}})
		if err != nil {
			t.Fatal(err)
		}
		check(t, map[string]want{d.ID: {SyncSynced, 0, "discrepancy", "short: 2 of 3 arrived"}})
	})
}

// TestPledges checks pledge states as the site reports against them.
func TestPledges(t *testing.T) {
	a := newFixture(t).a
	p := func(id string, seq uint64, kind protocol.PledgeKind, qty int64, cancelled bool) protocol.Pledge {
		return protocol.Pledge{ID: id, Seq: seq, Site: testSite, Donor: "Estonia", Kind: kind, Item: "Item " + id, Qty: qty, Cancelled: cancelled}
	}
	give(t, a,
		p("P-1", 1, protocol.KindHardware, 5, false),
		p("P-2", 2, protocol.KindHardware, 4, false),
		p("P-3", 3, protocol.KindHardware, 2, false),
		p("P-4", 4, protocol.KindHardware, 2, true),
		p("P-5", 5, protocol.KindHardware, 3, false),
		p("P-6", 6, protocol.KindTraining, 10, false),
		p("P-7", 7, protocol.KindHardware, 2, false),
		p("P-8", 8, protocol.KindHardware, 4, false),
	)
	add(t, a, protocol.Record{Type: protocol.TypeDelivery, Item: "x", Qty: 2, Pledge: "P-2"})
	add(t, a, protocol.Record{Type: protocol.TypeConfirmation, Pledge: "P-3", Qty: 2})
	voided := add(t, a, protocol.Record{Type: protocol.TypeDelivery, Item: "x", Qty: 3, Pledge: "P-5"})
	add(t, a, protocol.Record{Type: protocol.TypeVoid, Target: voided.ID, Reason: "wrong pledge"})
	add(t, a, protocol.Record{Type: protocol.TypeTraining, Course: "OT IR", Date: "2025-03-01", Attendees: 10, Pledge: "P-6"})
	amended := add(t, a, protocol.Record{Type: protocol.TypeDelivery, Item: "x", Qty: 1, Pledge: "P-7"})
	add(t, a, protocol.Record{Type: protocol.TypeAmendment, Target: amended.ID, Qty: 2})
	add(t, a, protocol.Record{Type: protocol.TypeConfirmation, Pledge: "P-8", Qty: 2, QtyRejected: 2, Rejection: protocol.RejectDamaged})

	all, err := a.Pledges(false)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]PledgeView{}
	var order []string
	for _, v := range all {
		got[v.ID] = v
		order = append(order, v.ID)
	}
	if want := "P-1,P-2,P-3,P-4,P-5,P-6,P-7,P-8"; strings.Join(order, ",") != want {
		t.Errorf("pledges in order %s, want %s", strings.Join(order, ","), want)
	}
	for _, tc := range []struct {
		id                            string
		state                         string
		received, confirmed, rejected int64
	}{
		{"P-1", "open", 0, 0, 0},
		{"P-2", "partial", 2, 0, 0},
		{"P-3", "fulfilled", 0, 2, 0},
		{"P-4", "cancelled", 0, 0, 0},
		{"P-5", "open", 0, 0, 0}, // its only delivery was voided
		{"P-6", "fulfilled", 10, 0, 0},
		{"P-7", "fulfilled", 2, 0, 0}, // as amended
		{"P-8", "partial", 0, 2, 2},
	} {
		t.Run(tc.id, func(t *testing.T) {
			v := got[tc.id]
			if v.State != tc.state || v.Received != tc.received || v.Confirmed != tc.confirmed || v.Rejected != tc.rejected {
				t.Errorf("got %s received %d confirmed %d rejected %d; want %s %d %d %d",
					v.State, v.Received, v.Confirmed, v.Rejected, tc.state, tc.received, tc.confirmed, tc.rejected)
			}
			one, err := a.Pledge(tc.id)
			if err != nil || one.State != v.State {
				t.Errorf("Pledge(%s) = %s, %v; Pledges says %s", tc.id, one.State, err, v.State)
			}
		})
	}
	open, err := a.Pledges(true)
	if err != nil {
		t.Fatal(err)
	}
	var openIDs []string
	for _, v := range open {
		openIDs = append(openIDs, v.ID)
	}
	if want := "P-1,P-2,P-5,P-8"; strings.Join(openIDs, ",") != want {
		t.Errorf("open pledges %v, want %s", openIDs, want)
	}
	if _, err := a.Pledge("P-99"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown pledge: got %v, want ErrNotFound", err)
	}
	_, err = a.Add(protocol.Record{Type: protocol.TypeConfirmation, Pledge: "P-4", Qty: 1}, nil)
	if err == nil || !strings.Contains(err.Error(), "was cancelled by the hub") {
		t.Errorf("confirmation of a cancelled pledge: got %v", err)
	}
}

// TestPledgeIDCase checks that a pledge id typed in lower case, with
// spaces, a Cyrillic Р or another dash names the hub's pledge, known here
// yet or not.
func TestPledgeIDCase(t *testing.T) {
	a := newFixture(t).a
	give(t, a, protocol.Pledge{ID: "P-1", Seq: 1, Site: testSite, Donor: "Estonia", Kind: protocol.KindHardware, Item: "FortiGate 100F", Qty: 5})
	for _, tc := range []struct {
		name string
		rec  protocol.Record
		want string
	}{
		{"confirmation, lower case", protocol.Record{Type: protocol.TypeConfirmation, Pledge: "p-1", Qty: 1}, "P-1"},
		{"delivery, padded", protocol.Record{Type: protocol.TypeDelivery, Pledge: " p-1 ", Item: "FortiGate 100F", Qty: 1}, "P-1"},
		{"delivery, pledge not here yet", protocol.Record{Type: protocol.TypeDelivery, Pledge: "p-77", Item: "Switch", Qty: 1}, "P-77"},
		{"Cyrillic Р and an en dash", protocol.Record{Type: protocol.TypeConfirmation, Pledge: "р–1", Qty: 1}, "P-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := add(t, a, tc.rec); got.Pledge != tc.want {
				t.Errorf("stored pledge %q, want %q", got.Pledge, tc.want)
			}
		})
	}
	if v, err := a.Pledge("p-1"); err != nil || v.ID != "P-1" {
		t.Errorf("Pledge(p-1): %+v, %v", v, err)
	}
}
