package protocol

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
)

var update = flag.Bool("update", false, "rewrite the test vectors in testdata/")

// party is one end of a bundle exchange: a signing key and an age identity.
type party struct {
	key ed25519.PrivateKey
	pub ed25519.PublicKey
	id  *age.HybridIdentity
}

func newParty(t testing.TB) party {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := age.GenerateHybridIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return party{key: key, pub: pub, id: id}
}

// keyOf returns a verify callback that knows one sender.
func keyOf(from string, pub ed25519.PublicKey) func(*Manifest) (ed25519.PublicKey, error) {
	return func(m *Manifest) (ed25519.PublicKey, error) {
		if m.From != from {
			return nil, fmt.Errorf("agent %q is not enrolled", m.From)
		}
		return pub, nil
	}
}

var (
	testAt    = time.Date(2025, 3, 14, 9, 26, 53, 0, time.UTC)
	testAgent = "A-01JP3Q6Z8K4W2N5R7T9V1X3Y5Z"
	testSite  = "UA-KV-017"
)

// deliveryItems are things donors ship to sites, with serial prefixes.
var deliveryItems = []struct{ item, serial string }{
	{"FortiGate 100F next-generation firewall", "FG100FTK2"},
	{"Dell PowerEdge R650 server", "DPER650"},
	{"Cisco Catalyst 9300-48P switch", "FOC2"},
	{"Starlink Standard Kit (satellite terminal)", "SL-KIT-"},
	{"APC Smart-UPS SRT 3000VA", "AS2"},
	{"Lenovo ThinkPad T14 Gen 4 laptop", "PF4"},
	{"Inmarsat BGAN Explorer 710 terminal", "BGX7"},
	{"Synology RS1221+ backup NAS", "2150RS"},
	{"Huawei EG8145V5 ONT", "4857544"},
	{"Microsoft 365 E3 licence pack", ""},
	{"Generator fuel filter set", ""},
}

var receivers = []string{"Олена Коваленко", "Andriy Melnyk", "Іван Шевчук", "Oksana Bondarenko", "Taras Kravchenko"}

// testRecords returns n realistic records made by one agent, mostly
// deliveries, with seqs 1..n. The same seed gives the same records.
func testRecords(n int, seed uint64) []Record {
	rnd := rand.New(rand.NewPCG(seed, 42))
	alnum := func(k int) string {
		const chars = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
		b := make([]byte, k)
		for i := range b {
			b[i] = chars[rnd.IntN(len(chars))]
		}
		return string(b)
	}
	recs := make([]Record, n)
	at := testAt
	for i := range recs {
		at = at.Add(time.Duration(rnd.IntN(3600)) * time.Second)
		r := Record{
			ID:    "R-01JP" + alnum(22),
			Seq:   uint64(i + 1),
			Agent: testAgent,
			Site:  testSite,
			Type:  TypeDelivery,
			At:    at,
		}
		switch k := rnd.IntN(20); {
		case k == 0:
			r.Type, r.Course, r.Date, r.Attendees = TypeTraining, "Incident response for OT networks", at.Format(time.DateOnly), int64(3+rnd.IntN(20))
			r.Provider, r.Trainer = "CRDF Global", "M. Nowak"
		case k < 4:
			d := deliveryItems[rnd.IntN(len(deliveryItems))]
			r.Type, r.Pledge, r.Item, r.Qty = TypeConfirmation, fmt.Sprintf("P-%04d", rnd.IntN(3000)), d.item, int64(1+rnd.IntN(10))
			r.ReceivedBy, r.Role, r.Waybill = receivers[rnd.IntN(len(receivers))], "chief engineer", fmt.Sprintf("GRN-2025-%06d", rnd.IntN(999999))
			if rnd.IntN(5) == 0 {
				r.QtyRejected, r.Rejection = 1, RejectDamaged
			}
		default:
			d := deliveryItems[rnd.IntN(len(deliveryItems))]
			r.Item, r.Qty = d.item, int64(1+rnd.IntN(8))
			if d.serial != "" {
				for range r.Qty {
					r.Serials = append(r.Serials, d.serial+alnum(8))
				}
			}
			r.Condition = ConditionOK
			if rnd.IntN(10) == 0 {
				r.Condition, r.Note = ConditionDamaged, "Box crushed in transit; unit powers on, front panel cracked."
			}
			r.ReceivedBy = receivers[rnd.IntN(len(receivers))]
			r.Waybill = fmt.Sprintf("WB-%s-%06d", "UA", rnd.IntN(999999))
			if rnd.IntN(3) == 0 {
				h := sha256.Sum256([]byte(r.ID))
				r.Attachments = []Attachment{{Name: "waybill-" + r.Waybill + ".jpg", SHA256: hex.EncodeToString(h[:]), Size: int64(200_000 + rnd.IntN(2_000_000))}}
			}
		}
		recs[i] = r
	}
	return recs
}

