//go:build linux

package linkbench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"fieldsync/internal/linksim"
)

var (
	nmFlagProfiles = flag.String("netem.profiles", "geo,leo,geo-bad,bgan,cut", "comma-separated profiles BenchmarkNetem runs (geo, geo-bad, leo, bgan, cut)")
	nmFlagBackend  = flag.String("netem.backend", "auto", "link for BenchmarkNetem: netem (tc qdisc netem on a veth pair), tun (TUN devices and an in-process impairment, for kernels without sch_netem), or auto")
	nmFlagLogs     = flag.String("netem.logs", "", "keep the binaries' logs and data directories here (default: a new folder under $TMPDIR, printed)")
	nmFlagHTTPS    = flag.Bool("netem.https", true, "also run the HTTPS baseline on every link")
	nmFlagWarm     = flag.Bool("netem.warm", true, "measure a site that has synced before (enrolled, holding a session ticket); false: its first sync")
)

// BenchmarkNetem syncs 1,000 delivery records and 20 MB of attachments
// (2 MB with -short; 2 MB on bgan, whose 0.4 Mbit/s would take seven
// minutes for 20 MB) with the real agent and hub binaries, between two
// network namespaces, through each SPEC profile on a netem-impaired veth
// pair, and uploads the same payload with HTTPS for comparison. It prints
// a table; run it once per profile:
//
//	go test ./internal/linkbench -run '^$' -bench BenchmarkNetem -benchtime 1x -timeout 60m
//
// It needs root and ip(8)/tc(8); it is skipped with a message otherwise.
func BenchmarkNetem(b *testing.B) {
	if why := nmCanRun(); why != "" {
		b.Skip(why)
	}
	backend := *nmFlagBackend
	if backend == "auto" {
		backend = "netem"
		if !nmHasNetem() {
			backend = "tun"
			b.Logf("this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): the link is TUN devices and an in-process impairment of the same profile")
		}
	}
	if backend == "tun" {
		if _, err := os.Stat("/dev/net/tun"); err != nil {
			b.Skip("BenchmarkNetem needs the netem qdisc or /dev/net/tun")
		}
	}
	logs := *nmFlagLogs
	if logs == "" {
		var err error
		if logs, err = os.MkdirTemp("", "fieldsync-netem-"); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("logs and data directories in %s", logs)

	bin, fixRoot := b.TempDir(), b.TempDir()
	if err := nmBuild(bin); err != nil {
		b.Fatal(err)
	}
	const records = 1000
	big, small := 10, 4 // 10 × 2 MB = 20 MB; 4 × 512 KB = 2 MB
	var (
		mu       sync.Mutex
		fixtures = map[string]*nmFixture{}
	)
	fixture := func(b *testing.B, size string) *nmFixture {
		mu.Lock()
		defer mu.Unlock()
		if f, ok := fixtures[size]; ok {
			return f
		}
		dir := filepath.Join(fixRoot, size)
		n, each := big, 2<<20
		if size == "2MB" {
			n, each = small, 512<<10
		}
		start := time.Now()
		f, err := newNMFixture(bin, dir, records, n, each, *nmFlagWarm)
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("fixture %s: %d records and %d attachments recorded with the agent binary in %v", size, records, n, time.Since(start).Round(time.Millisecond))
		fixtures[size] = f
		return f
	}

	var rows []nmRow
	want := map[string]bool{}
	for _, name := range strings.Split(*nmFlagProfiles, ",") {
		want[strings.TrimSpace(name)] = true
	}
	for _, p := range nmProfiles() {
		if !want[p.Name] {
			continue
		}
		b.Run(p.Name, func(b *testing.B) {
			size := "20MB"
			if testing.Short() || p.Name == "bgan" {
				size = "2MB"
			}
			fx := fixture(b, size)
			l, err := newNMLink(b, p, backend)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			load := nmLoad()
			res := nmSync(ctx, l, fx, filepath.Join(logs, p.Name))
			rows = append(rows, nmRow{Profile: p, Backend: backend, Load: load, Res: res})
			b.Logf("%s: fieldsync took %v, %s; sessions %d; logs %s", p.Name, res.Took.Round(time.Millisecond), res.AgentSaid, res.Sessions, res.Logs)
			if res.LogProblems != "" {
				b.Logf("%s: warnings and errors in the logs:\n%s", p.Name, nmHead(res.LogProblems, 30))
			}
			if res.Err != nil {
				b.Errorf("%s: fieldsync: %v", p.Name, res.Err)
			}
			if *nmFlagHTTPS {
				load := nmLoad()
				hres := nmHTTPS(ctx, l, fx)
				rows = append(rows, nmRow{Profile: p, Backend: backend, Load: load, Res: hres})
				if hres.Err != nil {
					b.Logf("%s: https: %v", p.Name, hres.Err)
				}
				b.ReportMetric(100*hres.goodput(p), "https-goodput-%")
			}
			b.ReportMetric(res.Took.Seconds(), "wall-s")
			b.ReportMetric(100*res.goodput(p), "goodput-%")
			b.ReportMetric(res.perByte(), "link-B/payload-B")
		})
	}
	if len(rows) > 0 {
		var sb strings.Builder
		nmWriteTable(&sb, rows)
		fmt.Fprintf(os.Stdout, "\nBenchmarkNetem (%s link; %s)\n\n%s\n", backend, Machine(), sb.String())
	}
}

// nmProfiles are the SPEC's link profiles (internal/linksim holds their
// numbers), and cut: geo with a 60 s outage once the hub has half.
func nmProfiles() []nmProfile {
	var out []nmProfile
	for _, name := range []string{"geo", "leo", "geo-bad", "bgan"} {
		p, err := linksim.ProfileByName(name)
		if err != nil {
			panic(err)
		}
		out = append(out, nmProfile{
			Name: p.Name, Delay: p.Delay, Loss: p.Loss, Rate: p.Rate,
			// The first handover 5 s into the transfer, so that a 20 MB
			// transfer at 20 Mbit/s (about 9 s) meets one.
			OutageEvery: p.OutageEvery, OutageFor: p.OutageFor, OutageFirst: 5 * time.Second,
		})
	}
	geo := out[0]
	geo.Name, geo.Cut = "cut", linksim.CutOutage
	return append(out, geo)
}

func nmHead(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) <= n {
		return s
	}
	return strings.Join(lines[:n], "\n") + fmt.Sprintf("\n… and %d more lines", len(lines)-n)
}
