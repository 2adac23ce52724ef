package protocol

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
)

// Bundle format constants. docs/protocol.md specifies the layout byte by
// byte.
const (
	// BundleMagic starts the plaintext of every bundle. The "/1" is the
	// format version; a reader refuses any other with reason "version".
	BundleMagic = "fieldsync-bundle/1\n"
	// BundleVersion is the manifest's version field for this format.
	BundleVersion = 1
	// SignatureContext starts the message an Ed25519 bundle signature
	// covers, so that no other signature made with the key can pass for a
	// bundle's.
	SignatureContext = "fieldsync-bundle/1 signature\n"
)

// Limits on a bundle. A reader checks each as it goes and refuses the bundle
// with reason "too-large" when one is exceeded, before reading further.
const (
	// MaxBundleSize bounds the age file (ciphertext) as stored or sent.
	MaxBundleSize = 256 << 20
	// MaxManifestSize bounds the manifest's JSON.
	MaxManifestSize = 8 << 10
	// MaxItems bounds the records or down items in one bundle.
	MaxItems = 100_000
	// MaxItemSize bounds one item's JSON line (a record with MaxSerials
	// serial numbers of MaxSerialLen is about 1.3 MB).
	MaxItemSize = 4 << 20
	// MaxBodySize bounds the decompressed body, all item lines together;
	// it is the decompression-bomb limit.
	MaxBodySize = 256 << 20
	// MaxZstdWindow bounds the zstd window a reader accepts, and so the
	// decoder's memory.
	MaxZstdWindow = 8 << 20
)

// The zstd settings bundles are sealed with; docs/protocol.md
// ("Compression") has the measurements behind the choice: higher levels
// save 2–4 % of the bytes for ten times the encoder memory, which a small
// site box does not have.
const (
	bodyLevel  = zstd.SpeedFastest
	bodyWindow = 1 << 20
)

// BundleKind says which way a bundle travels and what its items are.
type BundleKind string

// The bundle kinds.
const (
	// KindRecords bundles go up, from an agent to the hub, and carry Records.
	KindRecords BundleKind = "records"
	// KindHub bundles go down, from the hub to one agent, and carry DownItems.
	KindHub BundleKind = "hub"
)

// HubSender is the From of every hub bundle.
const HubSender = "hub"

// Manifest describes a bundle. It is signed with the body; the reader hands
// it to the verify callback of [OpenBundle] before it reads the body.
type Manifest struct {
	Version int        `json:"version"` // BundleVersion; SealBundle sets it
	Kind    BundleKind `json:"kind"`
	From    string     `json:"from"` // agent id, or "hub"
	To      string     `json:"to"`   // the hub's key fingerprint, or the agent id
	Site    string     `json:"site"`
	// Seq numbers the sender's bundles to one receiver: 1, 2, 3, …
	Seq uint64 `json:"seq"`
	// FirstRecordSeq and LastRecordSeq are the agent sequence numbers of
	// the first and last record of a records bundle (0 in hub bundles);
	// SealBundle fills them in from the records.
	FirstRecordSeq uint64 `json:"first_record_seq,omitempty"`
	LastRecordSeq  uint64 `json:"last_record_seq,omitempty"`
	// PrevHash is the Hash of the sender's bundle Seq-1 to this receiver:
	// empty for Seq 1, required after it in records bundles, optional in
	// hub bundles.
	PrevHash string    `json:"prev_hash,omitempty"`
	Created  time.Time `json:"created"`
	// Enrol is set by an agent that the hub may not know yet: its first
	// contact can be a bundle carried by hand rather than a sync. The hub
	// admits the agent with this proof before it verifies the signature.
	Enrol    *EnrolProof `json:"enrol,omitempty"`
	Count    int         `json:"count"`     // items in the body; SealBundle sets it
	BodySize int64       `json:"body_size"` // compressed body bytes; SealBundle sets it
	// RawBodySize is the body's size decompressed; SealBundle sets it. A
	// reader stops decompressing at the first byte past it.
	RawBodySize int64 `json:"raw_body_size"`
}

// EnrolProof carries an agent's enrolment inside its bundle: the one-time
// secret from the enrolment file (confidential, as the bundle is encrypted
// to the hub) and the keys the agent made at `agent init`.
type EnrolProof struct {
	Secret    string `json:"secret"`    // the enrolment file's one-time secret
	Key       string `json:"key"`       // the agent's Ed25519 public key (EncodePublicKey)
	Recipient string `json:"recipient"` // the agent's age recipient, for bundles sent down
}