func upManifest(seq uint64) Manifest {
	return Manifest{Kind: KindRecords, From: testAgent, To: "SHA256:hubhubhub", Site: testSite, Seq: seq, Created: testAt}
}

func testDownItems() []DownItem {
	return []DownItem{
		{Pledge: &Pledge{ID: "P-0001", Seq: 1, Site: testSite, Donor: "EU4Digital", Programme: "Cyber Resilience UA", Kind: KindHardware, Item: "FortiGate 100F", Qty: 4, At: testAt}},
		{Type: DownFeedback, Feedback: &Feedback{Seq: 7, Record: "R-1", Bundle: 3, State: FeedbackDiscrepancy, Reason: "short: received 3 of 4 pledged", At: testAt}},
		{Acked: 12},
		{Revoked: &Revocation{At: testAt, Reason: "laptop stolen"}},
	}
}

func seal[T BundleItem](t testing.TB, m Manifest, items []T, key ed25519.PrivateKey, to age.Recipient) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	hash, err := SealBundle(&buf, m, items, key, to)
	if err != nil {
		t.Fatalf("SealBundle: %v", err)
	}
	return buf.Bytes(), hash
}

func asJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestBundleRoundTrip(t *testing.T) {
	agent, hub := newParty(t), newParty(t)
	x25519, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	down := Manifest{Kind: KindHub, From: HubSender, To: testAgent, Site: testSite, Seq: 5, Created: testAt}
	tests := []struct {
		name    string
		m       Manifest
		records []Record
		down    []DownItem
		id      age.Identity
		to      age.Recipient
		key     party
	}{
		{name: "one record", m: upManifest(1), records: testRecords(1, 1), id: hub.id, to: hub.id.Recipient(), key: agent},
		{name: "1000 records", m: upManifest(1), records: testRecords(1000, 2), id: hub.id, to: hub.id.Recipient(), key: agent},
		{name: "chained", m: func() Manifest { m := upManifest(9); m.PrevHash = strings.Repeat("ab", 32); return m }(),
			records: testRecords(3, 3)[1:], id: hub.id, to: hub.id.Recipient(), key: agent},
		{name: "down hybrid", m: down, down: testDownItems(), id: agent.id, to: agent.id.Recipient(), key: hub},
		{name: "down x25519", m: down, down: testDownItems(), id: x25519, to: x25519.Recipient(), key: hub},
		{name: "down empty", m: down, down: nil, id: agent.id, to: agent.id.Recipient(), key: hub},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var data []byte
			var hash string
			if tt.m.Kind == KindRecords {
				data, hash = seal(t, tt.m, tt.records, tt.key.key, tt.to)
			} else {
				data, hash = seal(t, tt.m, tt.down, tt.key.key, tt.to)
			}
			b, err := OpenBundle(bytes.NewReader(data), tt.id, keyOf(tt.m.From, tt.key.pub))
			if err != nil {
				t.Fatalf("OpenBundle: %v", err)
			}
			if b.Hash != hash {
				t.Errorf("Hash = %s, SealBundle returned %s", b.Hash, hash)
			}
			m := b.Manifest
			if m.Version != BundleVersion || m.Count != len(tt.records)+len(tt.down) || m.BodySize <= 0 || (m.Count > 0 && m.RawBodySize < m.BodySize) {
				t.Errorf("manifest not filled in: %+v", m)
			}
			if tt.m.Kind == KindRecords {
				if m.FirstRecordSeq != tt.records[0].Seq || m.LastRecordSeq != tt.records[len(tt.records)-1].Seq {
					t.Errorf("record seqs %d..%d, want %d..%d", m.FirstRecordSeq, m.LastRecordSeq, tt.records[0].Seq, tt.records[len(tt.records)-1].Seq)
				}
				if got, want := asJSON(t, b.Records), asJSON(t, tt.records); got != want {
					t.Errorf("records differ:\n got %.300s\nwant %.300s", got, want)
				}
				if b.Down != nil {
					t.Errorf("Down = %v in a records bundle", b.Down)
				}
			} else {
				want := make([]DownItem, len(tt.down))
				for i, d := range tt.down {
					d.Type, _ = d.kind()
					want[i] = d
				}
				if got := asJSON(t, b.Down); got != asJSON(t, want) {
					t.Errorf("down items differ:\n got %s\nwant %s", got, asJSON(t, want))
				}
				if len(tt.down) > 0 && tt.down[0].Type != "" {
					t.Errorf("SealBundle changed the caller's items")
				}
			}
			// The same items sealed again give a new age file but the
			// same signed plaintext, so the same hash.
			var again []byte
			var hash2 string
			if tt.m.Kind == KindRecords {
				again, hash2 = seal(t, tt.m, tt.records, tt.key.key, tt.to)
			} else {
				again, hash2 = seal(t, tt.m, tt.down, tt.key.key, tt.to)
			}
			if bytes.Equal(again, data) || hash2 != hash {
				t.Errorf("sealing again: same ciphertext %v, hash %s vs %s", bytes.Equal(again, data), hash2, hash)
			}
		})
	}
}

