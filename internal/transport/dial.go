package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// Dialer connects an agent to its hub. Each connection gets its own UDP
// socket under a Shield, closed with the connection; the Dialer
// remembers what the last connection to each hub learnt about the path
// (its rate and round trip), so that a redial after an outage sends at the
// link's rate from its first round trip. The zero value is ready to use;
// a Dialer is safe for concurrent use.
type Dialer struct {
	// ListenPacket opens the socket of one connection. Nil means a UDP
	// socket on an ephemeral port; tests put a simulated link here
	// (internal/linksim).
	ListenPacket func() (net.PacketConn, error)
	// Plain dials without the Shield: plain QUIC, for a hub that predates
	// it, and for measurements.
	Plain bool
	// Config replaces QUICConfig(), for measurements.
	Config *quic.Config
	// NoPlayout turns the shield's playout off, for measurements (see
	// ShieldConfig).
	NoPlayout bool

	mu      sync.Mutex
	paths   map[string]pathMemory
	shields map[*quic.Conn]*Shield
	wg      sync.WaitGroup // connections whose sockets are still open
}

// pathMemory is what a connection learnt about the path to a hub.
type pathMemory struct {
	bw     float64
	minRTT time.Duration
	at     time.Time
}

// rememberFor is how long a Dialer trusts what it learnt about a path.
const rememberFor = time.Hour

// DefaultDialer is the Dialer that Dial uses.
var DefaultDialer = &Dialer{}

// Dial connects to the hub at addr (HOST:PORT) with DefaultDialer. The
// connection's socket is closed when the connection is.
func Dial(ctx context.Context, addr string, tlsConf *tls.Config) (*quic.Conn, error) {
	return DefaultDialer.Dial(ctx, addr, tlsConf)
}

// Dial connects to the hub at addr and completes the handshake.
func (d *Dialer) Dial(ctx context.Context, addr string, tlsConf *tls.Config) (*quic.Conn, error) {
	return d.dial(ctx, addr, tlsConf, false)
}

// DialEarly connects to the hub at addr and returns before the handshake
// completes: with a session ticket from an earlier connection, what is
// written before then goes out as 0-RTT data, which an attacker can
// replay. Write only idempotent messages (a Hello) before
// Conn.HandshakeComplete; if the hub refuses the 0-RTT data, stream
// operations fail with quic.Err0RTTRejected and Conn.NextConnection
// continues on 1-RTT.
func (d *Dialer) DialEarly(ctx context.Context, addr string, tlsConf *tls.Config) (*quic.Conn, error) {
	return d.dial(ctx, addr, tlsConf, true)
}

func (d *Dialer) dial(ctx context.Context, addr string, tlsConf *tls.Config, early bool) (*quic.Conn, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("resolve hub address %q: %w", addr, err)
	}
	listen := d.ListenPacket
	if listen == nil {
		listen = func() (net.PacketConn, error) { return net.ListenUDP("udp", nil) }
	}
	pc, err := listen()
	if err != nil {
		return nil, fmt.Errorf("open UDP socket: %w", err)
	}
	conf := d.Config
	if conf == nil {
		conf = QUICConfig()
	}
	var sh *Shield
	conn := pc
	if !d.Plain {
		sh = NewShield(pc, ShieldConfig{Mode: Client, NoPlayout: d.NoPlayout})
		if m, ok := d.remembered(raddr.String()); ok {
			sh.seed(raddr, m)
		}
		conn = sh
	}
	tr := &quic.Transport{Conn: conn}
	closeAll := func() {
		// The socket first: that ends the Transport's read loop however
		// the socket handles deadlines, and the Shield sends what QUIC
		// queued last before it closes.
		conn.Close()
		tr.Close()
	}
	var qc *quic.Conn
	if early {
		qc, err = tr.DialEarly(ctx, raddr, tlsConf, conf)
	} else {
		qc, err = tr.Dial(ctx, raddr, tlsConf, conf)
	}
	if err != nil {
		closeAll()
		return nil, err
	}
	if sh != nil {
		sh.keyConn(qc, false)
		d.mu.Lock()
		if d.shields == nil {
			d.shields = map[*quic.Conn]*Shield{}
		}
		d.shields[qc] = sh
		d.mu.Unlock()
	}
	d.wg.Add(1)
	context.AfterFunc(qc.Context(), func() {
		defer d.wg.Done()
		if sh != nil {
			d.remember(sh, raddr)
			// Linger, as TCP's TIME-WAIT: acknowledge what the hub sends
			// last, or its shield probes for it until it gives up.
			time.Sleep(sh.linger())
		}
		closeAll()
		d.mu.Lock()
		delete(d.shields, qc)
		d.mu.Unlock()
	})
	return qc, nil
}

// LinkStats returns the shield's counters for a connection the Dialer
// made, while its socket is open: ShieldStats.LinkBytes is what the
// connection took on the link, shield frames and retransmissions
// included, which quic-go's ConnectionStats do not see. It reports false
// for a plain connection or one whose socket is closed.
func (d *Dialer) LinkStats(conn *quic.Conn) (ShieldStats, bool) {
	d.mu.Lock()
	sh, ok := d.shields[conn]
	d.mu.Unlock()
	if !ok {
		return ShieldStats{}, false
	}
	return sh.Stats(), true
}

// LinkStats returns DefaultDialer's LinkStats for conn.
func LinkStats(conn *quic.Conn) (ShieldStats, bool) { return DefaultDialer.LinkStats(conn) }

