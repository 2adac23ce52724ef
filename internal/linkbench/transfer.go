package linkbench

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"fieldsync/internal/linksim"
	"fieldsync/internal/transport"
	"fieldsync/protocol"
)

// Method is one way of moving the payload over QUIC.
type Method struct {
	Name string
	// Plain dials without the shield (transport.Dialer.Plain); the hub
	// always listens with one, and talks plain QUIC to plain agents.
	Plain bool
	// NoPlayout turns the shield's playout off at both ends.
	NoPlayout bool
	// Conns stripes the chunks over this many QUIC connections on one
	// quic.Transport; zero means one session, as the agent runs it.
	// Striped transfers do not resume.
	Conns int
	// Config replaces transport.QUICConfig() at both ends.
	Config func() *quic.Config
}

// The methods the benchmark compares.
var (
	// Shielded is what fieldsync uses: one session over the shield.
	Shielded = Method{Name: "fieldsync (quic+shield)"}
	// Plain is one quic-go connection with transport.QUICConfig() and no
	// shield: the constraint to beat.
	Plain = Method{Name: "quic, no shield", Plain: true}
)

// Striped returns the method that stripes chunks over n plain
// connections on one quic.Transport.
func Striped(n int) Method {
	return Method{Name: fmt.Sprintf("quic ×%d conns, no shield", n), Plain: true, Conns: n}
}

// Object is one thing the agent sends, acknowledged as a whole: a sealed
// bundle or an encrypted attachment.
type Object struct {
	Name string
	Data []byte
}

// Run is one transfer to measure.
type Run struct {
	Profile linksim.Profile
	Seed    int64
	Objects []Object
	Method  Method
	// Outage takes the link down for this long once the hub holds half
	// of the bytes: linksim.CutOutage is the SPEC's cut.
	Outage time.Duration
	// Limit bounds the transfer in virtual time; zero means two hours.
	Limit time.Duration
}

// Result is what a Run measured.
type Result struct {
	Profile, Method string
	Bytes           int64         // object bytes moved
	Took            time.Duration // from the first dial to the last acknowledgement
	Up, Down        linksim.Traffic
	QUIC            quic.ConnectionStats // the agent's last connection
	Dials           int                  // connections the agent made
	// ChunkBytesResent is the bundle bytes the agent sent twice because a
	// session started over from the hub's durable offset.
	ChunkBytesResent int64
	// OutageAt is when the outage began, from the start. ResumeAfter is
	// how long after the link came back the hub got data again.
	// LinkBytesLost is the bytes the outage destroyed (in flight, or
	// written while the link was down), which had to be sent again.
	OutageAt, ResumeAfter time.Duration
	LinkBytesLost         int64
	// Steady is the hub's receive rate between a quarter and three
	// quarters of the bytes, as a share of the link's rate: the rate
	// once the handshake and slow start are behind.
	Steady float64
	// DownTime is how long the link was down during the transfer: the
	// outage, and the profile's scheduled ones (a LEO terminal's
	// handovers).
	DownTime time.Duration
	Err      error
}

// Goodput returns the object bytes moved per second of the link's time
// as a share of its rate: the time the link was down does not count,
// since nothing can use it.
func (r Result) Goodput(p linksim.Profile) float64 {
	took := r.Took - r.DownTime
	if p.Rate == 0 || took <= 0 {
		return 0
	}
	return float64(r.Bytes) * 8 / took.Seconds() / float64(p.Rate)
}

// LinkPerByte is the bytes the transfer put on the link, both ways,
// headers included, per object byte.
func (r Result) LinkPerByte() float64 {
	if r.Bytes == 0 {
		return 0
	}
	return float64(r.Up.Sent.WireBytes()+r.Down.Sent.WireBytes()) / float64(r.Bytes)
}

