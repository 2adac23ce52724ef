package protocol

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"
)

// everyField has every field of Record set, through reflection, so that a
// field added to the type shows up here.
func everyField(t testing.TB) *Record {
	r := &Record{}
	v := reflect.ValueOf(r).Elem()
	for i := range v.NumField() {
		f, name := v.Field(i), v.Type().Field(i).Name
		switch {
		case f.Kind() == reflect.String:
			f.SetString("v-" + name)
		case f.Kind() == reflect.Int64:
			f.SetInt(int64(i + 1))
		case f.Kind() == reflect.Uint64:
			f.SetUint(uint64(i + 1))
		case f.Type() == reflect.TypeFor[[]string]():
			f.Set(reflect.ValueOf([]string{"S-1", "S-2"}))
		case f.Type() == reflect.TypeFor[[]Attachment]():
			f.Set(reflect.ValueOf([]Attachment{{Name: "waybill.pdf", SHA256: strings.Repeat("ab", 32), Size: 12345}}))
		case f.Type() == reflect.TypeFor[time.Time]():
			f.Set(reflect.ValueOf(time.Date(2026, 5, 1, 9, 30, 0, 123000000, time.FixedZone("", 3*3600))))
		default:
			t.Fatalf("Record.%s: no test value for %s", name, f.Type())
		}
	}
	return r
}

// checkRecordJSON holds the fast paths to encoding/json on r: what
// AppendRecordJSON writes is json.Marshal's bytes, and what
// DecodeRecordJSON reads back is json.Unmarshal's record.
func checkRecordJSON(t *testing.T, r *Record) {
	t.Helper()
	want, err := json.Marshal(r)
	got, ok := AppendRecordJSON([]byte("prefix"), r)
	if !ok {
		if !bytes.Equal(got, []byte("prefix")) {
			t.Fatalf("AppendRecordJSON declined but changed the buffer to %q", got)
		}
	} else if err != nil {
		t.Fatalf("AppendRecordJSON wrote %s, json.Marshal fails: %v", got, err)
	} else if !bytes.Equal(got[len("prefix"):], want) {
		t.Fatalf("AppendRecordJSON\n got %s\nwant %s", got[len("prefix"):], want)
	}
	if err == nil {
		checkDecodeRecordJSON(t, want)
	}
}

// checkDecodeRecordJSON: whatever the fast decoder takes, encoding/json
// decodes to the same record; and a record line gets the same verdict and
// value from decodeRecordLine as from decodeCanonical.
func checkDecodeRecordJSON(t *testing.T, data []byte) {
	t.Helper()
	var want Record
	wantErr := json.Unmarshal(data, &want)
	var got Record
	if DecodeRecordJSON(data, &got, nil) {
		if wantErr != nil {
			t.Fatalf("DecodeRecordJSON took %q, which encoding/json refuses: %v", data, wantErr)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("DecodeRecordJSON(%q)\n got %#v\nwant %#v", data, got, want)
		}
	}
	var line, canon Record
	_, lineErr := decodeRecordLine(data, &line, nil)
	canonErr := decodeCanonical(data, &canon)
	if (lineErr == nil) != (canonErr == nil) {
		t.Fatalf("decodeRecordLine(%q): %v; decodeCanonical: %v", data, lineErr, canonErr)
	}
	if lineErr == nil && !reflect.DeepEqual(line, canon) {
		t.Fatalf("decodeRecordLine(%q)\n got %#v\nwant %#v", data, line, canon)
	}
}

func TestRecordJSONKnowsEveryField(t *testing.T) {
	r := everyField(t)
	raw, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := AppendRecordJSON(nil, r); !ok {
		t.Errorf("AppendRecordJSON does not write a record with every field set")
	}
	if !DecodeRecordJSON(raw, new(Record), nil) {
		t.Errorf("DecodeRecordJSON does not take a record with every field set (add the new field to it and to AppendRecordJSON):\n%s", raw)
	}
	checkRecordJSON(t, r)
}

