package linksim

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Overheads the rate cap charges on top of the payload, so that a link's
// time is spent as a real one would spend it.
const (
	// UDPOverhead is the IPv4 and UDP header bytes of one datagram.
	UDPOverhead = 28
	// TCPOverhead is the IPv4 and TCP header bytes (with the timestamp
	// option Linux sends by default) of one segment.
	TCPOverhead = 52
	// TCPSegment is the payload of one full TCP segment on a 1500-byte MTU
	// with timestamps.
	TCPSegment = 1448
)

// minQueueBytes is the smallest default bottleneck queue: 16 full-size
// packets, so that a slow link with a short delay still absorbs a burst.
const minQueueBytes = 16 * 1500

// CutOutage is the outage of the SPEC's "cut" condition: a link of any
// profile that goes down for this long in the middle of a transfer
// ((*Path).Cut(CutOutage)).
const CutOutage = 60 * time.Second

// Profile describes one simulated path between an agent and the hub.
//
// The uplink is the agent→hub direction, the downlink hub→agent. Delay,
// Jitter, Loss and outages apply to both directions alike; the rate cap may
// differ.
type Profile struct {
	// Name is the profile's name, as tests and benchmarks spell it.
	Name string
	// Delay is the fixed one-way propagation delay. Give QUIC paths a
	// non-zero one: quic-go ignores RTT samples of zero, which is what a
	// zero delay without a rate cap measures under synctest.
	Delay time.Duration
	// Jitter adds a uniformly random delay in [0, Jitter) to each packet.
	// Packets are never reordered: a packet that would overtake an earlier
	// one arrives with it instead.
	Jitter time.Duration
	// Loss is the probability, in [0, 1), that a packet is lost after it
	// crossed the bottleneck (it uses up link time, then vanishes). Losses
	// are independent of each other.
	Loss float64
	// Rate caps the uplink in bits per second, headers included (see
	// UDPOverhead and TCPOverhead). Zero means no cap.
	Rate int64
	// DownRate caps the downlink in bits per second. Zero means the same
	// as Rate: the SPEC names only the uplink rate, and a symmetric link
	// is the conservative guess for the hub's pledges and feedback.
	DownRate int64
	// QueueBytes bounds the bottleneck queue in front of each rate cap
	// (drop-tail: a packet that does not fit is dropped). Zero means one
	// bandwidth-delay product of that direction (rate × 2 × Delay), at
	// least 16 full-size packets; negative means unbounded. Without a rate
	// cap nothing queues.
	QueueBytes int
	// OutageEvery and OutageFor schedule periodic outages: the link is
	// down for OutageFor at OutageEvery, 2×OutageEvery, … after the path
	// starts. While it is down every packet written is dropped, and every
	// packet queued or in flight when it goes down is lost.
	OutageEvery, OutageFor time.Duration
	// Downlink, if set, impairs the hub-to-agent direction instead of
	// Delay, Jitter, Loss, Rate and QueueBytes (its Rate zero means no
	// cap; set it or DownRate, not both): satellite links are rarely
	// symmetric (a terminal's uplink is often the lossier and the slower
	// way). Outages take both directions down.
	Downlink *Impairments
	// OutageFirst, if not zero, starts the first outage this long after
	// the path starts instead of at OutageEvery (the rest follow every
	// OutageEvery): a transfer shorter than the period still meets one.
	OutageFirst time.Duration
}

// Impairments are what one direction of a path does to datagrams: a
// Profile's own for the uplink, and its Downlink's (if set) for the
// downlink. The fields mean what the Profile's of the same names do.
type Impairments struct {
	Delay, Jitter time.Duration
	Loss          float64
	Rate          int64
	QueueBytes    int
}

// uplink returns the impairments of the agent-to-hub direction.
func (p Profile) uplink() Impairments {
	return Impairments{Delay: p.Delay, Jitter: p.Jitter, Loss: p.Loss, Rate: p.Rate, QueueBytes: p.QueueBytes}
}

// downlink returns the impairments of the hub-to-agent direction.
func (p Profile) downlink() Impairments {
	if p.Downlink != nil {
		return *p.Downlink
	}
	im := p.uplink()
	if p.DownRate != 0 {
		im.Rate = p.DownRate
	}
	return im
}

// The named profiles of the SPEC ("Link profiles"), plus lan.
var profiles = []Profile{
	// lan is not impaired, but its delay is not zero: under synctest a
	// zero-delay path makes round trips take no time at all, and quic-go
	// discards RTT samples of zero, so it would stay on its 100 ms initial
	// RTT guess and crawl.
	{Name: "lan", Delay: 100 * time.Microsecond},
	{Name: "geo", Delay: 300 * time.Millisecond, Loss: 0.01, Rate: 5_000_000},
	{Name: "geo-bad", Delay: 350 * time.Millisecond, Loss: 0.05, Rate: 2_000_000},
	{
		Name: "leo", Delay: 20 * time.Millisecond, Loss: 0.005, Rate: 20_000_000,
		OutageEvery: 15 * time.Second, OutageFor: 1500 * time.Millisecond,
	},
	{Name: "bgan", Delay: 400 * time.Millisecond, Loss: 0.005, Rate: 400_000},
}

// Profiles returns the named profiles: lan (no impairment, 0.2 ms round
// trip) and the SPEC's geo, geo-bad, leo and bgan.
func Profiles() []Profile {
	return slices.Clone(profiles)
}

