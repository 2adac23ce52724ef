package protocol

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"
)

// Wire protocol constants. A sync session is one bidirectional QUIC stream
// carrying frames; docs/protocol.md ("Wire protocol") specifies them.
const (
	// ALPN is the TLS application protocol both ends offer. Its "/1" is
	// the wire version: a peer that speaks another version fails the TLS
	// handshake, or, if it gets past it, is answered with CodeVersion.
	ALPN = "fieldsync/1"
	// Version is the wire protocol version, carried in Hello and HelloOK.
	Version = 1
)

// Limits on wire messages. ReadMessage refuses a frame whose stated length
// is over its type's limit before reading the payload.
const (
	// MaxChunk bounds the bundle bytes in one Chunk.
	MaxChunk = 256 << 10
	// MaxDownBundleSize bounds the bundle in one DownBundle message; the hub
	// splits what it sends down into bundles under it.
	MaxDownBundleSize = 8 << 20
	// MaxControlSize bounds the payload of a JSON message (Hello, HelloOK,
	// Ack, Error).
	MaxControlSize = 64 << 10
	// MaxErrorMessageLen bounds an Error's Message; WriteMessage shortens
	// longer ones.
	MaxErrorMessageLen = 1024
	// MaxRecipientLen bounds an age recipient string (a hybrid
	// post-quantum recipient is about 1,960 characters).
	MaxRecipientLen = 4096
	// MaxSecretLen bounds an enrolment secret in a Hello.
	MaxSecretLen = 128

	maxChunkPayload = MaxChunk + 3*binary.MaxVarintLen64 + 1
	maxDownPayload  = MaxDownBundleSize + binary.MaxVarintLen64
)

// MessageType is the first byte of a frame.
type MessageType byte

// The message types, in the order a session uses them. 0x07 (DownAck in
// earlier drafts) is retired: the agent's hello says what it holds.
const (
	MsgHello      MessageType = 0x01 // agent → hub: who I am, what I have
	MsgHelloOK    MessageType = 0x02 // hub → agent: accepted, what I have
	MsgChunk      MessageType = 0x03 // agent → hub: part of a bundle
	MsgDone       MessageType = 0x04 // agent → hub: no more bundles
	MsgAck        MessageType = 0x05 // hub → agent: a bundle is durably handled
	MsgDownBundle MessageType = 0x06 // hub → agent: a hub bundle
	MsgError      MessageType = 0x08 // either way: refusal; the sender closes the stream
	MsgBye        MessageType = 0x09 // hub → agent: session over
	MsgBlobQuery  MessageType = 0x0a // agent → hub: attachments the hub may lack
	MsgBlobNeed   MessageType = 0x0b // hub → agent: the attachments to send, from which offset
	MsgBlobChunk  MessageType = 0x0c // agent → hub: part of an attachment
	MsgBlobAck    MessageType = 0x0d // hub → agent: an attachment is durably held, or refused
)

var msgNames = map[MessageType]string{
	MsgHello: "hello", MsgHelloOK: "hello-ok", MsgChunk: "chunk", MsgDone: "done", MsgAck: "ack",
	MsgDownBundle: "down-bundle", MsgError: "error", MsgBye: "bye",
	MsgBlobQuery: "blob-query", MsgBlobNeed: "blob-need", MsgBlobChunk: "blob-chunk", MsgBlobAck: "blob-ack",
}

// String returns the message type's name as docs/protocol.md writes it.
func (t MessageType) String() string {
	if s, ok := msgNames[t]; ok {
		return s
	}
	return fmt.Sprintf("type 0x%02x", byte(t))
}

// maxPayload is each type's payload limit.
func (t MessageType) maxPayload() int {
	switch t {
	case MsgChunk:
		return maxChunkPayload
	case MsgBlobChunk:
		return maxChunkPayload + 32 // the attachment's SHA-256 instead of a seq
	case MsgDownBundle:
		return maxDownPayload
	case MsgDone, MsgBye:
		return 0
	}
	return MaxControlSize
}

