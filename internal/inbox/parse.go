package inbox

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"

	"fieldsync/protocol"
)

// Limits on a record file. Lengths and counts within a record are the
// protocol's (protocol.MaxTextLen, protocol.MaxSerials, ...).
const (
	MaxFileSize       = 16 << 20 // bytes in one record file
	MaxRecordsPerFile = 10000
	MaxFields         = 64 // columns of a CSV file, including empty ones
)

// pendingID stands in for the id that the agent gives a record when it
// stores it, so that protocol.Record.Validate can check the rest.
const pendingID = "PENDING"

// Entry is one record read from a record file.
type Entry struct {
	// Record has its Type and the fields of the file set. ID, Seq, Agent,
	// Site and At are left for the agent to fill in, and so are Attachments:
	// the files named in Attach become them.
	Record protocol.Record
	// Attach names the files in the inbox attached to the record.
	Attach []string
	// Line is where the record starts in its file, for messages.
	Line int
}

// ParseError says where a record file is wrong and why. Its Error is one
// line: "deliveries.csv line 4: qty: "three" is not a whole number".
type ParseError struct {
	File  string // the file's name
	Line  int    // 1-based line, 0 if the error is about the whole file
	Index int    // 1-based position of the record in a JSON array, else 0
	Field string // the field, "" if the error is not about one field
	Msg   string
}

