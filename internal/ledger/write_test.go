package ledger

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/hashicorp/go-memdb"

	"fieldsync/protocol"
)

// dumpState lists every object of every table as JSON, and for each
// secondary index of the records table the record ids in index order, so
// that a stale or missing index entry shows as well as a wrong object.
func dumpState(t testing.TB, txn *memdb.Txn) map[string][]string {
	t.Helper()
	return dumpRoleState(t, txn, RoleHub)
}

// dumpRoleState is dumpState for a ledger of role, with the indexes it has.
func dumpRoleState(t testing.TB, txn *memdb.Txn, role Role) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for table := range Schema().Tables {
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
	indexes := []string{IndexSeq, IndexPledge, IndexTarget}
	if role == RoleHub {
		indexes = append(indexes, IndexSerial)
	}
	for _, index := range indexes {
		it, err := txn.Get(TableRecords, index+"_prefix", "")
		if err != nil {
			t.Fatal(err)
		}
		for obj := it.Next(); obj != nil; obj = it.Next() {
			out["records by "+index] = append(out["records by "+index], obj.(*protocol.Record).ID)
		}
	}
	return out
}

func readState(t testing.TB, l *Ledger) map[string][]string {
	t.Helper()
	var s map[string][]string
	if err := l.Read(func(txn *memdb.Txn) error { s = dumpState(t, txn); return nil }); err != nil {
		t.Fatal(err)
	}
	return s
}

// bigWrite changes far more than memdbChunk objects in one Write: it
// replaces records (moving them to other pledges and serials), deletes some,
// gives a deleted record's seq to a new record, and adds new ones.
func bigWrite(tx *Txn, from uint64) error {
	for seq := uint64(1); seq <= 2500; seq++ {
		r := testRecord("A1", seq)
		r.Qty, r.Pledge, r.Serials = 7, fmt.Sprintf("P-%d", seq%13), []string{fmt.Sprintf("SN-moved-%d", seq)}
		if err := tx.Put(TableRecords, r); err != nil {
			return err
		}
	}
	for seq := uint64(2501); seq <= 2600; seq++ {
		if err := tx.Delete(TableRecords, testRecord("A1", seq)); err != nil {
			return err
		}
	}
	heir := testRecord("A1", 2501)
	heir.ID = "A1-HEIR"
	if err := tx.Put(TableRecords, heir); err != nil {
		return err
	}
	for seq := from; seq < from+3000; seq++ {
		r := testRecord("A1", seq)
		r.Target = testRecord("A1", seq-from+1).ID
		if err := tx.Put(TableRecords, r); err != nil {
			return err
		}
	}
	return tx.Put(TableMeta, &Meta{Key: "big", Value: "done"})
}

func fill(t testing.TB, l *Ledger, n uint64) {
	t.Helper()
	err := l.Write(func(tx *Txn) error {
		for seq := uint64(1); seq <= n; seq++ {
			if err := tx.Put(TableRecords, testRecord("A1", seq)); err != nil {
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
// or not at all, and one that fails leaves memdb exactly as it was.
func TestLargeWriteIsAtomic(t *testing.T) {
	l, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fill(t, l, 3000)
	want := readState(t, l)

	errLate := errors.New("refused at the end")
	err = l.Write(func(tx *Txn) error {
		if err := bigWrite(tx, 10_000); err != nil {
			return err
		}
		if len(tx.done) == 0 {
			t.Fatal("the write did not span several memdb transactions; the test tests nothing")
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

	// The ledger goes on from the state before.
	if err := l.Write(func(tx *Txn) error { return bigWrite(tx, 10_000) }); err != nil {
		t.Fatal(err)
	}
	if got := readState(t, l); reflect.DeepEqual(got, want) || len(got[TableRecords]) != 3000-100+1+3000 {
		t.Errorf("after the large Write: %d records, want %d", len(got[TableRecords]), 3000-100+1+3000)
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
	err = l.Write(func(tx *Txn) error {
		for _, r := range recs {
			raw, err := json.Marshal(r)
			if err != nil {
				return err
			}
			var decoded protocol.Record
			if err := json.Unmarshal(raw, &decoded); err != nil {
				return err
			}
			if err := tx.PutRecord(&decoded, raw); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	stored := func(l *Ledger) []*protocol.Record {
		var out []*protocol.Record
		l.Read(func(txn *memdb.Txn) error {
			it, err := txn.Get(TableRecords, IndexID)
			if err != nil {
				t.Fatal(err)
			}
			for obj := it.Next(); obj != nil; obj = it.Next() {
				out = append(out, obj.(*protocol.Record))
			}
			return nil
		})
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