// Bundle is a bundle opened and verified by [OpenBundle] or [DecodeSigned].
// Records is set for KindRecords bundles, Down for KindHub bundles.
type Bundle struct {
	Manifest Manifest
	// Hash is the lowercase hex SHA-256 of the signed plaintext (the age
	// payload). It names the bundle whatever age file carries it, and the
	// next bundle's PrevHash chains to it.
	Hash    string
	Records []Record
	// RecordJSON holds, for each of Records, the line of the body it was
	// decoded from: its canonical JSON, signed by the sender. A store can
	// keep these bytes as they are rather than encode the record again.
	RecordJSON [][]byte
	Down       []DownItem
}

// DownItemType says what a DownItem carries.
type DownItemType string

// The down item types.
const (
	DownPledge   DownItemType = "pledge"   // a pledge for the agent's site, new or changed
	DownFeedback DownItemType = "feedback" // the hub's verdict on something the agent sent
	DownAcked    DownItemType = "acked"    // the hub durably holds the agent's bundles up to this seq
	DownRevoked  DownItemType = "revoked"  // the agent was revoked
)

// DownItem is one item of a hub bundle: exactly one of Pledge, Feedback,
// Acked or Revoked is set, and Type names it. SealBundle fills in an empty
// Type from the field that is set.
type DownItem struct {
	Type     DownItemType `json:"type"`
	Pledge   *Pledge      `json:"pledge,omitempty"`
	Feedback *Feedback    `json:"feedback,omitempty"`
	Acked    uint64       `json:"acked,omitempty"`
	Revoked  *Revocation  `json:"revoked,omitempty"`
}

// Feedback states: what the hub made of a record or bundle an agent sent.
const (
	FeedbackApplied     = "applied"
	FeedbackRefused     = "refused"
	FeedbackQuarantined = "quarantined"
	FeedbackDiscrepancy = "discrepancy"
)

// Feedback tells an agent what the hub made of what it sent, so that the
// site sees why a record was refused, quarantined or found discrepant.
type Feedback struct {
	Seq    uint64    `json:"seq"`              // the hub's feedback sequence for this agent, from 1
	Record string    `json:"record,omitempty"` // record id, or empty for a whole bundle
	Bundle uint64    `json:"bundle,omitempty"` // the agent's bundle seq it concerns
	State  string    `json:"state"`            // FeedbackApplied, …Refused, …Quarantined, …Discrepancy
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
}

// Revocation tells an agent that the hub revoked it.
type Revocation struct {
	At     time.Time `json:"at"`
	Reason string    `json:"reason,omitempty"`
}

// BundleItem is what a bundle carries: Records going up, DownItems going
// down.
type BundleItem interface {
	Record | DownItem
}

// Reasons a bundle is refused; see [BundleError].
const (
	ReasonTampered      = "tampered"       // age authentication failed: altered or cut inside an age chunk
	ReasonTruncated     = "truncated"      // the file ends early
	ReasonNotForUs      = "not-for-us"     // encrypted to another identity
	ReasonBadSignature  = "bad-signature"  // not signed by the sender's key
	ReasonUnknownSender = "unknown-sender" // the verify callback knows no key for the manifest
	ReasonTooLarge      = "too-large"      // a limit was exceeded
	ReasonMalformed     = "malformed"      // decrypts but breaks the format
	ReasonVersion       = "version"        // a format version this code does not speak
)

// BundleError is the error for a bundle that cannot be opened. Reason is one
// of the Reason constants; Err says what exactly. Its message is one line
// and includes Reason.
type BundleError struct {
	Reason string
	Err    error
}

var reasonText = map[string]string{
	ReasonTampered:      "bundle is damaged (tampered): it was altered or cut short; send or copy it again",
	ReasonTruncated:     "bundle is incomplete (truncated): the file ends early; send or copy it again",
	ReasonNotForUs:      "bundle was not encrypted to this identity (not-for-us): it is a foreign bundle, meant for another hub or agent",
	ReasonBadSignature:  "bundle signature does not verify (bad-signature): it was not signed by the sender's enrolled key",
	ReasonUnknownSender: "bundle sender is not known here (unknown-sender)",
	ReasonTooLarge:      "bundle is too large (too-large)",
	ReasonMalformed:     "bundle is malformed (malformed)",
	ReasonVersion:       "bundle format version is not supported (version)",
}

func (e *BundleError) Error() string {
	msg, ok := reasonText[e.Reason]
	if !ok {
		msg = "bundle refused (" + e.Reason + ")"
	}
	if e.Err != nil {
		// age's own errors may run to several lines; a refusal is one.
		msg += ": " + oneLine.Replace(e.Err.Error())
	}
	return msg
}