func (e *ParseError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	switch {
	case e.Index > 0 && e.Line > 0:
		fmt.Fprintf(&b, " record %d, line %d", e.Index, e.Line)
	case e.Index > 0:
		fmt.Fprintf(&b, " record %d", e.Index)
	case e.Line > 0:
		fmt.Fprintf(&b, " line %d", e.Line)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// isRecordFile reports whether name is a record file rather than an
// attachment.
func isRecordFile(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".json", ".csv":
		return true
	}
	return false
}

// Parse reads the records of the record file name (a .json or .csv file)
// from r. It returns all of the file's records, or a *ParseError for the
// first thing wrong in it; an error reading r is returned wrapped.
func Parse(name string, r io.Reader) ([]Entry, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	fail := func(line int, msg string) error {
		return &ParseError{File: name, Line: line, Msg: msg}
	}
	if len(data) > MaxFileSize {
		return nil, fail(0, fmt.Sprintf("is larger than %d MiB; split it into smaller files", MaxFileSize>>20))
	}
	if bytes.HasPrefix(data, []byte{0xff, 0xfe}) || bytes.HasPrefix(data, []byte{0xfe, 0xff}) {
		return nil, fail(0, "is UTF-16 text; save it as UTF-8")
	}
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	if !utf8.Valid(data) {
		bad := 0
		for bad < len(data) {
			r, n := utf8.DecodeRune(data[bad:])
			if r == utf8.RuneError && n == 1 {
				break
			}
			bad += n
		}
		return nil, fail(lineAt(data, bad), `is not UTF-8 text; save it as UTF-8 (Excel: "CSV UTF-8")`)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fail(0, "is empty")
	}
	switch strings.ToLower(filepath.Ext(name)) {
	case ".json":
		return parseJSON(name, data)
	case ".csv":
		return parseCSV(name, data)
	}
	return nil, fail(0, "is not a record file (.json or .csv)")
}

// lineAt returns the 1-based line of the byte at offset off.
func lineAt(data []byte, off int) int {
	off = min(max(off, 0), len(data))
	return bytes.Count(data[:off], []byte("\n")) + 1
}

// fieldKind is what a field holds.
type fieldKind int

const (
	kindText  fieldKind = iota
	kindWhole           // a whole number
	kindList            // a list of text
)

// field is one field a record file may give.
type field struct {
	name  string
	kind  fieldKind
	types []protocol.RecordType // the record types it applies to; nil: all
	set   func(e *Entry, v value)
}

// value is a field's value as read from a file.
type value struct {
	text string
	num  int64
	list []string
}

var (
	delivery     = protocol.TypeDelivery
	training     = protocol.TypeTraining
	confirmation = protocol.TypeConfirmation
)

// fields are the fields of a record file, in the order in which a record is
// checked.
var fields = []field{
	{"type", kindText, nil, func(e *Entry, v value) {}},
	{"pledge", kindText, nil, func(e *Entry, v value) { e.Record.Pledge = v.text }},
	{"item", kindText, []protocol.RecordType{delivery}, func(e *Entry, v value) { e.Record.Item = v.text }},
	{"qty", kindWhole, []protocol.RecordType{delivery, confirmation}, func(e *Entry, v value) { e.Record.Qty = v.num }},
	{"qty_rejected", kindWhole, []protocol.RecordType{confirmation}, func(e *Entry, v value) { e.Record.QtyRejected = v.num }},
	{"rejection", kindText, []protocol.RecordType{confirmation}, func(e *Entry, v value) {
		e.Record.Rejection = protocol.RejectReason(strings.ToLower(v.text))
	}},
	{"serial", kindList, []protocol.RecordType{delivery, confirmation}, func(e *Entry, v value) { e.Record.Serials = v.list }},
	{"condition", kindText, []protocol.RecordType{delivery, confirmation}, func(e *Entry, v value) {
		e.Record.Condition = protocol.Condition(strings.ToLower(v.text))
	}},
	{"received_by", kindText, []protocol.RecordType{delivery, confirmation}, func(e *Entry, v value) { e.Record.ReceivedBy = v.text }},
	{"role", kindText, []protocol.RecordType{confirmation}, func(e *Entry, v value) { e.Record.Role = v.text }},
	{"waybill", kindText, []protocol.RecordType{confirmation}, func(e *Entry, v value) { e.Record.Waybill = v.text }},
	{"course", kindText, []protocol.RecordType{training}, func(e *Entry, v value) { e.Record.Course = v.text }},
	{"date", kindText, []protocol.RecordType{training}, func(e *Entry, v value) { e.Record.Date = v.text }},
	{"attendees", kindWhole, []protocol.RecordType{training}, func(e *Entry, v value) { e.Record.Attendees = v.num }},
	{"provider", kindText, []protocol.RecordType{training}, func(e *Entry, v value) { e.Record.Provider = v.text }},
	{"trainer", kindText, []protocol.RecordType{training}, func(e *Entry, v value) { e.Record.Trainer = v.text }},
	{"note", kindText, nil, func(e *Entry, v value) { e.Record.Note = v.text }},
	{"attach", kindList, []protocol.RecordType{delivery, confirmation}, func(e *Entry, v value) { e.Attach = v.list }},
}

// lookupField returns the field named name, after normalizeName.
func lookupField(name string) (*field, bool) {
	for i := range fields {
		if fields[i].name == name {
			return &fields[i], true
		}
	}
	return nil, false
}

// normalizeName reads "Received-By" and "received by" as "received_by".
func normalizeName(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	return strings.Map(func(r rune) rune {
		if r == '-' || r == ' ' {
			return '_'
		}
		return r
	}, s)
}

// likelyMeant maps names people use for a field (often the record's own JSON
// names) to the field.
var likelyMeant = map[string]string{
	"serials":     "serial",
	"serial_no":   "serial",
	"attachment":  "attach",
	"attachments": "attach",
	"quantity":    "qty",
	"receiver":    "received_by",
	"notes":       "note",
}

// unknownField says that name is not a field, and which one may have been
// meant.
func unknownField(name string) string {
	if f, ok := likelyMeant[normalizeName(name)]; ok {
		return fmt.Sprintf("unknown field %s; did you mean %s?", quote(name), f)
	}
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.name
	}
	return fmt.Sprintf("unknown field %s; the fields are %s", quote(name), strings.Join(names, ", "))
}

// build makes the entry of one record from its fields' values and checks it.
// A returned error is a *protocol.FieldError.
func build(vals map[string]value) (Entry, error) {
	t, ok := vals["type"]
	if !ok {
		return Entry{}, &protocol.FieldError{Field: "type", Msg: "missing; write delivery, training or confirmation"}
	}
	typ := protocol.RecordType(strings.ToLower(t.text))
	switch typ {
	case delivery, training, confirmation:
	default:
		return Entry{}, &protocol.FieldError{Field: "type", Msg: fmt.Sprintf("%s is not delivery, training or confirmation", quote(t.text))}
	}
	e := Entry{Record: protocol.Record{Type: typ}}
	for _, f := range fields {
		v, ok := vals[f.name]
		if !ok {
			continue
		}
		if f.types != nil && !containsType(f.types, typ) {
			return Entry{}, &protocol.FieldError{Field: f.name, Msg: fmt.Sprintf("does not apply to a %s", typ)}
		}
		if err := checkLen(&f, v); err != nil {
			return Entry{}, err
		}
		f.set(&e, v)
	}
	if err := checkAttach(e.Attach); err != nil {
		return Entry{}, err
	}
	e.Record.ID = pendingID
	err := e.Record.Validate()
	e.Record.ID = ""
	if err != nil {
		var fe *protocol.FieldError
		if errors.As(err, &fe) {
			return Entry{}, fe
		}
		return Entry{}, &protocol.FieldError{Field: "", Msg: err.Error()}
	}
	return e, nil
}

