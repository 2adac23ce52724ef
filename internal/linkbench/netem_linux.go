//go:build linux

package linkbench

// The netem harness: the real agent and hub binaries, on the kernel's UDP
// and TCP, between two network namespaces, through a link impaired as the
// SPEC's profiles say. BenchmarkNetem (netem_test.go) drives it.
//
// Two backends make the link:
//
//   - netem: a veth pair with `tc qdisc ... netem delay D loss L rate R
//     limit N` on both ends. This is what the brief asks for, and what is
//     used wherever the kernel has sch_netem.
//   - tun: a TUN device in each namespace, joined by an impairment of the
//     same profile in this process (nmDir), in real time. Some kernels
//     (Firecracker guests among them) are built without
//     CONFIG_NET_SCH_NETEM; there `tc qdisc add ... netem` fails with
//     "Specified qdisc kind is unknown", and this backend stands in. The
//     binaries still use kernel sockets; only the link is in user space.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Addresses and names inside the namespaces; the namespaces themselves
// carry this process's id and a counter, so runs never collide.
const (
	nmAgentIP  = "10.79.0.2"
	nmHubIP    = "10.79.0.1"
	nmQUICPort = "4433"
	nmHTTPPort = "8443"
	nmDev      = "fsnm0" // the link's device in each namespace
	nmMTU      = 1500
	// nmPktSize is the packet size the netem limit is counted in.
	nmPktSize = 1500
)

var nmLinks atomic.Int32

// nmProfile is a link the harness measures.
type nmProfile struct {
	Name  string
	Delay time.Duration // one way, each direction
	Loss  float64       // each direction
	Rate  int64         // bit/s, each direction, IP headers included
	// Periodic outages (leo): the first starts OutageFirst after a
	// transfer starts, then one every OutageEvery.
	OutageEvery, OutageFor, OutageFirst time.Duration
	// Cut, if set, takes the link down for that long once the hub has
	// received about half of the payload.
	Cut time.Duration
}

// queueBytes is the bottleneck queue in front of the rate cap: one
// bandwidth-delay product (rate × round trip), at least 16 full packets,
// as internal/linksim sizes it.
func (p nmProfile) queueBytes() int {
	q := int(float64(p.Rate) / 8 * (2 * p.Delay).Seconds())
	return max(q, 16*nmPktSize)
}

// netemLimit is netem's `limit`, in packets. netem keeps every packet it
// delays in its one queue, so the limit must hold what is in propagation
// (rate × one-way delay) as well as the bottleneck queue (one
// bandwidth-delay product, as linksim's default). netem's default of
// 1000 packets would be a 2.4 s queue on geo (1.5 MB at 5 Mbit/s): a
// bufferbloated modem that flatters loss-based TCP and hides what the
// shield's pacer does. Small packets (acknowledgements) count as one
// each, so the uplink's limit is generous for the downlink's.
func (p nmProfile) netemLimit() int {
	inFlight := float64(p.Rate) / 8 * p.Delay.Seconds()
	return int(inFlight/nmPktSize) + p.queueBytes()/nmPktSize + 8
}

// netemArgs is the netem qdisc of one direction; down means 100 % loss.
// The rate's packet overhead of -14 takes the Ethernet header veth adds
// out of the rate: the SPEC's rates are of IP packets.
func (p nmProfile) netemArgs(down bool) []string {
	loss := strconv.FormatFloat(p.Loss*100, 'f', -1, 64) + "%"
	if down {
		loss = "100%"
	}
	return []string{"netem", "limit", strconv.Itoa(p.netemLimit()),
		"delay", fmt.Sprintf("%dus", p.Delay.Microseconds()),
		"loss", "random", loss,
		"rate", fmt.Sprintf("%dbit", p.Rate), "-14"}
}

// nmDirStats counts one direction of the link, IP bytes.
type nmDirStats struct {
	OfferedBytes, OfferedPkts     int64 // put on the link, lost ones included
	DeliveredBytes, DeliveredPkts int64
	LostPkts                      int64 // random loss
	OutageBytes, OutagePkts       int64 // dropped by an outage, in flight ones included
	QueuePkts                     int64 // tail drops at the bottleneck
	Shield, QUIC, Other           int64 // datagrams by kind (tun backend)
}

func (s nmDirStats) sub(o nmDirStats) nmDirStats {
	return nmDirStats{
		s.OfferedBytes - o.OfferedBytes, s.OfferedPkts - o.OfferedPkts,
		s.DeliveredBytes - o.DeliveredBytes, s.DeliveredPkts - o.DeliveredPkts,
		s.LostPkts - o.LostPkts, s.OutageBytes - o.OutageBytes, s.OutagePkts - o.OutagePkts,
		s.QueuePkts - o.QueuePkts, s.Shield - o.Shield, s.QUIC - o.QUIC, s.Other - o.Other,
	}
}

