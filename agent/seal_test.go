package agent

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

// TestSealChain checks that bundles chain by hash, carry consecutive record
// ranges, are written to the outbox, and that the hub takes them in order.
func TestSealChain(t *testing.T) {
	f := newFixture(t)
	a := f.a
	for _, step := range []struct {
		add  int // records added before sealing
		want int // bundles sealed
	}{{3, 1}, {0, 0}, {2, 1}, {1, 1}} {
		for i := range step.add {
			add(t, a, delivery(fmt.Sprintf("item %d", i), 1))
		}
		n, err := a.Seal()
		if err != nil {
			t.Fatal(err)
		}
		if n != step.want {
			t.Fatalf("sealed %d bundles, want %d", n, step.want)
		}
	}

	bs := bundles(t, a)
	ranges := [][2]uint64{{1, 3}, {4, 5}, {6, 6}}
	if len(bs) != len(ranges) {
		t.Fatalf("%d bundles, want %d", len(bs), len(ranges))
	}
	for i, b := range bs {
		if b.From != a.id.AgentID || b.Seq != uint64(i+1) || b.State != ledger.BundleSealed {
			t.Errorf("bundle %d: %+v", i+1, b)
		}
		if b.FirstSeq != ranges[i][0] || b.LastSeq != ranges[i][1] || b.Count != int(ranges[i][1]-ranges[i][0]+1) {
			t.Errorf("bundle %d carries records %d to %d (%d), want %d to %d", b.Seq, b.FirstSeq, b.LastSeq, b.Count, ranges[i][0], ranges[i][1])
		}
		wantPrev := ""
		if i > 0 {
			wantPrev = bs[i-1].Hash
		}
		if b.PrevHash != wantPrev {
			t.Errorf("bundle %d follows %q, want %q", b.Seq, b.PrevHash, wantPrev)
		}
		path := a.outboxPath(b.Seq)
		st, err := os.Stat(path)
		if err != nil {
			t.Fatalf("bundle %d not in the outbox: %v", b.Seq, err)
		}
		if st.Size() != b.Size {
			t.Errorf("bundle %d: file is %d bytes, ledger says %d", b.Seq, st.Size(), b.Size)
		}
		// The file is the bundle the ledger describes.
		ub := f.openUp(t, path)
		m := ub.Manifest
		if ub.Hash != b.Hash || m.Seq != b.Seq || m.PrevHash != b.PrevHash || m.FirstRecordSeq != b.FirstSeq ||
			m.LastRecordSeq != b.LastSeq || len(ub.Records) != b.Count || m.Kind != protocol.KindRecords ||
			m.From != a.id.AgentID || m.To != a.id.HubKeyPin || m.Site != testSite {
			t.Errorf("bundle %d file has manifest %+v, hash %s; ledger has %+v", b.Seq, m, ub.Hash, b)
		}
		if m.Enrol == nil || m.Enrol.Secret == "" {
			t.Errorf("bundle %d carries no enrolment proof before the hub accepted the agent", b.Seq)
		}
	}
	// The hub applies them in order: the chain holds.
	for i, res := range f.carry(t) {
		if res.State != protocol.AckApplied || res.Seq != uint64(i+1) {
			t.Errorf("hub: bundle %d %s: %s", res.Seq, res.State, res.Reason)
		}
	}
}

// TestSealSplit checks that a backlog over MaxRecordsPerBundle is sealed
// as several bundles, the first holding exactly MaxRecordsPerBundle.
func TestSealSplit(t *testing.T) {
	if testing.Short() {
		t.Skip("makes MaxRecordsPerBundle+1 records")
	}
	a := newFixture(t).a
	recs := make([]protocol.Record, MaxRecordsPerBundle+1)
	for i := range recs {
		recs[i] = delivery("Patch cable", 1)
	}
	if _, err := a.AddBatch(recs, nil, ""); err != nil {
		t.Fatal(err)
	}
	n, err := a.Seal()
	if err != nil {
		t.Fatal(err)
	}
	bs := bundles(t, a)
	if n != 2 || len(bs) != 2 {
		t.Fatalf("sealed %d bundles (%d in the ledger), want 2", n, len(bs))
	}
	if bs[0].FirstSeq != 1 || bs[0].LastSeq != MaxRecordsPerBundle || bs[0].Count != MaxRecordsPerBundle {
		t.Errorf("first bundle carries %d to %d (%d)", bs[0].FirstSeq, bs[0].LastSeq, bs[0].Count)
	}
	if bs[1].FirstSeq != MaxRecordsPerBundle+1 || bs[1].LastSeq != MaxRecordsPerBundle+1 || bs[1].Count != 1 || bs[1].PrevHash != bs[0].Hash {
		t.Errorf("second bundle %+v", bs[1])
	}
}

