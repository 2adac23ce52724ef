package linkbench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/quic-go/quic-go"

	"fieldsync/internal/linksim"
	"fieldsync/internal/transport"
)

var (
	docPath = flag.String("linkbench.doc", "", "write the results into this Markdown file's \""+Section+"\" section")
	tcpCC   = flag.String("linkbench.tcp", "", "TCP congestion control for the HTTPS baseline (default: the kernel's)")
)

// scenario is a link the benchmark measures.
type scenario struct {
	name    string
	profile linksim.Profile
	outage  time.Duration
}

func scenarios(tb testing.TB) []scenario {
	var out []scenario
	for _, name := range []string{"geo", "geo-bad", "leo", "bgan"} {
		p, err := linksim.ProfileByName(name)
		if err != nil {
			tb.Fatal(err)
		}
		if p.OutageEvery > 0 {
			// The first handover 5 s in, as bench-netem has it: LEO's
			// come every 15 s, and a transfer of 10 s would meet none.
			p.OutageFirst = 5 * time.Second
		}
		out = append(out, scenario{name: name, profile: p})
	}
	geo, _ := linksim.ProfileByName("geo")
	return append(out, scenario{name: "cut (geo)", profile: geo, outage: linksim.CutOutage})
}

// inBubble runs f in a testing/synctest bubble from a benchmark, through
// testing.RunTests: synctest.Test wants a *testing.T.
func inBubble(f func(t *testing.T)) bool {
	return testing.RunTests(func(string, string) (bool, error) { return true, nil },
		[]testing.InternalTest{{Name: "bubble", F: func(t *testing.T) { synctest.Test(t, f) }}})
}

// runQUIC measures one QUIC transfer in virtual time.
func runQUIC(sc scenario, pl Payload, m Method) Result {
	var res Result
	ok := inBubble(func(t *testing.T) {
		res = Transfer(context.Background(), Run{Profile: sc.profile, Seed: 1, Objects: pl.Objects, Method: m, Outage: sc.outage, Limit: 3 * time.Hour})
	})
	if !ok && res.Err == nil {
		res.Err = errors.New("the simulation failed")
	}
	return res
}

// rsResidual is the share of data packets a Reed-Solomon code of k data
// and m parity packets per block leaves lost at random loss p: a block
// with more than m of its k+m packets lost loses (about) its lost data
// packets.
func rsResidual(p float64, k, m int) float64 {
	n := k + m
	var r float64
	for j := m + 1; j <= n; j++ {
		binom := math.Exp(lgamma(n+1) - lgamma(j+1) - lgamma(n-j+1))
		r += binom * math.Pow(p, float64(j)) * math.Pow(1-p, float64(n-j)) * float64(j) / float64(n)
	}
	return r
}

func lgamma(x int) float64 { v, _ := math.Lgamma(float64(x)); return v }

