package transport

import (
	"math"
	"time"
)

// The shield's sender paces by a model of the path, after BBR (Cardwell
// et al., "BBR: Congestion-Based Congestion Control", 2016): it measures
// the bottleneck's delivery rate and the round-trip time's floor, sends at
// that rate and keeps about two of its bandwidth-delay products in flight.
// Random loss does not slow it down, which is the point: the QUIC
// connection above it runs NewReno, whose window collapses under loss,
// but sees no loss at all. docs/transport.md gives the measurements.
const (
	startupGain  = 2.885 // 2/ln 2: doubles the delivery rate every round
	cwndGain     = 2.0
	fullBwGrowth = 1.25 // startup ends after fullBwRounds rounds below this growth
	fullBwRounds = 3
	bwRounds     = 10               // the bandwidth filter's window, in rounds
	minRTTWindow = 10 * time.Second // the RTT floor's window
	// maxLossComp bounds the loss compensation: the pacer sends at most
	// 1/(1-maxLossComp) times the measured delivery rate.
	maxLossComp = 0.2
	// lossSmoothing is how many transmissions the loss-rate average spans.
	lossSmoothing = 512
	// initialWindow is the in-flight limit before the first rate sample,
	// as QUIC's own initial window (32 packets).
	initialWindow = 32 * MaxDatagram
	// minWindow keeps a few packets in flight whatever the model says.
	minWindow = 4 * MaxDatagram
	// maxWindow bounds the bytes in flight to one peer (memory, and the
	// receiver's tracking): 8 MiB covers 100 Mbit/s at 600 ms.
	maxWindow = 8 << 20
	// pacingBurst is how far the pacer lets a sender that fell behind
	// catch up at once.
	pacingBurst = 2 * time.Millisecond
)

// probeGains is the gain cycle of the steady state: probe for more
// bandwidth for a round, drain the queue that built for a round, cruise
// for six.
var probeGains = [...]float64{1.25, 0.75, 1, 1, 1, 1, 1, 1}

type pacerMode int

const (
	modeStartup pacerMode = iota
	modeDrain
	modeProbeBW
)

func (m pacerMode) String() string {
	return [...]string{"startup", "drain", "probe-bw"}[m]
}

// sendState is what the pacer records about a transmission when it goes
// out, to sample the delivery rate when it is acknowledged.
type sendState struct {
	delivered   int64
	deliveredAt time.Time
	firstSentAt time.Time
	appLimited  bool
}

// bwSample is the best delivery rate seen in one round.
type bwSample struct {
	round int64
	bw    float64 // bytes per second
}

// pacer is the sender's model of one path. It is not safe for concurrent
// use; the shield holds its lock.
type pacer struct {
	mode       pacerMode
	pacingGain float64
	cwndGain   float64

	bw       [bwRounds]bwSample // best sample of each recent round
	minRTT   time.Duration
	minRTTAt time.Time

	// Rounds: a round ends when a packet sent after the previous round
	// ended is acknowledged.
	round              int64
	nextRoundDelivered int64

	fullBw      float64
	fullBwCount int

	cycle   int
	cycleAt time.Time

	// Delivery-rate sampling.
	delivered     int64
	deliveredAt   time.Time
	firstSentAt   time.Time
	appLimitedEnd int64 // samples of packets sent before delivered reached this are app-limited

	loss float64 // average share of transmissions lost

	nextSend time.Time // pacing: when the next packet may go
}

func newPacer() *pacer {
	return &pacer{mode: modeStartup, pacingGain: startupGain, cwndGain: startupGain}
}

// btlBw is the bottleneck bandwidth estimate in bytes per second, or zero
// before the first sample.
func (p *pacer) btlBw() float64 {
	var best float64
	for _, s := range p.bw {
		if s.round > p.round-bwRounds {
			best = max(best, s.bw)
		}
	}
	return best
}

// linkBw is btlBw with the random loss put back: lost packets used the
// bottleneck too, so the delivery rate under loss p is (1-p) of the
// link's rate, and pacing at it would leave p of the link idle.
func (p *pacer) linkBw() float64 {
	return p.btlBw() / (1 - min(p.loss, maxLossComp))
}

// bdp is the bandwidth-delay product in bytes, or zero before the model
// has both.
func (p *pacer) bdp() float64 {
	if p.minRTT == 0 {
		return 0
	}
	return p.linkBw() * p.minRTT.Seconds()
}

// window is how many bytes may be in flight.
func (p *pacer) window() int {
	bdp := p.bdp()
	if bdp == 0 {
		return initialWindow
	}
	w := int(p.cwndGain*bdp) + 3*MaxDatagram
	return min(max(w, minWindow), maxWindow)
}

// rate is the pacing rate in bytes per second; zero means unpaced (before
// the first sample the window alone limits the sender).
func (p *pacer) rate() float64 {
	return p.pacingGain * p.linkBw()
}

// canSend reports whether pacing lets a packet go at now.
func (p *pacer) canSend(now time.Time) bool {
	return !p.nextSend.After(now)
}