// smallBundle is a sealed one-record bundle and what opens it.
type smallBundle struct {
	data   []byte
	hash   string
	id     age.Identity
	verify func(*Manifest) (ed25519.PublicKey, error)
}

func newSmallBundle(t testing.TB) smallBundle {
	agent, hub := newParty(t), newParty(t)
	data, hash := seal(t, upManifest(1), testRecords(1, 7), agent.key, hub.id.Recipient())
	return smallBundle{data: data, hash: hash, id: hub.id, verify: keyOf(testAgent, agent.pub)}
}

func wantReason(t *testing.T, err error, reasons ...string) *BundleError {
	t.Helper()
	var be *BundleError
	if !errors.As(err, &be) {
		t.Fatalf("error %v (%T) is not a *BundleError", err, err)
	}
	for _, r := range reasons {
		if be.Reason == r {
			if !strings.Contains(be.Error(), r) || strings.Contains(be.Error(), "\n\n") {
				t.Errorf("message %q does not name reason %q on one line", be.Error(), r)
			}
			return be
		}
	}
	t.Fatalf("reason %q (%v), want one of %v", be.Reason, err, reasons)
	return nil
}

func TestOpenBundleFlippedByte(t *testing.T) {
	sb := newSmallBundle(t)
	reasons := map[string]int{}
	for i := range sb.data {
		for _, mask := range []byte{0x01, 0x80} {
			bad := bytes.Clone(sb.data)
			bad[i] ^= mask
			b, err := OpenBundle(bytes.NewReader(bad), sb.id, sb.verify)
			if err == nil {
				t.Fatalf("byte %d ^ %#x: bundle opened (%d records)", i, mask, len(b.Records))
			}
			var be *BundleError
			if !errors.As(err, &be) {
				t.Fatalf("byte %d ^ %#x: %v is not a *BundleError", i, mask, err)
			}
			reasons[be.Reason]++
		}
	}
	t.Logf("%d bytes flipped two ways: %v", len(sb.data), reasons)
}

