package datadir

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"testing"
)

func TestAcquire(t *testing.T) {
	// daemonRun is the command as a daemon runs it.
	daemonRun := func(_ context.Context, req Request, stdout, stderr io.Writer) int {
		fmt.Fprintf(stdout, "daemon ran %v\n", req.Args)
		io.WriteString(stderr, "from the daemon\n")
		return 5
	}
	tests := []struct {
		name string
		// before prepares dir; it returns the lock of a holder, or nil.
		before func(t *testing.T, dir string) *Lock
		// during runs once Acquire has tried three times, with the
		// holder's lock and what cancels Acquire.
		during        func(t *testing.T, holder *Lock, cancel context.CancelFunc)
		wantLock      bool
		wantCode      int
		wantErr       error
		wantWaiting   bool // the waiting message is on stderr, once
		wantForwarded bool
	}{
		{
			name:     "free: locks",
			before:   func(*testing.T, string) *Lock { return nil },
			wantLock: true,
		},
		{
			name: "free, socket left by a dead daemon: locks",
			before: func(t *testing.T, dir string) *Lock {
				staleSocket(t, dir)
				return nil
			},
			wantLock: true,
		},
		{
			name: "daemon: forwards",
			before: func(t *testing.T, dir string) *Lock {
				startDaemon(t, dir, daemonRun)
				return nil
			},
			wantCode:      5,
			wantForwarded: true,
		},
		{
			name: "another command, then free: waits, locks",
			before: func(t *testing.T, dir string) *Lock {
				l, err := TryLock(dir)
				if err != nil {
					t.Fatal(err)
				}
				return l
			},
			during: func(t *testing.T, holder *Lock, _ context.CancelFunc) {
				if err := holder.Unlock(); err != nil {
					t.Fatal(err)
				}
			},
			wantLock:    true,
			wantWaiting: true,
		},
		{
			name: "another command, then a daemon: waits, forwards",
			before: func(t *testing.T, dir string) *Lock {
				l, err := TryLock(dir)
				if err != nil {
					t.Fatal(err)
				}
				return l
			},
			during: func(t *testing.T, holder *Lock, _ context.CancelFunc) {
				// The holder turns out to be a daemon that was opening
				// its state.
				serveLocked(t, holder, daemonRun)
			},
			wantCode:      5,
			wantWaiting:   true,
			wantForwarded: true,
		},
		{
			name: "another command, caller gives up",
			before: func(t *testing.T, dir string) *Lock {
				l, err := TryLock(dir)
				if err != nil {
					t.Fatal(err)
				}
				return l
			},
			during:      func(_ *testing.T, _ *Lock, cancel context.CancelFunc) { cancel() },
			wantErr:     context.Canceled,
			wantWaiting: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortDir(t)
			holder := tt.before(t, dir)
			if holder != nil {
				defer holder.Unlock()
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			ticks := newCounter()
			var stdout, stderr syncBuffer
			type result struct {
				l    *Lock
				code int
				err  error
			}
			done := make(chan result, 1)
			req := Request{Args: []string{"record", "delivery"}}
			go func() {
				l, code, err := acquire(ctx, dir, req, &stdout, &stderr, ticks.tick)
				done <- result{l, code, err}
			}()
			if tt.during != nil {
				ticks.waitFor(t, 3)
				tt.during(t, holder, cancel)
			}
			r := <-done

			if !errors.Is(r.err, tt.wantErr) {
				t.Fatalf("Acquire: got error %v, want %v", r.err, tt.wantErr)
			}
			if got := r.l != nil; got != tt.wantLock {
				t.Errorf("Acquire returned a lock: got %v, want %v", got, tt.wantLock)
			}
			if r.l != nil {
				if err := r.l.Unlock(); err != nil {
					t.Error(err)
				}
			}
			if r.code != tt.wantCode {
				t.Errorf("exit status: got %d, want %d", r.code, tt.wantCode)
			}
			var wantStdout, wantStderr string
			if tt.wantWaiting {
				wantStderr = fmt.Sprintf("waiting for %s: in use by pid %d (%s)\n", dir, os.Getpid(), commandLine())
			}
			if tt.wantForwarded {
				wantStdout = "daemon ran [record delivery]\n"
				wantStderr += "from the daemon\n"
			}
			if got := stdout.String(); got != wantStdout {
				t.Errorf("stdout: got %q, want %q", got, wantStdout)
			}
			if got := stderr.String(); got != wantStderr {
				t.Errorf("stderr: got %q, want %q", got, wantStderr)
			}
		})
	}
}

// TestAcquireUnknownHolder checks the message when the holder's details
// cannot be read: it still says what Acquire waits for.
func TestAcquireUnknownHolder(t *testing.T) {
	dir := shortDir(t)
	holder, err := TryLock(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Unlock()
	if err := clearHolder(holder.path); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var stderr bytes.Buffer
	ticks := newCounter()
	done := make(chan error, 1)
	go func() {
		_, _, err := acquire(ctx, dir, Request{}, io.Discard, &stderr, func() {
			ticks.tick()
			if stderr.Len() > 0 {
				cancel()
			}
		})
		done <- err
	}()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire: got %v, want context.Canceled", err)
	}
	want := fmt.Sprintf("waiting for %s: in use by another process\n", dir)
	if got := stderr.String(); got != want {
		t.Errorf("stderr: got %q, want %q", got, want)
	}
	if ticks.n.Load() < 2 {
		t.Errorf("Acquire said it was waiting after %d tries; want it to give the holder time to say who it is", ticks.n.Load())
	}
}
