package ledger

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/hashicorp/go-memdb"

	"fieldsync/protocol"
)

// A log entry holds the changes of one Write; a snapshot entry holds a
// chunk of the state, as puts. Both use one format, version 1:
//
//	entry  = version change...
//	version= 0x01
//	change = op table object
//	op     = 'P' (put: insert or replace) | 'D' (delete)
//	table  = uvarint length, then the table name
//	object = uvarint length, then the JSON of the table's object type
//
// Objects stay JSON, so a log written by one version of the program reads
// in the next even when protocol.Record gains fields; the framing around
// them is binary so that a change is decoded in one pass. Entries written
// before version 1 (a JSON array of {"t":table,"d":delete,"o":object}, and
// snapshot entries holding one such object) still decode.
const (
	entryVersion = 0x01
	opPut        = 'P'
	opDelete     = 'D'
)

// snapshotChunk is the size after which a snapshot entry is closed and the
// next begins: big enough that framing costs nothing, small enough that a
// reader holds little.
const snapshotChunk = 64 << 10

// change is one decoded change: obj is a fresh object of the table's type,
// and for a record, raw is the JSON it was decoded from.
type change struct {
	table string
	del   bool
	obj   any
	raw   []byte
}

// appendChange appends the encoding of one change to an entry. An empty
// entry gets the version byte first.
func appendChange(entry []byte, table string, del bool, obj []byte) []byte {
	if len(entry) == 0 {
		entry = append(entry, entryVersion)
	}
	op := byte(opPut)
	if del {
		op = opDelete
	}
	entry = append(entry, op)
	entry = binary.AppendUvarint(entry, uint64(len(table)))
	entry = append(entry, table...)
	entry = binary.AppendUvarint(entry, uint64(len(obj)))
	return append(entry, obj...)
}

// errEntry reports an entry that does not decode. The log's checksums make
// this a bug or a version mismatch rather than damage.
var errEntry = errors.New("malformed ledger entry")

// decodeEntry decodes every change of an entry, in order, and calls fn
// with each.
func decodeEntry(data []byte, in *interner, fn func(change) error) error {
	if len(data) == 0 {
		return fmt.Errorf("%w: empty", errEntry)
	}
	switch data[0] {
	case entryVersion:
	case '[', '{':
		return decodeLegacy(data, in, fn)
	default:
		return fmt.Errorf("%w: unknown version %#x", errEntry, data[0])
	}
	p := data[1:]
	for len(p) > 0 {
		op := p[0]
		if op != opPut && op != opDelete {
			return fmt.Errorf("%w: unknown change %#x", errEntry, op)
		}
		table, rest, err := readBytes(p[1:])
		if err != nil {
			return err
		}
		obj, rest, err := readBytes(rest)
		if err != nil {
			return err
		}
		p = rest
		c, err := decodeChange(string(table), op == opDelete, obj, in)
		if err != nil {
			return err
		}
		if err := fn(c); err != nil {
			return err
		}
	}
	return nil
}

func readBytes(p []byte) (b, rest []byte, err error) {
	n, k := binary.Uvarint(p)
	if k <= 0 || n > uint64(len(p)-k) {
		return nil, nil, fmt.Errorf("%w: field overruns the entry", errEntry)
	}
	return p[k : k+int(n)], p[k+int(n):], nil
}

// legacyPut is one change in the JSON entries written before version 1.
type legacyPut struct {
	Table  string          `json:"t"`
	Delete bool            `json:"d,omitempty"`
	Obj    json.RawMessage `json:"o"`
}

func decodeLegacy(data []byte, in *interner, fn func(change) error) error {
	var puts []legacyPut
	if data[0] == '{' {
		puts = make([]legacyPut, 1)
		if err := json.Unmarshal(data, &puts[0]); err != nil {
			return fmt.Errorf("decode change: %w", err)
		}
	} else if err := json.Unmarshal(data, &puts); err != nil {
		return fmt.Errorf("decode log entry: %w", err)
	}
	for _, p := range puts {
		c, err := decodeChange(p.Table, p.Delete, p.Obj, in)
		if err != nil {
			return err
		}
		if err := fn(c); err != nil {
			return err
		}
	}
	return nil
}