func (e *BundleError) Unwrap() error { return e.Err }

var oneLine = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ")

func bundleErr(reason, format string, args ...any) *BundleError {
	return &BundleError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

var hashRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Validate checks a manifest's own fields. It does not check Seq or PrevHash
// against the receiver's state.
func (m *Manifest) Validate() error {
	if m.Version != BundleVersion {
		return fieldErr("version", "is %d, want %d", m.Version, BundleVersion)
	}
	for _, f := range []struct{ name, v string }{{"from", m.From}, {"to", m.To}, {"site", m.Site}} {
		if err := checkID(f.name, f.v); err != nil {
			return err
		}
	}
	if m.Seq < 1 {
		return fieldErr("seq", "must be at least 1")
	}
	if m.PrevHash != "" && !hashRE.MatchString(m.PrevHash) {
		return fieldErr("prev_hash", "%q is not a lowercase hex SHA-256", truncate(m.PrevHash, 80))
	}
	if m.Seq == 1 && m.PrevHash != "" {
		return fieldErr("prev_hash", "bundle 1 follows no bundle, so it has no prev_hash")
	}
	if m.Created.IsZero() {
		return fieldErr("created", "is missing")
	}
	if m.Count < 0 || m.Count > MaxItems {
		return fieldErr("count", "must be between 0 and %d, got %d", MaxItems, m.Count)
	}
	if m.BodySize < 0 || m.BodySize > MaxBundleSize {
		return fieldErr("body_size", "must be between 0 and %d, got %d", MaxBundleSize, m.BodySize)
	}
	if m.RawBodySize < 0 || m.RawBodySize > MaxBodySize {
		return fieldErr("raw_body_size", "must be between 0 and %d, got %d", MaxBodySize, m.RawBodySize)
	}
	if e := m.Enrol; e != nil {
		if m.Kind != KindRecords {
			return fieldErr("enrol", "only an agent's records bundle carries an enrolment")
		}
		if e.Secret == "" || len(e.Secret) > MaxSecretLen {
			return fieldErr("enrol", "the secret must be 1 to %d bytes", MaxSecretLen)
		}
		if _, err := ParsePublicKey(e.Key); err != nil {
			return fieldErr("enrol", "key: %v", err)
		}
		if e.Recipient == "" || len(e.Recipient) > MaxRecipientLen {
			return fieldErr("enrol", "the recipient must be 1 to %d bytes", MaxRecipientLen)
		}
	}
	switch m.Kind {
	case KindRecords:
		if m.From == HubSender {
			return fieldErr("from", "a records bundle comes from an agent, not %q", HubSender)
		}
		if m.Count < 1 {
			return fieldErr("count", "a records bundle carries at least one record")
		}
		if m.FirstRecordSeq < 1 || m.LastRecordSeq < m.FirstRecordSeq {
			return fieldErr("first_record_seq", "records %d to %d are not a range of record seqs", m.FirstRecordSeq, m.LastRecordSeq)
		}
		if m.LastRecordSeq-m.FirstRecordSeq < uint64(m.Count-1) {
			return fieldErr("count", "%d records cannot have seqs %d to %d", m.Count, m.FirstRecordSeq, m.LastRecordSeq)
		}
		if m.Seq > 1 && m.PrevHash == "" {
			return fieldErr("prev_hash", "bundle %d must name the hash of bundle %d", m.Seq, m.Seq-1)
		}
	case KindHub:
		if m.From != HubSender {
			return fieldErr("from", "a hub bundle comes from %q, not %q", HubSender, m.From)
		}
		if m.FirstRecordSeq != 0 || m.LastRecordSeq != 0 {
			return fieldErr("first_record_seq", "a hub bundle carries no records")
		}
	default:
		return fieldErr("kind", "%q is not one of records, hub", m.Kind)
	}
	return nil
}

// Validate checks a feedback item's own fields.
func (f *Feedback) Validate() error {
	if f.Seq < 1 {
		return fieldErr("seq", "must be at least 1")
	}
	if f.Record != "" {
		if err := checkID("record", f.Record); err != nil {
			return err
		}
	}
	switch f.State {
	case FeedbackApplied, FeedbackRefused, FeedbackQuarantined, FeedbackDiscrepancy:
	default:
		return fieldErr("state", "%q is not one of applied, refused, quarantined, discrepancy", f.State)
	}
	return checkText("reason", f.Reason, MaxNoteLen)
}

// kind returns the type of the one field that is set.
func (d *DownItem) kind() (DownItemType, error) {
	var set []DownItemType
	if d.Pledge != nil {
		set = append(set, DownPledge)
	}
	if d.Feedback != nil {
		set = append(set, DownFeedback)
	}
	if d.Acked != 0 {
		set = append(set, DownAcked)
	}
	if d.Revoked != nil {
		set = append(set, DownRevoked)
	}
	if len(set) != 1 {
		return "", fieldErr("type", "a down item carries exactly one of pledge, feedback, acked, revoked (it has %d)", len(set))
	}
	return set[0], nil
}

// Validate checks that a down item carries exactly the one thing its Type
// names, and that thing's fields.
func (d *DownItem) Validate() error {
	k, err := d.kind()
	if err != nil {
		return err
	}
	if d.Type != k {
		return fieldErr("type", "is %q but the item carries a %s", d.Type, k)
	}
	switch k {
	case DownPledge:
		return d.Pledge.Validate()
	case DownFeedback:
		return d.Feedback.Validate()
	case DownRevoked:
		if d.Revoked.At.IsZero() {
			return fieldErr("revoked", "needs the time of revocation")
		}
		return checkText("reason", d.Revoked.Reason, MaxNoteLen)
	}
	return nil
}

// SealBundle writes a bundle of items to w: the items and m signed with key,
// compressed, and encrypted with age to the recipient to (the hub's hybrid
// recipient for records going up, the agent's for a hub bundle). It fills
// in m's Version, Count, BodySize and, for records, First/LastRecordSeq,
// checks every item, and returns the bundle's Hash. Records must be in
// increasing Seq order.
//
// Nothing is written to w unless the bundle is valid and within the limits.
func SealBundle[T BundleItem](w io.Writer, m Manifest, items []T, key ed25519.PrivateKey, to age.Recipient) (hash string, err error) {
	plain, hash, err := encodeSigned(m, items, key)
	if err != nil {
		return "", err
	}
	if n := sealedSize(len(plain)); n > MaxBundleSize {
		return "", bundleErr(ReasonTooLarge, "sealed it would be about %d bytes, over the %d-byte limit; seal fewer items", n, MaxBundleSize)
	}
	aw, err := age.Encrypt(w, to)
	if err != nil {
		return "", fmt.Errorf("seal bundle: %w", err)
	}
	if _, err := aw.Write(plain); err != nil {
		return "", fmt.Errorf("seal bundle: %w", err)
	}
	if err := aw.Close(); err != nil {
		return "", fmt.Errorf("seal bundle: %w", err)
	}
	return hash, nil
}

// sealedSize bounds the age file for a plaintext of n bytes: header (a
// hybrid stanza is under 2 KiB), nonce, and a 16-byte tag per 64 KiB chunk.
func sealedSize(n int) int64 {
	const header, chunk, tag = 4 << 10, 64 << 10, 16
	return int64(header) + 16 + int64(n) + int64(n/chunk+1)*tag
}

// encodeSigned returns the signed plaintext of a bundle and its hash.
func encodeSigned[T BundleItem](m Manifest, items []T, key ed25519.PrivateKey) ([]byte, string, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, "", errors.New("seal bundle: signing key is not an Ed25519 private key")
	}
	m.Version, m.Count = BundleVersion, len(items)
	if len(items) > MaxItems {
		return nil, "", bundleErr(ReasonTooLarge, "%d items, over the limit of %d per bundle; seal several bundles", len(items), MaxItems)
	}
	var body bytes.Buffer
	// addLine adds v's line, checking that it reads back as it is: a
	// bundle that the reader would refuse must not be sealed and stuck in
	// an outbox. fresh is a new value of v's type to read into.
	addLine := func(i int, v, fresh any) error {
		line, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("seal bundle: item %d: %w", i+1, err)
		}
		if err := decodeCanonical(line, fresh); err != nil {
			return fmt.Errorf("seal bundle: item %d does not encode canonically: %w", i+1, err)
		}
		if len(line)+1 > MaxItemSize {
			return bundleErr(ReasonTooLarge, "item %d is %d bytes, over the %d-byte limit", i+1, len(line)+1, MaxItemSize)
		}
		body.Write(line)
		body.WriteByte('\n')
		if body.Len() > MaxBodySize {
			return bundleErr(ReasonTooLarge, "items are over %d bytes; seal fewer per bundle", MaxBodySize)
		}
		return nil
	}
	switch items := any(items).(type) {
	case []Record:
		if m.Kind != KindRecords {
			return nil, "", fmt.Errorf("seal bundle: records go in a %q bundle, not %q", KindRecords, m.Kind)
		}
		if len(items) > 0 {
			first, last := items[0].Seq, items[len(items)-1].Seq
			if (m.FirstRecordSeq != 0 && m.FirstRecordSeq != first) || (m.LastRecordSeq != 0 && m.LastRecordSeq != last) {
				return nil, "", fmt.Errorf("seal bundle: manifest says records %d to %d but the records are %d to %d",
					m.FirstRecordSeq, m.LastRecordSeq, first, last)
			}
			m.FirstRecordSeq, m.LastRecordSeq = first, last
		}
		for i := range items {
			r := &items[i]
			if err := r.Validate(); err != nil {
				return nil, "", fmt.Errorf("seal bundle: record %d (%s): %w", i+1, r.ID, err)
			}
			if i > 0 && r.Seq <= items[i-1].Seq {
				return nil, "", fmt.Errorf("seal bundle: record %d (%s) has seq %d after %d; records go in increasing seq order", i+1, r.ID, r.Seq, items[i-1].Seq)
			}
			if err := addLine(i, r, new(Record)); err != nil {
				return nil, "", err
			}
		}
	case []DownItem:
		if m.Kind != KindHub {
			return nil, "", fmt.Errorf("seal bundle: down items go in a %q bundle, not %q", KindHub, m.Kind)
		}
		for i := range items {
			d := items[i] // a copy: Type is filled in without touching the caller's slice
			if d.Type == "" {
				d.Type, _ = d.kind()
			}
			if err := d.Validate(); err != nil {
				return nil, "", fmt.Errorf("seal bundle: down item %d: %w", i+1, err)
			}
			if err := addLine(i, &d, new(DownItem)); err != nil {
				return nil, "", err
			}
		}
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(bodyLevel), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(bodyWindow), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, "", fmt.Errorf("seal bundle: %w", err)
	}
	compressed := enc.EncodeAll(body.Bytes(), nil)
	enc.Close()
	m.BodySize, m.RawBodySize = int64(len(compressed)), int64(body.Len())
	if err := m.Validate(); err != nil {
		return nil, "", fmt.Errorf("seal bundle: manifest: %w", err)
	}
	mb, err := json.Marshal(&m)
	if err != nil {
		return nil, "", fmt.Errorf("seal bundle: manifest: %w", err)
	}
	if len(mb) > MaxManifestSize {
		return nil, "", bundleErr(ReasonTooLarge, "manifest is %d bytes, over %d", len(mb), MaxManifestSize)
	}
	plain := assemble(mb, compressed, key)
	sum := sha256.Sum256(plain)
	return plain, hex.EncodeToString(sum[:]), nil
}