// BenchmarkLink syncs a site's records and attachments over each SPEC
// link profile and the cut, with fieldsync's transport and the baselines,
// and prints the results (docs/benchmarks.md, "Link (issue 4)"). With
// -short it moves a tenth of the payload and caps the HTTPS baseline
// sooner. With -args -linkbench.doc=FILE it writes the section there.
func BenchmarkLink(b *testing.B) {
	records, attachments, tcpLimit := 1000, 20, 150*time.Second
	if testing.Short() {
		records, attachments, tcpLimit = 100, 2, 30*time.Second
	}
	pl, err := NewPayload(records, attachments, 1<<20)
	if err != nil {
		b.Fatal(err)
	}
	var rows, levers, large []Row
	started := time.Now()
	for b.Loop() {
		rows, levers, large = nil, nil, nil
		for _, sc := range scenarios(b) {
			for _, m := range []Method{Shielded, Plain, Striped(16)} {
				res := runQUIC(sc, pl, m)
				rows = append(rows, Row{Scenario: sc.name, Profile: sc.profile, Payload: pl, Result: res})
				b.Logf("%s, %s: %v, err %v", sc.name, m.Name, res.Took, res.Err)
			}
			limit := tcpLimit + sc.outage
			res, err := HTTPSUpload(context.Background(), sc.profile, 1, pl.Objects, *tcpCC, sc.outage, limit)
			row := Row{Scenario: sc.name, Profile: sc.profile, Payload: pl, Result: res}
			if err != nil {
				row.Result.Method, row.Note = "https (kernel tcp)", "skipped: "+err.Error()
			}
			rows = append(rows, row)
			b.Logf("%s, https: %v, err %v %v", sc.name, res.Took, err, res.Err)
			if sc.outage == 0 && (sc.name == "geo" || sc.name == "leo") {
				// The shield outside the simulation's virtual time: real
				// UDP sockets and timers, through the same link.
				res, err := RealUDPTransfer(context.Background(), sc.profile, 1, pl.Objects, tcpLimit)
				row := Row{Scenario: sc.name, Profile: sc.profile, Payload: pl, Result: res}
				if err != nil {
					row.Result.Method, row.Note = "fieldsync, real UDP", "skipped: "+err.Error()
				}
				rows = append(rows, row)
				b.Logf("%s, real UDP: %v, err %v %v", sc.name, res.Took, err, res.Err)
			}
		}
		if !testing.Short() {
			levers = runLevers(b, pl)
			large = runLarge(b)
		}
	}
	var out strings.Builder
	fmt.Fprintf(&out, "Measured by `make bench-link` (`go test -run '^$' -bench Link -benchtime 1x ./internal/linkbench/`) on %s, %s; %v in all.\n\n",
		time.Now().UTC().Format("2006-01-02"), Machine(), time.Since(started).Round(time.Second))
	fmt.Fprintf(&out, "Payload: %d delivery records (%s of JSON, sealed into one %s bundle: zstd, signed, age to the hub) and %d scans of 1 MiB (age-encrypted): %s of user data, %s sent. "+
		"Goodput counts the bytes sent (sealed) per second of the transfer, the time the link was down excluded (the cut's 60 s, `leo`'s handovers of 1.5 s every 15 s, the first 5 s in), as a share of the link's uplink rate; steady counts the middle half of them. "+
		"Link bytes count both the uplink and the downlink, with IP and UDP (or TCP) headers, per byte of user data; delivered bytes count what reached the other end above IP and UDP, which leaves out the link's headers and what it destroyed (for HTTPS, whole IP packets: the TUN link carries them with their IP and TCP headers).\n\n",
		pl.Records, kb(pl.UserBytes-int64(pl.Attachments)<<20), kb(int64(len(pl.Objects[0].Data))), pl.Attachments, kb(pl.UserBytes), kb(pl.Bytes()))
	WriteTable(&out, rows)
	if len(levers) > 0 {
		fmt.Fprintf(&out, "\nLevers, on the same payload (docs/transport.md discusses each):\n\n")
		WriteTable(&out, levers)
	}
	if len(large) > 0 {
		fmt.Fprintf(&out, "\nA larger sync, %d records and %d scans of 1 MiB (fieldsync only): a session's fixed costs (the handshake, quic-go's slow start, the last acknowledgement) weigh less.\n\n", largeRecords, largeAttachments)
		WriteTable(&out, large)
	}
	fmt.Fprintf(&out, "\nThe QUIC rows run in virtual time (testing/synctest over internal/linksim): deterministic but for goroutine scheduling, and seconds of CPU. "+
		"The HTTPS rows run the kernel's TCP in real time through the same simulated link (two network namespaces joined by TUN devices; linksim's rate raised by 28/1500 to charge IP packets as it charges UDP datagrams), "+
		"and stop after %v (plus the outage), reporting what they moved by then.\n", tcpLimit)
	fmt.Println()
	fmt.Println(out.String())
	if *docPath != "" {
		if err := WriteSection(*docPath, out.String()); err != nil {
			b.Fatal(err)
		}
	}
}

// The payload of runLarge.
const largeRecords, largeAttachments = 1000, 100

// runLarge measures fieldsync's transport on each SPEC profile with five
// times the attachments.
func runLarge(b *testing.B) []Row {
	pl, err := NewPayload(largeRecords, largeAttachments, 1<<20)
	if err != nil {
		b.Fatal(err)
	}
	var rows []Row
	for _, sc := range scenarios(b) {
		if sc.outage > 0 {
			continue
		}
		res := runQUIC(sc, pl, Shielded)
		rows = append(rows, Row{Scenario: sc.name, Profile: sc.profile, Payload: pl, Result: res})
		b.Logf("large %s: %v, err %v", sc.name, res.Took, res.Err)
	}
	return rows
}

