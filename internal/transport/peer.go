package transport

import (
	"crypto/rand"
	"encoding/binary"
	"net"
	"slices"
	"time"
)

// peer is a Shield's state of the path to one remote address: a sender
// of data frames, a receiver of the peer's, and the playout buffer that
// hands the peer's QUIC packets over.
type peer struct {
	addr      net.Addr // where it is now
	qaddr     net.Addr // where QUIC thinks it is: where it was first
	lastHeard time.Time
	// senderHeard is when the current sender's data last came: a new
	// sender from the same address waits until that one has been silent
	// for a retransmission timeout.
	senderHeard time.Time
	// proven says that addr is really the peer's: it echoed a ping id
	// only a datagram sent there could tell, or (Client mode) it is the
	// hub this end dialled. Until then the sender sends it no data and
	// at most amplification times what it received.
	proven bool
	// shielded says the peer was proven once: QUIC's packets to it are
	// shielded, and it is kept in the pool strangers cannot evict. A
	// peer that moved is shielded but not proven until its new address
	// answers a ping.
	shielded bool
	rx, tx   int64 // shield bytes received from and sent to addr
	// key authenticates frames once both ends finished their QUIC
	// handshake; strict says a frame with a valid MAC came, and from then
	// on only such frames are taken.
	key    *frameKey
	strict bool

	// The sender's schedule (Shield.sched).
	gone   bool      // forgotten
	dirty  bool      // in Shield.dirty: to pump at the next round
	wakeAt time.Time // when it needs the sender, if hidx >= 0
	hidx   int       // its index in Shield.sched, or -1

	// Sender.
	isn       uint32 // the first sequence number
	nextSeq   uint32
	base      uint32    // the seq of win[0]
	win       []*packet // sent and not yet acknowledged or given up
	queue     [][]byte  // QUIC packets not yet sent
	queued    int
	room      chan struct{} // closed and replaced when the queue shrinks
	lost      []uint32      // seqs to send again, ascending
	inflight  int           // bytes on the link, headers included
	xmit      uint64        // transmissions so far
	pacer     *pacer
	srtt      time.Duration
	rttvar    time.Duration
	progress  time.Time // last acknowledgement of something new, or the first send after idle
	pings     [8]ping   // the latest probes, in no order
	pingSlot  int       // where the next probe goes in pings
	floorPing time.Time // when a ping last went to learn the round trip
	pingNow   bool      // probe at once: the round trip is wanted
	probeAt   time.Time // when to probe next while the path is silent
	prevProbe time.Time // when the last probe went
	rackXmit  uint64    // the latest transmission acknowledged
	rackSent  time.Time // and when it was sent
	rcvSeen   bool      // peerNext is known
	peerNext  uint32    // the receiver's next, as it last said
	fwdAt     time.Time // when a forward may go again

	// Receiver.
	rcvISN   uint32 // the sender's, once it said
	rcvInit  bool
	rcvNext  uint32 // everything before it arrived
	rcvMax   uint32 // the highest seq that arrived
	rcvAbove []span // what arrived above rcvNext: ascending, disjoint, not adjacent
	echo     uint32 // a ping to answer
	ackDue   bool
	ackNow   bool
	ackAt    time.Time
	unacked  int // data frames since the last acknowledgement

	// Playout.
	dlvInit     bool
	dlvNext     uint32
	ring        []*heldPacket // ring[i] holds seq dlvNext+i; nil: missing
	held        int           // bytes of QUIC packets in ring
	heldN       int           // and how many
	releaseNext time.Time     // no release before, after a burst
	resumedAt   time.Time     // when the path came back after a silence
	paired      bool          // the last packet released was the first of a pair
}

// packet is a QUIC packet in the sender's window.
type packet struct {
	data     []byte
	size     int // on the link, headers included
	sentAt   time.Time
	xmit     uint64
	sends    int
	st       sendState
	inflight bool
	acked    bool // or given up
	lost     bool
}

// ping is a probe sent to a silent path.
type ping struct {
	id uint32
	at time.Time
}

// heldPacket is a packet in the playout buffer.
type heldPacket struct {
	data    []byte    // nil: delivered already, out of turn
	arrived time.Time // when it arrived
}

