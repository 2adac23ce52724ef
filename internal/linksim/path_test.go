package linksim_test

import (
	"encoding/binary"
	"errors"
	"math"
	"net"
	"os"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"fieldsync/internal/linksim"
)

// packet is a datagram of size bytes that carries its sequence number.
func packet(seq, size int) []byte {
	b := make([]byte, max(size, 8))
	binary.BigEndian.PutUint64(b, uint64(seq))
	return b
}

// arrival is one datagram read, and when.
type arrival struct {
	seq int
	at  time.Duration // since the reader started
	n   int
}

// collect reads datagrams from c until it is closed, then sends what it
// read on the returned channel.
func collect(c net.PacketConn) <-chan []arrival {
	out := make(chan []arrival, 1)
	start := time.Now()
	go func() {
		var got []arrival
		buf := make([]byte, 64<<10)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				out <- got
				return
			}
			got = append(got, arrival{seq: int(binary.BigEndian.Uint64(buf)), at: time.Since(start), n: n})
		}
	}()
	return out
}

// ends returns a path's ends as writer and reader for one direction.
func ends(p *linksim.Path, downlink bool) (from, to *linksim.Conn) {
	agent, hub := p.Endpoints()
	if downlink {
		return hub, agent
	}
	return agent, hub
}

func traffic(s linksim.Stats, downlink bool) linksim.Traffic {
	if downlink {
		return s.Downlink
	}
	return s.Uplink
}

func direction(downlink bool) string {
	if downlink {
		return "downlink"
	}
	return "uplink"
}

func TestDelay(t *testing.T) {
	tests := []struct {
		name string
		p    linksim.Profile
	}{
		{"lan", linksim.Profile{}},
		{"leo delay", linksim.Profile{Delay: 20 * time.Millisecond}},
		{"geo delay", linksim.Profile{Delay: 300 * time.Millisecond}},
		{"a downlink of its own", linksim.Profile{Delay: 300 * time.Millisecond, Downlink: &linksim.Impairments{Delay: 20 * time.Millisecond}}},
	}
	for _, tt := range tests {
		for _, down := range []bool{false, true} {
			t.Run(tt.name+"/"+direction(down), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					path := linksim.NewPath(tt.p, 1)
					defer path.Close()
					from, to := ends(path, down)
					start := time.Now()
					if _, err := from.WriteTo([]byte("hello"), to.LocalAddr()); err != nil {
						t.Fatal(err)
					}
					buf := make([]byte, 100)
					n, addr, err := to.ReadFrom(buf)
					if err != nil {
						t.Fatal(err)
					}
					want := tt.p.Delay
					if down && tt.p.Downlink != nil {
						want = tt.p.Downlink.Delay
					}
					if got := time.Since(start); got != want {
						t.Errorf("arrived after %v, want %v", got, want)
					}
					if string(buf[:n]) != "hello" || addr.String() != from.LocalAddr().String() {
						t.Errorf("read %q from %v, want %q from %v", buf[:n], addr, "hello", from.LocalAddr())
					}
				})
			})
		}
	}
}

func TestRate(t *testing.T) {
	const (
		count = 50
		size  = 1000 - linksim.UDPOverhead // 1000 bytes on the wire
		delay = 100 * time.Millisecond
	)
	p := linksim.Profile{Delay: delay, Rate: 8_000_000, DownRate: 16_000_000, QueueBytes: -1}
	tests := []struct {
		downlink bool
		perPkt   time.Duration // 1000 bytes at the direction's rate
	}{
		{false, time.Millisecond},
		{true, 500 * time.Microsecond},
	}
	for _, tt := range tests {
		t.Run(direction(tt.downlink), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				path := linksim.NewPath(p, 1)
				from, to := ends(path, tt.downlink)
				got := collect(to)
				for i := range count {
					from.WriteTo(packet(i, size), to.LocalAddr())
				}
				time.Sleep(delay + count*tt.perPkt)
				synctest.Wait()
				path.Close()
				arrivals := <-got
				if len(arrivals) != count {
					t.Fatalf("%d datagrams arrived, want %d", len(arrivals), count)
				}
				for i, a := range arrivals {
					want := delay + time.Duration(i+1)*tt.perPkt
					if a.seq != i || a.at != want || a.n != size {
						t.Errorf("datagram %d: got seq %d of %d bytes at %v, want at %v", i, a.seq, a.n, a.at, want)
					}
				}
				tr := traffic(path.Stats(), tt.downlink)
				want := linksim.Counter{Packets: count, Bytes: count * size}
				if tr.Sent != want || tr.Delivered != want {
					t.Errorf("stats = %+v, want %+v sent and delivered", tr, want)
				}
			})
		})
	}
}