// assemble lays out the plaintext and signs it; it checks nothing, so tests
// can build bundles that break the rules.
func assemble(manifest, body []byte, key ed25519.PrivateKey) []byte {
	bodySum := sha256.Sum256(body)
	sig := ed25519.Sign(key, signedMessage(manifest, bodySum[:]))
	out := make([]byte, 0, len(BundleMagic)+4+len(manifest)+len(body)+ed25519.SignatureSize)
	out = append(out, BundleMagic...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(manifest)))
	out = append(out, manifest...)
	out = append(out, body...)
	return append(out, sig...)
}

// signedMessage is what a bundle signature covers: SignatureContext, the
// manifest's length (4 bytes, big-endian) and bytes, and the SHA-256 of the
// compressed body.
func signedMessage(manifest, bodySum []byte) []byte {
	msg := make([]byte, 0, len(SignatureContext)+4+len(manifest)+len(bodySum))
	msg = append(msg, SignatureContext...)
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(manifest)))
	msg = append(msg, manifest...)
	return append(msg, bodySum...)
}

// OpenBundle decrypts the bundle read from r with id, verifies it and
// returns its items. verify receives the manifest, before the body is read,
// and returns the sender's public key, or an error (reported with reason
// "unknown-sender") if the sender is not one to accept. The signature is
// verified before the body is decompressed or parsed, so nothing
// unauthenticated reaches the caller.
//
// OpenBundle reads r to its end and at most MaxBundleSize bytes of it. It
// holds the compressed body in memory (at most the bundle's size) and
// decodes it item by item within the limits. Every failure is a
// *BundleError.
func OpenBundle(r io.Reader, id age.Identity, verify func(m *Manifest) (ed25519.PublicKey, error)) (*Bundle, error) {
	if id == nil || verify == nil {
		return nil, errors.New("open bundle: no identity or no verify callback")
	}
	src := &capReader{r: r, n: MaxBundleSize}
	pr, err := age.Decrypt(src, id)
	if err != nil {
		return nil, classifyAgeHeader(err)
	}
	return DecodeSigned(ageReader{pr}, verify)
}