// Length limits of fields that protocol.Record.Validate quotes in its
// messages, so that they are checked first and a message stays short.
const maxShortLen = 64 // type, condition, rejection, date

// checkLen checks the length of a field's value, or of each item of a list.
func checkLen(f *field, v value) error {
	limit := protocol.MaxTextLen
	switch f.name {
	case "note":
		limit = protocol.MaxNoteLen
	case "pledge":
		limit = protocol.MaxIDLen
	case "type", "condition", "rejection", "date":
		limit = maxShortLen
	case "serial":
		limit = protocol.MaxSerialLen
	}
	if len(v.text) > limit {
		return &protocol.FieldError{Field: f.name, Msg: fmt.Sprintf("is longer than %d bytes", limit)}
	}
	for i, s := range v.list {
		if len(s) > limit {
			return &protocol.FieldError{Field: f.name, Msg: fmt.Sprintf("item %d is longer than %d bytes", i+1, limit)}
		}
	}
	return nil
}

// quote quotes a value from a file for a message, shortened if it is long.
func quote(s string) string {
	const max = 40
	if len(s) <= max {
		return strconv.Quote(s)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "..."
}

func containsType(types []protocol.RecordType, t protocol.RecordType) bool {
	for _, x := range types {
		if x == t {
			return true
		}
	}
	return false
}

// checkAttach checks that the attachment names are names of files the inbox
// takes as attachments.
func checkAttach(names []string) error {
	if len(names) > protocol.MaxAttachments {
		return &protocol.FieldError{Field: "attach", Msg: fmt.Sprintf("at most %d attachments per record, got %d", protocol.MaxAttachments, len(names))}
	}
	seen := make(map[string]bool, len(names))
	for _, n := range names {
		bad := func(why string) error {
			return &protocol.FieldError{Field: "attach", Msg: fmt.Sprintf("%s %s", quote(n), why)}
		}
		switch {
		case n == "" || n == "." || n == "..":
			return bad("is not a file name")
		case strings.ContainsAny(n, `/\:`):
			return bad("is not a file name in the inbox (no folders)")
		case strings.ContainsFunc(n, func(r rune) bool { return r < 0x20 || r == 0x7f }):
			return bad("contains a control character")
		case ignored(n):
			return bad("is a name the inbox ignores (temporary or hidden files)")
		case isRecordFile(n):
			return bad("is a record file (.json, .csv), not an attachment; rename it, e.g. to " + n + ".txt")
		case seen[n]:
			return bad("is named twice")
		}
		seen[n] = true
	}
	return nil
}

// parseWhole reads a whole number, allowing a zero fraction ("3.00") as
// spreadsheets write it.
func parseWhole(s string) (int64, string) {
	t := strings.TrimSpace(s)
	if i := strings.IndexByte(t, '.'); i > 0 && strings.Trim(t[i+1:], "0") == "" {
		t = t[:i]
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if errors.Is(err, strconv.ErrRange) {
		return 0, fmt.Sprintf("%s is too large", quote(s))
	}
	if err != nil {
		return 0, fmt.Sprintf("%s is not a whole number", quote(s))
	}
	return n, ""
}

// listMax is the most items a list field may hold.
func listMax(name string) (int, string) {
	if name == "attach" {
		return protocol.MaxAttachments, "attachments"
	}
	return protocol.MaxSerials, "serial numbers"
}

// jsonParser reads a JSON record file.
type jsonParser struct {
	name  string
	data  []byte
	dec   *json.Decoder
	index int // 1-based record number in an array, 0 for a single object

	// The line at byte offset lineOff, so that lines are counted once even
	// for a file of many records (offsets only grow).
	lineOff, line int
}

// lineAt returns the 1-based line of the byte at offset off.
func (p *jsonParser) lineAt(off int64) int {
	o := min(max(int(off), 0), len(p.data))
	if o < p.lineOff {
		return lineAt(p.data, o)
	}
	p.line += bytes.Count(p.data[p.lineOff:o], []byte("\n"))
	p.lineOff = o
	return p.line
}

func parseJSON(name string, data []byte) ([]Entry, error) {
	p := &jsonParser{name: name, data: data, dec: json.NewDecoder(bytes.NewReader(data)), line: 1}
	p.dec.UseNumber()
	tok, err := p.dec.Token()
	if err != nil {
		return nil, p.syntax(err)
	}
	var entries []Entry
	switch tok {
	case json.Delim('{'):
		e, err := p.object()
		if err != nil {
			return nil, err
		}
		entries = append(entries, e)
	case json.Delim('['):
		for p.dec.More() {
			p.index++
			if p.index > MaxRecordsPerFile {
				return nil, p.errAt(p.dec.InputOffset(), "", fmt.Sprintf("more than %d records; split the file", MaxRecordsPerFile))
			}
			tok, err := p.dec.Token()
			if err != nil {
				return nil, p.syntax(err)
			}
			if tok != json.Delim('{') {
				return nil, p.errAt(p.dec.InputOffset(), "", "is not a JSON object {...}")
			}
			e, err := p.object()
			if err != nil {
				return nil, err
			}
			entries = append(entries, e)
		}
		if _, err := p.dec.Token(); err != nil { // ']'
			return nil, p.syntax(err)
		}
		if len(entries) == 0 {
			return nil, &ParseError{File: name, Msg: "holds no records"}
		}
	default:
		return nil, &ParseError{File: name, Line: lineAt(data, int(p.dec.InputOffset())), Msg: "must hold a JSON object {...} or an array of them [{...}, ...]"}
	}
	p.index = 0
	if _, err := p.dec.Token(); err != io.EOF {
		if err != nil {
			return nil, p.syntax(err)
		}
		return nil, p.errAt(p.dec.InputOffset(), "", "has more after the end of its JSON value; put several records in one array [{...}, {...}]")
	}
	return entries, nil
}

// errAt returns a *ParseError at byte offset off.
func (p *jsonParser) errAt(off int64, field, msg string) error {
	return &ParseError{File: p.name, Line: p.lineAt(off), Index: p.index, Field: field, Msg: msg}
}

// syntax turns an error of the JSON decoder into a *ParseError.
func (p *jsonParser) syntax(err error) error {
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		return p.errAt(se.Offset, "", "invalid JSON: "+se.Error())
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return p.errAt(int64(len(p.data)), "", "the file ends in the middle of its JSON; it may be cut short")
	}
	return p.errAt(p.dec.InputOffset(), "", "invalid JSON: "+err.Error())
}

// object reads the members of an object whose '{' was just read, and the
// closing '}'.
func (p *jsonParser) object() (Entry, error) {
	start := p.dec.InputOffset()
	vals := make(map[string]value)
	seen := make(map[string]int64) // field → offset of its key
	for p.dec.More() {
		tok, err := p.dec.Token()
		if err != nil {
			return Entry{}, p.syntax(err)
		}
		key, _ := tok.(string) // the decoder returns only strings as keys
		off := p.dec.InputOffset()
		name := normalizeName(key)
		f, ok := lookupField(name)
		if !ok {
			return Entry{}, p.errAt(off, "", unknownField(key))
		}
		if _, dup := seen[name]; dup {
			return Entry{}, p.errAt(off, name, "given twice")
		}
		seen[name] = off
		v, present, err := p.value(f, off)
		if err != nil {
			return Entry{}, err
		}
		if present {
			vals[name] = v
		}
	}
	if _, err := p.dec.Token(); err != nil { // '}'
		return Entry{}, p.syntax(err)
	}
	e, err := build(vals)
	if err != nil {
		fe := err.(*protocol.FieldError)
		off, ok := seen[fe.Field]
		if !ok {
			off = start
		}
		return Entry{}, p.errAt(off, fe.Field, fe.Msg)
	}
	e.Line = p.lineAt(start)
	return e, nil
}

// value reads the value of field f, whose key ends at offset off. A null, an
// empty string or an empty list is a field left out: present is false.
func (p *jsonParser) value(f *field, off int64) (v value, present bool, err error) {
	tok, err := p.dec.Token()
	if err != nil {
		return value{}, false, p.syntax(err)
	}
	if tok == nil {
		return value{}, false, nil
	}
	wrong := func(want string) (value, bool, error) {
		var got string
		switch t := tok.(type) {
		case string:
			got = "text " + quote(t)
		case json.Number:
			got = "the number " + t.String()
		case bool:
			got = strconv.FormatBool(t)
		case json.Delim:
			if t == '[' {
				got = "a list"
			} else {
				got = "an object"
			}
		}
		return value{}, false, p.errAt(off, f.name, fmt.Sprintf("must be %s, got %s", want, got))
	}
	switch f.kind {
	case kindText:
		s, ok := tok.(string)
		if !ok {
			return wrong(`text in quotes`)
		}
		return value{text: s}, s != "", nil
	case kindWhole:
		n, ok := tok.(json.Number)
		if !ok {
			return wrong("a whole number without quotes")
		}
		num, msg := parseWhole(n.String())
		if msg != "" {
			return value{}, false, p.errAt(off, f.name, msg)
		}
		return value{num: num}, true, nil
	}
	// kindList: a list of text, or one text.
	if s, ok := tok.(string); ok {
		return value{list: []string{s}}, s != "", nil
	}
	if tok != json.Delim('[') {
		return wrong(`a list of text ["...", "..."] or one text in quotes`)
	}
	limit, what := listMax(f.name)
	var list []string
	for p.dec.More() {
		tok, err := p.dec.Token()
		if err != nil {
			return value{}, false, p.syntax(err)
		}
		s, ok := tok.(string)
		if !ok {
			return value{}, false, p.errAt(off, f.name, fmt.Sprintf("item %d must be text in quotes", len(list)+1))
		}
		if len(list) == limit {
			return value{}, false, p.errAt(off, f.name, fmt.Sprintf("at most %d %s per record", limit, what))
		}
		list = append(list, s)
	}
	if _, err := p.dec.Token(); err != nil { // ']'
		return value{}, false, p.syntax(err)
	}
	return value{list: list}, len(list) > 0, nil
}

// parseCSV reads a CSV record file.
func parseCSV(name string, data []byte) ([]Entry, error) {
	fail := func(line int, field, msg string) error {
		return &ParseError{File: name, Line: line, Field: field, Msg: msg}
	}
	comma := sniffComma(data)
	if line, ok := checkColumns(data, comma); !ok {
		return nil, fail(line, "", fmt.Sprintf("has more than %d columns", MaxFields))
	}
	cr := csv.NewReader(bytes.NewReader(data))
	cr.Comma = comma
	cr.FieldsPerRecord = -1 // checked below, with a better message
	header, err := cr.Read()
	if err != nil {
		return nil, csvErr(name, err)
	}
	headerLine, _ := cr.FieldPos(0)
	cols := make([]*field, len(header))
	hasType := false
	for i, h := range header {
		n := normalizeName(h)
		if n == "" {
			continue // a column without a name must stay empty; see below
		}
		f, ok := lookupField(n)
		if !ok {
			return nil, fail(headerLine, "", unknownField(strings.TrimSpace(h)))
		}
		for _, c := range cols[:i] {
			if c == f {
				return nil, fail(headerLine, n, "column given twice")
			}
		}
		cols[i] = f
		hasType = hasType || n == "type"
	}
	if !hasType {
		return nil, fail(headerLine, "", "the header row has no type column; add one (delivery, training or confirmation)")
	}

	var entries []Entry
	for {
		row, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, csvErr(name, err)
		}
		line, _ := cr.FieldPos(0)
		if isBlank(row) {
			continue
		}
		if len(row) < len(cols) || !isBlank(row[len(cols):]) {
			return nil, fail(line, "", fmt.Sprintf("has %d fields, the header row has %d", len(row), len(cols)))
		}
		if len(entries) == MaxRecordsPerFile {
			return nil, fail(line, "", fmt.Sprintf("more than %d records; split the file", MaxRecordsPerFile))
		}
		vals := make(map[string]value)
		for i, f := range cols {
			cell := strings.TrimSpace(row[i])
			if cell == "" {
				continue
			}
			if f == nil {
				return nil, fail(line, "", fmt.Sprintf("column %d has a value but no name in the header row", i+1))
			}
			switch f.kind {
			case kindText:
				vals[f.name] = value{text: cell}
			case kindWhole:
				n, msg := parseWhole(cell)
				if msg != "" {
					return nil, fail(line, f.name, msg)
				}
				vals[f.name] = value{num: n}
			case kindList:
				list, msg := splitList(f.name, cell)
				if msg != "" {
					return nil, fail(line, f.name, msg)
				}
				if len(list) > 0 {
					vals[f.name] = value{list: list}
				}
			}
		}
		e, err := build(vals)
		if err != nil {
			fe := err.(*protocol.FieldError)
			return nil, fail(line, fe.Field, fe.Msg)
		}
		e.Line = line
		entries = append(entries, e)
	}
	if len(entries) == 0 {
		return nil, fail(0, "", "has a header row but no records below it")
	}
	return entries, nil
}

