package ledger

import (
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-memdb"

	"fieldsync/protocol"
)

// Keys of the records in a dumpState.
const (
	recordsAll      = "records"
	recordsIDs      = "records: ids"
	recordsBySeq    = "records by agent and seq"
	recordsByPledge = "records by pledge"
	recordsByTarget = "records by target"
	recordsBySerial = "records by serial"
)

// dumpState lists every object of every memdb table as JSON, and the
// records as every query of Records finds them, so that a stale or missing
// index entry shows as well as a wrong record.
func dumpState(t testing.TB, txn *memdb.Txn) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for table := range Schema().Tables {
		if table == TableRecords {
			continue // its one row, dumped below as the records it counts
		}
		it, err := txn.Get(table, IndexID)
		if err != nil {
			t.Fatal(err)
		}
		for obj := it.Next(); obj != nil; obj = it.Next() {
			raw, err := json.Marshal(obj)
			if err != nil {
				t.Fatal(err)
			}
			out[table] = append(out[table], string(raw))
		}
	}
	maps.Copy(out, dumpRecords(t, RecordsOf(txn)))
	return out
}

// dumpRecords lists the records of v as All yields them, in JSON, and as
// each lookup finds them: by id and id prefix, by agent and sequence
// number, by pledge, by the record they correct and by serial number (which
// at an agent finds nothing).
func dumpRecords(t testing.TB, v Records) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	all := collect(t, v.All())
	if len(all) != v.Len() {
		t.Errorf("All yields %d records, Len says %d", len(all), v.Len())
	}
	var pledges, serials []string
	for _, r := range all {
		out[recordsAll] = append(out[recordsAll], recordJSON(t, r))
		if got, err := v.ByID(r.ID); err != nil || got == nil || got.ID != r.ID {
			t.Errorf("ByID(%s) = %v, %v", r.ID, got, err)
		}
		if r.Agent != "" {
			got, err := v.At(r.Agent, r.Seq)
			if err != nil || got == nil {
				t.Errorf("At(%s, %d) = %v, %v", r.Agent, r.Seq, got, err)
			} else {
				out[recordsBySeq] = append(out[recordsBySeq], fmt.Sprintf("%s/%d: %s", r.Agent, r.Seq, got.ID))
			}
		}
		if r.Pledge != "" {
			pledges = append(pledges, r.Pledge)
		}
		serials = append(serials, r.Serials...)
	}
	out[recordsIDs] = v.IDsWithPrefix("", v.Len()+1)
	for _, a := range v.Agents() {
		out[recordsBySeq] = append(out[recordsBySeq], fmt.Sprintf("%s: last %d", a, v.LastSeq(a)))
	}
	ids := func(key string, recs iter.Seq2[*protocol.Record, error]) {
		for _, r := range collect(t, recs) {
			out[key] = append(out[key], r.ID)
		}
	}
	slices.Sort(pledges)
	for _, p := range slices.Compact(pledges) {
		out[recordsByPledge] = append(out[recordsByPledge], "pledge "+p)
		ids(recordsByPledge, v.Naming(p))
	}
	for _, id := range v.Corrected() {
		out[recordsByTarget] = append(out[recordsByTarget], "target "+id)
		ids(recordsByTarget, v.Correcting(id))
	}
	slices.Sort(serials)
	for _, sn := range slices.Compact(serials) {
		ids(recordsBySerial, v.WithSerials(sn))
	}
	return out
}

