package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"fieldsync/internal/atomicfile"
	"fieldsync/internal/transport"
)

// ServeOptions say where the hub listens.
type ServeOptions struct {
	Listen string // QUIC sync endpoint, HOST:PORT (UDP)
	HTTP   string // dashboard and API, HOST:PORT; empty disables it
	Drop   string // drop folder; empty for DIR/drop
	// Ready, if set, is called with the bound addresses once listening.
	Ready func(quicAddr, httpAddr net.Addr)
}

// servingFile tells scripts and operators where a running hub listens.
const servingFile = "serving.json"

func (h *Hub) writeServing(quicAddr, httpAddr net.Addr) error {
	v := map[string]any{"quic": quicAddr.String(), "pid": os.Getpid()}
	if httpAddr != nil {
		v["http"] = "http://" + httpAddr.String() + "/"
	}
	b, _ := json.Marshal(v)
	return atomicfile.Write(filepath.Join(h.dir, servingFile), append(b, '\n'), 0o644)
}

// Serve runs the QUIC sync endpoint, the drop folder watcher and the
// dashboard until ctx ends, then stops them all and returns.
func (h *Hub) Serve(ctx context.Context, opts ServeOptions) error {
	// Every agent key passes the handshake; the first message names the
	// agent, and an unknown, mismatched or revoked one is refused there with
	// a reason the agent can show, before anything it sends is accepted.
	tlsConf, err := transport.ServerTLS(h.key)
	if err != nil {
		return err
	}
	udp, err := net.ListenPacket("udp", opts.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", opts.Listen, err)
	}
	// Shielded agents and plain QUIC ones, on the one socket
	// (docs/transport.md); Shutdown closes it. Stateless resets tell the
	// agents of a hub that restarted under them to dial again at once.
	ln, err := (&transport.ListenConfig{StatelessResetKey: transport.ResetKey(h.key)}).Listen(udp, tlsConf)
	if err != nil {
		udp.Close()
		return fmt.Errorf("listen QUIC on %s: %w", opts.Listen, err)
	}
	defer ln.Shutdown()
	defer ln.Close()

	var httpAddr net.Addr
	var httpLn net.Listener
	if opts.HTTP != "" {
		httpLn, err = net.Listen("tcp", opts.HTTP)
		if err != nil {
			return fmt.Errorf("listen HTTP on %s: %w", opts.HTTP, err)
		}
		httpAddr = httpLn.Addr()
	}
	drop := opts.Drop
	if drop == "" {
		drop = h.DropDir()
	}
	h.log.Info("hub serving", "quic", udp.LocalAddr().String(), "http", httpAddr, "drop", drop)
	if err := h.writeServing(udp.LocalAddr(), httpAddr); err != nil {
		return err
	}
	defer os.Remove(filepath.Join(h.dir, servingFile))
	if opts.Ready != nil {
		opts.Ready(udp.LocalAddr(), httpAddr)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	wg.Go(func() {
		// Build the status aggregate now, so that the first operator to
		// open the dashboard or run `hub status` does not wait for a pass
		// over every record (seconds at millions). A shutdown meanwhile
		// waits for it: the build cannot stop half-way.
		start := time.Now()
		if _, err := h.status.current(h.led); err != nil {
			if ctx.Err() == nil {
				h.log.Warn("build status aggregate", "err", err)
			}
			return
		}
		h.log.Debug("status aggregate built", "took", time.Since(start).Round(time.Millisecond))
	})
	wg.Go(func() { errs <- h.watchDrop(ctx, drop) })
	if httpLn != nil {
		wg.Go(func() { errs <- h.serveHTTP(ctx, httpLn) })
	}
	wg.Go(func() {
		var conns sync.WaitGroup
		defer conns.Wait()
		for {
			conn, err := ln.Accept(ctx)
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, quic.ErrServerClosed) {
					errs <- fmt.Errorf("accept: %w", err)
				}
				return
			}
			conns.Go(func() { h.handleConn(ctx, conn) })
		}
	})
	var first error
	select {
	case <-ctx.Done():
	case first = <-errs:
	}
	cancel()
	ln.Close()
	wg.Wait()
	return first
}