// Transfer runs r and measures it. It must run inside a testing/synctest
// bubble: it simulates the link with linksim, and its clock is virtual.
func Transfer(ctx context.Context, r Run) Result {
	res := Result{Profile: r.Profile.Name, Method: r.Method.Name}
	for _, o := range r.Objects {
		res.Bytes += int64(len(o.Data))
	}
	limit := r.Limit
	if limit == 0 {
		limit = 2 * time.Hour
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()

	serverTLS, clientTLS, err := tlsPair()
	if err != nil {
		res.Err = err
		return res
	}
	conf := transport.QUICConfig
	if r.Method.Config != nil {
		conf = r.Method.Config
	}

	pathStart := time.Now()
	path := linksim.NewPath(r.Profile, r.Seed)
	agentEnd, hubEnd := path.Endpoints()
	watch := &arrivals{PacketConn: hubEnd}
	ln, err := (&transport.ListenConfig{QUIC: conf(), NoPlayout: r.Method.NoPlayout}).Listen(watch, serverTLS)
	if err != nil {
		path.Close()
		res.Err = err
		return res
	}
	socks := linksim.NewSockets(agentEnd)
	dialer := &transport.Dialer{ListenPacket: socks.Open, Plain: r.Method.Plain, NoPlayout: r.Method.NoPlayout, Config: conf()}
	defer func() {
		dialer.Wait()
		ln.Shutdown()
		socks.Close()
	}()

	hub := newReceiver(r.Objects)
	start := time.Now()
	var outageOnce sync.Once
	var cutAt time.Time
	hub.onHalf = func() {
		if r.Outage <= 0 {
			return
		}
		outageOnce.Do(func() {
			cutAt = time.Now()
			res.OutageAt = time.Since(start)
			watch.mark(r.Profile.UpAt(pathStart, time.Now().Add(r.Outage)))
			path.Cut(r.Outage)
		})
	}
	hubCtx, hubCancel := context.WithCancel(ctx)
	var hubWG sync.WaitGroup
	hubWG.Go(func() { hub.serve(hubCtx, ln) })
	defer func() {
		hubCancel()
		hubWG.Wait()
	}()

	a := &agent{dialer: dialer, addr: hubEnd.LocalAddr().String(), tls: clientTLS, objs: r.Objects}
	if r.Method.Conns > 1 {
		sock, _ := socks.Open()
		tr := &quic.Transport{Conn: sock}
		res.Err = a.striped(ctx, tr, hubEnd.LocalAddr(), conf(), r.Method.Conns)
		sock.Close()
		tr.Close()
	} else {
		res.Err = a.session(ctx)
	}
	res.Took = time.Since(start)
	end := time.Now()
	res.QUIC, res.Dials, res.ChunkBytesResent = a.stats, a.dials, a.resent
	if up, first := watch.times(); !up.IsZero() && !first.IsZero() {
		res.ResumeAfter = first.Sub(up)
	}
	hubCancel()
	hubWG.Wait()
	dialer.Wait()
	// The hub's goroutine, which took the link down, has ended: cutAt is
	// final.
	down := linkDown{p: r.Profile, start: pathStart, cutAt: cutAt, cut: r.Outage}
	res.DownTime = down.between(start, end)
	s := path.Stats()
	res.Up, res.Down = s.Uplink, s.Downlink
	res.LinkBytesLost = s.Uplink.OutageDrops.Bytes
	if res.Err == nil {
		res.Err = hub.check()
	}
	if r.Method.Conns <= 1 {
		// Striped chunks complete in bursts: no steady rate to speak of.
		res.Steady = steady(r.Profile, int64(hub.total), hub.q1, hub.q3, down.between(hub.q1, hub.q3))
	}
	return res
}

// linkDown is when a path of p, started at start, was down: its
// scheduled outages, and a cut of the given length at cutAt (if cutAt is
// not zero).
type linkDown struct {
	p     linksim.Profile
	start time.Time
	cutAt time.Time
	cut   time.Duration
}

// between returns how long the link was down between a and b. A
// scheduled outage during the cut does not count twice.
func (d linkDown) between(a, b time.Time) time.Duration {
	if d.cutAt.IsZero() || d.cut <= 0 {
		return d.p.DownBetween(d.start, a, b)
	}
	cutEnd := d.cutAt.Add(d.cut)
	clamp := func(t time.Time) time.Time {
		if t.Before(a) {
			return a
		}
		if t.After(b) {
			return b
		}
		return t
	}
	from, to := clamp(d.cutAt), clamp(cutEnd)
	return d.p.DownBetween(d.start, a, from) + to.Sub(from) + d.p.DownBetween(d.start, to, b)
}

// steady is the rate at which the middle half of total bytes arrived,
// between q1 and q3 (the time the link was down in between excluded), as
// a share of the link's rate.
func steady(p linksim.Profile, total int64, q1, q3 time.Time, down time.Duration) float64 {
	d := q3.Sub(q1)
	if d > down {
		d -= down
	}
	if q1.IsZero() || q3.IsZero() || d <= 0 || p.Rate == 0 {
		return 0
	}
	return float64(total/2) * 8 / d.Seconds() / float64(p.Rate)
}

// tlsPair returns the hub's and an agent's TLS configurations, made with
// the real transport code (inside the bubble: the certificates' validity
// is checked against its clock).
func tlsPair() (server, client *tls.Config, err error) {
	_, hubKey, _ := ed25519.GenerateKey(nil)
	_, agentKey, _ := ed25519.GenerateKey(nil)
	server, err = transport.ServerTLS(hubKey)
	if err != nil {
		return nil, nil, err
	}
	pin := protocol.Fingerprint(hubKey.Public().(ed25519.PublicKey))
	client, err = transport.ClientTLS(agentKey, pin, tls.NewLRUClientSessionCache(4))
	return server, client, err
}

// agent sends the objects as the agent's sync does.
type agent struct {
	dialer *transport.Dialer
	addr   string
	tls    *tls.Config
	objs   []Object

	dials  int
	resent int64 // chunk bytes sent again after a session started over
	high   []int // per object, how far it was ever sent
	sent   bool  // a session sent something: the hub may hold part of it
	stats  quic.ConnectionStats
}

// session runs sessions until every object is acknowledged: a session
// that fails is dialled again at once, and resumes from what the hub
// holds durably.
func (a *agent) session(ctx context.Context) error {
	a.high = make([]int, len(a.objs))
	var last error
	for ctx.Err() == nil {
		done, err := a.once(ctx)
		if done {
			return nil
		}
		last = err
	}
	return fmt.Errorf("transfer did not complete: %w", errors.Join(last, ctx.Err()))
}

// once runs one session; it reports whether everything is acknowledged.
func (a *agent) once(ctx context.Context) (bool, error) {
	a.dials++
	dctx, cancel := context.WithTimeout(ctx, 2*transport.HandshakeTimeout)
	conn, err := a.dialer.Dial(dctx, a.addr, a.tls)
	cancel()
	if err != nil {
		return false, err
	}
	defer func() {
		a.stats = conn.ConnectionStats()
		conn.CloseWithError(0, "")
	}()
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return false, err
	}
	stop := context.AfterFunc(ctx, func() { str.CancelRead(0); str.CancelWrite(0) })
	defer stop()
	r := bufio.NewReader(str)
	hello := &protocol.Hello{Version: protocol.Version, Agent: "A-1", Site: "S-1", BundleHWM: uint64(len(a.objs))}
	if err := protocol.WriteMessage(str, hello); err != nil {
		return false, err
	}
	// As the agent's sync does, a session sends right behind its Hello
	// until one has sent something; after that, the hub may hold part of
	// an object, and the HelloOK says from where to resume.
	var ok *protocol.HelloOK
	if a.sent {
		msg, err := protocol.ReadMessage(r)
		if err != nil {
			return false, err
		}
		var isOK bool
		if ok, isOK = msg.(*protocol.HelloOK); !isOK {
			return false, fmt.Errorf("hub answered %T", msg)
		}
	}
	acked := make(chan error, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		for {
			msg, err := protocol.ReadMessage(r)
			if err != nil {
				acked <- err
				return
			}
			if _, bye := msg.(*protocol.Bye); bye {
				acked <- nil
				return
			}
		}
	})
	from := 0
	if ok != nil {
		from = int(ok.HubHWM)
	}
	for i := from; i < len(a.objs); i++ {
		off := 0
		if ok != nil && ok.Partial.Seq == uint64(i+1) {
			off = int(ok.Partial.Offset)
		}
		if err := a.sendObject(str, i, off); err != nil {
			conn.CloseWithError(0, "")
			return false, err
		}
	}
	if err := protocol.WriteMessage(str, &protocol.Done{}); err != nil {
		conn.CloseWithError(0, "")
		return false, err
	}
	err = <-acked
	return err == nil, err
}

