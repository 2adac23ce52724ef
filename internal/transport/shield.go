package transport

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"slices"
	"sync"
	"time"
)

// Shield settings; docs/transport.md explains each and what it was
// measured to do.
const (
	// AckDelay is how long a receiver holds an acknowledgement back,
	// hoping to ride on a data frame going the other way (QUIC's own
	// acknowledgements, usually).
	AckDelay = 2 * time.Millisecond
	// ackEvery sends an acknowledgement at once after this many data
	// frames, whatever AckDelay says.
	ackEvery = 4
	// reorderPackets is RACK's packet threshold: a transmission is lost
	// once one sent this many later was acknowledged. A satellite path
	// does not reorder.
	reorderPackets = 3
	// minRTO and maxRTO bound the wait for an acknowledgement before the
	// sender probes the path.
	minRTO = 20 * time.Millisecond
	maxRTO = 2 * time.Second
	// initialRTT is assumed before the first sample: about a GEO round
	// trip, so a fresh path is neither flooded with probes nor left idle
	// long.
	initialRTT = 600 * time.Millisecond
	// FastProbe is how long a silent path is probed every half round
	// trip, so that data flows again within two round trips of the link's
	// return; after that, ProbeEvery.
	FastProbe = 3 * time.Minute
	// ProbeEvery is the probe interval of a path silent for longer than
	// FastProbe: a ping costs 33 bytes on the link.
	ProbeEvery = 5 * time.Second
	// PeerIdle is how long a peer's state outlives its last datagram.
	PeerIdle = 10 * time.Minute
	// MaxPeers bounds the shielded peers one end keeps (a hub's agents).
	MaxPeers = 4096
	// maxQueue bounds the QUIC packets waiting to be sent to one peer; a
	// write that finds it full waits for room up to maxBlock, then the
	// packet is dropped (QUIC sees a loss: real congestion).
	maxQueue = 2 << 20
	maxBlock = time.Second
	// maxHoles bounds the gaps a receiver tracks; a data frame that would
	// open one more is dropped and sent again.
	maxHoles = 1024
	// maxAhead bounds how far past the first missing packet a data frame
	// may be; further is a new sender (resynchronise) or a stray.
	maxAhead   = maxWindow / 512
	resyncDist = 1 << 24
	// readBuffer bounds the QUIC packets delivered but not yet read.
	readBuffer = 8 << 20
)

// Mode says which peers a Shield shields.
type Mode int

const (
	// Client shields everything it sends: an agent dialling a hub.
	Client Mode = iota
	// Server shields what it sends to peers that sent it shield frames,
	// and talks plain QUIC with the rest: a hub.
	Server
)

// ShieldStats counts a Shield's traffic.
type ShieldStats struct {
	DataSent        int64 // data frames sent, retransmissions included
	DataBytes       int64 // their bytes, headers included
	Retransmits     int64 // data frames sent again
	RetransmitBytes int64
	AcksSent        int64 // acknowledgement frames on their own
	AckBytes        int64
	Piggybacked     int64 // acknowledgements that rode on a data frame
	Pings           int64 // probes of a silent path
	Received        int64 // data frames received
	Duplicates      int64 // data frames received twice
	Dropped         int64 // QUIC packets dropped: a full queue or read buffer
	PlainSent       int64 // QUIC packets sent without the shield
}

// PathInfo is a Shield's model of the path to one peer.
type PathInfo struct {
	Addr      net.Addr
	SRTT      time.Duration
	MinRTT    time.Duration
	Bandwidth float64 // bottleneck delivery rate, bytes per second
	Loss      float64 // share of transmissions lost
	Mode      string  // the pacer's state: startup, drain, probe-bw
}

// Shield is a net.PacketConn for quic-go that hides random loss from it.
// Beneath QUIC, between the two ends of a path, it numbers each QUIC
// packet, acknowledges what arrived, sends again what was lost, and paces
// what it sends at the path's measured rate. QUIC above it never sees a
// packet lost, so NewReno's window does not collapse on a lossy satellite
// link; packets arrive out of order instead, which quic-go tolerates
// once it has seen it (RACK-style adaptive reordering thresholds).
//
// A Shield in Server mode talks plain QUIC with peers that do not speak
// it: one hub port serves both. A Shield owns the PacketConn it wraps and
// closes it in Close. It runs two goroutines, which Close stops.
type Shield struct {
	pc   net.PacketConn
	mode Mode

	mu       sync.Mutex
	closed   bool
	peers    map[string]*peer
	order    []string // peers' keys, oldest first: the sender's round
	readQ    []delivery
	readQLen int
	readWake chan struct{} // closed and replaced when readQ grows or the deadline changes
	deadline time.Time
	stats    ShieldStats

	kick chan struct{} // wakes the sender
	done chan struct{} // closed by Close
	wg   sync.WaitGroup
}