// nmLink is the two namespaces and the impaired link between them.
type nmLink struct {
	backend  string // "netem" or "tun"
	prof     nmProfile
	nsA, nsH string

	// tun backend
	tunA, tunH *os.File
	up, down   *nmDir
	wg         sync.WaitGroup

	mu     sync.Mutex
	isDown bool
}

// nmCanRun says why the harness cannot run here, or "".
func nmCanRun() string {
	if os.Geteuid() != 0 {
		return "BenchmarkNetem needs root (network namespaces, tc)"
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "BenchmarkNetem needs " + tool + "(8) from iproute2"
		}
	}
	return ""
}

// nmHasNetem says whether the kernel has the netem qdisc: it tries one on
// a throwaway namespace's loopback.
func nmHasNetem() bool {
	ns := fmt.Sprintf("fsnm%d-probe", os.Getpid())
	if run("ip", "netns", "add", ns) != nil {
		return false
	}
	defer run("ip", "netns", "del", ns)
	return run("tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms") == nil
}

// newNMLink makes the namespaces and the link of p with backend ("netem"
// or "tun"); t.Cleanup tears them down, also after a failure.
func newNMLink(tb nmCleaner, p nmProfile, backend string) (*nmLink, error) {
	n := nmLinks.Add(1)
	l := &nmLink{
		backend: backend, prof: p,
		nsA: fmt.Sprintf("fsnm%d-%da", os.Getpid(), n),
		nsH: fmt.Sprintf("fsnm%d-%dh", os.Getpid(), n),
	}
	tb.Cleanup(l.close)
	for _, ns := range []string{l.nsA, l.nsH} {
		if err := run("ip", "netns", "add", ns); err != nil {
			return nil, err
		}
		if err := run("ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
			return nil, err
		}
	}
	switch backend {
	case "netem":
		if err := run("ip", "link", "add", nmDev, "netns", l.nsA, "type", "veth", "peer", "name", nmDev, "netns", l.nsH); err != nil {
			return nil, err
		}
		for _, ns := range []string{l.nsA, l.nsH} {
			// One segment per packet: with TSO/GSO a 64 KB TCP super-packet
			// would be one packet to netem's loss (no ethtool needed).
			if err := run("ip", "-n", ns, "link", "set", nmDev, "gso_max_segs", "1", "gso_max_size", strconv.Itoa(nmMTU)); err != nil {
				return nil, err
			}
		}
	case "tun":
		var err error
		if l.tunA, err = createTUN(l.nsA, nmDev); err != nil {
			return nil, err
		}
		if l.tunH, err = createTUN(l.nsH, nmDev); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown backend %q", backend)
	}
	for ns, ip := range map[string]string{l.nsA: nmAgentIP, l.nsH: nmHubIP} {
		if err := run("ip", "-n", ns, "addr", "add", ip+"/24", "dev", nmDev); err != nil {
			return nil, err
		}
		if err := run("ip", "-n", ns, "link", "set", nmDev, "mtu", strconv.Itoa(nmMTU), "up"); err != nil {
			return nil, err
		}
	}
	if backend == "netem" {
		return l, l.shape(false)
	}
	l.up = newNMDir(p, 1, l.tunH)
	l.down = newNMDir(p, 2, l.tunA)
	for _, d := range []struct {
		from *os.File
		dir  *nmDir
	}{{l.tunA, l.up}, {l.tunH, l.down}} {
		l.wg.Go(func() {
			buf := make([]byte, 65536)
			for {
				n, err := d.from.Read(buf)
				if err != nil {
					return
				}
				d.dir.offer(buf[:n])
			}
		})
		l.wg.Go(d.dir.deliver)
	}
	return l, nil
}

// nmCleaner is the part of testing.TB newNMLink needs.
type nmCleaner interface {
	Cleanup(func())
}

// shape applies the profile's netem qdisc to both ends (netem backend).
// `replace` drops what the old qdisc held: packets in flight when the link
// goes down are lost, as on a real link.
func (l *nmLink) shape(down bool) error {
	for _, ns := range []string{l.nsA, l.nsH} {
		args := append([]string{"-n", ns, "qdisc", "replace", "dev", nmDev, "root"}, l.prof.netemArgs(down)...)
		if err := run("tc", args...); err != nil {
			return err
		}
	}
	return nil
}

// setDown takes the link down or brings it back, both directions.
func (l *nmLink) setDown(down bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.isDown == down {
		return nil
	}
	l.isDown = down
	if l.backend == "netem" {
		return l.shape(down)
	}
	l.up.setDown(down)
	l.down.setDown(down)
	return nil
}

// stats returns both directions' counters.
func (l *nmLink) stats() (up, down nmDirStats, err error) {
	if l.backend == "tun" {
		return l.up.snapshot(), l.down.snapshot(), nil
	}
	up, err = nmNetemStats(l.nsA)
	if err != nil {
		return
	}
	down, err = nmNetemStats(l.nsH)
	return
}

