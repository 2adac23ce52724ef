package ledger

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"fieldsync/protocol"
)

// fullRecord has every field of protocol.Record set, through reflection,
// so that a field added to the type shows up here.
func fullRecord(t testing.TB) *protocol.Record {
	r := &protocol.Record{}
	v := reflect.ValueOf(r).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString("v-" + v.Type().Field(i).Name)
		case reflect.Int64:
			f.SetInt(int64(i + 1))
		case reflect.Uint64:
			f.SetUint(uint64(i + 1))
		case reflect.Slice:
			switch f.Type().Elem() {
			case reflect.TypeFor[string]():
				f.Set(reflect.ValueOf([]string{"S-1", "S-2"}))
			case reflect.TypeFor[protocol.Attachment]():
				f.Set(reflect.ValueOf([]protocol.Attachment{{Name: "waybill.pdf", SHA256: strings.Repeat("ab", 32), Size: 12345}}))
			default:
				t.Fatalf("protocol.Record.%s: no test value for %s", v.Type().Field(i).Name, f.Type())
			}
		case reflect.Struct:
			if f.Type() != reflect.TypeFor[time.Time]() {
				t.Fatalf("protocol.Record.%s: no test value for %s", v.Type().Field(i).Name, f.Type())
			}
			f.Set(reflect.ValueOf(time.Date(2026, 5, 1, 9, 30, 0, 123000000, time.FixedZone("", 3*3600))))
		default:
			t.Fatalf("protocol.Record.%s: no test value for %s", v.Type().Field(i).Name, f.Type())
		}
	}
	return r
}

