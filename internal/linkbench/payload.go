// Package linkbench measures a sync over the SPEC's satellite links
// (internal/linksim): the time to move a site's records and attachments,
// the goodput as a share of the link's rate, the bytes put on the link per
// payload byte, and what an outage costs. BenchmarkLink runs it for every
// profile against baselines (plain QUIC, QUIC striped over several
// connections, and an HTTPS upload over the kernel's TCP); `make
// bench-link` runs it and docs/benchmarks.md holds the results.
//
// The QUIC transfers run inside testing/synctest, in virtual time: a
// ten-minute BGAN transfer takes seconds, and needs no network. The HTTPS
// baseline runs the kernel's TCP in real time, through the same simulated
// link, between two network namespaces joined by TUN devices; it needs
// root, and is skipped with a message where that is not available.
package linkbench

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"time"

	"filippo.io/age"

	"fieldsync/protocol"
)

// Payload is what the benchmark syncs: delivery records sealed into a
// bundle, as the agent seals them, and attachments (scans of waybills)
// encrypted with age to the hub.
type Payload struct {
	Objects []Object
	// UserBytes is the records' JSON and the attachments' bytes: what the
	// site has to say, before compression, signatures and encryption.
	UserBytes   int64
	Records     int
	Attachments int
}

// NewPayload makes records delivery records and attachments attachments
// of size bytes each, deterministic but for the encryption's randomness.
func NewPayload(records, attachments, size int) (Payload, error) {
	var p Payload
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		return p, err
	}
	hub, err := age.GenerateHybridIdentity()
	if err != nil {
		return p, err
	}
	rng := rand.New(rand.NewPCG(1, 2))
	at := time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)
	recs := make([]protocol.Record, records)
	for i := range recs {
		recs[i] = protocol.Record{
			ID: fmt.Sprintf("01JNKZ%020d", i), Seq: uint64(i + 1), Agent: "A-1", Site: "S-1",
			Type: protocol.TypeDelivery, At: at.Add(time.Duration(i) * time.Minute),
			Item: fmt.Sprintf("Firewall appliance model FW-%d, rack kit", 100+rng.IntN(900)), Qty: int64(1 + rng.IntN(20)),
			Serials:    []string{fmt.Sprintf("SN%08d", rng.IntN(1e8)), fmt.Sprintf("SN%08d", rng.IntN(1e8))},
			Condition:  protocol.ConditionOK,
			ReceivedBy: "O. Kovalenko", Role: "shift engineer",
			Waybill: fmt.Sprintf("WB-2026-%06d", rng.IntN(1e6)),
			Note:    "Delivered to the substation store; seals intact, counted on arrival.",
		}
		b, _ := json.Marshal(recs[i])
		p.UserBytes += int64(len(b))
	}
	if records > 0 {
		m := protocol.Manifest{
			Kind: protocol.KindRecords, From: "A-1", To: "hub", Site: "S-1", Seq: 1,
			FirstRecordSeq: 1, LastRecordSeq: uint64(records), Created: at,
		}
		var buf bytes.Buffer
		if _, err := protocol.SealBundle(&buf, m, recs, key, hub.Recipient()); err != nil {
			return p, fmt.Errorf("seal the records: %w", err)
		}
		p.Objects = append(p.Objects, Object{Name: "bundle", Data: buf.Bytes()})
		p.Records = records
	}
	for i := range attachments {
		scan := make([]byte, size)
		rng := rand.NewChaCha8([32]byte{byte(i)})
		rng.Read(scan) // a scan compresses no further
		var buf bytes.Buffer
		w, err := age.Encrypt(&buf, hub.Recipient())
		if err != nil {
			return p, err
		}
		w.Write(scan)
		if err := w.Close(); err != nil {
			return p, err
		}
		p.Objects = append(p.Objects, Object{Name: fmt.Sprintf("scan-%02d.jpg.age", i+1), Data: buf.Bytes()})
		p.UserBytes += int64(size)
		p.Attachments++
	}
	return p, nil
}

// Bytes returns the payload's bytes as sent: sealed and encrypted.
func (p Payload) Bytes() int64 {
	var n int64
	for _, o := range p.Objects {
		n += int64(len(o.Data))
	}
	return n
}