// onSend records a transmission of size bytes at now; inflight is the
// bytes in flight before it, appLimited whether the sender has nothing
// more to send after it.
func (p *pacer) onSend(now time.Time, size, inflight int, appLimited bool) sendState {
	if inflight == 0 {
		p.firstSentAt, p.deliveredAt = now, now
	}
	if appLimited {
		p.appLimitedEnd = max(p.delivered+int64(inflight+size), 1)
	}
	if r := p.rate(); r > 0 {
		start := p.nextSend
		if floor := now.Add(-pacingBurst); start.Before(floor) {
			start = floor
		}
		p.nextSend = start.Add(time.Duration(float64(size) / r * float64(time.Second)))
	}
	return sendState{
		delivered:   p.delivered,
		deliveredAt: p.deliveredAt,
		firstSentAt: p.firstSentAt,
		appLimited:  p.appLimitedEnd != 0,
	}
}

// onLossRate feeds the loss average one resolved transmission.
func (p *pacer) onLossRate(lost bool) {
	x := 0.0
	if lost {
		x = 1
	}
	p.loss += (x - p.loss) / lossSmoothing
}

// onRTT takes a round-trip sample.
func (p *pacer) onRTT(now time.Time, rtt time.Duration) {
	if rtt <= 0 {
		return
	}
	if p.minRTT == 0 || rtt <= p.minRTT || now.Sub(p.minRTTAt) > minRTTWindow {
		p.minRTT, p.minRTTAt = rtt, now
	}
}

// onAck accounts for size newly acknowledged bytes, sent with st at
// sentAt (the latest transmission among those this acknowledgement
// covers), and moves the model on. inflight is the bytes still in flight.
func (p *pacer) onAck(now time.Time, size int, st sendState, sentAt time.Time, inflight int) {
	p.delivered += int64(size)
	p.deliveredAt = now
	if p.appLimitedEnd != 0 && p.delivered > p.appLimitedEnd {
		p.appLimitedEnd = 0
	}

	roundStart := false
	if st.delivered >= p.nextRoundDelivered {
		p.nextRoundDelivered = p.delivered
		p.round++
		roundStart = true
	}

	// The delivery rate over the interval this packet spanned: from the
	// acknowledgement before it was sent to now, or its send interval if
	// that was longer (an acknowledgement burst must not inflate it).
	interval := max(now.Sub(st.deliveredAt), sentAt.Sub(st.firstSentAt))
	p.firstSentAt = sentAt
	if interval > 0 {
		bw := float64(p.delivered-st.delivered) / interval.Seconds()
		if !st.appLimited || bw > p.btlBw() {
			slot := &p.bw[p.round%bwRounds]
			if slot.round != p.round {
				*slot = bwSample{round: p.round}
			}
			slot.bw = max(slot.bw, bw)
		}
	}

	p.update(now, roundStart, st.appLimited, inflight)
}

func (p *pacer) update(now time.Time, roundStart, appLimited bool, inflight int) {
	switch p.mode {
	case modeStartup:
		if roundStart && !appLimited {
			bw := p.btlBw()
			if bw >= p.fullBw*fullBwGrowth {
				p.fullBw, p.fullBwCount = bw, 0
			} else if p.fullBwCount++; p.fullBwCount >= fullBwRounds {
				p.mode, p.pacingGain, p.cwndGain = modeDrain, 1/startupGain, startupGain
			}
		}
		if p.mode != modeDrain {
			break
		}
		fallthrough
	case modeDrain:
		if float64(inflight) <= p.bdp() {
			p.enterProbeBW(now)
		}
	case modeProbeBW:
		elapsed := now.Sub(p.cycleAt) > p.minRTT
		switch g := probeGains[p.cycle]; {
		case g > 1: // probing: a round, and a queue to show for it
			if elapsed && float64(inflight) >= g*p.bdp() {
				p.nextPhase(now)
			} else if now.Sub(p.cycleAt) > 2*p.minRTT {
				p.nextPhase(now)
			}
		case g < 1: // draining: until the queue is gone, a round at most
			if elapsed || float64(inflight) <= p.bdp() {
				p.nextPhase(now)
			}
		default:
			if elapsed {
				p.nextPhase(now)
			}
		}
	}
}

func (p *pacer) enterProbeBW(now time.Time) {
	p.mode, p.cwndGain = modeProbeBW, cwndGain
	p.cycle, p.cycleAt = 2, now // start cruising, deterministically
	p.pacingGain = probeGains[p.cycle]
}

func (p *pacer) nextPhase(now time.Time) {
	p.cycle = (p.cycle + 1) % len(probeGains)
	p.cycleAt = now
	p.pacingGain = probeGains[p.cycle]
}

// seed starts the model from an earlier connection's view of the same
// path, so that a redial does not have to find the link's rate again.
func (p *pacer) seed(now time.Time, bw float64, minRTT time.Duration) {
	if bw <= 0 || minRTT <= 0 || math.IsInf(bw, 0) || math.IsNaN(bw) {
		return
	}
	p.bw[0] = bwSample{round: 0, bw: bw}
	p.minRTT, p.minRTTAt = minRTT, now
	p.fullBw = bw
	p.enterProbeBW(now)
}
