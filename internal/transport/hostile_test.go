package transport

// Regression tests for the security review of the shield
// (docs/transport.md, "Hostile input"): every datagram is hostile, source
// addresses are spoofed, and a sniffer sees addresses and sequence
// numbers.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	mrand "math/rand/v2"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"fieldsync/internal/linksim"
)

// fakeConn is a PacketConn whose reads come from a channel and whose
// writes are recorded. Make it inside a synctest bubble.
type fakeConn struct {
	in     chan delivery
	mu     sync.Mutex
	out    []delivery
	closed chan struct{}
	once   sync.Once
}

func newFakeConn() *fakeConn {
	return &fakeConn{in: make(chan delivery, 1<<16), closed: make(chan struct{})}
}

func (c *fakeConn) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case d := <-c.in:
		return copy(b, d.data), d.addr, nil
	case <-c.closed:
		return 0, nil, net.ErrClosed
	}
}

func (c *fakeConn) WriteTo(b []byte, a net.Addr) (int, error) {
	c.mu.Lock()
	c.out = append(c.out, delivery{data: bytes.Clone(b), addr: a})
	c.mu.Unlock()
	return len(b), nil
}

func (c *fakeConn) Close() error                     { c.once.Do(func() { close(c.closed) }); return nil }
func (c *fakeConn) LocalAddr() net.Addr              { return &net.UDPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 4433} }
func (c *fakeConn) SetDeadline(time.Time) error      { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }

// sentTo returns the datagrams and bytes written to a.
func (c *fakeConn) sentTo(a net.Addr) (n, size int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range c.out {
		if d.addr.String() == a.String() {
			n++
			size += len(d.data)
		}
	}
	return n, size
}

// hugeRangeAck is a 13-byte ack: next, echo 0, one range of gap 1 and
// length 2^31-1.
func hugeRangeAck(next uint32) []byte {
	b := binary.BigEndian.AppendUint32([]byte{frameAck}, next)
	b = append(b, 0, 1)
	b = binary.AppendUvarint(b, 1)
	return binary.AppendUvarint(b, 1<<31-1)
}

// TestHugeAckRange: an ack whose range spans half the sequence space is
// malformed, and a sender walks no more of an ack's ranges than its
// window, whatever they claim (it used to walk 2^31 sequence numbers
// under the shield's lock: one 13-byte datagram stalled it a second).
func TestHugeAckRange(t *testing.T) {
	if _, err := parseFrame(hugeRangeAck(0)); err == nil {
		t.Error("parseFrame took an ack range of 2^31 packets")
	}
	edge := appendAck(nil, &ackBlock{next: 7, ranges: []span{{7 + maxAhead, 1}}})
	if _, err := parseFrame(edge); err != nil {
		t.Errorf("parseFrame refused a range at the far end of what a receiver tracks: %v", err)
	}
	if _, err := parseFrame(appendAck(nil, &ackBlock{next: 7, ranges: []span{{7 + maxAhead, 2}}})); err == nil {
		t.Error("parseFrame took a range past what a receiver tracks")
	}

	// Blocks as no parser makes them, straight to onAck: next valid or
	// not, the range behind the window's base or past it.
	huge := []span{{start: 0, n: 1<<31 - 1}}
	for _, tt := range []struct {
		name string
		next func(p *peer) uint32
	}{
		{"next invalid", func(p *peer) uint32 { return p.base + 1<<30 }},
		{"next at base", func(p *peer) uint32 { return p.base }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			for i := range 1000 {
				p := newPeer(&net.UDPAddr{}, start)
				p.proven = true
				p.pacer.minRTT = time.Second
				p.win = []*packet{{sends: 1, inflight: true, size: 100}}
				p.inflight = 100
				p.nextSeq = p.base + 1
				a := &ackBlock{next: tt.next(p), ranges: []span{{start: p.base - 1<<30 + uint32(i), n: huge[0].n}}}
				p.onAck(a, start)
				if tt.name == "next invalid" && p.inflight != 100 {
					t.Fatal("an ack with an invalid next acknowledged data")
				}
			}
			// Before the fix one call took 0.5–1.9 s; a thousand now take
			// microseconds each.
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("1000 acks with a 2^31 range took %v", took)
			}
		})
	}
}

