package ledger

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-memdb"

	"fieldsync/protocol"
)

func testRecord(agent string, seq uint64) *protocol.Record {
	return &protocol.Record{
		ID: fmt.Sprintf("%s-R%05d", agent, seq), Seq: seq, Agent: agent, Site: "UA-KV-017", Type: protocol.TypeDelivery,
		At: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC), Item: "FortiGate 100F", Qty: 2,
		Serials: []string{fmt.Sprintf("SN-%d-a", seq), fmt.Sprintf("SN-%d-b", seq)},
	}
}

func addRecords(t testing.TB, l *Ledger, agent string, from, to uint64) {
	t.Helper()
	for seq := from; seq <= to; seq++ {
		err := l.Write(func(tx *Txn) error { return tx.Put(TableRecords, testRecord(agent, seq)) })
		if err != nil {
			t.Fatalf("write %d: %v", seq, err)
		}
	}
}

func countRecords(t testing.TB, l *Ledger) map[string]uint64 {
	t.Helper()
	got := map[string]uint64{}
	l.Read(func(txn *memdb.Txn) error {
		it, err := txn.Get(TableRecords, IndexID)
		if err != nil {
			t.Fatal(err)
		}
		for obj := it.Next(); obj != nil; obj = it.Next() {
			r := obj.(*protocol.Record)
			got[r.ID] = r.Seq
		}
		return nil
	})
	return got
}

func TestReopenReplaysEveryWrite(t *testing.T) {
	for _, tc := range []struct {
		name     string
		snapshot int
	}{
		{"log only", -1},
		{"snapshot every 7", 7},
		{"snapshot every 1", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l, err := Open(dir, Options{SnapshotEvery: tc.snapshot})
			if err != nil {
				t.Fatal(err)
			}
			addRecords(t, l, "A1", 1, 40)
			want := countRecords(t, l)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			l, err = Open(dir, Options{SnapshotEvery: tc.snapshot})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			got := countRecords(t, l)
			if len(got) != len(want) {
				t.Fatalf("after reopen got %d records, want %d", len(got), len(want))
			}
			for id, seq := range want {
				if got[id] != seq {
					t.Errorf("record %s: got seq %d, want %d", id, got[id], seq)
				}
			}
			seq, _ := lastSeqOf(l, "A1")
			if seq != 40 {
				t.Errorf("LastSeq = %d, want 40", seq)
			}
		})
	}
}

func lastSeqOf(l *Ledger, agent string) (uint64, error) {
	var seq uint64
	err := l.Read(func(txn *memdb.Txn) error {
		var err error
		seq, err = LastSeq(txn, agent)
		return err
	})
	return seq, err
}

func TestSnapshotEquivalence(t *testing.T) {
	// The state rebuilt from snapshot + log tail equals the state rebuilt
	// from the log alone.
	logDir, snapDir := t.TempDir(), t.TempDir()
	a, err := Open(logDir, Options{SnapshotEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(snapDir, Options{SnapshotEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	addRecords(t, a, "A1", 1, 30)
	addRecords(t, b, "A1", 1, 30)
	if err := b.Snapshot(); err != nil {
		t.Fatal(err)
	}
	addRecords(t, a, "A1", 31, 45)
	addRecords(t, b, "A1", 31, 45)
	a.Close()
	b.Close()
	a, _ = Open(logDir, Options{SnapshotEvery: -1})
	b, _ = Open(snapDir, Options{SnapshotEvery: -1})
	defer a.Close()
	defer b.Close()
	ga, gb := countRecords(t, a), countRecords(t, b)
	if len(ga) != 45 || len(gb) != 45 {
		t.Fatalf("got %d and %d records, want 45 each", len(ga), len(gb))
	}
	for id := range ga {
		if ga[id] != gb[id] {
			t.Errorf("record %s differs: %d vs %d", id, ga[id], gb[id])
		}
	}
}

func TestConcurrentWritersLoseNothing(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir, Options{SnapshotEvery: 50})
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 40
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() { addRecords(t, l, fmt.Sprintf("A%d", w), 1, each) })
	}
	wg.Wait()
	l.Close()
	l, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := len(countRecords(t, l)); got != writers*each {
		t.Fatalf("got %d records, want %d", got, writers*each)
	}
}

func TestFailedWriteChangesNothing(t *testing.T) {
	l, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	addRecords(t, l, "A1", 1, 1)
	err = l.Write(func(tx *Txn) error {
		if err := tx.Put(TableRecords, testRecord("A1", 2)); err != nil {
			return err
		}
		return fmt.Errorf("validation failed")
	})
	if err == nil {
		t.Fatal("write returned no error")
	}
	if got := len(countRecords(t, l)); got != 1 {
		t.Fatalf("got %d records after a failed write, want 1", got)
	}
}

func TestEffectiveAppliesCorrections(t *testing.T) {
	l, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	orig := testRecord("A1", 1)
	fix := &protocol.Record{ID: "R-FIX", Seq: 2, Agent: "A1", Type: protocol.TypeAmendment, Target: orig.ID, Qty: 5, Note: "recounted"}
	void := &protocol.Record{ID: "R-VOID", Seq: 3, Agent: "A1", Type: protocol.TypeVoid, Target: orig.ID, Reason: "duplicate entry"}
	for _, r := range []*protocol.Record{orig, fix} {
		if err := l.Write(func(tx *Txn) error { return tx.Put(TableRecords, r) }); err != nil {
			t.Fatal(err)
		}
	}
	check := func(wantQty int64, wantVoided bool) {
		t.Helper()
		l.Read(func(txn *memdb.Txn) error {
			eff, voided, err := Effective(txn, orig)
			if err != nil {
				t.Fatal(err)
			}
			if eff.Qty != wantQty || voided != wantVoided || eff.Item != orig.Item {
				t.Errorf("effective = qty %d item %q voided %v, want qty %d voided %v", eff.Qty, eff.Item, voided, wantQty, wantVoided)
			}
			return nil
		})
	}
	check(5, false)
	if err := l.Write(func(tx *Txn) error { return tx.Put(TableRecords, void) }); err != nil {
		t.Fatal(err)
	}
	check(5, true)
}
