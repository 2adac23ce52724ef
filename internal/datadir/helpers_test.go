package datadir

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// shortDir returns a new empty directory with a path short enough for a
// socket inside it (t.TempDir's paths can be too long).
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// syncBuffer is a bytes.Buffer safe to write and read from two goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// readyHandler passes records on to a handler that logs to the test, and
// closes ready when Serve says it listens.
type readyHandler struct {
	slog.Handler
	once  *sync.Once
	ready chan struct{}
}

func (h readyHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "control socket ready" {
		h.once.Do(func() { close(h.ready) })
	}
	return h.Handler.Handle(ctx, r)
}

func (h readyHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.Handler = h.Handler.WithAttrs(as)
	return h
}

func (h readyHandler) WithGroup(name string) slog.Handler {
	h.Handler = h.Handler.WithGroup(name)
	return h
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// daemon is a Serve running in the test, holding its directory's lock.
type daemon struct {
	srv    *server
	lock   *Lock
	cancel context.CancelFunc
	done   chan error
}

// startDaemon locks dir and serves it with run until the test ends (or
// stop is called). setup may change the server's limits.
func startDaemon(t *testing.T, dir string, run Runner, setup ...func(*server)) *daemon {
	t.Helper()
	l, err := TryLock(dir)
	if err != nil {
		t.Fatal(err)
	}
	return serveLocked(t, l, run, setup...)
}

// serveLocked serves the directory of l, which the test holds.
func serveLocked(t *testing.T, l *Lock, run Runner, setup ...func(*server)) *daemon {
	t.Helper()
	ready := make(chan struct{})
	h := readyHandler{
		Handler: slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}),
		once:    new(sync.Once),
		ready:   ready,
	}
	s := &server{
		dir:            l.Dir(),
		run:            run,
		log:            slog.New(h),
		uid:            os.Getuid(),
		requestTimeout: requestTimeout,
		writeTimeout:   writeTimeout,
	}
	for _, f := range setup {
		f(s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &daemon{srv: s, lock: l, cancel: cancel, done: make(chan error, 1)}
	go func() { d.done <- s.serve(ctx) }()
	select {
	case <-ready:
	case err := <-d.done:
		cancel()
		t.Fatalf("serve: %v", err)
	}
	t.Cleanup(func() { d.stop(t) })
	return d
}

// stop ends Serve, waits for it, and unlocks.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	if d.done == nil {
		return
	}
	d.cancel()
	if err := <-d.done; err != nil {
		t.Errorf("serve: %v", err)
	}
	d.done = nil
	if err := d.lock.Unlock(); err != nil {
		t.Error(err)
	}
}

// echo is a Runner that writes its arguments to stdout, the working
// directory to stderr, and exits with status 0.
func echo(_ context.Context, req Request, stdout, stderr io.Writer) int {
	io.WriteString(stdout, strings.Join(req.Args, " "))
	io.WriteString(stderr, req.Dir)
	return 0
}

// counter counts calls, and signals each on a channel that keeps one.
type counter struct {
	n      atomic.Int64
	signal chan struct{}
}

func newCounter() *counter { return &counter{signal: make(chan struct{}, 1)} }

func (c *counter) tick() {
	c.n.Add(1)
	select {
	case c.signal <- struct{}{}:
	default:
	}
}

// waitFor waits until there have been at least n calls.
func (c *counter) waitFor(t *testing.T, n int64) {
	t.Helper()
	for c.n.Load() < n {
		select {
		case <-c.signal:
		case <-t.Context().Done():
			t.Fatalf("waited for %d calls, got %d", n, c.n.Load())
		}
	}
}
