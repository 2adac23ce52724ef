package protocol

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// Fast JSON for records. A bundle carries each record as its canonical JSON
// (what json.Marshal writes), and the hub's ledger logs and reloads records
// as JSON too; at hundreds of thousands of records per second,
// encoding/json's reflection would be most of the work. The two functions
// here do the same for the JSON that records almost always are, and say
// "not mine" (ok false) for anything else: a string that needs an escape, a
// field this code does not know, a number in another form. The caller then
// uses encoding/json, so a result never depends on which path ran; tests and
// fuzz targets hold both paths to encoding/json's results.

// AppendRecordJSON appends the JSON of r to b, byte for byte what
// json.Marshal(r) writes, and reports true; or, if a string of r needs an
// escape (a quote, a backslash, a control character, <, >, &, U+2028,
// U+2029, invalid UTF-8) or r.At has no RFC 3339 form, returns b unchanged
// and false. With no escapes, the output is also what a json.Encoder with
// HTML escaping off writes.
func AppendRecordJSON(b []byte, r *Record) ([]byte, bool) {
	start := len(b)
	ok := true
	str := func(key, v string, always bool) {
		if v == "" && !always {
			return
		}
		if !plainJSON(v) {
			ok = false
			return
		}
		b = append(b, ',', '"')
		b = append(b, key...)
		b = append(b, '"', ':', '"')
		b = append(b, v...)
		b = append(b, '"')
	}
	num := func(key string, v int64) {
		if v != 0 {
			b = append(b, ',', '"')
			b = append(b, key...)
			b = append(b, '"', ':')
			b = strconv.AppendInt(b, v, 10)
		}
	}
	if !plainJSON(r.ID) {
		return b, false
	}
	b = append(b, `{"id":"`...)
	b = append(b, r.ID...)
	b = append(b, `","seq":`...)
	b = strconv.AppendUint(b, r.Seq, 10)
	str("agent", r.Agent, false)
	str("site", r.Site, false)
	str("type", string(r.Type), true)
	at, err := r.At.MarshalJSON()
	if err != nil {
		return b[:start], false
	}
	b = append(b, `,"at":`...)
	b = append(b, at...)
	str("pledge", r.Pledge, false)
	str("target", r.Target, false)
	str("item", r.Item, false)
	num("qty", r.Qty)
	num("qty_rejected", r.QtyRejected)
	str("rejection", string(r.Rejection), false)
	if len(r.Serials) > 0 {
		b = append(b, `,"serials":[`...)
		for i, s := range r.Serials {
			if !plainJSON(s) {
				return b[:start], false
			}
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '"')
			b = append(b, s...)
			b = append(b, '"')
		}
		b = append(b, ']')
	}
	str("condition", string(r.Condition), false)
	str("received_by", r.ReceivedBy, false)
	str("role", r.Role, false)
	str("waybill", r.Waybill, false)
	str("course", r.Course, false)
	str("date", r.Date, false)
	num("attendees", r.Attendees)
	str("provider", r.Provider, false)
	str("trainer", r.Trainer, false)
	str("note", r.Note, false)
	str("reason", r.Reason, false)
	if len(r.Attachments) > 0 {
		b = append(b, `,"attachments":[`...)
		for i, a := range r.Attachments {
			if !plainJSON(a.Name) || !plainJSON(a.SHA256) {
				return b[:start], false
			}
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"name":"`...)
			b = append(b, a.Name...)
			b = append(b, `","sha256":"`...)
			b = append(b, a.SHA256...)
			b = append(b, `","size":`...)
			b = strconv.AppendInt(b, a.Size, 10)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if !ok {
		return b[:start], false
	}
	return append(b, '}'), true
}

// plainJSON reports whether s is written as it is inside a JSON string, by
// json.Marshal and by an encoder with HTML escaping off alike.
func plainJSON(s string) bool {
	ascii := true
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		case c >= utf8.RuneSelf:
			ascii = false
			// U+2028 and U+2029 are escaped; both start E2 80.
			if c == 0xE2 && i+2 < len(s) && s[i+1] == 0x80 && (s[i+2] == 0xA8 || s[i+2] == 0xA9) {
				return false
			}
		}
	}
	return ascii || utf8.ValidString(s)
}

