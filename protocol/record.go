package protocol

import (
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits on a single record. Every record that arrives from outside (an
// inbox file, a bundle) is checked against them before it is stored.
const (
	MaxTextLen        = 1024    // item, course, names, references
	MaxNoteLen        = 8 << 10 // free-text notes and reasons
	MaxSerials        = 10000   // serial numbers on one record
	MaxSerialLen      = 128
	MaxAttachments    = 64
	MaxQty            = 1_000_000_000
	MaxAttendees      = 100_000
	MaxIDLen          = 64
	MaxAttachmentSize = 2 << 30 // 2 GiB per attached file
)

// RecordType says what a record reports.
type RecordType string

// The record types. Amendments and voids correct an earlier record; nothing is
// ever rewritten.
const (
	TypeDelivery     RecordType = "delivery"
	TypeTraining     RecordType = "training"
	TypeConfirmation RecordType = "confirmation"
	TypeAmendment    RecordType = "amendment"
	TypeVoid         RecordType = "void"
)

// Condition is the state in which a delivery arrived.
type Condition string

// The conditions a delivery can arrive in.
const (
	ConditionOK         Condition = "ok"
	ConditionDamaged    Condition = "damaged"
	ConditionIncomplete Condition = "incomplete"
)

// RejectReason says why part of a shipment was rejected at confirmation.
type RejectReason string

// The reasons a confirmation may reject part of a shipment.
const (
	RejectDamaged   RejectReason = "damaged"
	RejectShort     RejectReason = "short"
	RejectWrongItem RejectReason = "wrong-item"
	RejectExpired   RejectReason = "expired"
)

// Attachment is a file attached to a record (a scan of a signed waybill, a
// photo), named by the SHA-256 of its content.
type Attachment struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Record is one thing a site reported: a delivery, a training, a confirmation
// of a pledge, or a correction (amendment, void) of an earlier record.
//
// Fields that do not apply to a type are left empty. An amendment carries the
// corrected fields only; the effective view of a record is the original with
// its amendments applied in sequence order.
type Record struct {
	ID    string     `json:"id"`              // ULID, unique without coordination
	Seq   uint64     `json:"seq"`             // the agent's monotonic sequence number
	Agent string     `json:"agent,omitempty"` // agent id that made the record
	Site  string     `json:"site,omitempty"`
	Type  RecordType `json:"type"`
	At    time.Time  `json:"at"` // when the record was made

	Pledge string `json:"pledge,omitempty"` // pledge fulfilled or confirmed
	Target string `json:"target,omitempty"` // record corrected by an amendment or void

	// Delivery and confirmation.
	Item        string       `json:"item,omitempty"`
	Qty         int64        `json:"qty,omitempty"`
	QtyRejected int64        `json:"qty_rejected,omitempty"`
	Rejection   RejectReason `json:"rejection,omitempty"`
	Serials     []string     `json:"serials,omitempty"`
	Condition   Condition    `json:"condition,omitempty"`
	ReceivedBy  string       `json:"received_by,omitempty"`
	Role        string       `json:"role,omitempty"`    // role of who signed for it
	Waybill     string       `json:"waybill,omitempty"` // waybill or goods-received-note reference

	// Training.
	Course    string `json:"course,omitempty"`
	Date      string `json:"date,omitempty"` // YYYY-MM-DD
	Attendees int64  `json:"attendees,omitempty"`
	Provider  string `json:"provider,omitempty"`
	Trainer   string `json:"trainer,omitempty"`

	Note        string       `json:"note,omitempty"`
	Reason      string       `json:"reason,omitempty"` // why a record was voided
	Attachments []Attachment `json:"attachments,omitempty"`
}

// FieldError says which field of a record is wrong and why.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return fmt.Sprintf("%s: %s", e.Field, e.Msg) }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

var (
	dateRE   = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}$`)
	sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Validate checks a record's own fields: the type's required fields, enum
// values, lengths and counts. It does not check references to other records or
// pledges; the ledger does that against its state.
func (r *Record) Validate() error {
	if err := checkID("id", r.ID); err != nil {
		return err
	}
	for _, f := range []struct{ name, v string }{
		{"agent", r.Agent}, {"site", r.Site}, {"pledge", r.Pledge}, {"target", r.Target},
	} {
		if f.v != "" {
			if err := checkID(f.name, f.v); err != nil {
				return err
			}
		}
	}
	for _, f := range []struct{ name, v string }{
		{"item", r.Item}, {"received_by", r.ReceivedBy}, {"role", r.Role}, {"waybill", r.Waybill},
		{"course", r.Course}, {"provider", r.Provider}, {"trainer", r.Trainer},
	} {
		if err := checkText(f.name, f.v, MaxTextLen); err != nil {
			return err
		}
	}
	if err := checkText("note", r.Note, MaxNoteLen); err != nil {
		return err
	}
	if err := checkText("reason", r.Reason, MaxNoteLen); err != nil {
		return err
	}
	if r.Qty < 0 || r.Qty > MaxQty {
		return fieldErr("qty", "must be between 0 and %d, got %d", MaxQty, r.Qty)
	}
	if r.QtyRejected < 0 || r.QtyRejected > MaxQty {
		return fieldErr("qty_rejected", "must be between 0 and %d, got %d", MaxQty, r.QtyRejected)
	}
	if r.Attendees < 0 || r.Attendees > MaxAttendees {
		return fieldErr("attendees", "must be between 0 and %d, got %d", MaxAttendees, r.Attendees)
	}
	if len(r.Serials) > MaxSerials {
		return fieldErr("serial", "at most %d serial numbers per record, got %d", MaxSerials, len(r.Serials))
	}
	for _, s := range r.Serials {
		if s == "" || len(s) > MaxSerialLen || !utf8.ValidString(s) || strings.ContainsAny(s, "\r\n\t") {
			return fieldErr("serial", "%q is not a serial number (1 to %d printable characters)", s, MaxSerialLen)
		}
	}
	switch r.Condition {
	case "", ConditionOK, ConditionDamaged, ConditionIncomplete:
	default:
		return fieldErr("condition", "%q is not one of ok, damaged, incomplete", r.Condition)
	}
	switch r.Rejection {
	case "", RejectDamaged, RejectShort, RejectWrongItem, RejectExpired:
	default:
		return fieldErr("rejection", "%q is not one of damaged, short, wrong-item, expired", r.Rejection)
	}
	if r.Date != "" {
		if !dateRE.MatchString(r.Date) {
			return fieldErr("date", "%q is not a date in the form YYYY-MM-DD", r.Date)
		}
		if _, err := time.Parse(time.DateOnly, r.Date); err != nil {
			return fieldErr("date", "%q is not a calendar date", r.Date)
		}
	}
	if len(r.Attachments) > MaxAttachments {
		return fieldErr("attach", "at most %d attachments per record, got %d", MaxAttachments, len(r.Attachments))
	}
	for _, a := range r.Attachments {
		if !sha256RE.MatchString(a.SHA256) {
			return fieldErr("attach", "%q has no valid SHA-256 content hash", a.Name)
		}
		if a.Size < 0 || a.Size > MaxAttachmentSize {
			return fieldErr("attach", "%q is larger than %d bytes", a.Name, int64(MaxAttachmentSize))
		}
		if err := checkText("attach", a.Name, MaxTextLen); err != nil {
			return err
		}
	}

	switch r.Type {
	case TypeDelivery:
		if r.Item == "" {
			return fieldErr("item", "a delivery needs the item that arrived (--item)")
		}
		if r.Qty < 1 {
			return fieldErr("qty", "a delivery needs a quantity of at least 1 (--qty)")
		}
	case TypeTraining:
		if r.Course == "" {
			return fieldErr("course", "a training needs its course (--course)")
		}
		if r.Date == "" {
			return fieldErr("date", "a training needs its date as YYYY-MM-DD (--date)")
		}
		if r.Attendees < 1 {
			return fieldErr("attendees", "a training needs at least 1 attendee (--attendees)")
		}
	case TypeConfirmation:
		if r.Pledge == "" {
			return fieldErr("pledge", "a confirmation names the pledge it confirms")
		}
		if r.QtyRejected > 0 && r.Rejection == "" {
			return fieldErr("rejection", "rejected items need a reason: damaged, short, wrong-item or expired")
		}
	case TypeAmendment:
		if r.Target == "" {
			return fieldErr("target", "an amendment names the record it corrects")
		}
	case TypeVoid:
		if r.Target == "" {
			return fieldErr("target", "a void names the record it cancels")
		}
		if strings.TrimSpace(r.Reason) == "" {
			return fieldErr("reason", "a void needs a reason (--reason)")
		}
	default:
		return fieldErr("type", "%q is not one of delivery, training, confirmation, amendment, void", r.Type)
	}
	return nil
}

func checkID(field, v string) error {
	if v == "" {
		return fieldErr(field, "is empty")
	}
	if len(v) > MaxIDLen || !isID(v) {
		return fieldErr(field, "%q is not an id (letters, digits, . _ : -, at most %d)", v, MaxIDLen)
	}
	return nil
}

// isID reports whether v matches ^[A-Za-z0-9][A-Za-z0-9._:-]*$ (a loop,
// not a regexp: every record has several ids).
func isID(v string) bool {
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == ':' || c == '-'):
		default:
			return false
		}
	}
	return v != ""
}

// checkText refuses invalid UTF-8, control characters other than newline and
// tab, and text longer than max bytes.
func checkText(field, v string, max int) error {
	if len(v) > max {
		return fieldErr(field, "is longer than %d bytes", max)
	}
	if !utf8.ValidString(v) {
		return fieldErr(field, "is not valid UTF-8")
	}
	for _, c := range v {
		if c < 0x20 && c != '\n' && c != '\t' || c == 0x7f {
			return fieldErr(field, "contains a control character")
		}
	}
	return nil
}

// PledgeKind is what a pledge promises.
type PledgeKind string

// The kinds of pledge.
const (
	KindHardware PledgeKind = "hardware"
	KindSoftware PledgeKind = "software"
	KindSatcom   PledgeKind = "satcom"
	KindTraining PledgeKind = "training"
)

// Pledge is what a donor committed to one site under a programme. The hub
// issues it and it travels down to the site's agent.
type Pledge struct {
	ID        string     `json:"id"`
	Seq       uint64     `json:"seq"` // the hub's sequence for pledges, for sync down
	Site      string     `json:"site"`
	Donor     string     `json:"donor"`
	Programme string     `json:"programme,omitempty"`
	Kind      PledgeKind `json:"kind"`
	Item      string     `json:"item"`
	Qty       int64      `json:"qty"`
	At        time.Time  `json:"at"`
	Cancelled bool       `json:"cancelled,omitempty"`
}

// Validate checks a pledge's own fields.
func (p *Pledge) Validate() error {
	if err := checkID("id", p.ID); err != nil {
		return err
	}
	if err := checkID("site", p.Site); err != nil {
		return err
	}
	if p.Donor == "" {
		return fieldErr("donor", "a pledge needs its donor (--donor)")
	}
	for _, f := range []struct{ name, v string }{{"donor", p.Donor}, {"programme", p.Programme}, {"item", p.Item}} {
		if err := checkText(f.name, f.v, MaxTextLen); err != nil {
			return err
		}
	}
	switch p.Kind {
	case KindHardware, KindSoftware, KindSatcom, KindTraining:
	default:
		return fieldErr("kind", "%q is not one of hardware, software, satcom, training", p.Kind)
	}
	if p.Item == "" {
		return fieldErr("item", "a pledge needs the item or course (--item)")
	}
	if p.Qty < 1 || p.Qty > MaxQty {
		return fieldErr("qty", "must be between 1 and %d, got %d", MaxQty, p.Qty)
	}
	return nil
}
