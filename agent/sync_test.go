package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/quic-go/quic-go"

	"fieldsync/hub"
	"fieldsync/internal/transport"
	"fieldsync/protocol"
)

// TestStatus checks the unsynced counts and bytes as records are made,
// sealed and acknowledged, and the pledge and feedback counts.
func TestStatus(t *testing.T) {
	f := newFixture(t)
	a := f.a
	jsonSize := func(r protocol.Record) int64 {
		b, err := json.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		return int64(len(b))
	}
	status := func() Status {
		t.Helper()
		st, err := a.Status()
		if err != nil {
			t.Fatal(err)
		}
		return st
	}

	st := status()
	id := a.Identity()
	if st.Agent != id.AgentID || st.Site != testSite || st.SiteName != "Site "+testSite || st.Hub != "127.0.0.1:1" ||
		st.HubFingerprint != id.HubKeyPin || st.Enrolled || st.Records != 0 || st.Unsynced != 0 || st.UnsyncedBytes != 0 ||
		!st.OldestUnsynced.IsZero() {
		t.Fatalf("fresh agent: %+v", st)
	}

	r1 := add(t, a, delivery("Switch", 1))
	r2 := add(t, a, delivery("Router", 2))
	st = status()
	if st.Records != 2 || st.Unsynced != 2 || st.UnsyncedBytes != jsonSize(r1)+jsonSize(r2) || !st.OldestUnsynced.Equal(r1.At) {
		t.Errorf("two unsealed records: %+v", st)
	}

	if _, err := a.Seal(); err != nil {
		t.Fatal(err)
	}
	size := bundles(t, a)[0].Size
	r3 := add(t, a, delivery("Cable", 3))
	st = status()
	if st.Records != 3 || st.Unsynced != 3 || st.UnsyncedBytes != size+jsonSize(r3) {
		t.Errorf("a sealed bundle and one record: %+v (bundle %d bytes)", st, size)
	}

	if err := a.markAcked(1, protocol.AckApplied, ""); err != nil {
		t.Fatal(err)
	}
	st = status()
	if st.Records != 3 || st.Unsynced != 1 || st.UnsyncedBytes != jsonSize(r3) || !st.OldestUnsynced.Equal(r3.At) {
		t.Errorf("bundle acknowledged: %+v", st)
	}

	give(t, a,
		protocol.Pledge{ID: "P-1", Seq: 1, Site: testSite, Donor: "Estonia", Kind: protocol.KindHardware, Item: "x", Qty: 2},
		protocol.Pledge{ID: "P-2", Seq: 2, Site: testSite, Donor: "Estonia", Kind: protocol.KindHardware, Item: "x", Qty: 2, Cancelled: true},
		protocol.Pledge{ID: "P-3", Seq: 3, Site: testSite, Donor: "Estonia", Kind: protocol.KindHardware, Item: "x", Qty: 1},
	)
	add(t, a, protocol.Record{Type: protocol.TypeConfirmation, Pledge: "P-3", Qty: 1})
	err := a.applyDown(&protocol.Bundle{Down: []protocol.DownItem{
		{Feedback: &protocol.Feedback{Seq: 1, Record: r1.ID, State: protocol.FeedbackDiscrepancy, Reason: "unmatched: no pledge"}},
		{Feedback: &protocol.Feedback{Seq: 2, Bundle: 1, State: protocol.FeedbackQuarantined, Reason: "test"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	st = status()
	if st.Pledges != 3 || st.PledgesOpen != 1 || st.HubNotes != 2 {
		t.Errorf("pledges %d open %d notes %d; want 3, 1, 2", st.Pledges, st.PledgesOpen, st.HubNotes)
	}
}

// TestRecordSyncOutcome checks what each sync leaves in the status.
func TestRecordSyncOutcome(t *testing.T) {
	a := newFixture(t).a
	day := time.Date(2025, 3, 4, 9, 0, 0, 0, time.UTC)
	for _, step := range []struct {
		name       string
		start      time.Time
		res        SyncResult
		err        error
		lastSync   string
		took       string
		lastError  string
		lastErrAt  string
		linkToday  int64
		budgetLeft int64 // of 1000 bytes, on day
	}{
		{"first failure", day, SyncResult{}, errors.New("reach hub 127.0.0.1:1: timeout: no recent network activity"),
			"", "", "reach hub 127.0.0.1:1: timeout: no recent network activity", "2025-03-04T09:00:00Z", 0, 1000},
		{"failure that used the link", day.Add(time.Minute), SyncResult{LinkBytes: 300}, errors.New("read hub answer: EOF"),
			"", "", "read hub answer: EOF", "2025-03-04T09:01:00Z", 300, 700},
		{"success clears the error", day.Add(2 * time.Minute), SyncResult{LinkBytes: 200, Took: 1500 * time.Millisecond}, nil,
			"2025-03-04T09:02:00Z", "1.5s", "", "", 500, 500},
		{"a later failure keeps the last success", day.Add(3 * time.Minute), SyncResult{}, errors.New("hub refused: busy (busy)"),
			"2025-03-04T09:02:00Z", "1.5s", "hub refused: busy (busy)", "2025-03-04T09:03:00Z", 500, 500},
		{"yesterday's bytes are not today's", day.Add(-10 * time.Hour), SyncResult{LinkBytes: 5000}, nil,
			"2025-03-03T23:00:00Z", "0s", "", "", 500, 500},
		{"over the budget", day.Add(4 * time.Minute), SyncResult{LinkBytes: 700}, nil,
			"2025-03-04T09:04:00Z", "0s", "", "", 1200, -200},
		{"budget spent: no sync happened", day.Add(5 * time.Minute), SyncResult{Deferred: "today's link budget is spent"}, nil,
			"2025-03-04T09:04:00Z", "0s", "", "", 1200, -200},
	} {
		t.Run(step.name, func(t *testing.T) {
			if err := a.recordSyncOutcome(step.start, step.res, step.err); err != nil {
				t.Fatal(err)
			}
			st, err := a.Status()
			if err != nil {
				t.Fatal(err)
			}
			if st.LastSync != step.lastSync || st.LastSyncTook != step.took || st.LastError != step.lastError || st.LastErrorAt != step.lastErrAt {
				t.Errorf("status: last sync %q took %q, error %q at %q; want %q %q %q %q", st.LastSync, st.LastSyncTook,
					st.LastError, st.LastErrorAt, step.lastSync, step.took, step.lastError, step.lastErrAt)
			}
			var used int64
			a.led.Read(func(txn *memdb.Txn) error {
				used, err = metaInt(txn, metaLinkBytes+"2025-03-04")
				return err
			})
			if used != step.linkToday {
				t.Errorf("link bytes today %d, want %d", used, step.linkToday)
			}
			a.now = func() time.Time { return day.Add(8 * time.Hour) }
			left, err := a.budgetLeft(1000)
			if err != nil || left != step.budgetLeft {
				t.Errorf("budget left %d, %v; want %d", left, err, step.budgetLeft)
			}
		})
	}
	for _, budget := range []int64{0, -1} {
		if left, err := a.budgetLeft(budget); err != nil || left != math.MaxInt64/2 {
			t.Errorf("budget %d: left %d, %v; want no cap", budget, left, err)
		}
	}
}

// TestSyncBudgetSpent checks that a sync with today's budget spent seals
// but does not dial.
func TestSyncBudgetSpent(t *testing.T) {
	a := newFixture(t).a
	now := time.Date(2025, 3, 4, 12, 0, 0, 0, time.UTC)
	a.now = func() time.Time { return now }
	if err := a.recordSyncOutcome(now.Add(-time.Hour), SyncResult{LinkBytes: 5000}, nil); err != nil {
		t.Fatal(err)
	}
	r := add(t, a, delivery("Switch", 1))
	res, err := a.Sync(t.Context(), SyncOptions{Budget: 4000})
	if err != nil {
		t.Fatal(err)
	}
	if res.Deferred != "today's link budget is spent; it renews at 00:00 UTC" || res.BundlesSent != 0 || res.LinkBytes != 0 {
		t.Errorf("result %+v", res)
	}
	if st, err := a.Status(); err != nil || st.Deferred != "2025-03-04T12:00:00Z "+res.Deferred || st.LastSync != "2025-03-04T11:00:00Z" {
		t.Errorf("status: deferred %q, last sync %q (%v)", st.Deferred, st.LastSync, err)
	}
	if v := view(t, a, r.ID); v.Sync != SyncSent {
		t.Errorf("record is %s, want sealed (sent)", v.Sync)
	}
}

// TestSyncUnreachable checks that a sync to a hub nobody answers for fails
// within the caller's deadline and leaves the error in the status.
func TestSyncUnreachable(t *testing.T) {
	t.Parallel()
	a := newFixture(t).a
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close() // nothing listens there now
	a.id.HubAddr = addr
	r := add(t, a, delivery("Switch", 1))

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err = a.Sync(ctx, SyncOptions{})
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("sync took %v with a 2 s deadline", took)
	}
	if err == nil || !strings.Contains(err.Error(), "reach hub "+addr) {
		t.Fatalf("got %v, want a failure to reach %s", err, addr)
	}
	oneLine(t, err)
	t.Logf("sync: %v", err)
	st, serr := a.Status()
	if serr != nil {
		t.Fatal(serr)
	}
	if st.LastError != err.Error() || st.LastErrorAt == "" || st.LastSync != "" {
		t.Errorf("status after the failure: last error %q at %q, last sync %q", st.LastError, st.LastErrorAt, st.LastSync)
	}
	if st.Enrolled {
		t.Error("forgot the enrolment secret without reaching the hub")
	}
	if v := view(t, a, r.ID); v.Sync != SyncSent {
		t.Errorf("record is %s, want sealed (sent) for the next try or a USB stick", v.Sync)
	}
}

// serve runs h's QUIC endpoint on loopback until the test ends and returns
// its address.
func serve(t testing.TB, h *hub.Hub) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- h.Serve(ctx, hub.ServeOptions{Listen: "127.0.0.1:0", Drop: t.TempDir(),
			Ready: func(q, _ net.Addr) { ready <- q }})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("hub serve: %v", err)
		}
	})
	select {
	case addr := <-ready:
		return addr.String()
	case err := <-done:
		t.Fatalf("hub serve: %v", err)
		return ""
	}
}