func TestOpenBundleTruncated(t *testing.T) {
	sb := newSmallBundle(t)
	for n := range len(sb.data) {
		_, err := OpenBundle(bytes.NewReader(sb.data[:n]), sb.id, sb.verify)
		if err == nil {
			t.Fatalf("cut to %d of %d bytes: bundle opened", n, len(sb.data))
		}
		// age cannot tell a chunk cut short from one altered.
		wantReason(t, err, ReasonTruncated, ReasonTampered, ReasonMalformed)
	}
	_, err := OpenBundle(bytes.NewReader(sb.data[:len(sb.data)/2]), sb.id, sb.verify)
	t.Logf("cut in half: %v", err)

	// A bundle larger than one 64 KiB age chunk, cut at a chunk boundary,
	// is reported as truncated.
	agent, hub := newParty(t), newParty(t)
	big, _ := seal(t, upManifest(1), testRecords(3000, 1), agent.key, hub.id.Recipient())
	header, _ := age.ExtractHeader(bytes.NewReader(big))
	cut := len(header) + 16 + (64<<10 + 16)
	if cut >= len(big) {
		t.Fatalf("bundle of %d bytes is not over one chunk", len(big))
	}
	_, err = OpenBundle(bytes.NewReader(big[:cut]), hub.id, keyOf(testAgent, agent.pub))
	wantReason(t, err, ReasonTruncated)
}

func TestOpenBundleRefusals(t *testing.T) {
	agent, hub, other := newParty(t), newParty(t), newParty(t)
	x25519, _ := age.GenerateX25519Identity()
	recs := testRecords(5, 1)
	good, _ := seal(t, upManifest(1), recs, agent.key, hub.id.Recipient())
	foreign, _ := seal(t, upManifest(1), recs, agent.key, other.id.Recipient())
	forged, _ := seal(t, upManifest(1), recs, other.key, hub.id.Recipient())
	verify := keyOf(testAgent, agent.pub)

	tests := []struct {
		name   string
		data   []byte
		id     age.Identity
		verify func(*Manifest) (ed25519.PublicKey, error)
		reason string
	}{
		{"encrypted to another hub", foreign, hub.id, verify, ReasonNotForUs},
		{"x25519 identity", good, x25519, verify, ReasonNotForUs},
		{"signed by another key", forged, hub.id, verify, ReasonBadSignature},
		{"checked against another key", good, hub.id, keyOf(testAgent, other.pub), ReasonBadSignature},
		{"unknown sender", good, hub.id, keyOf("A-someone-else", agent.pub), ReasonUnknownSender},
		{"no key", good, hub.id, func(*Manifest) (ed25519.PublicKey, error) { return nil, nil }, ReasonUnknownSender},
		{"empty file", nil, hub.id, verify, ReasonTruncated},
		{"not age", []byte("fieldsync-bundle/1\nhello\n"), hub.id, verify, ReasonMalformed},
		{"armored age", []byte("-----BEGIN AGE ENCRYPTED FILE-----\nYWdlLWVuY3J5cHRpb24ub3JnL3YxCg==\n"), hub.id, verify, ReasonMalformed},
		{"trailing data", append(bytes.Clone(good), 0), hub.id, verify, ReasonTampered},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := OpenBundle(bytes.NewReader(tt.data), tt.id, tt.verify)
			be := wantReason(t, err, tt.reason)
			t.Logf("%v", be)
		})
	}
}

// plainBundle builds a signed plaintext from raw parts, breaking whatever
// rule a test wants broken.
func plainBundle(t testing.TB, m Manifest, body []byte, key ed25519.PrivateKey) []byte {
	t.Helper()
	mb, err := json.Marshal(&m)
	if err != nil {
		t.Fatal(err)
	}
	return assemble(mb, body, key)
}

func zstdBody(t testing.TB, raw []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(raw, nil)
}

// linesOf returns the item lines of recs.
func linesOf(t testing.TB, recs []Record) []byte {
	var b bytes.Buffer
	for i := range recs {
		b.WriteString(asJSON(t, &recs[i]))
		b.WriteByte('\n')
	}
	return b.Bytes()
}

