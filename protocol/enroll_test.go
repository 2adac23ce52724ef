package protocol

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
)

func testEnrolment(t testing.TB) *Enrolment {
	t.Helper()
	pub := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32)).Public().(ed25519.PublicKey)
	id, err := age.GenerateHybridIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return &Enrolment{
		Format:       EnrolmentFormat,
		HubAddr:      "hub.example.org:4433",
		HubKeyPin:    Fingerprint(pub),
		HubKey:       EncodePublicKey(pub),
		HubRecipient: id.Recipient().String(),
		Site:         testSite,
		SiteName:     "Київська ТЕЦ-5, substation 2",
		Sector:       "energy",
		Region:       "Kyiv",
		AgentID:      testAgent,
		Secret:       base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{0xa5}, EnrolmentSecretSize)),
		Expires:      testAt.Add(14 * 24 * time.Hour),
	}
}

func TestEnrolmentRoundTrip(t *testing.T) {
	e := testEnrolment(t)
	var buf bytes.Buffer
	if err := e.Write(&buf); err != nil {
		t.Fatal(err)
	}
	text := buf.String()
	for _, want := range []string{`"format": "fieldsync-enrol/1"`, `"hub_tls_key_pin": "SHA256:`, `"hub_recipient": "age1pq1`} {
		if !strings.Contains(text, want) {
			t.Errorf("enrolment file lacks %s:\n%s", want, text)
		}
	}
	for name, input := range map[string]string{
		"as written":   text,
		"with BOM":     "\uFEFF" + text,
		"CRLF":         strings.ReplaceAll(text, "\n", "\r\n"),
		"compact":      compact(t, text),
		"no final EOL": strings.TrimSuffix(text, "\n"),
	} {
		got, err := ParseEnrolment(strings.NewReader(input))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !reflect.DeepEqual(got, e) {
			t.Errorf("%s: parsed\n%+v\nwant\n%+v", name, got, e)
		}
	}
}

func TestParseEnrolmentRefuses(t *testing.T) {
	good := testEnrolment(t)
	otherPub := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{8}, 32)).Public().(ed25519.PublicKey)
	x25519, _ := age.GenerateX25519Identity()
	write := func(edit func(*Enrolment)) string {
		e := *good
		edit(&e)
		b, _ := json.MarshalIndent(&e, "", "  ") // Write would refuse it
		return string(b)
	}
	tests := []struct {
		name, input, want string
	}{
		{"empty", "", "enrolment file is empty"},
		{"blank", "\r\n\t \n", "enrolment file is empty"},
		{"not JSON", "hub_addr = x\n", "line 1"},
		{"syntax error on line 3", "{\n\"format\": \"fieldsync-enrol/1\",\n\"site\" \"x\"\n}", "line 3"},
		{"a bundle", "age-encryption.org/v1\n-> mlkem768x25519 …", "not an enrolment file"},
		{"other JSON", `{"records":[]}`, "not an enrolment file (format is \"\""},
		{"newer format", `{"format":"fieldsync-enrol/2","hub_addr":"x"}`, "upgrade the agent"},
		{"too large", `{"format":"fieldsync-enrol/1","x":"` + strings.Repeat("a", MaxEnrolmentSize) + `"}`, "larger than an enrolment file"},
		{"unknown field", strings.Replace(write(func(*Enrolment) {}), "{", `{"colour": "red",`, 1), `unknown field "colour"`},
		{"trailing data", write(func(*Enrolment) {}) + "{}", "data after"},
		{"wrong type", strings.Replace(write(func(*Enrolment) {}), `"site": "UA-KV-017"`, `"site": 17`, 1), "site: wrong type (number, want string)"},
		{"no port", write(func(e *Enrolment) { e.HubAddr = "hub.example.org" }), "hub_addr"},
		{"port 0", write(func(e *Enrolment) { e.HubAddr = "hub.example.org:0" }), "hub_addr"},
		{"port name", write(func(e *Enrolment) { e.HubAddr = "hub.example.org:https" }), "hub_addr"},
		{"bad pin", write(func(e *Enrolment) { e.HubKeyPin = "SHA256:abc" }), "hub_tls_key_pin"},
		{"pin of another key", write(func(e *Enrolment) { e.HubKeyPin = Fingerprint(otherPub) }), "does not match hub_tls_key_pin"},
		{"no hub key", write(func(e *Enrolment) { e.HubKey = "" }), "hub_key"},
		{"classic recipient", write(func(e *Enrolment) { e.HubRecipient = x25519.Recipient().String() }), "post-quantum"},
		{"bad site", write(func(e *Enrolment) { e.Site = "UA KV" }), "site"},
		{"no site name", write(func(e *Enrolment) { e.SiteName = " " }), "site_name"},
		{"bad agent id", write(func(e *Enrolment) { e.AgentID = "" }), "agent_id"},
		{"short secret", write(func(e *Enrolment) { e.Secret = "abc" }), "secret"},
		{"padded secret", write(func(e *Enrolment) { e.Secret = base64.URLEncoding.EncodeToString(make([]byte, 32)) }), "secret"},
		{"no expiry", write(func(e *Enrolment) { e.Expires = time.Time{} }), "expires"},
		{"control character", write(func(e *Enrolment) { e.Region = "Kyiv\x1b" }), "region"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseEnrolment(strings.NewReader(tt.input))
			if err == nil {
				t.Fatal("ParseEnrolment accepted it")
			}
			if !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q, want one line with %q", err, tt.want)
			}
		})
	}
}

func compact(t *testing.T, s string) string {
	var buf bytes.Buffer
	if err := json.Compact(&buf, []byte(s)); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func TestEnrolmentWriteRefuses(t *testing.T) {
	e := testEnrolment(t)
	e.Secret = ""
	var buf bytes.Buffer
	if err := e.Write(&buf); err == nil || buf.Len() != 0 {
		t.Errorf("Write of an enrolment without secret: %v, %d bytes", err, buf.Len())
	}
}

// TestEnrolmentVector keeps testdata/enrolment.json, an enrolment file as
// `hub enroll` writes it.
func TestEnrolmentVector(t *testing.T) {
	const path = "testdata/enrolment.json"
	if *update {
		var buf bytes.Buffer
		if err := testEnrolment(t).Write(&buf); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("%v (run go test -run Vector -update)", err)
	}
	defer f.Close()
	e, err := ParseEnrolment(f)
	if err != nil {
		t.Fatal(err)
	}
	if e.Site != testSite || e.AgentID != testAgent {
		t.Errorf("vector is for %s/%s", e.Site, e.AgentID)
	}
}
