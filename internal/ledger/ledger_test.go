package ledger

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/wal"
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
	err := l.Read(func(txn *memdb.Txn) error {
		for r, err := range RecordsOf(txn).All() {
			if err != nil {
				return err
			}
			got[r.ID] = r.Seq
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
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
		seq = RecordsOf(txn).LastSeq(agent)
		return nil
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
			eff, voided, err := RecordsOf(txn).Effective(orig)
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

func openT(t *testing.T, dir string, opts Options) *Ledger {
	t.Helper()
	l, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func putRecord(r *protocol.Record) func(tx *Txn) error {
	return func(tx *Txn) error { return tx.Put(TableRecords, r) }
}

func hasRecord(txn *memdb.Txn, id string) bool {
	r, err := RecordsOf(txn).ByID(id)
	return err == nil && r != nil
}

// TestOnlyDurableStateIsVisible holds the flusher before its fsync and
// checks that a change committed to memdb but not yet durable is seen by
// nobody who could act on it: Read waits, and so does a Write that changes
// nothing after reading it; once synced, both return and see it.
func TestOnlyDurableStateIsVisible(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := openT(t, t.TempDir(), Options{SnapshotEvery: -1, NoSync: true})
		defer l.Close()
		addRecords(t, l, "A1", 1, 1)
		gate := make(chan struct{})
		l.batchHook = func(int) error { <-gate; return nil }

		rec := testRecord("A1", 2)
		var wrote, read, checked atomic.Bool
		var sawInRead, sawInWrite bool
		go func() {
			if err := l.Write(putRecord(rec)); err != nil {
				t.Error(err)
			}
			wrote.Store(true)
		}()
		synctest.Wait() // the write is in memdb, its entry held before the log
		go func() {
			l.Read(func(txn *memdb.Txn) error { sawInRead = hasRecord(txn, rec.ID); return nil })
			read.Store(true)
		}()
		go func() {
			l.Write(func(tx *Txn) error { sawInWrite = hasRecord(tx.Txn, rec.ID); return nil })
			checked.Store(true)
		}()
		synctest.Wait()
		for _, c := range []struct {
			name string
			done *atomic.Bool
		}{{"Write", &wrote}, {"Read", &read}, {"Write changing nothing", &checked}} {
			if c.done.Load() {
				t.Errorf("%s returned before the change was synced", c.name)
			}
		}
		close(gate)
		synctest.Wait()
		if !wrote.Load() || !read.Load() || !checked.Load() {
			t.Fatalf("after the sync: write %v, read %v, empty write %v returned; want all", wrote.Load(), read.Load(), checked.Load())
		}
		if !sawInRead || !sawInWrite {
			t.Errorf("after the sync: Read saw the record %v, Write saw it %v; want both", sawInRead, sawInWrite)
		}
	})
}

// TestFailureIsSticky fails one batch and checks that the write, every
// write queued behind it, and everything after fail with ErrFailed, that
// no snapshot is written from memory the disk does not match, and that
// reopening recovers exactly what was acknowledged.
func TestFailureIsSticky(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		l := openT(t, dir, Options{SnapshotEvery: -1, NoSync: true})
		addRecords(t, l, "A1", 1, 3)
		gate := make(chan struct{})
		diskFull := errors.New("no space left on device")
		// Only the first batch fails: the ledger itself must refuse the
		// rest, whatever the log would do with them.
		var once atomic.Bool
		l.batchHook = func(int) error {
			<-gate
			if once.CompareAndSwap(false, true) {
				return diskFull
			}
			return nil
		}

		errs := make([]error, 3)
		var wg sync.WaitGroup
		for i := range errs {
			wg.Go(func() { errs[i] = l.Write(putRecord(testRecord("A1", uint64(4+i)))) })
			synctest.Wait() // one at a time, so the first is alone in its batch
		}
		close(gate)
		wg.Wait()
		for i, err := range errs {
			if !errors.Is(err, ErrFailed) {
				t.Errorf("write %d: got %v, want ErrFailed", i, err)
			}
		}
		if !errors.Is(errs[0], diskFull) {
			t.Errorf("the failed write's error %q does not wrap the cause", errs[0])
		}

		for _, c := range []struct {
			name string
			op   func() error
		}{
			{"Write", func() error { return l.Write(putRecord(testRecord("A1", 9))) }},
			{"Write changing nothing", func() error { return l.Write(func(*Txn) error { return nil }) }},
			{"Read", func() error { return l.Read(func(*memdb.Txn) error { return nil }) }},
			{"Snapshot", l.Snapshot},
		} {
			if err := c.op(); !errors.Is(err, ErrFailed) {
				t.Errorf("%s after the failure: got %v, want ErrFailed", c.name, err)
			}
		}
		l.Close()
		if snaps, _ := filepath.Glob(filepath.Join(dir, "snap", "*")); len(snaps) > 0 {
			t.Errorf("snapshots written after the failure: %v", snaps)
		}

		l = openT(t, dir, Options{})
		defer l.Close()
		if got := len(countRecords(t, l)); got != 3 {
			t.Errorf("after reopening got %d records, want the 3 acknowledged", got)
		}
	})
}