// nmNetemStats reads the netem qdisc's counters in ns. netem drops a lost
// packet before it takes link time and counts it with queue overflows in
// "drops"; the bytes offered are estimated from the mean size of what was
// sent. Ethernet headers are taken out.
func nmNetemStats(ns string) (nmDirStats, error) {
	var s nmDirStats
	out, err := exec.Command("tc", "-n", ns, "-s", "-j", "qdisc", "show", "dev", nmDev).Output()
	if err != nil {
		return s, fmt.Errorf("tc -s qdisc show in %s: %w", ns, err)
	}
	var qs []struct {
		Kind    string `json:"kind"`
		Bytes   int64  `json:"bytes"`
		Packets int64  `json:"packets"`
		Drops   int64  `json:"drops"`
	}
	if err := json.Unmarshal(out, &qs); err != nil {
		return s, fmt.Errorf("tc -s -j qdisc show: %w", err)
	}
	for _, q := range qs {
		if q.Kind != "netem" {
			continue
		}
		s.DeliveredPkts += q.Packets
		s.DeliveredBytes += q.Bytes - 14*q.Packets
		s.LostPkts += q.Drops
	}
	s.OfferedPkts = s.DeliveredPkts + s.LostPkts
	s.OfferedBytes = s.DeliveredBytes
	if s.DeliveredPkts > 0 {
		s.OfferedBytes += s.LostPkts * s.DeliveredBytes / s.DeliveredPkts
	}
	return s, nil
}

// close tears the link down: processes in the namespaces must have ended.
func (l *nmLink) close() {
	for _, f := range []*os.File{l.tunA, l.tunH} {
		if f != nil {
			f.Close()
		}
	}
	for _, d := range []*nmDir{l.up, l.down} {
		if d != nil {
			d.close()
		}
	}
	l.wg.Wait()
	for _, ns := range []string{l.nsA, l.nsH} {
		run("ip", "netns", "del", ns)
	}
}

// nmDir is one direction of the tun backend's link, in real time: a
// drop-tail queue of queueBytes in front of a rate cap, random loss after
// the bottleneck (a lost packet took its link time, as on a real link),
// then the propagation delay. An outage drops what is offered and what
// is in flight.
type nmDir struct {
	out   *os.File
	rate  float64 // bytes per second
	delay time.Duration
	loss  float64
	qtime time.Duration // the queue's bound, in time at the rate

	mu    sync.Mutex
	rng   *mrand.Rand
	busy  time.Time // when the bottleneck is free
	down  bool
	line  []nmPacket
	st    nmDirStats
	wake  chan struct{}
	done  chan struct{}
	once  sync.Once
	first func(time.Time) // hears the first full packet delivered after an outage
	upAt  time.Time
	trace []nmTrace // the first nmTraceLen packets offered
}

// nmTraceLen is how many packets of each direction the tun backend
// traces, to see the handshake, stalls and the end of a transfer.
const nmTraceLen = 200000

type nmTrace struct {
	at   time.Time
	size int
	kind int // 0 shield, 1 QUIC, 2 other
	fate byte
	b0   byte // the datagram's first byte
}

type nmPacket struct {
	at   time.Time
	data []byte
}

func newNMDir(p nmProfile, seed uint64, out *os.File) *nmDir {
	rate := float64(p.Rate) / 8
	return &nmDir{
		out: out, rate: rate, delay: p.Delay, loss: p.Loss,
		qtime: time.Duration(float64(p.queueBytes()) / rate * float64(time.Second)),
		rng:   mrand.New(mrand.NewPCG(seed, 0x6e65)),
		wake:  make(chan struct{}, 1),
		done:  make(chan struct{}),
	}
}

// nmKind classifies an IPv4 packet: a shield frame, a QUIC packet, or
// something else (TCP, ICMP).
func nmKind(b []byte) int {
	if len(b) < 20 || b[0]>>4 != 4 || b[9] != syscall.IPPROTO_UDP {
		return 2
	}
	h := int(b[0]&0x0f) * 4
	if len(b) < h+9 {
		return 2
	}
	if b[h+8]&0x40 != 0 {
		return 1
	}
	return 0
}