func TestRecordJSONMatchesEncodingJSON(t *testing.T) {
	for _, c := range []struct {
		name   string
		r      Record
		plain  bool // AppendRecordJSON must write it
		reason string
	}{
		{"zero", Record{}, true, ""},
		{"delivery", testRecords(1, 3)[0], true, ""},
		{"unicode", Record{ID: "R1", Note: "Доставлено, коробки цілі ✓"}, true, ""},
		{"html", Record{ID: "R1", Note: "a < b & c > d"}, false, ""},
		{"quote", Record{ID: "R1", Note: `the "main" rack`}, false, ""},
		{"line separator", Record{ID: "R1", Note: "a\u2028b"}, false, ""},
		{"tab", Record{ID: "R1", Note: "a\tb"}, false, ""},
		{"invalid UTF-8", Record{ID: "R1", Note: "\xff"}, false, ""},
		{"empty serials", Record{ID: "R1", Serials: []string{}}, true, ""},
		{"escaped serial", Record{ID: "R1", Serials: []string{"a", `b"`}}, false, ""},
		{"negative", Record{ID: "R1", Qty: -5, Attendees: -1}, true, ""},
		{"zone", Record{ID: "R1", At: time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("", -5*3600-1800))}, true, ""},
		{"year 10000", Record{ID: "R1", At: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}, false, ""},
		{"attachment", Record{ID: "R1", Attachments: []Attachment{{}, {Name: "a&b"}}}, false, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, ok := AppendRecordJSON(nil, &c.r); ok != c.plain {
				t.Errorf("AppendRecordJSON wrote it: %v, want %v", ok, c.plain)
			}
			checkRecordJSON(t, &c.r)
		})
	}
	t.Run("random", func(t *testing.T) {
		rnd := rand.New(rand.NewPCG(1, 2))
		text := func() string {
			rs := []rune(`abc XYZ 019 "\<>&ї€` + "\n\t\x00\u2028\u2029")
			b := make([]rune, rnd.IntN(12))
			for i := range b {
				b[i] = rs[rnd.IntN(len(rs))]
			}
			return string(b)
		}
		for i := range 2000 {
			r := testRecords(1, uint64(i))[0]
			if rnd.IntN(2) == 0 {
				r.Note, r.Item, r.ReceivedBy = text(), text(), text()
			}
			r.Qty = rnd.Int64() - 1<<62
			if rnd.IntN(3) == 0 {
				r.Serials = nil
			}
			if rnd.IntN(3) == 0 {
				r.At = r.At.In(time.FixedZone("", rnd.IntN(24)*1800-12*3600))
			}
			checkRecordJSON(t, &r)
		}
	})
}

func TestDecodeRecordJSONRefuses(t *testing.T) {
	for _, data := range []string{
		`{"id":"R1","note":"the \"main\" rack"}`,
		`{"i\u0064":"R1"}`,
		`{"id":"R1","colour":"red"}`,
		`{"ID":"R1"}`,
		`{"id":"R1","id":"R2"}`,
		`{"id":null}`,
		`{ "id": "R1" }`,
		`{"id":"R1"}x`,
		`{"qty":1.5}`,
		`{"qty":01}`,
		`{"qty":99999999999999999999}`,
		`{"seq":-1}`,
		"{\"note\":\"\xff\"}",
		`{"at":"yesterday"}`,
		`{"id":"R1","serials":["a"`,
	} {
		if DecodeRecordJSON([]byte(data), new(Record), nil) {
			t.Errorf("DecodeRecordJSON took %s", data)
		}
		checkDecodeRecordJSON(t, []byte(data))
	}
}

// FuzzRecordJSON: whatever the fast paths take, encoding/json agrees with,
// and a bundle's record line gets the same verdict either way.
func FuzzRecordJSON(f *testing.F) {
	for _, r := range append(testRecords(3, 1), *everyField(f)) {
		raw, _ := json.Marshal(&r)
		f.Add(string(raw))
	}
	f.Add(`{"id":"R1","seq":0,"type":"","at":"0001-01-01T00:00:00Z","qty":0}`)
	f.Fuzz(func(t *testing.T, data string) {
		checkDecodeRecordJSON(t, []byte(data))
		var r Record
		if json.Unmarshal([]byte(data), &r) == nil {
			checkRecordJSON(t, &r)
		}
	})
}

// TestBundleKeepsRecordLines: an opened bundle holds each record's line of
// the body, which is the record's canonical JSON, also for records whose
// strings need escapes.
func TestBundleKeepsRecordLines(t *testing.T) {
	agent, hub := newParty(t), newParty(t)
	recs := testRecords(50, 4)
	recs[7].Note = `the "main" rack <A&B>`
	data, _ := seal(t, upManifest(1), recs, agent.key, hub.id.Recipient())
	b, err := OpenBundle(bytes.NewReader(data), hub.id, keyOf(testAgent, agent.pub))
	if err != nil {
		t.Fatal(err)
	}
	if len(b.RecordJSON) != len(b.Records) {
		t.Fatalf("%d record lines for %d records", len(b.RecordJSON), len(b.Records))
	}
	for i := range b.Records {
		want, err := json.Marshal(&b.Records[i])
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b.RecordJSON[i], want) {
			t.Errorf("record %d: line\n%s\nwant\n%s", i+1, b.RecordJSON[i], want)
		}
	}
}