// TestFrameKey: a keyed frame parses as its unkeyed self, and verifies
// under the other end's key only, unchanged.
func TestFrameKey(t *testing.T) {
	secret := bytes.Repeat([]byte{7}, 32)
	agent, hub := newFrameKey(secret, Client), newFrameKey(secret, Server)
	b := agent.seal(appendData(nil, 5, false, 0, &ackBlock{next: 3}, []byte{0x40, 1}))
	f, err := parseFrame(b)
	if err != nil {
		t.Fatal(err)
	}
	if f.typ != frameDataAck || f.seq != 5 || !bytes.Equal(f.payload, []byte{0x40, 1}) {
		t.Errorf("keyed frame parsed as %+v", f)
	}
	if !hub.verify(f) {
		t.Error("the hub does not verify the agent's frame")
	}
	if agent.verify(f) {
		t.Error("the agent verifies its own frame: it could be reflected")
	}
	b[len(b)-macSize-1] ^= 1
	if f, err := parseFrame(b); err == nil && hub.verify(f) {
		t.Error("a changed frame verifies")
	}
	if _, err := parseFrame([]byte{framePing | keyed, 1, 2}); err == nil {
		t.Error("parseFrame took a keyed frame shorter than its MAC")
	}
}

// TestPlayoutBounded: data frames from an address that never answers a
// ping (a spoofed one) are held only a little while, and only a few, and
// a client takes shield frames from the hub only.
func TestPlayoutBounded(t *testing.T) {
	for _, mode := range []Mode{Server, Client} {
		name := map[Mode]string{Server: "server", Client: "client"}[mode]
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := newFakeConn()
				s := NewShield(c, ShieldConfig{Mode: mode})
				defer s.Close()
				hub := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 443}
				if mode == Client {
					s.WriteTo(append([]byte{0x40}, make([]byte, 100)...), hub) // dial
				}
				pay := append([]byte{0x40}, make([]byte, 1200)...)
				const addrs = 4
				for a := range addrs {
					addr := &net.UDPAddr{IP: net.IPv4(198, 51, 100, byte(a)), Port: 7}
					for seq := range uint32(2000) {
						c.in <- delivery{data: appendData(nil, uint32(a)<<28+seq, false, 0, nil, pay), addr: addr}
					}
				}
				synctest.Wait()
				s.mu.Lock()
				held, peers := s.held, len(s.peers)
				s.mu.Unlock()
				t.Logf("held %d bytes, %d peers", held, peers)
				switch mode {
				case Server:
					if want := addrs * maxHeldUnknown * len(pay); held > want {
						t.Errorf("held %d bytes from %d silent addresses, want at most %d", held, addrs, want)
					}
				case Client:
					if held != 0 || peers != 1 {
						t.Errorf("a client held %d bytes from strangers and keeps %d peers, want none and 1", held, peers)
					}
					if st := s.Stats(); st.Refused != addrs*2000 {
						t.Errorf("a client refused %d frames from strangers, want %d", st.Refused, addrs*2000)
					}
				}
				time.Sleep(unknownHold + time.Second)
				s.mu.Lock()
				held = s.held
				s.mu.Unlock()
				if held != 0 {
					t.Errorf("still held %d bytes %v later", held, unknownHold+time.Second)
				}
			})
		})
	}
}