func (d *nmDir) offer(b []byte) {
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.st.OfferedBytes += int64(len(b))
	d.st.OfferedPkts++
	switch nmKind(b) {
	case 0:
		d.st.Shield++
	case 1:
		d.st.QUIC++
	default:
		d.st.Other++
	}
	if len(d.trace) < nmTraceLen {
		var b0 byte
		if k := nmKind(b); k < 2 {
			b0 = b[int(b[0]&0x0f)*4+8]
		}
		fate := byte('d')
		defer func() { d.trace[len(d.trace)-1].fate = fate }()
		d.trace = append(d.trace, nmTrace{at: now, size: len(b), kind: nmKind(b), b0: b0})
		defer func() {
			switch {
			case d.down:
				fate = 'o'
			case len(d.line) == 0 || d.line[len(d.line)-1].data == nil || len(d.line[len(d.line)-1].data) != len(b):
				fate = 'l'
			}
		}()
	}
	if d.down {
		d.st.OutageBytes += int64(len(b))
		d.st.OutagePkts++
		return
	}
	start := d.busy
	if start.Before(now) {
		start = now
	}
	if start.Sub(now) > d.qtime {
		d.st.QueuePkts++
		return
	}
	d.busy = start.Add(time.Duration(float64(len(b)) / d.rate * float64(time.Second)))
	if d.rng.Float64() < d.loss {
		d.st.LostPkts++
		return
	}
	d.line = append(d.line, nmPacket{at: d.busy.Add(d.delay), data: bytes.Clone(b)})
	if len(d.line) == 1 {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
}

func (d *nmDir) setDown(down bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.down = down
	if down {
		for _, p := range d.line {
			d.st.OutageBytes += int64(len(p.data))
			d.st.OutagePkts++
		}
		d.line = nil
		d.busy = time.Time{}
	} else {
		d.upAt = time.Now()
	}
}

// deliver writes packets out when their time comes, until close.
func (d *nmDir) deliver() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		d.mu.Lock()
		now := time.Now()
		var due [][]byte
		for len(d.line) > 0 && !d.line[0].at.After(now) {
			due = append(due, d.line[0].data)
			d.line[0] = nmPacket{}
			d.line = d.line[1:]
		}
		wait := time.Hour
		if len(d.line) > 0 {
			wait = d.line[0].at.Sub(now)
		}
		for _, b := range due {
			d.st.DeliveredBytes += int64(len(b))
			d.st.DeliveredPkts++
			if len(b) > 1000 && !d.upAt.IsZero() && d.first != nil {
				d.first(now)
				d.upAt = time.Time{}
			}
		}
		d.mu.Unlock()
		for _, b := range due {
			d.out.Write(b)
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-d.wake:
		case <-d.done:
			return
		}
		timer.Stop()
	}
}

func (d *nmDir) snapshot() nmDirStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st
}

func (d *nmDir) close() { d.once.Do(func() { close(d.done) }) }

// nmDevRx reads the received bytes of nmDev in the namespace of process
// pid (/proc/PID/net/dev shows that process's namespace).
func nmDevRx(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/dev", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, nmDev+":") {
			continue
		}
		fields := strings.Fields(strings.TrimPrefix(line, nmDev+":"))
		if len(fields) < 1 {
			break
		}
		return strconv.ParseInt(fields[0], 10, 64)
	}
	return 0, fmt.Errorf("no %s in /proc/%d/net/dev", nmDev, pid)
}

// nmOutages runs the profile's periodic outages from now until ctx ends.
func (l *nmLink) outages(ctx context.Context) {
	p := l.prof
	if p.OutageFor <= 0 {
		return
	}
	next := time.Now().Add(p.OutageFirst)
	for {
		select {
		case <-ctx.Done():
			l.setDown(false)
			return
		case <-time.After(time.Until(next)):
		}
		l.setDown(true)
		select {
		case <-ctx.Done():
			l.setDown(false)
			return
		case <-time.After(p.OutageFor):
		}
		l.setDown(false)
		next = next.Add(p.OutageEvery)
	}
}

// nmCut is what a cut did.
type nmCut struct {
	At          time.Duration // after the transfer started
	LostUp      int64         // uplink bytes the outage dropped (offered or in flight)
	ResumeAfter time.Duration // from the link's return to the hub's first full packet
}

// cutAtHalf takes the link down for the profile's Cut once the hub's
// device has received half of want bytes (rx reads the counter), then
// measures how soon full packets reach the hub again. It returns when
// done or ctx ends.
func (l *nmLink) cutAtHalf(ctx context.Context, start time.Time, want int64, rx func() (int64, error), res *nmCut) {
	base, err := rx()
	if err != nil {
		return
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		n, err := rx()
		if err != nil {
			return
		}
		if n-base >= want/2 {
			break
		}
	}
	upBefore, _, _ := l.stats()
	res.At = time.Since(start)
	l.setDown(true)
	select {
	case <-ctx.Done():
		l.setDown(false)
		return
	case <-time.After(l.prof.Cut):
	}
	firstCh := make(chan time.Time, 1)
	if l.backend == "tun" {
		l.up.mu.Lock()
		l.up.first = func(t time.Time) {
			select {
			case firstCh <- t:
			default:
			}
		}
		l.up.mu.Unlock()
	}
	before, _ := rx()
	l.setDown(false)
	back := time.Now()
	upAfter, _, _ := l.stats()
	res.LostUp = upAfter.OutageBytes - upBefore.OutageBytes
	if l.backend == "netem" {
		// netem counts no outage drops of its own: estimate them as what
		// the agent offered while down.
		res.LostUp = upAfter.OfferedBytes - upAfter.DeliveredBytes - (upBefore.OfferedBytes - upBefore.DeliveredBytes)
	}
	poll := time.NewTicker(2 * time.Millisecond)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case t := <-firstCh:
			res.ResumeAfter = t.Sub(back)
			return
		case <-poll.C:
			if l.backend == "tun" {
				continue
			}
			n, err := rx()
			if err != nil {
				return
			}
			if n-before >= 1200 {
				res.ResumeAfter = time.Since(back)
				return
			}
			before = n
		}
	}
}