func (a *agent) sendObject(w io.Writer, i, off int) error {
	data := a.objs[i].Data
	for {
		n := min(protocol.MaxChunk, len(data)-off)
		end := off + n
		if end <= a.high[i] {
			a.resent += int64(n)
		} else if off < a.high[i] {
			a.resent += int64(a.high[i] - off)
		}
		a.high[i] = max(a.high[i], end)
		a.sent = true
		c := &protocol.Chunk{Seq: uint64(i + 1), Offset: uint64(off), Total: uint64(len(data)), Final: end == len(data), Data: data[off:end]}
		if err := protocol.WriteMessage(w, c); err != nil {
			return err
		}
		if end == len(data) {
			return nil
		}
		off = end
	}
}

// striped sends the chunks over n connections on one quic.Transport,
// each taking the next chunk, and waits for every object's Ack. It does
// not resume: it measures striping as a lever (docs/transport.md).
func (a *agent) striped(ctx context.Context, tr *quic.Transport, hub net.Addr, conf *quic.Config, n int) error {
	var conns []*quic.Conn
	for range n {
		a.dials++
		c, err := tr.Dial(ctx, hub, a.tls, conf)
		if err != nil {
			return err
		}
		defer c.CloseWithError(0, "")
		conns = append(conns, c)
	}
	type chunk struct{ obj, off, n int }
	work := make(chan chunk, 1<<16)
	for i, o := range a.objs {
		for off := 0; off < len(o.Data); off += protocol.MaxChunk {
			work <- chunk{i, off, min(protocol.MaxChunk, len(o.Data)-off)}
		}
	}
	close(work)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	acks := make(chan struct{}, len(a.objs))
	errs := make(chan error, 2*n)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for _, conn := range conns {
		str, err := conn.OpenStreamSync(ctx)
		if err != nil {
			return err
		}
		stop := context.AfterFunc(ctx, func() { str.CancelRead(0); str.CancelWrite(0) })
		defer stop()
		if err := protocol.WriteMessage(str, &protocol.Hello{Version: protocol.Version, Agent: "A-1", Site: "S-1"}); err != nil {
			return err
		}
		wg.Go(func() {
			for c := range work {
				o := a.objs[c.obj].Data
				m := &protocol.Chunk{Seq: uint64(c.obj + 1), Offset: uint64(c.off), Total: uint64(len(o)),
					Final: c.off+c.n == len(o), Data: o[c.off : c.off+c.n]}
				if err := protocol.WriteMessage(str, m); err != nil {
					errs <- err
					return
				}
			}
			protocol.WriteMessage(str, &protocol.Done{})
		})
		wg.Go(func() {
			r := bufio.NewReader(str)
			for {
				msg, err := protocol.ReadMessage(r)
				if err != nil {
					return
				}
				if _, ok := msg.(*protocol.Ack); ok {
					acks <- struct{}{}
				}
			}
		})
	}
	for range a.objs {
		select {
		case <-acks:
		case err := <-errs:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	a.stats = conns[0].ConnectionStats()
	return nil
}

// receiver is the hub's end. As the hub, it holds each object's bytes in
// order, as far as whole chunks reached (its durable offset, which it
// reports in HelloOK.Partial), and acknowledges each object once whole.
// For striped transfers it takes chunks at any offset.
type receiver struct {
	mu     sync.Mutex
	want   []Object
	got    [][]byte
	have   []int // durable bytes of each object
	seen   []int // bytes received at any offset (striped)
	hwm    int   // objects whole, in order
	total  int
	bytes  int
	half   bool
	onHalf func()
	// Times at which a quarter and three quarters of the bytes were in.
	q1, q3 time.Time
}

func newReceiver(objs []Object) *receiver {
	r := &receiver{want: objs, got: make([][]byte, len(objs)), have: make([]int, len(objs)), seen: make([]int, len(objs))}
	for i, o := range objs {
		r.got[i] = make([]byte, len(o.Data))
		r.total += len(o.Data)
	}
	return r
}

func (r *receiver) serve(ctx context.Context, ln *transport.Listener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		wg.Go(func() {
			defer conn.CloseWithError(0, "")
			str, err := conn.AcceptStream(ctx)
			if err != nil {
				return
			}
			stop := context.AfterFunc(ctx, func() { str.CancelRead(0); str.CancelWrite(0) })
			defer stop()
			r.session(str)
			// As the hub: the agent closes once it has read the last
			// message.
			select {
			case <-conn.Context().Done():
			case <-ctx.Done():
			case <-time.After(10 * time.Second):
			}
		})
	}
}

// session serves one agent session on str.
func (r *receiver) session(str *quic.Stream) {
	br := bufio.NewReader(str)
	msg, err := protocol.ReadMessage(br)
	if err != nil {
		return
	}
	hello, ok := msg.(*protocol.Hello)
	if !ok {
		return
	}
	striped := hello.BundleHWM == 0
	r.mu.Lock()
	okMsg := &protocol.HelloOK{Version: protocol.Version, HubHWM: uint64(r.hwm)}
	if r.hwm < len(r.have) && r.have[r.hwm] > 0 {
		okMsg.Partial = protocol.Partial{Seq: uint64(r.hwm + 1), Offset: uint64(r.have[r.hwm])}
	}
	r.mu.Unlock()
	if !striped {
		if err := protocol.WriteMessage(str, okMsg); err != nil {
			return
		}
	}
	for {
		msg, err := protocol.ReadMessage(br)
		if err != nil {
			return
		}
		c, ok := msg.(*protocol.Chunk)
		if !ok {
			break // done
		}
		if r.take(c, striped) {
			if err := protocol.WriteMessage(str, &protocol.Ack{Seq: c.Seq, State: protocol.AckApplied}); err != nil {
				return
			}
		}
	}
	protocol.WriteMessage(str, &protocol.Bye{})
	str.Close()
}

// take stores a chunk; it reports whether the chunk completed its object.
func (r *receiver) take(c *protocol.Chunk, striped bool) bool {
	r.mu.Lock()
	i := int(c.Seq) - 1
	end := int(c.Offset) + len(c.Data)
	if i < 0 || i >= len(r.got) || end > len(r.got[i]) || !striped && int(c.Offset) > r.have[i] {
		r.mu.Unlock()
		return false
	}
	copy(r.got[i][c.Offset:], c.Data)
	fresh := 0
	if striped {
		r.seen[i] += len(c.Data)
		fresh = len(c.Data)
	} else if end > r.have[i] {
		fresh = end - r.have[i]
		r.have[i] = end
	}
	r.bytes += fresh
	whole := striped && r.seen[i] == len(r.got[i]) || !striped && r.have[i] == len(r.got[i]) && fresh > 0
	if whole && !striped {
		r.hwm = max(r.hwm, i+1)
	}
	if whole && striped {
		r.have[i] = len(r.got[i])
	}
	half := !r.half && 2*r.bytes >= r.total
	r.half = r.half || half
	if r.q1.IsZero() && 4*r.bytes >= r.total {
		r.q1 = time.Now()
	}
	if r.q3.IsZero() && 4*r.bytes >= 3*r.total {
		r.q3 = time.Now()
	}
	r.mu.Unlock()
	if half && r.onHalf != nil {
		r.onHalf()
	}
	return whole
}

// check reports whether every object arrived intact.
func (r *receiver) check() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, o := range r.want {
		if r.have[i] != len(o.Data) || string(r.got[i]) != string(o.Data) {
			return fmt.Errorf("object %q: hub holds %d bytes that differ from the %d sent", o.Name, r.have[i], len(o.Data))
		}
	}
	return nil
}

// arrivals watches the hub's end of the path: after mark(t), it notes
// when the first full-size datagram arrives from t on (the link's return).
type arrivals struct {
	net.PacketConn
	mu         sync.Mutex
	up         time.Time
	firstAfter time.Time
}

func (a *arrivals) mark(up time.Time) {
	a.mu.Lock()
	a.up = up
	a.mu.Unlock()
}

func (a *arrivals) times() (up, first time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.up, a.firstAfter
}

func (a *arrivals) ReadFrom(b []byte) (int, net.Addr, error) {
	n, addr, err := a.PacketConn.ReadFrom(b)
	if err == nil && n > 1000 {
		a.mu.Lock()
		if !a.up.IsZero() && a.firstAfter.IsZero() && !time.Now().Before(a.up) {
			a.firstAfter = time.Now()
		}
		a.mu.Unlock()
	}
	return n, addr, err
}