// sniffComma returns the separator of a CSV file: a comma, unless the header
// row has semicolons (or tabs) and no comma.
func sniffComma(data []byte) rune {
	header := bytes.TrimLeft(data, "\r\n")
	if i := bytes.IndexByte(header, '\n'); i >= 0 {
		header = header[:i]
	}
	switch {
	case bytes.IndexByte(header, ',') >= 0:
		return ','
	case bytes.IndexByte(header, ';') >= 0:
		return ';'
	case bytes.IndexByte(header, '\t') >= 0:
		return '\t'
	}
	return ','
}

// checkColumns reports the line of the first row of data with more than
// MaxFields columns, before encoding/csv splits it (a row of a million
// separators would cost a million strings).
func checkColumns(data []byte, comma rune) (line int, ok bool) {
	const (
		fieldStart = iota
		unquoted
		quoted
		quoteInQuoted // a '"' in a quoted field: its end, or the first of ""
	)
	sep := byte(comma)
	state, n := fieldStart, 1
	line, rowLine := 1, 1
	for _, c := range data {
		if c == '\n' {
			line++
			if state != quoted {
				state, n, rowLine = fieldStart, 1, line
			}
			continue
		}
		switch state {
		case fieldStart, unquoted:
			switch {
			case c == '"' && state == fieldStart:
				state = quoted
			case c == sep:
				state = fieldStart
				n++
			default:
				state = unquoted
			}
		case quoted:
			if c == '"' {
				state = quoteInQuoted
			}
		case quoteInQuoted:
			switch c {
			case '"':
				state = quoted
			case sep:
				state = fieldStart
				n++
			default:
				state = unquoted
			}
		}
		if n > MaxFields {
			return rowLine, false
		}
	}
	return 0, true
}

