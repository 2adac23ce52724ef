package transport

import (
	"math"
	"time"
)

// The shield's sender paces by a model of the path, after BBR (Cardwell
// et al., "BBR: Congestion-Based Congestion Control", 2016): it measures
// the bottleneck's delivery rate and the round-trip time's floor, sends at
// that rate (with the random loss it measured put back) and keeps a
// quarter of a bandwidth-delay product more than the pipe holds in flight.
// Random loss does not slow it down, which is the point: the QUIC
// connection above it runs NewReno, whose window collapses under loss,
// and sees none. Unlike BBR it does not pace until the pipe is full (see
// rate) and has no ProbeRTT phase (see onRTT). docs/transport.md gives
// the measurements.
const (
	startupGain = 2.885 // 2/ln 2: doubles the delivery rate every round
	// startupCwndGain bounds what is in flight until the pipe is full: two
	// bandwidth-delay products, the pipe and a queue as deep as it, which
	// a modem's buffer holds. startupGain would let the overshoot of the
	// round in which the link fills overflow that buffer; the burst of
	// losses then outlasts the receiver's playout, and QUIC cuts its
	// window for good. (It does not hold QUIC back: the playout makes
	// QUIC's round trip about twice the link's, so QUIC's window is about
	// twice what the shield has in flight.)
	startupCwndGain = 2
	// cwndGain bounds what is in flight in the steady state: a quarter of
	// a bandwidth-delay product more than the pipe holds, so a queue at
	// the bottleneck never delays a retransmission past the receiver's
	// playout (BBR's 2 would let it stand a whole round trip).
	cwndGain     = 1.25
	fullBwGrowth = 1.25 // startup ends after fullBwRounds rounds below this growth
	fullBwRounds = 3
	bwRounds     = 10 // the bandwidth filter's window, in rounds
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

	bw     [bwRounds]bwSample // best sample of each recent round
	lastBw float64
	minRTT time.Duration
	// pingRTT is the least round trip a ping measured: pings carry
	// random ids, so a blind attacker cannot forge their answers, while
	// an acknowledgement of data can be forged by guessing a sequence
	// number. minRTT goes no lower than ackFloor of it on
	// acknowledgements alone.
	pingRTT time.Duration

	// Rounds: a round ends when a packet sent after the previous round
	// ended is acknowledged.
	round              int64
	nextRoundDelivered int64

	fullBw      float64
	fullBwCount int
	roundMinRTT time.Duration // the least RTT sample of this round
	// roundBytes and prevRoundBytes are what was delivered in this round
	// and the one before: a queue only says the pipe is full if this
	// sender is what fills it (see update).
	roundBytes, prevRoundBytes int64
	prevRoundMinRTT            time.Duration
	roundRTTs                  int // RTT samples this round
	lastRTT                    time.Duration

	cycle   int
	cycleAt time.Time

	// Delivery-rate sampling.
	delivered     int64
	deliveredAt   time.Time
	firstSentAt   time.Time
	appLimitedEnd int64 // samples of packets sent before delivered reached this are app-limited

	loss float64 // average share of transmissions lost

	cwnd int // the in-flight limit: grows with what is delivered, up to the model's

	nextSend time.Time // pacing: when the next packet may go
}

func newPacer() *pacer {
	return &pacer{mode: modeStartup, pacingGain: startupGain, cwndGain: startupCwndGain, cwnd: initialWindow}
}

// btlBw is the bottleneck bandwidth estimate in bytes per second, or zero
// before the first sample. When the filter's window holds no sample (the
// sender was limited by QUIC, and its samples said nothing new), the
// last estimate stands.
func (p *pacer) btlBw() float64 {
	var best float64
	for _, s := range p.bw {
		if s.round > p.round-bwRounds {
			best = max(best, s.bw)
		}
	}
	if best == 0 {
		return p.lastBw
	}
	p.lastBw = best
	return best
}

