package linksim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// RelayTCP forwards real TCP connections accepted on ln to upstream,
// shaping each byte stream with the impairments of p, in real time: bytes
// from the client (the agent) take the uplink, replies the downlink. All
// connections share one link, so they share its rate.
//
// A byte stream cannot lose bytes, so RelayTCP models what loss costs TCP
// in time, not the loss itself:
//
//   - The rate cap charges TCPOverhead header bytes per TCPSegment of
//     payload; the bottleneck queue holds QueueBytes (as on a Path), and
//     when it is full RelayTCP stops reading, which pushes back on the
//     sender through TCP flow control.
//   - Each segment is lost with probability Loss. A lost segment is sent
//     again (using link time again) and arrives one round trip (2×Delay)
//     late, holding back everything behind it in that connection, as
//     TCP's in-order delivery does after a fast retransmit.
//   - A segment that is being sent or in flight when a scheduled outage
//     starts is sent again when it ends; nothing moves while the link is
//     down. Connections survive outages.
//
// RelayTCP is a split connection, like a satellite terminal's
// performance-enhancing proxy: each side's TCP talks to the relay over the
// local network, so its congestion control never sees the path's delay or
// loss (no slow start stretched over 600 ms round trips, no halved window
// after a loss). It therefore flatters TCP; for an end-to-end TCP
// baseline, shape the interface instead (tc netem in a network namespace).
//
// RelayTCP returns nil once ctx is done, or the first error from Accept
// or from p. It closes ln when it returns, and waits for the connections
// it relays to end.
func RelayTCP(ctx context.Context, ln net.Listener, upstream string, p Profile, seed int64) error {
	defer ln.Close()
	if err := p.Validate(); err != nil {
		return err
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	st := newStreamShaper(p, seed)
	var wg sync.WaitGroup
	for {
		c, err := ln.Accept()
		if err != nil {
			cancel()
			wg.Wait()
			if parent.Err() != nil {
				return nil
			}
			return fmt.Errorf("relay: accept: %w", err)
		}
		wg.Go(func() { st.serve(ctx, c, upstream) })
	}
}

// streamShaper shapes the byte streams of a TCP relay.
type streamShaper struct {
	sched schedule
	dirs  [2]*streamDir
}

// streamDir is one direction of the link a TCP relay shapes.
type streamDir struct {
	rate          int64
	delay, jitter time.Duration
	loss          float64
	queue         int // bytes, -1 for unbounded

	mu        sync.Mutex
	rng       *rand.Rand
	busyUntil time.Time
}

func newStreamShaper(p Profile, seed int64) *streamShaper {
	st := &streamShaper{sched: newSchedule(p, time.Now())}
	for i, im := range [2]Impairments{p.uplink(), p.downlink()} {
		st.dirs[i] = &streamDir{
			rate:   im.Rate,
			delay:  im.Delay,
			jitter: im.Jitter,
			loss:   im.Loss,
			queue:  im.queueLimit(),
			rng:    rand.New(rand.NewPCG(uint64(seed), 0x6c696e6b74637000|uint64(i))),
		}
	}
	return st
}

// chunkSize is how many bytes a pump reads at once: one segment on a
// capped link, so that bytes arrive as smoothly as segments would.
func (d *streamDir) chunkSize() int {
	if d.rate == 0 {
		return 32 << 10
	}
	return TCPSegment
}

// wait returns how long a reader must wait before the bottleneck queue has
// room again.
func (d *streamDir) wait(now time.Time) time.Duration {
	if d.queue < 0 || d.rate == 0 {
		return 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.busyUntil.After(now) {
		return 0
	}
	return d.busyUntil.Sub(now) - transmitTime(d.queue, d.rate)
}

// schedule puts n bytes read at now on the link and returns when they
// arrive, no earlier than last (the connection's previous arrival).
func (d *streamDir) schedule(now time.Time, n int, sched schedule, last time.Time) time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	segs := (n + TCPSegment - 1) / TCPSegment
	wire := n + segs*TCPOverhead
	var late time.Duration
	for range segs {
		if d.loss > 0 && d.rng.Float64() < d.loss {
			wire += TCPSegment + TCPOverhead
			late = 2 * d.delay
		}
	}
	var jitter time.Duration
	if d.jitter > 0 {
		jitter = time.Duration(d.rng.Int64N(int64(d.jitter)))
	}

	start := now
	if d.busyUntil.After(start) {
		start = d.busyUntil
	}
	var arrive time.Time
	// An outage while the bytes are sent or in flight: send them again
	// once it is over. A few rounds at most, should they not fit between
	// two outages.
	for range 8 {
		start = sched.upAt(start)
		d.busyUntil = start.Add(transmitTime(wire, d.rate))
		arrive = d.busyUntil.Add(d.delay + jitter + late)
		if !sched.hits(start, arrive) {
			break
		}
		start = sched.upAt(sched.next(start))
	}
	if arrive.Before(last) {
		arrive = last
	}
	return arrive
}

// serve relays one accepted connection.
func (st *streamShaper) serve(ctx context.Context, c net.Conn, upstream string) {
	defer c.Close()
	var dialer net.Dialer
	u, err := dialer.DialContext(ctx, "tcp", upstream)
	if err != nil {
		return // the client sees its connection closed, as it would see a refused one
	}
	defer u.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		c.Close()
		u.Close()
	})
	defer stop()

	var wg sync.WaitGroup
	wg.Go(func() { st.pump(ctx, cancel, st.dirs[Uplink], c, u) })
	wg.Go(func() { st.pump(ctx, cancel, st.dirs[Downlink], u, c) })
	wg.Wait()
}

// segment is bytes on their way; nil data is the end of the stream.
type segment struct {
	data   []byte
	arrive time.Time
}

// pump copies src to dst through d. It ends at src's end, after
// half-closing dst, or calls fail on an error.
func (st *streamShaper) pump(ctx context.Context, fail context.CancelFunc, d *streamDir, src, dst net.Conn) {
	inflight := make(chan segment, 4096)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		for s := range inflight {
			if !sleepUntil(ctx, s.arrive) {
				return
			}
			if s.data == nil {
				if cw, ok := dst.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				} else {
					dst.Close()
				}
				return
			}
			if _, err := dst.Write(s.data); err != nil {
				fail()
				return
			}
		}
	})
	defer close(inflight)

	buf := make([]byte, d.chunkSize())
	var last time.Time
	for {
		if w := d.wait(time.Now()); w > 0 && !sleepUntil(ctx, time.Now().Add(w)) {
			return
		}
		n, err := src.Read(buf)
		if n > 0 {
			last = d.schedule(time.Now(), n, st.sched, last)
			select {
			case inflight <- segment{data: append([]byte(nil), buf[:n]...), arrive: last}:
			case <-ctx.Done():
				return
			}
		}
		if errors.Is(err, io.EOF) {
			select {
			case inflight <- segment{arrive: last}:
			case <-ctx.Done():
			}
			return
		}
		if err != nil {
			fail()
			return
		}
	}
}

// sleepUntil waits until t; it reports false if ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	wait := time.Until(t)
	if wait <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}
