package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"fieldsync/hub"
	"fieldsync/protocol"
)

// BenchmarkWireBytesPerRecord syncs 1,000 realistic delivery records to a
// real hub over QUIC on loopback and reports the bytes put on the link per
// record — QUIC, TLS, age, signature and protocol included, both directions,
// plus 28 bytes of UDP/IP header per packet — beside the same records as
// plain JSON, the baseline a naive upload would send.
func BenchmarkWireBytesPerRecord(b *testing.B) {
	const n = 1000
	items := []string{"FortiGate 100F firewall", "Dell PowerEdge R650 server", "Cisco Catalyst 9300 switch", "Starlink terminal", "APC Smart-UPS 3000"}
	names := []string{"O. Kovalenko", "I. Melnyk", "P. Shevchenko", "N. Bondarenko"}
	var link, plain int64
	for range b.N {
		h, _ := newHub(b)
		e, err := h.Enrol(hub.EnrolRequest{Site: "UA-KV-017", Name: "Kyiv substation 17", Addr: "127.0.0.1:1"})
		if err != nil {
			b.Fatal(err)
		}
		addr := serve(b, h)
		e.HubAddr = addr
		a := newAgent(b, e)
		recs := make([]protocol.Record, n)
		for i := range recs {
			recs[i] = protocol.Record{
				Type: protocol.TypeDelivery, Item: items[i%len(items)], Qty: int64(1 + i%4),
				Serials:   []string{fmt.Sprintf("FGT%010d", 7000000+i*7919%1000003), fmt.Sprintf("PSU-%06X", i*2654435761%16777216)},
				Condition: protocol.ConditionOK, ReceivedBy: names[i%len(names)],
				Note: fmt.Sprintf("pallet %d of %d, seal intact, checked against packing list PL-%d", 1+i%3, 3, 4400+i/10),
			}
		}
		stored, err := a.AddBatch(recs, nil, "")
		if err != nil {
			b.Fatal(err)
		}
		res, err := a.Sync(context.Background(), SyncOptions{})
		if err != nil {
			b.Fatal(err)
		}
		js, _ := json.Marshal(stored)
		link, plain = res.LinkBytes, int64(len(js))
	}
	b.ReportMetric(float64(link)/n, "link-B/record")
	b.ReportMetric(float64(plain)/n, "json-B/record")
	b.ReportMetric(float64(link)/float64(plain), "ratio")
	b.ReportMetric(0, "ns/op")
}
