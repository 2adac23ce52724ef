package linksim

import (
	"math/rand/v2"
	"sync"
	"time"
)

// Direction is one way along a path.
type Direction int

// The directions of a path.
const (
	Uplink   Direction = 0 // agent → hub
	Downlink Direction = 1 // hub → agent
)

// Counter counts packets and their payload bytes.
type Counter struct {
	Packets int64
	Bytes   int64
}

// WireBytes is the bytes those datagrams take on a link: the payload plus
// UDPOverhead header bytes each.
func (c Counter) WireBytes() int64 {
	return c.Bytes + UDPOverhead*c.Packets
}

func (c *Counter) add(n int) {
	c.Packets++
	c.Bytes += int64(n)
}

// Traffic counts what happened to the datagrams written into one direction
// of a path. Bytes are UDP payload bytes, as written; a link also carries
// UDPOverhead bytes of headers per packet.
type Traffic struct {
	// Sent is every datagram written, whatever became of it.
	Sent Counter
	// Delivered is what the receiving end got.
	Delivered Counter
	// Lost is what random loss took, after it had used up link time.
	Lost Counter
	// QueueDrops is what did not fit in the bottleneck queue or in the
	// receiver's buffer, or arrived after the receiver was closed.
	QueueDrops Counter
	// OutageDrops is what was written while the link was down, or was
	// queued or in flight when it went down.
	OutageDrops Counter
}

// Stats counts a path's traffic in each direction.
type Stats struct {
	Uplink   Traffic // agent → hub
	Downlink Traffic // hub → agent
}

// flight is a datagram on its way.
type flight struct {
	data   []byte
	sent   time.Time
	arrive time.Time
}

// direction models one way of a link: a drop-tail queue in front of a
// transmitter of a fixed rate, then a propagation delay.
type direction struct {
	rate          int64
	delay, jitter time.Duration
	loss          float64
	queue         int // bytes, -1 for unbounded
	overhead      int // header bytes charged per packet
	rng           *rand.Rand
	deliver       func([]byte) bool

	held        bool      // Down holds it down until Up
	lastDown    time.Time // when the latest commanded outage began
	busyUntil   time.Time // when the transmitter has sent all it holds
	lastWrite   time.Time
	lastArrival time.Time
	flights     []flight    // in order of arrival
	timer       *time.Timer // set for the first flight's arrival
	firing      bool        // the timer's callback is delivering
	stats       Traffic
}

// shaper carries datagrams both ways between two ends with a profile's
// impairments. It runs no goroutine of its own: arrivals are timers
// (time.AfterFunc), so inside a testing/synctest bubble it follows the
// bubble's clock, and once closed nothing of it is left running.
type shaper struct {
	mu      sync.Mutex
	closed  bool
	sched   schedule
	cutting bool // a Cut holds both directions down
	cut     *time.Timer
	cutGen  uint64
	dirs    [2]*direction
	running sync.WaitGroup // timer callbacks under way
}

// newShaper returns a shaper for p whose deliveries go to deliver[Uplink]
// and deliver[Downlink]; a deliver function reports whether the receiver
// took the datagram. Each direction draws from its own PCG stream of seed,
// so one direction's traffic does not change the other's losses.
func newShaper(p Profile, seed int64, overhead int, deliver [2]func([]byte) bool) *shaper {
	s := &shaper{sched: newSchedule(p, time.Now())}
	for i, im := range [2]Impairments{p.uplink(), p.downlink()} {
		s.dirs[i] = &direction{
			rate:     im.Rate,
			delay:    im.Delay,
			jitter:   im.Jitter,
			loss:     im.Loss,
			queue:    im.queueLimit(),
			overhead: overhead,
			rng:      rand.New(rand.NewPCG(uint64(seed), 0x6c696e6b73696d00|uint64(i))),
			deliver:  deliver[i],
		}
	}
	return s
}

// send puts data, which the shaper now owns, on direction i.
func (s *shaper) send(i Direction, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	d := s.dirs[i]
	now := time.Now()
	n := len(data)
	d.stats.Sent.add(n)

	// Draw the same numbers for every packet, whatever becomes of it, so
	// that the n-th packet meets the same fate in every run.
	lost := d.loss > 0 && d.rng.Float64() < d.loss
	var jitter time.Duration
	if d.jitter > 0 {
		jitter = time.Duration(d.rng.Int64N(int64(d.jitter)))
	}

	// An outage since the last write lost what was queued or in flight:
	// the transmitter is idle again, and nothing earlier is to arrive.
	if d.lastDown.After(d.lastWrite) || s.sched.lastStart(now).After(d.lastWrite) {
		d.flush()
	}
	d.lastWrite = now
	if s.commanded(d) || s.sched.downAt(now) {
		d.stats.OutageDrops.add(n)
		return
	}

	start := now
	if d.busyUntil.After(now) {
		start = d.busyUntil
	}
	wire := n + d.overhead
	if d.queue >= 0 && queuedBytes(start.Sub(now), d.rate)+wire > d.queue {
		d.stats.QueueDrops.add(n)
		return
	}
	d.busyUntil = start.Add(transmitTime(wire, d.rate))
	arrive := d.busyUntil.Add(d.delay + jitter)
	if arrive.Before(d.lastArrival) {
		arrive = d.lastArrival
	}
	d.lastArrival = arrive
	if lost {
		d.stats.Lost.add(n)
		return
	}
	d.flights = append(d.flights, flight{data: data, sent: now, arrive: arrive})
	if len(d.flights) == 1 && !d.firing {
		s.arm(i, arrive.Sub(now))
	}
}