// Wait waits until the socket of every connection the Dialer made is
// closed: a socket lingers for a couple of round trips after its
// connection ended.
func (d *Dialer) Wait() { d.wg.Wait() }

func (d *Dialer) remembered(key string) (pathMemory, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, ok := d.paths[key]
	if !ok || time.Since(m.at) > rememberFor {
		return pathMemory{}, false
	}
	return m, true
}

func (d *Dialer) remember(sh *Shield, raddr *net.UDPAddr) {
	for _, p := range sh.Paths() {
		if p.Addr.String() != raddr.String() || p.Bandwidth == 0 || p.MinRTT == 0 {
			continue
		}
		d.mu.Lock()
		if d.paths == nil {
			d.paths = map[string]pathMemory{}
		}
		d.paths[raddr.String()] = pathMemory{bw: p.Bandwidth, minRTT: p.MinRTT, at: time.Now()}
		d.mu.Unlock()
	}
}

// linger is how long a Shield stays open after its connection ended: two
// round trips of its slowest path, between 100 ms and 3 s.
func (s *Shield) linger() time.Duration {
	var rtt time.Duration
	for _, p := range s.Paths() {
		rtt = max(rtt, p.SRTT)
	}
	return min(max(2*rtt, 100*time.Millisecond), 3*time.Second)
}

// seed starts the path to addr from what an earlier connection learnt.
func (s *Shield) seed(addr net.Addr, m pathMemory) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if p := s.peerLocked(addr, true, now); p != nil {
		p.pacer.seed(now, m.bw, m.minRTT)
		p.srtt, p.rttvar = m.minRTT, m.minRTT/4
	}
}

// Listener accepts agents' QUIC connections on one socket, shielded or
// plain: the first byte of each datagram tells them apart.
type Listener struct {
	ln    *quic.Listener
	early *quic.EarlyListener
	tr    *quic.Transport
	sh    *Shield
}

// ListenConfig configures a Listener. The zero value serves
// QUICConfig() and refuses 0-RTT data.
type ListenConfig struct {
	// QUIC replaces QUICConfig(), for measurements.
	QUIC *quic.Config
	// Allow0RTT accepts 0-RTT data from agents that resume a session, and
	// makes Accept return connections before their handshake completes.
	// Such data can be replayed by an attacker: the session must act on
	// nothing but an idempotent Hello before Conn.HandshakeComplete.
	Allow0RTT bool
	// NoPlayout turns the shield's playout off, for measurements (see
	// ShieldConfig).
	NoPlayout bool
	// StatelessResetKey lets the hub answer a packet of a connection it
	// does not know, such as one from before a restart, with a stateless
	// reset (RFC 9000, 10.3): the agent then learns at once that its
	// connection is gone and dials again, instead of waiting out
	// IdleTimeout. It must be the same across restarts (ResetKey derives
	// it from the hub's key); nil sends no resets.
	StatelessResetKey *quic.StatelessResetKey
}

// Listen accepts QUIC connections on pc with the zero ListenConfig.
func Listen(pc net.PacketConn, tlsConf *tls.Config) (*Listener, error) {
	return (&ListenConfig{}).Listen(pc, tlsConf)
}

// Listen accepts QUIC connections on pc, which the Listener owns and
// closes in Shutdown.
func (lc *ListenConfig) Listen(pc net.PacketConn, tlsConf *tls.Config) (*Listener, error) {
	conf := lc.QUIC
	if conf == nil {
		conf = QUICConfig()
	}
	conf = conf.Clone()
	conf.Allow0RTT = lc.Allow0RTT
	sh := NewShield(pc, ShieldConfig{Mode: Server, NoPlayout: lc.NoPlayout})
	tr := &quic.Transport{Conn: sh, StatelessResetKey: lc.StatelessResetKey}
	l := &Listener{tr: tr, sh: sh}
	var err error
	if lc.Allow0RTT {
		l.early, err = tr.ListenEarly(tlsConf, conf)
	} else {
		l.ln, err = tr.Listen(tlsConf, conf)
	}
	if err != nil {
		tr.Close()
		sh.Close()
		return nil, fmt.Errorf("listen QUIC on %s: %w", pc.LocalAddr(), err)
	}
	return l, nil
}

// Accept returns the next connection, once its handshake is complete
// (with Allow0RTT, as soon as it arrives). It fails with
// quic.ErrServerClosed after Close.
func (l *Listener) Accept(ctx context.Context) (*quic.Conn, error) {
	var (
		conn *quic.Conn
		err  error
	)
	if l.early != nil {
		conn, err = l.early.Accept(ctx)
	} else {
		conn, err = l.ln.Accept(ctx)
	}
	if err != nil {
		return nil, err
	}
	// The shield authenticates its frames to and from the agent with a
	// key from this handshake, until the connection ends.
	l.sh.keyConn(conn, true)
	return conn, nil
}

// Addr returns the address the Listener listens on.
func (l *Listener) Addr() net.Addr { return l.sh.LocalAddr() }

// Close stops accepting connections; those accepted go on until Shutdown.
func (l *Listener) Close() error {
	if l.early != nil {
		return l.early.Close()
	}
	return l.ln.Close()
}

// Shutdown closes the Listener, every connection it accepted, and the
// socket.
func (l *Listener) Shutdown() error {
	err := errors.Join(l.Close(), l.tr.Close())
	return errors.Join(err, l.sh.Close())
}

// Stats returns the shield's counters.
func (l *Listener) Stats() ShieldStats { return l.sh.Stats() }

// Paths returns the shield's model of the path to each shielded agent.
func (l *Listener) Paths() []PathInfo { return l.sh.Paths() }
