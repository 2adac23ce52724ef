package hub

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"filippo.io/age"

	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

// benchAgent admits an agent key at hub h directly, as a first sync would.
func benchAgent(b testing.TB, h *Hub, id, site string) ed25519.PrivateKey {
	b.Helper()
	pub, key, _ := ed25519.GenerateKey(nil)
	err := h.led.Write(func(tx *ledger.Txn) error {
		if err := tx.Put(ledger.TableSites, &ledger.Site{ID: site, Name: "Bench site " + site}); err != nil {
			return err
		}
		return tx.Put(ledger.TableAgents, &ledger.Agent{ID: id, Site: site, Key: base64.StdEncoding.EncodeToString(pub), Enrolled: time.Now()})
	})
	if err != nil {
		b.Fatal(err)
	}
	return key
}

// benchPledges issues n pledges to site, large enough never to be
// over-delivered, and returns their ids.
func benchPledges(b testing.TB, h *Hub, site string, n int) []string {
	b.Helper()
	ps := make([]protocol.Pledge, n)
	for i := range ps {
		ps[i] = protocol.Pledge{Site: site, Donor: "Estonia", Programme: "Tallinn Mechanism", Kind: protocol.KindHardware,
			Item: fmt.Sprintf("Item %d", i), Qty: protocol.MaxQty}
	}
	ps, err := h.AddPledges(ps)
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, n)
	for i, p := range ps {
		ids[i] = p.ID
	}
	return ids
}

// benchRecords makes n realistic delivery records of one agent from seq on,
// each fulfilling one of pledges (round robin) if any are given.
func benchRecords(agent, site string, from uint64, n int, pledges ...string) []protocol.Record {
	items := []string{"FortiGate 100F firewall", "Dell PowerEdge R650 server", "Cisco Catalyst 9300 switch", "Starlink terminal", "APC Smart-UPS 3000"}
	recs := make([]protocol.Record, n)
	at := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	for i := range recs {
		seq := from + uint64(i)
		recs[i] = protocol.Record{
			ID: fmt.Sprintf("01JBENCH%018d", seq), Seq: seq, Agent: agent, Site: site, Type: protocol.TypeDelivery,
			At: at.Add(time.Duration(seq) * time.Minute), Item: items[i%len(items)], Qty: int64(1 + i%4),
			Serials:   []string{fmt.Sprintf("SN%08d-A", seq), fmt.Sprintf("SN%08d-B", seq)},
			Condition: protocol.ConditionOK, ReceivedBy: "O. Kovalenko", Waybill: fmt.Sprintf("WB-2026-%05d", seq/10),
			Note: "received at the north gate, checked against the packing list",
		}
		if len(pledges) > 0 {
			recs[i].Pledge = pledges[i%len(pledges)]
		}
	}
	return recs
}

// sealChain seals records into bundles of size per bundle for one agent.
func sealChain(b testing.TB, h *Hub, agent, site string, key ed25519.PrivateKey, recs []protocol.Record, size int) [][]byte {
	b.Helper()
	to, err := age.ParseHybridRecipient(h.info.Recipient)
	if err != nil {
		b.Fatal(err)
	}
	var out [][]byte
	prev := ""
	for i, seq := 0, uint64(1); i < len(recs); i, seq = i+size, seq+1 {
		chunk := recs[i:min(i+size, len(recs))]
		var buf bytes.Buffer
		m := protocol.Manifest{Kind: protocol.KindRecords, From: agent, To: h.info.Fingerprint, Site: site, Seq: seq, PrevHash: prev, Created: time.Now().UTC().Truncate(time.Second)}
		hash, err := protocol.SealBundle(&buf, m, chunk, key, to)
		if err != nil {
			b.Fatal(err)
		}
		prev = hash
		out = append(out, buf.Bytes())
	}
	return out
}

