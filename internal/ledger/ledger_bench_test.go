package ledger

// Benchmarks of the ledger (issue 2): durable commits with and without
// group commit, recovery of a million records with and without a snapshot,
// and the resident memory of an agent holding 100,000 records.
//
// Memory is measured in a child process (this test binary, re-executed with
// childEnv set), so each number is the whole process: VmHWM and VmRSS from
// /proc/self/status, next to the live Go heap. Fixtures are built once per
// run, also in a child, into a temporary directory that TestMain removes.
//
//	go test -run '^$' -bench . -benchtime 1x ./internal/ledger/
//
// Set TMPDIR to measure another disk: on tmpfs an fsync costs nothing.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/oklog/ulid/v2"

	"fieldsync/internal/wal"
	"fieldsync/protocol"
)

// childEnv, when set, makes the test binary run one child task (see
// runChild) instead of the tests.
const childEnv = "FIELDSYNC_LEDGER_BENCH_CHILD"

func TestMain(m *testing.M) {
	if task := os.Getenv(childEnv); task != "" {
		os.Exit(runChild(task, os.Args[1:]))
	}
	code := m.Run()
	if fixtureRoot != "" {
		os.RemoveAll(fixtureRoot)
	}
	os.Exit(code)
}

// ---- Records shaped like real deliveries ----

var (
	benchEpoch = time.Date(2026, 3, 2, 8, 0, 0, 0, time.UTC)
	benchItems = []string{
		"FortiGate 100F firewall", "Cisco Catalyst C9300-48P", "Dell PowerEdge R650",
		"Starlink Standard Kit", "APC Smart-UPS SRT 3000VA", "Ubiquiti EdgeRouter 12",
	}
	benchPeople = []string{"O. Kovalenko", "I. Shevchenko", "M. Bondarenko", "T. Melnyk"}
	benchNotes  = []string{
		"Boxes sealed; stored in rack 3.",
		"One carton dented, unit works.",
		"Came with the regional van.",
	}
)

// benchAgent is the agent id of the benchmark's records ("A-" and a ULID,
// as hub enroll makes them).
func benchAgent(w int) string {
	return "A-" + ulid.MustNew(ulid.Timestamp(benchEpoch), rand.NewChaCha8([32]byte{byte(w)})).String()
}

// benchPledge is the id of one of 200 pledges the records fulfil.
func benchPledge(i uint64) string {
	return ulid.MustNew(ulid.Timestamp(benchEpoch.Add(-time.Duration(i)*time.Hour)), rand.NewChaCha8([32]byte{0: 'p', 1: byte(i)})).String()
}

// recordGen makes the records of one agent: deliveries with an item, a
// quantity, two serial numbers, a condition, who received them and a note,
// half of them against a pledge; about 330 bytes of JSON each.
type recordGen struct {
	agent   string
	rnd     *rand.ChaCha8
	pledges []string
}

func newRecordGen(w int) *recordGen {
	g := &recordGen{agent: benchAgent(w), rnd: rand.NewChaCha8([32]byte{'r', byte(w)})}
	for i := range uint64(200) {
		g.pledges = append(g.pledges, benchPledge(i))
	}
	return g
}

func (g *recordGen) record(seq uint64) *protocol.Record {
	at := benchEpoch.Add(time.Duration(seq) * 7 * time.Second)
	r := &protocol.Record{
		ID:    ulid.MustNew(ulid.Timestamp(at), g.rnd).String(),
		Seq:   seq,
		Agent: g.agent,
		Site:  "UA-KV-017",
		Type:  protocol.TypeDelivery,
		At:    at,
		Item:  benchItems[seq%uint64(len(benchItems))],
		Qty:   int64(1 + seq%12),
		Serials: []string{
			fmt.Sprintf("FGT1HFT%09d", 2*seq), fmt.Sprintf("FGT1HFT%09d", 2*seq+1),
		},
		Condition:  protocol.ConditionOK,
		ReceivedBy: benchPeople[seq%uint64(len(benchPeople))],
		Note:       benchNotes[seq%uint64(len(benchNotes))],
	}
	if seq%2 == 0 {
		r.Pledge = g.pledges[seq/2%uint64(len(g.pledges))]
	}
	if seq%40 == 0 {
		r.Condition = protocol.ConditionDamaged
	}
	return r
}

