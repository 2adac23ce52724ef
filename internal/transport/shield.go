package transport

import (
	"container/heap"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
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
	// AckDelay is the least time a receiver holds an acknowledgement
	// back, hoping to ride on a data frame going the other way.
	AckDelay = 2 * time.Millisecond
	// maxAckDelay bounds the wait for an acknowledgement.
	maxAckDelay = 100 * time.Millisecond
	// ackEvery sends an acknowledgement at once after this many data
	// frames, whatever the delay says.
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
	// FastProbe is how long a silent path is probed every quarter of a
	// round trip, so that data flows again within two round trips of the
	// link's return (the SPEC's cut lasts 60 s). After that the interval
	// doubles at every probe, up to maxProbeEvery. A probe costs 33 bytes
	// on the link.
	FastProbe     = 90 * time.Second
	maxProbeEvery = 10 * time.Second
	// ProbeFor is how long a silent path is probed at all: past QUIC's
	// IdleTimeout the connection is gone, and what the shield still has
	// to send with it.
	ProbeFor = IdleTimeout + 30*time.Second
	// PeerIdle is how long a peer's state outlives its last datagram.
	PeerIdle = 10 * time.Minute
	// MaxPeers bounds the shielded peers one end keeps (a hub's agents);
	// past it, the one heard from least recently is forgotten.
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
	// may be, and how far past the oldest unacknowledged one a sender
	// goes.
	maxAhead = maxWindow / 512
	// readBuffer bounds the QUIC packets delivered but not yet read.
	readBuffer = 8 << 20
	// maxSends is how often a packet is sent before the sender gives up
	// on it (QUIC then sees it lost): on a path that loses 5 %, six
	// losses in a row happen once in 6×10⁷ packets.
	maxSends = 6
)