// errOverCap is returned by capReader past its limit.
var errOverCap = errors.New("over the size limit")

// capReader reads at most n bytes and fails with errOverCap if there are
// more.
type capReader struct {
	r io.Reader
	n int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.n <= 0 {
		var one [1]byte
		n, err := io.ReadFull(c.r, one[:])
		if n > 0 {
			return 0, errOverCap
		}
		if err == io.ErrUnexpectedEOF {
			err = io.EOF
		}
		return 0, err
	}
	if int64(len(p)) > c.n {
		p = p[:c.n]
	}
	n, err := c.r.Read(p)
	c.n -= int64(n)
	return n, err
}

// classifyAgeHeader turns an error from age.Decrypt into a BundleError.
func classifyAgeHeader(err error) *BundleError {
	var nomatch *age.NoIdentityMatchError
	msg := err.Error()
	switch {
	case errors.As(err, &nomatch):
		return &BundleError{Reason: ReasonNotForUs, Err: err}
	case errors.Is(err, errOverCap):
		return bundleErr(ReasonTooLarge, "age header is over %d bytes", MaxBundleSize)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF), strings.Contains(msg, "EOF"), strings.Contains(msg, "file is empty"):
		return &BundleError{Reason: ReasonTruncated, Err: err}
	case strings.Contains(msg, "header MAC"):
		return &BundleError{Reason: ReasonTampered, Err: err}
	}
	return bundleErr(ReasonMalformed, "not an age file, or its header is damaged: %v", err)
}