// TestAmplification: what a hub sends an address that has not proven to
// be its peer's stays within amplification times what came from it:
// acknowledgements of pings, and answers to QUIC packets (a stateless
// reset, which the shield used to probe for 150 s).
func TestAmplification(t *testing.T) {
	victim := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 55), Port: 53}
	t.Run("acks", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			c := newFakeConn()
			s := NewShield(c, ShieldConfig{Mode: Server})
			defer s.Close()
			in := 0
			send := func(b []byte) {
				in += len(b)
				c.in <- delivery{data: b, addr: victim}
				time.Sleep(time.Millisecond)
			}
			for i := range uint32(100) { // 100 holes: an ack of 100 ranges
				send(appendData(nil, 5000+i*160, false, 0, nil, []byte{0x40}))
			}
			for i := range uint32(200) {
				send(appendPing(nil, i+1))
			}
			time.Sleep(10 * time.Second)
			_, out := c.sentTo(victim)
			if out > amplification*in {
				t.Errorf("%d bytes in, %d bytes out: ×%.1f, want at most ×%d", in, out, float64(out)/float64(in), amplification)
			}
		})
	})
	t.Run("stateless reset", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			_, hubKey, _ := ed25519.GenerateKey(nil)
			serverTLS, err := ServerTLS(hubKey)
			if err != nil {
				t.Fatal(err)
			}
			c := newFakeConn()
			ln, err := (&ListenConfig{StatelessResetKey: ResetKey(hubKey)}).Listen(c, serverTLS)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Shutdown()
			ping := appendPing(nil, 1)
			pkt := make([]byte, 43) // a short-header packet of no connection
			pkt[0] = 0x41
			for i := 1; i < len(pkt); i++ {
				pkt[i] = byte(i * 7)
			}
			c.in <- delivery{data: ping, addr: victim}
			time.Sleep(10 * time.Millisecond)
			c.in <- delivery{data: pkt, addr: victim}
			time.Sleep(200 * time.Second)
			in := len(ping) + len(pkt)
			n, out := c.sentTo(victim)
			if out > amplification*in {
				t.Errorf("%d bytes in, %d datagrams of %d bytes out over 200 s: ×%.1f, want at most ×%d", in, n, out, float64(out)/float64(in), amplification)
			}
			if st := ln.Stats(); st.DataSent != 0 || st.Pings != 0 {
				t.Errorf("shielded %d packets and sent %d probes to a stranger", st.DataSent, st.Pings)
			}
		})
	})
}

// TestSpoofedPingPlainClient: a ping spoofed from a plain QUIC client's
// address does not make the hub shield what it sends there.
func TestSpoofedPingPlainClient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, _ := linksim.ProfileByName("lan")
		serverTLS, clientTLS := tlsPair(t)
		agentEnd, hubEnd := linksim.NewPath(p, 4).Endpoints()
		j := &injector{PacketConn: hubEnd, in: make(chan delivery, 16)}
		ln, err := Listen(j, serverTLS)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Shutdown()
		dialer := &Dialer{Plain: true, ListenPacket: func() (net.PacketConn, error) { return agentEnd, nil }}
		defer dialer.Wait()
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		var wg sync.WaitGroup
		defer func() { cancel(); wg.Wait() }()
		wg.Go(func() { serve(ctx, ln, func([]byte) {}) })
		conn, err := dialer.Dial(ctx, hubEnd.LocalAddr().String(), clientTLS)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.CloseWithError(0, "")
		if err := upload(ctx, conn, payload(64<<10, 1)); err != nil {
			t.Fatal(err)
		}
		j.in <- delivery{data: appendPing(nil, 1), addr: agentEnd.LocalAddr()}
		if err := upload(ctx, conn, payload(64<<10, 2)); err != nil {
			t.Errorf("a plain client's upload after a spoofed ping: %v", err)
		}
		if st := ln.Stats(); st.DataSent != 0 {
			t.Errorf("the hub shielded %d packets to a plain client", st.DataSent)
		}
	})
}