var _ net.PacketConn = (*Shield)(nil)

type delivery struct {
	data []byte
	addr net.Addr
}

// NewShield wraps pc. In Client mode everything written is shielded; in
// Server mode only what goes to peers that sent shield frames.
func NewShield(pc net.PacketConn, mode Mode) *Shield {
	if u, ok := pc.(interface{ SetReadBuffer(int) error }); ok {
		u.SetReadBuffer(readBuffer) // best effort, as quic-go's own
	}
	s := &Shield{
		pc:       pc,
		mode:     mode,
		peers:    map[string]*peer{},
		readWake: make(chan struct{}),
		kick:     make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	s.wg.Add(2)
	go s.readLoop()
	go s.sendLoop()
	return s
}

// peer is the state of the path to one remote address: a sender and a
// receiver.
type peer struct {
	addr      net.Addr
	lastHeard time.Time
	created   time.Time

	// Sender.
	nextSeq  uint32
	base     uint32 // the first seq of win
	win      []*packet
	queue    [][]byte // QUIC packets not yet sent
	queued   int
	room     chan struct{} // closed and replaced when the queue shrinks
	lost     []uint32      // seqs to send again, ascending
	inflight int
	xmit     uint64 // transmissions so far
	pacer    *pacer
	srtt     time.Duration
	rttvar   time.Duration
	progress time.Time // last acknowledgement that acknowledged something, or the first send after idle
	pingID   uint32
	pings    [8]ping   // the latest pings sent, by id modulo 8
	probeAt  time.Time // when to probe next, if silent
	rackXmit uint64
	rackSent time.Time

	// Receiver.
	rcvInit  bool
	rcvNext  uint32
	rcvAbove []span // ascending, disjoint, non-adjacent, above rcvNext
	echo     uint32
	ackDue   bool
	ackNow   bool
	ackAt    time.Time
	unacked  int
}

// ping is a probe sent to a silent path.
type ping struct {
	id uint32
	at time.Time
}

// packet is a QUIC packet in the sender's window.
type packet struct {
	data     []byte
	size     int // on the wire
	sentAt   time.Time
	xmit     uint64
	sends    int
	st       sendState
	inflight bool
	acked    bool
	lost     bool
}

func newPeer(addr net.Addr, now time.Time) *peer {
	var isn [4]byte
	rand.Read(isn[:])
	seq := binary.BigEndian.Uint32(isn[:])
	return &peer{
		addr: addr, lastHeard: now, created: now,
		nextSeq: seq, base: seq,
		room:  make(chan struct{}),
		pacer: newPacer(),
	}
}

// peerLocked returns the state for addr, creating it if create is set.
// The caller holds s.mu.
func (s *Shield) peerLocked(addr net.Addr, create bool, now time.Time) *peer {
	key := addr.String()
	if p, ok := s.peers[key]; ok {
		return p
	}
	if !create || len(s.peers) >= MaxPeers {
		return nil
	}
	p := newPeer(addr, now)
	s.peers[key] = p
	s.order = append(s.order, key)
	return p
}

// ReadFrom returns the next QUIC packet, as a UDP socket would.
func (s *Shield) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return 0, nil, s.opError("read", net.ErrClosed)
		}
		if len(s.readQ) > 0 {
			d := s.readQ[0]
			s.readQ[0] = delivery{}
			s.readQ = s.readQ[1:]
			if len(s.readQ) == 0 {
				s.readQ = nil
			}
			s.readQLen -= len(d.data)
			s.mu.Unlock()
			return copy(b, d.data), d.addr, nil
		}
		deadline, wake := s.deadline, s.readWake
		s.mu.Unlock()
		if deadline.IsZero() {
			<-wake
			continue
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			return 0, nil, s.opError("read", os.ErrDeadlineExceeded)
		}
		t := time.NewTimer(wait)
		select {
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

func (s *Shield) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "udp", Source: s.pc.LocalAddr(), Err: err}
}