// ageReader turns errors from the age payload into BundleErrors.
type ageReader struct{ r io.Reader }

func (a ageReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	switch {
	case err == nil || err == io.EOF:
	case errors.Is(err, errOverCap):
		err = bundleErr(ReasonTooLarge, "the file is over %d bytes", MaxBundleSize)
	case errors.Is(err, io.ErrUnexpectedEOF):
		err = &BundleError{Reason: ReasonTruncated, Err: err}
	default:
		err = &BundleError{Reason: ReasonTampered, Err: err}
	}
	return n, err
}

// DecodeSigned decodes and verifies the plaintext of a bundle, as age
// decrypts it (see [OpenBundle], which calls it). It reads r to its end.
// Every failure is a *BundleError.
func DecodeSigned(r io.Reader, verify func(m *Manifest) (ed25519.PublicKey, error)) (*Bundle, error) {
	if verify == nil {
		return nil, errors.New("decode bundle: no verify callback")
	}
	h := sha256.New()
	br := bufio.NewReaderSize(io.TeeReader(r, h), 64<<10)
	read := func(p []byte, what string) error {
		if _, err := io.ReadFull(br, p); err != nil {
			return readErr(err, what)
		}
		return nil
	}

	magic := make([]byte, len(BundleMagic))
	if err := read(magic, "magic line"); err != nil {
		return nil, err
	}
	if string(magic) != BundleMagic {
		if line, _, ok := strings.Cut(string(magic), "\n"); ok && strings.HasPrefix(line, "fieldsync-bundle/") {
			return nil, bundleErr(ReasonVersion, "format %q, this program reads %q; upgrade it", line, strings.TrimSuffix(BundleMagic, "\n"))
		}
		return nil, bundleErr(ReasonMalformed, "not a fieldsync bundle (no %q line)", strings.TrimSuffix(BundleMagic, "\n"))
	}
	var lenBuf [4]byte
	if err := read(lenBuf[:], "manifest length"); err != nil {
		return nil, err
	}
	mlen := binary.BigEndian.Uint32(lenBuf[:])
	if mlen > MaxManifestSize {
		return nil, bundleErr(ReasonTooLarge, "manifest is %d bytes, over %d", mlen, MaxManifestSize)
	}
	mb := make([]byte, mlen)
	if err := read(mb, "manifest"); err != nil {
		return nil, err
	}
	m, err := decodeManifest(mb)
	if err != nil {
		return nil, err
	}
	pub, err := verify(m)
	if err != nil {
		return nil, &BundleError{Reason: ReasonUnknownSender, Err: err}
	}
	if len(pub) != ed25519.PublicKeySize {
		return nil, bundleErr(ReasonUnknownSender, "no key for sender %q", m.From)
	}

	// The compressed body is held whole: it is never larger than the
	// bundle, and the signature over it must verify before a single byte
	// of it is decompressed.
	var body bytes.Buffer
	bh := sha256.New()
	if n, err := io.CopyN(io.MultiWriter(&body, bh), br, m.BodySize); err != nil {
		if err == io.EOF {
			return nil, bundleErr(ReasonTruncated, "the body ends after %d of %d bytes", n, m.BodySize)
		}
		return nil, readErr(err, "body")
	}
	sig := make([]byte, ed25519.SignatureSize)
	if err := read(sig, "signature"); err != nil {
		return nil, err
	}
	if _, err := br.ReadByte(); err == nil {
		return nil, bundleErr(ReasonMalformed, "data after the signature")
	} else if err != io.EOF {
		return nil, readErr(err, "end")
	}
	if !ed25519.Verify(pub, signedMessage(mb, bh.Sum(nil)), sig) {
		return nil, bundleErr(ReasonBadSignature, "sender %q, key %s", m.From, Fingerprint(pub))
	}

	b := &Bundle{Manifest: *m, Hash: hex.EncodeToString(h.Sum(nil))}
	if err := decodeBody(b, body.Bytes()); err != nil {
		return nil, err
	}
	return b, nil
}