// Error codes of an Error message.
const (
	CodeUnauthenticated = "unauthenticated" // not an enrolled agent, wrong key, or a bad or used enrolment secret
	CodeRevoked         = "revoked"         // the agent was revoked; it needs a new enrolment
	CodeVersion         = "version"         // the peer speaks another protocol version
	CodeTooLarge        = "too-large"       // a message or bundle is over a limit
	CodeMalformed       = "malformed"       // a message breaks the format or comes out of order
	CodeInternal        = "internal"        // the sender failed; retry later
	CodeBusy            = "busy"            // the hub is overloaded; retry later, with backoff
)

// QUIC application error codes with which the hub closes an agent's
// session early. Zero is a normal close.
const (
	// SessionSuperseded: a newer session of the same agent replaced this
	// one (the hub keeps one session per agent).
	SessionSuperseded = 1
	// SessionRevoked: the hub's operator revoked the agent.
	SessionRevoked = 2
)

// Ack states: what the hub did with a bundle it received whole. Every state
// but AckRefused means the hub holds the bundle durably.
const (
	AckApplied     = "applied"     // its records were applied
	AckDuplicate   = "duplicate"   // it was applied before; nothing changed
	AckHeld        = "held"        // kept, and applied once the bundles before it arrive
	AckQuarantined = "quarantined" // kept aside, not applied; Reason says why
	AckRefused     = "refused"     // not kept; sending it again will not help; Reason says why
)

// Message is one wire message: *Hello, *HelloOK, *Chunk, *Done, *Ack,
// *DownBundle, *Error, *Bye, *BlobQuery, *BlobNeed, *BlobChunk or
// *BlobAck.
type Message interface {
	Type() MessageType
}

// Hello opens a session (agent → hub).
type Hello struct {
	Version int    `json:"version"`
	Agent   string `json:"agent"`
	Site    string `json:"site"`
	// BundleHWM is the highest bundle seq the agent has sealed.
	BundleHWM uint64 `json:"bundle_hwm"`
	// PledgeHWM and FeedbackHWM are the highest pledge change and
	// feedback seq the agent holds from hub bundles: the hub sends what
	// is after them, so a hub bundle lost on the way is sent again.
	PledgeHWM   uint64 `json:"pledge_hwm"`
	FeedbackHWM uint64 `json:"feedback_hwm"`
	// OldestUnsynced is when the oldest record the hub has not
	// acknowledged was made; zero if there is none.
	OldestUnsynced time.Time `json:"oldest_unsynced,omitzero"`
	// EnrolSecret is the enrolment file's one-time secret, sent until the
	// hub has accepted the agent once.
	EnrolSecret string `json:"enroll_secret,omitempty"`
	// AgentRecipient is the agent's age recipient, for hub bundles;
	// required with EnrolSecret.
	AgentRecipient string `json:"agent_age_recipient,omitempty"`
	// AgentKey is the agent's Ed25519 public key (EncodePublicKey). The
	// hub takes the key from the TLS handshake; if AgentKey is set, it
	// must be the same key.
	AgentKey string `json:"agent_key,omitempty"`
}

// HelloOK accepts a session (hub → agent).
type HelloOK struct {
	Version int `json:"version"`
	// HubHWM is the highest bundle seq from this agent the hub has
	// durably applied, with every bundle before it; the agent sends the
	// bundles after it.
	HubHWM uint64 `json:"hub_hwm_for_agent"`
	// Partial is the bundle the hub holds in part, if any: the agent
	// resumes it at Offset.
	Partial Partial `json:"partial,omitzero"`
	// DownPending is how many hub bundles wait for the agent.
	DownPending int `json:"down_pending,omitempty"`
}

// Partial is a bundle of which the hub durably holds the first Offset bytes.
type Partial struct {
	Seq    uint64 `json:"seq"`
	Offset uint64 `json:"offset"`
}

// Chunk carries bytes [Offset, Offset+len(Data)) of the age file of the
// agent's bundle Seq, which is Total bytes long (agent → hub). Final marks
// the chunk that ends at Total.
type Chunk struct {
	Seq    uint64
	Offset uint64
	Total  uint64
	Final  bool
	Data   []byte
}

// Done says the agent has sent every bundle it will send in this session.
type Done struct{}

