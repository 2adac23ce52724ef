package protocol

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"

	"filippo.io/age"
)

// fuzzKey signs what the fuzz targets build; fuzzSender is its agent.
var (
	fuzzKey    = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x42}, ed25519.SeedSize))
	fuzzPub    = fuzzKey.Public().(ed25519.PublicKey)
	fuzzSender = "A-fuzz"
)

// fuzzParties loads the vector identity and sender, so that seeds from
// testdata/ open, and returns a verify callback that knows both senders.
func fuzzParties(f *testing.F) (*age.HybridIdentity, func(*Manifest) (ed25519.PublicKey, error), []byte) {
	idText, err := os.ReadFile(vectorIdentity)
	if err != nil {
		f.Fatal(err)
	}
	ids, err := age.ParseIdentities(bytes.NewReader(idText))
	if err != nil {
		f.Fatal(err)
	}
	js, err := os.ReadFile(vectorExpect)
	if err != nil {
		f.Fatal(err)
	}
	var v bundleVector
	if err := json.Unmarshal(js, &v); err != nil {
		f.Fatal(err)
	}
	vpub, err := ParsePublicKey(v.SenderKey)
	if err != nil {
		f.Fatal(err)
	}
	data, err := os.ReadFile(vectorBundle)
	if err != nil {
		f.Fatal(err)
	}
	verify := func(m *Manifest) (ed25519.PublicKey, error) {
		switch m.From {
		case v.Manifest.From:
			return vpub, nil
		case fuzzSender, HubSender:
			return fuzzPub, nil
		}
		return nil, errors.New("unknown")
	}
	return ids[0].(*age.HybridIdentity), verify, data
}

func fuzzManifest(kind BundleKind) Manifest {
	if kind == KindHub {
		return Manifest{Kind: KindHub, From: HubSender, To: fuzzSender, Site: testSite, Seq: 2, PrevHash: strings.Repeat("0f", 32), Created: testAt}
	}
	return Manifest{Kind: KindRecords, From: fuzzSender, To: "SHA256:hub", Site: testSite, Seq: 1, Created: testAt}
}

// checkOpened checks what OpenBundle or DecodeSigned returned: a
// *BundleError with a known reason and a one-line message, or a bundle
// that holds to the format, and that seals again to the same content.
func checkOpened(t *testing.T, b *Bundle, err error) {
	t.Helper()
	if err != nil {
		var be *BundleError
		if !errors.As(err, &be) {
			t.Fatalf("error %v (%T) is not a *BundleError", err, err)
		}
		if _, ok := reasonText[be.Reason]; !ok || strings.Contains(be.Error(), "\n") {
			t.Fatalf("reason %q, message %q", be.Reason, be.Error())
		}
		if b != nil {
			t.Fatal("a bundle and an error")
		}
		return
	}
	m := b.Manifest
	if err := m.Validate(); err != nil {
		t.Fatalf("opened a bundle with an invalid manifest: %v", err)
	}
	if !hashRE.MatchString(b.Hash) || len(b.Records)+len(b.Down) != m.Count {
		t.Fatalf("hash %q, %d+%d items for count %d", b.Hash, len(b.Records), len(b.Down), m.Count)
	}
	var plain []byte
	if m.Kind == KindRecords {
		for i := range b.Records {
			if err := b.Records[i].Validate(); err != nil {
				t.Fatalf("opened an invalid record: %v", err)
			}
		}
		plain, _, err = encodeSigned(m, b.Records, fuzzKey)
	} else {
		for i := range b.Down {
			if err := b.Down[i].Validate(); err != nil {
				t.Fatalf("opened an invalid down item: %v", err)
			}
		}
		plain, _, err = encodeSigned(m, b.Down, fuzzKey)
	}
	if err != nil {
		t.Fatalf("what opened does not seal again: %v", err)
	}
	b2, err := DecodeSigned(bytes.NewReader(plain), func(*Manifest) (ed25519.PublicKey, error) { return fuzzPub, nil })
	if err != nil {
		t.Fatalf("sealed again, it does not open: %v", err)
	}
	m2 := b2.Manifest
	m2.BodySize = m.BodySize
	if !reflect.DeepEqual(m2, m) || asJSON(t, b2.Records) != asJSON(t, b.Records) || asJSON(t, b2.Down) != asJSON(t, b.Down) {
		t.Fatalf("sealed again, it opens to something else")
	}
}

func reasonOf(err error) string {
	var be *BundleError
	if errors.As(err, &be) {
		return be.Reason
	}
	return ""
}

// FuzzOpenBundle feeds arbitrary bytes to OpenBundle as an age file, to
// DecodeSigned as a plaintext, and to OpenBundle again after encrypting
// them, which must agree with DecodeSigned.
func FuzzOpenBundle(f *testing.F) {
	id, verify, vector := fuzzParties(f)
	f.Add(vector)
	if pr, err := age.Decrypt(bytes.NewReader(vector), id); err == nil {
		plain, _ := io.ReadAll(pr)
		f.Add(plain)
		f.Add(plain[:len(plain)/2])
	}
	up, _, _ := encodeSigned(fuzzManifest(KindRecords), testRecords(4, 3), fuzzKey)
	down, _, _ := encodeSigned(fuzzManifest(KindHub), testDownItems(), fuzzKey)
	f.Add(up)
	f.Add(down)
	f.Add([]byte{})
	f.Add([]byte(BundleMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := OpenBundle(bytes.NewReader(data), id, verify)
		checkOpened(t, b, err)

		b2, err2 := DecodeSigned(bytes.NewReader(data), verify)
		checkOpened(t, b2, err2)

		var ct bytes.Buffer
		w, err := age.Encrypt(&ct, id.Recipient())
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		w.Close()
		b3, err3 := OpenBundle(&ct, id, verify)
		checkOpened(t, b3, err3)
		if reasonOf(err2) != reasonOf(err3) {
			t.Fatalf("as plaintext: %v; encrypted: %v", err2, err3)
		}
		if err2 == nil {
			sum := sha256.Sum256(data)
			if b2.Hash != hex.EncodeToString(sum[:]) || b3.Hash != b2.Hash {
				t.Fatalf("hashes %s, %s of plaintext %x", b2.Hash, b3.Hash, sum)
			}
		}
	})
}

