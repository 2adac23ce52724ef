package linksim

import (
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"time"
)

// DefaultReadBuffer is how many payload bytes a Conn holds for its reader
// before it drops arrivals, like a socket's receive buffer. quic-go asks
// for 7 MiB; SetReadBuffer changes it.
const DefaultReadBuffer = 8 << 20

// The fake addresses of a path's ends, from the documentation ranges
// (RFC 5737), so they can never reach a real host.
var (
	agentAddr = &net.UDPAddr{IP: net.IPv4(192, 0, 2, 10), Port: 40000}
	hubAddr   = &net.UDPAddr{IP: net.IPv4(198, 51, 100, 1), Port: 4433}
)

// Path is an in-memory network path between an agent and the hub with the
// impairments of a Profile. Its two ends are Conns (net.PacketConn).
//
// A Path keeps no goroutine: deliveries are timers, so a Path made inside a
// testing/synctest bubble runs on the bubble's clock, and once both ends
// are closed (or the Path is) nothing of it is left running.
type Path struct {
	profile    Profile
	shaper     *shaper
	agent, hub *Conn

	mu     sync.Mutex
	closed int // ends closed
}

// NewPath returns a path with the impairments of p, whose random losses
// and jitter follow from seed. Scheduled outages count from now. It panics
// if p is not valid (see Profile.Validate).
func NewPath(p Profile, seed int64) *Path {
	if err := p.Validate(); err != nil {
		panic(fmt.Sprintf("linksim.NewPath: %v", err))
	}
	path := &Path{profile: p}
	path.agent = newConn(path, agentAddr, hubAddr, Uplink)
	path.hub = newConn(path, hubAddr, agentAddr, Downlink)
	path.shaper = newShaper(p, seed, UDPOverhead, [2]func([]byte) bool{
		Uplink:   path.hub.receive,
		Downlink: path.agent.receive,
	})
	return path
}

// Profile returns the profile the path was made with.
func (p *Path) Profile() Profile { return p.profile }

// Endpoints returns the agent's end and the hub's end of the path. A
// datagram written on one, addressed to the other's LocalAddr, arrives on
// the other; datagrams to any other address vanish.
func (p *Path) Endpoints() (agent, hub *Conn) { return p.agent, p.hub }

// Down takes the link down until Up, in the given directions or, with
// none, in both: datagrams written meanwhile are dropped, and those queued
// or in flight are lost.
func (p *Path) Down(dirs ...Direction) { p.shaper.Down(dirs...) }

// Up ends an outage begun by Down or Cut. Scheduled outages go on.
func (p *Path) Up() { p.shaper.Up() }

// Cut takes the link down for d, as Down and then Up after d.
func (p *Path) Cut(d time.Duration) { p.shaper.Cut(d) }

// Stats returns what happened to the datagrams written so far.
func (p *Path) Stats() Stats { return p.shaper.stats() }

// Close closes both ends and drops what is in flight.
func (p *Path) Close() error {
	p.agent.Close()
	p.hub.Close()
	return nil
}

// endClosed notes that one end was closed; with both closed, the path
// stops.
func (p *Path) endClosed() {
	p.mu.Lock()
	p.closed++
	last := p.closed == 2
	p.mu.Unlock()
	if last {
		p.shaper.close()
	}
}

// Conn is one end of a Path. It is a net.PacketConn that quic-go accepts
// as quic.Transport.Conn; it also has SetReadBuffer and SetWriteBuffer so
// that quic-go does not warn about buffer sizes.
type Conn struct {
	path          *Path
	local, remote *net.UDPAddr
	dir           Direction // the direction it writes into

	mu            sync.Mutex
	closed        bool
	queue         [][]byte
	queued        int // bytes in queue
	readBuffer    int
	wake          chan struct{} // closed and replaced on every change a reader waits for
	readDeadline  time.Time
	writeDeadline time.Time
}

var _ net.PacketConn = (*Conn)(nil)

func newConn(p *Path, local, remote *net.UDPAddr, dir Direction) *Conn {
	return &Conn{
		path:       p,
		local:      local,
		remote:     remote,
		dir:        dir,
		readBuffer: DefaultReadBuffer,
		wake:       make(chan struct{}),
	}
}

// broadcast wakes the readers. The caller holds c.mu.
func (c *Conn) broadcast() {
	close(c.wake)
	c.wake = make(chan struct{})
}

// receive queues an arriving datagram; it reports false if the datagram
// was dropped.
func (c *Conn) receive(b []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.queued+len(b) > c.readBuffer {
		return false
	}
	c.queue = append(c.queue, b)
	c.queued += len(b)
	c.broadcast()
	return true
}

func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "udp", Source: c.local, Addr: c.remote, Err: err}
}

// ReadFrom reads the next datagram into b, as a UDP socket would: a
// datagram longer than b is truncated. It blocks until one arrives, the
// read deadline passes (an error for which errors.Is(err,
// os.ErrDeadlineExceeded) holds) or the Conn is closed (net.ErrClosed).
func (c *Conn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return 0, nil, c.opError("read", net.ErrClosed)
		}
		if len(c.queue) > 0 {
			d := c.queue[0]
			c.queue[0] = nil
			c.queue = c.queue[1:]
			if len(c.queue) == 0 {
				c.queue = nil
			}
			c.queued -= len(d)
			c.mu.Unlock()
			return copy(b, d), c.remote, nil
		}
		deadline, wake := c.readDeadline, c.wake
		c.mu.Unlock()

		if deadline.IsZero() {
			<-wake
			continue
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			return 0, nil, c.opError("read", os.ErrDeadlineExceeded)
		}
		t := time.NewTimer(wait)
		select {
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// WriteTo sends b to addr. It never blocks: the link queues or drops.
func (c *Conn) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.mu.Lock()
	closed, deadline := c.closed, c.writeDeadline
	c.mu.Unlock()
	if closed {
		return 0, c.opError("write", net.ErrClosed)
	}
	if !deadline.IsZero() && !time.Now().Before(deadline) {
		return 0, c.opError("write", os.ErrDeadlineExceeded)
	}
	if addr == nil || addr.String() != c.remote.String() {
		return len(b), nil // no such host: the datagram vanishes, as UDP's would
	}
	c.path.shaper.send(c.dir, slices.Clone(b))
	return len(b), nil
}

// Close closes the Conn; blocked reads return net.ErrClosed. Datagrams
// still on their way to it are dropped.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.queue, c.queued = nil, 0
	c.broadcast()
	c.mu.Unlock()
	c.path.endClosed()
	return nil
}

// LocalAddr returns the end's fake UDP address.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the other end's fake UDP address.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readDeadline, c.writeDeadline = t, t
	c.broadcast()
	return nil
}

// SetReadDeadline sets the read deadline; it also applies to reads
// already blocked. The zero time means none.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readDeadline = t
	c.broadcast()
	return nil
}

// SetWriteDeadline sets the write deadline. Writes never block, so it
// only makes writes after it fail.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writeDeadline = t
	return nil
}

// SetReadBuffer sets how many payload bytes the Conn holds for its reader
// before it drops arrivals.
func (c *Conn) SetReadBuffer(n int) error {
	if n <= 0 {
		return fmt.Errorf("read buffer of %d bytes: must be positive", n)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readBuffer = n
	return nil
}

// SetWriteBuffer does nothing: writes never block or queue in the Conn.
// It exists so that quic-go does not warn about buffer sizes.
func (c *Conn) SetWriteBuffer(int) error { return nil }
