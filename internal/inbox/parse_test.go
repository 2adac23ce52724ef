package inbox

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"fieldsync/protocol"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		file string
		in   string
		want []Entry
	}{
		{
			name: "JSON object",
			file: "delivery.json",
			in: `{"type": "delivery", "item": "Firewall FG-100F", "qty": 2, "pledge": "P-12",
				"serial": ["FG1", "FG2"], "condition": "ok", "received_by": "O. Kovalenko",
				"note": "boxes dented", "attach": ["waybill.pdf"]}`,
			want: []Entry{{
				Record: protocol.Record{
					Type: protocol.TypeDelivery, Item: "Firewall FG-100F", Qty: 2, Pledge: "P-12",
					Serials: []string{"FG1", "FG2"}, Condition: protocol.ConditionOK,
					ReceivedBy: "O. Kovalenko", Note: "boxes dented",
				},
				Attach: []string{"waybill.pdf"},
				Line:   1,
			}},
		},
		{
			name: "JSON array of all types",
			file: "batch.JSON",
			in: "\ufeff[\n" +
				`{"type": "delivery", "item": "Switch", "qty": 1, "serial": "SW-1"},` + "\n" +
				`{"type": "Training", "course": "Incident response", "date": "2025-03-14", "attendees": 12,
				  "provider": "CERT-UA", "trainer": "I. Shevchenko", "pledge": null, "note": ""},` + "\n" +
				`{"Type": "confirmation", "pledge": "P-7", "qty": 3.0, "qty_rejected": 1, "rejection": "damaged",
				  "received-by": "M. Bondar", "role": "engineer", "waybill": "WB-1", "condition": "DAMAGED"}` + "\n]",
			want: []Entry{
				{Record: protocol.Record{Type: protocol.TypeDelivery, Item: "Switch", Qty: 1, Serials: []string{"SW-1"}}, Line: 2},
				{Record: protocol.Record{
					Type: protocol.TypeTraining, Course: "Incident response", Date: "2025-03-14",
					Attendees: 12, Provider: "CERT-UA", Trainer: "I. Shevchenko",
				}, Line: 3},
				{Record: protocol.Record{
					Type: protocol.TypeConfirmation, Pledge: "P-7", Qty: 3, QtyRejected: 1,
					Rejection: protocol.RejectDamaged, ReceivedBy: "M. Bondar", Role: "engineer",
					Waybill: "WB-1", Condition: protocol.ConditionDamaged,
				}, Line: 5},
			},
		},
		{
			name: "CSV with serial lists",
			file: "deliveries.csv",
			in: "type,item,qty,serial,condition,Received By,attach\r\n" +
				"delivery,Switch 24-port,3,SW-1|SW-2| SW-3 ,ok,O. Kovalenko,scan.pdf\r\n" +
				",,,,,,\r\n" +
				`delivery,"Satellite terminal, LEO",2,"ST-1;ST-2;",incomplete,,a.jpg;b.jpg` + "\r\n" +
				"\r\n" +
				"delivery,Server,1,,,,\r\n",
			want: []Entry{
				{Record: protocol.Record{
					Type: protocol.TypeDelivery, Item: "Switch 24-port", Qty: 3,
					Serials: []string{"SW-1", "SW-2", "SW-3"}, Condition: protocol.ConditionOK, ReceivedBy: "O. Kovalenko",
				}, Attach: []string{"scan.pdf"}, Line: 2},
				{Record: protocol.Record{
					Type: protocol.TypeDelivery, Item: "Satellite terminal, LEO", Qty: 2,
					Serials: []string{"ST-1", "ST-2"}, Condition: protocol.ConditionIncomplete,
				}, Attach: []string{"a.jpg", "b.jpg"}, Line: 4},
				{Record: protocol.Record{Type: protocol.TypeDelivery, Item: "Server", Qty: 1}, Line: 6},
			},
		},
		{
			name: "CSV from Excel with semicolons and a BOM",
			file: "trainings.csv",
			in: "\ufefftype;course;date;attendees;provider;;\n" +
				"training;Backup drills;2025-04-01;7;\"SSSCIP; Kyiv\";;\n",
			want: []Entry{{Record: protocol.Record{
				Type: protocol.TypeTraining, Course: "Backup drills", Date: "2025-04-01", Attendees: 7, Provider: "SSSCIP; Kyiv",
			}, Line: 2}},
		},
		{
			name: "CSV with a multi-line note",
			file: "notes.csv",
			in:   "type,item,qty,note\ndelivery,UPS,1,\"first line\nsecond line\"\ndelivery,UPS,2,\n",
			want: []Entry{
				{Record: protocol.Record{Type: protocol.TypeDelivery, Item: "UPS", Qty: 1, Note: "first line\nsecond line"}, Line: 2},
				{Record: protocol.Record{Type: protocol.TypeDelivery, Item: "UPS", Qty: 2}, Line: 4},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.file, strings.NewReader(tt.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		file string
		in   string
		want string
	}{
		{"qty not a number", "deliveries.csv",
			"type,item,qty\ndelivery,Switch,3\ndelivery,Router,2\ndelivery,Server,three\n",
			`deliveries.csv line 4: qty: "three" is not a whole number`},
		{"qty fraction", "d.csv", "type,item,qty\ndelivery,Switch,2.5\n",
			`d.csv line 2: qty: "2.5" is not a whole number`},
		{"qty too large", "d.csv", "type,item,qty\ndelivery,Switch,99999999999999999999\n",
			`d.csv line 2: qty: "99999999999999999999" is too large`},
		{"qty negative", "d.json", `{"type": "delivery", "item": "Switch", "qty": -1}`,
			`d.json line 1: qty: must be between 0 and 1000000000, got -1`},
		{"qty missing", "d.json", "{\"type\": \"delivery\",\n \"item\": \"Switch\"}",
			`d.json line 1: qty: a delivery needs a quantity of at least 1 (--qty)`},
		{"qty as text in JSON", "d.json", `{"type": "delivery", "item": "Switch", "qty": "3"}`,
			`d.json line 1: qty: must be a whole number without quotes, got text "3"`},
		{"item as number in JSON", "d.json", "[\n{\"type\": \"delivery\",\n\"item\": 42, \"qty\": 1}]",
			`d.json record 1, line 3: item: must be text in quotes, got the number 42`},
		{"serial list of numbers", "d.json", `{"type": "delivery", "item": "X", "qty": 1, "serial": ["A", 2]}`,
			`d.json line 1: serial: item 2 must be text in quotes`},
		{"serial object", "d.json", `{"type": "delivery", "item": "X", "qty": 1, "serial": {"a": 1}}`,
			`d.json line 1: serial: must be a list of text ["...", "..."] or one text in quotes, got an object`},
		{"serial empty in JSON list", "d.json", `{"type": "delivery", "item": "X", "qty": 1, "serial": ["A", ""]}`,
			`d.json line 1: serial: "" is not a serial number (1 to 128 printable characters)`},
		{"unknown field", "d.json", `[{"type": "delivery", "item": "X", "qty": 1}, {"type": "delivery", "colour": "red"}]`,
			`d.json record 2, line 1: unknown field "colour"; the fields are type, pledge, item, qty, qty_rejected, rejection, serial, condition, received_by, role, waybill, course, date, attendees, provider, trainer, note, attach`},
		{"unknown field with a hint", "d.json", `{"type": "delivery", "serials": ["A"]}`,
			`d.json line 1: unknown field "serials"; did you mean serial?`},
		{"unknown column", "d.csv", "type,item,quantity\ndelivery,X,1\n",
			`d.csv line 1: unknown field "quantity"; did you mean qty?`},
		{"field twice", "d.json", `{"type": "delivery", "item": "X", "Item": "Y"}`,
			`d.json line 1: item: given twice`},
		{"column twice", "d.csv", "type,item,received-by,received_by\n",
			`d.csv line 1: received_by: column given twice`},
		{"no type column", "d.csv", "item,qty\nSwitch,1\n",
			`d.csv line 1: the header row has no type column; add one (delivery, training or confirmation)`},
		{"type missing", "d.csv", "type,item,qty\n,Switch,1\n",
			`d.csv line 2: type: missing; write delivery, training or confirmation`},
		{"type not allowed", "d.json", `{"type": "void", "reason": "x"}`,
			`d.json line 1: unknown field "reason"; the fields are type, pledge, item, qty, qty_rejected, rejection, serial, condition, received_by, role, waybill, course, date, attendees, provider, trainer, note, attach`},
		{"type unknown", "d.json", `{"type": "void"}`,
			`d.json line 1: type: "void" is not delivery, training or confirmation`},
		{"field of another type", "t.csv", "type,course,date,attendees,qty\ntraining,Drills,2025-01-02,3,4\n",
			`t.csv line 2: qty: does not apply to a training`},
		{"bad date", "t.csv", "type,course,date,attendees\ntraining,Drills,01.03.2025,3\n",
			`t.csv line 2: date: "01.03.2025" is not a date in the form YYYY-MM-DD`},
		{"bad condition", "d.csv", "type,item,qty,condition\ndelivery,X,1,broken\n",
			`d.csv line 2: condition: "broken" is not one of ok, damaged, incomplete`},
		{"confirmation without pledge", "c.json", `{"type": "confirmation", "qty": 1}`,
			`c.json line 1: pledge: a confirmation names the pledge it confirms`},
		{"attachment in a folder", "d.csv", "type,item,qty,attach\ndelivery,X,1,../secret.pdf\n",
			`d.csv line 2: attach: "../secret.pdf" is not a file name in the inbox (no folders)`},
		{"attachment is a record file", "d.csv", "type,item,qty,attach\ndelivery,X,1,list.csv\n",
			`d.csv line 2: attach: "list.csv" is a record file (.json, .csv), not an attachment; rename it, e.g. to list.csv.txt`},
		{"attachment ignored", "d.csv", "type,item,qty,attach\ndelivery,X,1,scan.pdf.part\n",
			`d.csv line 2: attach: "scan.pdf.part" is a name the inbox ignores (temporary or hidden files)`},
		{"attachment twice", "d.csv", "type,item,qty,attach\ndelivery,X,1,a.pdf|a.pdf\n",
			`d.csv line 2: attach: "a.pdf" is named twice`},
		{"control character", "d.json", `{"type": "delivery", "item": "X\u0007", "qty": 1}`,
			`d.json line 1: item: contains a control character`},
		{"short row", "d.csv", "type,item,qty\ndelivery,X\n",
			`d.csv line 2: has 2 fields, the header row has 3`},
		{"long row", "d.csv", "type,item,qty\ndelivery,X,1,extra\n",
			`d.csv line 2: has 4 fields, the header row has 3`},
		{"value without column name", "d.csv", "type,,qty,item\ndelivery,oops,1,X\n",
			`d.csv line 2: column 2 has a value but no name in the header row`},
		{"bare quote", "d.csv", "type,item,qty\ndelivery,12\" rack,1\n",
			`d.csv line 2: a " inside a field that does not start with "; put the whole field in quotes and write the " inside as ""`},
		{"unclosed quote", "d.csv", "type,item,qty\ndelivery,\"Switch,1\n",
			`d.csv line 2: a quoted field is not closed, or has text after its closing "; the file may be cut short`},
		{"header only", "d.csv", "type,item,qty\n",
			`d.csv: has a header row but no records below it`},
		{"empty", "d.json", " \n", `d.json: is empty`},
		{"empty array", "d.json", "[]", `d.json: holds no records`},
		{"not an object", "d.json", `"delivery"`,
			`d.json line 1: must hold a JSON object {...} or an array of them [{...}, ...]`},
		{"array of non-objects", "d.json", `[1]`, `d.json record 1, line 1: is not a JSON object {...}`},
		{"truncated JSON", "d.json", "[{\"type\": \"delivery\",\n\"item\": \"Sw",
			`d.json record 1, line 2: the file ends in the middle of its JSON; it may be cut short`},
		{"JSON syntax", "d.json", "{\"type\": \"delivery\",\n\"item\" \"X\"}",
			`d.json line 2: invalid JSON: invalid character '"' after object key`},
		{"two JSON values", "d.json", `{"type": "delivery", "item": "X", "qty": 1} {"type": "delivery"}`,
			`d.json line 1: has more after the end of its JSON value; put several records in one array [{...}, {...}]`},
		{"not UTF-8", "d.csv", "type,item,qty\ndelivery,\xcf\xf0\xe8\xeb\xe0\xe4,1\n",
			`d.csv line 2: is not UTF-8 text; save it as UTF-8 (Excel: "CSV UTF-8")`},
		{"UTF-16", "d.csv", "\xff\xfet\x00y\x00", `d.csv: is UTF-16 text; save it as UTF-8`},
		{"not a record file", "scan.pdf", "%PDF", `scan.pdf: is not a record file (.json or .csv)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.file, strings.NewReader(tt.in))
			if err == nil {
				t.Fatalf("Parse = %+v, want error %q", got, tt.want)
			}
			if got != nil {
				t.Errorf("Parse returned %d entries with its error", len(got))
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is %T, want *ParseError", err, err)
			}
			if err.Error() != tt.want {
				t.Errorf("error\n got %s\nwant %s", err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is more than one line: %q", err)
			}
		})
	}
}

func TestParseLimits(t *testing.T) {
	row := "delivery,Switch,1\n"
	tests := []struct {
		name string
		file string
		in   string
		want string
	}{
		{"file too large", "big.csv", "type,item,qty\n" + strings.Repeat(row, MaxFileSize/len(row)+1),
			"big.csv: is larger than 16 MiB; split it into smaller files"},
		{"too many records", "many.csv", "type,item,qty\n" + strings.Repeat(row, MaxRecordsPerFile+1),
			fmt.Sprintf("many.csv line %d: more than %d records; split the file", MaxRecordsPerFile+2, MaxRecordsPerFile)},
		{"too many JSON records", "many.json", "[" + strings.Repeat(`{"type":"delivery","item":"X","qty":1},`, MaxRecordsPerFile) + `{}]`,
			fmt.Sprintf("many.json record %d, line 1: more than %d records; split the file", MaxRecordsPerFile+1, MaxRecordsPerFile)},
		{"too many columns", "wide.csv", "type,item,qty\ndelivery,X,1" + strings.Repeat(",", MaxFields) + "\n",
			fmt.Sprintf("wide.csv line 2: has more than %d columns", MaxFields)},
		{"too many serials", "s.csv", "type,item,qty,serial\ndelivery,X,1," + strings.Repeat("S|", protocol.MaxSerials+1) + "\n",
			fmt.Sprintf("s.csv line 2: serial: at most %d serial numbers per record", protocol.MaxSerials)},
		{"too many JSON serials", "s.json", `{"serial": [` + strings.Repeat(`"S",`, protocol.MaxSerials) + `"S"]}`,
			fmt.Sprintf("s.json line 1: serial: at most %d serial numbers per record", protocol.MaxSerials)},
		{"too many attachments", "a.csv", "type,item,qty,attach\ndelivery,X,1," + strings.Repeat("a.pdf;", protocol.MaxAttachments+1) + "\n",
			fmt.Sprintf("a.csv line 2: attach: at most %d attachments per record", protocol.MaxAttachments)},
		{"long unknown field", "u.csv", strings.Repeat("x", 100) + "\n",
			`u.csv line 1: unknown field "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"...; the fields are type, pledge, item, qty, qty_rejected, rejection, serial, condition, received_by, role, waybill, course, date, attendees, provider, trainer, note, attach`},
		{"long date", "t.csv", "type,course,date,attendees\ntraining,C," + strings.Repeat("2", maxShortLen+1) + ",1\n",
			fmt.Sprintf("t.csv line 2: date: is longer than %d bytes", maxShortLen)},
		{"long serial", "s.json", `{"type": "delivery", "item": "X", "qty": 1, "serial": ["A", "` + strings.Repeat("S", protocol.MaxSerialLen+1) + `"]}`,
			fmt.Sprintf("s.json line 1: serial: item 2 is longer than %d bytes", protocol.MaxSerialLen)},
		{"long pledge", "p.csv", "type,item,qty,pledge\ndelivery,X,1," + strings.Repeat("P", protocol.MaxIDLen+1) + "\n",
			fmt.Sprintf("p.csv line 2: pledge: is longer than %d bytes", protocol.MaxIDLen)},
		{"long qty", "q.csv", "type,item,qty\ndelivery,X," + strings.Repeat("9", 100) + "\n",
			`q.csv line 2: qty: "9999999999999999999999999999999999999999"... is too large`},
		{"item too long", "l.json", `{"type": "delivery", "qty": 1, "item": "` + strings.Repeat("x", protocol.MaxTextLen+1) + `"}`,
			fmt.Sprintf("l.json line 1: item: is longer than %d bytes", protocol.MaxTextLen)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.file, strings.NewReader(tt.in))
			if err == nil || err.Error() != tt.want {
				t.Errorf("error\n got %v\nwant %s", err, tt.want)
			}
		})
	}
}

func TestParseQuotedSeparatorsAreNotColumns(t *testing.T) {
	// Separators inside quotes do not count against MaxFields.
	in := "type,item,qty,note\ndelivery,X,1,\"" + strings.Repeat(",", 10*MaxFields) + "\"\"" + strings.Repeat(",", 10) + "\"\n"
	got, err := Parse("q.csv", strings.NewReader(in))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if want := strings.Repeat(",", 10*MaxFields) + `"` + strings.Repeat(",", 10); got[0].Record.Note != want {
		t.Errorf("note = %q, want %q", got[0].Record.Note, want)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"type": "delivery", "item": "X", "qty": 1, "serial": ["A", "B"], "attach": "a.pdf"}`,
		`[{"type": "training", "course": "C", "date": "2025-01-02", "attendees": 3}]`,
		`{"type": "confirmation", "pledge": "P-1", "qty": 2, "qty_rejected": 1, "rejection": "short"}`,
		"type,item,qty,serial\ndelivery,X,1,A|B;C\n",
		"type;course;date;attendees\ntraining;C;2025-01-02;3\n",
		"type,item,qty\n\"delivery\",\"a \"\"b\"\"\",1\n",
		"[", "{", `{"qty": 1e400}`, "\xff\xfe", "\ufeff",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		for _, name := range []string{"f.json", "f.csv"} {
			entries, err := Parse(name, strings.NewReader(in))
			if err != nil {
				var pe *ParseError
				if !errors.As(err, &pe) {
					t.Fatalf("Parse(%s) error %v is %T, want *ParseError", name, err, err)
				}
				if msg := err.Error(); strings.ContainsAny(msg, "\r\n") || len(msg) > 2048 {
					t.Fatalf("Parse(%s) error is not one short line: %q", name, err)
				}
				continue
			}
			if len(entries) == 0 || len(entries) > MaxRecordsPerFile {
				t.Fatalf("Parse(%s) = %d entries", name, len(entries))
			}
			for i, e := range entries {
				r := e.Record
				if r.ID != "" || r.Seq != 0 || r.Agent != "" || r.Site != "" || !r.At.IsZero() {
					t.Fatalf("Parse(%s) entry %d has agent fields set: %+v", name, i, r)
				}
				r.ID = pendingID
				if err := r.Validate(); err != nil {
					t.Fatalf("Parse(%s) entry %d does not validate: %v", name, i, err)
				}
				if err := checkAttach(e.Attach); err != nil {
					t.Fatalf("Parse(%s) entry %d: %v", name, i, err)
				}
			}
		}
	})
}