func TestDecodeSignedRefusals(t *testing.T) {
	agent := newParty(t)
	verify := func(*Manifest) (ed25519.PublicKey, error) { return agent.pub, nil }
	recs := testRecords(3, 5)
	manifest := func(raw, body []byte, edit func(*Manifest)) Manifest {
		m := upManifest(1)
		m.Version, m.Count, m.FirstRecordSeq, m.LastRecordSeq = 1, 3, 1, 3
		m.BodySize, m.RawBodySize = int64(len(body)), int64(len(raw))
		if edit != nil {
			edit(&m)
		}
		return m
	}
	bundle := func(raw []byte, edit func(*Manifest)) []byte {
		body := zstdBody(t, raw)
		return plainBundle(t, manifest(raw, body, edit), body, agent.key)
	}
	raw := linesOf(t, recs)
	good := bundle(raw, nil)
	if _, err := DecodeSigned(bytes.NewReader(good), verify); err != nil {
		t.Fatalf("the unbroken bundle does not decode: %v", err)
	}

	longLine := bytes.Repeat([]byte("a"), MaxItemSize+1)
	// A decompression bomb: 64 MiB of records where the manifest says 3.
	bomb := bytes.Repeat(raw, (64<<20)/len(raw))

	bigManifest := plainBundle(t, manifest(raw, nil, func(m *Manifest) { m.Site = strings.Repeat("s", MaxManifestSize) }), nil, agent.key)
	hugeLength := bytes.Clone(good)
	binary.BigEndian.PutUint32(hugeLength[len(BundleMagic):], 1<<31)

	unknownField := bytes.Replace(raw, []byte(`"seq":1,`), []byte(`"seq":1,"colour":"red",`), 1)
	nonCanonical := bytes.Replace(raw, []byte(`"seq":1,`), []byte(`"seq": 1,`), 1)
	dupKey := bytes.Replace(raw, []byte(`"seq":1,`), []byte(`"seq":1,"seq":1,`), 1)
	invalid := bytes.Replace(raw, []byte(`"type":"`), []byte(`"type":"x`), 1)

	tests := []struct {
		name   string
		data   []byte
		reason string
	}{
		{"magic v2", append([]byte("fieldsync-bundle/2\n"), good[len(BundleMagic):]...), ReasonVersion},
		{"not a bundle", []byte("PK\x03\x04 this is a zip file......"), ReasonMalformed},
		{"manifest version", bundle(raw, func(m *Manifest) { m.Version = 2 }), ReasonVersion},
		{"manifest over limit", bigManifest, ReasonTooLarge},
		{"manifest length over limit", hugeLength, ReasonTooLarge},
		{"manifest not canonical", func() []byte {
			body := zstdBody(t, raw)
			mb, _ := json.MarshalIndent(manifest(raw, body, nil), "", " ")
			return assemble(mb, body, agent.key)
		}(), ReasonMalformed},
		{"manifest invalid", bundle(raw, func(m *Manifest) { m.Kind = "sideways" }), ReasonMalformed},
		{"count over MaxItems", bundle(raw, func(m *Manifest) { m.Count = MaxItems + 1 }), ReasonTooLarge},
		{"raw size over MaxBodySize", bundle(raw, func(m *Manifest) { m.RawBodySize = MaxBodySize + 1 }), ReasonTooLarge},
		{"count too high", bundle(raw, func(m *Manifest) { m.Count = 4; m.LastRecordSeq = 4 }), ReasonMalformed},
		{"count too low", bundle(raw, func(m *Manifest) { m.Count = 2 }), ReasonMalformed},
		{"record seqs differ", bundle(raw, func(m *Manifest) { m.FirstRecordSeq = 2; m.LastRecordSeq = 4 }), ReasonMalformed},
		{"body size too small", bundle(raw, func(m *Manifest) { m.BodySize -= 1 }), ReasonMalformed},
		{"body size too big", bundle(raw, func(m *Manifest) { m.BodySize += 100 }), ReasonTruncated},
		{"raw size too big", bundle(raw, func(m *Manifest) { m.RawBodySize++ }), ReasonMalformed},
		{"item over MaxItemSize", bundle(longLine, func(m *Manifest) { m.Count = 1 }), ReasonTooLarge},
		{"decompression bomb", func() []byte {
			body := zstdBody(t, bomb)
			return plainBundle(t, manifest(raw, body, nil), body, agent.key)
		}(), ReasonTooLarge},
		{"not zstd", func() []byte {
			return plainBundle(t, manifest(raw, raw, nil), raw, agent.key)
		}(), ReasonMalformed},
		{"unknown field", bundle(unknownField, nil), ReasonMalformed},
		{"not canonical", bundle(nonCanonical, nil), ReasonMalformed},
		{"duplicate key", bundle(dupKey, nil), ReasonMalformed},
		{"invalid record", bundle(invalid, nil), ReasonMalformed},
		{"empty line", bundle(append([]byte("\n"), raw...), nil), ReasonMalformed},
		{"no final newline", bundle(raw[:len(raw)-1], func(m *Manifest) { m.RawBodySize = int64(len(raw) - 1) }), ReasonMalformed},
		{"data after signature", append(bytes.Clone(good), 'x'), ReasonMalformed},
		{"signature cut", good[:len(good)-1], ReasonTruncated},
		{"records out of order", bundle(linesOf(t, []Record{recs[1], recs[0], recs[2]}), nil), ReasonMalformed},
		{"records in a hub bundle", bundle(raw, func(m *Manifest) {
			m.Kind, m.From, m.FirstRecordSeq, m.LastRecordSeq = KindHub, HubSender, 0, 0
		}), ReasonMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeSigned(bytes.NewReader(tt.data), verify)
			be := wantReason(t, err, tt.reason)
			t.Logf("%.300v", be)
		})
	}
}

