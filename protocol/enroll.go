package protocol

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"strconv"
	"strings"
	"time"

	"filippo.io/age"
)

// EnrolmentFormat is the format field of an enrolment file.
const EnrolmentFormat = "fieldsync-enrol/1"

// MaxEnrolmentSize bounds an enrolment file (the hub's hybrid age recipient
// alone is about 1,960 characters).
const MaxEnrolmentSize = 16 << 10

// EnrolmentSecretSize is the length of an enrolment's one-time secret, in
// bytes before encoding.
const EnrolmentSecretSize = 32

// Enrolment is the one-time file `hub enroll` writes and
// `agent init --enroll` reads: where the hub is, how to recognise it, and
// who the new agent is. It is JSON; docs/protocol.md describes each field.
// The file holds a secret: it is carried to the site privately and is
// worthless once the agent has synced once.
type Enrolment struct {
	Format string `json:"format"` // EnrolmentFormat
	// HubAddr is HOST:PORT of the hub's QUIC endpoint.
	HubAddr string `json:"hub_addr"`
	// HubKeyPin is the Fingerprint of the hub's Ed25519 key: its TLS key
	// and the key that signs hub bundles.
	HubKeyPin string `json:"hub_tls_key_pin"`
	// HubKey is that key (EncodePublicKey); its fingerprint is HubKeyPin.
	HubKey string `json:"hub_key"`
	// HubRecipient is the hub's hybrid post-quantum age recipient
	// ("age1pq1…"), to which the agent encrypts its bundles.
	HubRecipient string `json:"hub_recipient"`
	Site         string `json:"site"`
	SiteName     string `json:"site_name"`
	Sector       string `json:"sector,omitempty"`
	Region       string `json:"region,omitempty"`
	// AgentID is the id the hub assigned to the new agent.
	AgentID string `json:"agent_id"`
	// Secret is EnrolmentSecretSize random bytes, unpadded base64url; the
	// agent presents it once, in its first Hello.
	Secret string `json:"secret"`
	// Expires is when the hub stops accepting Secret.
	Expires time.Time `json:"expires"`
}

// Validate checks every field of an enrolment. It does not check Expires
// against the clock: the hub does, when the agent first syncs.
func (e *Enrolment) Validate() error {
	if e.Format != EnrolmentFormat {
		return fieldErr("format", "%q, want %q", truncate(e.Format, 40), EnrolmentFormat)
	}
	if err := checkHostPort(e.HubAddr); err != nil {
		return err
	}
	if err := checkFingerprint(e.HubKeyPin); err != nil {
		return fieldErr("hub_tls_key_pin", "%v", err)
	}
	pub, err := ParsePublicKey(e.HubKey)
	if err != nil {
		return fieldErr("hub_key", "%v", err)
	}
	if Fingerprint(pub) != e.HubKeyPin {
		return fieldErr("hub_key", "does not match hub_tls_key_pin; the file was altered or mixed up")
	}
	if len(e.HubRecipient) > MaxRecipientLen {
		return fieldErr("hub_recipient", "is not an age recipient")
	}
	if _, err := age.ParseHybridRecipient(e.HubRecipient); err != nil {
		return fieldErr("hub_recipient", "is not a post-quantum age recipient (age1pq1…)")
	}
	if err := checkID("site", e.Site); err != nil {
		return err
	}
	if strings.TrimSpace(e.SiteName) == "" {
		return fieldErr("site_name", "is empty")
	}
	for _, f := range []struct{ name, v string }{{"site_name", e.SiteName}, {"sector", e.Sector}, {"region", e.Region}} {
		if err := checkText(f.name, f.v, MaxTextLen); err != nil {
			return err
		}
	}
	if err := checkID("agent_id", e.AgentID); err != nil {
		return err
	}
	if s, err := base64.RawURLEncoding.Strict().DecodeString(e.Secret); err != nil || len(s) != EnrolmentSecretSize {
		return fieldErr("secret", "is not %d bytes of unpadded base64url", EnrolmentSecretSize)
	}
	if e.Expires.IsZero() {
		return fieldErr("expires", "is missing")
	}
	return nil
}

func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || len(addr) > 255 || !printableASCII(addr) {
		return fieldErr("hub_addr", "%q is not HOST:PORT", truncate(addr, 80))
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 || strconv.Itoa(p) != port {
		return fieldErr("hub_addr", "%q has no port between 1 and 65535", truncate(addr, 80))
	}
	return nil
}

// Write writes e as indented JSON, after checking it.
func (e *Enrolment) Write(w io.Writer) error {
	if err := e.Validate(); err != nil {
		return fmt.Errorf("enrolment: %w", err)
	}
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return fmt.Errorf("enrolment: %w", err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// ParseEnrolment reads an enrolment file: at most MaxEnrolmentSize bytes of
// one JSON object with the fields of Enrolment and no others, which must
// pass Validate. A UTF-8 byte order mark (which some Windows editors add)
// is ignored. Its errors are one line, for the person running
// `agent init`.
func ParseEnrolment(r io.Reader) (*Enrolment, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxEnrolmentSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxEnrolmentSize {
		return nil, fmt.Errorf("file is larger than an enrolment file (%d bytes); is it the right file?", MaxEnrolmentSize)
	}
	data = bytes.TrimPrefix(data, []byte("\uFEFF"))
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("enrolment file is empty")
	}
	var probe struct {
		Format string `json:"format"`
	}
	if err := json.NewDecoder(bytes.NewReader(data)).Decode(&probe); err != nil {
		return nil, fmt.Errorf("not an enrolment file: %s", jsonErr(data, err))
	}
	if probe.Format != EnrolmentFormat {
		if strings.HasPrefix(probe.Format, "fieldsync-enrol/") {
			return nil, fmt.Errorf("enrolment format %q is not %q; upgrade the agent", truncate(probe.Format, 40), EnrolmentFormat)
		}
		return nil, fmt.Errorf("not an enrolment file (format is %q, want %q)", truncate(probe.Format, 40), EnrolmentFormat)
	}
	var e Enrolment
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("enrolment file: %s", jsonErr(data, err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("enrolment file has data after its JSON object")
	}
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("enrolment file: %w", err)
	}
	return &e, nil
}

// jsonErr words a JSON decoding error of data with its line.
func jsonErr(data []byte, err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("line %d: %s", 1+bytes.Count(data[:min(se.Offset, int64(len(data)))], []byte("\n")), describeJSON(err))
	}
	return describeJSON(err)
}

// describeJSON words a JSON decoding error without Go type names.
func describeJSON(err error) string {
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &te) && te.Field == "":
		return fmt.Sprintf("not a JSON object (found %s)", te.Value)
	case errors.As(err, &te):
		return fmt.Sprintf("%s: wrong type (%s, want %s)", te.Field, te.Value, jsonKind(te.Type.Kind()))
	case err == io.EOF:
		return "empty"
	case err == io.ErrUnexpectedEOF:
		return "JSON ends early"
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

func jsonKind(k reflect.Kind) string {
	switch k {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		return "list"
	case reflect.Struct, reflect.Map, reflect.Pointer:
		return "object"
	}
	return "number"
}