// linkBw is btlBw with the random loss put back: lost packets used the
// bottleneck too, so the delivery rate under loss p is (1-p) of the
// link's rate, and pacing at it would leave p of the link idle. Only
// while no queue stands: if pacing faster builds one, the loss may be
// the queue's, and the compensation stops until it has drained.
func (p *pacer) linkBw() float64 {
	if p.queueing() {
		return p.btlBw()
	}
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

// target is the in-flight limit the model asks for.
func (p *pacer) target() int {
	w := int(p.cwndGain*p.bdp()) + 3*MaxDatagram
	return min(max(w, minWindow), maxWindow)
}

// window is how many bytes may be in flight.
func (p *pacer) window() int { return p.cwnd }

// rate is the pacing rate in bytes per second; zero means unpaced. Until
// the pipe is full the pacer paces at 2.885 times the delivery rate: the
// QUIC connection above is in slow start, which grows its rate by at most
// that much in a round, and a standing queue here would end it (quic-go
// leaves slow start when the round trip grows by 16 ms) long before the
// link is full.
func (p *pacer) rate() float64 {
	if p.mode == modeStartup {
		if p.minRTT == 0 {
			return 0
		}
		return startupGain * max(p.btlBw(), initialWindow/p.minRTT.Seconds())
	}
	return p.pacingGain * p.linkBw()
}

// canSend reports whether pacing lets a packet of size bytes go at now.
// Small packets (QUIC's acknowledgements) are never held back.
func (p *pacer) canSend(now time.Time, size int) bool {
	return size < smallPacket || !p.nextSend.After(now)
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
	p.charge(now, size)
	return sendState{
		delivered:   p.delivered,
		deliveredAt: p.deliveredAt,
		firstSentAt: p.firstSentAt,
		appLimited:  p.appLimitedEnd != 0,
	}
}

// charge takes size bytes sent at now off the pacing budget.
func (p *pacer) charge(now time.Time, size int) {
	if r := p.rate(); r > 0 {
		start := p.nextSend
		if floor := now.Add(-pacingBurst); start.Before(floor) {
			start = floor
		}
		p.nextSend = start.Add(time.Duration(float64(size) / r * float64(time.Second)))
	}
}

// onLossRate feeds the loss average one resolved transmission. A loss
// while a queue stands at the bottleneck may be the queue overflowing:
// only losses on an empty queue count as the link's random loss, which
// the pacer puts back into its rate.
func (p *pacer) onLossRate(lost bool) {
	x := 0.0
	if lost {
		if p.queueing() {
			return
		}
		x = 1
	}
	p.loss += (x - p.loss) / lossSmoothing
}

// queueing reports whether the round trips show a queue at the
// bottleneck: the least of the last round's, or the latest, is a quarter
// of the floor more, and 10 ms.
func (p *pacer) queueing() bool {
	if p.minRTT == 0 {
		return false
	}
	limit := p.minRTT + max(p.minRTT/4, 10*time.Millisecond)
	return p.prevRoundMinRTT > limit || p.lastRTT > limit
}

// ackFloor is how far under the least round trip a ping measured an
// acknowledgement's sample may take minRTT: a forged acknowledgement
// shortens the playout by no more than that.
const ackFloor = 0.875

// onRTT takes a round-trip sample; fromPing says it is a ping's.
func (p *pacer) onRTT(rtt time.Duration, fromPing bool) {
	if rtt <= 0 {
		return
	}
	p.lastRTT = rtt
	p.roundRTTs++
	if p.roundMinRTT == 0 || rtt < p.roundMinRTT {
		p.roundMinRTT = rtt
	}
	// The floor is the least sample ever: without BBR's ProbeRTT (which
	// would stall the QUIC connection above), a windowed minimum drifts
	// up with the queue it is meant to leave out, and the playout delay
	// built on it must not change. Only a ping's sample sets it at
	// first, and an acknowledgement's lowers it no further than ackFloor
	// of the least ping's (docs/transport.md, "Hostile input").
	floor := rtt
	if fromPing {
		if p.pingRTT == 0 || rtt < p.pingRTT {
			p.pingRTT = rtt
		}
	} else {
		if p.pingRTT == 0 {
			return
		}
		floor = max(rtt, time.Duration(float64(p.pingRTT)*ackFloor))
	}
	if p.minRTT == 0 || floor <= p.minRTT {
		p.minRTT = floor
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
	p.roundBytes += int64(size)

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

	// The window grows by what was delivered, as in slow start, up to the
	// model's target (two bandwidth-delay products in startup), never
	// below QUIC's initial window before the model has its first
	// samples.
	limit := p.target()
	if p.mode == modeStartup {
		limit = max(limit, initialWindow)
	}
	p.cwnd = max(min(p.cwnd+size, limit), minWindow)
}

func (p *pacer) update(now time.Time, roundStart, appLimited bool, inflight int) {
	switch p.mode {
	case modeStartup:
		// The pipe is full when a queue builds at the bottleneck (the
		// least of eight round trips in a round is a quarter over the
		// floor: as HyStart), or when the delivery rate stops growing
		// while the sender had more to send. Under QUIC the sender is
		// mostly limited by QUIC until the link is full, so the queue is
		// what tells.
		//
		// A sender of little (the hub, acknowledging an agent's upload)
		// sees the queue of the other direction in its round trips, as its
		// acknowledgements come back behind the upload: that says nothing
		// of its own path, and leaving startup on it would pace the next
		// burst (the bundle the hub sends down) at the trickle it measured.
		// So the queue counts once a round delivered a QUIC initial
		// window's worth.
		queue := p.roundRTTs >= 8 && p.minRTT > 0 && p.roundMinRTT > p.minRTT+max(p.minRTT/4, 10*time.Millisecond) &&
			max(p.roundBytes, p.prevRoundBytes) >= initialWindow
		if roundStart {
			p.prevRoundMinRTT, p.prevRoundBytes = p.roundMinRTT, p.roundBytes
			p.roundMinRTT, p.roundRTTs, p.roundBytes = 0, 0, 0
			if !appLimited {
				if bw := p.btlBw(); bw >= p.fullBw*fullBwGrowth {
					p.fullBw, p.fullBwCount = bw, 0
				} else {
					p.fullBwCount++
				}
			}
		}
		if queue || p.fullBwCount >= fullBwRounds {
			p.mode, p.pacingGain, p.cwndGain = modeDrain, 1/startupGain, startupCwndGain
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
		if roundStart {
			p.prevRoundMinRTT = p.roundMinRTT
			p.roundMinRTT, p.roundRTTs = 0, 0
		}
		// Each phase lasts a round trip; draining ends early once the
		// queue it drains is gone.
		elapsed := now.Sub(p.cycleAt) > p.minRTT
		if elapsed || probeGains[p.cycle] < 1 && float64(inflight) <= p.bdp() {
			p.nextPhase(now)
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
	// The remembered rate counts for two rounds only: if the link is
	// slower now, its own samples take over before long.
	p.bw[0] = bwSample{round: p.round - bwRounds + 2, bw: bw}
	p.minRTT, p.pingRTT = minRTT, minRTT
	p.fullBw = bw
	p.enterProbeBW(now)
	p.cwnd = max(p.cwnd, p.target())
}
