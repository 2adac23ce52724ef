package ledger

import (
	"cmp"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"maps"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/wal"
	"fieldsync/protocol"
)

// ---- The record store seen from outside ----

// storeShape is what a recordStore holds: its arrays and indexes, field by
// field, in a canonical text (bytes as their length and hash). A store
// restored after a failed Write has the shape it had before. Fields that
// are no part of the records (the lock, the codecs, the cache of
// decompressed blocks, scratch space) are left out.
type storeShape map[string]string

// shapeSkips are the fields of a recordStore that storeShapeOf leaves out.
var shapeSkips = []string{"mu", "enc", "dec", "cache", "seed", "role", "scratch"}

func storeShapeOf(s *recordStore) storeShape {
	s.mu.RLock()
	defer s.mu.RUnlock()
	sh := storeShape{}
	v := reflect.ValueOf(s).Elem()
	for i := range v.NumField() {
		if name := v.Type().Field(i).Name; !slices.Contains(shapeSkips, name) {
			sh[name] = canonical(v.Field(i))
		}
	}
	return sh
}

// canonical writes v as text that equal contents give alike: maps sorted,
// nil and empty alike, a map's empty lists left out, bytes hashed.
func canonical(v reflect.Value) string {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return "nil"
		}
		return canonical(v.Elem())
	case reflect.Struct:
		var b strings.Builder
		b.WriteString("{")
		for i := range v.NumField() {
			fmt.Fprintf(&b, "%s:%s ", v.Type().Field(i).Name, canonical(v.Field(i)))
		}
		return b.String() + "}"
	case reflect.Slice, reflect.Array:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			h := sha256.New()
			for i := range v.Len() {
				h.Write([]byte{byte(v.Index(i).Uint())})
			}
			return fmt.Sprintf("bytes(%d %x)", v.Len(), h.Sum(nil)[:8])
		}
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = canonical(v.Index(i))
		}
		return "[" + strings.Join(parts, " ") + "]"
	case reflect.Map:
		var parts []string
		for it := v.MapRange(); it.Next(); {
			if val := canonical(it.Value()); val != "[]" {
				parts = append(parts, canonical(it.Key())+":"+val)
			}
		}
		slices.Sort(parts)
		return "map[" + strings.Join(parts, " ") + "]"
	case reflect.String:
		return strconv.Quote(v.String())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(v.Int(), 10)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return strconv.FormatUint(v.Uint(), 10)
	case reflect.Bool:
		return strconv.FormatBool(v.Bool())
	}
	return v.Type().String()
}

// diff names the fields in which two shapes differ.
func (sh storeShape) diff(want storeShape) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if sh[k] != want[k] {
			out = append(out, fmt.Sprintf("%s: %.200s, want %.200s", k, sh[k], want[k]))
		}
	}
	return out
}

// blocks returns the number of compressed blocks of a store.
func (sh storeShape) blocks(t testing.TB) int {
	t.Helper()
	b, ok := sh["blocks"]
	if !ok {
		t.Fatal("the record store has no field blocks")
	}
	return strings.Count(b, "bytes(")
}

// viewOf returns the records of the state l publishes now. The view stays
// valid, and unchanged, after the Read it came from.
func viewOf(t testing.TB, l *Ledger) Records {
	t.Helper()
	var v Records
	if err := l.Read(func(txn *memdb.Txn) error { v = RecordsOf(txn); return nil }); err != nil {
		t.Fatal(err)
	}
	return v
}

// jsons returns the JSON of records, for comparisons that print well.
func jsons(t testing.TB, recs []*protocol.Record) []string {
	t.Helper()
	out := make([]string, 0, len(recs))
	for _, r := range recs {
		out = append(out, recordJSON(t, r))
	}
	return out
}

func recordIDs(recs []*protocol.Record) []string {
	out := make([]string, 0, len(recs))
	for _, r := range recs {
		out = append(out, r.ID)
	}
	return out
}

// take returns the first k records an iterator yields, stopping it there.
func take(t testing.TB, recs iter.Seq2[*protocol.Record, error], k int) []*protocol.Record {
	t.Helper()
	var out []*protocol.Record
	if k == 0 {
		return nil
	}
	for r, err := range recs {
		if err != nil {
			t.Fatal(err)
		}
		if out = append(out, r); len(out) == k {
			break
		}
	}
	return out
}

