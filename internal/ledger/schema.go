package ledger

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/hashicorp/go-memdb"

	"fieldsync/protocol"
)

// Table names. Agent and hub share one schema; each uses the tables it needs
// and leaves the others empty.
const (
	TableRecords    = "records"
	TablePledges    = "pledges"
	TableBundles    = "bundles"
	TableAgents     = "agents"
	TableSites      = "sites"
	TableEnrolments = "enrolments"
	TableFeedback   = "feedback"
	TableMeta       = "meta"
)

// Index names, named for how they are queried.
const (
	IndexID     = "id"
	IndexSeq    = "seq"
	IndexPledge = "pledge"
	IndexTarget = "target"
	IndexSite   = "site"
	IndexAgent  = "agent"
	IndexRecord = "record"
	IndexSerial = "serial"
)

// Bundle states, at the agent (sealed, acked) and at the hub (applied,
// quarantined).
const (
	BundleSealed      = "sealed"
	BundleAcked       = "acked"
	BundleApplied     = "applied"
	BundleQuarantined = "quarantined"
)

// Bundle is one sealed bundle: at the agent, one it sealed for the hub (its
// outbox); at the hub, one it applied or quarantined.
type Bundle struct {
	From     string    `json:"from"` // agent id, or "hub" for bundles sent down
	Seq      uint64    `json:"seq"`
	Hash     string    `json:"hash"`
	PrevHash string    `json:"prev_hash,omitempty"`
	FirstSeq uint64    `json:"first_seq,omitempty"` // record sequence range carried
	LastSeq  uint64    `json:"last_seq,omitempty"`
	Count    int       `json:"count"`
	Size     int64     `json:"size"` // bytes of the age file
	Created  time.Time `json:"created"`
	State    string    `json:"state"`
	Reason   string    `json:"reason,omitempty"`
	Updated  time.Time `json:"updated"`
}

// Agent is the hub's view of one enrolled site agent.
type Agent struct {
	ID             string    `json:"id"`
	Site           string    `json:"site"`
	Key            string    `json:"key"`       // Ed25519 public key, base64
	Recipient      string    `json:"recipient"` // the agent's age recipient, for bundles sent down
	Enrolled       time.Time `json:"enrolled"`
	Revoked        time.Time `json:"revoked,omitzero"`
	RevokeReason   string    `json:"revoke_reason,omitempty"`
	LastSeen       time.Time `json:"last_seen,omitzero"`
	OldestUnsynced time.Time `json:"oldest_unsynced,omitzero"` // as reported by the agent
	BundleHWM      uint64    `json:"bundle_hwm"`               // highest bundle applied in chain order
	LastHash       string    `json:"last_hash,omitempty"`      // hash of that bundle
	DownSeq        uint64    `json:"down_seq"`                 // bundles sent down so far
}

// IsRevoked reports whether the hub revoked the agent.
func (a *Agent) IsRevoked() bool { return !a.Revoked.IsZero() }

// Site is a site known to the hub.
type Site struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Sector string `json:"sector,omitempty"`
	Region string `json:"region,omitempty"`
}

// Enrolment is a one-time enrolment the hub issued; its secret is burnt when
// the agent first connects.
type Enrolment struct {
	Agent      string    `json:"agent"`
	Site       string    `json:"site"`
	SecretHash string    `json:"secret_hash"` // SHA-256 of the one-time secret, hex
	Expires    time.Time `json:"expires"`
	Used       time.Time `json:"used,omitzero"`
}

