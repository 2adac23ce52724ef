package agent

import (
	"context"
	"io"
	"os"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"fieldsync/internal/ledger"
)

// TestWaitForWork checks when the daemon's wait between syncs ends, in a
// bubble whose clock only moves when everything in it waits.
func TestWaitForWork(t *testing.T) {
	h, _ := newHub(t)
	e := enrol(t, h, testSite)
	const wait = 10 * time.Minute
	for _, tc := range []struct {
		name       string
		unsealed   bool          // a record stored after the last sync sealed
		backingOff bool          // the last sync failed
		addAfter   time.Duration // a record is stored this long into the wait (0: none)
		want       time.Duration
	}{
		{"nothing to do", false, false, 0, wait},
		{"a record stored during the wait", false, false, 3 * time.Second, 3 * time.Second},
		{"a record stored during the last sync", true, false, 0, 0},
		{"a record stored during a failed sync waits out the backoff", true, true, 0, wait},
		{"nothing to do after a failure", false, true, 0, wait},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				dir := t.TempDir()
				if _, err := Init(dir, e); err != nil {
					t.Fatal(err)
				}
				a, err := Open(dir, Options{NoSync: true})
				if err != nil {
					t.Fatal(err)
				}
				defer a.Close()
				add(t, a, delivery("sealed", 1))
				if _, err := a.Seal(); err != nil {
					t.Fatal(err)
				}
				if tc.unsealed {
					add(t, a, delivery("unsealed", 1))
				}
				done := make(chan struct{})
				if tc.addAfter > 0 {
					go func() {
						defer close(done)
						time.Sleep(tc.addAfter)
						if _, err := a.Add(delivery("new", 1), nil); err != nil {
							t.Error(err)
						}
					}()
				} else {
					close(done)
				}
				start := time.Now()
				if err := a.waitForWork(t.Context(), wait, tc.backingOff); err != nil {
					t.Fatal(err)
				}
				if got := time.Since(start); got != tc.want {
					t.Errorf("waited %v, want %v", got, tc.want)
				}
				<-done
			})
		})
	}
	t.Run("context ends the wait", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := Init(dir, e); err != nil {
				t.Fatal(err)
			}
			a, err := Open(dir, Options{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			start := time.Now()
			if err := a.waitForWork(ctx, wait, false); err == nil {
				t.Error("no error when the context ended")
			}
			if got := time.Since(start); got != time.Minute {
				t.Errorf("waited %v, want the context's minute", got)
			}
		})
	})
}

// TestSendBundleShortFile checks that an outbox file shorter than the
// bundle sealed into it fails the upload instead of sending empty chunks
// forever.
func TestSendBundleShortFile(t *testing.T) {
	a := newFixture(t).a
	add(t, a, delivery("Switch", 1))
	if _, err := a.Seal(); err != nil {
		t.Fatal(err)
	}
	b := bundles(t, a)[0]
	for _, tc := range []struct {
		name    string
		size    int64 // the outbox file is cut to this
		offset  int64 // resume from
		wantErr string
	}{
		{"whole", b.Size, 0, ""},
		{"resumed at the end", b.Size, b.Size, ""},
		{"cut short", b.Size / 2, 0, "ends at byte"},
		{"empty", 0, 0, "ends at byte 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.Truncate(a.outboxPath(b.Seq), tc.size); err != nil {
				t.Fatal(err)
			}
			n, err := a.sendBundle(io.Discard, &ledger.Bundle{Seq: b.Seq, Size: b.Size}, tc.offset, func() bool { return false }, func(int64) {})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				oneLine(t, err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n != b.Size-tc.offset {
				t.Errorf("sent %d bytes, want %d", n, b.Size-tc.offset)
			}
		})
	}
}
