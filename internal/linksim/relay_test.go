package linksim_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	mrand "math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"fieldsync/internal/linksim"
)

// These tests use real loopback sockets and real time, so they keep
// delays short and transfers small.

// udpEcho starts a UDP server on loopback that sends every datagram back.
func udpEcho(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			c.WriteToUDP(buf[:n], from)
		}
	})
	t.Cleanup(func() {
		c.Close()
		wg.Wait()
	})
	return c
}

// startRelay runs Relay towards upstream and returns the address clients
// send to; the relay stops when the test ends.
func startRelay(t *testing.T, upstream *net.UDPAddr, p linksim.Profile) *net.UDPAddr {
	t.Helper()
	listen, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- linksim.Relay(ctx, listen, upstream, p, 1) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Relay = %v, want nil after cancel", err)
		}
		listen.Close()
	})
	return listen.LocalAddr().(*net.UDPAddr)
}

func TestRelay(t *testing.T) {
	const delay = 20 * time.Millisecond
	tests := []struct {
		name string
		p    linksim.Profile
		min  time.Duration // shortest round trip
	}{
		{"delay", linksim.Profile{Delay: delay}, 2 * delay},
		{"delay and rate", linksim.Profile{Delay: delay, Rate: 800_000}, 2*delay + 2*10*time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			echo := udpEcho(t)
			relay := startRelay(t, echo.LocalAddr().(*net.UDPAddr), tt.p)
			client, err := net.DialUDP("udp", nil, relay)
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			msg := make([]byte, 1000-linksim.UDPOverhead) // 10 ms at 800 kbit/s
			buf := make([]byte, 2000)
			for i := range 3 {
				msg[0] = byte(i)
				start := time.Now()
				client.SetReadDeadline(start.Add(5 * time.Second))
				if _, err := client.Write(msg); err != nil {
					t.Fatal(err)
				}
				n, err := client.Read(buf)
				if err != nil {
					t.Fatalf("datagram %d: %v", i, err)
				}
				rtt := time.Since(start)
				if !bytes.Equal(buf[:n], msg) {
					t.Errorf("datagram %d came back changed", i)
				}
				if rtt < tt.min {
					t.Errorf("datagram %d came back after %v, before the path's %v", i, rtt, tt.min)
				}
			}
		})
	}
}

func TestRelayInvalidProfile(t *testing.T) {
	listen, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer listen.Close()
	if err := linksim.Relay(t.Context(), listen, listen.LocalAddr().(*net.UDPAddr), linksim.Profile{Loss: 2}, 1); err == nil {
		t.Error("Relay with loss 2 = nil, want an error")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := linksim.RelayTCP(t.Context(), ln, "127.0.0.1:1", linksim.Profile{Rate: -1}, 1); err == nil {
		t.Error("RelayTCP with a negative rate = nil, want an error")
	}
}

// TestQUICOverRelay sends a small transfer over real sockets through a
// relay, in real time.
func TestQUICOverRelay(t *testing.T) {
	serverTLS, clientTLS := tlsConfigs(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()

	hubConn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	hubTr := &quic.Transport{Conn: hubConn}
	defer hubConn.Close()
	defer hubTr.Close()
	ln, err := hubTr.Listen(serverTLS, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	p := linksim.Profile{Delay: 5 * time.Millisecond, Loss: 0.01, Rate: 20_000_000}
	relay := startRelay(t, hubConn.LocalAddr().(*net.UDPAddr), p)

	payload := make([]byte, 256<<10)
	mrand.NewChaCha8([32]byte{2}).Read(payload)
	received := make(chan []byte, 1)
	go func() {
		defer close(received)
		conn, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		defer conn.CloseWithError(0, "")
		str, err := conn.AcceptStream(ctx)
		if err != nil {
			return
		}
		data, _ := io.ReadAll(str)
		received <- data
	}()

	agentConn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	agentTr := &quic.Transport{Conn: agentConn}
	defer agentConn.Close()
	defer agentTr.Close()
	conn, err := agentTr.Dial(ctx, relay, clientTLS, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	str, err := conn.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := str.Write(payload); err != nil {
		t.Fatal(err)
	}
	str.Close()
	if got := <-received; !bytes.Equal(got, payload) {
		t.Fatalf("hub read %d bytes, not the %d sent", len(got), len(payload))
	}
}

// tcpEcho starts a TCP server on loopback that sends back what it reads,
// and half-closes when the client does.
func tcpEcho(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln
}

func TestRelayTCP(t *testing.T) {
	const (
		size  = 100_000
		delay = 10 * time.Millisecond
		rate  = 20_000_000
	)
	// Both ways the bytes take at least the delay and their time at the
	// rate; the two directions overlap.
	minimum := 2*delay + time.Duration(size*8*int64(time.Second)/rate)
	tests := []struct {
		name string
		p    linksim.Profile
		min  time.Duration
	}{
		{"unshaped", linksim.Profile{}, 0},
		{"delay and rate", linksim.Profile{Delay: delay, Rate: rate}, minimum},
		{"loss", linksim.Profile{Delay: delay, Rate: rate, Loss: 0.05}, minimum},
		{"outages", linksim.Profile{Delay: delay, Rate: rate, OutageEvery: 50 * time.Millisecond, OutageFor: 20 * time.Millisecond}, minimum},
		{"small queue", linksim.Profile{Delay: delay, Rate: rate, QueueBytes: 3000}, minimum},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			echo := tcpEcho(t)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- linksim.RelayTCP(ctx, ln, echo.Addr().String(), tt.p, 1) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("RelayTCP = %v, want nil after cancel", err)
				}
			}()

			payload := make([]byte, size)
			mrand.NewChaCha8([32]byte{3}).Read(payload)
			start := time.Now()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			writeErr := make(chan error, 1)
			go func() {
				_, err := c.Write(payload)
				if err == nil {
					err = c.(*net.TCPConn).CloseWrite()
				}
				writeErr <- err
			}()
			got, err := io.ReadAll(c)
			elapsed := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			if err := <-writeErr; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("read back %d bytes that differ from the %d sent", len(got), len(payload))
			}
			if elapsed < tt.min {
				t.Errorf("round trip took %v, less than the path's %v", elapsed, tt.min)
			}
			t.Logf("%d bytes there and back in %v", size, elapsed)
		})
	}
}

func TestRelayTCPUpstreamDown(t *testing.T) {
	// A port nothing listens on: the client sees its connection closed.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- linksim.RelayTCP(ctx, ln, deadAddr, linksim.Profile{}, 1) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		var oerr *net.OpError
		if !errors.As(err, &oerr) || oerr.Timeout() {
			t.Errorf("read = %v, want the connection closed", err)
		}
	}
	c.Close()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("RelayTCP = %v", err)
	}
}