// runLevers measures the levers docs/transport.md weighs, on geo and
// geo-bad.
func runLevers(b *testing.B, pl Payload) []Row {
	var rows []Row
	defaultWindows := func() *quic.Config {
		// quic-go's defaults but for what a long path needs to connect.
		return &quic.Config{HandshakeIdleTimeout: transport.HandshakeTimeout, MaxIdleTimeout: transport.IdleTimeout,
			KeepAlivePeriod: transport.KeepAlive, InitialPacketSize: transport.QUICPacketSize}
	}
	for _, name := range []string{"geo", "geo-bad"} {
		p, _ := linksim.ProfileByName(name)
		sc := scenario{name: name, profile: p}
		methods := []Method{
			{Name: "shield without its playout (in order, late)", NoPlayout: true},
			{Name: "shield, quic-go's default flow-control windows", Config: defaultWindows},
			Striped(4), Striped(8),
		}
		for _, m := range methods {
			res := runQUIC(sc, pl, m)
			rows = append(rows, Row{Scenario: name, Profile: p, Payload: pl, Result: res})
			b.Logf("lever %s, %s: %v, err %v", name, m.Name, res.Took, res.Err)
		}
		// Forward error correction instead of retransmission: a
		// Reed-Solomon code of 2 parity packets per 20 takes a tenth of
		// the rate and leaves rsResidual of the loss to NewReno. Measured
		// as plain QUIC over the link that leaves.
		fec := p
		fec.Loss = rsResidual(p.Loss, 20, 2)
		fec.Rate = p.Rate * 20 / 22
		res := runQUIC(scenario{name: name, profile: fec}, pl, Method{Name: fmt.Sprintf("quic over RS(22,20) FEC (proxy: %.3f%% loss left)", 100*fec.Loss), Plain: true})
		rows = append(rows, Row{Scenario: name, Profile: p, Payload: pl, Result: res})
	}
	return rows
}

// BenchmarkHandshake dials a hub with several seeds, over geo-bad and
// over geo with the link down for the first 8 s of the dial, with
// quic-go's 5 s handshake timeout and with transport.HandshakeTimeout,
// with and without the shield, and reports how many handshakes fail and
// how long they take.
func BenchmarkHandshake(b *testing.B) {
	type variant struct {
		name    string
		plain   bool
		timeout time.Duration
	}
	variants := []variant{{"plain, 5 s", true, 5 * time.Second}, {"plain, 30 s", true, transport.HandshakeTimeout}, {"shield, 30 s", false, transport.HandshakeTimeout}}
	geo, _ := linksim.ProfileByName("geo")
	geoBad, _ := linksim.ProfileByName("geo-bad")
	links := []struct {
		name string
		p    linksim.Profile
		down time.Duration
	}{{"geo-bad", geoBad, 0}, {"geo, down for the first 8 s", geo, 8 * time.Second}}
	const seeds = 40
	for b.Loop() {
		for _, l := range links {
			for _, v := range variants {
				var failed int
				var total time.Duration
				for seed := range seeds {
					inBubble(func(t *testing.T) {
						took, err := handshake(t, l.p, int64(seed), v.plain, v.timeout, l.down)
						if err != nil {
							failed++
							return
						}
						total += took
					})
				}
				mean := time.Duration(0)
				if ok := seeds - failed; ok > 0 {
					mean = total / time.Duration(ok)
				}
				fmt.Printf("handshake over %s, %s: %d of %d failed; %v on average\n", l.name, v.name, failed, seeds, mean.Round(time.Millisecond))
			}
		}
	}
}

func handshake(t *testing.T, p linksim.Profile, seed int64, plain bool, timeout, down time.Duration) (time.Duration, error) {
	server, client, err := tlsPair()
	if err != nil {
		return 0, err
	}
	path := linksim.NewPath(p, seed)
	agentEnd, hubEnd := path.Endpoints()
	conf := transport.QUICConfig()
	conf.HandshakeIdleTimeout = timeout
	ln, err := (&transport.ListenConfig{QUIC: conf}).Listen(hubEnd, server)
	if err != nil {
		return 0, err
	}
	socks := linksim.NewSockets(agentEnd)
	d := &transport.Dialer{ListenPacket: socks.Open, Plain: plain, Config: conf}
	defer func() {
		d.Wait()
		ln.Shutdown()
		socks.Close()
	}()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	wg.Go(func() {
		if c, err := ln.Accept(ctx); err == nil {
			select {
			case <-c.Context().Done():
			case <-ctx.Done():
			}
		}
	})
	if down > 0 {
		path.Cut(down)
	}
	start := time.Now()
	c, err := d.Dial(ctx, hubEnd.LocalAddr().String(), client)
	if err != nil {
		return 0, err
	}
	took := time.Since(start)
	c.CloseWithError(0, "")
	return took, nil
}
