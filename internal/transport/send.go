package transport

import "time"

// udpOverhead is the IPv4 and UDP header bytes of a datagram, which the
// pacer counts: they take the link's time too.
const udpOverhead = 28

// pump sends what is due to p at now. The caller holds s.mu.
func (p *peer) pump(s *Shield, now time.Time, final bool, out []outgoing) []outgoing {
	for p.proven {
		pk, seq, ok := p.nextToSend(s, now, final)
		if !ok {
			break
		}
		var b []byte
		isNew := !p.rcvSeen // until the receiver has acknowledged something
		if p.ackDue {
			// An acknowledgement rides along if it fits.
			a := p.peekAck()
			b = appendData(make([]byte, 0, MaxDatagram+macSize), seq, isNew, p.isn, a, pk.data)
			if len(b)+p.macLen() <= MaxDatagram {
				p.takeAck()
				s.stats.Piggybacked++
			} else {
				b = nil
			}
		}
		if b == nil {
			b = appendData(make([]byte, 0, dataHeader+4+macSize+len(pk.data)), seq, isNew, p.isn, nil, pk.data)
		}
		b = p.seal(b)
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
		p.tx += int64(len(b))
		out = append(out, outgoing{b: b, addr: p.addr})
		if pk.sends > 1 && p.twice() {
			// A second copy: the receiver's playout covers one
			// retransmission, and a lost one stalls QUIC.
			p.pacer.charge(now, pk.size)
			s.stats.DataSent++
			s.stats.DataBytes += int64(len(b))
			s.stats.RetransmitBytes += int64(len(b))
			s.stats.Duplicated++
			out = append(out, outgoing{b: b, addr: p.addr})
		}
	}
	if final {
		return out
	}
	if len(p.ring) > 0 {
		p.release(s, now)
	}
	if p.ackDue && (p.ackNow || !now.Before(p.ackAt)) {
		a := p.takeAck()
		b := appendAck(make([]byte, 0, 16), a)
		if !p.proven && !p.budget(len(b)+p.macLen()) {
			// To an address not proven the peer's, an acknowledgement
			// is no larger than amplification allows: the ranges go
			// first, then the acknowledgement itself.
			b = appendAck(b[:0], &ackBlock{next: a.next, echo: a.echo})
			if !p.budget(len(b) + p.macLen()) {
				b = nil
			}
		}
		if b != nil {
			b = p.seal(b)
			s.stats.AcksSent++
			s.stats.AckBytes += int64(len(b))
			p.tx += int64(len(b))
			out = append(out, outgoing{b: b, addr: p.addr})
		}
	}
	if p.rcvSeen && seqLess(p.peerNext, p.base) && !now.Before(p.fwdAt) {
		// The receiver still waits for something given up on.
		p.fwdAt = now.Add(max(p.srtt, minRTO))
		if p.proven || p.budget(5) {
			b := p.seal(appendForward(make([]byte, 0, 5+macSize), p.base))
			p.tx += int64(len(b))
			out = append(out, outgoing{b: b, addr: p.addr})
		}
	}
	if p.outstanding() && now.Sub(p.lastHeard) > ProbeFor {
		p.giveUp(s)
	}
	if p.pacer.minRTT == 0 && len(p.win) > 0 {
		p.pingFloor(now) // the pacer needs the round trip
	}
	if p.pingNow || p.proven && p.outstanding() && !now.Before(p.probeDue()) {
		p.pingNow = false
		if !p.proven && !p.budget(5+p.macLen()) {
			return out
		}
		// A stranger's ping id is a cookie: its echo proves the address
		// even if the peer's state was evicted meanwhile.
		id := randomID()
		if !p.proven {
			id = s.cookie(p.addr, now)
		}
		id = id&^0xf | uint32(p.pingSlot+1)
		p.pings[p.pingSlot] = ping{id: id, at: now}
		p.pingSlot = (p.pingSlot + 1) % len(p.pings)
		last := time.Duration(0)
		if !p.probeAt.IsZero() {
			last = now.Sub(p.prevProbe)
		}
		p.prevProbe = now
		p.probeAt = now.Add(p.probeInterval(now, last))
		b := p.seal(appendPing(make([]byte, 0, 5+macSize), id))
		s.stats.Pings++
		p.tx += int64(len(b))
		out = append(out, outgoing{b: b, addr: p.addr})
	}
	return out
}

// budget reports whether n more bytes to p keep what was sent to an
// address not proven the peer's within amplification times what came
// from it (RFC 9000, 8.1, for the same reason: a spoofed source must not
// make the shield a reflector).
func (p *peer) budget(n int) bool {
	return p.tx+int64(n) <= amplification*p.rx
}

// twice reports whether a retransmission goes out in two copies: when
// the link time a lost retransmission costs (the receiver holds what
// came after it for about three quarters of a round trip more, and QUIC
// above waits) is worth more than twice the bytes of the copy. On a path
// that loses 5 % at 2 Mbit/s and 700 ms it is; at 0.5 % it is not.
func (p *peer) twice() bool {
	return p.pacer.loss*p.pacer.bdp()*3/4 > 2*MaxDatagram
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
			!p.pacer.canSend(now, p.nextSize()):
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
			if pk.sends >= maxSends {
				// Give up: QUIC will see it lost and send its frames
				// again in a new packet; the receiver is told to skip it.
				pk.acked, pk.data = true, nil
				s.stats.Abandoned++
				p.slide()
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

// nextSize is the size of the packet nextToSend would pick.
func (p *peer) nextSize() int {
	if len(p.lost) > 0 {
		if pk := p.at(p.lost[0]); pk != nil {
			return len(pk.data)
		}
		return MaxDatagram
	}
	if len(p.queue) > 0 {
		return len(p.queue[0])
	}
	return 0
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

// probeInterval is the time between probes of a silent path: a quarter
// of a round trip, so that data flows again within two round trips of
// the link's return (the probe's answer takes one, the data half of
// one), for FastProbe; then twice the last, up to maxProbeEvery.
func (p *peer) probeInterval(now time.Time, last time.Duration) time.Duration {
	if now.Sub(p.lastHeard) > FastProbe {
		return min(2*last, maxProbeEvery)
	}
	rtt := p.srtt
	if rtt == 0 {
		rtt = initialRTT
	}
	return min(max(rtt/4, 10*time.Millisecond), time.Second)
}

// giveUp drops what the sender still has for a peer silent for longer
// than ProbeFor: the QUIC connection it belonged to is gone.
func (p *peer) giveUp(s *Shield) {
	for _, pk := range p.win {
		if !pk.acked {
			pk.acked, pk.data, pk.inflight = true, nil, false
			s.stats.Abandoned++
		}
	}
	p.inflight, p.lost, p.probeAt = 0, nil, time.Time{}
	p.slide()
	p.queue, p.queued = nil, 0
	close(p.room)
	p.room = make(chan struct{})
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
	if p.outstanding() && p.proven {
		soonest(p.probeDue())
	}
	if p.rcvSeen && seqLess(p.peerNext, p.base) {
		soonest(p.fwdAt)
	}
	soonest(p.releaseAt())
	if p.pingNow {
		next = now
	}
	if p.pacer.minRTT == 0 && len(p.win) > 0 {
		soonest(p.floorPing.Add(p.rto()))
	}
	soonest(p.lastHeard.Add(PeerIdle))
	return next
}