// TestRTTPoisoning: forged acknowledgements cannot take the round trip's
// floor (and with it the playout) down, and ping ids cannot be guessed.
func TestRTTPoisoning(t *testing.T) {
	now := time.Now()
	p := newPeer(&net.UDPAddr{}, now)
	p.onRTTSample(now, time.Millisecond, false)
	if p.pacer.minRTT != 0 {
		t.Errorf("an acknowledgement's sample set the floor before any ping: %v", p.pacer.minRTT)
	}
	p.onRTTSample(now, 600*time.Millisecond, true)
	for range 4 {
		p.onRTTSample(now, time.Millisecond, false)
	}
	if got, want := p.pacer.minRTT, time.Duration(float64(600*time.Millisecond)*ackFloor); got < want {
		t.Errorf("after 4 forged 1 ms samples the floor is %v, want at least %v", got, want)
	}

	// Ping ids are random: echoing the ids a sequential counter would
	// have used proves nothing; echoing the one sent does.
	s := &Shield{conf: ShieldConfig{Mode: Server}, peers: map[string]*peer{}}
	rand.Read(s.secret[:])
	p.rx = 100
	p.pingNow = true
	p.pump(s, now, false, nil)
	for id := range uint32(16) {
		p.handle(s, frame{typ: frameAck, ack: &ackBlock{next: p.base, echo: id + 1}}, now)
	}
	if p.proven {
		t.Fatal("a guessed ping id proved an address")
	}
	var id uint32
	for _, pg := range p.pings {
		if !pg.at.IsZero() {
			id = pg.id
		}
	}
	if id == 0 {
		t.Fatal("no ping went")
	}
	p.handle(s, frame{typ: frameAck, ack: &ackBlock{next: p.base, echo: id}}, now.Add(time.Second))
	if !p.proven {
		t.Error("echoing the ping's id did not prove the address")
	}
}

// TestHijack: a 7-byte ack from elsewhere that continues an agent's
// sequence numbers (a sniffer sees them) does not move the agent's path
// there: only data moves a peer.
func TestHijack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newFakeConn()
		s := NewShield(c, ShieldConfig{Mode: Server})
		defer s.Close()
		agent := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 10), Port: 40000}
		victim := &net.UDPAddr{IP: net.IPv4(198, 51, 100, 77), Port: 53}
		for i := range uint32(10) {
			c.in <- delivery{data: appendData(nil, 777+i, true, 777, nil, append([]byte{0x40}, make([]byte, 200)...)), addr: agent}
		}
		synctest.Wait()
		s.mu.Lock()
		p := s.peers[agent.String()]
		p.proven = true // as if it had answered the hub's ping
		next := p.base - 1
		s.mu.Unlock()
		b := binary.BigEndian.AppendUint32([]byte{frameAck}, next)
		c.in <- delivery{data: append(b, 0, 0), addr: victim}
		synctest.Wait()
		for range 20 {
			s.WriteTo(append([]byte{0x40}, make([]byte, 1200)...), agent)
		}
		time.Sleep(300 * time.Millisecond)
		if got := s.Paths()[0].Addr; got.String() != agent.String() {
			t.Errorf("after one spoofed ack the agent's path is at %v, want %v", got, agent)
		}
		if n, size := c.sentTo(victim); size > amplification*len(b)+amplification*2 {
			t.Errorf("sent %d datagrams, %d bytes, to the spoofed address", n, size)
		}
	})
}