// deliverLocked queues a QUIC packet for ReadFrom. The caller holds s.mu.
func (s *Shield) deliverLocked(data []byte, addr net.Addr) {
	if s.readQLen+len(data) > readBuffer {
		s.stats.Dropped++
		return
	}
	s.readQ = append(s.readQ, delivery{data: data, addr: addr})
	s.readQLen += len(data)
	close(s.readWake)
	s.readWake = make(chan struct{})
}

// WriteTo sends a QUIC packet to addr: shielded, or plain to a peer that
// does not speak the shield. A shielded write waits while the peer's
// queue is full, up to maxBlock, so that QUIC is held to the path's rate
// without losing packets.
func (s *Shield) WriteTo(b []byte, addr net.Addr) (int, error) {
	if len(b) > MaxDatagram-dataHeader {
		// Too large to shield; QUIC is configured never to send this.
		return s.pc.WriteTo(b, addr)
	}
	var (
		timer   *time.Timer
		waitEnd time.Time
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return 0, s.opError("write", net.ErrClosed)
		}
		now := time.Now()
		p := s.peerLocked(addr, s.mode == Client, now)
		if p == nil {
			s.stats.PlainSent++
			s.mu.Unlock()
			return s.pc.WriteTo(b, addr)
		}
		full := p.queued+len(b) > maxQueue
		if !full || (!waitEnd.IsZero() && !now.Before(waitEnd)) {
			if full {
				s.stats.Dropped++ // waited long enough: congestion QUIC should see
			} else {
				p.queue = append(p.queue, slices.Clone(b))
				p.queued += len(b)
			}
			s.mu.Unlock()
			s.wakeSender()
			return len(b), nil
		}
		room := p.room
		s.mu.Unlock()
		if timer == nil {
			waitEnd = now.Add(maxBlock)
			timer = time.NewTimer(maxBlock)
		}
		select {
		case <-room:
		case <-timer.C:
		case <-s.done:
			return 0, s.opError("write", net.ErrClosed)
		}
	}
}

func (s *Shield) wakeSender() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Close stops the Shield: it sends what QUIC queued last (its
// CONNECTION_CLOSE), once, then closes the PacketConn.
func (s *Shield) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.readWake)
	s.readWake = make(chan struct{})
	s.mu.Unlock()
	close(s.done)
	s.wg.Wait()
	return nil
}

// LocalAddr returns the wrapped PacketConn's address.
func (s *Shield) LocalAddr() net.Addr { return s.pc.LocalAddr() }

// SetDeadline sets the read deadline; writes have none of their own.
func (s *Shield) SetDeadline(t time.Time) error { return s.SetReadDeadline(t) }

// SetReadDeadline sets the deadline for ReadFrom, also for reads already
// blocked. quic-go uses it to stop its read loop.
func (s *Shield) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deadline = t
	close(s.readWake)
	s.readWake = make(chan struct{})
	return nil
}

// SetWriteDeadline does nothing: a write waits at most a second.
func (s *Shield) SetWriteDeadline(time.Time) error { return nil }

// SetReadBuffer and SetWriteBuffer exist so that quic-go does not warn;
// the Shield sizes the wrapped socket's buffers itself.
func (s *Shield) SetReadBuffer(int) error { return nil }

// SetWriteBuffer: see SetReadBuffer.
func (s *Shield) SetWriteBuffer(int) error { return nil }

// Stats returns the Shield's counters.
func (s *Shield) Stats() ShieldStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Paths returns the Shield's model of the path to each peer.
func (s *Shield) Paths() []PathInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []PathInfo
	for _, p := range s.peers {
		out = append(out, p.info())
	}
	return out
}

func (p *peer) info() PathInfo {
	return PathInfo{
		Addr: p.addr, SRTT: p.srtt, MinRTT: p.pacer.minRTT,
		Bandwidth: p.pacer.linkBw(), Loss: p.pacer.loss, Mode: p.pacer.mode.String(),
	}
}

// readLoop takes datagrams off the wrapped PacketConn until it is closed.
func (s *Shield) readLoop() {
	defer s.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, addr, err := s.pc.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				select {
				case <-s.done:
					return
				default:
					continue
				}
			}
			select {
			case <-s.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				s.mu.Lock()
				s.closed = true
				close(s.readWake)
				s.readWake = make(chan struct{})
				s.mu.Unlock()
				return
			}
			continue // ICMP errors and the like: UDP carries on
		}
		b := buf[:n]
		if !isShield(b) {
			s.mu.Lock()
			s.deliverLocked(slices.Clone(b), addr)
			s.mu.Unlock()
			continue
		}
		f, err := parseFrame(b)
		if err != nil {
			continue
		}
		s.mu.Lock()
		now := time.Now()
		p := s.peerLocked(addr, true, now)
		if p != nil {
			p.lastHeard = now
			if p.handle(s, f, now) {
				s.wakeSender()
			}
		}
		s.mu.Unlock()
	}
}