func TestDecodeSignedChecksSenderFirst(t *testing.T) {
	// A bundle whose body is cut off is refused for its unknown sender,
	// which shows the sender is checked before the body is read.
	agent := newParty(t)
	data, _, err := encodeSigned(upManifest(1), testRecords(10, 1), agent.key)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	_, err = DecodeSigned(bytes.NewReader(data[:len(data)-200]), func(m *Manifest) (ed25519.PublicKey, error) {
		calls++
		return nil, errors.New("who?")
	})
	wantReason(t, err, ReasonUnknownSender)
	if calls != 1 {
		t.Errorf("verify called %d times", calls)
	}
}

func TestSealBundleRefuses(t *testing.T) {
	agent, hub := newParty(t), newParty(t)
	to := hub.id.Recipient()
	bad := testRecords(2, 1)
	bad[1].Qty = -1
	unsorted := testRecords(2, 1)
	unsorted[0].Seq = 5
	tests := []struct {
		name string
		seal func(w io.Writer) error
	}{
		{"invalid record", func(w io.Writer) error { _, err := SealBundle(w, upManifest(1), bad, agent.key, to); return err }},
		{"unsorted records", func(w io.Writer) error { _, err := SealBundle(w, upManifest(1), unsorted, agent.key, to); return err }},
		{"no records", func(w io.Writer) error { _, err := SealBundle(w, upManifest(1), []Record{}, agent.key, to); return err }},
		{"records in a hub bundle", func(w io.Writer) error {
			m := upManifest(1)
			m.Kind = KindHub
			_, err := SealBundle(w, m, testRecords(1, 1), agent.key, to)
			return err
		}},
		{"down items in a records bundle", func(w io.Writer) error {
			_, err := SealBundle(w, upManifest(1), testDownItems(), agent.key, to)
			return err
		}},
		{"two things in one down item", func(w io.Writer) error {
			m := Manifest{Kind: KindHub, From: HubSender, To: testAgent, Site: testSite, Seq: 1, Created: testAt}
			_, err := SealBundle(w, m, []DownItem{{Acked: 3, Revoked: &Revocation{At: testAt}}}, agent.key, to)
			return err
		}},
		{"wrong seq range", func(w io.Writer) error {
			m := upManifest(1)
			m.FirstRecordSeq = 7
			_, err := SealBundle(w, m, testRecords(2, 1), agent.key, to)
			return err
		}},
		{"chain missing", func(w io.Writer) error {
			_, err := SealBundle(w, upManifest(2), testRecords(2, 1), agent.key, to)
			return err
		}},
		{"no created time", func(w io.Writer) error {
			m := upManifest(1)
			m.Created = time.Time{}
			_, err := SealBundle(w, m, testRecords(2, 1), agent.key, to)
			return err
		}},
		{"bad key", func(w io.Writer) error {
			_, err := SealBundle(w, upManifest(1), testRecords(2, 1), agent.key[:5], to)
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := tt.seal(&buf)
			if err == nil {
				t.Fatal("SealBundle succeeded")
			}
			if buf.Len() != 0 {
				t.Errorf("SealBundle wrote %d bytes before failing", buf.Len())
			}
			t.Log(err)
		})
	}
}