// TestStrangersCannotEvict: frames from many spoofed addresses keep at
// most maxFresh peers never proven, and never cost a proven peer its
// state; a ping cookie proves an address even after its peer was
// evicted.
func TestStrangersCannotEvict(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newFakeConn()
		s := NewShield(c, ShieldConfig{Mode: Server})
		defer s.Close()
		agent := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 10), Port: 40000}
		c.in <- delivery{data: appendData(nil, 777, true, 777, nil, []byte{0x40, 1}), addr: agent}
		synctest.Wait()
		// The hub pings the agent; the agent echoes the ping's id.
		echo := func(addr net.Addr) {
			c.mu.Lock()
			var id uint32
			for _, d := range c.out {
				if d.addr.String() == addr.String() && d.data[0] == framePing {
					id = binary.BigEndian.Uint32(d.data[1:])
				}
			}
			c.mu.Unlock()
			if id == 0 {
				t.Fatalf("no ping to %v", addr)
			}
			c.in <- delivery{data: appendAck(nil, &ackBlock{next: 0, echo: id}), addr: addr}
			synctest.Wait()
		}
		echo(agent)
		const spoofed = 5000
		for i := range spoofed {
			from := &net.UDPAddr{IP: net.IPv4(100, byte(i>>16), byte(i>>8), byte(i)), Port: 9}
			c.in <- delivery{data: appendData(nil, 1<<31+uint32(i), false, 0, nil, []byte{0x40, 1}), addr: from}
		}
		synctest.Wait()
		s.mu.Lock()
		p, peers, fresh := s.peers[agent.String()], len(s.peers), s.nFresh
		s.mu.Unlock()
		if p == nil || !p.proven {
			t.Fatalf("the proven agent's peer is gone after %d spoofed addresses", spoofed)
		}
		if peers > maxFresh+1 || fresh > maxFresh {
			t.Errorf("%d peers, %d never proven, after %d spoofed addresses; want at most %d strangers", peers, fresh, spoofed, maxFresh)
		}
		// A stranger that got a ping, whose state is gone after more of
		// them: its echo still proves it, as a real agent's would after
		// a flood evicted it.
		var first net.Addr
		c.mu.Lock()
		for _, d := range c.out {
			if d.addr.String() != agent.String() && d.data[0] == framePing {
				first = d.addr
				break
			}
		}
		c.mu.Unlock()
		if first == nil {
			t.Fatal("no stranger got a ping")
		}
		for i := range 2 * maxFresh {
			from := &net.UDPAddr{IP: net.IPv4(101, 0, byte(i>>8), byte(i)), Port: 9}
			c.in <- delivery{data: appendPing(nil, 1), addr: from}
		}
		synctest.Wait()
		s.mu.Lock()
		evicted := s.peers[first.String()] == nil
		s.mu.Unlock()
		if !evicted {
			t.Fatalf("%v not evicted by %d more strangers", first, 2*maxFresh)
		}
		echo(first)
		s.mu.Lock()
		q := s.peers[first.String()]
		s.mu.Unlock()
		if q == nil || !q.proven {
			t.Error("an evicted stranger's echo of its ping cookie did not prove it")
		}
	})
}

// TestMoveChallenged: data from a new address that continues a proven
// peer's sequence numbers moves it there, but the new address gets no
// data until it answers a ping.
func TestMoveChallenged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newFakeConn()
		s := NewShield(c, ShieldConfig{Mode: Server})
		defer s.Close()
		agent := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 10), Port: 40000}
		moved := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 11), Port: 50000}
		c.in <- delivery{data: appendData(nil, 777, true, 777, nil, []byte{0x40, 1}), addr: agent}
		synctest.Wait()
		s.mu.Lock()
		s.provenLocked(s.peers[agent.String()])
		s.mu.Unlock()
		time.Sleep(time.Second)
		c.in <- delivery{data: appendData(nil, 778, false, 0, nil, []byte{0x40, 1}), addr: moved}
		synctest.Wait()
		for range 10 {
			s.WriteTo(append([]byte{0x40}, make([]byte, 1200)...), agent)
		}
		time.Sleep(100 * time.Millisecond)
		if got := s.Paths()[0].Addr; got.String() != moved.String() {
			t.Fatalf("the peer is at %v, want %v", got, moved)
		}
		if st := s.Stats(); st.DataSent != 0 {
			t.Errorf("sent %d data frames to a new address before it answered a ping", st.DataSent)
		}
		c.mu.Lock()
		var id uint32
		for _, d := range c.out {
			if d.addr.String() == moved.String() && d.data[0] == framePing {
				id = binary.BigEndian.Uint32(d.data[1:])
			}
		}
		c.mu.Unlock()
		c.in <- delivery{data: appendAck(nil, &ackBlock{next: 0, echo: id}), addr: moved}
		time.Sleep(100 * time.Millisecond)
		if st := s.Stats(); st.DataSent == 0 {
			t.Error("sent no data after the new address answered")
		}
	})
}