// ---- Commits ----

// commitsPerOp is the work of one benchmark iteration, so that -benchtime 1x
// still measures enough commits for a p99.
const commitsPerOp = 2000

type commitResult struct {
	name              string
	writers           int
	commits           int
	perSec            float64
	p50, p99          time.Duration
	entriesPerFsync   float64
	speedupVsOneWrite float64
}

// BenchmarkCommit measures durable commits of one delivery record each
// (Write with one Put, acknowledged after fsync), by one writer and by
// eight concurrent ones. The baseline in the same run, writers=8,serial,
// is the same eight writers taking turns, so every commit pays its own
// fsync: the difference to writers=8 is what group commit buys.
func BenchmarkCommit(b *testing.B) {
	cases := []struct {
		name    string
		writers int
		serial  bool
	}{
		{"writers=1", 1, false},
		{"writers=8", 8, false},
		{"writers=8,serial", 8, true},
	}
	var results []commitResult
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			res := benchCommit(b, c.writers, c.serial)
			res.name = c.name
			if len(results) > 0 && results[0].perSec > 0 {
				res.speedupVsOneWrite = res.perSec / results[0].perSec
				b.ReportMetric(res.speedupVsOneWrite, "x-vs-writers=1")
			}
			// The framework may call this more than once while it sizes b.N;
			// keep the last run.
			if i := slices.IndexFunc(results, func(r commitResult) bool { return r.name == c.name }); i >= 0 {
				results[i] = res
			} else {
				results = append(results, res)
			}
		})
	}
	t := benchTable{title: "ledger commits (one delivery record per Write, fsync before ack)",
		head: []string{"case", "commits", "commits/s", "p50", "p99", "entries/fsync", "vs writers=1"}}
	for _, r := range results {
		vs := "1.00x"
		if r.speedupVsOneWrite > 0 {
			vs = fmt.Sprintf("%.2fx", r.speedupVsOneWrite)
		}
		t.add(r.name, strconv.Itoa(r.commits), fmt.Sprintf("%.0f", r.perSec), fmtDur(r.p50), fmtDur(r.p99),
			fmt.Sprintf("%.1f", r.entriesPerFsync), vs)
	}
	t.print()
}

