package linksim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// maxDatagram is the largest UDP payload the relays read.
const maxDatagram = 64 << 10

// Relay forwards real UDP datagrams between one client and upstream with
// the impairments of p, in real time: datagrams from the client (the
// agent) to upstream (the hub) take the uplink, replies the downlink.
//
// The client is whoever sent the latest datagram to listen; replies go to
// it. Relay reaches upstream from a socket of its own, bound to an
// ephemeral port. Scheduled outages count from the call; commanded ones
// (Down, Cut) exist only on a Path.
//
// Relay returns nil once ctx is done, or the first error reading a socket.
// It does not close listen, but leaves its read deadline cleared.
func Relay(ctx context.Context, listen *net.UDPConn, upstream *net.UDPAddr, p Profile, seed int64) error {
	if err := p.Validate(); err != nil {
		return err
	}
	up, err := net.DialUDP("udp", nil, upstream)
	if err != nil {
		return fmt.Errorf("relay to %s: %w", upstream, err)
	}
	defer up.Close()

	var client atomic.Pointer[net.UDPAddr]
	s := newShaper(p, seed, UDPOverhead, [2]func([]byte) bool{
		Uplink: func(b []byte) bool {
			_, err := up.Write(b)
			return err == nil
		},
		Downlink: func(b []byte) bool {
			to := client.Load()
			if to == nil {
				return false
			}
			_, err := listen.WriteToUDP(b, to)
			return err == nil
		},
	})
	defer s.close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := listen.ReadFromUDP(buf)
			if err != nil {
				errc <- readError(ctx, "read from client", err)
				return
			}
			client.Store(from)
			s.send(Uplink, slices.Clone(buf[:n]))
		}
	})
	wg.Go(func() {
		buf := make([]byte, maxDatagram)
		for {
			n, err := up.Read(buf)
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue // upstream not listening (yet): as good as a lost datagram
			}
			if err != nil {
				errc <- readError(ctx, "read from upstream", err)
				return
			}
			s.send(Downlink, slices.Clone(buf[:n]))
		}
	})

	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancel()
	listen.SetReadDeadline(time.Now())
	up.SetReadDeadline(time.Now())
	wg.Wait()
	listen.SetReadDeadline(time.Time{})
	return err
}

// readError is the error a relay's reader ends with: nil if ctx is done.
func readError(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("relay: %s: %w", what, err)
}