// TestKeyed: once the handshake is done, both shields authenticate
// their frames, and a frame forged with what a sniffer sees (the agent's
// address, the hub's sequence numbers) is refused.
func TestKeyed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, _ := linksim.ProfileByName("geo")
		serverTLS, clientTLS := tlsPair(t)
		agentEnd, hubEnd := linksim.NewPath(p, 3).Endpoints()
		j := &injector{PacketConn: hubEnd, in: make(chan delivery, 16)}
		ln, err := Listen(j, serverTLS)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Shutdown()
		dialer := &Dialer{ListenPacket: func() (net.PacketConn, error) { return agentEnd, nil }}
		defer dialer.Wait()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
		defer cancel()
		var wg sync.WaitGroup
		defer func() { cancel(); wg.Wait() }()
		wg.Go(func() { serve(ctx, ln, func([]byte) {}) })
		conn, err := dialer.Dial(ctx, hubEnd.LocalAddr().String(), clientTLS)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.CloseWithError(0, "")
		if err := upload(ctx, conn, payload(256<<10, 1)); err != nil {
			t.Fatal(err)
		}
		agent := agentEnd.LocalAddr()
		hubPeer := func(f func(p *peer)) {
			ln.sh.mu.Lock()
			defer ln.sh.mu.Unlock()
			f(ln.sh.byQUIC[agent.String()])
		}
		var rcvMax, base uint32
		hubPeer(func(p *peer) {
			if p == nil || p.key == nil || !p.strict {
				t.Fatalf("the hub's peer is not keyed: %+v", p)
			}
			rcvMax, base = p.rcvMax, p.base
		})
		refused := ln.Stats().Refused
		forged := [][]byte{
			appendForward(nil, rcvMax+1),
			appendAck(nil, &ackBlock{next: base}),
			appendData(nil, rcvMax+1, false, 0, nil, []byte{0x40, 1}),
			appendData(nil, 99, true, 99, nil, []byte{0x40, 1}),
		}
		for _, b := range forged {
			j.in <- delivery{data: b, addr: agent}
		}
		// Keyed frames with a wrong MAC.
		for _, b := range forged {
			b = append(b, make([]byte, macSize)...)
			b[0] |= keyed
			j.in <- delivery{data: b, addr: agent}
		}
		if err := upload(ctx, conn, payload(64<<10, 2)); err != nil {
			t.Fatal(err)
		}
		if got := ln.Stats().Refused - refused; got != int64(2*len(forged)) {
			t.Errorf("the hub refused %d forged frames, want %d", got, 2*len(forged))
		}
	})
}

// TestBlindAttacks runs a 1 MiB upload over geo while an attacker who
// knows the agent's address (not its sequence numbers) spoofs frames
// from it: each used to slow the upload down many times or kill it.
func TestBlindAttacks(t *testing.T) {
	if testing.Short() {
		t.Skip("uploads over geo")
	}
	attacks := []struct {
		name   string
		attack func(ctx context.Context, inject func([]byte))
	}{
		{"none", nil},
		{"new sender every 600 ms", func(ctx context.Context, inject func([]byte)) {
			rng := mrand.New(mrand.NewPCG(1, 2))
			time.Sleep(3 * time.Second)
			for ctx.Err() == nil {
				isn := rng.Uint32()
				inject(appendData(nil, isn, true, isn, nil, []byte{0x40}))
				time.Sleep(600 * time.Millisecond)
			}
		}},
		{"forward sweep", func(ctx context.Context, inject func([]byte)) {
			time.Sleep(4 * time.Second)
			for k := range uint32(256) {
				inject(appendForward(nil, (255-k)<<24))
			}
		}},
		{"far data", func(ctx context.Context, inject func([]byte)) {
			rng := mrand.New(mrand.NewPCG(5, 6))
			time.Sleep(4 * time.Second)
			for range 64 {
				inject(appendData(nil, rng.Uint32(), false, 0, nil, []byte{0x40}))
				time.Sleep(50 * time.Millisecond)
			}
		}},
		{"huge acks", func(ctx context.Context, inject func([]byte)) {
			rng := mrand.New(mrand.NewPCG(3, 4))
			time.Sleep(4 * time.Second)
			for range 4 {
				inject(hugeRangeAck(rng.Uint32()))
				time.Sleep(100 * time.Millisecond)
			}
		}},
	}
	var baseline time.Duration
	for _, tt := range attacks {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p, _ := linksim.ProfileByName("geo")
				serverTLS, clientTLS := tlsPair(t)
				agentEnd, hubEnd := linksim.NewPath(p, 8).Endpoints()
				j := &injector{PacketConn: hubEnd, in: make(chan delivery, 16)}
				ln, err := Listen(j, serverTLS)
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Shutdown()
				dialer := &Dialer{ListenPacket: func() (net.PacketConn, error) { return agentEnd, nil }}
				defer dialer.Wait()
				ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
				defer cancel()
				var wg sync.WaitGroup
				defer func() { cancel(); wg.Wait() }()
				var got []byte
				wg.Go(func() { serve(ctx, ln, func(b []byte) { got = b }) })
				conn, err := dialer.Dial(ctx, hubEnd.LocalAddr().String(), clientTLS)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.CloseWithError(0, "")
				actx, acancel := context.WithCancel(ctx)
				defer acancel()
				if tt.attack != nil {
					agent := agentEnd.LocalAddr()
					wg.Go(func() {
						tt.attack(actx, func(b []byte) {
							select {
							case j.in <- delivery{data: b, addr: agent}:
							case <-actx.Done():
							}
						})
					})
				}
				start := time.Now()
				data := payload(1<<20, 8)
				if err := upload(ctx, conn, data); err != nil {
					t.Fatalf("upload: %v", err)
				}
				took := time.Since(start)
				acancel()
				if !bytes.Equal(got, data) {
					t.Fatal("data differ")
				}
				t.Logf("upload took %v; QUIC lost %d", took, conn.ConnectionStats().PacketsLost)
				if tt.attack == nil {
					baseline = took
				} else if baseline > 0 && took > baseline*3/2 {
					t.Errorf("upload took %v under attack, %v without", took, baseline)
				}
			})
		})
	}
}