// lossRun sends n datagrams over a path of p and returns which arrived and
// the stats.
func lossRun(t *testing.T, p linksim.Profile, seed int64, n int) (seqs []int, stats linksim.Stats) {
	synctest.Test(t, func(t *testing.T) {
		path := linksim.NewPath(p, seed)
		agent, hub := path.Endpoints()
		got := collect(hub)
		for i := range n {
			agent.WriteTo(packet(i, 8), hub.LocalAddr())
		}
		time.Sleep(p.Delay + p.Jitter)
		synctest.Wait()
		path.Close()
		for _, a := range <-got {
			seqs = append(seqs, a.seq)
		}
		stats = path.Stats()
	})
	return seqs, stats
}

func TestLoss(t *testing.T) {
	const n = 100_000
	tests := []struct {
		name string
		p    linksim.Profile
	}{
		{"geo", linksim.Profile{Delay: 300 * time.Millisecond, Loss: 0.01}},
		{"geo-bad", linksim.Profile{Delay: 350 * time.Millisecond, Loss: 0.05}},
		{"leo with jitter", linksim.Profile{Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond, Loss: 0.005}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			seqs, stats := lossRun(t, tt.p, 42, n)
			up := stats.Uplink
			mean := n * tt.p.Loss
			tolerance := 5 * math.Sqrt(mean*(1-tt.p.Loss))
			if got := float64(up.Lost.Packets); math.Abs(got-mean) > tolerance {
				t.Errorf("lost %v of %d, want %v ± %.0f", got, n, mean, tolerance)
			}
			if up.Sent.Packets != n || up.Delivered.Packets+up.Lost.Packets != n || len(seqs) != int(up.Delivered.Packets) {
				t.Errorf("stats %+v do not add up to %d sent, %d read", up, n, len(seqs))
			}
			if !slices.IsSorted(seqs) {
				t.Error("datagrams were reordered")
			}

			again, _ := lossRun(t, tt.p, 42, n)
			if !slices.Equal(seqs, again) {
				t.Error("the same seed lost different datagrams")
			}
			other, _ := lossRun(t, tt.p, 43, n)
			if slices.Equal(seqs, other) {
				t.Error("another seed lost the same datagrams")
			}
		})
	}
}

func TestQueueDrops(t *testing.T) {
	const size = 1000 - linksim.UDPOverhead // 1 ms each at 8 Mbit/s
	p := linksim.Profile{Delay: 50 * time.Millisecond, Rate: 8_000_000, QueueBytes: 10_000}
	synctest.Test(t, func(t *testing.T) {
		path := linksim.NewPath(p, 1)
		agent, hub := path.Endpoints()
		got := collect(hub)
		for i := range 100 {
			agent.WriteTo(packet(i, size), hub.LocalAddr())
		}
		// Once the queue has drained, the link takes datagrams again.
		time.Sleep(10 * time.Millisecond)
		agent.WriteTo(packet(100, size), hub.LocalAddr())
		time.Sleep(time.Second)
		synctest.Wait()
		path.Close()

		var seqs []int
		for _, a := range <-got {
			seqs = append(seqs, a.seq)
		}
		want := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 100}
		if !slices.Equal(seqs, want) {
			t.Errorf("arrived %v, want %v", seqs, want)
		}
		up := path.Stats().Uplink
		if up.QueueDrops.Packets != 90 || up.QueueDrops.Bytes != 90*size || up.Delivered.Packets != 11 {
			t.Errorf("stats = %+v, want 90 queue drops and 11 delivered", up)
		}
	})
}