// decodeChange decodes the object of a change into a fresh object of its
// table's type. Records, by far the most numerous, take a fast path.
func decodeChange(table string, del bool, data []byte, in *interner) (change, error) {
	c := change{table: tableName(table), del: del}
	if c.table == TableRecords {
		c.raw = data
		if r, ok := decodeRecord(data, in); ok {
			c.obj = r
			return c, nil
		}
	}
	obj, ok := newObject(c.table)
	if !ok {
		return c, fmt.Errorf("change names unknown table %q", table)
	}
	if err := json.Unmarshal(data, obj); err != nil {
		return c, fmt.Errorf("decode %s object: %w", table, err)
	}
	c.obj = obj
	return c, nil
}

// tableName returns the constant for a table name, so that a decoded name
// is not kept in memory once per change.
func tableName(s string) string {
	switch s {
	case TableRecords:
		return TableRecords
	case TablePledges:
		return TablePledges
	case TableBundles:
		return TableBundles
	case TableAgents:
		return TableAgents
	case TableSites:
		return TableSites
	case TableEnrolments:
		return TableEnrolments
	case TableFeedback:
		return TableFeedback
	case TableMeta:
		return TableMeta
	}
	return s
}

// applyChange applies one decoded change to a table other than records
// (see Txn.addRecord and load for those). It is the only place the other
// tables change, for live writes, replay and snapshot loading alike; it
// uses no clock and no randomness.
func applyChange(txn *memdb.Txn, c change) error {
	if c.del {
		if err := txn.Delete(c.table, c.obj); err != nil && !errors.Is(err, memdb.ErrNotFound) {
			return fmt.Errorf("delete from %s: %w", c.table, err)
		}
		return nil
	}
	if err := txn.Insert(c.table, c.obj); err != nil {
		return fmt.Errorf("insert into %s: %w", c.table, err)
	}
	return nil
}

// objectEncoder encodes objects as JSON into a reused buffer. HTML
// escaping is off: it would only turn <, > and & in notes into \u escapes,
// which cost bytes and send the record decoder to its slow path. Records,
// by far the most numerous, take protocol's fast encoder, which writes the
// same bytes.
type objectEncoder struct {
	buf bytes.Buffer
	enc *json.Encoder
	rec []byte
}

// encode returns the JSON of obj, valid until the next call.
func (e *objectEncoder) encode(obj any) ([]byte, error) {
	if r, ok := obj.(*protocol.Record); ok {
		if b, ok := protocol.AppendRecordJSON(e.rec[:0], r); ok {
			e.rec = b
			return b, nil
		}
	}
	if e.enc == nil {
		e.enc = json.NewEncoder(&e.buf)
		e.enc.SetEscapeHTML(false)
	}
	e.buf.Reset()
	if err := e.enc.Encode(obj); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(e.buf.Bytes(), []byte("\n")), nil
}

// interner makes equal short strings share memory: a record's agent, site,
// type, pledge, item and the like repeat across thousands of records. It is
// not safe for concurrent use; the ledger uses it under its write lock.
type interner struct {
	m map[string]string
}

// Limits of an interner: strings longer than internMaxLen are rarely
// repeated, and a ledger with an unusual variety of values stops adding
// after internMaxEntries rather than growing the table without bound.
const (
	internMaxLen     = 64
	internMaxEntries = 1 << 16
)

func newInterner() *interner { return &interner{m: make(map[string]string)} }

// bytes returns b as a string, shared with earlier equal ones.
func (in *interner) bytes(b []byte) string {
	if in == nil || len(b) > internMaxLen {
		return string(b)
	}
	if s, ok := in.m[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(in.m) < internMaxEntries {
		in.m[s] = s
	}
	return s
}