// handle takes one frame from the peer; it reports whether the sender
// has something new to do. The caller holds s.mu.
func (p *peer) handle(s *Shield, f frame, now time.Time) bool {
	kick := false
	if f.ack != nil {
		kick = p.onAck(f.ack, now) || kick
	}
	switch f.typ {
	case frameData, frameDataAck:
		fresh := p.receive(f.seq, now)
		s.stats.Received++
		if fresh {
			s.deliverLocked(slices.Clone(f.payload), p.addr)
		} else {
			s.stats.Duplicates++
		}
		if p.ackNow || p.ackDue {
			kick = true
		}
	case framePing:
		p.echo = f.seq
		p.ackDue, p.ackNow = true, true
		kick = true
	}
	return kick
}

// receive records the arrival of seq; it reports whether it is new.
func (p *peer) receive(seq uint32, now time.Time) bool {
	if !p.rcvInit || abs64(seqDiff(seq, p.rcvNext)) > resyncDist {
		// The first frame from this sender, or one from a sender that
		// started over: follow it.
		p.rcvInit, p.rcvNext, p.rcvAbove = true, seq, nil
	}
	d := seqDiff(seq, p.rcvNext)
	switch {
	case d < 0:
		p.ackDue, p.ackNow = true, true // the ack was lost: say it again
		return false
	case d > maxAhead:
		return false
	case d == 0:
		p.rcvNext++
		if len(p.rcvAbove) > 0 && p.rcvAbove[0].start == p.rcvNext {
			p.rcvNext = p.rcvAbove[0].end()
			p.rcvAbove = p.rcvAbove[1:]
			if len(p.rcvAbove) == 0 {
				p.rcvAbove = nil
			}
			p.ackNow = true // a hole filled: tell the sender at once
		}
	default:
		i, _ := slices.BinarySearchFunc(p.rcvAbove, seq, func(s span, seq uint32) int {
			switch {
			case seqLess(s.start, seq) || s.start == seq:
				if seqLess(seq, s.end()) {
					return 0
				}
				return -1
			}
			return 1
		})
		if i < len(p.rcvAbove) && !seqLess(seq, p.rcvAbove[i].start) && seqLess(seq, p.rcvAbove[i].end()) {
			return false // duplicate
		}
		// Extend the span before, the span after, both, or neither.
		joinPrev := i > 0 && p.rcvAbove[i-1].end() == seq
		joinNext := i < len(p.rcvAbove) && p.rcvAbove[i].start == seq+1
		switch {
		case joinPrev && joinNext:
			p.rcvAbove[i-1].n += 1 + p.rcvAbove[i].n
			p.rcvAbove = slices.Delete(p.rcvAbove, i, i+1)
			p.ackNow = true
		case joinPrev:
			p.rcvAbove[i-1].n++
		case joinNext:
			p.rcvAbove[i].start--
			p.rcvAbove[i].n++
			p.ackNow = true
		default:
			if len(p.rcvAbove) >= maxHoles {
				return false
			}
			p.rcvAbove = slices.Insert(p.rcvAbove, i, span{start: seq, n: 1})
			p.ackNow = true // a new hole: tell the sender at once
		}
	}
	p.unacked++
	if p.unacked >= ackEvery {
		p.ackNow = true
	}
	if !p.ackDue {
		p.ackDue, p.ackAt = true, now.Add(AckDelay)
	}
	return true
}

