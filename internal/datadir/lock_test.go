package datadir

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestTryLock(t *testing.T) {
	tests := []struct {
		name string
		// setup prepares dir and returns what the test must release.
		setup    func(t *testing.T, dir string) func()
		dir      func(dir string) string
		wantBusy bool
		wantErr  error
	}{
		{
			name:  "free",
			setup: func(*testing.T, string) func() { return func() {} },
		},
		{
			name:     "held",
			setup:    mustLock,
			wantBusy: true,
			wantErr:  ErrBusy,
		},
		{
			name: "released",
			setup: func(t *testing.T, dir string) func() {
				mustLock(t, dir)()
				return func() {}
			},
		},
		{
			name:  "held by a crashed holder",
			setup: writeStaleHolder,
		},
		{
			name:    "missing directory",
			setup:   func(*testing.T, string) func() { return func() {} },
			dir:     func(dir string) string { return filepath.Join(dir, "missing") },
			wantErr: fs.ErrNotExist,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortDir(t)
			release := tt.setup(t, dir)
			defer release()
			if tt.dir != nil {
				dir = tt.dir(dir)
			}
			l, err := TryLock(dir)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("TryLock: got %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr != nil {
				if l != nil {
					t.Errorf("TryLock returned a lock with error %v", err)
				}
				var busy *BusyError
				if got := errors.As(err, &busy); got != tt.wantBusy {
					t.Fatalf("error %v is a *BusyError: got %v, want %v", err, got, tt.wantBusy)
				}
				if tt.wantBusy {
					checkHolder(t, busy, dir, os.Getpid(), filepath.Base(os.Args[0]))
				}
				return
			}
			if got := holds(dir); !got {
				t.Errorf("holds(%q) after TryLock: got false, want true", dir)
			}
			if err := l.Unlock(); err != nil {
				t.Fatal(err)
			}
			if err := l.Unlock(); err != nil {
				t.Errorf("second Unlock: got %v, want nil", err)
			}
			if got := holds(dir); got {
				t.Errorf("holds(%q) after Unlock: got true, want false", dir)
			}
		})
	}
}

func mustLock(t *testing.T, dir string) func() {
	t.Helper()
	l, err := TryLock(dir)
	if err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := l.Unlock(); err != nil {
			t.Error(err)
		}
	}
}

