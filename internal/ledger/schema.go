package ledger

import (
	"fmt"
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

// Index names, named for how they are queried. Records have indexes of
// their own: see Records.
const (
	IndexID     = "id"
	IndexSeq    = "seq"
	IndexSite   = "site"
	IndexAgent  = "agent"
	IndexRecord = "record"
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

// Role is whose ledger it is: it decides which indexes of records the
// ledger keeps. Every role stores the same objects, logs and snapshots them
// alike; only what can be looked up differs.
type Role uint8

const (
	// RoleHub keeps every index. It is the zero value.
	RoleHub Role = iota
	// RoleAgent leaves out the index of serial numbers: an agent never
	// looks a serial number up (finding one reported at two sites is the
	// hub's discrepancy check), and with two serials per delivery that
	// index would be the largest in an agent's memory.
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

// Schema returns the go-memdb schema of a ledger. Agent and hub share it:
// they differ only in the indexes of records, which are not memdb's.
func Schema() *memdb.DBSchema {
	return &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		TableRecords:    recordsTableSchema(),
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

// recordsTableSchema: the records themselves are in the ledger's
// recordStore (see records.go); the table holds the one row that says how
// many of them a state has.
func recordsTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{Name: TableRecords, Indexes: map[string]*memdb.IndexSchema{
		IndexID: {Name: IndexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "Key"}},
	}}
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
