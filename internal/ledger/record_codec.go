package ledger

import (
	"time"
	"unicode/utf8"

	"fieldsync/protocol"
)

// decodeRecord decodes the JSON of a protocol.Record, as encoding/json
// would, several times faster: loading a ledger is mostly decoding records.
// It understands the JSON that objectEncoder writes: no spaces, no escapes
// in strings, integers only, the fields of protocol.Record and nothing
// else. For anything outside that (an escaped quote in a note, a field
// added to protocol.Record that this decoder does not know yet, null) it
// returns ok false, and the caller decodes with encoding/json instead, so
// the result never depends on which path ran. Strings that repeat across
// records go through in.
func decodeRecord(data []byte, in *interner) (r *protocol.Record, ok bool) {
	d := recordDecoder{data: data}
	r = new(protocol.Record)
	if !d.consume('{') {
		return nil, false
	}
	if d.consume('}') {
		return r, d.end()
	}
	for {
		key, ok := d.rawString()
		if !ok || !d.consume(':') {
			return nil, false
		}
		if !d.field(r, key, in) {
			return nil, false
		}
		if d.consume(',') {
			continue
		}
		if d.consume('}') {
			return r, d.end()
		}
		return nil, false
	}
}

type recordDecoder struct {
	data []byte
	pos  int
	seen uint64 // fields decoded so far, by their place in recordFields
}

func (d *recordDecoder) field(r *protocol.Record, key []byte, in *interner) bool {
	var ok bool
	var f uint // the field's bit in d.seen
	// The switch on string(key) does not allocate.
	switch string(key) {
	case "id":
		f = 0
		r.ID, ok = d.str(nil)
	case "seq":
		f = 1
		r.Seq, ok = d.uint()
	case "agent":
		f = 2
		r.Agent, ok = d.str(in)
	case "site":
		f = 3
		r.Site, ok = d.str(in)
	case "type":
		f = 4
		var s string
		s, ok = d.str(in)
		r.Type = protocol.RecordType(s)
	case "at":
		f = 5
		ok = d.time(&r.At)
	case "pledge":
		f = 6
		r.Pledge, ok = d.str(in)
	case "target":
		f = 7
		r.Target, ok = d.str(nil)
	case "item":
		f = 8
		r.Item, ok = d.str(in)
	case "qty":
		f = 9
		r.Qty, ok = d.int()
	case "qty_rejected":
		f = 10
		r.QtyRejected, ok = d.int()
	case "rejection":
		f = 11
		var s string
		s, ok = d.str(in)
		r.Rejection = protocol.RejectReason(s)
	case "serials":
		f = 12
		r.Serials, ok = d.strings()
	case "condition":
		f = 13
		var s string
		s, ok = d.str(in)
		r.Condition = protocol.Condition(s)
	case "received_by":
		f = 14
		r.ReceivedBy, ok = d.str(in)
	case "role":
		f = 15
		r.Role, ok = d.str(in)
	case "waybill":
		f = 16
		r.Waybill, ok = d.str(nil)
	case "course":
		f = 17
		r.Course, ok = d.str(in)
	case "date":
		f = 18
		r.Date, ok = d.str(in)
	case "attendees":
		f = 19
		r.Attendees, ok = d.int()
	case "provider":
		f = 20
		r.Provider, ok = d.str(in)
	case "trainer":
		f = 21
		r.Trainer, ok = d.str(in)
	case "note":
		f = 22
		r.Note, ok = d.str(nil)
	case "reason":
		f = 23
		r.Reason, ok = d.str(nil)
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
// against protocol.Record.
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

func (d *recordDecoder) str(in *interner) (string, bool) {
	b, ok := d.rawString()
	if !ok {
		return "", false
	}
	if in != nil {
		return in.bytes(b), true
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
		s, ok := d.str(nil)
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

func (d *recordDecoder) attachments() ([]protocol.Attachment, bool) {
	if !d.consume('[') {
		return nil, false
	}
	out := []protocol.Attachment{}
	if d.consume(']') {
		return out, true
	}
	for {
		var a protocol.Attachment
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
					a.Name, ok = d.str(nil)
				case "sha256":
					a.SHA256, ok = d.str(nil)
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