// writeStaleHolder leaves the details of a holder that died in the lock file.
func writeStaleHolder(t *testing.T, dir string) func() {
	t.Helper()
	data := "\x00" + `{"pid":999999,"command":"agent run"}` + "\n"
	if err := os.WriteFile(filepath.Join(dir, lockFile), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return func() {}
}

func checkHolder(t *testing.T, busy *BusyError, dir string, pid int, command string) {
	t.Helper()
	if busy.PID != pid || busy.Dir != dir || !strings.Contains(busy.Command, command) {
		t.Errorf("holder: got pid %d, dir %q, command %q; want pid %d, dir %q, command containing %q",
			busy.PID, busy.Dir, busy.Command, pid, dir, command)
	}
	want := fmt.Sprintf("%s is in use by pid %d (", dir, pid)
	if got := busy.Error(); !strings.HasPrefix(got, want) {
		t.Errorf("message: got %q, want it to start with %q", got, want)
	}
}

func TestReadHolder(t *testing.T) {
	tests := []struct {
		name    string
		content string
		wantPID int
		wantMsg string
	}{
		{"no file", "", 0, "D is in use by another process"},
		{"empty", "\x00", 0, "D is in use by another process"},
		{"half written", "\x00{\"pid\":12", 0, "D is in use by another process"},
		{"garbage", "\x00\xff\xfe not json", 0, "D is in use by another process"},
		{"negative pid", "\x00{\"pid\":-1}", 0, "D is in use by another process"},
		{"pid only", "\x00{\"pid\":12}\n", 12, "D is in use by pid 12"},
		{"full", "\n{\"pid\":12,\"command\":\"hub status\"}\n", 12, "D is in use by pid 12 (hub status)"},
		{"long command", "\x00{\"pid\":12,\"command\":\"" + strings.Repeat("é", 300) + "\"}", 12, "D is in use by pid 12 (" + strings.Repeat("é", 126) + "…)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortDir(t)
			if tt.name != "no file" {
				if err := os.WriteFile(filepath.Join(dir, lockFile), []byte(tt.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got := readHolder(dir)
			got.Dir = "D"
			if got.PID != tt.wantPID || got.Error() != tt.wantMsg {
				t.Errorf("got pid %d, %q; want pid %d, %q", got.PID, got.Error(), tt.wantPID, tt.wantMsg)
			}
		})
	}
}

// TestLockReleasedOnProcessExit checks that the lock goes with the process
// that held it, however it ends.
func TestLockReleasedOnProcessExit(t *testing.T) {
	tests := []struct {
		name string
		end  func(cmd *exec.Cmd, stdin io.Closer) error
	}{
		{"killed", func(cmd *exec.Cmd, _ io.Closer) error { return cmd.Process.Kill() }}, // SIGKILL on Unix
		{"exits", func(_ *exec.Cmd, stdin io.Closer) error { return stdin.Close() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortDir(t)
			cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestHelperProcess$")
			// GORACE: under -race, a process otherwise lingers a second at exit.
			cmd.Env = append(os.Environ(), "DATADIR_HELPER_DIR="+dir, "GORACE=atexit_sleep_ms=0")
			cmd.Stderr = os.Stderr
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(stdout).ReadString('\n')
			if line != "locked\n" {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("helper said %q, %v; want \"locked\\n\"", line, err)
			}

			_, err = TryLock(dir)
			var busy *BusyError
			if !errors.As(err, &busy) {
				t.Fatalf("TryLock while the helper holds the lock: got %v, want a *BusyError", err)
			}
			checkHolder(t, busy, dir, cmd.Process.Pid, "TestHelperProcess")

			if err := tt.end(cmd, stdin); err != nil {
				t.Fatal(err)
			}
			cmd.Wait()
			l, err := TryLock(dir)
			if err != nil {
				t.Fatalf("TryLock after the helper ended: %v", err)
			}
			if err := l.Unlock(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestHelperProcess is the process TestLockReleasedOnProcessExit runs: it
// locks a directory, says so, and holds it until its stdin closes.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv("DATADIR_HELPER_DIR")
	if dir == "" {
		return
	}
	l, err := TryLock(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("locked")
	io.Copy(io.Discard, os.Stdin)
	if err := l.Unlock(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

func TestWaitLock(t *testing.T) {
	tests := []struct {
		name    string
		release bool // else the wait is cancelled
	}{
		{"holder releases", true},
		{"caller gives up", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortDir(t)
			holder, err := TryLock(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer holder.Unlock()

			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var notified []BusyError
			ticks := newCounter()
			type result struct {
				l   *Lock
				err error
			}
			done := make(chan result)
			go func() {
				l, err := wait(ctx, dir, func(b BusyError) { notified = append(notified, b) }, nil, ticks.tick)
				done <- result{l, err}
			}()
			ticks.waitFor(t, 3) // it has tried three times
			if tt.release {
				if err := holder.Unlock(); err != nil {
					t.Fatal(err)
				}
			} else {
				cancel()
			}
			r := <-done
			if len(notified) != 1 {
				t.Errorf("notified %d times, want once", len(notified))
			} else {
				checkHolder(t, &notified[0], dir, os.Getpid(), filepath.Base(os.Args[0]))
			}
			if !tt.release {
				if !errors.Is(r.err, context.Canceled) || r.l != nil {
					t.Fatalf("got %v, %v; want context.Canceled", r.l, r.err)
				}
				return
			}
			if r.err != nil {
				t.Fatalf("wait: %v", r.err)
			}
			r.l.Unlock()
		})
	}
}

func TestTruncate(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"a bit too long", 10, "a bit t…"},
		{"ééééé", 8, "éé…"}, // the cut falls inside the third é
	}
	for _, tt := range tests {
		if got := truncate(tt.in, tt.n); got != tt.want || len(got) > tt.n {
			t.Errorf("truncate(%q, %d): got %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}