// TestSealAfterCrash checks that an outbox file left by a crash before its
// bundle was recorded is replaced by the bundle sealed next.
func TestSealAfterCrash(t *testing.T) {
	f := newFixture(t)
	a := f.a
	add(t, a, delivery("Switch", 1))
	if err := os.WriteFile(a.outboxPath(1), []byte("half a bundle"), 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := a.Seal(); err != nil || n != 1 {
		t.Fatalf("seal: %d, %v", n, err)
	}
	bs := bundles(t, a)
	if b := f.openUp(t, a.outboxPath(1)); b.Hash != bs[0].Hash {
		t.Errorf("outbox file has hash %s, ledger %s", b.Hash, bs[0].Hash)
	}
	if res := f.carry(t); len(res) != 1 || res[0].State != protocol.AckApplied {
		t.Errorf("hub: %+v", res)
	}
}

// TestSealNoEnrolProofOnceAdmitted checks that the enrolment secret leaves
// the agent, and its bundles, once a bundle from the hub proves the hub
// accepted it.
func TestSealNoEnrolProofOnceAdmitted(t *testing.T) {
	f := newFixture(t)
	a := f.a
	f.admit(t)
	if st, _ := a.Status(); st.Enrolled {
		t.Fatal("status says enrolled before the hub answered")
	}
	if _, err := f.hub.AddPledges([]protocol.Pledge{pledge(testSite, 4)}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Import(f.down(t)); err != nil {
		t.Fatal(err)
	}
	if s := a.Identity().EnrolSecret; s != "" {
		t.Errorf("identity still holds the secret %q", s)
	}
	data, err := os.ReadFile(filepath.Join(a.dir, identityFile))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "enrol_secret") {
		t.Errorf("identity.json still holds the secret:\n%s", data)
	}
	if st, _ := a.Status(); !st.Enrolled {
		t.Error("status does not say enrolled")
	}
	add(t, a, delivery("Switch", 1))
	if _, err := a.Seal(); err != nil {
		t.Fatal(err)
	}
	if b := f.openUp(t, a.outboxPath(2)); b.Manifest.Enrol != nil {
		t.Errorf("bundle 2 still carries an enrolment proof")
	}
	// Reopened, the agent still has no secret.
	a2 := reopen(t, a)
	if a2.Identity().EnrolSecret != "" {
		t.Error("secret back after reopening")
	}
}

// reopen closes a and opens its directory again.
func reopen(t *testing.T, a *Agent) *Agent {
	t.Helper()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	a2, err := Open(a.dir, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a2.Close() })
	return a2
}

// TestImport checks bundles the hub sends down, carried by hand.
func TestImport(t *testing.T) {
	f := newFixture(t)
	a := f.a
	f.admit(t) // bundle 1 at the hub
	add(t, a, delivery("Switch", 2))
	if _, err := a.Seal(); err != nil { // bundle 2, not at the hub
		t.Fatal(err)
	}
	ps, err := f.hub.AddPledges([]protocol.Pledge{pledge(testSite, 4), pledge(testSite, 2), pledge("UA-LV-004", 9)})
	if err != nil {
		t.Fatal(err)
	}
	first := f.down(t)

	t.Run("pledges and acknowledgement", func(t *testing.T) {
		n, err := a.Import(first)
		if err != nil {
			t.Fatal(err)
		}
		if n < 3 { // two pledges, the acknowledgement point, feedback
			t.Errorf("imported %d items, want at least 3", n)
		}
		got, err := a.Pledges(false)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].ID != ps[0].ID || got[1].ID != ps[1].ID || got[0].State != "open" {
			t.Errorf("pledges %+v, want %s and %s, open", got, ps[0].ID, ps[1].ID)
		}
		bs := bundles(t, a)
		if bs[0].State != ledger.BundleAcked || bs[1].State != ledger.BundleSealed {
			t.Errorf("bundle states %s, %s; want acked, sealed", bs[0].State, bs[1].State)
		}
		if got, want := outbox(t, a), []string{filepath.Base(a.outboxPath(2))}; !slices.Equal(got, want) {
			t.Errorf("outbox holds %v, want %v: an acknowledged bundle stayed", got, want)
		}
	})
	t.Run("same bundle twice", func(t *testing.T) {
		before, _ := a.Pledges(false)
		if _, err := a.Import(first); err != nil {
			t.Fatal(err)
		}
		after, _ := a.Pledges(false)
		if !slices.EqualFunc(before, after, func(x, y PledgeView) bool { return x == y }) {
			t.Errorf("pledges changed: %+v → %+v", before, after)
		}
	})
	t.Run("older pledge version does not overwrite a newer", func(t *testing.T) {
		if err := f.hub.CancelPledge(ps[0].ID); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Import(f.down(t)); err != nil {
			t.Fatal(err)
		}
		if v, _ := a.Pledge(ps[0].ID); v.State != "cancelled" {
			t.Fatalf("after the cancellation: %s", v.State)
		}
		if _, err := a.Import(first); err != nil { // carries the version before
			t.Fatal(err)
		}
		if v, _ := a.Pledge(ps[0].ID); v.State != "cancelled" || !v.Cancelled {
			t.Errorf("an older version undid the cancellation: %s", v.State)
		}
	})
	t.Run("bundle for another agent", func(t *testing.T) {
		other := &fixture{hubDir: f.hubDir, hub: f.hub, a: newAgent(t, enrol(t, f.hub, "UA-LV-004"))}
		other.admit(t)
		before, _ := a.Pledges(false)
		_, err := a.Import(other.down(t))
		if err == nil {
			t.Fatal("took a hub bundle for another agent")
		}
		oneLine(t, err)
		after, _ := a.Pledges(false)
		if len(after) != len(before) {
			t.Errorf("pledges went from %d to %d", len(before), len(after))
		}
	})
	t.Run("own bundle is not a hub bundle", func(t *testing.T) {
		_, err := a.Import(a.outboxPath(2))
		if err == nil {
			t.Fatal("took a records bundle as a hub bundle")
		}
		oneLine(t, err)
	})
	t.Run("missing file", func(t *testing.T) {
		_, err := a.Import(filepath.Join(t.TempDir(), "nope.age"))
		if err == nil {
			t.Fatal("no error")
		}
		oneLine(t, err)
	})
}