// TestDecodeRecordKnowsEveryField fails when protocol.Record gains a field
// the fast decoder does not know. Such records still decode correctly,
// through encoding/json, but loading a ledger gets slower: add the field to
// protocol.DecodeRecordJSON (protocol's tests name the field).
func TestDecodeRecordKnowsEveryField(t *testing.T) {
	var enc objectEncoder
	raw, err := enc.encode(fullRecord(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := decodeRecord(raw, nil); !ok {
		t.Errorf("decodeRecord does not take a record with every field set:\n%s", raw)
	}
	checkDecodeRecord(t, raw)
}

// checkDecodeRecord checks decodeRecord against encoding/json on data: if
// the fast path takes it, the result must be the same.
func checkDecodeRecord(t *testing.T, data []byte) {
	t.Helper()
	var want protocol.Record
	wantErr := json.Unmarshal(data, &want)
	for _, in := range []*interner{nil, newInterner()} {
		got, ok := decodeRecord(data, in)
		if !ok {
			continue
		}
		if wantErr != nil {
			t.Fatalf("decodeRecord took %q, which encoding/json refuses: %v", data, wantErr)
		}
		if !reflect.DeepEqual(*got, want) {
			t.Fatalf("decodeRecord(%q)\n got %#v\nwant %#v", data, *got, want)
		}
	}
}

func TestDecodeRecordMatchesEncodingJSON(t *testing.T) {
	var enc objectEncoder
	g := newRecordGen(1)
	for _, c := range []struct {
		name   string
		data   string
		takeIt bool // the fast path must take it
	}{
		{"delivery", mustEncode(t, &enc, g.record(2)), true},
		{"empty object", `{}`, true},
		{"empty serials", `{"id":"R1","serials":[]}`, true},
		{"empty attachments", `{"id":"R1","attachments":[{}]}`, true},
		{"negative qty", `{"id":"R1","qty":-3}`, true},
		{"unicode", `{"id":"R1","note":"Доставлено, коробки цілі ✓"}`, true},
		{"html characters", mustEncode(t, &enc, &protocol.Record{ID: "R1", Note: "a < b & c > d"}), true},
		{"escaped quote", `{"id":"R1","note":"the \"main\" rack"}`, false},
		{"escaped key", `{"i\u0064":"R1"}`, false},
		{"unknown field", `{"id":"R1","colour":"red"}`, false},
		{"field in other case", `{"ID":"R1"}`, false},
		{"repeated field", `{"id":"R1","id":"R2"}`, false},
		{"null", `{"id":null}`, false},
		{"spaces", `{ "id": "R1" }`, false},
		{"trailing space", `{"id":"R1"} `, false},
		{"trailing garbage", `{"id":"R1"}x`, false},
		{"fraction", `{"qty":1.5}`, false},
		{"exponent", `{"qty":1e3}`, false},
		{"leading zero", `{"qty":01}`, false},
		{"overflow", `{"qty":99999999999999999999}`, false},
		{"negative seq", `{"seq":-1}`, false},
		{"invalid UTF-8", "{\"note\":\"\xff\"}", false},
		{"control character", "{\"note\":\"a\tb\"}", false},
		{"bad time", `{"at":"yesterday"}`, false},
		{"string for number", `{"qty":"3"}`, false},
		{"truncated", `{"id":"R1","serials":["a"`, false},
		{"not an object", `["id"]`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, ok := decodeRecord([]byte(c.data), nil)
			if ok != c.takeIt {
				t.Errorf("decodeRecord(%s) took it: %v, want %v", c.data, ok, c.takeIt)
			}
			checkDecodeRecord(t, []byte(c.data))
		})
	}
	t.Run("random", func(t *testing.T) {
		rnd := rand.New(rand.NewPCG(1, 2))
		text := func() string {
			const chars = `abc XYZ 019 "\<>&ї€` + "\n\t\x00"
			rs := []rune(chars)
			b := make([]rune, rnd.IntN(12))
			for i := range b {
				b[i] = rs[rnd.IntN(len(rs))]
			}
			return string(b)
		}
		for range 2000 {
			r := g.record(rnd.Uint64N(1 << 30))
			r.Note, r.Item, r.ReceivedBy = text(), text(), text()
			r.Qty = rnd.Int64() - 1<<62
			if rnd.IntN(3) == 0 {
				r.Serials = nil
			}
			if rnd.IntN(3) == 0 {
				r.At = r.At.In(time.FixedZone("", rnd.IntN(24)*1800-12*3600))
			}
			checkDecodeRecord(t, []byte(mustEncode(t, &enc, r)))
		}
	})
}

func mustEncode(t testing.TB, enc *objectEncoder, obj any) string {
	t.Helper()
	raw, err := enc.encode(obj)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// FuzzDecodeRecord: whatever the fast path takes, encoding/json decodes to
// the same record.
func FuzzDecodeRecord(f *testing.F) {
	var enc objectEncoder
	f.Add(mustEncode(f, &enc, fullRecord(f)))
	f.Add(mustEncode(f, &enc, newRecordGen(0).record(7)))
	f.Add(`{"id":"R1","attachments":[{"name":"a","size":1}],"qty":-2}`)
	f.Fuzz(func(t *testing.T, data string) {
		checkDecodeRecord(t, []byte(data))
	})
}

// TestEntryRoundTrip encodes changes of every kind and decodes them back,
// in the current format and in the JSON format of earlier versions.
func TestEntryRoundTrip(t *testing.T) {
	var enc objectEncoder
	changes := []change{
		{table: TableRecords, obj: fullRecord(t)},
		{table: TableRecords, obj: &protocol.Record{ID: "R-ODD", Note: `a "quoted" note`}},
		{table: TableMeta, obj: &Meta{Key: "k", Value: "v"}},
		{table: TableMeta, del: true, obj: &Meta{Key: "gone"}},
		{table: TableAgents, obj: &Agent{ID: "A-1", Site: "UA-KV-017", Enrolled: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}},
	}
	var current []byte
	var legacy []legacyPut
	for i, c := range changes {
		raw := []byte(mustEncode(t, &enc, c.obj))
		current = appendChange(current, c.table, c.del, raw)
		legacy = append(legacy, legacyPut{Table: c.table, Delete: c.del, Obj: raw})
		if c.table == TableRecords {
			changes[i].raw = raw // a record comes with its JSON, for the record store
		}
	}
	legacyEntry, _ := json.Marshal(legacy)
	legacySnapshot, _ := json.Marshal(legacy[0])
	for _, c := range []struct {
		name string
		data []byte
		want []change
	}{
		{"current", current, changes},
		{"legacy entry", legacyEntry, changes},
		{"legacy snapshot entry", legacySnapshot, changes[:1]},
	} {
		t.Run(c.name, func(t *testing.T) {
			var got []change
			err := decodeEntry(c.data, newInterner(), func(ch change) error { got = append(got, ch); return nil })
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("decoded\n%#v\nwant\n%#v", got, c.want)
			}
		})
	}
	for _, bad := range [][]byte{nil, {0x7f}, {entryVersion, 'X'}, {entryVersion, opPut, 200}, current[:len(current)-1]} {
		if err := decodeEntry(bad, nil, func(change) error { return nil }); err == nil {
			t.Errorf("decodeEntry(%q) returned no error", bad)
		}
	}
}

// TestBenchmarkLogIsWhatWriteWrites guards the benchmark fixture: buildLog
// writes records without Write, and must write the very same entries.
func TestBenchmarkLogIsWhatWriteWrites(t *testing.T) {
	viaWrite, direct := t.TempDir(), t.TempDir()
	l := openT(t, viaWrite, Options{NoSync: true, SnapshotEvery: -1})
	g := newRecordGen(0)
	for seq := uint64(1); seq <= 3; seq++ {
		if err := l.Write(putRecord(g.record(seq))); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	if err := buildLog(direct, 3); err != nil {
		t.Fatal(err)
	}
	if got, want := readTreeBytes(t, direct), readTreeBytes(t, viaWrite); !bytes.Equal(got, want) {
		t.Errorf("the log of buildLog differs from the log of Write")
	}
}

// readTreeBytes returns the log segments of the ledger in dir, concatenated.
func readTreeBytes(t *testing.T, dir string) []byte {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "log", "*.wal"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no log segments in %s: %v", dir, err)
	}
	var all []byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	return all
}