// TestBundleOpensWithAgeCLI checks the promise to operators: the reference
// age tool opens a bundle with the hub's identity file.
func TestBundleOpensWithAgeCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the age command")
	}
	dir := t.TempDir()
	ageBin := filepath.Join(dir, "age")
	build := exec.Command("go", "build", "-o", ageBin, "filippo.io/age/cmd/age")
	if out, err := build.CombinedOutput(); err != nil {
		t.Skipf("cannot build the age command (offline?): %v\n%s", err, out)
	}
	agent, hub := newParty(t), newParty(t)
	data, hash := seal(t, upManifest(1), testRecords(20, 1), agent.key, hub.id.Recipient())
	idFile, bundleFile := filepath.Join(dir, "hub.agekey"), filepath.Join(dir, "bundle.age")
	os.WriteFile(idFile, []byte("# hub identity\n"+hub.id.String()+"\n"), 0o600)
	os.WriteFile(bundleFile, data, 0o600)
	out, err := exec.Command(ageBin, "-d", "-i", idFile, bundleFile).Output()
	if err != nil {
		t.Fatalf("age -d: %v", err)
	}
	if !bytes.HasPrefix(out, []byte(BundleMagic)) {
		t.Fatalf("age -d gave %q…, want it to start with %q", out[:min(len(out), 40)], BundleMagic)
	}
	sum := sha256.Sum256(out)
	if hex.EncodeToString(sum[:]) != hash {
		t.Errorf("the plaintext age decrypts does not hash to the bundle's hash")
	}
	if _, err := DecodeSigned(bytes.NewReader(out), keyOf(testAgent, agent.pub)); err != nil {
		t.Errorf("DecodeSigned of age's output: %v", err)
	}
}

// The vectors in testdata/ are a bundle, the identity and key that open it,
// and what it holds, for a second implementation to test against.
const (
	vectorBundle   = "testdata/bundle-records.age"
	vectorIdentity = "testdata/bundle-records.agekey"
	vectorExpect   = "testdata/bundle-records.json"
)

type bundleVector struct {
	Comment   string   `json:"comment"`
	SenderKey string   `json:"sender_key"`
	Hash      string   `json:"hash"`
	Manifest  Manifest `json:"manifest"`
	Records   []Record `json:"records"`
}