// collect returns what an iterator of records yields, failing t on an
// error.
func collect(t testing.TB, recs iter.Seq2[*protocol.Record, error]) []*protocol.Record {
	t.Helper()
	var out []*protocol.Record
	for r, err := range recs {
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func recordJSON(t testing.TB, r *protocol.Record) string {
	t.Helper()
	raw, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

func readState(t testing.TB, l *Ledger) map[string][]string {
	t.Helper()
	var s map[string][]string
	if err := l.Read(func(txn *memdb.Txn) error { s = dumpState(t, txn); return nil }); err != nil {
		t.Fatal(err)
	}
	return s
}

// testFeedback is feedback about record seq of agent.
func testFeedback(agent string, seq uint64) *Feedback {
	return &Feedback{Agent: agent, Seq: seq, Record: testRecord(agent, seq).ID, State: "refused",
		Reason: "serial number reported twice", At: time.Date(2026, 11, 24, 8, 0, 0, 0, time.UTC)}
}

// testPledge is the pledge fill and bigWrite give record seq.
func testPledge(seq uint64) string { return fmt.Sprintf("P-%d", seq%13) }

// bigWrite changes far more than memdbChunk objects in one Write. Records
// are never replaced nor deleted, so feedback takes that part: it replaces
// feedback (moving it to other records), deletes some, and gives a deleted
// one's key to a new one. Then it appends records that correct those fill
// wrote, name the same pledges and repeat one of their serial numbers, so
// that every index of records grows.
func bigWrite(tx *Txn, from uint64) error {
	for seq := uint64(1); seq <= 2500; seq++ {
		f := testFeedback("A1", seq)
		f.State, f.Record = "quarantined", testRecord("A1", from+seq-1).ID
		if err := tx.Put(TableFeedback, f); err != nil {
			return err
		}
	}
	for seq := uint64(2501); seq <= 2600; seq++ {
		if err := tx.Delete(TableFeedback, testFeedback("A1", seq)); err != nil {
			return err
		}
	}
	heir := testFeedback("A1", 2501)
	heir.Record = "A1-HEIR"
	if err := tx.Put(TableFeedback, heir); err != nil {
		return err
	}
	for seq := from; seq < from+3000; seq++ {
		r := testRecord("A1", seq)
		r.Type, r.Target, r.Pledge = protocol.TypeAmendment, testRecord("A1", seq-from+1).ID, testPledge(seq)
		r.Serials = append(r.Serials, fmt.Sprintf("SN-%d-a", seq-from+1))
		if err := tx.Put(TableRecords, r); err != nil {
			return err
		}
	}
	return tx.Put(TableMeta, &Meta{Key: "big", Value: "done"})
}

// fill writes n records of agent A1, each with feedback.
func fill(t testing.TB, l *Ledger, n uint64) {
	t.Helper()
	err := l.Write(func(tx *Txn) error {
		for seq := uint64(1); seq <= n; seq++ {
			r := testRecord("A1", seq)
			r.Pledge = testPledge(seq)
			if err := tx.Put(TableRecords, r); err != nil {
				return err
			}
			if err := tx.Put(TableFeedback, testFeedback("A1", seq)); err != nil {
				return err
			}
		}
		return tx.Put(TableMeta, &Meta{Key: "big", Value: "before"})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestLargeWriteIsAtomic: a Write of many memdb transactions is seen whole
// or not at all, and one that fails leaves memdb and the records exactly as
// they were.
func TestLargeWriteIsAtomic(t *testing.T) {
	l, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fill(t, l, 3000)
	want := readState(t, l)
	wantStore := storeShapeOf(l.records)

	errLate := errors.New("refused at the end")
	err = l.Write(func(tx *Txn) error {
		if err := bigWrite(tx, 10_000); err != nil {
			return err
		}
		if len(tx.done) == 0 {
			t.Fatal("the write did not span several memdb transactions; the test tests nothing")
		}
		if got := RecordsOf(tx.Txn).Len(); got != 6000 {
			t.Errorf("the Write sees %d records, want its own 3000 after the 3000 before", got)
		}
		if got := readState(t, l); !reflect.DeepEqual(got, want) {
			t.Error("Read during a large Write sees part of it")
		}
		return errLate
	})
	if !errors.Is(err, errLate) {
		t.Fatalf("Write returned %v, want %v", err, errLate)
	}
	if got := readState(t, l); !reflect.DeepEqual(got, want) {
		t.Error("after a failed large Write, Read sees a changed state")
	}
	txn := l.DB().Txn(false)
	if got := dumpState(t, txn); !reflect.DeepEqual(got, want) {
		t.Error("after a failed large Write, memdb holds a changed state")
	}
	txn.Abort()
	if diff := storeShapeOf(l.records).diff(wantStore); len(diff) > 0 {
		t.Errorf("after a failed large Write, the record store differs:\n%s", strings.Join(diff, "\n"))
	}

	// The ledger goes on from the state before.
	if err := l.Write(func(tx *Txn) error { return bigWrite(tx, 10_000) }); err != nil {
		t.Fatal(err)
	}
	got := readState(t, l)
	if reflect.DeepEqual(got, want) || len(got[recordsAll]) != 6000 || len(got[TableFeedback]) != 3000-100+1 {
		t.Errorf("after the large Write: %d records and %d feedback, want 6000 and %d",
			len(got[recordsAll]), len(got[TableFeedback]), 3000-100+1)
	}
	if n := len(got[recordsBySerial]); n != 2*3000+3*3000 {
		t.Errorf("after the large Write, serial numbers find %d records, want %d", n, 2*3000+3*3000)
	}
}

// TestLargeWriteReplays: the state after large writes is the state replay
// and a snapshot give.
func TestLargeWriteReplays(t *testing.T) {
	for _, every := range []int{-1, 1} {
		t.Run(fmt.Sprintf("snapshot every %d", every), func(t *testing.T) {
			dir := t.TempDir()
			l, err := Open(dir, Options{SnapshotEvery: every})
			if err != nil {
				t.Fatal(err)
			}
			fill(t, l, 3000)
			if err := l.Write(func(tx *Txn) error { return bigWrite(tx, 10_000) }); err != nil {
				t.Fatal(err)
			}
			want := readState(t, l)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			l, err = Open(dir, Options{SnapshotEvery: every})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if got := readState(t, l); !reflect.DeepEqual(got, want) {
				t.Error("state after reopening differs from the state before")
			}
		})
	}
}

// TestPutRecordIsPut: a record put with the JSON it was decoded from is
// stored, logged and replayed as Put stores it, whichever decoder path its
// JSON takes.
func TestPutRecordIsPut(t *testing.T) {
	recs := []*protocol.Record{testRecord("A1", 1), testRecord("A1", 2), testRecord("A1", 3)}
	recs[1].Note = "boxes <3> & crates" // json.Marshal escapes these: the slow path
	recs[2].Serials = nil

	dir := t.TempDir()
	l, err := Open(dir, Options{SnapshotEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	err = l.Write(func(tx *Txn) error { return putRecords(tx, recs, true) })
	if err != nil {
		t.Fatal(err)
	}
	stored := func(l *Ledger) []*protocol.Record {
		var out []*protocol.Record
		l.Read(func(txn *memdb.Txn) error {
			out = collect(t, RecordsOf(txn).All())
			return nil
		})
		if len(out) != len(recs) {
			t.Fatalf("%d records stored, want %d", len(out), len(recs))
		}
		return out
	}
	live := stored(l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	put, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer put.Close()
	err = put.Write(func(tx *Txn) error {
		for _, r := range recs {
			if err := tx.Put(TableRecords, r); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := stored(put); !reflect.DeepEqual(live, want) {
		t.Errorf("PutRecord stored\n%+v\nPut stores\n%+v", live, want)
	}

	l, err = Open(dir, Options{SnapshotEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if replayed := stored(l); !reflect.DeepEqual(replayed, live) {
		t.Errorf("replay gives\n%+v\nlive was\n%+v", replayed, live)
	}
}
