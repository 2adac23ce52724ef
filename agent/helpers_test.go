package agent

import (
	"bytes"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/hashicorp/go-memdb"

	"fieldsync/hub"
	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

// testSite is the site the fixtures' agents are enrolled for.
const testSite = "UA-KV-017"

// fixture is a hub and one site agent enrolled at it, each in its own
// temporary directory, with no network between them.
type fixture struct {
	hubDir string
	hub    *hub.Hub
	a      *Agent
}

// newHub creates and opens a hub in a temporary directory.
func newHub(t testing.TB) (*hub.Hub, string) {
	t.Helper()
	dir := t.TempDir()
	if _, err := hub.Init(dir); err != nil {
		t.Fatal(err)
	}
	h, err := hub.Open(dir, hub.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h, dir
}

// enrol asks h for an enrolment for site.
func enrol(t testing.TB, h *hub.Hub, site string) *protocol.Enrolment {
	t.Helper()
	e, err := h.Enrol(hub.EnrolRequest{Site: site, Name: "Site " + site, Addr: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// newAgent initialises and opens an agent from e; the test closes it.
func newAgent(t testing.TB, e *protocol.Enrolment) *Agent {
	t.Helper()
	dir := t.TempDir()
	if _, err := Init(dir, e); err != nil {
		t.Fatal(err)
	}
	a, err := Open(dir, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	h, dir := newHub(t)
	return &fixture{hubDir: dir, hub: h, a: newAgent(t, enrol(t, h, testSite))}
}

// delivery is a valid delivery record, before the agent fills in its id.
func delivery(item string, qty int64) protocol.Record {
	return protocol.Record{Type: protocol.TypeDelivery, Item: item, Qty: qty}
}

// add stores rec and fails the test if it cannot.
func add(t *testing.T, a *Agent, rec protocol.Record) protocol.Record {
	t.Helper()
	got, err := a.Add(rec, nil)
	if err != nil {
		t.Fatalf("add %s: %v", rec.Type, err)
	}
	return got
}

// carry exports the agent's bundles and imports them at the hub, as a USB
// stick would; the first makes the agent known at the hub. It returns the
// hub's results in order.
func (f *fixture) carry(t *testing.T) []hub.Result {
	t.Helper()
	files, err := f.a.Export(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var out []hub.Result
	for _, p := range files {
		res, err := f.hub.ImportFile(p)
		if err != nil {
			t.Fatalf("hub import %s: %v", filepath.Base(p), err)
		}
		out = append(out, res)
	}
	return out
}

// admit makes the agent known at the hub with one record carried by hand.
func (f *fixture) admit(t *testing.T) {
	t.Helper()
	add(t, f.a, delivery("Admission paperwork", 1))
	if res := f.carry(t); len(res) != 1 || res[0].State != protocol.AckApplied {
		t.Fatalf("first bundle at the hub: %+v, want one applied", res)
	}
}

// down writes the hub's bundle for the agent (everything it has for it) and
// returns its path.
func (f *fixture) down(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), hub.ReplyPrefix+f.a.Identity().AgentID+".age")
	if err := f.hub.ExportDown(f.a.Identity().AgentID, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// pledge is a valid pledge of qty for site.
func pledge(site string, qty int64) protocol.Pledge {
	return protocol.Pledge{Site: site, Donor: "Estonia", Kind: protocol.KindHardware, Item: "FortiGate 100F", Qty: qty}
}

// give applies pledges to the agent as if a hub bundle had carried them,
// without the crypto: a cheap way to seed the agent's pledges table.
func give(t *testing.T, a *Agent, ps ...protocol.Pledge) {
	t.Helper()
	b := &protocol.Bundle{}
	for i := range ps {
		p := ps[i]
		if p.At.IsZero() {
			p.At = time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
		}
		b.Down = append(b.Down, protocol.DownItem{Pledge: &p})
	}
	if err := a.applyDown(b); err != nil {
		t.Fatal(err)
	}
}

// openUp opens a bundle the agent sealed, as the hub would: decrypted with
// the hub's age identity, verified with the agent's key.
func (f *fixture) openUp(t *testing.T, path string) *protocol.Bundle {
	t.Helper()
	idf, err := os.Open(filepath.Join(f.hubDir, "age-identity.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer idf.Close()
	ids, err := age.ParseIdentities(idf)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pub := f.a.key.Public().(ed25519.PublicKey)
	b, err := protocol.OpenBundle(bytes.NewReader(data), ids[0], func(*protocol.Manifest) (ed25519.PublicKey, error) { return pub, nil })
	if err != nil {
		t.Fatalf("open %s: %v", filepath.Base(path), err)
	}
	return b
}

// bundles returns the bundles the agent's ledger holds, oldest first.
func bundles(t *testing.T, a *Agent) []ledger.Bundle {
	t.Helper()
	var out []ledger.Bundle
	err := a.led.Read(func(txn *memdb.Txn) error {
		it, err := txn.Get(ledger.TableBundles, ledger.IndexID)
		if err != nil {
			return err
		}
		for obj := it.Next(); obj != nil; obj = it.Next() {
			out = append(out, *obj.(*ledger.Bundle))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// outbox returns the names of the files in the agent's outbox.
func outbox(t *testing.T, a *Agent) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(a.dir, outboxDir))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// view returns the agent's view of record id.
func view(t *testing.T, a *Agent, id string) RecordView {
	t.Helper()
	recs, err := a.Records(false)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.ID == id {
			return r
		}
	}
	t.Fatalf("record %s is not in the list", id)
	return RecordView{}
}

// lastSeq returns the agent's highest record sequence number.
func lastSeq(t *testing.T, a *Agent) uint64 {
	t.Helper()
	var seq uint64
	err := a.led.Read(func(txn *memdb.Txn) error {
		seq = ledger.RecordsOf(txn).LastSeq(a.id.AgentID)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

// oneLine fails the test if err's message is not one line.
func oneLine(t *testing.T, err error) {
	t.Helper()
	if err != nil && strings.ContainsAny(err.Error(), "\r\n") {
		t.Errorf("error is not one line: %q", err)
	}
}