// Ack says what the hub did with bundle Seq (hub → agent). The hub sends it
// only once the outcome is durable.
type Ack struct {
	Seq    uint64 `json:"seq"`
	State  string `json:"state"` // AckApplied, AckDuplicate, AckHeld, AckQuarantined, AckRefused
	Reason string `json:"reason,omitempty"`
}

// DownBundle carries one whole hub bundle (hub → agent).
type DownBundle struct {
	Seq  uint64
	Data []byte
}

// Error refuses a session, with one of the Code constants and a sentence
// for the person reading the log. Its sender closes the stream after it.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Bye ends a session (hub → agent).
type Bye struct{}

// Type implements Message.
func (*Hello) Type() MessageType { return MsgHello }

// Type implements Message.
func (*HelloOK) Type() MessageType { return MsgHelloOK }

// Type implements Message.
func (*Chunk) Type() MessageType { return MsgChunk }

// Type implements Message.
func (*Done) Type() MessageType { return MsgDone }

// Type implements Message.
func (*Ack) Type() MessageType { return MsgAck }

// Type implements Message.
func (*DownBundle) Type() MessageType { return MsgDownBundle }

// Type implements Message.
func (*Error) Type() MessageType { return MsgError }

// Type implements Message.
func (*Bye) Type() MessageType { return MsgBye }

// Error lets a received Error message be returned as an error.
func (e *Error) Error() string { return e.Code + ": " + e.Message }

// MessageError is the error for a frame that breaks the protocol. Code is
// CodeMalformed, CodeTooLarge or CodeVersion: the code of the Error message
// to answer with.
type MessageError struct {
	Type MessageType // zero if the type byte was not read
	Code string
	Err  error
}

func (e *MessageError) Error() string {
	what := "message"
	if e.Type != 0 {
		what = e.Type.String() + " message"
	}
	switch e.Code {
	case CodeTooLarge:
		return what + " is too large: " + e.Err.Error()
	case CodeVersion:
		return what + " has an unsupported version: " + e.Err.Error()
	}
	return what + " is malformed: " + e.Err.Error()
}

func (e *MessageError) Unwrap() error { return e.Err }

func msgErr(t MessageType, code, format string, args ...any) *MessageError {
	return &MessageError{Type: t, Code: code, Err: fmt.Errorf(format, args...)}
}

// WriteMessage writes m to w as one frame, in one Write. It refuses a
// message that ReadMessage would refuse, except that it shortens an Error's
// Message and an Ack's Reason to their limits and replaces control
// characters in them, since those carry text from anywhere.
func WriteMessage(w io.Writer, m Message) error {
	frame, err := AppendMessage(nil, m)
	if err != nil {
		return err
	}
	_, err = w.Write(frame)
	return err
}