func TestReadBufferOverflow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := linksim.NewPath(linksim.Profile{}, 1)
		defer path.Close()
		agent, hub := path.Endpoints()
		if err := hub.SetReadBuffer(250); err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			agent.WriteTo(packet(i, 100), hub.LocalAddr())
		}
		synctest.Wait()
		up := path.Stats().Uplink
		if up.Delivered.Packets != 2 || up.QueueDrops.Packets != 1 {
			t.Errorf("stats = %+v, want 2 delivered and 1 dropped at the full read buffer", up)
		}
	})
}

// outageRun writes a datagram every step for total, in both directions,
// calling command (if any) at the start, and reports for each direction
// which sequence numbers arrived.
func outageRun(t *testing.T, p linksim.Profile, step, total time.Duration, command func(*linksim.Path)) (up, down []int, stats linksim.Stats) {
	path := linksim.NewPath(p, 1)
	agent, hub := path.Endpoints()
	gotUp, gotDown := collect(hub), collect(agent)
	if command != nil {
		go command(path)
	}
	for i := 0; time.Duration(i)*step < total; i++ {
		agent.WriteTo(packet(i, 100), hub.LocalAddr())
		hub.WriteTo(packet(i, 100), agent.LocalAddr())
		time.Sleep(step)
	}
	time.Sleep(p.Delay)
	synctest.Wait()
	path.Close()
	for _, a := range <-gotUp {
		up = append(up, a.seq)
	}
	for _, a := range <-gotDown {
		down = append(down, a.seq)
	}
	return up, down, path.Stats()
}