func newPeer(addr net.Addr, now time.Time) *peer {
	// A random first sequence number: a receiver that still holds state
	// from an earlier sender on the same address sees a new one.
	var isn [4]byte
	rand.Read(isn[:])
	seq := binary.BigEndian.Uint32(isn[:])
	return &peer{
		addr: addr, qaddr: addr, lastHeard: now,
		isn: seq, nextSeq: seq, base: seq,
		room:  make(chan struct{}),
		pacer: newPacer(),
		hidx:  -1,
	}
}

func (p *peer) info() PathInfo {
	return PathInfo{
		Addr: p.addr, SRTT: p.srtt, MinRTT: p.pacer.minRTT,
		Bandwidth: p.pacer.linkBw(), Loss: p.pacer.loss, Mode: p.pacer.mode.String(),
		Queued: p.queued, Inflight: p.inflight, Window: p.pacer.window(), Playout: p.playout(),
	}
}

// handle takes one frame from the peer; it reports whether the sender
// has something new to do. The caller holds s.mu.
func (p *peer) handle(s *Shield, f frame, now time.Time) bool {
	silent := now.Sub(p.lastHeard)
	if h := p.playout(); h > 0 && silent > h {
		// The path was silent (an outage): holes wait for their
		// retransmission from now, not from before it.
		p.resumedAt = now
	}
	p.lastHeard = now
	kick := false
	if f.ack != nil {
		kick = p.onAck(f.ack, now)
		if !p.proven && s.cookieOK(p.addr, f.ack.echo, now) {
			s.provenLocked(p)
			kick = true
		}
	}
	switch f.typ {
	case frameData, frameDataAck:
		s.stats.Received++
		if !p.proven {
			p.pingFloor(now) // is it who it says?
		}
		if f.isNew && (!p.rcvInit || f.isn != p.rcvISN) {
			if p.rcvInit && now.Sub(p.senderHeard) <= p.rto() {
				// A new sender while the current one still sends:
				// spoofed, or a stray from before; the real one will
				// wait its turn (docs/transport.md, "Hostile input").
				s.stats.Refused++
				return kick
			}
			p.newSender(s, f.isn)
		}
		if d := seqDiff(f.seq, p.rcvNext); -maxAhead < d && d < maxAhead {
			// Only a frame the current sender could have sent counts
			// as its talking: not one far from its window, nor the new
			// sender's pings and refused frames, which used to keep a
			// redial out for ever.
			p.senderHeard = now
		}
		if p.receive(f.seq, now) {
			p.deliver(s, f.seq, slices.Clone(f.payload), now)
		} else {
			s.stats.Duplicates++
		}
		kick = kick || p.ackDue
	case framePing:
		p.echo = f.seq
		p.ackDue, p.ackNow = true, true
		kick = true
	case frameForward:
		p.forward(f.seq)
		p.ackDue, p.ackNow = true, true
		kick = true
	}
	return kick
}

// newSender starts the receiver and the playout over for a sender that
// started over at isn, from the same address: an agent's new socket.
// What the playout held is handed over, not dropped: the new sender may
// be a forgery, and QUIC authenticates what it takes.
func (p *peer) newSender(s *Shield, isn uint32) {
	if p.key != nil && p.key.retired {
		// The keyed connection ended: the new one starts unkeyed.
		p.key, p.strict = nil, false
	}
	for _, e := range p.ring {
		if e != nil && e.data != nil {
			s.deliverLocked(e.data, p.qaddr)
		}
	}
	p.dropRing(s)
	p.rcvISN, p.rcvInit, p.rcvNext, p.rcvMax, p.rcvAbove = isn, true, isn, isn-1, nil
	p.dlvInit, p.dlvNext = true, isn
	p.paired, p.releaseNext = false, time.Time{}
}

// dropRing empties the playout. The caller holds s.mu.
func (p *peer) dropRing(s *Shield) {
	s.held -= p.held
	p.ring, p.held, p.heldN = nil, 0, 0
}