// ProfileByName returns the named profile.
func ProfileByName(name string) (Profile, error) {
	for _, p := range profiles {
		if p.Name == name {
			return p, nil
		}
	}
	names := make([]string, len(profiles))
	for i, p := range profiles {
		names[i] = p.Name
	}
	return Profile{}, fmt.Errorf("unknown link profile %q: use one of %s", name, strings.Join(names, ", "))
}

// Validate reports whether p describes a path that can be simulated.
func (p Profile) Validate() error {
	errs := []error{p.uplink().validate("")}
	if p.Downlink != nil {
		errs = append(errs, p.Downlink.validate("downlink "))
	}
	if p.DownRate < 0 {
		errs = append(errs, errors.New("rates must not be negative"))
	}
	if p.DownRate != 0 && p.Downlink != nil {
		errs = append(errs, errors.New("set the downlink's rate in DownRate or in Downlink, not both"))
	}
	if p.OutageEvery < 0 || p.OutageFor < 0 || p.OutageFirst < 0 {
		errs = append(errs, errors.New("outage period and length must not be negative"))
	}
	if p.OutageFor > 0 && p.OutageEvery <= p.OutageFor {
		errs = append(errs, fmt.Errorf("outages of %v need a period longer than that, not %v", p.OutageFor, p.OutageEvery))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("link profile %q: %w", p.Name, err)
	}
	return nil
}

// validate reports what is wrong with im, each error starting with what.
func (im Impairments) validate(what string) error {
	var errs []error
	if im.Delay < 0 || im.Jitter < 0 {
		errs = append(errs, fmt.Errorf("%sdelay and jitter must not be negative", what))
	}
	if !(im.Loss >= 0 && im.Loss < 1) {
		errs = append(errs, fmt.Errorf("%sloss %v must be in [0, 1)", what, im.Loss))
	}
	if im.Rate < 0 {
		errs = append(errs, fmt.Errorf("%srates must not be negative", what))
	}
	return errors.Join(errs...)
}

// queueLimit is the bottleneck queue in bytes in front of the rate cap,
// or -1 for an unbounded one.
func (im Impairments) queueLimit() int {
	switch {
	case im.QueueBytes < 0 || im.Rate == 0:
		return -1
	case im.QueueBytes > 0:
		return im.QueueBytes
	}
	bdp := float64(im.Rate) / 8 * (2 * im.Delay).Seconds()
	return int(max(math.Min(bdp, math.MaxInt32), minQueueBytes))
}

// transmitTime is how long n bytes take to cross a link of rate bits per
// second; zero without a cap.
func transmitTime(n int, rate int64) time.Duration {
	if rate <= 0 {
		return 0
	}
	return time.Duration(float64(n) * 8 * float64(time.Second) / float64(rate))
}

// queuedBytes is how many bytes a link of rate bits per second still has to
// send when it is busy for d.
func queuedBytes(d time.Duration, rate int64) int {
	if rate <= 0 || d <= 0 {
		return 0
	}
	return int(d.Seconds() * float64(rate) / 8)
}

// schedule is a profile's periodic outages, counted from start.
type schedule struct {
	start       time.Time
	every, span time.Duration
}

func newSchedule(p Profile, start time.Time) schedule {
	if p.OutageEvery <= 0 || p.OutageFor <= 0 {
		return schedule{}
	}
	if p.OutageFirst > 0 {
		// The schedule counts its first outage one period after its
		// start: move the start so that it falls at OutageFirst.
		start = start.Add(p.OutageFirst - p.OutageEvery)
	}
	return schedule{start: start, every: p.OutageEvery, span: p.OutageFor}
}

// UpAt returns when a path of p that started at start is up at or after
// t: t itself, unless one of its scheduled outages holds the link down.
func (p Profile) UpAt(start, t time.Time) time.Time {
	return newSchedule(p, start).upAt(t)
}

// DownBetween returns how long the scheduled outages of a path of p that
// started at start hold the link down between a and b.
func (p Profile) DownBetween(start, a, b time.Time) time.Duration {
	s := newSchedule(p, start)
	var down time.Duration
	for t := a; s.every > 0 && t.Before(b); {
		if s.downAt(t) {
			up := s.upAt(t)
			if up.After(b) {
				up = b
			}
			down += up.Sub(t)
			t = up
			continue
		}
		t = s.next(t)
	}
	return down
}

// downAt reports whether the link is down at t.
func (s schedule) downAt(t time.Time) bool {
	if s.every == 0 {
		return false
	}
	r := t.Sub(s.start)
	return r >= s.every && r%s.every < s.span
}

// upAt returns when the link is up again if it is down at t, else t.
func (s schedule) upAt(t time.Time) time.Time {
	if !s.downAt(t) {
		return t
	}
	r := t.Sub(s.start)
	return s.start.Add(r - r%s.every + s.span)
}

// lastStart returns when the latest outage at or before t started, or the
// zero time if none has.
func (s schedule) lastStart(t time.Time) time.Time {
	if s.every == 0 {
		return time.Time{}
	}
	r := t.Sub(s.start)
	if r < s.every {
		return time.Time{}
	}
	return s.start.Add(r - r%s.every)
}

// next returns when the first outage after t starts, for a t at which the
// link is up; the zero time if there are no outages.
func (s schedule) next(t time.Time) time.Time {
	if s.every == 0 {
		return time.Time{}
	}
	r := t.Sub(s.start)
	if r < 0 {
		return s.start.Add(s.every)
	}
	return s.start.Add(r - r%s.every + s.every)
}

// hits reports whether the link is down at any instant of [a, b].
func (s schedule) hits(a, b time.Time) bool {
	if s.every == 0 {
		return false
	}
	return s.downAt(a) || !s.next(a).After(b)
}