// readErr reports a failed read of part of the plaintext.
func readErr(err error, what string) error {
	var be *BundleError
	switch {
	case errors.As(err, &be):
		return be
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		return bundleErr(ReasonTruncated, "it ends in the %s", what)
	}
	return &BundleError{Reason: ReasonMalformed, Err: fmt.Errorf("read %s: %w", what, err)}
}

// decodeManifest parses a manifest strictly: known fields only, canonical
// encoding, valid values. The version is looked at first, so that a newer
// manifest is refused for its version and not as malformed.
func decodeManifest(mb []byte) (*Manifest, error) {
	var probe struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(mb, &probe); err != nil {
		return nil, bundleErr(ReasonMalformed, "manifest: %s", describeJSON(err))
	}
	if probe.Version != BundleVersion {
		return nil, bundleErr(ReasonVersion, "manifest version %d, this program reads %d; upgrade it", probe.Version, BundleVersion)
	}
	m := new(Manifest)
	if err := decodeCanonical(mb, m); err != nil {
		return nil, bundleErr(ReasonMalformed, "manifest: %v", err)
	}
	switch {
	case m.Count > MaxItems:
		return nil, bundleErr(ReasonTooLarge, "%d items, over the limit of %d", m.Count, MaxItems)
	case m.BodySize > MaxBundleSize:
		return nil, bundleErr(ReasonTooLarge, "body is %d bytes, over %d", m.BodySize, MaxBundleSize)
	case m.RawBodySize > MaxBodySize:
		return nil, bundleErr(ReasonTooLarge, "body decompresses to %d bytes, over %d", m.RawBodySize, MaxBodySize)
	}
	if err := m.Validate(); err != nil {
		return nil, bundleErr(ReasonMalformed, "manifest: %v", err)
	}
	return m, nil
}

// decodeCanonical decodes one JSON value into v, refusing unknown fields and
// anything but the exact bytes json.Marshal gives for the result. That
// leaves one encoding per value: no duplicate keys, no white space, no
// alternative escapes for two parsers to read differently.
func decodeCanonical(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errors.New(describeJSON(err))
	}
	again, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if !bytes.Equal(again, data) {
		return errors.New("not in canonical form (compact JSON, fields in order, as the reference encoder writes it)")
	}
	return nil
}

// decodeRecordLine decodes one record line into r, which is the zero
// Record, as decodeCanonical does. Most lines take the fast path: decoded
// by DecodeRecordJSON and found canonical by comparing them with what
// AppendRecordJSON writes (the bytes of json.Marshal) into buf, which it
// returns for reuse. Any line the fast path does not take gets
// decodeCanonical's verdict, so the result is the same either way.
func decodeRecordLine(line []byte, r *Record, buf []byte) ([]byte, error) {
	if DecodeRecordJSON(line, r, nil) {
		var ok bool
		if buf, ok = AppendRecordJSON(buf, r); ok && bytes.Equal(buf, line) {
			return buf, nil
		}
	}
	*r = Record{}
	return buf, decodeCanonical(line, r)
}