// TestCloseWhileWriting closes the ledger under concurrent writers and
// snapshots: Close returns, every Write returns nil or ErrClosed, and
// everything acknowledged is there after reopening.
func TestCloseWhileWriting(t *testing.T) {
	for _, every := range []int{-1, 1, 5} {
		t.Run(fmt.Sprintf("SnapshotEvery=%d", every), func(t *testing.T) {
			dir := t.TempDir()
			l := openT(t, dir, Options{SnapshotEvery: every, NoSync: true})
			const writers, each = 4, 100
			acked := make([][]uint64, writers)
			var started, wg sync.WaitGroup
			started.Add(writers)
			for w := range writers {
				wg.Go(func() {
					agent := fmt.Sprintf("A%d", w)
					for seq := uint64(1); seq <= each; seq++ {
						if seq == 10 {
							started.Done()
						}
						err := l.Write(putRecord(testRecord(agent, seq)))
						if errors.Is(err, ErrClosed) {
							if seq < 10 {
								started.Done()
							}
							return
						}
						if err != nil {
							t.Errorf("write %s %d: %v", agent, seq, err)
							return
						}
						acked[w] = append(acked[w], seq)
					}
				})
			}
			started.Wait()
			if err := l.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			wg.Wait()
			for _, c := range []struct {
				name string
				op   func() error
			}{
				{"Close", l.Close},
				{"Write", func() error { return l.Write(putRecord(testRecord("B", 1))) }},
				{"Read", func() error { return l.Read(func(*memdb.Txn) error { return nil }) }},
				{"Snapshot", l.Snapshot},
			} {
				if err := c.op(); !errors.Is(err, ErrClosed) {
					t.Errorf("%s after Close: got %v, want ErrClosed", c.name, err)
				}
			}

			l = openT(t, dir, Options{SnapshotEvery: every})
			defer l.Close()
			got := countRecords(t, l)
			for w, seqs := range acked {
				for _, seq := range seqs {
					if id := testRecord(fmt.Sprintf("A%d", w), seq).ID; got[id] != seq {
						t.Errorf("acknowledged record %s lost", id)
					}
				}
			}
		})
	}
}