// benchFill stores n records of another agent and site in h's ledger, as
// a hub that has been running for a while holds them.
func benchFill(b testing.TB, h *Hub, n int) {
	b.Helper()
	recs := benchRecords("A-FILL", "UA-LV-003", 1_000_000_000, n) // ids apart from A-BENCH's
	for i := 0; i < n; i += 10_000 {
		err := h.led.Write(func(tx *ledger.Txn) error {
			for j := i; j < min(i+10_000, n); j++ {
				if err := tx.Put(ledger.TableRecords, &recs[j]); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIntake measures records per second verified, decrypted and
// applied durably (fsync on), for bundles of 1, 100 and 10,000 records,
// into an empty hub and (held=) into one that already holds records; and
// the CPU time per record, which other jobs on the machine disturb less.
// The baseline in the same run is the raw cost of the durable ledger write
// alone (no crypto, no verification) for the same records.
func BenchmarkIntake(b *testing.B) {
	const total = 20_000
	for _, c := range []struct{ size, held int }{{1, 0}, {100, 0}, {10_000, 0}, {10_000, 200_000}} {
		size, n := c.size, total
		if size == 1 {
			n = 300 // one fsync per record: keep the run short
		}
		name := fmt.Sprintf("bundle=%d", size)
		if c.held > 0 {
			name += fmt.Sprintf(",held=%d", c.held)
		}
		b.Run(name, func(b *testing.B) {
			var elapsed, cpu time.Duration
			for range b.N {
				dir := b.TempDir()
				if _, err := Init(dir); err != nil {
					b.Fatal(err)
				}
				h, err := Open(dir, Options{})
				if err != nil {
					b.Fatal(err)
				}
				key := benchAgent(b, h, "A-BENCH", "UA-KV-017")
				benchFill(b, h, c.held)
				// A pledge sees a few records: a delivery or two and a
				// confirmation.
				pledges := benchPledges(b, h, "UA-KV-017", max(1, n/4))
				bundles := sealChain(b, h, "A-BENCH", "UA-KV-017", key, benchRecords("A-BENCH", "UA-KV-017", 1, n, pledges...), size)
				paths := make([]string, len(bundles))
				for i, data := range bundles {
					paths[i] = filepath.Join(dir, fmt.Sprintf("b%d.age", i))
					os.WriteFile(paths[i], data, 0o600)
				}
				runtime.GC() // the setup's garbage is not intake's to collect
				start, startCPU := time.Now(), cpuTime()
				for _, p := range paths {
					if res, err := h.IntakeFile(p); err != nil || res.State != protocol.AckApplied {
						b.Fatalf("intake: %v %+v", err, res)
					}
				}
				elapsed, cpu = elapsed+time.Since(start), cpu+cpuTime()-startCPU
				h.Close()
			}
			rate := float64(n*b.N) / elapsed.Seconds()
			b.ReportMetric(rate, "records/s")
			b.ReportMetric(float64(cpu.Microseconds())/float64(n*b.N), "cpu-µs/record")
			b.ReportMetric(0, "ns/op")
		})
	}
	b.Run("baseline=ledger-write-only", func(b *testing.B) {
		var elapsed, cpu time.Duration
		for range b.N {
			l, err := ledger.Open(b.TempDir(), ledger.Options{})
			if err != nil {
				b.Fatal(err)
			}
			recs := benchRecords("A-BENCH", "UA-KV-017", 1, total)
			start, startCPU := time.Now(), cpuTime()
			for i := 0; i < len(recs); i += 10_000 {
				err := l.Write(func(tx *ledger.Txn) error {
					for j := i; j < min(i+10_000, len(recs)); j++ {
						if err := tx.Put(ledger.TableRecords, &recs[j]); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			elapsed, cpu = elapsed+time.Since(start), cpu+cpuTime()-startCPU
			l.Close()
		}
		b.ReportMetric(float64(total*b.N)/elapsed.Seconds(), "records/s")
		b.ReportMetric(float64(cpu.Microseconds())/float64(total*b.N), "cpu-µs/record")
		b.ReportMetric(0, "ns/op")
	})
}

// BenchmarkBundleBytesPerRecord compares the bytes of a sealed bundle of
// 1,000 realistic delivery records with the same records as plain JSON.
// (The QUIC/TLS share on the wire is measured by the link benchmark.)
func BenchmarkBundleBytesPerRecord(b *testing.B) {
	dir := b.TempDir()
	if _, err := Init(dir); err != nil {
		b.Fatal(err)
	}
	h, err := Open(dir, Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	key := benchAgent(b, h, "A-BENCH", "UA-KV-017")
	recs := benchRecords("A-BENCH", "UA-KV-017", 1, 1000)
	var bundle []byte
	for range b.N {
		bundle = sealChain(b, h, "A-BENCH", "UA-KV-017", key, recs, len(recs))[0]
	}
	plain, _ := json.Marshal(recs)
	b.ReportMetric(float64(len(bundle))/1000, "bundle-B/record")
	b.ReportMetric(float64(len(plain))/1000, "json-B/record")
	b.ReportMetric(float64(len(bundle))/float64(len(plain)), "ratio")
	b.ReportMetric(0, "ns/op")
}