func benchCommit(b *testing.B, writers int, serial bool) commitResult {
	l, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	var batches, entries atomic.Int64
	l.batchHook = func(n int) error { batches.Add(1); entries.Add(int64(n)); return nil }

	total := b.N * commitsPerOp
	recs := make([][]*protocol.Record, writers)
	for w := range writers {
		g := newRecordGen(w)
		for i := w; i < total; i += writers {
			recs[w] = append(recs[w], g.record(uint64(len(recs[w])+1)))
		}
	}
	latency := make([]time.Duration, 0, total)
	var latMu sync.Mutex
	var turn sync.Mutex // serial: one Write at a time
	var wg sync.WaitGroup

	b.ResetTimer()
	start := time.Now()
	for w := range writers {
		wg.Go(func() {
			lat := make([]time.Duration, 0, len(recs[w]))
			for _, r := range recs[w] {
				t0 := time.Now()
				if serial {
					turn.Lock()
				}
				err := l.Write(func(tx *Txn) error { return tx.Put(TableRecords, r) })
				if serial {
					turn.Unlock()
				}
				lat = append(lat, time.Since(t0))
				if err != nil {
					b.Error(err)
					return
				}
			}
			latMu.Lock()
			latency = append(latency, lat...)
			latMu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()

	slices.Sort(latency)
	res := commitResult{
		writers: writers,
		commits: len(latency),
		perSec:  float64(len(latency)) / elapsed.Seconds(),
		p50:     latency[len(latency)/2],
		p99:     latency[len(latency)*99/100],
	}
	res.entriesPerFsync = float64(entries.Load()) / float64(max(batches.Load(), 1))
	b.ReportMetric(res.perSec, "commits/s")
	b.ReportMetric(float64(res.p50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(res.p99.Microseconds()), "p99-µs")
	b.ReportMetric(res.entriesPerFsync, "entries/fsync")
	return res
}

// ---- Recovery and memory ----

// openResult is what a child process reports after opening a ledger.
type openResult struct {
	Records     int     `json:"records"`
	OpenSeconds float64 `json:"open_s"`
	CPUSeconds  float64 `json:"cpu_s"`       // user+sys CPU time of the process until Open returned
	GCCPU       float64 `json:"gc_cpu_s"`    // of which the garbage collector, as the runtime estimates it
	PeakRSS     int64   `json:"peak_rss"`    // VmHWM: the process's peak resident memory
	RSSOpen     int64   `json:"rss_open"`    // VmRSS right after Open returned
	RSSSettled  int64   `json:"rss_settled"` // VmRSS after a GC returned free memory to the OS
	LiveHeap    int64   `json:"live_heap"`   // heap in use after that GC
	DiskBytes   int64   `json:"disk_bytes"`  // size of the data directory
}

// BenchmarkRecovery measures opening a ledger of 1,000,000 delivery records
// (about 330 bytes of JSON each, one record per log entry, as an agent writes
// them): replaying the whole log, and loading a snapshot that covers it.
// The baseline is an empty ledger: the floor of the process's memory.
// Targets (issue 2): under 5 s and under 500 MB.
func BenchmarkRecovery(b *testing.B) {
	benchOpen(b, 1_000_000, "ledger recovery, 1,000,000 records (child process per open)", RoleHub, RoleAgent)
}

// BenchmarkAgentMemory measures the resident memory of a process holding an
// agent's ledger of 100,000 records, after Open and once the garbage of
// recovery is collected, next to an empty ledger. Target (issue 2): under
// 100 MB.
func BenchmarkAgentMemory(b *testing.B) {
	benchOpen(b, 100_000, "agent memory, 100,000 records (child process per open)", RoleAgent)
}

// benchOpen opens the fixture of n records with the indexes of each of
// roles: the first role's cases are named plainly, the others' carry the
// role's name.
func benchOpen(b *testing.B, n int, title string, roles ...Role) {
	fx := fixture(b, n)
	type openCase struct {
		name, dir string
		role      Role
	}
	cases := []openCase{{"baseline,empty", fx.empty, roles[0]}}
	for i, role := range roles {
		suffix := ""
		if i > 0 {
			suffix = "," + role.String()
		}
		cases = append(cases, openCase{"log" + suffix, fx.log, role}, openCase{"snapshot" + suffix, fx.snap, role})
	}
	t := benchTable{title: title, head: []string{"case", "records", "disk MB", "open (wall)", "CPU", "of it GC",
		"peak RSS MB", "RSS after open MB", "RSS settled MB", "live heap MB"}}
	for _, c := range cases {
		b.Run(fmt.Sprintf("records=%d,%s", n, c.name), func(b *testing.B) {
			var res openResult
			for range b.N {
				res = openChild(b, c.dir, c.role)
			}
			if want := n; c.name != "baseline,empty" && res.Records != want {
				b.Fatalf("opened %d records, want %d", res.Records, want)
			}
			b.ReportMetric(res.OpenSeconds, "open-s")
			b.ReportMetric(res.CPUSeconds, "cpu-s")
			b.ReportMetric(mb(res.PeakRSS), "peak-rss-MB")
			b.ReportMetric(mb(res.RSSSettled), "rss-MB")
			b.ReportMetric(mb(res.LiveHeap), "heap-MB")
			t.add(c.name, strconv.Itoa(res.Records), fmt.Sprintf("%.0f", mb(res.DiskBytes)),
				fmtDur(time.Duration(res.OpenSeconds*float64(time.Second))),
				fmt.Sprintf("%.2fs", res.CPUSeconds), fmt.Sprintf("%.2fs", res.GCCPU),
				fmt.Sprintf("%.0f", mb(res.PeakRSS)), fmt.Sprintf("%.0f", mb(res.RSSOpen)),
				fmt.Sprintf("%.0f", mb(res.RSSSettled)), fmt.Sprintf("%.0f", mb(res.LiveHeap)))
		})
	}
	t.note = fmt.Sprintf("fixture: log written in %s, snapshot (open + Snapshot) in %s; %.0f bytes per record in the log",
		fmtDur(fx.buildLog), fmtDur(fx.buildSnap), fx.bytesPerRecord)
	t.print()
}

type fixtureDirs struct {
	empty, log, snap    string
	buildLog, buildSnap time.Duration
	bytesPerRecord      float64
}

var (
	fixtureRoot string // removed by TestMain
	fixtureMu   sync.Mutex
	fixtures    = map[int]*fixtureDirs{}
)

// fixture returns ledgers of n records, built once per run: one with the
// whole log, one with a snapshot covering it (made by Ledger.Snapshot from
// the first), and an empty one.
func fixture(b *testing.B, n int) *fixtureDirs {
	b.Helper()
	fixtureMu.Lock()
	defer fixtureMu.Unlock()
	if fx, ok := fixtures[n]; ok {
		return fx
	}
	if fixtureRoot == "" {
		var err error
		if fixtureRoot, err = os.MkdirTemp("", "ledger-bench-"); err != nil {
			b.Fatal(err)
		}
	}
	base := filepath.Join(fixtureRoot, strconv.Itoa(n))
	fx := &fixtureDirs{empty: base + "-empty", log: base + "-log", snap: base + "-snap"}
	if err := os.MkdirAll(fx.empty, 0o700); err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	runChild1(b, "build", fx.log, strconv.Itoa(n))
	fx.buildLog = time.Since(t0)
	fx.bytesPerRecord = float64(dirSize(fx.log)) / float64(n)
	t0 = time.Now()
	runChild1(b, "snapshot", fx.log, fx.snap)
	fx.buildSnap = time.Since(t0)
	fixtures[n] = fx
	return fx
}

func openChild(b *testing.B, dir string, role Role) openResult {
	out := runChild1(b, "open", dir, strconv.Itoa(int(role)))
	var res openResult
	if err := json.Unmarshal(out, &res); err != nil {
		b.Fatalf("child output %q: %v", out, err)
	}
	return res
}

// runChild1 runs one child task and returns the last line of its output.
func runChild1(b *testing.B, task string, args ...string) []byte {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), childEnv+"="+task)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("child %s %v: %v", task, args, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return []byte(lines[len(lines)-1])
}

// runChild is the child process: build DIR N, snapshot SRC DST, or open
// DIR ROLE. It prints its result as the last line of its output.
func runChild(task string, args []string) int {
	if err := childTask(task, args); err != nil {
		fmt.Fprintf(os.Stderr, "child %s: %v\n", task, err)
		return 1
	}
	return 0
}

func childTask(task string, args []string) error {
	switch task {
	case "build":
		n, err := strconv.Atoi(args[1])
		if err != nil {
			return err
		}
		return buildLog(args[0], n)
	case "snapshot":
		if err := os.CopyFS(args[1], os.DirFS(args[0])); err != nil {
			return err
		}
		l, err := Open(args[1], Options{SnapshotEvery: -1})
		if err != nil {
			return err
		}
		if err := l.Snapshot(); err != nil {
			return err
		}
		return l.Close()
	case "open":
		role, err := strconv.Atoi(args[1])
		if err != nil {
			return err
		}
		res, err := openAndMeasure(args[0], Role(role))
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(res)
	}
	return fmt.Errorf("unknown task %q", task)
}

// buildLog writes a log of n records, one record per entry exactly as
// Write encodes them, in batches without fsync: fast, and what an agent
// that recorded n deliveries one by one would have on disk.
func buildLog(dir string, n int) error {
	log, err := wal.Open(dir, wal.Options{NoSync: true})
	if err != nil {
		return err
	}
	g := newRecordGen(0)
	var enc objectEncoder
	batch := make([][]byte, 0, 4096)
	for seq := uint64(1); seq <= uint64(n); seq++ {
		raw, err := enc.encode(g.record(seq))
		if err != nil {
			return err
		}
		batch = append(batch, appendChange(nil, TableRecords, false, raw))
		if len(batch) == cap(batch) || seq == uint64(n) {
			if _, err := log.AppendBatch(batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	return log.Close()
}

func openAndMeasure(dir string, role Role) (openResult, error) {
	var res openResult
	res.DiskBytes = dirSize(dir)
	t0 := time.Now()
	l, err := Open(dir, Options{Role: role})
	if err != nil {
		return res, err
	}
	res.OpenSeconds = time.Since(t0).Seconds()
	res.CPUSeconds = procCPU()
	res.GCCPU = gcCPU()
	st := procStatus()
	res.RSSOpen = st["VmRSS"]
	err = l.Read(func(txn *memdb.Txn) error {
		// The fixture is one agent's records, numbered from 1.
		v := RecordsOf(txn)
		res.Records = v.Len()
		if last := v.LastSeq(benchAgent(0)); last != uint64(res.Records) {
			return fmt.Errorf("opened %d records, the last numbered %d", res.Records, last)
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.LiveHeap = int64(ms.HeapAlloc)
	st = procStatus()
	res.RSSSettled = st["VmRSS"]
	res.PeakRSS = st["VmHWM"]
	runtime.KeepAlive(l)
	return res, l.Close()
}

// procStatus returns the memory lines of /proc/self/status in bytes (Linux
// only; empty elsewhere).
func procStatus() map[string]int64 {
	m := map[string]int64{}
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return m
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || !strings.HasPrefix(k, "Vm") {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 2 && fs[1] == "kB" {
			n, _ := strconv.ParseInt(fs[0], 10, 64)
			m[k] = n << 10
		}
	}
	return m
}

// procCPU returns the user and system CPU time of this process in seconds
// from /proc/self/stat (Linux; 0 elsewhere). Unlike wall time it does not
// grow when other processes compete for the machine's cores.
func procCPU() float64 {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses: utime and
	// stime are the 12th and 13th, in clock ticks of 1/100 s.
	_, rest, ok := strings.Cut(string(b), ") ")
	fs := strings.Fields(rest)
	if !ok || len(fs) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(fs[11], 64)
	s, _ := strconv.ParseFloat(fs[12], 64)
	return (u + s) / 100
}

// gcCPU returns the runtime's estimate of the CPU time spent in garbage
// collection so far.
func gcCPU() float64 {
	s := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64 {
		return 0
	}
	return s[0].Value.Float64()
}

func dirSize(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// ---- Output ----

// benchTable prints a result table in Markdown, ready for
// docs/benchmarks.md.
type benchTable struct {
	title string
	head  []string
	rows  [][]string
	note  string
}

func (t *benchTable) add(cells ...string) { t.rows = append(t.rows, cells) }

func (t *benchTable) print() { t.write(os.Stdout) }

func (t *benchTable) write(w io.Writer) {
	width := make([]int, len(t.head))
	for _, r := range append([][]string{t.head}, t.rows...) {
		for i, c := range r {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	line := func(cells []string) {
		var sb strings.Builder
		for i, c := range cells {
			fmt.Fprintf(&sb, "| %-*s ", width[i], c)
		}
		fmt.Fprintln(w, sb.String()+"|")
	}
	fmt.Fprintf(w, "\n%s\n\n", t.title)
	line(t.head)
	sep := make([]string, len(t.head))
	for i := range sep {
		sep[i] = strings.Repeat("-", width[i])
	}
	line(sep)
	for _, r := range t.rows {
		line(r)
	}
	if t.note != "" {
		fmt.Fprintf(w, "\n%s\n", t.note)
	}
	fmt.Fprintln(w)
}

func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

func mb(n int64) float64 { return float64(n) / (1 << 20) }