func TestOutage(t *testing.T) {
	const (
		delay = 30 * time.Millisecond
		step  = 10 * time.Millisecond
		total = 3 * time.Second
	)
	// down reports whether windows cover any of [t, t+delay].
	type window struct{ from, to time.Duration }
	lostIn := func(windows []window) func(time.Duration) bool {
		return func(t time.Duration) bool {
			for _, w := range windows {
				if t < w.to && t+delay >= w.from {
					return true
				}
			}
			return false
		}
	}
	tests := []struct {
		name    string
		p       linksim.Profile
		command func(*linksim.Path)
		windows []window
		// downWindows, if set, are the downlink's, and windows the
		// uplink's alone.
		downWindows []window
	}{
		{
			name:    "scheduled",
			p:       linksim.Profile{Delay: delay, OutageEvery: time.Second, OutageFor: 200 * time.Millisecond},
			windows: []window{{time.Second, 1200 * time.Millisecond}, {2 * time.Second, 2200 * time.Millisecond}, {3 * time.Second, 3200 * time.Millisecond}},
		},
		{
			name: "cut",
			p:    linksim.Profile{Delay: delay},
			command: func(p *linksim.Path) {
				time.Sleep(505 * time.Millisecond)
				p.Cut(time.Second)
			},
			windows: []window{{505 * time.Millisecond, 1505 * time.Millisecond}},
		},
		{
			name: "down and up",
			p:    linksim.Profile{Delay: delay},
			command: func(p *linksim.Path) {
				time.Sleep(time.Second + 5*time.Millisecond)
				p.Down()
				p.Down() // still one outage
				time.Sleep(500 * time.Millisecond)
				p.Up()
			},
			windows: []window{{1005 * time.Millisecond, 1505 * time.Millisecond}},
		},
		{
			name: "down ends a cut early, up ends down",
			p:    linksim.Profile{Delay: delay},
			command: func(p *linksim.Path) {
				time.Sleep(time.Second + 5*time.Millisecond)
				p.Cut(100 * time.Millisecond)
				p.Down()
				time.Sleep(time.Second)
				p.Up()
			},
			windows: []window{{1005 * time.Millisecond, 2005 * time.Millisecond}},
		},
		{
			name: "uplink only",
			p:    linksim.Profile{Delay: delay},
			command: func(p *linksim.Path) {
				time.Sleep(time.Second + 5*time.Millisecond)
				p.Down(linksim.Uplink)
				time.Sleep(500 * time.Millisecond)
				p.Up()
			},
			windows:     []window{{1005 * time.Millisecond, 1505 * time.Millisecond}},
			downWindows: []window{},
		},
		{
			name: "the uplink held through a cut",
			p:    linksim.Profile{Delay: delay},
			command: func(p *linksim.Path) {
				time.Sleep(time.Second + 5*time.Millisecond)
				p.Cut(500 * time.Millisecond)
				time.Sleep(100 * time.Millisecond)
				p.Down(linksim.Uplink)
				time.Sleep(900 * time.Millisecond)
				p.Up()
			},
			windows:     []window{{1005 * time.Millisecond, 2005 * time.Millisecond}},
			downWindows: []window{{1005 * time.Millisecond, 1505 * time.Millisecond}},
		},
		{
			name: "up before the packets in flight arrive",
			p:    linksim.Profile{Delay: delay},
			command: func(p *linksim.Path) {
				time.Sleep(time.Second + 5*time.Millisecond)
				p.Down()
				time.Sleep(time.Millisecond)
				p.Up()
			},
			windows: []window{{1005 * time.Millisecond, 1006 * time.Millisecond}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				up, down, stats := outageRun(t, tt.p, step, total, tt.command)
				expect := func(windows []window) []int {
					lost := lostIn(windows)
					var want []int
					for i := 0; time.Duration(i)*step < total; i++ {
						if !lost(time.Duration(i) * step) {
							want = append(want, i)
						}
					}
					return want
				}
				downWindows := tt.windows
				if tt.downWindows != nil {
					downWindows = tt.downWindows
				}
				if want := expect(tt.windows); !slices.Equal(up, want) {
					t.Errorf("uplink delivered %v,\nwant %v", up, want)
				}
				if want := expect(downWindows); !slices.Equal(down, want) {
					t.Errorf("downlink delivered %v,\nwant %v", down, want)
				}
				for i, tr := range []linksim.Traffic{stats.Uplink, stats.Downlink} {
					outage := i == 0 && len(tt.windows) > 0 || i == 1 && len(downWindows) > 0
					if outage != (tr.OutageDrops.Packets > 0) || tr.Delivered.Packets+tr.OutageDrops.Packets != tr.Sent.Packets {
						t.Errorf("stats %+v: outage drops and deliveries do not add up", tr)
					}
				}
			})
		})
	}
}

func TestOutageFlushesQueue(t *testing.T) {
	const size = 1000 - linksim.UDPOverhead // 1 ms each at 8 Mbit/s
	synctest.Test(t, func(t *testing.T) {
		path := linksim.NewPath(linksim.Profile{Delay: 10 * time.Millisecond, Rate: 8_000_000, QueueBytes: -1}, 1)
		agent, hub := path.Endpoints()
		got := collect(hub)
		for i := range 100 { // 100 ms of queue
			agent.WriteTo(packet(i, size), hub.LocalAddr())
		}
		time.Sleep(5 * time.Millisecond)
		path.Cut(time.Millisecond)
		time.Sleep(2 * time.Millisecond)
		agent.WriteTo(packet(100, size), hub.LocalAddr())
		time.Sleep(time.Second)
		synctest.Wait()
		path.Close()
		// Datagram 0 was in flight at the cut and the rest queued: all
		// were lost, and datagram 100 found the transmitter idle.
		arrivals := <-got
		want := []arrival{{seq: 100, at: 7*time.Millisecond + 1*time.Millisecond + 10*time.Millisecond, n: size}}
		if !slices.Equal(arrivals, want) {
			t.Errorf("arrivals %v, want %v", arrivals, want)
		}
		if up := path.Stats().Uplink; up.OutageDrops.Packets != 100 || up.Delivered.Packets != 1 {
			t.Errorf("stats = %+v, want 100 outage drops and 1 delivered", up)
		}
	})
}