// splitList splits a CSV cell holding a list at ";" and "|", dropping empty
// items.
func splitList(name, cell string) ([]string, string) {
	limit, what := listMax(name)
	var list []string
	for cell != "" {
		i := strings.IndexAny(cell, ";|")
		item := cell
		if i >= 0 {
			item, cell = cell[:i], cell[i+1:]
		} else {
			cell = ""
		}
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		if len(list) == limit {
			return nil, fmt.Sprintf("at most %d %s per record", limit, what)
		}
		list = append(list, item)
	}
	return list, ""
}

func isBlank(cells []string) bool {
	for _, c := range cells {
		if strings.TrimSpace(c) != "" {
			return false
		}
	}
	return true
}

// csvErr turns an error of encoding/csv into a *ParseError.
func csvErr(name string, err error) error {
	var pe *csv.ParseError
	if !errors.As(err, &pe) {
		return &ParseError{File: name, Msg: err.Error()}
	}
	msg := pe.Err.Error()
	switch {
	case errors.Is(pe.Err, csv.ErrBareQuote):
		msg = `a " inside a field that does not start with "; put the whole field in quotes and write the " inside as ""`
	case errors.Is(pe.Err, csv.ErrQuote):
		msg = `a quoted field is not closed, or has text after its closing "; the file may be cut short`
	}
	return &ParseError{File: name, Line: pe.Line, Msg: msg}
}
