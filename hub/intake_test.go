package hub

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

func openTestHub(t *testing.T, dir string) *Hub {
	t.Helper()
	h, err := Open(dir, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// newIntakeHub initialises a hub in a new directory and opens it, with an
// agent A-BENCH of site UA-KV-017 admitted; it returns the hub, its
// directory and the agent's key.
func newIntakeHub(t *testing.T) (*Hub, string, ed25519.PrivateKey) {
	t.Helper()
	dir := t.TempDir()
	if _, err := Init(dir); err != nil {
		t.Fatal(err)
	}
	h := openTestHub(t, dir)
	return h, dir, benchAgent(t, h, "A-BENCH", "UA-KV-017")
}

// hubState lists every object of every table as JSON.
func hubState(t *testing.T, h *Hub) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	err := h.led.Read(func(txn *memdb.Txn) error {
		for r, err := range ledger.RecordsOf(txn).All() {
			if err != nil {
				return err
			}
			raw, err := json.Marshal(r)
			if err != nil {
				return err
			}
			out[ledger.TableRecords] = append(out[ledger.TableRecords], string(raw))
		}
		for table := range ledger.Schema().Tables {
			if table == ledger.TableRecords {
				continue // above: the table holds only their count
			}
			it, err := txn.Get(table, ledger.IndexID)
			if err != nil {
				return err
			}
			for obj := it.Next(); obj != nil; obj = it.Next() {
				raw, err := json.Marshal(obj)
				if err != nil {
					return err
				}
				out[table] = append(out[table], string(raw))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func writeBundle(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestIntakeRefusesConflictsWhole: a large bundle with a record that
// conflicts near its end is quarantined and none of its records is applied,
// though applying it spans several memdb transactions.
func TestIntakeRefusesConflictsWhole(t *testing.T) {
	for _, c := range []struct {
		name   string
		spoil  func(recs []protocol.Record)
		reason string
	}{
		{"id used by another agent's record", func(recs []protocol.Record) { recs[2900].ID = "01JOTHER" }, "already used by another record"},
		{"id used twice in the bundle", func(recs []protocol.Record) { recs[2900].ID = recs[10].ID }, "already used by another record"},
		{"record of another agent", func(recs []protocol.Record) { recs[2900].Agent = "A-OTHER" }, "not the sender's"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h, dir, key := newIntakeHub(t)
			defer h.Close()
			pledges := benchPledges(t, h, "UA-KV-017", 100)
			other := benchRecords("A-OTHER", "UA-KV-017", 1, 1)
			other[0].ID = "01JOTHER"
			if err := h.led.Write(func(tx *ledger.Txn) error { return tx.Put(ledger.TableRecords, &other[0]) }); err != nil {
				t.Fatal(err)
			}
			before := hubState(t, h)

			recs := benchRecords("A-BENCH", "UA-KV-017", 1, 3000, pledges...)
			c.spoil(recs)
			bundle := sealChain(t, h, "A-BENCH", "UA-KV-017", key, recs, len(recs))[0]
			res, err := h.IntakeFile(writeBundle(t, dir, "b.age", bundle))
			if ie, ok := errors.AsType[*IntakeError](err); !ok || res.State != protocol.AckQuarantined {
				t.Fatalf("intake: %+v, %v; want quarantined", res, err)
			} else if !strings.Contains(ie.Result.Reason, c.reason) {
				t.Errorf("reason %q does not say %q", ie.Result.Reason, c.reason)
			}
			after := hubState(t, h)
			if !reflect.DeepEqual(after[ledger.TableRecords], before[ledger.TableRecords]) {
				t.Errorf("records changed: %d before, %d after", len(before[ledger.TableRecords]), len(after[ledger.TableRecords]))
			}
		})
	}
}

// TestIntakeRefusesRecordsBelowTheLast: a bundle that follows its chain
// but brings records numbered below the sender's last applied one, which
// the hub does not hold, is quarantined: an agent numbers its records in
// order, so no honest agent sends it.
func TestIntakeRefusesRecordsBelowTheLast(t *testing.T) {
	h, dir, key := newIntakeHub(t)
	defer h.Close()
	recs := append(benchRecords("A-BENCH", "UA-KV-017", 5, 6), benchRecords("A-BENCH", "UA-KV-017", 1, 3)...)
	bundles := sealChain(t, h, "A-BENCH", "UA-KV-017", key, recs, 6)
	if res, err := h.IntakeFile(writeBundle(t, dir, "b1.age", bundles[0])); err != nil || res.State != protocol.AckApplied {
		t.Fatalf("first bundle: %+v, %v", res, err)
	}
	before := hubState(t, h)
	res, err := h.IntakeFile(writeBundle(t, dir, "b2.age", bundles[1]))
	if ie, ok := errors.AsType[*IntakeError](err); !ok || res.State != protocol.AckQuarantined {
		t.Fatalf("second bundle: %+v, %v; want quarantined", res, err)
	} else if !strings.Contains(ie.Result.Reason, "below 10") {
		t.Errorf("reason %q does not name the last applied seq", ie.Result.Reason)
	}
	if after := hubState(t, h); !reflect.DeepEqual(after[ledger.TableRecords], before[ledger.TableRecords]) {
		t.Errorf("records changed: %d before, %d after", len(before[ledger.TableRecords]), len(after[ledger.TableRecords]))
	}
}

// TestIntakeStateSurvivesReopening: what intake applied live (large
// bundles, discrepancies, over-deliveries) is what loading the snapshot and
// replaying the log after it gives.
func TestIntakeStateSurvivesReopening(t *testing.T) {
	h, dir, key := newIntakeHub(t)
	pledges := benchPledges(t, h, "UA-KV-017", 50)
	recs := benchRecords("A-BENCH", "UA-KV-017", 1, 5000, pledges...)
	for i := range recs {
		switch i % 97 {
		case 1:
			recs[i].Condition = protocol.ConditionDamaged
		case 2:
			recs[i].Pledge = "" // matches no pledge
		}
	}
	// Over-deliver one small pledge.
	small := benchPledges(t, h, "UA-KV-017", 1)[0]
	err := h.led.Write(func(tx *ledger.Txn) error {
		obj, err := tx.First(ledger.TablePledges, ledger.IndexID, small)
		if err != nil {
			return err
		}
		p := *obj.(*protocol.Pledge)
		p.Qty = 3
		return tx.Put(ledger.TablePledges, &p)
	})
	if err != nil {
		t.Fatal(err)
	}
	recs[4000].Pledge, recs[4000].Qty = small, 5
	for i, data := range sealChain(t, h, "A-BENCH", "UA-KV-017", key, recs, 2500) {
		if res, err := h.IntakeFile(writeBundle(t, dir, "b.age", data)); err != nil || res.State != protocol.AckApplied {
			t.Fatalf("bundle %d: %+v, %v", i+1, res, err)
		}
		if i == 0 {
			if err := h.led.Snapshot(); err != nil {
				t.Fatal(err)
			}
		}
	}
	live := hubState(t, h)
	if len(live[ledger.TableRecords]) != 5000 || len(live[ledger.TableFeedback]) < 100 {
		t.Fatalf("live state has %d records and %d feedback items", len(live[ledger.TableRecords]), len(live[ledger.TableFeedback]))
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	h = openTestHub(t, dir)
	defer h.Close()
	if replayed := hubState(t, h); !reflect.DeepEqual(replayed, live) {
		for table := range live {
			if !reflect.DeepEqual(replayed[table], live[table]) {
				t.Errorf("table %s differs after reopening: %d objects live, %d replayed", table, len(live[table]), len(replayed[table]))
			}
		}
	}
}