// TestSyncLoopback syncs with a real hub over QUIC on loopback.
func TestSyncLoopback(t *testing.T) {
	t.Parallel()
	f, ctx := loopback(t)
	a := f.a

	scan := filepath.Join(t.TempDir(), "waybill.jpg")
	if err := os.WriteFile(scan, []byte("a scan of a signed waybill"), 0o600); err != nil {
		t.Fatal(err)
	}
	r1, err := a.Add(delivery("Switch", 2), []string{scan})
	if err != nil {
		t.Fatal(err)
	}
	add(t, a, delivery("Router", 1))
	ps, err := f.hub.AddPledges([]protocol.Pledge{pledge(testSite, 3)})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("first sync", func(t *testing.T) {
		res, err := a.Sync(ctx, SyncOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.BundlesSent != 1 || res.DownApplied < 1 || res.LinkBytes <= res.BytesSent {
			t.Errorf("result %+v", res)
		}
		if a.Identity().EnrolSecret != "" {
			t.Error("the enrolment secret outlived the hub's acceptance")
		}
		if v := view(t, a, r1.ID); v.Sync != SyncSynced {
			t.Errorf("record is %s, want synced", v.Sync)
		}
		if got := outbox(t, a); len(got) != 0 {
			t.Errorf("outbox holds %v after the hub acknowledged everything", got)
		}
		if v, err := a.Pledge(ps[0].ID); err != nil || v.State != "open" {
			t.Errorf("pledge from the hub: %+v, %v", v, err)
		}
		if pending, err := a.pendingBlobs(); err != nil || len(pending) != 0 {
			t.Errorf("attachments still pending: %v, %v", pending, err)
		}
		st, _ := a.Status()
		if st.LastSync == "" || st.LastError != "" || st.Unsynced != 0 || !st.Enrolled {
			t.Errorf("status %+v", st)
		}
	})
	t.Run("nothing new", func(t *testing.T) {
		res, err := a.Sync(ctx, SyncOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.BundlesSent != 0 || res.BytesSent != 0 {
			t.Errorf("result %+v", res)
		}
	})
	t.Run("syncs at once", func(t *testing.T) {
		// The daemon syncs while a forwarded `agent sync` and `agent
		// export` run: each bundle is sealed once and reaches the hub.
		var wg sync.WaitGroup
		errs := make(chan error, 12)
		for i := range 4 {
			wg.Go(func() {
				for j := range 3 {
					if _, err := a.Add(delivery(fmt.Sprintf("item %d.%d", i, j), 1), nil); err != nil {
						errs <- err
					}
					if _, err := a.Sync(ctx, SyncOptions{}); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Go(func() {
			if _, err := a.Export(t.TempDir()); err != nil {
				errs <- err
			}
		})
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if _, err := a.Sync(ctx, SyncOptions{}); err != nil {
			t.Fatal(err)
		}
		recs, err := a.Records(false)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if r.Sync != SyncSynced || r.HubState != "" && r.HubState != protocol.FeedbackDiscrepancy {
				t.Errorf("record %d: %s, hub %s %s", r.Seq, r.Sync, r.HubState, r.HubReason)
			}
		}
		rows, err := f.hub.Rows()
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != len(recs) {
			t.Errorf("hub holds %d records, agent %d", len(rows), len(recs))
		}
	})
	t.Run("revoked", func(t *testing.T) {
		if _, err := f.hub.Revoke(a.Identity().AgentID, "laptop lost"); err != nil {
			t.Fatal(err)
		}
		_, err := a.Sync(ctx, SyncOptions{})
		if err == nil || !strings.Contains(err.Error(), "revoked") {
			t.Fatalf("got %v, want a refusal naming the revocation", err)
		}
		oneLine(t, err)
		if st, _ := a.Status(); st.LastError != err.Error() {
			t.Errorf("last error %q, want %q", st.LastError, err)
		}
	})
}

// TestConcurrentUse runs what the daemon and forwarded commands do at once
// on one agent: records, seals, exports, an import that makes the agent
// forget its enrolment secret, and reads.
func TestConcurrentUse(t *testing.T) {
	f := newFixture(t)
	a := f.a
	f.admit(t)
	if _, err := f.hub.AddPledges([]protocol.Pledge{pledge(testSite, 3)}); err != nil {
		t.Fatal(err)
	}
	down := f.down(t)

	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 3 {
		wg.Go(func() {
			for j := range 5 {
				if _, err := a.Add(delivery(fmt.Sprintf("item %d.%d", i, j), 1), nil); err != nil {
					errs <- err
				}
				if _, err := a.Seal(); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Go(func() {
		for range 3 {
			if _, err := a.Export(t.TempDir()); err != nil {
				errs <- err
			}
		}
	})
	wg.Go(func() {
		if _, err := a.Import(down); err != nil {
			errs <- err
		}
	})
	wg.Go(func() {
		for range 20 {
			if _, err := a.Status(); err != nil {
				errs <- err
			}
			if _, err := a.Records(false); err != nil {
				errs <- err
			}
			_ = a.Identity()
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, err := a.Seal(); err != nil {
		t.Fatal(err)
	}

	// The bundles chain, cover every record once, and each outbox file is
	// the bundle the ledger describes.
	bs := bundles(t, a)
	for i, b := range bs {
		if b.Seq != uint64(i+1) {
			t.Fatalf("bundle %d has seq %d", i+1, b.Seq)
		}
		if i > 0 && (b.PrevHash != bs[i-1].Hash || b.FirstSeq != bs[i-1].LastSeq+1) {
			t.Errorf("bundle %d (records %d to %d, after %.8s) does not follow bundle %d (records %d to %d, %.8s)",
				b.Seq, b.FirstSeq, b.LastSeq, b.PrevHash, bs[i-1].Seq, bs[i-1].FirstSeq, bs[i-1].LastSeq, bs[i-1].Hash)
		}
		if _, err := os.Stat(a.outboxPath(b.Seq)); err != nil {
			continue // acknowledged and removed
		}
		if ub := f.openUp(t, a.outboxPath(b.Seq)); ub.Hash != b.Hash || len(ub.Records) != b.Count {
			t.Errorf("outbox file of bundle %d holds %d records, hash %.8s; ledger: %d, %.8s", b.Seq, len(ub.Records), ub.Hash, b.Count, b.Hash)
		}
	}
	if last := bs[len(bs)-1].LastSeq; last != lastSeq(t, a) {
		t.Errorf("bundles end at record %d, records at %d", last, lastSeq(t, a))
	}
	if a.Identity().EnrolSecret != "" {
		t.Error("the import did not make the agent forget its secret")
	}
	for i, res := range f.carry(t) {
		if res.State != protocol.AckApplied {
			t.Errorf("hub: file %d, bundle %d %s: %s", i+1, res.Seq, res.State, res.Reason)
		}
	}
}

// TestSyncOneAtATime checks that a sync started while another runs waits
// for it, and gives up when its context ends.
func TestSyncOneAtATime(t *testing.T) {
	a := newFixture(t).a
	a.syncing <- struct{}{} // a sync in progress
	defer func() { <-a.syncing }()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err := a.Sync(ctx, SyncOptions{})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "wait for the sync in progress") {
		t.Fatalf("got %v, want it to give up waiting for the sync in progress", err)
	}
	if st, _ := a.Status(); st.LastError != "" {
		t.Errorf("a sync that never started recorded %q", st.LastError)
	}
}

// TestSyncStopsAtRefusal checks that a bundle the hub refuses ends the
// sync with the hub's reason, not with the error of a write the agent's
// own abort cut short, and that the refused records stay unsynced.
func TestSyncStopsAtRefusal(t *testing.T) {
	t.Parallel()
	f, ctx := loopback(t)
	a := f.a
	var first protocol.Record
	for i := range 3 {
		r := add(t, a, delivery(fmt.Sprintf("item %d", i), 1))
		if i == 0 {
			first = r
		}
		if _, err := a.Seal(); err != nil {
			t.Fatal(err)
		}
	}
	// A bundle damaged on the disk (or forged) fails the hub's checks.
	path := a.outboxPath(1)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = a.Sync(ctx, SyncOptions{})
	if err == nil || !strings.Contains(err.Error(), "hub refused bundle 1") {
		t.Fatalf("got %v, want the hub's refusal of bundle 1", err)
	}
	oneLine(t, err)
	if v := view(t, a, first.ID); v.Sync == SyncSynced {
		t.Errorf("a record of the refused bundle is %s", v.Sync)
	}
	if rows, err := f.hub.Rows(); err != nil || len(rows) != 0 {
		t.Errorf("hub holds %d records after refusing the first bundle (%v)", len(rows), err)
	}
}

// TestSyncBesideLiveSession checks what the hub does with a second
// session of an agent while the first is still talking (a copy of the
// agent's key in use elsewhere): the newcomer is refused in words, and the
// first is left alone. Replacing a silent session is TestClaim's (hub).
func TestSyncBesideLiveSession(t *testing.T) {
	t.Parallel()
	f, ctx := enrolled(t)
	a := f.a

	live, r := helloSession(t, ctx, a)
	_, err := a.Sync(ctx, SyncOptions{})
	if err == nil || !strings.Contains(err.Error(), "another session of agent "+a.Identity().AgentID+" is active from") {
		t.Fatalf("second session: %v, want a refusal naming the live one", err)
	}
	oneLine(t, err)
	// The first session goes on.
	if err := protocol.WriteMessage(live, &protocol.Done{}); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := protocol.ReadMessage(r)
		if err != nil {
			t.Fatalf("first session after the refusal: %v", err)
		}
		if _, ok := msg.(*protocol.Bye); ok {
			break
		}
	}
}

// TestHelloNamesAnotherKey checks that a hello naming a key other than the
// one the connection was made with is refused.
func TestHelloNamesAnotherKey(t *testing.T) {
	t.Parallel()
	f, ctx := loopback(t)
	a := f.a
	str, r := rawSession(t, ctx, a, a.key)
	hello, err := a.hello()
	if err != nil {
		t.Fatal(err)
	}
	other, _, _ := ed25519.GenerateKey(nil)
	hello.AgentKey = protocol.EncodePublicKey(other)
	if err := protocol.WriteMessage(str, hello); err != nil {
		t.Fatal(err)
	}
	msg, err := protocol.ReadMessage(r)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := msg.(*protocol.Error); !ok || e.Code != protocol.CodeUnauthenticated {
		t.Fatalf("hub answered %+v, want unauthenticated", msg)
	}
}

// loopback returns a fixture whose agent syncs with its hub over QUIC on
// loopback, and a context that bounds the test.
func loopback(t *testing.T) (*fixture, context.Context) {
	t.Helper()
	f := newFixture(t)
	f.a.id.HubAddr = serve(t, f.hub)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return f, ctx
}

// enrolled is loopback with the agent's first sync (its enrolment) done.
func enrolled(t *testing.T) (*fixture, context.Context) {
	t.Helper()
	f, ctx := loopback(t)
	if _, err := f.a.Sync(ctx, SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	return f, ctx
}

// helloSession opens a session of a by hand and says hello; the hub has
// answered HelloOK.
func helloSession(t *testing.T, ctx context.Context, a *Agent) (*quic.Stream, *bufio.Reader) {
	t.Helper()
	str, r := rawSession(t, ctx, a, a.key)
	hello, err := a.hello()
	if err != nil {
		t.Fatal(err)
	}
	if err := protocol.WriteMessage(str, hello); err != nil {
		t.Fatal(err)
	}
	if msg, err := protocol.ReadMessage(r); err != nil {
		t.Fatalf("hello: %v", err)
	} else if _, ok := msg.(*protocol.HelloOK); !ok {
		t.Fatalf("hello: hub answered %+v", msg)
	}
	return str, r
}

// rawSession opens a stream to a's hub with key, for tests that speak the
// protocol by hand.
func rawSession(t *testing.T, ctx context.Context, a *Agent, key ed25519.PrivateKey) (*quic.Stream, *bufio.Reader) {
	t.Helper()
	tlsConf, err := transport.ClientTLS(key, a.id.HubKeyPin, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := transport.Dial(ctx, a.id.HubAddr, tlsConf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return str, bufio.NewReader(str)
}

// TestSyncShowsTransfer checks that Status shows a sync in progress, phase
// by phase, and nothing once it has ended.
func TestSyncShowsTransfer(t *testing.T) {
	t.Parallel()
	f, ctx := loopback(t)
	a := f.a
	scan := filepath.Join(t.TempDir(), "waybill.jpg")
	if err := os.WriteFile(scan, make([]byte, 3*ChunkSize+10), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Add(delivery("Switch", 2), []string{scan}); err != nil {
		t.Fatal(err)
	}
	if st, err := a.Status(); err != nil || st.AttachmentsPending != 1 || st.AttachmentBytesPending != 3*ChunkSize+10 {
		t.Errorf("before the sync: %d attachment(s), %d bytes pending (%v)", st.AttachmentsPending, st.AttachmentBytesPending, err)
	}
	seen := map[string]*TransferStatus{}
	_, err := a.Sync(ctx, SyncOptions{Progress: func(sent, total int64) {
		st, err := a.Status()
		if err != nil || st.Transfer == nil {
			t.Errorf("status during the sync: transfer %v, %v", st.Transfer, err)
			return
		}
		seen[st.Transfer.What] = st.Transfer
		if st.Transfer.What != "attachments" {
			return // the records may go out before the hub has read the hello
		}
		// The hub shows the session from its hello on.
		hs, err := f.hub.StatusSummary(0)
		if err != nil || len(hs.Syncing) != 1 || hs.Syncing[0].Agent != a.Identity().AgentID || hs.Syncing[0].Site != testSite {
			t.Errorf("hub status during the sync: syncing %+v, %v", hs.Syncing, err)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if r := seen["records"]; r == nil || r.Total == 0 || r.Sent != r.Total || r.Since.IsZero() {
		t.Errorf("records phase: %+v", r)
	}
	if at := seen["attachments"]; at == nil || at.Total != 3*ChunkSize+10 || at.Sent != at.Total {
		t.Errorf("attachments phase: %+v", at)
	}
	if st, err := a.Status(); err != nil || st.Transfer != nil || st.AttachmentsPending != 0 || st.AttachmentBytesPending != 0 {
		t.Errorf("status after the sync: transfer %+v, %d attachment(s) pending (%v)", st.Transfer, st.AttachmentsPending, err)
	}
}

// TestRevokeEndsSession checks that revoking an agent ends its session in
// progress at once, with a code the agent turns into words.
func TestRevokeEndsSession(t *testing.T) {
	t.Parallel()
	f, ctx := enrolled(t)
	a := f.a
	_, r := helloSession(t, ctx, a)
	if _, err := f.hub.Revoke(a.Identity().AgentID, "device captured"); err != nil {
		t.Fatal(err)
	}
	_, err := protocol.ReadMessage(r)
	if err = explainHubClose(err); err == nil || !strings.Contains(err.Error(), "revoked this agent during the session") {
		t.Fatalf("session after the revocation: %v", err)
	}
}

// TestDownBundleIsNotAcknowledged checks how what the hub sends down
// travels: a hub bundle goes out after the agent's Done with Bye right
// behind it; nothing acknowledges it, and one the agent did not apply
// (lost with the connection) is sent again in the next session, because
// the agent's hello says what it holds. Once it holds it, nothing more
// goes down.
func TestDownBundleIsNotAcknowledged(t *testing.T) {
	t.Parallel()
	f, ctx := enrolled(t)
	a := f.a
	if _, err := f.hub.AddPledges([]protocol.Pledge{pledge(testSite, 4)}); err != nil {
		t.Fatal(err)
	}

	// A session by hand that takes the hub bundle and drops it.
	live, r := helloSession(t, ctx, a)
	if err := protocol.WriteMessage(live, &protocol.Done{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []protocol.MessageType{protocol.MsgDownBundle, protocol.MsgBye} {
		if msg, err := protocol.ReadMessage(r); err != nil {
			t.Fatal(err)
		} else if msg.Type() != want {
			t.Fatalf("after Done the hub sent %s, want %s", msg.Type(), want)
		}
	}
	live.Close()

	res, err := a.Sync(ctx, SyncOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.DownApplied != 1 {
		t.Errorf("the sync after a lost hub bundle applied %d hub bundles, want it again", res.DownApplied)
	}
	if ps, err := a.Pledges(false); err != nil || len(ps) != 1 {
		t.Fatalf("agent holds %d pledges after the sync (%v), want 1", len(ps), err)
	}
	if res, err := a.Sync(ctx, SyncOptions{}); err != nil || res.DownApplied != 0 {
		t.Errorf("a sync with nothing new applied %d hub bundles (%v), want none", res.DownApplied, err)
	}
}

// TestAttachmentsOfferedBeforeTheirRecords checks the hub's side of the
// attachment offer that travels behind the hello, before the bundle whose
// records name it: the hub wants it, takes its chunks once the bundle is
// applied, and refuses an attachment no record names, once, dropping the
// chunks of it already on their way without ending the session.
// (TestBlobChunksAnsweredEarly, at the hub, has one that was not offered.)
func TestAttachmentsOfferedBeforeTheirRecords(t *testing.T) {
	t.Parallel()
	f, ctx := enrolled(t)
	a := f.a
	content := bytes.Repeat([]byte("waybill scan "), 1000)
	scan := filepath.Join(t.TempDir(), "waybill.jpg")
	if err := os.WriteFile(scan, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Add(delivery("Switch", 2), []string{scan}); err != nil {
		t.Fatal(err)
	}
	if n, err := a.Seal(); err != nil || n != 1 {
		t.Fatalf("sealed %d bundles (%v), want 1", n, err)
	}
	all := bundles(t, a)
	sealed := all[len(all)-1]
	sum := sha256.Sum256(content)
	stranger := bytes.Repeat([]byte("x"), 2*1024)
	strangerSum := sha256.Sum256(stranger)

	str, r := rawSession(t, ctx, a, a.key)
	hello, err := a.hello()
	if err != nil {
		t.Fatal(err)
	}
	must := func(m protocol.Message) {
		t.Helper()
		if err := protocol.WriteMessage(str, m); err != nil {
			t.Fatal(err)
		}
	}
	next := func() protocol.Message {
		t.Helper()
		m, err := protocol.ReadMessage(r)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	must(hello)
	must(&protocol.BlobQuery{Blobs: []protocol.BlobRef{
		{Hash: hex.EncodeToString(sum[:]), Size: int64(len(content))},
		{Hash: hex.EncodeToString(strangerSum[:]), Size: int64(len(stranger))},
	}})
	if m, ok := next().(*protocol.HelloOK); !ok {
		t.Fatalf("hub answered the hello with %+v", m)
	}
	// Neither is named by an applied record yet: both are wanted, from 0.
	need, ok := next().(*protocol.BlobNeed)
	if !ok || len(need.Blobs) != 2 || need.Blobs[0].Hash != hex.EncodeToString(sum[:]) || need.Blobs[0].Offset != 0 || len(need.Refused) != 0 {
		t.Fatalf("hub answered the offer with %+v, want both attachments from 0", need)
	}
	data, err := os.ReadFile(a.outboxPath(sealed.Seq))
	if err != nil {
		t.Fatal(err)
	}
	must(&protocol.Chunk{Seq: sealed.Seq, Total: uint64(len(data)), Final: true, Data: data})
	if ack, ok := next().(*protocol.Ack); !ok || ack.State != protocol.AckApplied {
		t.Fatalf("bundle answered with %+v, want applied", ack)
	}
	// The hub's bundle (its acknowledgement and feedback) may come here.
	half := len(stranger) / 2
	must(&protocol.BlobChunk{Hash: strangerSum, Total: uint64(len(stranger)), Data: stranger[:half]})
	must(&protocol.BlobChunk{Hash: strangerSum, Offset: uint64(half), Total: uint64(len(stranger)), Final: true, Data: stranger[half:]})
	must(&protocol.BlobChunk{Hash: sum, Total: uint64(len(content)), Final: true, Data: content})
	must(&protocol.Done{})
	var acks []*protocol.BlobAck
	for {
		switch m := next().(type) {
		case *protocol.BlobAck:
			acks = append(acks, m)
		case *protocol.DownBundle:
		case *protocol.Bye:
			if len(acks) != 2 || acks[0].Hash != hex.EncodeToString(strangerSum[:]) || acks[0].State != protocol.AckRefused ||
				acks[1].Hash != hex.EncodeToString(sum[:]) || acks[1].State != protocol.AckApplied {
				t.Fatalf("attachment answers %+v, want the stranger refused once, then the scan applied", acks)
			}
			return
		default:
			t.Fatalf("hub sent %+v", m)
		}
	}
}

// TestSyncResumesAfterCut checks that a sync cut off in the middle of an
// attachment resumes it where the hub's durable part ends: the next sync
// waits for the hub's answer instead of sending from the start, as it does
// when no upload was cut off.
func TestSyncResumesAfterCut(t *testing.T) {
	t.Parallel()
	f, ctx := enrolled(t)
	a := f.a
	content := make([]byte, 4*ChunkSize+10)
	rand.Read(content)
	scan := filepath.Join(t.TempDir(), "photo.jpg")
	if err := os.WriteFile(scan, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Add(delivery("Switch", 2), []string{scan}); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(content)
	part := filepath.Join(f.hubDir, "partial", "blob-"+a.Identity().AgentID+"-"+hex.EncodeToString(sum[:])+".part")

	cctx, cut := context.WithCancel(ctx)
	_, err := a.Sync(cctx, SyncOptions{Progress: func(sent, total int64) {
		if st, _ := a.Status(); st.Transfer == nil || st.Transfer.What != "attachments" || sent < 2*ChunkSize {
			return
		}
		// Cut once the hub durably holds part of it.
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if st, err := os.Stat(part); err == nil && st.Size() >= ChunkSize {
				break
			}
		}
		cut()
	}})
	if err == nil {
		t.Fatal("the cut sync ended well")
	}
	if st, err := os.Stat(part); err != nil || st.Size() < ChunkSize {
		t.Fatalf("the hub holds no chunk of the attachment after the cut (%v)", err)
	}
	if open, err := a.uploadCutOff(); err != nil || !open {
		t.Errorf("after the cut the agent does not know an upload was cut off (%v): it would send from the start", err)
	}

	// The hub ends the cut session once it sees the connection closed.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if hs, err := f.hub.StatusSummary(0); err == nil && len(hs.Syncing) == 0 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the hub still shows the cut session: %+v (%v)", hs.Syncing, err)
		}
	}
	// The hub may take chunks still on their way after the stat, so the
	// bound is what it held then: a chunk at least.
	res, err := a.Sync(ctx, SyncOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if most := int64(len(content)) - ChunkSize; res.BytesSent > most {
		t.Errorf("the sync after the cut sent %d bytes, want at most the %d the hub lacked", res.BytesSent, most)
	}
	if open, err := a.uploadCutOff(); err != nil || open {
		t.Errorf("after a sync that ended well the agent still counts an upload cut off (%v)", err)
	}
	if s, err := a.Status(); err != nil || s.AttachmentsPending != 0 {
		t.Errorf("%d attachment(s) pending after the sync (%v)", s.AttachmentsPending, err)
	}
}

// TestSyncResumesTLSSession checks that a sync after one that ended well
// resumes the TLS session from the ticket kept in the data directory, also
// from a newly opened agent (a new `agent sync` process) and with a
// restarted hub; and that a ticket the hub cannot open costs a full
// handshake, nothing else.
func TestSyncResumesTLSSession(t *testing.T) {
	t.Parallel()
	f, ctx := loopback(t)
	a := f.a
	if res, err := a.Sync(ctx, SyncOptions{}); err != nil || res.TLSResumed {
		t.Fatalf("first sync: resumed %v, %v; want a full handshake", res.TLSResumed, err)
	}
	add(t, a, delivery("Switch", 1))
	res, err := a.Sync(ctx, SyncOptions{})
	if err != nil || !res.TLSResumed || res.BundlesSent != 1 {
		t.Fatalf("second sync: resumed %v, %d bundle(s), %v; want its bundle sent on a resumed session", res.TLSResumed, res.BundlesSent, err)
	}

	// A new process: the ticket comes from the file.
	dir := a.dir
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	add(t, b, delivery("Router", 1))
	if res, err := b.Sync(ctx, SyncOptions{}); err != nil || !res.TLSResumed || res.BundlesSent != 1 {
		t.Fatalf("sync of a reopened agent: resumed %v, %d bundle(s), %v", res.TLSResumed, res.BundlesSent, err)
	}

	// A restarted hub (a new Serve) still opens its tickets.
	b.id.HubAddr = serve(t, f.hub)
	add(t, b, delivery("Firewall", 1))
	if res, err := b.Sync(ctx, SyncOptions{}); err != nil || !res.TLSResumed || res.BundlesSent != 1 {
		t.Fatalf("sync with a restarted hub: resumed %v, %d bundle(s), %v", res.TLSResumed, res.BundlesSent, err)
	}

	// A ticket the hub cannot open: a full handshake.
	path := filepath.Join(dir, ticketFile)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var saved savedTicket
	if err := json.Unmarshal(raw, &saved); err != nil {
		t.Fatal(err)
	}
	saved.Ticket[len(saved.Ticket)/2] ^= 0xff
	raw, _ = json.Marshal(saved)
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	add(t, b, delivery("Server", 1))
	res, err = b.Sync(ctx, SyncOptions{})
	if err != nil || res.TLSResumed || res.BundlesSent != 1 {
		t.Fatalf("sync with a ticket the hub cannot open: resumed %v, %d bundle(s), %v; want the bundle sent after a full handshake", res.TLSResumed, res.BundlesSent, err)
	}
	if rows, err := f.hub.Rows(); err != nil || len(rows) != 4 {
		t.Errorf("hub holds %d records (%v), want 4", len(rows), err)
	}
}