func abs64(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// ackBlock returns what the receiver reports, and marks it reported.
func (p *peer) takeAck() *ackBlock {
	a := &ackBlock{next: p.rcvNext, echo: p.echo}
	if n := min(len(p.rcvAbove), MaxRanges); n > 0 {
		a.ranges = p.rcvAbove[:n:n]
	}
	p.echo = 0
	p.ackDue, p.ackNow, p.unacked = false, false, 0
	return a
}

// rto is how long the sender waits for an acknowledgement before it
// probes the path.
func (p *peer) rto() time.Duration {
	if p.srtt == 0 {
		return 2 * initialRTT
	}
	return min(max(p.srtt+4*p.rttvar+AckDelay, minRTO), maxRTO)
}

func (p *peer) onRTTSample(now time.Time, rtt time.Duration) {
	if rtt <= 0 {
		return
	}
	if p.srtt == 0 {
		p.srtt, p.rttvar = rtt, rtt/2
	} else {
		d := p.srtt - rtt
		if d < 0 {
			d = -d
		}
		p.rttvar = (3*p.rttvar + d) / 4
		p.srtt = (7*p.srtt + rtt) / 8
	}
	p.pacer.onRTT(now, rtt)
}

// at returns the window's packet for seq, or nil.
func (p *peer) at(seq uint32) *packet {
	d := seqDiff(seq, p.base)
	if d < 0 || d >= int64(len(p.win)) {
		return nil
	}
	return p.win[d]
}

// onAck takes an acknowledgement; it reports whether it freed the sender.
func (p *peer) onAck(a *ackBlock, now time.Time) bool {
	var (
		newly  int
		latest *packet
	)
	ackOne := func(seq uint32) {
		pk := p.at(seq)
		if pk == nil || pk.acked {
			return
		}
		pk.acked = true
		if pk.inflight {
			p.inflight -= pk.size
			pk.inflight = false
		}
		if !pk.lost {
			p.pacer.onLossRate(false)
		}
		pk.lost = false
		newly += pk.size
		if latest == nil || pk.xmit > latest.xmit {
			latest = pk
		}
	}
	// Everything before next arrived.
	if d := seqDiff(a.next, p.base); d > 0 {
		for i := int64(0); i < min(d, int64(len(p.win))); i++ {
			ackOne(p.base + uint32(i))
		}
	}
	for _, r := range a.ranges {
		for i := uint32(0); i < r.n; i++ {
			if seqDiff(r.start+i, p.base) >= int64(len(p.win)) {
				break
			}
			ackOne(r.start + i)
		}
	}
	freed := false
	if latest != nil {
		p.progress = now
		if latest.sends == 1 { // Karn: only unambiguous samples
			p.onRTTSample(now, now.Sub(latest.sentAt))
		}
		if latest.xmit > p.rackXmit {
			p.rackXmit, p.rackSent = latest.xmit, latest.sentAt
		}
		p.pacer.onAck(now, newly, latest.st, latest.sentAt, p.inflight)
		freed = true
	}
	// A ping answered: the path works, and whatever was sent before the
	// ping and is still missing was lost (a satellite path is FIFO).
	if pg := p.pings[a.echo%uint32(len(p.pings))]; a.echo != 0 && pg.id == a.echo && !pg.at.IsZero() {
		p.progress = now
		p.onRTTSample(now, now.Sub(pg.at))
		p.markLost(func(pk *packet) bool { return pk.sentAt.Before(pg.at) })
		for i := range p.pings {
			if !seqLess(a.echo, p.pings[i].id) {
				p.pings[i] = ping{}
			}
		}
		p.probeAt = time.Time{}
		freed = true
	}
	// RACK: a transmission is lost once a later one arrived, by
	// reorderPackets packets or by a sliver of a round trip.
	if latest != nil {
		reo := max(p.pacer.minRTT/16, time.Millisecond)
		p.markLost(func(pk *packet) bool {
			return pk.xmit+reorderPackets <= p.rackXmit || pk.sentAt.Add(reo).Before(p.rackSent)
		})
	}
	// Slide the window past what is acknowledged.
	n := 0
	for n < len(p.win) && p.win[n].acked {
		p.win[n] = nil
		n++
	}
	if n > 0 {
		p.win = p.win[n:]
		p.base += uint32(n)
		if len(p.win) == 0 {
			p.win = nil
		}
	}
	return freed
}

// markLost moves the in-flight packets that lost says are lost to the
// retransmission queue.
func (p *peer) markLost(lost func(*packet) bool) {
	added := false
	for i, pk := range p.win {
		if pk.acked || !pk.inflight || !lost(pk) {
			continue
		}
		pk.inflight = false
		pk.lost = true
		p.inflight -= pk.size
		p.pacer.onLossRate(true)
		p.lost = append(p.lost, p.base+uint32(i))
		added = true
	}
	if added {
		slices.SortFunc(p.lost, func(a, b uint32) int { return int(seqDiff(a, b)) })
		p.lost = slices.Compact(p.lost)
	}
}