// FuzzDecodeSigned signs what the fuzzer makes, so that it reaches past the
// signature: a manifest (with its sizes set right if fix is true) and a
// body, compressed by the reference encoder if compress is true (to reach
// the item parser) or taken as the compressed body (to reach the zstd
// decoder).
func FuzzDecodeSigned(f *testing.F) {
	for _, kind := range []BundleKind{KindRecords, KindHub} {
		m := fuzzManifest(kind)
		var raw []byte
		if kind == KindRecords {
			recs := testRecords(3, 9)
			raw = linesOf(f, recs)
			m.Count, m.FirstRecordSeq, m.LastRecordSeq = 3, 1, 3
		} else {
			for _, d := range testDownItems() {
				d.Type, _ = d.kind()
				raw = append(append(raw, asJSON(f, &d)...), '\n')
			}
			m.Count = len(testDownItems())
		}
		m.Version = BundleVersion
		mb, _ := json.Marshal(&m)
		f.Add(mb, raw, true, true)
		f.Add(mb, zstdBody(f, raw), true, false)
	}
	verify := func(*Manifest) (ed25519.PublicKey, error) { return fuzzPub, nil }
	f.Fuzz(func(t *testing.T, manifest, raw []byte, fix, compress bool) {
		body := raw
		if compress {
			body = zstdBody(t, raw)
		}
		if fix {
			var m Manifest
			if json.Unmarshal(manifest, &m) == nil {
				m.BodySize, m.RawBodySize = int64(len(body)), int64(len(raw))
				if !compress {
					m.RawBodySize = MaxBodySize
				}
				manifest, _ = json.Marshal(&m)
			}
		}
		b, err := DecodeSigned(bytes.NewReader(assemble(manifest, body, fuzzKey)), verify)
		checkOpened(t, b, err)
	})
}

// FuzzReadMessage reads arbitrary frames. What reads must write back to the
// same bytes, and read the same through a reader without ReadByte.
func FuzzReadMessage(f *testing.F) {
	for _, tt := range testMessages() {
		frame, _ := AppendMessage(nil, tt.m)
		f.Add(frame)
	}
	f.Add(frame(MsgHello, `{"version":2}`))
	f.Add(chunkFrame(1, 0, 10, 1, "0123456789"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeMessage(data)
		m2, err2 := ReadMessage(struct{ io.Reader }{bytes.NewReader(data)})
		if err != nil {
			var me *MessageError
			if !errors.As(err, &me) && err != io.ErrUnexpectedEOF {
				t.Fatalf("error %v (%T)", err, err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error on two lines: %q", err)
			}
			if err2 == nil && len(data) > 0 {
				// Only trailing data may separate the two.
				if _, err := AppendMessage(nil, m2); err != nil && !isVersion(err) {
					t.Fatalf("DecodeMessage: %v; ReadMessage read %#v", err, m2)
				}
			}
			return
		}
		if err2 != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("ReadMessage without ReadByte: %#v, %v; want %#v", m2, err2, m)
		}
		if h, ok := m.(*Hello); ok && h.Version != Version {
			return // read only to answer with CodeVersion
		}
		if h, ok := m.(*HelloOK); ok && h.Version != Version {
			return
		}
		again, err := AppendMessage(nil, m)
		if err != nil {
			t.Fatalf("read %#v, which does not write: %v", m, err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("read\n%x\nwrote back\n%x", data, again)
		}
	})
}

func isVersion(err error) bool {
	var me *MessageError
	return errors.As(err, &me) && me.Code == CodeVersion
}

// FuzzParseEnrolment parses arbitrary enrolment files. What parses must
// write, and parse again to the same enrolment and write to the same bytes.
func FuzzParseEnrolment(f *testing.F) {
	if b, err := os.ReadFile("testdata/enrolment.json"); err == nil {
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte(`{"format":"fieldsync-enrol/1"}`))
	f.Add([]byte("\uFEFF{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := ParseEnrolment(bytes.NewReader(data))
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error on two lines: %q", err)
			}
			return
		}
		var w1, w2 bytes.Buffer
		if err := e.Write(&w1); err != nil {
			t.Fatalf("parsed, does not write: %v", err)
		}
		e2, err := ParseEnrolment(bytes.NewReader(w1.Bytes()))
		if err != nil {
			t.Fatalf("written, does not parse: %v", err)
		}
		if !reflect.DeepEqual(e, e2) {
			t.Fatalf("parses to\n%+v\nthen\n%+v", e, e2)
		}
		if err := e2.Write(&w2); err != nil || !bytes.Equal(w1.Bytes(), w2.Bytes()) {
			t.Fatalf("writes differently the second time: %v", err)
		}
	})
}

// FuzzParseSigningKey parses arbitrary key files; what parses must marshal
// and parse to the same key.
func FuzzParseSigningKey(f *testing.F) {
	good, _ := MarshalSigningKey(fuzzKey)
	f.Add(good)
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParseSigningKey(data)
		if err != nil {
			return
		}
		b, err := MarshalSigningKey(k)
		if err != nil {
			t.Fatal(err)
		}
		k2, err := ParseSigningKey(b)
		if err != nil || !k2.Equal(k) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