// Limits on what hostile datagrams can make a Shield hold or send
// (docs/transport.md, "Hostile input").
const (
	// maxHeld bounds the bytes one peer's playout holds: several times
	// what a satellite link delivers in a playout and a hole's wait
	// (geo: about 2 MB at 5 Mbit/s). Past it a packet goes to QUIC at
	// once.
	maxHeld = 4 << 20
	// maxHeldTotal bounds the bytes all playouts hold.
	maxHeldTotal = 128 << 20
	// maxHeldUnknown bounds the packets one peer's playout holds while
	// the round trip is unknown (its sender has not answered a ping; it
	// may be a forgery that never will): QUIC's initial window, which a
	// handshake fits in.
	maxHeldUnknown = 32
	// unknownHold is how long a packet is held while the round trip is
	// unknown: time for a ping's answer on a GEO path, and one more.
	unknownHold = 4 * initialRTT
	// maxFresh bounds the peers never proven (strangers, and agents
	// whose first packets are still waiting for a ping's answer); past
	// it, the oldest is forgotten. They cannot evict a proven peer.
	maxFresh = 256
	// moveScanEvery spaces the searches for a peer that moved (each
	// looks at every peer): frames from unknown addresses are cheap to
	// forge.
	moveScanEvery = time.Millisecond
	// cookieEpoch is how long a stranger's ping cookie is good for (and
	// as long again).
	cookieEpoch = time.Minute
	// amplification bounds what a Shield sends to an address not proven
	// to be its peer's, as a multiple of what came from it (QUIC's own
	// limit, RFC 9000, 8.1).
	amplification = 3
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

// ShieldConfig configures a Shield.
type ShieldConfig struct {
	Mode Mode
	// NoPlayout hands QUIC packets over as they arrive, out of order
	// after a loss, instead of after the playout delay. For measurements:
	// quic-go then declares most repaired packets lost (docs/transport.md).
	NoPlayout bool
}

// ShieldStats counts a Shield's traffic.
type ShieldStats struct {
	DataSent        int64 // data frames sent, retransmissions included
	DataBytes       int64 // their bytes, headers included
	Retransmits     int64 // data frames sent again
	Duplicated      int64 // retransmissions sent in two copies
	RetransmitBytes int64
	AcksSent        int64 // acknowledgement frames on their own
	AckBytes        int64
	Piggybacked     int64 // acknowledgements that rode on a data frame
	Pings           int64 // probes of a silent path
	Received        int64 // data frames received
	Duplicates      int64 // data frames received twice
	Dropped         int64 // QUIC packets dropped: a full queue or read buffer
	Abandoned       int64 // data frames given up on after maxSends
	Skipped         int64 // packets not there when their turn came
	Late            int64 // packets that came after their turn: QUIC saw them out of order
	Unheld          int64 // packets handed over at once: the playout's bounds were reached
	Refused         int64 // shield frames refused: from strangers, or a new sender while one talks
	PlainSent       int64 // QUIC packets sent without the shield

	// What crossed the socket, both ways, shield and plain: UDP payload
	// bytes and datagrams. On the link, each datagram also takes
	// UDPIPOverhead header bytes.
	BytesSent, DatagramsSent         int64
	BytesReceived, DatagramsReceived int64
}

// UDPIPOverhead is the IPv4 and UDP header bytes of one datagram.
const UDPIPOverhead = udpOverhead

// LinkBytes is what the Shield's traffic took on the link, both ways,
// headers included.
func (st ShieldStats) LinkBytes() int64 {
	return st.BytesSent + st.BytesReceived + UDPIPOverhead*(st.DatagramsSent+st.DatagramsReceived)
}

// PathInfo is a Shield's model of the path to one peer.
type PathInfo struct {
	Addr      net.Addr
	SRTT      time.Duration
	MinRTT    time.Duration
	Bandwidth float64       // the link's rate as measured, bytes per second
	Loss      float64       // share of transmissions lost at random
	Mode      string        // the pacer's state: startup, drain, probe-bw
	Queued    int           // QUIC packet bytes waiting to be sent
	Inflight  int           // bytes sent and not yet acknowledged or lost
	Window    int           // the in-flight limit
	Playout   time.Duration // the delay from arrival to delivery
}

// Shield is a net.PacketConn for quic-go that hides random loss from it.
//
// Beneath QUIC, between the two ends of a path, it numbers each QUIC
// packet, acknowledges what arrived, sends again what was lost, and paces
// what it sends at the path's measured rate. The receiving end hands each
// QUIC packet over a fixed playout delay after it arrived (a round trip
// and a quarter, and 20 ms), in order, so that a lost packet sent again is
// back before its turn. On a path that loses much, retransmissions go out
// in two copies. QUIC above sees a lossless path with a constant, longer
// round trip: NewReno's window neither collapses under random loss nor
// stops growing early, and an outage is a pause, not a loss.
//
// A Shield in Server mode talks plain QUIC with peers that do not speak
// it: one hub port serves both. A Shield owns the PacketConn it wraps and
// closes it in Close. It runs two goroutines, which Close stops.
type Shield struct {
	pc   net.PacketConn
	conf ShieldConfig

	mu       sync.Mutex
	closed   bool
	peers    map[string]*peer // by where they are
	byQUIC   map[string]*peer // by where QUIC thinks they are
	order    []*peer          // peers, oldest first; some gone
	sched    peerHeap         // peers by when they need the sender
	dirty    []*peer          // peers to pump at the next round whatever sched says
	readQ    []delivery
	readQLen int
	held     int           // bytes in all peers' playouts
	fresh    []*peer       // peers never proven, oldest first; some stale
	nFresh   int           // how many of them are live
	secret   [32]byte      // keys the ping cookies
	scanAt   time.Time     // when movedLocked may search again
	readWake chan struct{} // closed and replaced when readQ grows or the deadline changes
	deadline time.Time
	stats    ShieldStats

	kick     chan struct{} // wakes the sender
	done     chan struct{} // closed by Close
	doneOnce sync.Once
	wg       sync.WaitGroup
}

var _ net.PacketConn = (*Shield)(nil)

type delivery struct {
	data []byte
	addr net.Addr
}

// NewShield wraps pc.
func NewShield(pc net.PacketConn, conf ShieldConfig) *Shield {
	if u, ok := pc.(interface{ SetReadBuffer(int) error }); ok {
		u.SetReadBuffer(readBuffer) // best effort, as quic-go's own
	}
	s := &Shield{
		pc:       pc,
		conf:     conf,
		peers:    map[string]*peer{},
		byQUIC:   map[string]*peer{},
		readWake: make(chan struct{}),
		kick:     make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	rand.Read(s.secret[:])
	s.wg.Add(2)
	go s.readLoop()
	go s.sendLoop()
	return s
}

// peerLocked returns the state of the peer at addr, creating it if create
// is set. The caller holds s.mu.
func (s *Shield) peerLocked(addr net.Addr, create bool, now time.Time) *peer {
	key := addr.String()
	if p, ok := s.peers[key]; ok {
		return p
	}
	if !create {
		return nil
	}
	p := newPeer(addr, now)
	if s.conf.Mode == Client {
		// A client creates peers only for where it sends: the hub it
		// dials.
		p.proven, p.shielded = true, true
	} else {
		// A stranger takes the place of the oldest stranger, never of a
		// proven peer.
		for s.nFresh >= maxFresh && len(s.fresh) > 0 {
			old := s.fresh[0]
			s.fresh[0] = nil
			s.fresh = s.fresh[1:]
			if !old.shielded && s.peers[old.addr.String()] == old {
				s.forgetLocked(old)
			}
		}
		if len(s.fresh) > 4*maxFresh {
			s.fresh = slices.DeleteFunc(s.fresh, func(q *peer) bool { return q.shielded || s.peers[q.addr.String()] != q })
		}
		s.fresh = append(s.fresh, p)
		s.nFresh++
	}
	s.peers[key] = p
	s.byQUIC[key] = p
	if len(s.order) > 2*len(s.peers)+16 {
		s.order = slices.DeleteFunc(s.order, func(q *peer) bool { return q.gone })
	}
	s.order = append(s.order, p)
	s.touchLocked(p)
	return p
}

// touchLocked has the sender look at p at its next round: p has
// something new to do. The caller holds s.mu.
func (s *Shield) touchLocked(p *peer) {
	if !p.dirty {
		p.dirty = true
		s.dirty = append(s.dirty, p)
	}
}

// forgetLocked drops a peer's state. The caller holds s.mu.
func (s *Shield) forgetLocked(p *peer) {
	key := p.addr.String()
	p.dropRing(s)
	if !p.shielded {
		s.nFresh--
	}
	delete(s.peers, key)
	if s.byQUIC[p.qaddr.String()] == p {
		delete(s.byQUIC, p.qaddr.String())
	}
	p.gone = true
	if p.hidx >= 0 {
		heap.Remove(&s.sched, p.hidx)
	}
}

// provenLocked records that p's address answered a ping. The caller
// holds s.mu.
func (s *Shield) provenLocked(p *peer) {
	p.proven = true
	if p.shielded {
		return
	}
	p.shielded = true
	s.nFresh--
	if len(s.peers)-s.nFresh > MaxPeers {
		// Forget the proven peer heard from least recently.
		var oldest *peer
		for _, q := range s.peers {
			if q != p && q.shielded && (oldest == nil || q.lastHeard.Before(oldest.lastHeard)) {
				oldest = q
			}
		}
		if oldest != nil {
			s.forgetLocked(oldest)
		}
	}
}

// cookie returns the ping id that proves addr at now: only a datagram
// sent there can tell it. Its last four bits are left for the caller.
func (s *Shield) cookie(addr net.Addr, now time.Time) uint32 {
	return s.cookieAt(addr, now.UnixNano()/int64(cookieEpoch))
}

func (s *Shield) cookieAt(addr net.Addr, epoch int64) uint32 {
	m := hmac.New(sha256.New, s.secret[:])
	binary.Write(m, binary.BigEndian, epoch)
	m.Write([]byte(addr.String()))
	return binary.BigEndian.Uint32(m.Sum(nil)) &^ 0xf
}

// cookieOK reports whether echo is a cookie of addr's, of this epoch or
// the one before.
func (s *Shield) cookieOK(addr net.Addr, echo uint32, now time.Time) bool {
	if echo&0xf == 0 {
		return false
	}
	e := now.UnixNano() / int64(cookieEpoch)
	return echo&^0xf == s.cookieAt(addr, e) || echo&^0xf == s.cookieAt(addr, e-1)
}

// movedLocked finds the peer a frame from an unknown address belongs to,
// if it continues one's sequence numbers, and moves that peer there. QUIC
// goes on seeing the peer where it was first: quic-go's own handling of
// a client's new address (path validation, then a fresh congestion
// state) is slow on a long path, and v0.65.0's loss timer can spin after
// it. The caller holds s.mu.
func (s *Shield) movedLocked(addr net.Addr, f frame, blank *peer) *peer {
	if s.conf.Mode != Server || f.typ != frameData && f.typ != frameDataAck || f.isNew {
		return nil
	}
	if now := time.Now(); now.Before(s.scanAt) {
		return nil
	} else {
		s.scanAt = now.Add(moveScanEvery)
	}
	var found *peer
	for _, p := range s.peers {
		if p != blank && p.follows(f) && (found == nil || p.lastHeard.After(found.lastHeard)) {
			found = p
		}
	}
	if found != nil {
		if blank != nil {
			s.forgetLocked(blank)
		}
		old := found.addr.String()
		delete(s.peers, old)
		found.addr = addr
		// Until the new address answers a ping, it gets no data and no
		// more than amplification allows: a sniffer can forge the frame
		// that moved the peer, and the address may be a victim's.
		found.proven, found.rx, found.tx = false, 0, 0
		found.floorPing = time.Time{}
		s.peers[addr.String()] = found
	}
	return found
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
			// quic-go stops its read loop with a deadline: the error must
			// be a temporary net.Error, as os.ErrDeadlineExceeded is.
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

// wakeReadersLocked wakes blocked readers. The caller holds s.mu.
func (s *Shield) wakeReadersLocked() {
	close(s.readWake)
	s.readWake = make(chan struct{})
}

// deliverLocked queues a QUIC packet for ReadFrom. The caller holds s.mu.
func (s *Shield) deliverLocked(data []byte, addr net.Addr) {
	if s.readQLen+len(data) > readBuffer {
		s.stats.Dropped++
		return
	}
	s.readQ = append(s.readQ, delivery{data: data, addr: addr})
	s.readQLen += len(data)
	s.wakeReadersLocked()
}

// WriteTo sends a QUIC packet to addr: shielded, or plain to a peer that
// does not speak the shield. A shielded write waits while the peer's
// queue is full, up to maxBlock, so that QUIC is held to the path's rate
// without losing packets.
func (s *Shield) WriteTo(b []byte, addr net.Addr) (int, error) {
	if len(b) > maxPayload {
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
		p := s.byQUIC[addr.String()]
		if p == nil && s.conf.Mode == Client {
			p = s.peerLocked(addr, true, now)
		}
		if p != nil && !p.shielded {
			// A Server shields only to an address proven its peer's: a
			// spoofed shield frame must not turn a plain QUIC client's
			// traffic into frames it cannot read, nor make the shield
			// send (and probe) a stranger.
			p = nil
		}
		if p == nil {
			s.stats.PlainSent++
			s.stats.BytesSent += int64(len(b))
			s.stats.DatagramsSent++
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
				s.touchLocked(p)
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
// CONNECTION_CLOSE), once, and closes the PacketConn.
func (s *Shield) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		s.wakeReadersLocked()
	}
	s.mu.Unlock()
	s.doneOnce.Do(func() { close(s.done) })
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
	s.wakeReadersLocked()
	return nil
}

// SetWriteDeadline does nothing: a write waits at most maxBlock.
func (s *Shield) SetWriteDeadline(time.Time) error { return nil }

// SetReadBuffer does nothing: the Shield sizes the wrapped socket's
// buffer itself. It exists so that quic-go does not warn.
func (s *Shield) SetReadBuffer(int) error { return nil }

// SetWriteBuffer does nothing; see SetReadBuffer.
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
	out := make([]PathInfo, 0, len(s.peers))
	for _, p := range s.order {
		if !p.gone {
			out = append(out, p.info())
		}
	}
	return out
}

// readLoop takes datagrams off the wrapped PacketConn until it is closed.
func (s *Shield) readLoop() {
	defer s.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, addr, err := s.pc.ReadFrom(buf)
		if err != nil {
			select {
			case <-s.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				// Closed under us: stop, and let the sender stop too.
				s.mu.Lock()
				s.closed = true
				s.wakeReadersLocked()
				s.mu.Unlock()
				s.doneOnce.Do(func() { close(s.done) })
				return
			}
			continue // deadlines, ICMP errors and the like: UDP carries on
		}
		b := buf[:n]
		s.mu.Lock()
		s.stats.BytesReceived += int64(n)
		s.stats.DatagramsReceived++
		s.mu.Unlock()
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
		p := s.peerLocked(addr, false, now)
		if p == nil && s.conf.Mode == Client {
			// A client talks to the hub it dialled, and to no one else.
			s.stats.Refused++
			s.mu.Unlock()
			continue
		}
		if p == nil || p.blank() {
			// Unknown here, or known only from its probes: is it a peer
			// that moved?
			if q := s.movedLocked(addr, f, p); q != nil {
				p = q
			}
		}
		if p == nil {
			p = s.peerLocked(addr, true, now)
		}
		if p.key != nil {
			switch {
			case p.key.verify(f):
				p.strict = true
			case p.key.retired && f.isNew && f.mac == nil:
				// A new connection from the same socket, after the one
				// keyed ended: handle takes it as a new sender, which
				// drops the key, or refuses it, which keeps it.
			case p.strict:
				// Keyed, and the frame is not the peer's.
				s.stats.Refused++
				s.mu.Unlock()
				continue
			}
		}
		p.rx += int64(n)
		s.touchLocked(p)
		if p.handle(s, f, now) {
			s.wakeSender()
		}
		s.mu.Unlock()
	}
}

// sendLoop sends data, retransmissions, acknowledgements and probes to
// every peer, paced, until Close; then it sends what QUIC queued last and
// closes the wrapped PacketConn.
func (s *Shield) sendLoop() {
	defer s.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var out []outgoing
	for {
		var closing bool
		select {
		case <-s.done:
			closing = true
		default:
		}
		s.mu.Lock()
		now := time.Now()
		var next time.Time
		next, out = s.pumpLocked(now, closing, out[:0])
		for _, d := range out {
			s.stats.BytesSent += int64(len(d.b))
		}
		s.stats.DatagramsSent += int64(len(out))
		s.mu.Unlock()
		for i, d := range out {
			s.pc.WriteTo(d.b, d.addr)
			out[i] = outgoing{}
		}
		if closing {
			s.pc.Close()
			return
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(next.Sub(now), 0)
		}
		timer.Reset(wait)
		select {
		case <-s.kick:
		case <-timer.C:
		case <-s.done:
		}
		timer.Stop()
	}
}

// outgoing is a datagram the sender writes once it let go of the lock.
type outgoing struct {
	b    []byte
	addr net.Addr
}

// pumpLocked does what is due for every peer at now. It appends the
// datagrams to write to out and returns when it must run again (zero:
// only when woken). With final set it sends what QUIC queued, once,
// ignoring the pacer. The caller holds s.mu.
//
// It looks only at the peers that need it: those touched since the last
// round and those whose wake time came, so that a datagram from one
// peer costs the sender nothing for the others.
func (s *Shield) pumpLocked(now time.Time, final bool, out []outgoing) (time.Time, []outgoing) {
	if final {
		for _, p := range s.order {
			if !p.gone {
				out = p.pump(s, now, final, out)
			}
		}
		return time.Time{}, out
	}
	work := s.dirty
	s.dirty = nil
	for len(s.sched) > 0 && !now.Before(s.sched[0].wakeAt) {
		p := heap.Pop(&s.sched).(*peer)
		if !p.dirty {
			p.dirty = true
			work = append(work, p)
		}
	}
	for _, p := range work {
		p.dirty = false
		if p.gone {
			continue
		}
		if !now.Before(p.lastHeard.Add(PeerIdle)) {
			s.forgetLocked(p)
			continue
		}
		out = p.pump(s, now, final, out)
		switch t := p.wake(now); {
		case t.IsZero():
			if p.hidx >= 0 {
				heap.Remove(&s.sched, p.hidx)
			}
		case p.hidx >= 0:
			p.wakeAt = t
			heap.Fix(&s.sched, p.hidx)
		default:
			p.wakeAt = t
			heap.Push(&s.sched, p)
		}
	}
	if len(s.sched) == 0 {
		return time.Time{}, out
	}
	return s.sched[0].wakeAt, out
}

// peerHeap orders peers by when they need the sender (container/heap).
type peerHeap []*peer

func (h peerHeap) Len() int           { return len(h) }
func (h peerHeap) Less(i, j int) bool { return h[i].wakeAt.Before(h[j].wakeAt) }
func (h peerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hidx, h[j].hidx = i, j
}
func (h *peerHeap) Push(x any) {
	p := x.(*peer)
	p.hidx = len(*h)
	*h = append(*h, p)
}
func (h *peerHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	p.hidx = -1
	return p
}
