package transport

import (
	"net"
	"slices"
	"time"
)

// outgoing is a datagram the sender writes once it let go of the lock.
type outgoing struct {
	b    []byte
	addr net.Addr
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
		s.mu.Lock()
		closing := s.closed
		now := time.Now()
		var next time.Time
		next, out = s.pumpLocked(now, closing, out[:0])
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

// pumpLocked does what is due for every peer at now. It appends the
// datagrams to write to out and returns when it must run again (zero:
// only when woken). With final set it sends everything queued, once,
// ignoring the pacer. The caller holds s.mu.
func (s *Shield) pumpLocked(now time.Time, final bool, out []outgoing) (time.Time, []outgoing) {
	var next time.Time
	soonest := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	for _, key := range s.order {
		p := s.peers[key]
		if now.Sub(p.lastHeard) > PeerIdle {
			delete(s.peers, key)
			continue
		}
		out = p.pump(s, now, final, out)
		soonest(p.wake(now))
	}
	if n := len(s.order); n != len(s.peers) {
		s.order = slices.DeleteFunc(s.order, func(k string) bool { _, ok := s.peers[k]; return !ok })
	}
	return next, out
}

// udpOverhead is the IPv4 and UDP header bytes of a datagram, which the
// pacer counts: they take the link's time too.
const udpOverhead = 28

// pump sends what is due to p at now. The caller holds s.mu.
func (p *peer) pump(s *Shield, now time.Time, final bool, out []outgoing) []outgoing {
	for {
		pk, seq, ok := p.nextToSend(s, now, final)
		if !ok {
			break
		}
		var ack *ackBlock
		if p.ackDue && len(pk.data)+dataHeader+maxAckBlock <= MaxDatagram {
			ack = p.takeAck()
			s.stats.Piggybacked++
		}
		b := appendData(make([]byte, 0, dataHeader+len(pk.data)+16), seq, ack, pk.data)
		if pk.sends > 1 {
			s.stats.RetransmitBytes += int64(len(b))
		}
		pk.size = len(b) + udpOverhead
		if p.inflight == 0 {
			p.progress = now
		}
		more := len(p.queue) > 0 || len(p.lost) > 0
		pk.st = p.pacer.onSend(now, pk.size, p.inflight, !more)
		p.xmit++
		pk.xmit, pk.sentAt, pk.inflight, pk.lost = p.xmit, now, true, false
		p.inflight += pk.size
		s.stats.DataSent++
		s.stats.DataBytes += int64(len(b))
		out = append(out, outgoing{b: b, addr: p.addr})
	}
	if final {
		return out
	}
	if p.ackDue && (p.ackNow || !now.Before(p.ackAt)) {
		b := appendAck(make([]byte, 0, 16), p.takeAck())
		s.stats.AcksSent++
		s.stats.AckBytes += int64(len(b))
		out = append(out, outgoing{b: b, addr: p.addr})
	}
	if p.outstanding() && !now.Before(p.probeDue()) {
		p.pingID++
		if p.pingID == 0 {
			p.pingID++
		}
		p.pings[p.pingID%uint32(len(p.pings))] = ping{id: p.pingID, at: now}
		p.probeAt = now.Add(p.probeInterval(now))
		b := appendPing(make([]byte, 0, 5), p.pingID)
		s.stats.Pings++
		out = append(out, outgoing{b: b, addr: p.addr})
	}
	return out
}

// nextToSend picks the next packet to send at now, if the window and the
// pacer let one go: what was lost first, then what QUIC queued.
func (p *peer) nextToSend(s *Shield, now time.Time, final bool) (*packet, uint32, bool) {
	if final {
		if len(p.queue) == 0 {
			return nil, 0, false
		}
		return p.takeNew()
	}
	for {
		switch {
		case len(p.lost) == 0 && len(p.queue) == 0,
			p.inflight > 0 && p.inflight+MaxDatagram+udpOverhead > p.pacer.window(),
			!p.pacer.canSend(now):
			return nil, 0, false
		case len(p.lost) > 0:
			seq := p.lost[0]
			p.lost = p.lost[1:]
			if len(p.lost) == 0 {
				p.lost = nil
			}
			pk := p.at(seq)
			if pk == nil || pk.acked || pk.inflight {
				continue
			}
			pk.sends++
			s.stats.Retransmits++
			return pk, seq, true
		case seqDiff(p.nextSeq, p.base) >= maxAhead:
			return nil, 0, false // the receiver tracks only so much: wait for the oldest
		default:
			return p.takeNew()
		}
	}
}

// takeNew moves the first queued QUIC packet into the window.
func (p *peer) takeNew() (*packet, uint32, bool) {
	data := p.queue[0]
	p.queue[0] = nil
	p.queue = p.queue[1:]
	if len(p.queue) == 0 {
		p.queue = nil
	}
	p.queued -= len(data)
	close(p.room)
	p.room = make(chan struct{})
	pk := &packet{data: data, sends: 1}
	p.win = append(p.win, pk)
	seq := p.nextSeq
	p.nextSeq++
	return pk, seq, true
}

// outstanding reports whether p waits for acknowledgements.
func (p *peer) outstanding() bool { return p.inflight > 0 || len(p.lost) > 0 }

// probeDue is when the sender probes a path that stopped acknowledging.
func (p *peer) probeDue() time.Time {
	if !p.probeAt.IsZero() {
		return p.probeAt
	}
	return p.progress.Add(p.rto())
}

// probeInterval is the time between probes of a silent path: half a
// round trip, so data flows again within two round trips of the link's
// return, for FastProbe; then ProbeEvery.
func (p *peer) probeInterval(now time.Time) time.Duration {
	if now.Sub(p.lastHeard) > FastProbe {
		return ProbeEvery
	}
	rtt := p.srtt
	if rtt == 0 {
		rtt = initialRTT
	}
	return min(max(rtt/2, 10*time.Millisecond), time.Second)
}

// wake returns when p next needs the sender, or zero.
func (p *peer) wake(now time.Time) time.Time {
	var next time.Time
	soonest := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	if p.ackDue {
		soonest(p.ackAt)
	}
	if (len(p.lost) > 0 || len(p.queue) > 0) && p.pacer.nextSend.After(now) {
		// Paced. (Not yet due and not paced means the window is full:
		// an acknowledgement wakes the sender.)
		soonest(p.pacer.nextSend)
	}
	if p.outstanding() {
		soonest(p.probeDue())
	}
	soonest(p.lastHeard.Add(PeerIdle))
	return next
}