// TestApplyDown checks that a hub bundle applies whole or not at all.
func TestApplyDown(t *testing.T) {
	good := protocol.Pledge{ID: "P-1", Seq: 1, Site: testSite, Donor: "Estonia", Kind: protocol.KindHardware, Item: "FortiGate", Qty: 2}
	for _, tc := range []struct {
		name    string
		bad     protocol.Pledge
		wantErr string
	}{
		{"pledge for another site", protocol.Pledge{ID: "P-2", Seq: 2, Site: "UA-LV-004", Donor: "Japan", Kind: protocol.KindHardware, Item: "x", Qty: 1}, "pledge P-2 for site UA-LV-004, not this site"},
		{"invalid pledge", protocol.Pledge{ID: "P-2", Seq: 2, Site: testSite, Donor: "Japan", Kind: protocol.KindHardware, Item: "x"}, "hub bundle pledge P-2: qty:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newFixture(t).a
			g, b := good, tc.bad
			err := a.applyDown(&protocol.Bundle{Down: []protocol.DownItem{{Pledge: &g}, {Pledge: &b}, {Acked: 1}}})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
			}
			oneLine(t, err)
			if ps, _ := a.Pledges(false); len(ps) != 0 {
				t.Errorf("stored %d pledges of a refused bundle", len(ps))
			}
			if a.Identity().EnrolSecret == "" {
				t.Error("a refused bundle made the agent forget its enrolment secret")
			}
		})
	}
}

// TestExport checks what goes on a USB stick: every unacknowledged bundle
// and the attachments, in files the hub imports.
func TestExport(t *testing.T) {
	f := newFixture(t)
	a := f.a
	scan := filepath.Join(t.TempDir(), "waybill.jpg")
	if err := os.WriteFile(scan, []byte("a scan of a signed waybill"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := a.Add(delivery("Switch", 1), []string{scan})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "usb")
	files, err := a.Export(dir)
	if err != nil {
		t.Fatal(err)
	}
	id := a.Identity().AgentID
	want := []string{
		filepath.Join(dir, id+"-1.age"),
		filepath.Join(dir, id+protocol.AttachmentFileInfix+r.Attachments[0].SHA256+".age"),
	}
	if !slices.Equal(files, want) {
		t.Fatalf("exported %v, want %v", files, want)
	}
	if got := outbox(t, a); len(got) != 1 {
		t.Errorf("outbox holds %v; a bundle stays until the hub acknowledges it", got)
	}
	// Exporting to the same stick again keeps what it holds: the sealed
	// attachment is not encrypted anew (age would give other bytes).
	sealed, err := os.ReadFile(want[1])
	if err != nil {
		t.Fatal(err)
	}
	if files, err := a.Export(dir); err != nil || !slices.Equal(files, want) {
		t.Fatalf("export to the same stick: %v, %v; want %v", files, err, want)
	}
	if b, err := os.ReadFile(want[1]); err != nil || !bytes.Equal(b, sealed) {
		t.Errorf("export to the same stick sealed the attachment again (%v)", err)
	}
	// A stick pulled out too early keeps the sizes over broken bytes:
	// exporting again repairs both files.
	for _, p := range want {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		clear(b[len(b)/2:])
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if files, err := a.Export(dir); err != nil || !slices.Equal(files, want) {
		t.Fatalf("export over a damaged stick: %v, %v; want %v", files, err, want)
	}
	if b, err := os.ReadFile(want[0]); err != nil || !bytes.Equal(b, mustRead(t, a.outboxPath(1))) {
		t.Errorf("the damaged bundle on the stick was kept (%v)", err)
	}
	if b, err := os.ReadFile(want[1]); err != nil || bytes.Equal(b, sealed) || len(b) != len(sealed) {
		t.Errorf("the damaged attachment on the stick was not sealed anew (%v)", err)
	}
	for _, p := range files {
		if res, err := f.hub.ImportFile(p); err != nil || res.State != protocol.AckApplied {
			t.Errorf("hub import %s: %+v, %v", filepath.Base(p), res, err)
		}
	}
	// Unacknowledged, the bundle goes on the next stick too.
	again, err := a.Export(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(again) == 0 || filepath.Base(again[0]) != id+"-1.age" {
		t.Errorf("second export %v", again)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