// nmFixture is a hub and an enrolled agent holding the records and
// attachments to sync, kept as templates that each run copies.
type nmFixture struct {
	bin          string // agent and hub binaries
	hubDir       string
	agentDir     string
	files        []string // attachment files
	records      int
	recordsJSON  []byte // the records as a site would type them, for HTTPS
	payloadBytes int64  // records' JSON + attachments
	attachBytes  int64
	warm         bool // the agent synced once before it recorded the payload
}

// nmBuild builds the binaries into dir.
func nmBuild(dir string) error {
	root, err := nmModuleRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-o", dir+string(os.PathSeparator), "./cmd/agent", "./cmd/hub")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v: %s", err, out)
	}
	return nil
}

func nmModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// newNMFixture initialises a hub, enrols an agent (hub address
// nmHubIP:nmQUICPort) and records records deliveries with `agent record
// delivery`, attaching nfiles random files of size bytes to the first
// ones. With warm set, the agent syncs once before it records anything, as
// a site that has synced before: the hub knows it and it holds a session
// ticket.
func newNMFixture(bin, dir string, records, nfiles, size int, warm bool) (*nmFixture, error) {
	f := &nmFixture{bin: bin, hubDir: filepath.Join(dir, "hub"), agentDir: filepath.Join(dir, "agent"), records: records}
	hub := func(args ...string) (string, error) {
		out, err := exec.Command(filepath.Join(bin, "hub"), append([]string{"--dir", f.hubDir}, args...)...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("hub %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}
	agent := func(args ...string) error {
		out, err := exec.Command(filepath.Join(bin, "agent"), append([]string{"--dir", f.agentDir}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("agent %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if _, err := hub("init"); err != nil {
		return nil, err
	}
	enrol := filepath.Join(dir, "site.enrol")
	if _, err := hub("enroll", "--site", "UA-KV-017", "--name", "Kyiv substation 17", "--sector", "energy",
		"--region", "Kyiv", "--addr", net.JoinHostPort(nmHubIP, nmQUICPort), "--out", enrol); err != nil {
		return nil, err
	}
	if err := agent("init", "--enroll", enrol); err != nil {
		return nil, err
	}
	if warm {
		if err := f.warmUp(); err != nil {
			return nil, fmt.Errorf("first sync on loopback: %w", err)
		}
		f.warm = true
	}
	for i := range nfiles {
		name := filepath.Join(dir, fmt.Sprintf("waybill-%02d.jpg", i+1))
		b := make([]byte, size)
		mrand.NewChaCha8([32]byte{byte(i), 0x6e}).Read(b) // a scan compresses no further
		if err := os.WriteFile(name, b, 0o644); err != nil {
			return nil, err
		}
		f.files = append(f.files, name)
		f.attachBytes += int64(size)
	}
	rng := mrand.New(mrand.NewPCG(7, 7))
	var recs []map[string]any
	for i := range records {
		rec := map[string]any{
			"type": "delivery", "item": fmt.Sprintf("Firewall appliance model FW-%d, rack kit", 100+rng.IntN(900)),
			"qty": 1 + rng.IntN(20), "serial": []string{fmt.Sprintf("SN%08d", rng.IntN(1e8)), fmt.Sprintf("SN%08d", rng.IntN(1e8))},
			"condition": "ok", "received_by": "O. Kovalenko",
			"note": "Delivered to the substation store; seals intact, counted on arrival.",
		}
		args := []string{"record", "delivery", "--item", rec["item"].(string), "--qty", fmt.Sprint(rec["qty"]),
			"--condition", "ok", "--received-by", "O. Kovalenko", "--note", rec["note"].(string)}
		for _, s := range rec["serial"].([]string) {
			args = append(args, "--serial", s)
		}
		if i < len(f.files) {
			args = append(args, "--attach", f.files[i])
			rec["attachment"] = filepath.Base(f.files[i])
		}
		if err := agent(args...); err != nil {
			return nil, err
		}
		recs = append(recs, rec)
	}
	var err error
	if f.recordsJSON, err = json.Marshal(recs); err != nil {
		return nil, err
	}
	f.payloadBytes = int64(len(f.recordsJSON)) + f.attachBytes
	return f, nil
}

// warmUp runs the agent's first sync (its enrolment) against the hub on
// loopback, pointing the agent's identity there for the time of it.
func (f *nmFixture) warmUp() error {
	idPath := filepath.Join(f.agentDir, "identity.json")
	orig, err := os.ReadFile(idPath)
	if err != nil {
		return err
	}
	var id map[string]any
	if err := json.Unmarshal(orig, &id); err != nil {
		return err
	}
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := c.LocalAddr().String()
	c.Close()
	id["hub_addr"] = addr
	b, err := json.Marshal(id)
	if err != nil {
		return err
	}
	if err := os.WriteFile(idPath, b, 0o600); err != nil {
		return err
	}
	defer os.WriteFile(idPath, orig, 0o600)

	var hubOut bytes.Buffer
	hub := exec.Command(filepath.Join(f.bin, "hub"), "--dir", f.hubDir, "serve", "--listen", addr, "--http", "")
	hub.Stdout, hub.Stderr = &hubOut, &hubOut
	if err := hub.Start(); err != nil {
		return err
	}
	defer func() {
		hub.Process.Signal(syscall.SIGTERM)
		hub.Wait()
	}()
	var out []byte
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if out, err = exec.Command(filepath.Join(f.bin, "agent"), "--dir", f.agentDir, "sync").CombinedOutput(); err == nil {
			return nil
		}
	}
	return fmt.Errorf("agent sync: %v: %s", err, out)
}

// nmResult is one measured transfer.
type nmResult struct {
	Method      string
	Took        time.Duration
	Payload     int64 // bytes the user had to move
	Up, Down    nmDirStats
	Cut         nmCut
	Err         error
	Sessions    int    // sync sessions the hub logged (1 = no restart)
	LogProblems string // ERROR and WARN lines of the agent's and hub's logs
	AgentSaid   string // the agent's summary line
	Logs        string // where the logs are kept
	TCPCC       string
}

// goodput is payload over time, as a share of the link's rate.
func (r nmResult) goodput(p nmProfile) float64 {
	if r.Took <= 0 {
		return 0
	}
	return float64(r.Payload) * 8 / r.Took.Seconds() / float64(p.Rate)
}

// perByte is the bytes put on the link, both ways, per payload byte.
func (r nmResult) perByte() float64 {
	return float64(r.Up.OfferedBytes+r.Down.OfferedBytes) / float64(max(r.Payload, 1))
}

func nmCopyDir(src, dst string) error {
	return run("cp", "-a", src, dst)
}

// nmSync runs `hub serve` in the hub's namespace and `agent sync` in the
// agent's, from copies of the fixture, and measures the sync.
func nmSync(ctx context.Context, l *nmLink, fx *nmFixture, logs string) (res nmResult) {
	res = nmResult{Method: "fieldsync (agent sync, QUIC+shield)", Payload: fx.payloadBytes, Logs: logs}
	if fx.warm {
		res.Method = "fieldsync (agent sync, QUIC+shield, synced before)"
	}
	if err := os.MkdirAll(logs, 0o755); err != nil {
		res.Err = err
		return res
	}
	hubDir, agentDir := filepath.Join(logs, "hub"), filepath.Join(logs, "agent")
	os.RemoveAll(hubDir)
	os.RemoveAll(agentDir)
	if err := nmCopyDir(fx.hubDir, hubDir); err != nil {
		res.Err = err
		return res
	}
	if err := nmCopyDir(fx.agentDir, agentDir); err != nil {
		res.Err = err
		return res
	}
	hubLog, err := os.Create(filepath.Join(logs, "hub.log"))
	if err != nil {
		res.Err = err
		return res
	}
	defer hubLog.Close()
	hub := exec.Command("ip", "netns", "exec", l.nsH, filepath.Join(fx.bin, "hub"), "--dir", hubDir, "-v",
		"serve", "--listen", net.JoinHostPort(nmHubIP, nmQUICPort), "--http", "")
	hub.Stdout, hub.Stderr = hubLog, hubLog
	if err := hub.Start(); err != nil {
		res.Err = err
		return res
	}
	hubDone := make(chan error, 1)
	go func() { hubDone <- hub.Wait() }()
	defer func() {
		hub.Process.Signal(syscall.SIGTERM)
		select {
		case <-hubDone:
		case <-time.After(10 * time.Second):
			hub.Process.Kill()
			<-hubDone
		}
		res.Sessions, res.LogProblems = nmReadLogs(filepath.Join(logs, "hub.log"), filepath.Join(logs, "agent.log"))
	}()
	for deadline := time.Now().Add(20 * time.Second); ; {
		b, _ := os.ReadFile(filepath.Join(logs, "hub.log"))
		if bytes.Contains(b, []byte("serving: sync on")) {
			break
		}
		if time.Now().After(deadline) {
			res.Err = fmt.Errorf("hub did not start serving: %s", b)
			return res
		}
		time.Sleep(50 * time.Millisecond)
	}

	up0, down0, err := l.stats()
	if err != nil {
		res.Err = err
		return res
	}
	limit := nmLimit(l.prof, fx.payloadBytes)
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	actx, acancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	start := time.Now()
	wg.Go(func() { l.outages(actx) })
	// The hub's received bytes every 250 ms, to see stalls and ramps.
	wg.Go(func() { nmSample(actx, start, hub.Process.Pid, filepath.Join(logs, "hub-rx.tsv")) })
	if l.prof.Cut > 0 {
		pid := hub.Process.Pid
		wg.Go(func() {
			l.cutAtHalf(actx, start, fx.payloadBytes, func() (int64, error) { return nmDevRx(pid) }, &res.Cut)
		})
	}
	agentLog, err := os.Create(filepath.Join(logs, "agent.log"))
	if err != nil {
		acancel()
		wg.Wait()
		res.Err = err
		return res
	}
	agent := exec.CommandContext(ctx, "ip", "netns", "exec", l.nsA, filepath.Join(fx.bin, "agent"), "--dir", agentDir, "-v", "sync")
	var stderr bytes.Buffer
	agent.Stdout, agent.Stderr = agentLog, io.MultiWriter(agentLog, &stderr)
	err = agent.Run()
	res.Took = time.Since(start)
	acancel()
	wg.Wait()
	agentLog.Close()
	for line := range strings.Lines(stderr.String()) {
		if strings.HasPrefix(line, "synced with") {
			res.AgentSaid = strings.TrimSpace(line)
		}
	}
	if err != nil {
		res.Err = fmt.Errorf("agent sync: %v: %s", err, nmLastLine(stderr.String()))
		if ctx.Err() != nil {
			res.Err = fmt.Errorf("agent sync did not finish within %v", limit)
		}
	}
	up1, down1, serr := l.stats()
	if serr == nil {
		res.Up, res.Down = up1.sub(up0), down1.sub(down0)
	}
	l.writeTrace(filepath.Join(logs, "packets.tsv"), start)
	if res.Err == nil {
		res.Err = nmCheckSynced(l, fx, agentDir)
	}
	return res
}

// nmCheckSynced checks the agent has nothing left to send.
func nmCheckSynced(l *nmLink, fx *nmFixture, agentDir string) error {
	out, err := exec.Command(filepath.Join(fx.bin, "agent"), "--dir", agentDir, "status", "--json").Output()
	if err != nil {
		return fmt.Errorf("agent status: %w", err)
	}
	var st struct {
		Records  int `json:"records"`
		Unsynced int `json:"unsynced_records"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return fmt.Errorf("agent status --json: %w", err)
	}
	if st.Records != fx.records || st.Unsynced != 0 {
		return fmt.Errorf("after the sync the agent has %d records, %d unsynced", st.Records, st.Unsynced)
	}
	return nil
}

// nmLimit is how long a transfer may take before it counts as stalled:
// three times the payload at the link's rate, two minutes, and the cut.
func nmLimit(p nmProfile, payload int64) time.Duration {
	ideal := time.Duration(float64(payload) * 8 / float64(p.Rate) * float64(time.Second))
	return 3*ideal + 2*time.Minute + p.Cut
}

func nmLastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// nmReadLogs counts the hub's sync sessions and collects the lines of
// either log at level WARN or ERROR.
func nmReadLogs(hubLog, agentLog string) (int, string) {
	var sessions int
	var probs []string
	for _, name := range []string{hubLog, agentLog} {
		b, _ := os.ReadFile(name)
		for line := range strings.Lines(string(b)) {
			if strings.Contains(line, `msg="sync session"`) {
				sessions++
			}
			if strings.Contains(line, "level=ERROR") || strings.Contains(line, "level=WARN") {
				probs = append(probs, filepath.Base(name)+": "+strings.TrimSpace(line))
			}
		}
	}
	return sessions, strings.Join(probs, "\n")
}

// nmHTTPS uploads the same payload with Go's net/http (HTTP/1.1 over TLS
// 1.3 over the kernel's TCP; one POST per file on one kept-alive
// connection) from the agent's namespace to a server in the hub's.
func nmHTTPS(ctx context.Context, l *nmLink, fx *nmFixture) nmResult {
	res := nmResult{Method: "https (Go net/http, kernel TCP)", Payload: fx.payloadBytes}
	inNetns(l.nsA, func() error {
		b, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control")
		res.TCPCC = strings.TrimSpace(string(b))
		return nil
	})
	res.Method = "https (Go net/http, kernel TCP " + res.TCPCC + ")"
	objs := [][]byte{fx.recordsJSON}
	for _, name := range fx.files {
		b, err := os.ReadFile(name)
		if err != nil {
			res.Err = err
			return res
		}
		objs = append(objs, b)
	}
	cert, err := nmSelfSigned()
	if err != nil {
		res.Err = err
		return res
	}
	var ln net.Listener
	if err := inNetns(l.nsH, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(nmHubIP, nmHTTPPort))
		return err
	}); err != nil {
		res.Err = err
		return res
	}
	var got atomic.Int64
	srv := &http.Server{
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n, _ := io.Copy(io.Discard, r.Body)
			got.Add(n)
			w.WriteHeader(http.StatusNoContent)
		}),
	}
	var srvWG sync.WaitGroup
	srvWG.Go(func() { srv.ServeTLS(ln, "", "") })
	defer func() {
		srv.Close()
		srvWG.Wait()
	}()
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13},
		TLSHandshakeTimeout: time.Minute,
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			err = inNetns(l.nsA, func() (err error) {
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
	defer client.CloseIdleConnections()

	up0, down0, err := l.stats()
	if err != nil {
		res.Err = err
		return res
	}
	limit := nmLimit(l.prof, fx.payloadBytes)
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	actx, acancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	start := time.Now()
	wg.Go(func() { l.outages(actx) })
	if l.prof.Cut > 0 {
		wg.Go(func() {
			l.cutAtHalf(actx, start, fx.payloadBytes, func() (int64, error) { return got.Load(), nil }, &res.Cut)
		})
	}
	url := "https://" + net.JoinHostPort(nmHubIP, nmHTTPPort) + "/upload"
	for _, b := range objs {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
		if err != nil {
			res.Err = err
			break
		}
		resp, err := client.Do(req)
		if err != nil {
			res.Err = err
			break
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	res.Took = time.Since(start)
	acancel()
	wg.Wait()
	if res.Err != nil && ctx.Err() != nil {
		res.Err = fmt.Errorf("stopped after %v with %d of %d bytes across", limit, got.Load(), fx.payloadBytes)
	}
	up1, down1, serr := l.stats()
	if serr == nil {
		res.Up, res.Down = up1.sub(up0), down1.sub(down0)
	}
	res.Sessions = 1
	return res
}

func nmSelfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IPAddresses: []net.IP{net.ParseIP(nmHubIP)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// nmRow is one line of the table.
type nmRow struct {
	Profile nmProfile
	Backend string
	Load    string
	Res     nmResult
}

// nmWriteTable writes the rows as a Markdown table.
func nmWriteTable(w io.Writer, rows []nmRow) {
	fmt.Fprintln(w, "| link | backend | method | payload | wall time | goodput, % of rate | link bytes per payload byte (both ways) | up: lost / outage-dropped / queue-dropped pkts | shield / QUIC datagrams up | sessions | cut: at, uplink bytes lost, data again after | load (1 min) | error |")
	fmt.Fprintln(w, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|---|")
	for _, r := range rows {
		res := r.Res
		cut := "—"
		if r.Profile.Cut > 0 {
			again := "never"
			if res.Cut.ResumeAfter > 0 {
				again = fmt.Sprintf("%v (%.1f RTT)", res.Cut.ResumeAfter.Round(time.Millisecond), res.Cut.ResumeAfter.Seconds()/(2*r.Profile.Delay).Seconds())
			}
			cut = fmt.Sprintf("%v, %s, %s", res.Cut.At.Round(100*time.Millisecond), nmKB(res.Cut.LostUp), again)
		}
		kinds := "—"
		if r.Backend == "tun" && res.Up.Shield+res.Up.QUIC > 0 {
			kinds = fmt.Sprintf("%d / %d", res.Up.Shield, res.Up.QUIC)
		}
		errs := ""
		if res.Err != nil {
			errs = strings.ReplaceAll(res.Err.Error(), "|", "/")
			if len(errs) > 160 {
				errs = errs[:160] + "…"
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %v | %.0f | %.3f | %d / %d / %d | %s | %d | %s | %s | %s |\n",
			r.Profile.Name, r.Backend, res.Method, nmKB(res.Payload), res.Took.Round(100*time.Millisecond),
			100*res.goodput(r.Profile), res.perByte(),
			res.Up.LostPkts, res.Up.OutagePkts, res.Up.QueuePkts, kinds, res.Sessions, cut, r.Load, errs)
	}
}

func nmKB(n int64) string {
	switch {
	case n >= 10<<20:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	case n >= 10<<10:
		return fmt.Sprintf("%.0f kB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// nmLoad returns the 1-minute load average.
func nmLoad() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// nmSample writes the hub device's received bytes every 250 ms to name
// (seconds since start, bytes, kbit/s over the last interval).
func nmSample(ctx context.Context, start time.Time, pid int, name string) {
	f, err := os.Create(name)
	if err != nil {
		return
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	defer w.Flush()
	fmt.Fprintln(w, "t_s\trx_bytes\tkbit_s")
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var last int64 = -1
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		n, err := nmDevRx(pid)
		if err != nil {
			return
		}
		rate := 0.0
		if last >= 0 {
			rate = float64(n-last) * 8 / 0.25 / 1000
		}
		last = n
		fmt.Fprintf(w, "%.2f\t%d\t%.0f\n", time.Since(start).Seconds(), n, rate)
	}
}

// writeTrace writes both directions' first packets to name.
func (l *nmLink) writeTrace(name string, start time.Time) {
	if l.backend != "tun" {
		return
	}
	f, err := os.Create(name)
	if err != nil {
		return
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	defer w.Flush()
	fmt.Fprintln(w, "t_ms\tdir\tbytes\tkind\tfirst_byte\tfate")
	for _, d := range []struct {
		name string
		dir  *nmDir
	}{{"up", l.up}, {"down", l.down}} {
		d.dir.mu.Lock()
		for _, t := range d.dir.trace {
			fmt.Fprintf(w, "%.1f\t%s\t%d\t%s\t%#02x\t%c\n", float64(t.at.Sub(start).Microseconds())/1000, d.name, t.size,
				[...]string{"shield", "quic", "other"}[t.kind], t.b0, t.fate)
		}
		d.dir.trace = d.dir.trace[:0]
		d.dir.mu.Unlock()
	}
}