func TestCloseUnblocksRead(t *testing.T) {
	tests := []struct {
		name  string
		close func(p *linksim.Path, c *linksim.Conn)
	}{
		{"conn", func(_ *linksim.Path, c *linksim.Conn) { c.Close() }},
		{"path", func(p *linksim.Path, _ *linksim.Conn) { p.Close() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				path := linksim.NewPath(linksim.Profile{Delay: time.Second}, 1)
				defer path.Close()
				agent, hub := path.Endpoints()
				agent.WriteTo([]byte("in flight"), hub.LocalAddr())
				errc := make(chan error)
				go func() {
					_, _, err := hub.ReadFrom(make([]byte, 10))
					errc <- err
				}()
				synctest.Wait()
				tt.close(path, hub)
				if err := <-errc; !errors.Is(err, net.ErrClosed) {
					t.Errorf("ReadFrom after Close = %v, want net.ErrClosed", err)
				}
				if _, _, err := hub.ReadFrom(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
					t.Errorf("ReadFrom on a closed conn = %v, want net.ErrClosed", err)
				}
				if _, err := hub.WriteTo([]byte("x"), agent.LocalAddr()); !errors.Is(err, net.ErrClosed) {
					t.Errorf("WriteTo on a closed conn = %v, want net.ErrClosed", err)
				}
				if err := hub.Close(); err != nil {
					t.Errorf("second Close = %v", err)
				}
			})
		})
	}
}

func TestDeadlines(t *testing.T) {
	tests := []struct {
		name string
		// set arranges deadlines on c and returns when the blocked read
		// should end with a timeout.
		set func(c *linksim.Conn) time.Duration
	}{
		{"read deadline", func(c *linksim.Conn) time.Duration {
			c.SetReadDeadline(time.Now().Add(time.Second))
			return time.Second
		}},
		{"deadline", func(c *linksim.Conn) time.Duration {
			c.SetDeadline(time.Now().Add(2 * time.Second))
			return 2 * time.Second
		}},
		{"past deadline", func(c *linksim.Conn) time.Duration {
			c.SetReadDeadline(time.Now().Add(-time.Second))
			return 0
		}},
		{"moved earlier while blocked", func(c *linksim.Conn) time.Duration {
			c.SetReadDeadline(time.Now().Add(time.Hour))
			go func() {
				time.Sleep(time.Second)
				c.SetReadDeadline(time.Now()) // as quic.Transport.Close does
			}()
			return time.Second
		}},
		{"set while blocked without one", func(c *linksim.Conn) time.Duration {
			go func() {
				time.Sleep(3 * time.Second)
				c.SetReadDeadline(time.Now().Add(time.Second))
			}()
			return 4 * time.Second
		}},
		{"cleared then set", func(c *linksim.Conn) time.Duration {
			c.SetReadDeadline(time.Now().Add(time.Second))
			c.SetReadDeadline(time.Time{})
			go func() {
				time.Sleep(5 * time.Second)
				c.SetReadDeadline(time.Now())
			}()
			return 5 * time.Second
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				path := linksim.NewPath(linksim.Profile{}, 1)
				defer path.Close()
				_, hub := path.Endpoints()
				start := time.Now()
				want := tt.set(hub)
				_, _, err := hub.ReadFrom(make([]byte, 10))
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("ReadFrom = %v, want os.ErrDeadlineExceeded", err)
				}
				var nerr net.Error
				if !errors.As(err, &nerr) || !nerr.Timeout() {
					t.Errorf("ReadFrom error %v is not a net.Error timeout", err)
				}
				if got := time.Since(start); got != want {
					t.Errorf("timed out after %v, want %v", got, want)
				}
			})
		})
	}

	t.Run("read succeeds before the deadline", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			path := linksim.NewPath(linksim.Profile{Delay: time.Second}, 1)
			defer path.Close()
			agent, hub := path.Endpoints()
			hub.SetReadDeadline(time.Now().Add(2 * time.Second))
			agent.WriteTo([]byte("x"), hub.LocalAddr())
			if _, _, err := hub.ReadFrom(make([]byte, 10)); err != nil {
				t.Errorf("ReadFrom = %v, want the datagram", err)
			}
		})
	})

	t.Run("write deadline", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			path := linksim.NewPath(linksim.Profile{}, 1)
			defer path.Close()
			agent, hub := path.Endpoints()
			agent.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := agent.WriteTo([]byte("x"), hub.LocalAddr()); err != nil {
				t.Errorf("WriteTo before the deadline = %v", err)
			}
			time.Sleep(time.Second)
			if _, err := agent.WriteTo([]byte("x"), hub.LocalAddr()); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("WriteTo after the deadline = %v, want os.ErrDeadlineExceeded", err)
			}
			agent.SetWriteDeadline(time.Time{})
			if _, err := agent.WriteTo([]byte("x"), hub.LocalAddr()); err != nil {
				t.Errorf("WriteTo after clearing the deadline = %v", err)
			}
		})
	})
}

