package linksim

import (
	"net"
	"sync"
	"time"
)

// Sockets hands out successive sockets on one end of a path, as an agent
// that opens a UDP socket per connection does: datagrams go to the latest
// one opened. Tests and benchmarks give Open to a dialer.
type Sockets struct {
	end net.PacketConn
	mu  sync.Mutex
	cur *socket
	wg  sync.WaitGroup
}

// NewSockets reads end until Close and hands its datagrams to the latest
// socket Open returned.
func NewSockets(end net.PacketConn) *Sockets {
	s := &Sockets{end: end}
	s.wg.Go(func() {
		buf := make([]byte, 64<<10)
		for {
			n, addr, err := end.ReadFrom(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			if c := s.cur; c != nil {
				select {
				case c.in <- datagram{data: append([]byte(nil), buf[:n]...), addr: addr}:
				default:
				}
			}
			s.mu.Unlock()
		}
	})
	return s
}

// Open returns a new socket on the end; the one before gets no more
// datagrams.
func (s *Sockets) Open() (net.PacketConn, error) {
	c := &socket{end: s.end, in: make(chan datagram, 4096), done: make(chan struct{})}
	s.mu.Lock()
	s.cur = c
	s.mu.Unlock()
	return c, nil
}

// Close closes the end and waits for its reader.
func (s *Sockets) Close() {
	s.end.Close()
	s.wg.Wait()
}

type datagram struct {
	data []byte
	addr net.Addr
}

// socket is one of the agent's sockets. It has no deadlines: the
// transport closes it to stop its reader.
type socket struct {
	end  net.PacketConn
	in   chan datagram
	once sync.Once
	done chan struct{}
}

func (c *socket) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case d := <-c.in:
		return copy(b, d.data), d.addr, nil
	case <-c.done:
		return 0, nil, net.ErrClosed
	}
}

func (c *socket) WriteTo(b []byte, addr net.Addr) (int, error) {
	select {
	case <-c.done:
		return 0, net.ErrClosed
	default:
	}
	return c.end.WriteTo(b, addr)
}

func (c *socket) Close() error                     { c.once.Do(func() { close(c.done) }); return nil }
func (c *socket) SetReadBuffer(int) error          { return nil }
func (c *socket) SetWriteBuffer(int) error         { return nil }
func (c *socket) LocalAddr() net.Addr              { return c.end.LocalAddr() }
func (c *socket) SetDeadline(time.Time) error      { return nil }
func (c *socket) SetReadDeadline(time.Time) error  { return nil }
func (c *socket) SetWriteDeadline(time.Time) error { return nil }
