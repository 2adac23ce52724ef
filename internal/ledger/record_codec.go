package ledger

import (
	"fieldsync/protocol"
)

// decodeRecord decodes the JSON of a protocol.Record with the fast decoder
// of package protocol, several times faster than encoding/json: loading a
// ledger is mostly decoding records. For JSON it does not take (ok false)
// the caller decodes with encoding/json instead, so the result never
// depends on which path ran. Strings that repeat across records go through
// in.
func decodeRecord(data []byte, in *interner) (r *protocol.Record, ok bool) {
	r = new(protocol.Record)
	var intern func([]byte) string
	if in != nil {
		intern = in.bytes
	}
	if !protocol.DecodeRecordJSON(data, r, intern) {
		return nil, false
	}
	return r, true
}