// FuzzShieldState feeds sequences of frames from a few addresses, and
// QUIC writes, through the shield's state machine (no goroutines): it
// must not panic and must keep its bounds.
func FuzzShieldState(f *testing.F) {
	f.Add([]byte{0, 6, 0x18, 0, 0, 0, 1, 0, 0, 0, 1, 0x40, 1, 5, 0x13, 0, 0, 0, 1})
	f.Add(append([]byte{2, 13}, hugeRangeAck(5)...))
	f.Fuzz(func(t *testing.T, in []byte) {
		s := &Shield{conf: ShieldConfig{Mode: Server}, peers: map[string]*peer{}, byQUIC: map[string]*peer{},
			readWake: make(chan struct{}), kick: make(chan struct{}, 1), done: make(chan struct{}), pc: newFakeConn()}
		if len(in) > 0 && in[0]&0x80 != 0 {
			s.conf.Mode = Client
		}
		now := time.Unix(1e9, 0)
		addrs := []net.Addr{
			&net.UDPAddr{IP: net.IPv4(1, 1, 1, 1), Port: 1}, &net.UDPAddr{IP: net.IPv4(2, 2, 2, 2), Port: 2},
			&net.UDPAddr{IP: net.IPv4(3, 3, 3, 3), Port: 3}, &net.UDPAddr{IP: net.IPv4(4, 4, 4, 4), Port: 4},
		}
		var out []outgoing
		for len(in) >= 2 {
			ctl, n := in[0], int(in[1])
			in = in[2:]
			n = min(n, len(in))
			b := in[:n]
			in = in[n:]
			addr := addrs[ctl&3]
			now = now.Add(time.Duration(ctl>>2) * 7 * time.Millisecond)
			s.mu.Lock()
			switch {
			case ctl&0x40 != 0 && n > 0:
				// QUIC writes to addr (what WriteTo does, without blocking).
				p := s.byQUIC[addr.String()]
				if p == nil && s.conf.Mode == Client {
					p = s.peerLocked(addr, true, now)
				}
				if p != nil && p.proven && p.queued+n <= maxQueue {
					p.queue = append(p.queue, append([]byte{0x40}, b...))
					p.queued += n + 1
					s.touchLocked(p)
				}
			default:
				if f, err := parseFrame(b); err == nil {
					p := s.peerLocked(addr, false, now)
					if p == nil && s.conf.Mode == Client {
						break
					}
					if p == nil || p.blank() {
						if q := s.movedLocked(addr, f, p); q != nil {
							p = q
						}
					}
					if p == nil {
						p = s.peerLocked(addr, true, now)
					}
					p.rx += int64(len(b))
					s.touchLocked(p)
					p.handle(s, f, now)
				} else if !isShield(b) {
					s.deliverLocked(bytes.Clone(b), addr)
				}
			}
			_, out = s.pumpLocked(now, false, out[:0])
			for _, o := range out {
				if len(o.b) > MaxDatagram {
					t.Fatalf("sent %d bytes", len(o.b))
				}
			}
			held := 0
			for _, p := range s.peers {
				if len(p.rcvAbove) > maxHoles || len(p.ring) > maxAhead || p.inflight < 0 || p.queued < 0 {
					t.Fatalf("bounds: holes %d ring %d inflight %d queued %d", len(p.rcvAbove), len(p.ring), p.inflight, p.queued)
				}
				if p.held > maxHeld || p.held < 0 {
					t.Fatalf("a peer holds %d bytes", p.held)
				}
				if !p.proven && p.tx > amplification*p.rx {
					t.Fatalf("sent %d bytes to an address not proven, which sent %d", p.tx, p.rx)
				}
				held += p.held
			}
			if held != s.held {
				t.Fatalf("peers hold %d bytes, the shield counts %d", held, s.held)
			}
			live := 0
			for _, p := range s.order {
				if !p.gone {
					live++
					if s.peers[p.addr.String()] != p {
						t.Fatalf("a live peer in the sender's round is not at its address")
					}
				}
			}
			if live != len(s.peers) || len(s.sched) > len(s.peers) {
				t.Fatalf("order %d live, sched %d, peers %d", live, len(s.sched), len(s.peers))
			}
			s.mu.Unlock()
		}
	})
}