// DecodeRecordJSON decodes the JSON of a Record into r, which should be the
// zero Record, as encoding/json would, and reports true; or reports false,
// leaving r in no particular state, for JSON outside what it knows: white
// space, escapes or control characters in strings, a number that is not a
// plain integer, null, a repeated or unknown field. Given intern, it passes
// the strings of fields whose values repeat across records (agent, site,
// type, item, names and the like) through it, so that equal ones can share
// memory.
//
// It does not check that data is canonical or that r is valid; a reader of
// a bundle checks both.
func DecodeRecordJSON(data []byte, r *Record, intern func([]byte) string) bool {
	d := recordDecoder{data: data, intern: intern}
	if !d.consume('{') {
		return false
	}
	if d.consume('}') {
		return d.end()
	}
	for {
		key, ok := d.rawString()
		if !ok || !d.consume(':') {
			return false
		}
		if !d.field(r, key) {
			return false
		}
		if d.consume(',') {
			continue
		}
		if d.consume('}') {
			return d.end()
		}
		return false
	}
}

type recordDecoder struct {
	data   []byte
	pos    int
	seen   uint64 // fields decoded so far, by their place in recordFields
	intern func([]byte) string
}

func (d *recordDecoder) field(r *Record, key []byte) bool {
	var ok bool
	var f uint // the field's bit in d.seen
	// The switch on string(key) does not allocate.
	switch string(key) {
	case "id":
		f = 0
		r.ID, ok = d.str(false)
	case "seq":
		f = 1
		r.Seq, ok = d.uint()
	case "agent":
		f = 2
		r.Agent, ok = d.str(true)
	case "site":
		f = 3
		r.Site, ok = d.str(true)
	case "type":
		f = 4
		var s string
		s, ok = d.str(true)
		r.Type = RecordType(s)
	case "at":
		f = 5
		ok = d.time(&r.At)
	case "pledge":
		f = 6
		r.Pledge, ok = d.str(true)
	case "target":
		f = 7
		r.Target, ok = d.str(false)
	case "item":
		f = 8
		r.Item, ok = d.str(true)
	case "qty":
		f = 9
		r.Qty, ok = d.int()
	case "qty_rejected":
		f = 10
		r.QtyRejected, ok = d.int()
	case "rejection":
		f = 11
		var s string
		s, ok = d.str(true)
		r.Rejection = RejectReason(s)
	case "serials":
		f = 12
		r.Serials, ok = d.strings()
	case "condition":
		f = 13
		var s string
		s, ok = d.str(true)
		r.Condition = Condition(s)
	case "received_by":
		f = 14
		r.ReceivedBy, ok = d.str(true)
	case "role":
		f = 15
		r.Role, ok = d.str(true)
	case "waybill":
		f = 16
		r.Waybill, ok = d.str(false)
	case "course":
		f = 17
		r.Course, ok = d.str(true)
	case "date":
		f = 18
		r.Date, ok = d.str(true)
	case "attendees":
		f = 19
		r.Attendees, ok = d.int()
	case "provider":
		f = 20
		r.Provider, ok = d.str(true)
	case "trainer":
		f = 21
		r.Trainer, ok = d.str(true)
	case "note":
		f = 22
		r.Note, ok = d.str(false)
	case "reason":
		f = 23
		r.Reason, ok = d.str(false)
	case "attachments":
		f = 24
		r.Attachments, ok = d.attachments()
	default:
		return false
	}
	// encoding/json lets a repeated field overwrite the first in ways not
	// worth imitating; the encoder never repeats one.
	if !ok || d.seen&(1<<f) != 0 {
		return false
	}
	d.seen |= 1 << f
	return true
}

// recordFields are the JSON names decodeRecord knows; a test checks them
// against Record.
var recordFields = []string{
	"id", "seq", "agent", "site", "type", "at", "pledge", "target", "item", "qty",
	"qty_rejected", "rejection", "serials", "condition", "received_by", "role",
	"waybill", "course", "date", "attendees", "provider", "trainer", "note",
	"reason", "attachments",
}