// blank reports whether p has neither received nor sent data: a peer
// known only from its probes.
func (p *peer) blank() bool {
	return !p.rcvInit && p.nextSeq == p.isn
}

// follows reports whether a frame that came from elsewhere continues
// what p received or sent: the same peer at a new address (a NAT
// rebinding, or a new network).
func (p *peer) follows(f frame) bool {
	// Only data moves a peer, never an acknowledgement alone (cheap to
	// forge and it carries nothing QUIC would check), and only a peer
	// whose address was proven once.
	if f.typ != frameData && f.typ != frameDataAck || f.isNew || !p.shielded || !p.rcvInit {
		return false
	}
	if d := seqDiff(f.seq, p.rcvNext); d < -maxAhead || d >= maxAhead {
		return false
	}
	if p.strict && (!p.key.verify(f) || !seqLess(p.rcvMax, f.seq)) {
		// Keyed: only the peer's own frame moves it, and only a new one
		// (not a replay of one it sent from where it was).
		return false
	}
	if f.ack != nil {
		// What it acknowledges must be what p sent.
		if seqDiff(f.ack.next, p.nextSeq) > 0 || seqDiff(f.ack.next, p.base) < -maxAhead {
			return false
		}
	}
	return true
}

// receive records the arrival of seq and schedules its acknowledgement;
// it reports whether seq is new.
func (p *peer) receive(seq uint32, now time.Time) bool {
	if !p.rcvInit {
		// The first frame from this sender: follow it. A sender that
		// started over says so with its isn; a frame far from what is
		// expected is dropped, never followed (docs/transport.md,
		// "Hostile input").
		p.rcvInit, p.rcvNext, p.rcvMax, p.rcvAbove = true, seq, seq, nil
	}
	d := seqDiff(seq, p.rcvNext)
	switch {
	case d < -maxAhead:
		return false
	case d < 0:
		p.ackDue, p.ackNow = true, true // our acknowledgement was lost: say it again
		return false
	case d >= maxAhead:
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
		// The first span that ends after seq.
		i, _ := slices.BinarySearchFunc(p.rcvAbove, seq, func(s span, seq uint32) int {
			if seqLess(seq, s.end()) {
				return 1
			}
			return -1
		})
		if i < len(p.rcvAbove) && !seqLess(seq, p.rcvAbove[i].start) {
			return false // inside it: a duplicate
		}
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
	if seqLess(p.rcvMax, seq) {
		p.rcvMax = seq
	}
	p.unacked++
	if p.unacked >= ackEvery {
		p.ackNow = true
	}
	if !p.ackDue {
		p.ackDue, p.ackAt = true, now.Add(p.ackDelay())
	}
	return true
}

// ackDelay is how long an acknowledgement waits for ackEvery packets, or
// for a data frame to ride on: an eighth of a round trip, between
// AckDelay and maxAckDelay. On a slow link that saves most of them.
func (p *peer) ackDelay() time.Duration {
	return min(max(p.srtt/8, AckDelay), maxAckDelay)
}

// forward skips the receiver past everything before next: the sender
// gave up on it.
// A forward that skips further than just past the highest seq that
// arrived is ignored, not clipped: a sender gives up only on what it
// sent, and a blind forgery must then hit a window of a few thousand in
// 2^32. When a sender gave up on the last it sent, its next packet moves
// the receiver on.
func (p *peer) forward(next uint32) {
	if !p.rcvInit || seqLess(p.rcvMax+1, next) {
		return
	}
	if d := seqDiff(next, p.rcvNext); d <= 0 || d > maxAhead {
		return
	}
	p.rcvNext = next
	for len(p.rcvAbove) > 0 && !seqLess(next, p.rcvAbove[0].start) {
		if seqLess(p.rcvNext, p.rcvAbove[0].end()) {
			p.rcvNext = p.rcvAbove[0].end()
		}
		p.rcvAbove = p.rcvAbove[1:]
	}
	if len(p.rcvAbove) == 0 {
		p.rcvAbove = nil
	}
}

// lowRanges is how many of the lowest ranges an acknowledgement reports
// when not all fit.
const lowRanges = 16

// peekAck returns what the receiver reports.
func (p *peer) peekAck() *ackBlock {
	a := &ackBlock{next: p.rcvNext, echo: p.echo}
	// With more ranges than fit: the lowest (where retransmissions fill
	// the oldest holes: not hearing of those makes the sender send them
	// again) and the most recent (as SACK does, RFC 2018: hearing of an
	// arrival late makes it look as if the path had delivered a burst).
	switch n := len(p.rcvAbove); {
	case n <= MaxRanges:
		a.ranges = p.rcvAbove[:n:n]
	default:
		a.ranges = make([]span, 0, MaxRanges)
		a.ranges = append(a.ranges, p.rcvAbove[:lowRanges]...)
		a.ranges = append(a.ranges, p.rcvAbove[n-(MaxRanges-lowRanges):]...)
	}
	return a
}

// takeAck returns what the receiver reports, and marks it reported.
func (p *peer) takeAck() *ackBlock {
	a := p.peekAck()
	p.echo = 0
	p.ackDue, p.ackNow, p.unacked = false, false, 0
	return a
}

// The playout.

// smallPacket is the size under which an agent delivers a QUIC packet
// from the hub at once, out of turn (acknowledgements, which QUIC takes
// in any order, and which must not wait), and the pacer lets a packet go
// whatever the rate.
const smallPacket = 160

const (
	// releaseBurst bounds the packets released at once, every
	// releaseSpacing: quic-go queues at most 256 unprocessed packets per
	// connection and drops the rest, which a long-held hole could
	// otherwise release in one go.
	releaseBurst   = 64
	releaseSpacing = time.Millisecond
	// pairWindow is how long a packet may wait for the next, to be
	// released with it: just over quic-go's 25 ms acknowledgement delay.
	pairWindow = 30 * time.Millisecond
)

// maxDueScan bounds how far past a repaired packet the playout looks for
// the first packet that arrived after it.
const maxDueScan = 1024

// holeRounds is how many round trips past its turn a missing packet is
// waited for: time for two more retransmissions. Giving up on it makes
// QUIC see a loss and cut its window by 30 %, which NewReno takes
// minutes to win back on a long path; a wait holds QUIC for under a
// round trip (docs/transport.md).
const holeRounds = 2

// playout is the delay from a packet's arrival to its delivery: enough for
// a lost one to be sent again (a round trip, the quarter of one that the
// pacer's window lets queue at the bottleneck, and 20 ms to notice),
// constant so that QUIC's round-trip samples stay flat. It is unknown
// (zero) until the path's round trip is. Every QUIC round trip pays it
// (the handshake, each request, each round of slow start), so it is no
// longer than that: a retransmission that misses its turn holds what
// came after it (holeRounds) rather than becoming a loss.
func (p *peer) playout() time.Duration {
	if p.pacer.minRTT == 0 {
		return 0
	}
	return p.pacer.minRTT*5/4 + 20*time.Millisecond
}

// deliver hands a fresh QUIC packet to the reader, through the playout.
// The caller holds s.mu.
func (p *peer) deliver(s *Shield, seq uint32, data []byte, now time.Time) {
	if s.conf.NoPlayout {
		s.deliverLocked(data, p.qaddr)
		return
	}
	if !p.dlvInit {
		p.dlvInit, p.dlvNext = true, seq
	}
	d := seqDiff(seq, p.dlvNext)
	if d < 0 || d >= maxAhead { // late, after its turn was given up
		s.deliverLocked(data, p.qaddr)
		s.stats.Late++
		return
	}
	if p.playout() == 0 {
		p.pingFloor(now) // learn the round trip: a ping answers in one
	}
	// Held packets are bounded: while the round trip is unknown (the
	// sender may be a forgery that never answers a ping), and in bytes,
	// per peer and in all. Past a bound a packet goes to QUIC at once,
	// which authenticates it and copes with the disorder.
	if (p.playout() == 0 && p.heldN >= maxHeldUnknown) || p.held+len(data) > maxHeld || s.held+len(data) > maxHeldTotal {
		s.deliverLocked(data, p.qaddr)
		s.stats.Unheld++
		return
	}
	h := &heldPacket{data: data, arrived: now}
	// The agent, which sends in bulk, needs its round-trip samples flat:
	// the hub holds everything it gets. The agent delivers the hub's
	// small packets (acknowledgements) and handshake at once; only the
	// hub's own round-trip samples see that.
	if s.conf.Mode == Client && (len(data) < smallPacket || data[0]&0x80 != 0) {
		s.deliverLocked(data, p.qaddr)
		h.data = nil
	}
	for int64(len(p.ring)) <= d {
		p.ring = append(p.ring, nil)
	}
	// A packet sent again is due when it would have been: with the first
	// that arrived after it, looked for among the next maxDueScan (a
	// hole is seldom longer than what is in flight on a satellite path,
	// and crafted sequence numbers must not make each frame walk the
	// ring).
	for _, e := range p.ring[d+1 : min(int64(len(p.ring)), d+1+maxDueScan)] {
		if e != nil {
			if e.arrived.Before(h.arrived) {
				h.arrived = e.arrived
			}
			break
		}
	}
	if old := p.ring[d]; old != nil && old.data != nil {
		p.held -= len(old.data)
		p.heldN--
		s.held -= len(old.data)
	}
	p.ring[d] = h
	if h.data != nil {
		p.held += len(h.data)
		p.heldN++
		s.held += len(h.data)
	}
	p.release(s, now)
}

// releaseAt returns when the next packet in the playout is due, or zero.
func (p *peer) releaseAt() time.Time {
	h := p.playout()
	if len(p.ring) == 0 {
		return time.Time{}
	}
	later := func(t time.Time) time.Time {
		if p.releaseNext.After(t) {
			return p.releaseNext
		}
		return t
	}
	if h == 0 {
		// The round trip is still unknown: hold what came for a ping's
		// answer, but not for ever (the sender may never answer).
		for _, e := range p.ring {
			if e != nil {
				return later(e.arrived.Add(unknownHold))
			}
		}
		return time.Time{}
	}
	if e := p.ring[0]; e != nil {
		due := e.arrived.Add(h)
		// quic-go acknowledges every second packet, or after 25 ms: on a
		// slow link that is every packet. Released in pairs, two packets
		// cost one acknowledgement; the second, whose round trip QUIC
		// samples, still goes on time.
		if len(p.ring) > 1 && !p.paired && e.data != nil {
			if n := p.ring[1]; n != nil && n.data != nil {
				if next := n.arrived.Add(h); next.Sub(due) < pairWindow {
					due = next
				}
			}
		}
		return later(due)
	}
	// The next is missing: wait for it as long as for the first that
	// arrived after it (or, after an outage, from the path's return),
	// and holeRounds round trips more, for retransmissions that were
	// lost too.
	for _, e := range p.ring {
		if e != nil {
			from := e.arrived
			if p.resumedAt.After(from) {
				from = p.resumedAt
			}
			return later(from.Add(h + p.pacer.minRTT/2 + holeRounds*max(p.srtt, p.pacer.minRTT)))
		}
	}
	return time.Time{}
}

// release delivers the packets that are due at now. The caller holds
// s.mu.
func (p *peer) release(s *Shield, now time.Time) {
	for n := 0; len(p.ring) > 0; n++ {
		due := p.releaseAt()
		if due.IsZero() || now.Before(due) {
			return
		}
		if n == releaseBurst {
			p.releaseNext = now.Add(releaseSpacing)
			return
		}
		if e := p.ring[0]; e == nil {
			s.stats.Skipped++
			p.paired = false
		} else if e.data != nil {
			s.deliverLocked(e.data, p.qaddr)
			p.paired = !p.paired
			p.held -= len(e.data)
			p.heldN--
			s.held -= len(e.data)
		}
		p.ring[0] = nil
		p.ring = p.ring[1:]
		p.dlvNext++
	}
	p.ring = nil
}

// The sender's bookkeeping.

// rto is how long the sender waits for an acknowledgement before it
// probes the path.
func (p *peer) rto() time.Duration {
	if p.srtt == 0 {
		return 2 * initialRTT
	}
	return min(max(p.srtt+4*p.rttvar+p.ackDelay(), minRTO), maxRTO)
}

// onRTTSample takes a round-trip sample; fromPing says it is a ping's,
// whose random id a blind attacker cannot echo (pacer.onRTT).
func (p *peer) onRTTSample(now time.Time, rtt time.Duration, fromPing bool) {
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
	p.pacer.onRTT(rtt, fromPing)
}

// pinged returns the ping whose id an acknowledgement echoes, if any.
func (p *peer) pinged(echo uint32) (ping, bool) {
	if echo == 0 {
		return ping{}, false
	}
	for _, pg := range p.pings {
		if pg.id == echo && !pg.at.IsZero() {
			return pg, true
		}
	}
	return ping{}, false
}

// pingFloor asks for a ping to learn the round trip, at most once per
// retransmission timeout.
func (p *peer) pingFloor(now time.Time) {
	if p.floorPing.IsZero() || now.Sub(p.floorPing) >= p.rto() {
		p.pingNow, p.floorPing = true, now
	}
}

// randomID returns a ping id: random and never zero, so that only a
// datagram sent to a peer's address can tell it.
func randomID() uint32 {
	var b [4]byte
	for {
		rand.Read(b[:])
		if id := binary.BigEndian.Uint32(b[:]); id != 0 {
			return id
		}
	}
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
		pk.data = nil
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
	// next can only be what was sent, or before it; anything else comes
	// from a receiver that has seen no data from this sender yet (or
	// from something broken): it acknowledges nothing.
	valid := seqDiff(a.next, p.nextSeq) <= 0 && seqDiff(a.next, p.base) >= -maxAhead
	if valid && (!p.rcvSeen || seqLess(p.peerNext, a.next)) {
		p.peerNext, p.rcvSeen = a.next, true
	}
	if !valid {
		// Its ranges are relative to a next that means nothing here.
		a = &ackBlock{echo: a.echo}
	}
	if d := seqDiff(a.next, p.base); valid && d > 0 {
		for i := range min(d, int64(len(p.win))) {
			ackOne(p.base + uint32(i))
		}
	}
	// Each range is clipped to the window: the work an acknowledgement
	// costs is bounded by what is in flight, whatever it claims.
	for _, r := range a.ranges {
		lo := max(seqDiff(r.start, p.base), 0)
		hi := min(seqDiff(r.start, p.base)+int64(r.n), int64(len(p.win)))
		for i := lo; i < hi; i++ {
			ackOne(p.base + uint32(i))
		}
	}
	freed := false
	if latest != nil {
		p.progress = now
		if latest.sends == 1 { // Karn: only unambiguous samples
			p.onRTTSample(now, now.Sub(latest.sentAt), false)
		}
		if latest.xmit > p.rackXmit {
			p.rackXmit, p.rackSent = latest.xmit, latest.sentAt
		}
		p.pacer.onAck(now, newly, latest.st, latest.sentAt, p.inflight)
		freed = true
	}
	// A ping answered: the path works, and whatever was sent before the
	// ping and is still missing was lost (a satellite path is FIFO). Its
	// id was random: only what was sent to addr could tell it, so addr
	// is the peer's.
	if pg, ok := p.pinged(a.echo); ok {
		p.progress = now
		p.onRTTSample(now, now.Sub(pg.at), true)
		p.markLost(func(pk *packet) bool { return pk.sentAt.Before(pg.at) })
		for i := range p.pings {
			if !p.pings[i].at.After(pg.at) {
				p.pings[i] = ping{}
			}
		}
		p.probeAt = time.Time{}
		freed = true
	}
	// RACK (RFC 8985): a transmission is lost once a later one arrived,
	// by reorderPackets packets or by a sliver of a round trip.
	if latest != nil {
		reo := max(p.pacer.minRTT/16, time.Millisecond)
		p.markLost(func(pk *packet) bool {
			return pk.xmit+reorderPackets <= p.rackXmit || pk.sentAt.Add(reo).Before(p.rackSent)
		})
	}
	p.slide()
	return freed
}

// slide moves the window past what is acknowledged or given up.
func (p *peer) slide() {
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
}

// markLost moves the packets in flight that lost says are lost to the
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