// writeRecords writes recs, batch records a Write.
func writeRecords(t testing.TB, l *Ledger, recs []*protocol.Record, batch int) {
	t.Helper()
	for part := range slices.Chunk(recs, batch) {
		err := l.Write(func(tx *Txn) error {
			for _, r := range part {
				if err := tx.Put(TableRecords, r); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// putRecords puts recs in tx, with PutRecord where viaRaw says so.
func putRecords(tx *Txn, recs []*protocol.Record, viaRaw bool) error {
	for _, r := range recs {
		if !viaRaw {
			if err := tx.Put(TableRecords, r); err != nil {
				return err
			}
			continue
		}
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
}

// ---- A model of the records to check the store against ----

// recordModel is records in the order they were stored, and the queries of
// Records answered the slow way.
type recordModel struct {
	recs []*protocol.Record
	role Role
}

func (m *recordModel) filter(keep func(*protocol.Record) bool) []*protocol.Record {
	var out []*protocol.Record
	for _, r := range m.recs {
		if keep(r) {
			out = append(out, r)
		}
	}
	return out
}

func (m *recordModel) byID(id string) *protocol.Record {
	for _, r := range m.recs {
		if r.ID == id {
			return r
		}
	}
	return nil
}

func (m *recordModel) ofAgent(agent string, from uint64) []*protocol.Record {
	out := m.filter(func(r *protocol.Record) bool { return agent != "" && r.Agent == agent && r.Seq >= from })
	slices.SortFunc(out, func(a, b *protocol.Record) int { return cmp.Compare(a.Seq, b.Seq) })
	return out
}

func (m *recordModel) agents() []string {
	var out []string
	for _, r := range m.recs {
		if r.Agent != "" && !slices.Contains(out, r.Agent) {
			out = append(out, r.Agent)
		}
	}
	slices.Sort(out)
	return out
}

func (m *recordModel) all() []*protocol.Record { return slices.Clone(m.recs) }

func (m *recordModel) since(n int) []*protocol.Record {
	return slices.Clone(m.recs[min(n, len(m.recs)):])
}

func (m *recordModel) ofAgents(agents ...string) []*protocol.Record {
	return m.filter(func(r *protocol.Record) bool { return r.Agent != "" && slices.Contains(agents, r.Agent) })
}

func (m *recordModel) at(agent string, seq uint64) *protocol.Record {
	for _, r := range m.ofAgent(agent, seq) {
		if r.Seq == seq {
			return r
		}
	}
	return nil
}

func (m *recordModel) lastSeq(agent string) uint64 {
	var last uint64
	for _, r := range m.ofAgent(agent, 0) {
		last = max(last, r.Seq)
	}
	return last
}

func (m *recordModel) idsWithPrefix(prefix string, limit int) []string {
	var out []string
	for _, r := range m.recs {
		if strings.HasPrefix(r.ID, prefix) {
			out = append(out, r.ID)
		}
	}
	slices.Sort(out)
	return out[:min(len(out), limit)]
}

func (m *recordModel) corrected() []string {
	var out []string
	for _, r := range m.recs {
		if r.Target != "" && !slices.Contains(out, r.Target) {
			out = append(out, r.Target)
		}
	}
	slices.Sort(out)
	return out
}

func (m *recordModel) withSerial(sn string) []*protocol.Record {
	if m.role != RoleHub {
		return nil
	}
	return m.filter(func(r *protocol.Record) bool { return slices.Contains(r.Serials, sn) })
}

// corpusRecord is record seq of agent in the corpus of TestRecordsLookups:
// deliveries with two serial numbers, some naming a pledge, every hundredth
// sharing a serial number with others, every fiftieth of A-1 amending or
// voiding an earlier one.
func corpusRecord(agent string, seq uint64) *protocol.Record {
	r := testRecord(agent, seq)
	r.Serials = []string{fmt.Sprintf("SN-%s-%d-a", agent, seq), fmt.Sprintf("SN-%s-%d-b", agent, seq)}
	r.Note = strings.Repeat("n", int(seq%97)) // records of varied length: blocks end anywhere
	if seq%7 == 0 {
		r.Pledge = fmt.Sprintf("P-%d", seq%5)
	}
	if seq%100 == 0 {
		r.Serials = append(r.Serials, "SN-SHARED")
	}
	if agent == "A-1" && seq%50 == 0 {
		r.Type, r.Target, r.Qty = protocol.TypeAmendment, testRecord(agent, seq-25).ID, int64(seq%9)
		if seq%200 == 0 {
			r.Type, r.Target, r.Reason = protocol.TypeVoid, testRecord(agent, seq-49).ID, "entered twice"
		}
	}
	return r
}

// lookupCorpus is the records of TestRecordsLookups in the order they are
// written: A-1 with 2,000 records in order; A-2 with the even numbers up to
// 2,000 in a shuffled order; A-10 (whose ids share a prefix with A-1's)
// with 1,000; and records without an agent, sharing sequence number 0, one
// of them correcting a record that is not stored.
func lookupCorpus() []*protocol.Record {
	rnd := rand.New(rand.NewPCG(7, 8))
	var a1, a2, a10, none []*protocol.Record
	for seq := uint64(1); seq <= 2000; seq++ {
		a1 = append(a1, corpusRecord("A-1", seq))
		if seq%2 == 0 {
			a2 = append(a2, corpusRecord("A-2", seq))
		}
		if seq <= 1000 {
			a10 = append(a10, corpusRecord("A-10", seq))
		}
	}
	rnd.Shuffle(len(a2), func(i, j int) { a2[i], a2[j] = a2[j], a2[i] })
	for i := range 5 {
		r := &protocol.Record{ID: fmt.Sprintf("HUB-%d", i), Type: protocol.TypeDelivery, Pledge: "P-1", Qty: 1,
			At: time.Date(2026, 12, 1, 0, 0, i, 0, time.UTC), Serials: []string{"SN-SHARED"}}
		if i == 3 {
			r.Type, r.Target, r.Pledge = protocol.TypeVoid, "GHOST", ""
		}
		none = append(none, r)
	}
	// Interleave: the agents' records are stored mixed, as bundles arrive.
	var out []*protocol.Record
	for len(a1)+len(a2)+len(a10) > 0 {
		for _, l := range []*[]*protocol.Record{&a1, &a2, &a10} {
			n := min(len(*l), 1+rnd.IntN(40))
			out = append(out, (*l)[:n]...)
			*l = (*l)[n:]
		}
		if len(none) > 0 && rnd.IntN(10) == 0 {
			out, none = append(out, none[0]), none[1:]
		}
	}
	return append(out, none...)
}

// lookupCase is one query of Records and the model's answer to it.
type lookupCase struct {
	name string
	got  func(t testing.TB, v Records) any
	want func(t testing.TB, m *recordModel) any
}

// recordsCase makes a lookupCase of a query that yields records.
func recordsCase(name string, got func(Records) iter.Seq2[*protocol.Record, error], want func(*recordModel) []*protocol.Record) lookupCase {
	return lookupCase{name: name,
		got:  func(t testing.TB, v Records) any { return jsons(t, collect(t, got(v))) },
		want: func(t testing.TB, m *recordModel) any { return jsons(t, want(m)) },
	}
}

// recordCase makes a lookupCase of a query that returns one record or nil.
func recordCase(name string, got func(Records) (*protocol.Record, error), want func(*recordModel) *protocol.Record) lookupCase {
	one := func(t testing.TB, r *protocol.Record) any {
		if r == nil {
			return "no record"
		}
		return recordJSON(t, r)
	}
	return lookupCase{name: name,
		got: func(t testing.TB, v Records) any {
			r, err := got(v)
			if err != nil {
				t.Fatal(err)
			}
			return one(t, r)
		},
		want: func(t testing.TB, m *recordModel) any { return one(t, want(m)) },
	}
}

func valueCase[T any](name string, got func(Records) T, want func(*recordModel) T) lookupCase {
	return lookupCase{name: name,
		got:  func(_ testing.TB, v Records) any { return got(v) },
		want: func(_ testing.TB, m *recordModel) any { return want(m) },
	}
}

func lookupCases() []lookupCase {
	cases := []lookupCase{
		valueCase("Len", Records.Len, func(m *recordModel) int { return len(m.recs) }),
		valueCase("Agents", Records.Agents, (*recordModel).agents),
		valueCase("Corrected", Records.Corrected, (*recordModel).corrected),
		recordsCase("All", Records.All, (*recordModel).all),
		recordsCase("Since 0", func(v Records) iter.Seq2[*protocol.Record, error] { return v.Since(0) }, (*recordModel).all),
		recordsCase("Since 1000", func(v Records) iter.Seq2[*protocol.Record, error] { return v.Since(1000) },
			func(m *recordModel) []*protocol.Record { return m.since(1000) }),
		recordsCase("Since beyond the end", func(v Records) iter.Seq2[*protocol.Record, error] { return v.Since(1 << 30) },
			func(m *recordModel) []*protocol.Record { return m.since(1 << 30) }),
		recordsCase("OfAgents A-2 A-10", func(v Records) iter.Seq2[*protocol.Record, error] { return v.OfAgents("A-2", "A-10") },
			func(m *recordModel) []*protocol.Record { return m.ofAgents("A-2", "A-10") }),
		recordsCase("OfAgents none", func(v Records) iter.Seq2[*protocol.Record, error] { return v.OfAgents() },
			func(m *recordModel) []*protocol.Record { return m.ofAgents() }),
		{name: "All stopped early",
			got:  func(t testing.TB, v Records) any { return recordIDs(take(t, v.All(), 2345)) },
			want: func(_ testing.TB, m *recordModel) any { return recordIDs(m.all()[:2345]) }},
	}
	for _, id := range []string{"A-1-R00001", "A-1-R02000", "A-1-R01234", "A-2-R01000", "A-10-R00777", "HUB-0", "HUB-4",
		"", "nope", "A-1-R0000", "A-1-R00001 ", "a-1-r00001", "A-2-R00999"} {
		cases = append(cases, recordCase(fmt.Sprintf("ByID(%q)", id),
			func(v Records) (*protocol.Record, error) { return v.ByID(id) },
			func(m *recordModel) *protocol.Record { return m.byID(id) }))
	}
	for _, c := range []struct {
		prefix string
		limit  int
	}{{"A-1-", 10}, {"A-1", 1 << 20}, {"A-10-R0099", 100}, {"HUB", 3}, {"", 7}, {"zzz", 10}, {"A-2-", 0}, {"A-2-R02000", 1}} {
		cases = append(cases, valueCase(fmt.Sprintf("IDsWithPrefix(%q, %d)", c.prefix, c.limit),
			func(v Records) int { return len(v.IDsWithPrefix(c.prefix, c.limit)) },
			func(m *recordModel) int { return len(m.idsWithPrefix(c.prefix, c.limit)) }))
		cases = append(cases, valueCase(fmt.Sprintf("IDsWithPrefix(%q, %d) ids", c.prefix, c.limit),
			func(v Records) string { return strings.Join(v.IDsWithPrefix(c.prefix, c.limit), ",") },
			func(m *recordModel) string { return strings.Join(m.idsWithPrefix(c.prefix, c.limit), ",") }))
	}
	for _, c := range []struct {
		agent string
		seq   uint64
	}{{"A-1", 1}, {"A-1", 2000}, {"A-1", 1000}, {"A-1", 0}, {"A-1", 2001}, {"A-2", 4}, {"A-2", 3}, {"A-2", 2000},
		{"A-10", 1000}, {"A-10", 1001}, {"nobody", 1}, {"", 0}, {"A-1", math.MaxUint64}} {
		cases = append(cases, recordCase(fmt.Sprintf("At(%q, %d)", c.agent, c.seq),
			func(v Records) (*protocol.Record, error) { return v.At(c.agent, c.seq) },
			func(m *recordModel) *protocol.Record { return m.at(c.agent, c.seq) }))
	}
	for _, agent := range []string{"A-1", "A-2", "A-10", "nobody", ""} {
		cases = append(cases, valueCase(fmt.Sprintf("LastSeq(%q)", agent),
			func(v Records) uint64 { return v.LastSeq(agent) },
			func(m *recordModel) uint64 { return m.lastSeq(agent) }))
	}
	for _, c := range []struct {
		agent string
		from  uint64
	}{{"A-1", 0}, {"A-1", 1}, {"A-1", 777}, {"A-1", 1999}, {"A-1", 2000}, {"A-1", 2001}, {"A-1", math.MaxUint64},
		{"A-2", 3}, {"A-2", 1001}, {"A-2", 0}, {"A-10", 500}, {"nobody", 0}, {"", 0}} {
		cases = append(cases, recordsCase(fmt.Sprintf("OfAgent(%q, %d)", c.agent, c.from),
			func(v Records) iter.Seq2[*protocol.Record, error] { return v.OfAgent(c.agent, c.from) },
			func(m *recordModel) []*protocol.Record { return m.ofAgent(c.agent, c.from) }))
	}
	// Stopping across a page of the iterator, and just at one.
	for _, k := range []int{1, scanPage, scanPage + 1, 3*scanPage - 1} {
		cases = append(cases, lookupCase{name: fmt.Sprintf("OfAgent(A-1, 600) stopped after %d", k),
			got:  func(t testing.TB, v Records) any { return recordIDs(take(t, v.OfAgent("A-1", 600), k)) },
			want: func(_ testing.TB, m *recordModel) any { return recordIDs(m.ofAgent("A-1", 600)[:k]) }})
	}
	for _, pledge := range []string{"P-0", "P-1", "P-4", "P-9", ""} {
		cases = append(cases, recordsCase(fmt.Sprintf("Naming(%q)", pledge),
			func(v Records) iter.Seq2[*protocol.Record, error] { return v.Naming(pledge) },
			func(m *recordModel) []*protocol.Record {
				return m.filter(func(r *protocol.Record) bool { return pledge != "" && r.Pledge == pledge })
			}))
	}
	for _, id := range []string{"A-1-R00025", "A-1-R00151", "A-1-R00175", "GHOST", "A-1-R00001", "nope", ""} {
		cases = append(cases, recordsCase(fmt.Sprintf("Correcting(%q)", id),
			func(v Records) iter.Seq2[*protocol.Record, error] { return v.Correcting(id) },
			func(m *recordModel) []*protocol.Record {
				return m.filter(func(r *protocol.Record) bool { return id != "" && r.Target == id })
			}))
	}
	for _, sn := range []string{"SN-A-1-1-a", "SN-A-2-1000-b", "SN-A-10-999-a", "SN-SHARED", "SN-A-2-999-a", "nope", ""} {
		cases = append(cases, recordsCase(fmt.Sprintf("WithSerial(%q)", sn),
			func(v Records) iter.Seq2[*protocol.Record, error] { return v.WithSerials(sn) },
			func(m *recordModel) []*protocol.Record { return m.withSerial(sn) }))
	}
	return cases
}

// TestRecordsLookups checks every query of Records against a model, on
// 5,000 records of three agents and a few without one, over many pages of
// the iterators and many compressed blocks: live, after reopening from a
// snapshot and the log after it, after reopening from a snapshot alone, and
// opened as an agent.
func TestRecordsLookups(t *testing.T) {
	corpus := lookupCorpus()
	dir := t.TempDir()
	l := openT(t, dir, Options{SnapshotEvery: -1, NoSync: true})
	half := len(corpus) / 2
	writeRecords(t, l, corpus[:half], 300)
	if err := l.Snapshot(); err != nil {
		t.Fatal(err)
	}
	writeRecords(t, l, corpus[half:], 250)
	if n := storeShapeOf(l.records).blocks(t); n < 20 {
		t.Fatalf("the records fill %d compressed blocks, want 20 or more: the test tests too little", n)
	}

	cases := lookupCases()
	check := func(t *testing.T, l *Ledger, role Role) {
		m := &recordModel{recs: corpus, role: role}
		v := viewOf(t, l)
		for _, c := range cases {
			got, want := c.got(t, v), c.want(t, m)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s:\n got %.300v\nwant %.300v", c.name, got, want)
			}
		}
	}
	t.Run("live", func(t *testing.T) { check(t, l, RoleHub) })
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	t.Run("snapshot and log", func(t *testing.T) {
		l := openT(t, dir, Options{SnapshotEvery: -1, NoSync: true})
		defer l.Close()
		check(t, l, RoleHub)
		if err := l.Snapshot(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("snapshot alone", func(t *testing.T) {
		l := openT(t, dir, Options{SnapshotEvery: -1, NoSync: true})
		defer l.Close()
		check(t, l, RoleHub)
	})
	t.Run("agent", func(t *testing.T) {
		l := openT(t, dir, Options{SnapshotEvery: -1, NoSync: true, Role: RoleAgent})
		defer l.Close()
		check(t, l, RoleAgent)
	})
}

// TestRecordsZero: the zero Records, and the records of a memdb that has
// no records row, hold nothing and say so without failing.
func TestRecordsZero(t *testing.T) {
	db, err := memdb.NewMemDB(Schema())
	if err != nil {
		t.Fatal(err)
	}
	txn := db.Txn(false)
	defer txn.Abort()
	empty := openT(t, t.TempDir(), Options{})
	defer empty.Close()
	for name, v := range map[string]Records{"zero": {}, "no row": RecordsOf(txn), "empty ledger": viewOf(t, empty)} {
		t.Run(name, func(t *testing.T) {
			if v.Len() != 0 || v.LastSeq("A-1") != 0 || len(v.Agents()) != 0 || len(v.Corrected()) != 0 ||
				len(v.IDsWithPrefix("", 10)) != 0 {
				t.Error("Len, LastSeq, Agents, Corrected or IDsWithPrefix finds something")
			}
			for _, r := range []func() (*protocol.Record, error){
				func() (*protocol.Record, error) { return v.ByID("A-1-R00001") },
				func() (*protocol.Record, error) { return v.At("A-1", 1) },
			} {
				if got, err := r(); got != nil || err != nil {
					t.Errorf("a lookup returned %v, %v", got, err)
				}
			}
			for name, it := range map[string]iter.Seq2[*protocol.Record, error]{
				"All": v.All(), "OfAgent": v.OfAgent("A-1", 0), "Naming": v.Naming("P-1"),
				"Correcting": v.Correcting("A-1-R00001"), "WithSerial": v.WithSerials("SN-1-a"),
			} {
				if got := collect(t, it); len(got) != 0 {
					t.Errorf("%s yields %d records", name, len(got))
				}
			}
			r := testRecord("A-1", 1)
			if eff, voided, err := v.Effective(r); err != nil || voided || !reflect.DeepEqual(&eff, r) {
				t.Errorf("Effective = %+v, %v, %v; want the record as it is", eff, voided, err)
			}
			if tot, err := v.PledgeTotals("P-1"); err != nil || tot != (Totals{}) {
				t.Errorf("PledgeTotals = %+v, %v", tot, err)
			}
		})
	}
}

// TestPledgeTotals sums what records say about a pledge, corrections
// applied and voided records left out.
func TestPledgeTotals(t *testing.T) {
	l := openT(t, t.TempDir(), Options{NoSync: true})
	defer l.Close()
	at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	rec := func(seq uint64, typ protocol.RecordType, f func(r *protocol.Record)) *protocol.Record {
		r := &protocol.Record{ID: fmt.Sprintf("R%d", seq), Seq: seq, Agent: "A-1", Type: typ, At: at, Pledge: "P-1"}
		f(r)
		return r
	}
	recs := []*protocol.Record{
		rec(1, protocol.TypeDelivery, func(r *protocol.Record) { r.Qty = 10 }),
		rec(2, protocol.TypeDelivery, func(r *protocol.Record) { r.Qty = 4; r.Condition = protocol.ConditionDamaged }),
		rec(3, protocol.TypeTraining, func(r *protocol.Record) { r.Attendees = 25 }),
		rec(4, protocol.TypeConfirmation, func(r *protocol.Record) {
			r.Qty, r.QtyRejected, r.Rejection = 9, 3, protocol.RejectDamaged
		}),
		rec(5, protocol.TypeConfirmation, func(r *protocol.Record) { r.Qty, r.QtyRejected, r.Rejection = 1, 2, protocol.RejectShort }),
		rec(6, protocol.TypeDelivery, func(r *protocol.Record) { r.Qty = 100 }),                                      // voided below
		rec(7, protocol.TypeDelivery, func(r *protocol.Record) { r.Qty = 1000; r.Pledge = "P-2" }),                   // another pledge
		rec(8, protocol.TypeVoid, func(r *protocol.Record) { r.Target, r.Pledge = "R6", "" }),                        // voids 6
		rec(9, protocol.TypeAmendment, func(r *protocol.Record) { r.Target, r.Pledge, r.Qty = "R1", "", 12 }),        // 10 → 12
		rec(10, protocol.TypeAmendment, func(r *protocol.Record) { r.Target, r.Pledge, r.Qty = "R1", "", 11 }),       // then 11
		rec(11, protocol.TypeAmendment, func(r *protocol.Record) { r.Target, r.Pledge, r.Attendees = "R3", "", 20 }), // 25 → 20
	}
	// Stored out of order: amendments apply in sequence order, whatever
	// the order they were stored in.
	order := []int{0, 1, 2, 3, 4, 5, 6, 7, 9, 8, 10}
	for _, i := range order {
		if err := l.Write(putRecord(recs[i])); err != nil {
			t.Fatal(err)
		}
	}
	v := viewOf(t, l)
	for _, c := range []struct {
		pledge string
		want   Totals
	}{
		{"P-1", Totals{Received: 11 + 4 + 20, Confirmed: 9 + 1, Rejected: 3 + 2, Damaged: 4 + 3}},
		{"P-2", Totals{Received: 1000}},
		{"P-3", Totals{}},
	} {
		got, err := v.PledgeTotals(c.pledge)
		if err != nil || got != c.want {
			t.Errorf("PledgeTotals(%s) = %+v, %v; want %+v", c.pledge, got, err, c.want)
		}
	}
}

// ---- Writes that must change nothing ----

// TestRecordsDuplicatesRefused: records are never replaced nor deleted. A
// Write that stores a record whose id, or whose agent and sequence number,
// another record has fails, and changes nothing, though it stored many
// records before; the same records then store fine.
func TestRecordsDuplicatesRefused(t *testing.T) {
	fresh := func(seq uint64) *protocol.Record { return corpusRecord("A-9", seq) }
	for _, c := range []struct {
		name string
		bad  func(tx *Txn) error
		dup  bool // the error is errDuplicateRecord
	}{
		{"same id", func(tx *Txn) error {
			r := testRecord("A-1", 301)
			r.ID = testRecord("A-1", 5).ID
			return tx.Put(TableRecords, r)
		}, true},
		{"same id, another agent", func(tx *Txn) error {
			r := testRecord("B-1", 1)
			r.ID = testRecord("A-1", 300).ID
			return tx.Put(TableRecords, r)
		}, true},
		{"same id as a record without an agent", func(tx *Txn) error {
			return tx.Put(TableRecords, &protocol.Record{ID: "HUB-1", Type: protocol.TypeDelivery})
		}, true},
		{"same agent and seq", func(tx *Txn) error {
			r := testRecord("A-1", 5)
			r.ID = "A-1-OTHER"
			return tx.Put(TableRecords, r)
		}, true},
		{"the same record again", func(tx *Txn) error { return tx.Put(TableRecords, testRecord("A-1", 150)) }, true},
		{"same id through PutRecord", func(tx *Txn) error {
			r := testRecord("A-1", 301)
			r.ID = testRecord("A-1", 299).ID
			return putRecords(tx, []*protocol.Record{r}, true)
		}, true},
		{"same agent and seq through PutRecord", func(tx *Txn) error {
			r := testRecord("A-1", 1)
			r.ID = "A-1-OTHER"
			return putRecords(tx, []*protocol.Record{r}, true)
		}, true},
		{"same id in the Write", func(tx *Txn) error {
			r := fresh(1000)
			r.ID = fresh(1).ID
			return tx.Put(TableRecords, r)
		}, true},
		{"same agent and seq in the Write", func(tx *Txn) error {
			r := fresh(7)
			r.ID = "A-9-OTHER"
			return tx.Put(TableRecords, r)
		}, true},
		{"failed change ignored", func(tx *Txn) error {
			tx.Put(TableRecords, testRecord("A-1", 5))
			return nil
		}, true},
		{"deleting a record", func(tx *Txn) error { return tx.Delete(TableRecords, testRecord("A-1", 5)) }, false},
		{"deleting a record of the Write", func(tx *Txn) error { return tx.Delete(TableRecords, fresh(3)) }, false},
		{"a record without an id", func(tx *Txn) error {
			return tx.Put(TableRecords, &protocol.Record{Agent: "A-9", Seq: 5000})
		}, false},
		{"an id of 256 bytes", func(tx *Txn) error {
			return tx.Put(TableRecords, &protocol.Record{ID: strings.Repeat("x", 256), Agent: "A-9", Seq: 5000})
		}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			l := openT(t, dir, Options{SnapshotEvery: -1, NoSync: true})
			defer func() { l.Close() }()
			var base []*protocol.Record
			for seq := uint64(1); seq <= 300; seq++ {
				base = append(base, corpusRecord("A-1", seq))
			}
			base = append(base, &protocol.Record{ID: "HUB-1", Type: protocol.TypeDelivery, Serials: []string{"SN-A-1-1-a"}})
			writeRecords(t, l, base, 100)
			if err := l.Write(func(tx *Txn) error { return tx.Put(TableMeta, &Meta{Key: "k", Value: "before"}) }); err != nil {
				t.Fatal(err)
			}
			want, wantShape := readState(t, l), storeShapeOf(l.records)

			var added []*protocol.Record
			for seq := uint64(1); seq <= 400; seq++ {
				added = append(added, fresh(seq))
			}
			err := l.Write(func(tx *Txn) error {
				// Records enough to seal blocks, and a change elsewhere.
				if err := putRecords(tx, added[:200], false); err != nil {
					return err
				}
				if err := putRecords(tx, added[200:], true); err != nil {
					return err
				}
				if err := tx.Put(TableMeta, &Meta{Key: "k", Value: "after"}); err != nil {
					return err
				}
				return c.bad(tx)
			})
			if err == nil {
				t.Fatal("the Write succeeded")
			}
			if isDup := errors.Is(err, errDuplicateRecord); isDup != c.dup {
				t.Errorf("the Write failed with %q: duplicate %v, want %v", err, isDup, c.dup)
			}
			if got := readState(t, l); !reflect.DeepEqual(got, want) {
				t.Error("the failed Write changed the state")
			}
			if diff := storeShapeOf(l.records).diff(wantShape); len(diff) > 0 {
				t.Errorf("the failed Write changed the record store:\n%s", strings.Join(diff, "\n"))
			}

			// The records the failed Write stored are gone: storing them
			// again is no duplicate.
			writeRecords(t, l, added, 400)
			live := readState(t, l)
			if n := len(live[recordsAll]); n != len(base)+len(added) {
				t.Errorf("%d records after storing those the failed Write had, want %d", n, len(base)+len(added))
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			l = openT(t, dir, Options{SnapshotEvery: -1})
			if got := readState(t, l); !reflect.DeepEqual(got, live) {
				t.Error("after reopening, the state differs from the live one")
			}
		})
	}
}

// TestRecordsAllowSharedSeqWithoutAgent: the (agent, seq) rule is an
// agent's: records without an agent may share a sequence number.
func TestRecordsAllowSharedSeqWithoutAgent(t *testing.T) {
	l := openT(t, t.TempDir(), Options{NoSync: true})
	defer l.Close()
	recs := []*protocol.Record{{ID: "HUB-1", Seq: 1}, {ID: "HUB-2", Seq: 1}, {ID: "HUB-3"}, {ID: "HUB-4"}}
	writeRecords(t, l, recs, 2)
	v := viewOf(t, l)
	if got := recordIDs(collect(t, v.All())); !slices.Equal(got, []string{"HUB-1", "HUB-2", "HUB-3", "HUB-4"}) {
		t.Errorf("All yields %v", got)
	}
	if got := v.Agents(); len(got) != 0 {
		t.Errorf("Agents = %v, want none", got)
	}
}

// failingWrite is how TestRecordsFailedWriteRestores fails a Write.
type failingWrite struct {
	name string
	fail func(tx *Txn) error
	read bool // the Write reads its own records first
}

// TestRecordsFailedWriteRestores: a Write that stores thousands of records,
// sealing many blocks, and fails leaves the store exactly as it was, down
// to its indexes and its part-filled block; the next Write, of other
// records, works, reads back right and survives reopening.
func TestRecordsFailedWriteRestores(t *testing.T) {
	errLate := errors.New("refused at the end")
	for _, c := range []failingWrite{
		{"error", func(*Txn) error { return errLate }, false},
		{"duplicate after reading", func(tx *Txn) error { return tx.Put(TableRecords, corpusRecord("A-1", 3)) }, true},
		{"panic", func(*Txn) error { panic("bug") }, false},
	} {
		t.Run(c.name, func(t *testing.T) { testFailedWriteRestores(t, c) })
	}
}

func testFailedWriteRestores(t *testing.T, c failingWrite) {
	dir := t.TempDir()
	l := openT(t, dir, Options{SnapshotEvery: -1, NoSync: true})
	defer func() {
		if l != nil {
			l.Close()
		}
	}()
	var model []*protocol.Record
	for seq := uint64(1); seq <= 1000; seq++ {
		model = append(model, corpusRecord("A-1", seq))
	}
	writeRecords(t, l, model, 500)
	before := viewOf(t, l)
	want, wantShape := dumpRecords(t, before), storeShapeOf(l.records)
	if wantShape["tail"] == canonical(reflect.ValueOf([]byte{})) {
		t.Fatal("the last block is empty: the test tests less than it should")
	}

	// The failed Write: records of another agent (and of A-1, going on),
	// naming the pledges, correcting and sharing serial numbers with the
	// records stored.
	var failed []*protocol.Record
	for seq := uint64(1); seq <= 2500; seq++ {
		r := corpusRecord("B-1", seq)
		r.Target = testRecord("A-1", 1+seq%1000).ID
		r.Serials = append(r.Serials, fmt.Sprintf("SN-A-1-%d-a", 1+seq%1000))
		failed = append(failed, r)
		if seq%8 == 0 {
			failed = append(failed, corpusRecord("A-1", 1000+seq/8))
		}
	}
	func() {
		defer func() { recover() }()
		err := l.Write(func(tx *Txn) error {
			if err := putRecords(tx, failed, false); err != nil {
				return err
			}
			if got := storeShapeOf(l.records).blocks(t) - wantShape.blocks(t); got < 10 {
				t.Errorf("the Write sealed %d blocks, want 10 or more", got)
			}
			if c.read {
				v := RecordsOf(tx.Txn)
				if got := collect(t, v.OfAgent("B-1", 0)); len(got) != 2500 {
					t.Errorf("the Write reads %d of its records, want 2500", len(got))
				}
				if r, err := v.ByID(failed[len(failed)-1].ID); err != nil || r == nil {
					t.Errorf("the Write does not find its last record: %v", err)
				}
			}
			return c.fail(tx)
		})
		if err == nil {
			t.Error("the Write succeeded")
		}
	}()
	if diff := storeShapeOf(l.records).diff(wantShape); len(diff) > 0 {
		t.Errorf("after the failed Write, the record store differs:\n%s", strings.Join(diff, "\n"))
	}
	if stale := cachedBlocksBeyond(l.records); len(stale) > 0 {
		t.Errorf("after the failed Write, the store caches blocks %v it no longer has: the next blocks sealed "+
			"under those numbers will read as these", stale)
	}
	if got := dumpRecords(t, viewOf(t, l)); !reflect.DeepEqual(got, want) {
		t.Error("after the failed Write, the records differ")
	}
	if got := dumpRecords(t, before); !reflect.DeepEqual(got, want) {
		t.Error("after the failed Write, a view taken before it differs")
	}

	// The next Write stores other records, of other lengths, in the
	// places the failed one had used.
	var next []*protocol.Record
	for seq := uint64(1); seq <= 1500; seq++ {
		r := corpusRecord("C-1", seq)
		r.Note = strings.Repeat("другий ", int(seq%23))
		r.Target = testRecord("A-1", 1+seq%999).ID
		next = append(next, r)
	}
	err := l.Write(func(tx *Txn) error { return putRecords(tx, next, true) })
	if err != nil {
		t.Fatal(err)
	}
	model = append(model, next...)
	checkModel := func(t *testing.T, v Records) {
		t.Helper()
		m := &recordModel{recs: model, role: RoleHub}
		bad := 0
		for _, r := range model {
			got, err := v.ByID(r.ID)
			if err != nil || got == nil || recordJSON(t, got) != recordJSON(t, r) {
				if bad++; bad <= 3 {
					t.Errorf("ByID(%s) = %.120v, %v; want %.120s", r.ID, got, err, recordJSON(t, r))
				}
			}
		}
		if bad > 0 {
			t.Fatalf("%d of %d records read back wrong", bad, len(model))
		}
		if got, want := jsons(t, collect(t, v.All())), jsons(t, m.all()); !slices.Equal(got, want) {
			t.Errorf("All yields %d records, want %d; first difference at %d", len(got), len(want), firstDiff(got, want))
		}
		for _, id := range []string{testRecord("A-1", 1).ID, testRecord("A-1", 500).ID} {
			got := jsons(t, collect(t, v.Correcting(id)))
			wantRecs := jsons(t, m.filter(func(r *protocol.Record) bool { return r.Target == id }))
			if !slices.Equal(got, wantRecs) {
				t.Errorf("Correcting(%s) yields %d records, want %d", id, len(got), len(wantRecs))
			}
		}
		if got := v.LastSeq("A-1"); got != 1000 {
			t.Errorf("LastSeq(A-1) = %d, want 1000: the failed Write's records count", got)
		}
		if got := collect(t, v.WithSerials("SN-A-1-7-a")); len(got) != 1 {
			t.Errorf("WithSerial finds %d records, want 1: the failed Write's count", len(got))
		}
	}
	t.Run("next Write", func(t *testing.T) { checkModel(t, viewOf(t, l)) })
	// A snapshot copies the records' bytes, and replaces the log.
	if err := l.Snapshot(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, err = Open(dir, Options{SnapshotEvery: -1})
	if err != nil {
		t.Fatalf("reopening from the snapshot: %v", err)
	}
	t.Run("reopened", func(t *testing.T) { checkModel(t, viewOf(t, l)) })
}

// cachedBlocksBeyond returns the blocks the store's cache of decompressed
// blocks holds that the store does not have. It reads the cache through
// reflection, and finds none if the cache is not a map of block numbers
// in a field m.
func cachedBlocksBeyond(s *recordStore) []uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m := reflect.ValueOf(s).Elem().FieldByName("cache")
	if m.Kind() == reflect.Struct {
		m = m.FieldByName("m")
	}
	if m.Kind() != reflect.Map || !m.Type().Key().ConvertibleTo(reflect.TypeFor[uint64]()) {
		return nil
	}
	var out []uint64
	for _, k := range m.MapKeys() {
		if i := k.Uint(); i >= uint64(len(s.blocks)) {
			out = append(out, i)
		}
	}
	slices.Sort(out)
	return out
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// ---- Views and concurrency ----

// TestRecordsViewIsStable: a view of the records (a Read in progress, or
// the Records of an older state) sees none of the records stored after
// it, while a writer stores more and readers iterate; a view taken during
// the writes sees whole Writes. Run it with -race.
func TestRecordsViewIsStable(t *testing.T) {
	l := openT(t, t.TempDir(), Options{SnapshotEvery: -1, NoSync: true})
	defer l.Close()
	const perWrite, writes = 40, 40
	rec := func(agent string, seq uint64) *protocol.Record {
		r := corpusRecord(agent, seq)
		r.Pledge = "P-1"
		return r
	}
	var first []*protocol.Record
	for seq := uint64(1); seq <= 600; seq++ {
		first = append(first, rec("A-1", seq))
	}
	writeRecords(t, l, first, 200)
	old := viewOf(t, l)
	want := dumpRecords(t, old)
	var watch <-chan struct{}
	l.Read(func(txn *memdb.Txn) error {
		var err error
		watch, err = WatchRecords(txn)
		return err
	})
	if err := l.Write(func(tx *Txn) error { return tx.Put(TableMeta, &Meta{Key: "k", Value: "v"}) }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-watch:
		t.Error("the records' watch fired on a Write that stored no record")
	default:
	}

	// checkOld checks that v is exactly the records before the writes.
	checkOld := func(v Records) {
		if v.Len() != 600 || v.LastSeq("A-1") != 600 || len(v.Agents()) != 1 {
			t.Errorf("the old view has %d records, last %d, agents %v", v.Len(), v.LastSeq("A-1"), v.Agents())
		}
		if got := jsons(t, collect(t, v.All())); !slices.Equal(got, want[recordsAll]) {
			t.Errorf("the old view yields %d records, want %d", len(got), len(want[recordsAll]))
		}
		if got := recordIDs(collect(t, v.Naming("P-1"))); len(got) != 600 {
			t.Errorf("the old view names P-1 in %d records, want 600", len(got))
		}
		for _, id := range []string{testRecord("A-1", 601).ID, testRecord("A-2", 1).ID} {
			if r, err := v.ByID(id); r != nil || err != nil {
				t.Errorf("the old view finds %s, stored after it", id)
			}
		}
		if r, _ := v.At("A-1", 601); r != nil {
			t.Error("the old view finds A-1 601, stored after it")
		}
		if got := collect(t, v.WithSerials("SN-SHARED")); len(got) != 6 {
			t.Errorf("the old view finds SN-SHARED in %d records, want 6", len(got))
		}
		if got := v.IDsWithPrefix("A-", 1<<20); len(got) != 600 {
			t.Errorf("the old view has %d ids, want 600", len(got))
		}
	}
	// checkWhole checks that v holds whole Writes: a prefix of each agent's
	// records, one Write's worth at a time.
	checkWhole := func(v Records) {
		n := v.Len() - 600
		if n < 0 || n%perWrite != 0 {
			t.Errorf("a view holds %d records, not 600 and whole Writes of %d", v.Len(), perWrite)
			return
		}
		for _, agent := range []string{"A-1", "A-2"} {
			recs := collect(t, v.OfAgent(agent, 0))
			for i, r := range recs {
				if r.Seq != uint64(i+1) {
					t.Errorf("a view holds %s %d at place %d", agent, r.Seq, i)
					return
				}
			}
			if last := v.LastSeq(agent); last != uint64(len(recs)) {
				t.Errorf("a view says %s's last record is %d, yet holds %d", agent, last, len(recs))
			}
		}
		if got := v.LastSeq("A-1") - 600 + v.LastSeq("A-2"); got != uint64(n) {
			t.Errorf("a view of %d new records holds %d of A-1 and A-2", n, got)
		}
	}

	// A Read that starts now and goes on during the writes.
	readStarted, wrote, readDone := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(readDone)
		l.Read(func(txn *memdb.Txn) error {
			close(readStarted)
			<-wrote
			checkOld(RecordsOf(txn))
			return nil
		})
	}()
	<-readStarted

	stop := make(chan struct{})
	var readers sync.WaitGroup
	for range 2 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				checkOld(old)
				checkWhole(viewOf(t, l))
			}
		})
	}
	seqA1, seqA2 := uint64(600), uint64(0)
	for w := range writes {
		var recs []*protocol.Record
		for range perWrite {
			if w%3 == 0 {
				seqA2++
				recs = append(recs, rec("A-2", seqA2))
			} else {
				seqA1++
				recs = append(recs, rec("A-1", seqA1))
			}
		}
		writeRecords(t, l, recs, perWrite)
		if w == writes/2 {
			close(wrote)
		}
	}
	close(stop)
	readers.Wait()
	<-readDone
	select {
	case <-watch:
	case <-time.After(5 * time.Second):
		t.Error("the records' watch did not fire after records were stored")
	}
	checkOld(old)
	v := viewOf(t, l)
	checkWhole(v)
	if v.Len() != 600+perWrite*writes {
		t.Errorf("%d records at the end, want %d", v.Len(), 600+perWrite*writes)
	}
	if n := storeShapeOf(l.records).blocks(t); n < 10 {
		t.Errorf("the writes sealed %d blocks, want 10 or more: the test tests too little", n)
	}
}

// ---- Snapshots and content ----

// TestRecordsSnapshotReopen: a snapshot holds the records first, in the
// order they were stored, and reopening from it gives the very same records
// in the same order as before, the order of every query included.
func TestRecordsSnapshotReopen(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{SnapshotEvery: -1, NoSync: true})
	corpus := lookupCorpus()[:2500]
	for _, r := range corpus {
		r.Pledge = "P-ALL" // Naming gives the order the records were stored in
	}
	if err := l.Write(func(tx *Txn) error { return tx.Put(TableMeta, &Meta{Key: "first", Value: "before any record"}) }); err != nil {
		t.Fatal(err)
	}
	writeRecords(t, l, corpus, 100)
	live := readState(t, l)
	if err := l.Snapshot(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	var order []string
	metaSeen := false
	if _, err := wal.ReadSnapshot(dir, func(data []byte) error {
		return decodeEntry(data, nil, func(c change) error {
			switch {
			case c.table != TableRecords:
				metaSeen = true
			case metaSeen:
				return errors.New("a record after another table's object")
			default:
				order = append(order, c.obj.(*protocol.Record).ID)
			}
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(order, recordIDs(corpus)) {
		t.Errorf("the snapshot holds %d records, not in the order they were stored (first difference at %d)",
			len(order), firstDiff(order, recordIDs(corpus)))
	}
	// The snapshot covers the whole log, which it replaced.
	l = openT(t, dir, Options{SnapshotEvery: -1})
	defer l.Close()
	got := readState(t, l)
	if !reflect.DeepEqual(got, live) {
		t.Error("the state reopened from a snapshot differs from the live one")
	}
	if !slices.Equal(got[recordsByPledge], live[recordsByPledge]) || len(got[recordsByPledge]) != len(corpus)+1 {
		t.Errorf("Naming yields %d records, want %d in the order stored", len(got[recordsByPledge])-1, len(corpus))
	}
}

// TestRecordsUnusualContent: records of unusual content go through the
// store, the log and a snapshot unchanged, whether Put or PutRecord stored
// them.
func TestRecordsUnusualContent(t *testing.T) {
	at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	many := make([]string, 5000)
	for i := range many {
		many[i] = fmt.Sprintf("SN-MANY-%05d", i)
	}
	cases := []struct {
		name string
		rec  *protocol.Record
		sn   string // a serial number that finds the record
	}{
		{"quotes and backslashes", &protocol.Record{ID: "R-QUOTE", Note: `the "main" rack \ shelf "3"` + "\u2028", Item: `12" monitor`}, ""},
		{"unicode", &protocol.Record{ID: "R-UNICODE", Agent: "A-Київ", Seq: 1, Site: "UA-KV-017",
			Note: "Доставлено, коробки цілі ✓ 𝄞 日本語", ReceivedBy: "О. Коваленко", Serials: []string{"СН-1"}}, "СН-1"},
		{"unicode id", &protocol.Record{ID: "R-Запис-✓", Note: "id of many bytes a character"}, ""},
		{"html characters", &protocol.Record{ID: "R-HTML", Note: "a < b & c > d </script>"}, ""},
		{"control characters", &protocol.Record{ID: "R-CTRL", Note: "line\nbreak\ttab\x00nul\x1f"}, ""},
		{"5,000 serial numbers", &protocol.Record{ID: "R-MANY", Agent: "A-1", Seq: 2, Serials: many}, "SN-MANY-04321"},
		{"repeated and empty serial numbers", &protocol.Record{ID: "R-REPEAT", Agent: "A-1", Seq: 3,
			Serials: []string{"T-9", "", "T-1", "T-9", "T-2", "T-3", "T-4", "T-5", "T-6", "T-7", "T-8", "T-1", ""}}, "T-9"},
		{"long note", &protocol.Record{ID: "R-LONG", Note: strings.Repeat("ї", protocol.MaxNoteLen)}, ""},
		{"id of 255 bytes", &protocol.Record{ID: strings.Repeat("x", 255), Agent: "A-1", Seq: 4}, ""},
		{"extreme numbers", &protocol.Record{ID: "R-NUM", Agent: "A-1", Seq: math.MaxUint64, Qty: math.MinInt64,
			QtyRejected: math.MaxInt64, At: at.In(time.FixedZone("", -9*3600-30*60))}, ""},
		{"zero time", &protocol.Record{ID: "R-ZERO"}, ""},
		{"attachments", &protocol.Record{ID: "R-ATT", Attachments: []protocol.Attachment{
			{Name: "waybill \"1\".pdf", SHA256: strings.Repeat("ab", 32), Size: 1 << 40}, {}}}, ""},
		{"every field", fullRecord(t), "S-2"},
	}
	for _, viaRaw := range []bool{false, true} {
		t.Run(fmt.Sprintf("PutRecord=%v", viaRaw), func(t *testing.T) {
			dir := t.TempDir()
			l := openT(t, dir, Options{SnapshotEvery: -1, NoSync: true})
			var recs []*protocol.Record
			for _, c := range cases {
				recs = append(recs, c.rec)
			}
			// Half in the snapshot, half in the log after it.
			for i, part := range [][]*protocol.Record{recs[:len(recs)/2], recs[len(recs)/2:]} {
				if err := l.Write(func(tx *Txn) error { return putRecords(tx, part, viaRaw) }); err != nil {
					t.Fatal(err)
				}
				if i == 0 {
					if err := l.Snapshot(); err != nil {
						t.Fatal(err)
					}
				}
			}
			check := func(t *testing.T, l *Ledger, role Role) {
				v := viewOf(t, l)
				for _, c := range cases {
					want := recordJSON(t, c.rec)
					got, err := v.ByID(c.rec.ID)
					if err != nil || got == nil {
						t.Errorf("%s: ByID = %v, %v", c.name, got, err)
						continue
					}
					if g := recordJSON(t, got); g != want {
						t.Errorf("%s: stored\n%.400s\nwant\n%.400s", c.name, g, want)
					}
					if c.rec.Agent != "" {
						if got, err := v.At(c.rec.Agent, c.rec.Seq); err != nil || got == nil || got.ID != c.rec.ID {
							t.Errorf("%s: At = %v, %v", c.name, got, err)
						}
					}
					if c.sn != "" {
						got := recordIDs(collect(t, v.WithSerials(c.sn)))
						want := []string{c.rec.ID}
						if role != RoleHub {
							want = nil
						}
						if !slices.Equal(got, want) {
							t.Errorf("%s: WithSerial(%s) = %v, want %v", c.name, c.sn, got, want)
						}
					}
				}
				if got := len(collect(t, v.All())); got != len(cases) {
					t.Errorf("All yields %d records, want %d", got, len(cases))
				}
			}
			t.Run("live", func(t *testing.T) { check(t, l, RoleHub) })
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			for _, role := range []Role{RoleHub, RoleAgent} {
				t.Run("reopened as "+role.String(), func(t *testing.T) {
					l := openT(t, dir, Options{SnapshotEvery: -1, Role: role})
					defer l.Close()
					check(t, l, role)
				})
			}
		})
	}
}

// ---- Hash collisions ----

// collidingPair returns two strings made by format from different numbers
// whose index hash in s is the same, or skips t if it finds none.
func collidingPair(t *testing.T, s *recordStore, format string) (string, string) {
	t.Helper()
	seen := map[uint64]string{}
	for i := range 1 << 21 {
		v := fmt.Sprintf(format, i)
		h := uint64(s.hash(v))
		if other, ok := seen[h]; ok {
			return other, v
		}
		seen[h] = v
	}
	t.Skip("no two of 2M strings share a hash: the index hash is wide enough to need no test of collisions")
	return "", ""
}

// TestRecordsHashCollisions: ids and serial numbers are indexed by a short
// hash, so two of them share one now and then. Such records are found,
// each once, by views that hold them only; a Write that fails undoes them;
// duplicates are still refused.
func TestRecordsHashCollisions(t *testing.T) {
	dir := t.TempDir()
	l := openT(t, dir, Options{SnapshotEvery: -1, NoSync: true})
	defer func() { l.Close() }()
	id1, id2 := collidingPair(t, l.records, "R-%07d")
	sn1, sn2 := collidingPair(t, l.records, "SN-%07d")
	rec := func(id string, seq uint64, serials ...string) *protocol.Record {
		return &protocol.Record{ID: id, Agent: "A-1", Seq: seq, Type: protocol.TypeDelivery, Serials: serials}
	}
	find := func(v Records, id string) bool {
		r, err := v.ByID(id)
		if err != nil {
			t.Fatal(err)
		}
		return r != nil && r.ID == id
	}
	serialIDs := func(v Records, sn string) []string { return recordIDs(collect(t, v.WithSerials(sn))) }

	// A Write that stores both colliding ids, then fails.
	err := l.Write(func(tx *Txn) error {
		if err := putRecords(tx, []*protocol.Record{rec(id1, 1), rec(id2, 2)}, false); err != nil {
			return err
		}
		if v := RecordsOf(tx.Txn); !find(v, id1) || !find(v, id2) {
			t.Error("a Write does not find the colliding ids it stored")
		}
		return errors.New("refused")
	})
	if err == nil {
		t.Fatal("the Write succeeded")
	}
	if v := viewOf(t, l); v.Len() != 0 || find(v, id1) || find(v, id2) {
		t.Fatal("a failed Write left colliding records behind")
	}

	writeRecords(t, l, []*protocol.Record{rec(id1, 1, sn1)}, 1)
	v1 := viewOf(t, l)
	// A failed Write of the second id undoes it and leaves the first.
	if err := l.Write(func(tx *Txn) error {
		tx.Put(TableRecords, rec(id2, 2, sn2))
		return errors.New("refused")
	}); err == nil {
		t.Fatal("the Write succeeded")
	}
	writeRecords(t, l, []*protocol.Record{rec(id2, 2, sn2)}, 1)
	// One record with both colliding serial numbers.
	writeRecords(t, l, []*protocol.Record{rec("R-BOTH", 3, sn2, sn1)}, 1)
	v2 := viewOf(t, l)

	if !find(v1, id1) || find(v1, id2) {
		t.Errorf("a view before the second id finds %s: %v, %s: %v; want true, false", id1, find(v1, id1), id2, find(v1, id2))
	}
	if !find(v2, id1) || !find(v2, id2) {
		t.Errorf("a view of both colliding ids finds %s: %v, %s: %v", id1, find(v2, id1), id2, find(v2, id2))
	}
	for _, c := range []struct {
		v    Records
		sn   string
		want []string
	}{
		{v1, sn1, []string{id1}}, {v1, sn2, nil},
		{v2, sn1, []string{id1, "R-BOTH"}}, {v2, sn2, []string{id2, "R-BOTH"}},
	} {
		if got := serialIDs(c.v, c.sn); !slices.Equal(got, c.want) {
			t.Errorf("a view of %d records: WithSerial(%s) = %v, want %v (each record once)", c.v.Len(), c.sn, got, c.want)
		}
	}
	for _, r := range []*protocol.Record{rec(id1, 10), rec(id2, 11)} {
		if err := l.Write(putRecord(r)); !errors.Is(err, errDuplicateRecord) {
			t.Errorf("storing %s again: %v, want a duplicate", r.ID, err)
		}
	}
	live := readState(t, l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openT(t, dir, Options{SnapshotEvery: -1})
	if got := readState(t, l); !reflect.DeepEqual(got, live) {
		t.Error("after reopening, the state differs from the live one")
	}
}

// TestReplayOfARecordPutTwice opens a log that puts the same record twice,
// as memdb took it (a replacement) before the record store: the record is
// there once. A second record with the same id and other content still
// refuses to load: that would be a different record, not a repeat.
func TestReplayOfARecordPutTwice(t *testing.T) {
	var enc objectEncoder
	raw := func(r *protocol.Record) []byte {
		b, err := enc.encode(r)
		if err != nil {
			t.Fatal(err)
		}
		return slices.Clone(b)
	}
	same := raw(testRecord("A1", 1))
	other := testRecord("A1", 1)
	other.Qty = 9
	for _, c := range []struct {
		name    string
		entries [][]byte
		ok      bool
	}{
		{"identical", [][]byte{same, same, raw(testRecord("A1", 2))}, true},
		{"different content", [][]byte{same, raw(other)}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			log, err := wal.Open(dir, wal.Options{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range c.entries {
				if _, err := log.AppendBatch([][]byte{appendChange(nil, TableRecords, false, e)}); err != nil {
					t.Fatal(err)
				}
			}
			if err := log.Close(); err != nil {
				t.Fatal(err)
			}
			l, err := Open(dir, Options{NoSync: true})
			if !c.ok {
				if err == nil {
					l.Close()
					t.Fatal("opened a log with two different records of one id")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if v := viewOf(t, l); v.Len() != 2 || v.LastSeq("A1") != 2 {
				t.Errorf("%d records, last seq %d; want 2 and 2", v.Len(), v.LastSeq("A1"))
			}
		})
	}
}

// TestScanStoppedEarlyInAFailedWrite: a Write reads its own records with a
// long scan, stops it early and fails. The undo removes those records; the
// scan's prefetching must not go on reading them (it did, and panicked on
// a slot that no longer existed).
func TestScanStoppedEarlyInAFailedWrite(t *testing.T) {
	l, err := Open(t.TempDir(), Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	boom := errors.New("boom")
	for round := range 50 {
		err := l.Write(func(tx *Txn) error {
			for i := range 4 * scanPage {
				if err := tx.Put(TableRecords, testRecord("A1", uint64(round*10000+i+1))); err != nil {
					return err
				}
			}
			n := 0
			for _, err := range RecordsOf(tx.Txn).All() {
				if err != nil {
					return err
				}
				if n++; n == scanPage+1 {
					break
				}
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	if n := viewOf(t, l).Len(); n != 0 {
		t.Errorf("%d records after only failed Writes", n)
	}
}