// TestNewSenderAfterSilence: a new sender from an address (an agent's
// new socket behind a NAT that kept its port) is refused while the
// current sender still sends, and taken at its first data frame once
// that one has been silent for a retransmission timeout, however often
// the new one pings meanwhile and whatever frames far from the current
// sender's window come. Its own pings used to count as the address
// talking, and kept a redial after a long outage out for half an hour.
func TestNewSenderAfterSilence(t *testing.T) {
	s := &Shield{conf: ShieldConfig{Mode: Server}, peers: map[string]*peer{}, byQUIC: map[string]*peer{},
		readWake: make(chan struct{}), kick: make(chan struct{}, 1), done: make(chan struct{}), pc: newFakeConn()}
	addr := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 10), Port: 40000}
	now := time.Unix(1e9, 0)
	feed := func(b []byte) {
		t.Helper()
		f, err := parseFrame(b)
		if err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.peerLocked(addr, true, now).handle(s, f, now)
	}
	const old, fresh = 100, 5000
	for i := range uint32(10) {
		feed(appendData(nil, old+i, i == 0, old, nil, []byte{0x40}))
		now = now.Add(10 * time.Millisecond)
	}
	feed(appendData(nil, fresh, true, fresh, nil, []byte{0x40}))
	if s.stats.Refused != 1 {
		t.Fatalf("a new sender while the old one sends: %d refused, want 1", s.stats.Refused)
	}
	// The old sender falls silent (its connection died in an outage);
	// the new one probes every 100 ms, and junk far from the old
	// sender's window comes too.
	p := s.peers[addr.String()]
	silence := 3 * p.rto()
	for i := range int(silence / (100 * time.Millisecond)) {
		now = now.Add(100 * time.Millisecond)
		feed(appendPing(nil, uint32(i)))
		feed(appendData(nil, old+1<<30, false, 0, nil, []byte{0x40}))
	}
	feed(appendData(nil, fresh, true, fresh, nil, []byte{0x40}))
	if p.rcvISN != fresh || s.stats.Refused != 1 {
		t.Fatalf("the new sender's first data frame after %v of silence from the old one: refused (%d refused in all)", silence, s.stats.Refused)
	}
}