func TestBundleVectors(t *testing.T) {
	if *update {
		agent, hub := newParty(t), newParty(t)
		recs := testRecords(3, 11)
		data, hash := seal(t, upManifest(1), recs, agent.key, hub.id.Recipient())
		b, err := OpenBundle(bytes.NewReader(data), hub.id, keyOf(testAgent, agent.pub))
		if err != nil {
			t.Fatal(err)
		}
		v := bundleVector{
			Comment:   "bundle-records.age opens with the identity in bundle-records.agekey (age -d -i) and verifies with sender_key",
			SenderKey: EncodePublicKey(agent.pub), Hash: hash, Manifest: b.Manifest, Records: b.Records,
		}
		js, _ := json.MarshalIndent(v, "", "  ")
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		for name, content := range map[string][]byte{
			vectorBundle:   data,
			vectorIdentity: []byte("# age identity of a test hub; opens " + filepath.Base(vectorBundle) + "\n" + hub.id.String() + "\n"),
			vectorExpect:   append(js, '\n'),
		} {
			if err := os.WriteFile(name, content, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	data, err := os.ReadFile(vectorBundle)
	if err != nil {
		t.Fatalf("%v (run go test -run Vector -update)", err)
	}
	idf, err := os.Open(vectorIdentity)
	if err != nil {
		t.Fatal(err)
	}
	defer idf.Close()
	ids, err := age.ParseIdentities(idf)
	if err != nil {
		t.Fatal(err)
	}
	js, err := os.ReadFile(vectorExpect)
	if err != nil {
		t.Fatal(err)
	}
	var v bundleVector
	if err := json.Unmarshal(js, &v); err != nil {
		t.Fatal(err)
	}
	pub, err := ParsePublicKey(v.SenderKey)
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenBundle(bytes.NewReader(data), ids[0], keyOf(v.Manifest.From, pub))
	if err != nil {
		t.Fatalf("vector does not open: %v", err)
	}
	if b.Hash != v.Hash || asJSON(t, b.Manifest) != asJSON(t, v.Manifest) || asJSON(t, b.Records) != asJSON(t, v.Records) {
		t.Errorf("vector opens to something else:\n got %s %s\nwant %s %s", b.Hash, asJSON(t, b.Manifest), v.Hash, asJSON(t, v.Manifest))
	}
}

// TestCompressionSizes measures the body compression on 1,000 and 10,000
// realistic records (mostly deliveries); docs/protocol.md quotes its output
// (go test -run CompressionSizes -v ./protocol/).
func TestCompressionSizes(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement")
	}
	for _, n := range []int{1000, 10_000} {
		recs := testRecords(n, 1)
		raw := linesOf(t, recs)
		t.Logf("%d records:", n)
		t.Logf("  %-30s %9s %6s %9s %8s", "body", "bytes", "ratio", "time", "alloc")
		t.Logf("  %-30s %9d %6s %9s %8s", "none (NDJSON)", len(raw), "1.00", "-", "-")
		sizes := map[string]int{}
		for _, lv := range []struct {
			name   string
			level  zstd.EncoderLevel
			window int
		}{
			{"zstd fastest, 1 MiB (chosen)", bodyLevel, bodyWindow},
			{"zstd fastest, 8 MiB", zstd.SpeedFastest, 8 << 20},
			{"zstd default, 1 MiB", zstd.SpeedDefault, 1 << 20},
			{"zstd better, 1 MiB", zstd.SpeedBetterCompression, 1 << 20},
			{"zstd best, 1 MiB", zstd.SpeedBestCompression, 1 << 20},
			{"zstd best, 8 MiB", zstd.SpeedBestCompression, 8 << 20},
		} {
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(lv.level), zstd.WithEncoderConcurrency(1),
				zstd.WithWindowSize(lv.window), zstd.WithLowerEncoderMem(true))
			if err != nil {
				t.Fatal(err)
			}
			out := enc.EncodeAll(raw, nil)
			took := time.Since(start)
			runtime.ReadMemStats(&after)
			enc.Close()
			sizes[lv.name] = len(out)
			t.Logf("  %-30s %9d %6.2f %9s %6d MB", lv.name, len(out), float64(len(raw))/float64(len(out)),
				took.Round(100*time.Microsecond), (after.TotalAlloc-before.TotalAlloc)>>20)
		}
		if got := sizes["zstd fastest, 1 MiB (chosen)"]; got > len(raw)/3 {
			t.Errorf("chosen compression gives %d of %d bytes; the records are less compressible than they were", got, len(raw))
		}
	}
	agent, hub := newParty(t), newParty(t)
	recs := testRecords(1000, 1)
	data, _ := seal(t, upManifest(1), recs, agent.key, hub.id.Recipient())
	header, _ := age.ExtractHeader(bytes.NewReader(data))
	t.Logf("sealed 1,000-record bundle: %d bytes (age header %d bytes), %d bytes per record", len(data), len(header), len(data)/len(recs))
	one, _ := seal(t, upManifest(1), recs[:1], agent.key, hub.id.Recipient())
	t.Logf("sealed one-record bundle: %d bytes", len(one))
}

func BenchmarkSealBundle(b *testing.B) {
	agent, hub := newParty(b), newParty(b)
	recs := testRecords(1000, 1)
	var size int
	for b.Loop() {
		var buf bytes.Buffer
		if _, err := SealBundle(&buf, upManifest(1), recs, agent.key, hub.id.Recipient()); err != nil {
			b.Fatal(err)
		}
		size = buf.Len()
	}
	b.ReportMetric(float64(size), "bytes/bundle")
}

func BenchmarkOpenBundle(b *testing.B) {
	agent, hub := newParty(b), newParty(b)
	data, _ := seal(b, upManifest(1), testRecords(1000, 1), agent.key, hub.id.Recipient())
	verify := keyOf(testAgent, agent.pub)
	for b.Loop() {
		if _, err := OpenBundle(bytes.NewReader(data), hub.id, verify); err != nil {
			b.Fatal(err)
		}
	}
}