// flush loses what d holds, as an outage does: the transmitter is idle
// again, and nothing earlier is to arrive. The caller holds s.mu.
func (d *direction) flush() {
	for _, f := range d.flights {
		d.stats.OutageDrops.add(len(f.data))
	}
	d.flights = nil
	d.busyUntil, d.lastArrival = time.Time{}, time.Time{}
}

// arm schedules direction i's next arrival after wait. The caller holds s.mu.
func (s *shaper) arm(i Direction, wait time.Duration) {
	d := s.dirs[i]
	if d.timer == nil {
		d.timer = time.AfterFunc(wait, func() { s.arrive(i) })
		return
	}
	d.timer.Reset(wait)
}

// arrive hands direction i's due datagrams to the receiver. Only one call
// per direction delivers at a time (a call that finds another delivering
// leaves the rest to it), so datagrams arrive in order.
func (s *shaper) arrive(i Direction) {
	s.mu.Lock()
	d := s.dirs[i]
	if s.closed || d.firing {
		s.mu.Unlock()
		return
	}
	d.firing = true
	s.running.Add(1)
	defer s.running.Done()
	now := time.Now()
	var due [][]byte
	for len(d.flights) > 0 && !d.flights[0].arrive.After(now) {
		f := d.flights[0]
		d.flights[0] = flight{}
		d.flights = d.flights[1:]
		if s.commanded(d) || s.sched.hits(f.sent, now) {
			d.stats.OutageDrops.add(len(f.data))
			continue
		}
		due = append(due, f.data)
	}
	if len(d.flights) == 0 {
		d.flights = nil // let the backing array go
	}
	s.mu.Unlock()

	taken := make([]bool, len(due))
	for k, b := range due {
		taken[k] = d.deliver(b)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for k, b := range due {
		if taken[k] {
			d.stats.Delivered.add(len(b))
		} else {
			d.stats.QueueDrops.add(len(b))
		}
	}
	d.firing = false
	if !s.closed && len(d.flights) > 0 {
		s.arm(i, d.flights[0].arrive.Sub(time.Now()))
	}
}

// commanded reports whether a commanded outage (Down or Cut) holds d
// down. The caller holds s.mu.
func (s *shaper) commanded(d *direction) bool { return d.held || s.cutting }

// goDown notes that d went down now unless it already was, losing what
// it held. The caller holds s.mu.
func (s *shaper) goDown(d *direction) {
	if !s.commanded(d) {
		d.lastDown = time.Now()
		d.flush()
	}
}

// Down takes the given directions down until Up; none means both, and a
// value that is neither Uplink nor Downlink is ignored.
func (s *shaper) Down(dirs ...Direction) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(dirs) == 0 {
		dirs = []Direction{Uplink, Downlink}
	}
	for _, i := range dirs {
		if i == Uplink || i == Downlink {
			s.goDown(s.dirs[i])
			s.dirs[i].held = true
		}
	}
}

// Up ends every commanded outage (Down and Cut). Scheduled outages go on.
func (s *shaper) Up() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endCut()
	for _, d := range s.dirs {
		d.held = false
	}
}

// endCut ends a Cut under way, if any. The caller holds s.mu.
func (s *shaper) endCut() {
	s.cutGen++
	if s.cut != nil {
		s.cut.Stop()
	}
	s.cutting = false
}

// Cut takes the link down both ways for d; a direction that Down holds
// stays down after it, until Up.
func (s *shaper) Cut(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	for _, dir := range s.dirs {
		s.goDown(dir)
	}
	s.endCut()
	s.cutting = true
	gen := s.cutGen
	s.cut = time.AfterFunc(d, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.cutGen == gen {
			s.cutting = false
		}
	})
}

// stats returns the counters of both directions.
func (s *shaper) stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Uplink: s.dirs[Uplink].stats, Downlink: s.dirs[Downlink].stats}
}

// close stops the shaper: what is in flight is dropped, and close returns
// once no timer callback of it runs any more.
func (s *shaper) close() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		s.cutGen++
		if s.cut != nil {
			s.cut.Stop()
		}
		for _, d := range s.dirs {
			if d.timer != nil {
				d.timer.Stop()
			}
			d.flights = nil
		}
	}
	s.mu.Unlock()
	s.running.Wait()
}