// decodeBody decompresses a verified body and decodes its items into b.
func decodeBody(b *Bundle, body []byte) error {
	m := &b.Manifest
	zr, err := zstd.NewReader(bytes.NewReader(body), zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(MaxZstdWindow), zstd.WithDecoderMaxMemory(MaxBodySize))
	if err != nil {
		return bundleErr(ReasonMalformed, "body: %v", err)
	}
	defer zr.Close()
	lr := &capReader{r: zr, n: m.RawBodySize}
	br := bufio.NewReaderSize(lr, 64<<10)
	// Room for what the signed manifest announces, up to a bound: growing
	// these as items come was a tenth of the cost of taking a large
	// bundle in, and the bound keeps a bundle that announces more than it
	// holds from costing more than a large real one.
	var line, canon, lines []byte
	switch m.Kind {
	case KindRecords:
		b.Records = make([]Record, 0, min(m.Count, 16<<10))
		lines = make([]byte, 0, min(m.RawBodySize, 16<<20))
	case KindHub:
		b.Down = make([]DownItem, 0, min(m.Count, 1024))
	}
	var ends []int // where each record's line ends in lines
	for i := 0; ; i++ {
		line, err = readLine(br, line[:0])
		if err == io.EOF {
			if lr.n != 0 {
				return bundleErr(ReasonMalformed, "body decompresses to %d bytes, manifest says %d", m.RawBodySize-lr.n, m.RawBodySize)
			}
			if i != m.Count {
				return bundleErr(ReasonMalformed, "body has %d items, manifest says %d", i, m.Count)
			}
			if m.Kind == KindRecords {
				b.RecordJSON = make([][]byte, len(ends))
				start := 0
				for j, end := range ends {
					b.RecordJSON[j] = lines[start:end:end]
					start = end
				}
			}
			break
		}
		if err != nil {
			return bodyErr(err)
		}
		if i >= m.Count {
			return bundleErr(ReasonMalformed, "body has more items than the manifest's %d", m.Count)
		}
		switch m.Kind {
		case KindRecords:
			b.Records = append(b.Records, Record{})
			r := &b.Records[i]
			if canon, err = decodeRecordLine(line, r, canon[:0]); err != nil {
				return bundleErr(ReasonMalformed, "record %d: %v", i+1, err)
			}
			if err := r.Validate(); err != nil {
				return bundleErr(ReasonMalformed, "record %d (%s): %v", i+1, r.ID, err)
			}
			if i > 0 && r.Seq <= b.Records[i-1].Seq {
				return bundleErr(ReasonMalformed, "record %d (%s) has seq %d after %d", i+1, r.ID, r.Seq, b.Records[i-1].Seq)
			}
			if (i == 0 && r.Seq != m.FirstRecordSeq) || r.Seq > m.LastRecordSeq || (i == m.Count-1 && r.Seq != m.LastRecordSeq) {
				return bundleErr(ReasonMalformed, "record %d (%s) has seq %d, outside the manifest's %d to %d", i+1, r.ID, r.Seq, m.FirstRecordSeq, m.LastRecordSeq)
			}
			lines = append(lines, line...)
			ends = append(ends, len(lines))
		case KindHub:
			var d DownItem
			if err := decodeCanonical(line, &d); err != nil {
				return bundleErr(ReasonMalformed, "down item %d: %v", i+1, err)
			}
			if err := d.Validate(); err != nil {
				return bundleErr(ReasonMalformed, "down item %d: %v", i+1, err)
			}
			b.Down = append(b.Down, d)
		}
	}
	return nil
}

// errLongLine is returned by readLine for a line over MaxItemSize.
var errLongLine = errors.New("item line too long")

// readLine appends the next newline-terminated line of br to buf, without
// the newline, reading no more than MaxItemSize bytes. It returns io.EOF
// only at the end of the input between lines.
func readLine(br *bufio.Reader, buf []byte) ([]byte, error) {
	for {
		frag, err := br.ReadSlice('\n')
		if len(buf)+len(frag) > MaxItemSize {
			return nil, errLongLine
		}
		buf = append(buf, frag...)
		switch {
		case err == nil:
			buf = buf[:len(buf)-1]
			if len(buf) == 0 {
				return nil, errors.New("empty item line")
			}
			return buf, nil
		case err == bufio.ErrBufferFull:
			continue
		case err == io.EOF && len(buf) == 0:
			return nil, io.EOF
		case err == io.EOF:
			return nil, errors.New("last item line has no newline")
		default:
			return nil, err
		}
	}
}

// bodyErr reports a failure to read the decompressed body.
func bodyErr(err error) error {
	switch {
	case errors.Is(err, errOverCap):
		return bundleErr(ReasonTooLarge, "body decompresses to more than the manifest's raw_body_size (a decompression bomb?)")
	case errors.Is(err, errLongLine):
		return bundleErr(ReasonTooLarge, "an item is over %d bytes", MaxItemSize)
	case errors.Is(err, zstd.ErrWindowSizeExceeded), errors.Is(err, zstd.ErrDecoderSizeExceeded):
		return bundleErr(ReasonTooLarge, "body: %v", err)
	}
	return bundleErr(ReasonMalformed, "body: %v", err)
}