// AppendMessage appends m's frame to b.
func AppendMessage(b []byte, m Message) ([]byte, error) {
	if m == nil {
		return b, errors.New("write message: nil message")
	}
	t := m.Type()
	var payload []byte
	switch m := m.(type) {
	case *Chunk:
		if err := m.validate(); err != nil {
			return b, err
		}
		payload = binary.AppendUvarint(payload, m.Seq)
		payload = binary.AppendUvarint(payload, m.Offset)
		payload = binary.AppendUvarint(payload, m.Total)
		payload = append(payload, boolByte(m.Final))
		payload = append(payload, m.Data...)
	case *DownBundle:
		if err := m.validate(); err != nil {
			return b, err
		}
		payload = binary.AppendUvarint(payload, m.Seq)
		payload = append(payload, m.Data...)
	case *BlobChunk:
		if err := m.validate(); err != nil {
			return b, err
		}
		payload = append(payload, m.Hash[:]...)
		payload = binary.AppendUvarint(payload, m.Offset)
		payload = binary.AppendUvarint(payload, m.Total)
		payload = append(payload, boolByte(m.Final))
		payload = append(payload, m.Data...)
	case *BlobAck:
		c := *m
		c.Reason = clipText(c.Reason, MaxNoteLen)
		if err := c.validate(); err != nil {
			return b, err
		}
		payload, _ = json.Marshal(&c)
	case *BlobQuery, *BlobNeed:
		if err := m.(interface{ validate() error }).validate(); err != nil {
			return b, err
		}
		var err error
		if payload, err = json.Marshal(m); err != nil {
			return b, msgErr(t, CodeMalformed, "%v", err)
		}
	case *Done, *Bye:
	case *Error:
		c := *m
		c.Message = clipText(c.Message, MaxErrorMessageLen)
		if err := c.validate(); err != nil {
			return b, err
		}
		payload, _ = json.Marshal(&c)
	case *Ack:
		c := *m
		c.Reason = clipText(c.Reason, MaxNoteLen)
		if err := c.validate(); err != nil {
			return b, err
		}
		payload, _ = json.Marshal(&c)
	case *Hello, *HelloOK:
		if err := m.(interface{ validate() error }).validate(); err != nil {
			return b, err
		}
		var err error
		if payload, err = json.Marshal(m); err != nil {
			return b, msgErr(t, CodeMalformed, "%v", err)
		}
	default:
		return b, fmt.Errorf("write message: %T is not a wire message", m)
	}
	if len(payload) > t.maxPayload() {
		return b, msgErr(t, CodeTooLarge, "%d bytes, over the %d-byte limit", len(payload), t.maxPayload())
	}
	b = append(b, byte(t))
	b = binary.AppendUvarint(b, uint64(len(payload)))
	return append(b, payload...), nil
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// ReadMessage reads one frame from r and returns its message. It reads
// nothing past the frame. At a clean end of input between frames it returns
// io.EOF, inside a frame io.ErrUnexpectedEOF; a frame that breaks the
// protocol gives a *MessageError. Data in the messages it returns does not
// alias r's buffers.
func ReadMessage(r io.Reader) (Message, error) {
	br, ok := r.(io.ByteReader)
	if !ok {
		br = byteReader{r}
	}
	tb, err := br.ReadByte()
	if err != nil {
		return nil, err
	}
	t := MessageType(tb)
	if _, known := msgNames[t]; !known {
		return nil, msgErr(t, CodeMalformed, "unknown message type 0x%02x (does the peer speak a newer protocol?)", tb)
	}
	n, err := readUvarint(br)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		var me *MessageError
		if errors.As(err, &me) {
			me.Type = t
		}
		return nil, err
	}
	if n > uint64(t.maxPayload()) {
		return nil, msgErr(t, CodeTooLarge, "%d bytes, over the %d-byte limit", n, t.maxPayload())
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return decodePayload(t, payload)
}

// byteReader reads single bytes from an io.Reader without buffering, so
// that ReadMessage never reads past its frame.
type byteReader struct{ r io.Reader }

func (b byteReader) ReadByte() (byte, error) {
	var one [1]byte
	_, err := io.ReadFull(b.r, one[:])
	return one[0], err
}

// readUvarint reads a minimally encoded uvarint.
func readUvarint(br io.ByteReader) (uint64, error) {
	var x uint64
	for i := range binary.MaxVarintLen64 {
		c, err := br.ReadByte()
		if err != nil {
			if i > 0 && err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		if i == binary.MaxVarintLen64-1 && c > 1 {
			return 0, msgErr(0, CodeMalformed, "length overflows 64 bits")
		}
		x |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			if c == 0 && i > 0 {
				return 0, msgErr(0, CodeMalformed, "length is not minimally encoded")
			}
			return x, nil
		}
	}
	return 0, msgErr(0, CodeMalformed, "length overflows 64 bits")
}

// uvarint decodes a minimally encoded uvarint from the front of b.
func uvarint(b []byte) (uint64, []byte, bool) {
	x, n := binary.Uvarint(b)
	if n <= 0 || n != len(binary.AppendUvarint(nil, x)) {
		return 0, nil, false
	}
	return x, b[n:], true
}

// DecodeMessage decodes a whole frame held in frame, as ReadMessage reads
// it; trailing bytes after the frame are an error.
func DecodeMessage(frame []byte) (Message, error) {
	r := bytes.NewReader(frame)
	m, err := ReadMessage(r)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if r.Len() != 0 {
		return nil, msgErr(m.Type(), CodeMalformed, "%d bytes after the frame", r.Len())
	}
	return m, nil
}

func decodePayload(t MessageType, p []byte) (Message, error) {
	var m Message
	switch t {
	case MsgChunk:
		seq, rest, ok1 := uvarint(p)
		off, rest, ok2 := uvarint(rest)
		total, rest, ok3 := uvarint(rest)
		if !ok1 || !ok2 || !ok3 || len(rest) < 1 {
			return nil, msgErr(t, CodeMalformed, "bad header")
		}
		if rest[0] > 1 {
			return nil, msgErr(t, CodeMalformed, "final flag is %d, not 0 or 1", rest[0])
		}
		c := &Chunk{Seq: seq, Offset: off, Total: total, Final: rest[0] == 1, Data: rest[1:]}
		if err := c.validate(); err != nil {
			return nil, err
		}
		return c, nil
	case MsgBlobChunk:
		return decodeBlobChunk(p)
	case MsgDownBundle:
		seq, rest, ok := uvarint(p)
		if !ok {
			return nil, msgErr(t, CodeMalformed, "bad header")
		}
		d := &DownBundle{Seq: seq, Data: rest}
		if err := d.validate(); err != nil {
			return nil, err
		}
		return d, nil
	case MsgDone:
		return &Done{}, nil // length 0 was enforced by maxPayload
	case MsgBye:
		return &Bye{}, nil
	case MsgHello, MsgHelloOK:
		// The version is looked at first, so that a newer peer's message
		// is answered with CodeVersion rather than refused as malformed.
		var probe struct {
			Version int `json:"version"`
		}
		if err := json.Unmarshal(p, &probe); err != nil {
			return nil, msgErr(t, CodeMalformed, "%s", describeJSON(err))
		}
		if probe.Version != Version && probe.Version > 0 {
			if t == MsgHello {
				return &Hello{Version: probe.Version}, nil
			}
			return &HelloOK{Version: probe.Version}, nil
		}
		if t == MsgHello {
			m = new(Hello)
		} else {
			m = new(HelloOK)
		}
	case MsgAck:
		m = new(Ack)
	case MsgBlobQuery:
		m = new(BlobQuery)
	case MsgBlobNeed:
		m = new(BlobNeed)
	case MsgBlobAck:
		m = new(BlobAck)
	case MsgError:
		m = new(Error)
	default:
		return nil, msgErr(t, CodeMalformed, "unknown message type")
	}
	if err := decodeCanonical(p, m); err != nil {
		return nil, msgErr(t, CodeMalformed, "%v", err)
	}
	if err := m.(interface{ validate() error }).validate(); err != nil {
		return nil, err
	}
	return m, nil
}

func (h *Hello) validate() error {
	bad := func(format string, args ...any) error { return msgErr(MsgHello, CodeMalformed, format, args...) }
	if h.Version != Version {
		return msgErr(MsgHello, CodeVersion, "version %d, this program speaks %d", h.Version, Version)
	}
	if err := checkID("agent", h.Agent); err != nil {
		return bad("%v", err)
	}
	if err := checkID("site", h.Site); err != nil {
		return bad("%v", err)
	}
	if len(h.EnrolSecret) > MaxSecretLen || !printableASCII(h.EnrolSecret) {
		return bad("enroll_secret is not an enrolment secret")
	}
	if len(h.AgentRecipient) > MaxRecipientLen || !printableASCII(h.AgentRecipient) ||
		(h.AgentRecipient != "" && !strings.HasPrefix(h.AgentRecipient, "age1")) {
		return bad("agent_age_recipient is not an age recipient")
	}
	if h.EnrolSecret != "" && h.AgentRecipient == "" {
		return bad("an enrolling agent sends its agent_age_recipient")
	}
	if h.AgentKey != "" {
		if _, err := ParsePublicKey(h.AgentKey); err != nil {
			return bad("agent_key: %v", err)
		}
	}
	return nil
}

func (h *HelloOK) validate() error {
	if h.Version != Version {
		return msgErr(MsgHelloOK, CodeVersion, "version %d, this program speaks %d", h.Version, Version)
	}
	p := h.Partial
	switch {
	case p.Seq == 0 && p.Offset != 0:
		return msgErr(MsgHelloOK, CodeMalformed, "partial has an offset but no seq")
	case p.Seq != 0 && p.Seq != h.HubHWM+1:
		return msgErr(MsgHelloOK, CodeMalformed, "partial bundle %d is not the one after %d", p.Seq, h.HubHWM)
	case p.Offset > MaxBundleSize:
		return msgErr(MsgHelloOK, CodeTooLarge, "partial offset %d is over the bundle limit", p.Offset)
	case h.DownPending < 0:
		return msgErr(MsgHelloOK, CodeMalformed, "down_pending is negative")
	}
	return nil
}

func (c *Chunk) validate() error {
	bad := func(format string, args ...any) error { return msgErr(MsgChunk, CodeMalformed, format, args...) }
	end := c.Offset + uint64(len(c.Data))
	switch {
	case c.Total > MaxBundleSize:
		return msgErr(MsgChunk, CodeTooLarge, "bundle %d is %d bytes, over the %d-byte limit", c.Seq, c.Total, MaxBundleSize)
	case len(c.Data) > MaxChunk:
		return msgErr(MsgChunk, CodeTooLarge, "%d data bytes, over the %d-byte limit", len(c.Data), MaxChunk)
	case c.Seq < 1:
		return bad("bundle seq is 0")
	case c.Offset > c.Total || end > c.Total:
		return bad("bytes %d to %d run past the bundle's %d", c.Offset, end, c.Total)
	case c.Final && end != c.Total:
		return bad("final chunk ends at %d, not at the bundle's end %d", end, c.Total)
	case !c.Final && end == c.Total:
		return bad("chunk ends the bundle but is not marked final")
	}
	return nil
}

func (d *DownBundle) validate() error {
	switch {
	case len(d.Data) > MaxDownBundleSize:
		return msgErr(MsgDownBundle, CodeTooLarge, "bundle %d is %d bytes, over the %d-byte limit", d.Seq, len(d.Data), MaxDownBundleSize)
	case d.Seq < 1:
		return msgErr(MsgDownBundle, CodeMalformed, "bundle seq is 0")
	case len(d.Data) == 0:
		return msgErr(MsgDownBundle, CodeMalformed, "bundle %d is empty", d.Seq)
	}
	return nil
}

func (a *Ack) validate() error {
	if a.Seq < 1 {
		return msgErr(MsgAck, CodeMalformed, "bundle seq is 0")
	}
	switch a.State {
	case AckApplied, AckDuplicate, AckHeld, AckQuarantined, AckRefused:
	default:
		return msgErr(MsgAck, CodeMalformed, "state %q is not one of applied, duplicate, held, quarantined, refused", a.State)
	}
	if err := checkText("reason", a.Reason, MaxNoteLen); err != nil {
		return msgErr(MsgAck, CodeMalformed, "%v", err)
	}
	return nil
}

var codeRE = regexp.MustCompile(`^[a-z][a-z-]{0,31}$`)

func (e *Error) validate() error {
	// Codes this version does not know are accepted: an Error ends the
	// session whatever its code, and the message says why.
	if !codeRE.MatchString(e.Code) {
		return msgErr(MsgError, CodeMalformed, "code %q is not an error code", truncate(e.Code, 40))
	}
	if err := checkText("message", e.Message, MaxErrorMessageLen); err != nil {
		return msgErr(MsgError, CodeMalformed, "%v", err)
	}
	return nil
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// clipText makes s acceptable to checkText: invalid UTF-8 and control
// characters other than newline and tab become U+FFFD, and it is cut to at
// most max bytes on a character boundary.
func clipText(s string, max int) string {
	if len(s) <= max && checkText("", s, max) == nil {
		return s
	}
	var b strings.Builder
	for _, c := range strings.ToValidUTF8(s, "\uFFFD") {
		if c < 0x20 && c != '\n' && c != '\t' || c == 0x7f {
			c = utf8.RuneError
		}
		if b.Len()+utf8.RuneLen(c) > max {
			break
		}
		b.WriteRune(c)
	}
	return b.String()
}