// Feedback is what the hub says about something an agent sent: refused,
// quarantined, or a discrepancy found. At the hub Seq orders it per agent for
// the trip down; at the agent it is kept per record.
type Feedback struct {
	Agent  string    `json:"agent"`
	Seq    uint64    `json:"seq"`
	Record string    `json:"record,omitempty"`
	Bundle uint64    `json:"bundle,omitempty"`
	State  string    `json:"state"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// Meta is a small named value: sync status, counters.
type Meta struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// Role is whose ledger it is: it decides which indexes the records table
// keeps. Every role stores the same objects, logs and snapshots them alike;
// only what can be looked up differs.
type Role uint8

const (
	// RoleHub keeps every index. It is the zero value.
	RoleHub Role = iota
	// RoleAgent leaves out the index of serial numbers: an agent never
	// looks a serial number up (finding one reported at two sites is the
	// hub's discrepancy check), and with two serials per delivery that
	// index would be a third of an agent's memory.
	RoleAgent
)

// String returns the role's name, for logs.
func (r Role) String() string {
	switch r {
	case RoleHub:
		return "hub"
	case RoleAgent:
		return "agent"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// Schema returns the go-memdb schema of a hub's ledger: every table and
// every index.
func Schema() *memdb.DBSchema { return SchemaFor(RoleHub) }

// SchemaFor returns the go-memdb schema of the ledger of role.
func SchemaFor(role Role) *memdb.DBSchema {
	return &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		TableRecords:    recordsTableSchema(role),
		TablePledges:    pledgesTableSchema(),
		TableBundles:    bundlesTableSchema(),
		TableAgents:     agentsTableSchema(),
		TableSites:      sitesTableSchema(),
		TableEnrolments: enrolmentsTableSchema(),
		TableFeedback:   feedbackTableSchema(),
		TableMeta:       metaTableSchema(),
	}}
}

func agentSeqIndex(name string) *memdb.IndexSchema {
	return &memdb.IndexSchema{Name: name, Unique: true, Indexer: &memdb.CompoundIndex{Indexes: []memdb.Indexer{
		&memdb.StringFieldIndex{Field: "Agent"}, &memdb.UintFieldIndex{Field: "Seq"},
	}}}
}

// recordsTableSchema: records by id; by (agent, seq), which makes applying a
// record twice impossible and lists an agent's records in order; by the
// pledge they fulfil (pledge totals); by the record they correct
// (amendments and voids); and at the hub by serial number (to find one
// reported at two sites).
//
// The records table is the big one (a million rows at a busy hub), and each
// index costs a radix tree leaf and node per key, about 400 bytes whatever
// the key's length, so it has no index that its role's queries do not use,
// and its indexers read the fields directly instead of through reflection.
// The keys are those of memdb's StringFieldIndex, CompoundIndex and
// StringSliceFieldIndex, whose FromArgs they keep (ids stay text: agents
// find records by a prefix of the id a person typed).
func recordsTableSchema(role Role) *memdb.TableSchema {
	t := &memdb.TableSchema{Name: TableRecords, Indexes: map[string]*memdb.IndexSchema{
		IndexID: {Name: IndexID, Unique: true, Indexer: &recordField{
			StringFieldIndex: memdb.StringFieldIndex{Field: "ID"},
			get:              func(r *protocol.Record) string { return r.ID },
		}},
		IndexSeq: {Name: IndexSeq, Unique: true, Indexer: &recordSeq{CompoundIndex: memdb.CompoundIndex{
			Indexes: []memdb.Indexer{&memdb.StringFieldIndex{Field: "Agent"}, &memdb.UintFieldIndex{Field: "Seq"}},
		}}},
		IndexPledge: {Name: IndexPledge, AllowMissing: true, Indexer: &recordField{
			StringFieldIndex: memdb.StringFieldIndex{Field: "Pledge"},
			get:              func(r *protocol.Record) string { return r.Pledge },
			nonUnique:        true,
		}},
		IndexTarget: {Name: IndexTarget, AllowMissing: true, Indexer: &recordField{
			StringFieldIndex: memdb.StringFieldIndex{Field: "Target"},
			get:              func(r *protocol.Record) string { return r.Target },
			nonUnique:        true,
		}},
	}}
	if role == RoleHub {
		t.Indexes[IndexSerial] = &memdb.IndexSchema{Name: IndexSerial, AllowMissing: true, Indexer: &recordSerials{
			StringSliceFieldIndex: memdb.StringSliceFieldIndex{Field: "Serials"},
		}}
	}
	return t
}

// recordField indexes a string field of a record like memdb's
// StringFieldIndex: the value and a NUL, nothing for an empty string.
type recordField struct {
	memdb.StringFieldIndex // FromArgs, PrefixFromArgs
	get                    func(*protocol.Record) string
	// nonUnique leaves room for the record id that memdb appends to the
	// keys of a non-unique index, saving a copy of every key.
	nonUnique bool
}

// FromObject returns the key of obj, a *protocol.Record.
func (x *recordField) FromObject(obj any) (bool, []byte, error) {
	r, ok := obj.(*protocol.Record)
	if !ok {
		return false, nil, fmt.Errorf("index %s: object is a %T, not a *protocol.Record", x.Field, obj)
	}
	v := x.get(r)
	if v == "" {
		return false, nil, nil
	}
	return true, stringKey(v, x.nonUnique, r), nil
}

func stringKey(v string, nonUnique bool, r *protocol.Record) []byte {
	n := len(v) + 1
	if nonUnique {
		n += len(r.ID) + 1
	}
	return append(append(make([]byte, 0, n), v...), 0)
}

// recordSeq indexes a record by agent and sequence number like a memdb
// CompoundIndex of a StringFieldIndex and a UintFieldIndex.
type recordSeq struct {
	memdb.CompoundIndex // FromArgs, PrefixFromArgs
}

// FromObject returns the key of obj, a *protocol.Record.
func (x *recordSeq) FromObject(obj any) (bool, []byte, error) {
	r, ok := obj.(*protocol.Record)
	if !ok {
		return false, nil, fmt.Errorf("index seq: object is a %T, not a *protocol.Record", obj)
	}
	if r.Agent == "" {
		return false, nil, nil
	}
	b := make([]byte, 0, len(r.Agent)+1+8)
	b = append(append(b, r.Agent...), 0)
	return true, binary.BigEndian.AppendUint64(b, r.Seq), nil
}

// recordSerials indexes a record by each of its serial numbers like a
// memdb StringSliceFieldIndex.
type recordSerials struct {
	memdb.StringSliceFieldIndex // FromArgs, PrefixFromArgs
}

// FromObject returns the keys of obj, a *protocol.Record.
func (x *recordSerials) FromObject(obj any) (bool, [][]byte, error) {
	r, ok := obj.(*protocol.Record)
	if !ok {
		return false, nil, fmt.Errorf("index serial: object is a %T, not a *protocol.Record", obj)
	}
	var keys [][]byte
	for _, s := range r.Serials {
		if s != "" {
			keys = append(keys, stringKey(s, true, r))
		}
	}
	return len(keys) > 0, keys, nil
}

func pledgesTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{Name: TablePledges, Indexes: map[string]*memdb.IndexSchema{
		IndexID:   {Name: IndexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
		IndexSite: {Name: IndexSite, Indexer: &memdb.StringFieldIndex{Field: "Site"}},
		IndexSeq:  {Name: IndexSeq, Unique: true, Indexer: &memdb.UintFieldIndex{Field: "Seq"}},
	}}
}

func bundlesTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{Name: TableBundles, Indexes: map[string]*memdb.IndexSchema{
		IndexID: {Name: IndexID, Unique: true, Indexer: &memdb.CompoundIndex{Indexes: []memdb.Indexer{
			&memdb.StringFieldIndex{Field: "From"}, &memdb.UintFieldIndex{Field: "Seq"},
		}}},
	}}
}

func agentsTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{Name: TableAgents, Indexes: map[string]*memdb.IndexSchema{
		IndexID:   {Name: IndexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
		IndexSite: {Name: IndexSite, Indexer: &memdb.StringFieldIndex{Field: "Site"}},
	}}
}

func sitesTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{Name: TableSites, Indexes: map[string]*memdb.IndexSchema{
		IndexID: {Name: IndexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
	}}
}

func enrolmentsTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{Name: TableEnrolments, Indexes: map[string]*memdb.IndexSchema{
		IndexID: {Name: IndexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Agent"}},
	}}
}

func feedbackTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{Name: TableFeedback, Indexes: map[string]*memdb.IndexSchema{
		IndexID:     agentSeqIndex(IndexID),
		IndexRecord: {Name: IndexRecord, AllowMissing: true, Indexer: &memdb.StringFieldIndex{Field: "Record"}},
	}}
}

func metaTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{Name: TableMeta, Indexes: map[string]*memdb.IndexSchema{
		IndexID: {Name: IndexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Key"}},
	}}
}

// newObject returns a fresh object of the type a table holds, for decoding a
// log entry or a snapshot.
func newObject(table string) (any, bool) {
	switch table {
	case TableRecords:
		return new(protocol.Record), true
	case TablePledges:
		return new(protocol.Pledge), true
	case TableBundles:
		return new(Bundle), true
	case TableAgents:
		return new(Agent), true
	case TableSites:
		return new(Site), true
	case TableEnrolments:
		return new(Enrolment), true
	case TableFeedback:
		return new(Feedback), true
	case TableMeta:
		return new(Meta), true
	}
	return nil, false
}

// LastSeq returns the highest record sequence number stored for agent, or 0.
func LastSeq(txn *memdb.Txn, agent string) (uint64, error) {
	// The (agent, seq) index sorts by agent then seq: the entry just below
	// (agent, max) is the agent's last record, if it is the agent's at all.
	it, err := txn.ReverseLowerBound(TableRecords, IndexSeq, agent, uint64(math.MaxUint64))
	if err != nil {
		return 0, err
	}
	if r, ok := it.Next().(*protocol.Record); ok && r.Agent == agent {
		return r.Seq, nil
	}
	return 0, nil
}