// TestSnapshotMatchesItsIndex writes snapshots while writers run. Every
// entry adds one record, so a snapshot consistent with the log it replaces
// holds exactly as many records as the index it covers.
func TestSnapshotMatchesItsIndex(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{SnapshotEvery: -1, NoSync: true})
	const writers, each = 4, 60
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() { addRecords(t, l, fmt.Sprintf("A%d", w), 1, each) })
	}
	for range 5 {
		if err := l.Snapshot(); err != nil {
			t.Fatal(err)
		}
		var records uint64
		index, err := wal.ReadSnapshot(dir, func(data []byte) error {
			return decodeEntry(data, nil, func(c change) error {
				if c.table == TableRecords {
					records++
				}
				return nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		if records != index {
			t.Errorf("snapshot at entry %d holds %d records", index, records)
		}
	}
	wg.Wait()
	l.Close()
	l = openT(t, dir, Options{})
	defer l.Close()
	if got := len(countRecords(t, l)); got != writers*each {
		t.Errorf("after reopening got %d records, want %d", got, writers*each)
	}
}

// TestWriteErrors: a failed change fails the Write even if fn ignores it,
// and a panic in fn leaves the ledger usable; neither changes anything.
func TestWriteErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		fn   func(tx *Txn) error
	}{
		{"ignored failed change", func(tx *Txn) error {
			tx.Put(TableRecords, testRecord("A1", 2))
			tx.Put("no such table", &Meta{Key: "k"})
			return nil
		}},
		{"record without an id", func(tx *Txn) error {
			tx.Put(TableRecords, testRecord("A1", 2))
			return tx.Put(TableRecords, &protocol.Record{Agent: "A1", Seq: 3})
		}},
		{"panic", func(tx *Txn) error {
			tx.Put(TableRecords, testRecord("A1", 2))
			panic("bug")
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			l := openT(t, dir, Options{NoSync: true})
			addRecords(t, l, "A1", 1, 1)
			func() {
				defer func() { recover() }()
				if err := l.Write(c.fn); err == nil {
					t.Error("Write returned no error")
				}
			}()
			addRecords(t, l, "A1", 4, 4) // still usable
			l.Close()
			l = openT(t, dir, Options{})
			defer l.Close()
			got := countRecords(t, l)
			if len(got) != 2 || got[testRecord("A1", 2).ID] != 0 {
				t.Errorf("got records %v, want only seq 1 and 4", got)
			}
		})
	}
}

// TestTxnMethodsReachTheLog: memdb's Insert, DeleteAll and DeletePrefix,
// reached through Txn, go to the log like Put and Delete.
func TestTxnMethodsReachTheLog(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{NoSync: true})
	err := l.Write(func(tx *Txn) error {
		for _, k := range []string{"a1", "a2", "b1", "c1"} {
			if err := tx.Insert(TableMeta, &Meta{Key: k, Value: "v"}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = l.Write(func(tx *Txn) error {
		if n, err := tx.DeleteAll(TableMeta, IndexID, "b1"); n != 1 || err != nil {
			return fmt.Errorf("DeleteAll = %d, %v", n, err)
		}
		if ok, err := tx.DeletePrefix(TableMeta, IndexID+"_prefix", "a"); !ok || err != nil {
			return fmt.Errorf("DeletePrefix = %v, %v", ok, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	l = openT(t, dir, Options{})
	defer l.Close()
	var keys []string
	l.Read(func(txn *memdb.Txn) error {
		it, _ := txn.Get(TableMeta, IndexID)
		for obj := it.Next(); obj != nil; obj = it.Next() {
			keys = append(keys, obj.(*Meta).Key)
		}
		return nil
	})
	if want := []string{"c1"}; !slices.Equal(keys, want) {
		t.Errorf("after reopening: meta keys %v, want %v", keys, want)
	}
}

// TestRolesShareTheData: a role chooses indexes, not data. What an agent's
// ledger writes, live, snapshot and log, opens as the same state with a
// hub's indexes, and the other way round; only the hub finds records by
// serial number.
func TestRolesShareTheData(t *testing.T) {
	dir := t.TempDir()
	read := func(l *Ledger) (state map[string][]string, bySerial []string) {
		t.Helper()
		s := readState(t, l)
		bySerial = s[recordsBySerial]
		delete(s, recordsBySerial)
		return s, bySerial
	}

	l := openT(t, dir, Options{Role: RoleAgent, SnapshotEvery: -1})
	addRecords(t, l, "A1", 1, 20)
	if err := l.Snapshot(); err != nil {
		t.Fatal(err)
	}
	addRecords(t, l, "A1", 21, 30)
	live, serials := read(l)
	if len(serials) != 0 {
		t.Errorf("an agent's ledger found %d records by serial number, want none: it keeps no such index", len(serials))
	}
	if len(live[recordsAll]) != 30 {
		t.Fatalf("the agent's ledger holds %d records, want 30", len(live[recordsAll]))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	for _, role := range []Role{RoleHub, RoleAgent} {
		t.Run(role.String(), func(t *testing.T) {
			l := openT(t, dir, Options{Role: role, SnapshotEvery: -1})
			defer l.Close()
			got, serials := read(l)
			if !reflect.DeepEqual(got, live) {
				t.Errorf("state opened with the %s's indexes differs from the agent's live state", role)
			}
			want := 0
			if role == RoleHub {
				want = 60 // two serial numbers a record
			}
			if len(serials) != want {
				t.Errorf("the %s found %d records by serial number, want %d", role, len(serials), want)
			}
		})
	}
}

// TestLoadLogsProgress: a long load says how far it has come, and the
// opened ledger says what it loaded.
func TestLoadLogsProgress(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{SnapshotEvery: -1, NoSync: true})
	addRecords(t, l, "A1", 1, 3*loadBatch)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	var logs bytes.Buffer
	lg := slog.New(slog.NewJSONHandler(&logs, nil))
	l = openT(t, dir, Options{SnapshotEvery: -1, Logger: lg, progressEvery: time.Nanosecond})
	defer l.Close()

	var loading []int
	opened := 0
	dec := json.NewDecoder(&logs)
	for dec.More() {
		var m struct {
			Msg     string `json:"msg"`
			Objects int    `json:"objects"`
		}
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		switch m.Msg {
		case "ledger loading":
			loading = append(loading, m.Objects)
		case "ledger opened":
			opened = m.Objects
		}
	}
	if len(loading) == 0 || !slices.IsSorted(loading) || loading[len(loading)-1] >= 3*loadBatch {
		t.Errorf("progress logged at %v objects, want a rising count below %d", loading, 3*loadBatch)
	}
	if opened != 3*loadBatch {
		t.Errorf("opened ledger logged %d objects, want %d", opened, 3*loadBatch)
	}
}