func (d *recordDecoder) consume(c byte) bool {
	if d.pos < len(d.data) && d.data[d.pos] == c {
		d.pos++
		return true
	}
	return false
}

// end reports whether the input is used up (encoding/json allows trailing
// spaces; this decoder leaves them to it).
func (d *recordDecoder) end() bool { return d.pos == len(d.data) }

// rawString returns the bytes of a JSON string without escapes, control
// characters or invalid UTF-8, the cases where encoding/json would change
// them.
func (d *recordDecoder) rawString() ([]byte, bool) {
	if !d.consume('"') {
		return nil, false
	}
	start := d.pos
	ascii := true
	for ; d.pos < len(d.data); d.pos++ {
		c := d.data[d.pos]
		switch {
		case c == '"':
			s := d.data[start:d.pos]
			d.pos++
			if !ascii && !utf8.Valid(s) {
				return nil, false
			}
			return s, true
		case c == '\\' || c < 0x20:
			return nil, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return nil, false
}

// str returns the next string; through intern if it is one of the fields
// whose values repeat across records (shared).
func (d *recordDecoder) str(shared bool) (string, bool) {
	b, ok := d.rawString()
	if !ok {
		return "", false
	}
	if shared && d.intern != nil {
		return d.intern(b), true
	}
	return string(b), true
}

// digits returns the digits of a JSON integer without sign, leading zero
// or fraction, at most 19 of them so that they fit an int64.
func (d *recordDecoder) digits() ([]byte, bool) {
	start := d.pos
	for d.pos < len(d.data) && d.data[d.pos] >= '0' && d.data[d.pos] <= '9' {
		d.pos++
	}
	n := d.data[start:d.pos]
	if len(n) == 0 || len(n) > 19 || (n[0] == '0' && len(n) > 1) {
		return nil, false
	}
	if d.pos < len(d.data) && (d.data[d.pos] == '.' || d.data[d.pos] == 'e' || d.data[d.pos] == 'E') {
		return nil, false
	}
	return n, true
}

func (d *recordDecoder) uint() (uint64, bool) {
	n, ok := d.digits()
	if !ok {
		return 0, false
	}
	var v uint64
	for _, c := range n {
		v = v*10 + uint64(c-'0')
	}
	return v, true
}

func (d *recordDecoder) int() (int64, bool) {
	neg := d.consume('-')
	v, ok := d.uint()
	if !ok || v > 1<<63-1 {
		return 0, false
	}
	if neg {
		return -int64(v), true
	}
	return int64(v), true
}

func (d *recordDecoder) time(t *time.Time) bool {
	start := d.pos
	if _, ok := d.rawString(); !ok {
		return false
	}
	// time.Time's own decoder, so the result is exactly encoding/json's.
	return t.UnmarshalJSON(d.data[start:d.pos]) == nil
}

func (d *recordDecoder) strings() ([]string, bool) {
	if !d.consume('[') {
		return nil, false
	}
	out := []string{}
	if d.consume(']') {
		return out, true
	}
	for {
		s, ok := d.str(false)
		if !ok {
			return nil, false
		}
		out = append(out, s)
		if d.consume(',') {
			continue
		}
		return out, d.consume(']')
	}
}

func (d *recordDecoder) attachments() ([]Attachment, bool) {
	if !d.consume('[') {
		return nil, false
	}
	out := []Attachment{}
	if d.consume(']') {
		return out, true
	}
	for {
		var a Attachment
		if !d.consume('{') {
			return nil, false
		}
		if !d.consume('}') {
			for {
				key, ok := d.rawString()
				if !ok || !d.consume(':') {
					return nil, false
				}
				switch string(key) {
				case "name":
					a.Name, ok = d.str(false)
				case "sha256":
					a.SHA256, ok = d.str(false)
				case "size":
					a.Size, ok = d.int()
				default:
					ok = false
				}
				if !ok {
					return nil, false
				}
				if d.consume(',') {
					continue
				}
				if d.consume('}') {
					break
				}
				return nil, false
			}
		}
		out = append(out, a)
		if d.consume(',') {
			continue
		}
		return out, d.consume(']')
	}
}