func TestUnknownAddressVanishes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := linksim.NewPath(linksim.Profile{}, 1)
		defer path.Close()
		agent, hub := path.Endpoints()
		elsewhere := &net.UDPAddr{IP: net.IPv4(203, 0, 113, 1), Port: 1}
		if n, err := agent.WriteTo([]byte("hello"), elsewhere); n != 5 || err != nil {
			t.Errorf("WriteTo elsewhere = %d, %v; want 5, nil", n, err)
		}
		hub.SetReadDeadline(time.Now().Add(time.Second))
		if _, _, err := hub.ReadFrom(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("hub read %v, want nothing", err)
		}
		if s := path.Stats(); s != (linksim.Stats{}) {
			t.Errorf("stats = %+v, want none", s)
		}
	})
}

func TestTruncatedRead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := linksim.NewPath(linksim.Profile{}, 1)
		defer path.Close()
		agent, hub := path.Endpoints()
		agent.WriteTo([]byte("hello world"), hub.LocalAddr())
		agent.WriteTo([]byte("next"), hub.LocalAddr())
		buf := make([]byte, 5)
		for _, want := range []string{"hello", "next"} {
			n, _, err := hub.ReadFrom(buf)
			if err != nil || string(buf[:n]) != want {
				t.Errorf("ReadFrom = %q, %v; want %q", buf[:n], err, want)
			}
		}
	})
}

// TestDownlinkImpairments: a profile's Downlink impairs the hub-to-agent
// direction alone.
func TestDownlinkImpairments(t *testing.T) {
	const n = 2000
	p := linksim.Profile{Delay: 10 * time.Millisecond, Downlink: &linksim.Impairments{Delay: 10 * time.Millisecond, Loss: 0.5}}
	synctest.Test(t, func(t *testing.T) {
		path := linksim.NewPath(p, 7)
		agent, hub := path.Endpoints()
		for i := range n {
			agent.WriteTo(packet(i, 100), hub.LocalAddr())
			hub.WriteTo(packet(i, 100), agent.LocalAddr())
		}
		time.Sleep(time.Second)
		s := path.Stats()
		path.Close()
		if s.Uplink.Lost.Packets != 0 || s.Uplink.Delivered.Packets != n {
			t.Errorf("uplink %+v: want all %d delivered", s.Uplink, n)
		}
		if got := float64(s.Downlink.Lost.Packets); math.Abs(got-n/2) > 5*math.Sqrt(n/4) {
			t.Errorf("downlink lost %v of %d, want about half", got, n)
		}
	})
}
