package datadir

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestForward(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 3*MaxFrameSize/16+7) // several frames
	tests := []struct {
		name       string
		req        Request
		run        Runner
		wantStdout string
		wantStderr string
		wantCode   int
	}{
		{
			name: "stdout, exit 0",
			req:  Request{Args: []string{"status"}},
			run: func(_ context.Context, req Request, stdout, _ io.Writer) int {
				fmt.Fprintf(stdout, "ran %v\n", req.Args)
				return 0
			},
			wantStdout: "ran [status]\n",
		},
		{
			name: "stderr, exit 3",
			req:  Request{Args: []string{"confirm", "P-12"}},
			run: func(_ context.Context, _ Request, _, stderr io.Writer) int {
				io.WriteString(stderr, "agent: no pledge \"P-12\"\n")
				return 3
			},
			wantStderr: "agent: no pledge \"P-12\"\n",
			wantCode:   3,
		},
		{
			name: "nothing written, negative status",
			run:  func(context.Context, Request, io.Writer, io.Writer) int { return -2 },
			req:  Request{},
			// Windows exit statuses are 32 bits; they survive unchanged.
			wantCode: -2,
		},
		{
			name: "large output on both streams",
			req:  Request{Args: []string{"export"}},
			run: func(_ context.Context, _ Request, stdout, stderr io.Writer) int {
				stdout.Write(big)
				io.WriteString(stderr, "done\n")
				stdout.Write(big[:10])
				return 0
			},
			wantStdout: string(big) + string(big[:10]),
			wantStderr: "done\n",
		},
		{
			name: "request arrives whole",
			req: Request{
				Args: []string{"record", "delivery", "--item", "Сервер Dell R650", "--attach", "накладна.pdf", ""},
				Dir:  filepath.Join(os.TempDir(), "site"),
				Env:  map[string]string{"FIELDSYNC_DIR": "/var/lib/fieldsync", "FIELDSYNC_X": "a=b"},
			},
			run: func(_ context.Context, req Request, stdout, _ io.Writer) int {
				fmt.Fprintf(stdout, "%q %q %v", req.Args, req.Dir, req.Env)
				return 0
			},
			wantStdout: fmt.Sprintf("%q %q %v",
				[]string{"record", "delivery", "--item", "Сервер Dell R650", "--attach", "накладна.pdf", ""},
				filepath.Join(os.TempDir(), "site"),
				map[string]string{"FIELDSYNC_DIR": "/var/lib/fieldsync", "FIELDSYNC_X": "a=b"}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortDir(t)
			startDaemon(t, dir, tt.run)
			var stdout, stderr bytes.Buffer
			code, err := Forward(t.Context(), dir, tt.req, &stdout, &stderr)
			if err != nil {
				t.Fatalf("Forward: %v", err)
			}
			if code != tt.wantCode {
				t.Errorf("exit status: got %d, want %d", code, tt.wantCode)
			}
			if got := stdout.String(); got != tt.wantStdout {
				t.Errorf("stdout: got %d bytes %.80q, want %d bytes %.80q", len(got), got, len(tt.wantStdout), tt.wantStdout)
			}
			if got := stderr.String(); got != tt.wantStderr {
				t.Errorf("stderr: got %q, want %q", got, tt.wantStderr)
			}
		})
	}
}

func TestForwardFillsRequest(t *testing.T) {
	wd := shortDir(t)
	t.Chdir(wd)
	wd, err := os.Getwd() // as the OS spells it
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("FIELDSYNC_TEST_VAR", "yes")
	t.Setenv("FIELDSYNC_lower", "not a name we pass")
	t.Setenv("OTHER_TEST_VAR", "no")

	tests := []struct {
		name    string
		req     Request
		wantDir string
		wantEnv map[string]string // only the FIELDSYNC_TEST_ ones are compared
	}{
		{"empty", Request{}, wd, map[string]string{"FIELDSYNC_TEST_VAR": "yes"}},
		{"relative dir", Request{Dir: "sub"}, filepath.Join(wd, "sub"), map[string]string{"FIELDSYNC_TEST_VAR": "yes"}},
		{"caller's env", Request{Env: map[string]string{"FIELDSYNC_TEST_OWN": "1"}}, wd, map[string]string{"FIELDSYNC_TEST_OWN": "1"}},
	}
	dir := shortDir(t)
	var got atomic.Pointer[Request]
	startDaemon(t, dir, func(_ context.Context, req Request, _, _ io.Writer) int {
		got.Store(&req)
		return 0
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Forward(t.Context(), dir, tt.req, io.Discard, io.Discard); err != nil {
				t.Fatal(err)
			}
			req := got.Load()
			if req.Dir != tt.wantDir {
				t.Errorf("Dir: got %q, want %q", req.Dir, tt.wantDir)
			}
			env := make(map[string]string)
			for k, v := range req.Env {
				if strings.HasPrefix(k, "FIELDSYNC_TEST_") {
					env[k] = v
				}
				if !strings.HasPrefix(k, envPrefix) || k == "FIELDSYNC_lower" {
					t.Errorf("Env has %q", k)
				}
			}
			if fmt.Sprint(env) != fmt.Sprint(tt.wantEnv) {
				t.Errorf("Env: got %v, want %v", env, tt.wantEnv)
			}
		})
	}
}

// TestForwardConcurrent checks that commands run side by side: each waits
// until all have started.
func TestForwardConcurrent(t *testing.T) {
	const n = 16
	dir := shortDir(t)
	var started atomic.Int64
	all := make(chan struct{})
	startDaemon(t, dir, func(ctx context.Context, req Request, stdout, stderr io.Writer) int {
		if started.Add(1) == n {
			close(all)
		}
		select {
		case <-all:
		case <-ctx.Done():
			return 99
		}
		io.WriteString(stdout, req.Args[0])
		io.WriteString(stderr, "err "+req.Args[0])
		return 0
	})

	type result struct {
		id, stdout, stderr string
		code               int
		err                error
	}
	results := make(chan result, n)
	for i := range n {
		go func() {
			id := fmt.Sprint("cmd", i)
			var stdout, stderr bytes.Buffer
			code, err := Forward(t.Context(), dir, Request{Args: []string{id}}, &stdout, &stderr)
			results <- result{id, stdout.String(), stderr.String(), code, err}
		}()
	}
	for range n {
		r := <-results
		if r.err != nil || r.code != 0 || r.stdout != r.id || r.stderr != "err "+r.id {
			t.Errorf("%s: got %d, %v, stdout %q, stderr %q", r.id, r.code, r.err, r.stdout, r.stderr)
		}
	}
}

func TestForwardNoDaemon(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string) string // returns the data dir
	}{
		{"no socket", func(_ *testing.T, dir string) string { return dir }},
		{"socket left by a daemon that died", func(t *testing.T, dir string) string {
			staleSocket(t, dir)
			return dir
		}},
		{"path too long for a socket", func(_ *testing.T, dir string) string {
			return filepath.Join(dir, strings.Repeat("x", maxSocketPath))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := tt.setup(t, shortDir(t))
			code, err := Forward(t.Context(), dir, Request{Args: []string{"status"}}, io.Discard, io.Discard)
			if !errors.Is(err, ErrNoDaemon) {
				t.Errorf("Forward: got %d, %v; want ErrNoDaemon", code, err)
			}
		})
	}
}

// staleSocket leaves a socket file in dir with nobody listening.
func staleSocket(t *testing.T, dir string) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, socketFile), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
}

func TestForwardTooLarge(t *testing.T) {
	dir := shortDir(t)
	var ran atomic.Bool
	startDaemon(t, dir, func(context.Context, Request, io.Writer, io.Writer) int {
		ran.Store(true)
		return 0
	})
	req := Request{Args: []string{"record", "delivery", "--note", strings.Repeat("x", MaxRequestSize)}}
	_, err := Forward(t.Context(), dir, req, io.Discard, io.Discard)
	if !errors.Is(err, errRequestTooLarge) {
		t.Errorf("Forward: got %v, want errRequestTooLarge", err)
	}
	if ran.Load() {
		t.Error("the daemon ran a request that was too large")
	}
}

// TestForwardClientGone checks that a command is cancelled when its client
// goes away.
func TestForwardClientGone(t *testing.T) {
	dir := shortDir(t)
	started := make(chan struct{})
	cancelled := make(chan error, 1)
	startDaemon(t, dir, func(ctx context.Context, _ Request, stdout, _ io.Writer) int {
		io.WriteString(stdout, "syncing\n")
		close(started)
		<-ctx.Done()
		cancelled <- ctx.Err()
		return 1
	})
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := Forward(ctx, dir, Request{Args: []string{"sync"}}, io.Discard, io.Discard)
		errc <- err
	}()
	<-started
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("Forward: got %v, want context.Canceled", err)
	}
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Errorf("command's context: got %v, want context.Canceled", err)
	}
}

// TestServeShutdown checks that Serve cancels the commands still running
// and returns only once they have, their clients getting their status.
func TestServeShutdown(t *testing.T) {
	dir := shortDir(t)
	started := make(chan struct{})
	var returned atomic.Bool
	d := startDaemon(t, dir, func(ctx context.Context, _ Request, stdout, _ io.Writer) int {
		close(started)
		<-ctx.Done()
		io.WriteString(stdout, "stopped\n")
		returned.Store(true)
		return 7
	})
	type result struct {
		code   int
		stdout string
		err    error
	}
	res := make(chan result, 1)
	go func() {
		var stdout bytes.Buffer
		code, err := Forward(t.Context(), dir, Request{Args: []string{"sync"}}, &stdout, io.Discard)
		res <- result{code, stdout.String(), err}
	}()
	<-started
	d.cancel()
	if err := <-d.done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	d.done = nil
	if !returned.Load() {
		t.Error("Serve returned before the command did")
	}
	if _, err := os.Lstat(filepath.Join(dir, socketFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after Serve returned: %v, want it gone", err)
	}
	if r := <-res; r.err != nil || r.code != 7 || r.stdout != "stopped\n" {
		t.Errorf("client: got %d, %q, %v; want 7, \"stopped\\n\", nil", r.code, r.stdout, r.err)
	}
	d.lock.Unlock()
}

// TestServeRefuses sends requests a daemon must not run.
func TestServeRefuses(t *testing.T) {
	frame := func(payload string) []byte {
		return append(binary.BigEndian.AppendUint32(nil, uint32(len(payload))), payload...)
	}
	abs := filepath.Join(os.TempDir(), "x")
	absJSON := strings.ReplaceAll(abs, `\`, `\\`)
	tests := []struct {
		name string
		send []byte
		want string
	}{
		{"too large", binary.BigEndian.AppendUint32(nil, MaxRequestSize+1), "too large"},
		{"length 0xffffffff", []byte{0xff, 0xff, 0xff, 0xff}, "too large"},
		{"short header", []byte{0, 0}, "unexpected EOF"},
		{"truncated", append(binary.BigEndian.AppendUint32(nil, 100), `{"version":1`...), "unexpected EOF"},
		{"empty", frame(""), "malformed request"},
		{"not JSON", frame("agent status"), "malformed request"},
		{"unknown field", frame(`{"version":1,"args":[],"dir":"` + absJSON + `","stdin":"x"}`), "malformed request"},
		{"two objects", frame(`{"version":1,"dir":"` + absJSON + `"}{}`), "data after"},
		{"newer version", frame(`{"version":2,"args":["status"]}`), "control protocol 2"},
		{"no version", frame(`{"args":["status"],"dir":"` + absJSON + `"}`), "control protocol 0"},
		{"no dir", frame(`{"version":1,"args":["status"]}`), "not absolute"},
		{"relative dir", frame(`{"version":1,"args":["status"],"dir":"site"}`), "not absolute"},
		{"foreign env", frame(`{"version":1,"dir":"` + absJSON + `","env":{"LD_PRELOAD":"/tmp/x.so"}}`), "not a FIELDSYNC_ variable"},
		{"bare prefix env", frame(`{"version":1,"dir":"` + absJSON + `","env":{"FIELDSYNC_":"x"}}`), "not a FIELDSYNC_ variable"},
		{"invalid UTF-8", frame("{\"version\":1,\"dir\":\"" + absJSON + "\",\"args\":[\"\xff\"]}"), "not valid UTF-8"},
		{"NUL in argument", frame(`{"version":1,"dir":"` + absJSON + `","args":["a\u0000b"]}`), "NUL"},
		{"args not strings", frame(`{"version":1,"dir":"` + absJSON + `","args":[1]}`), "malformed request"},
	}
	dir := shortDir(t)
	var ran atomic.Int64
	startDaemon(t, dir, func(context.Context, Request, io.Writer, io.Writer) int {
		ran.Add(1)
		return 0
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := dialRaw(t, dir)
			if _, err := conn.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			conn.CloseWrite()
			var stderr bytes.Buffer
			code, err := readFrames(conn, io.Discard, &stderr)
			if err != nil || code != 1 || !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("got %d, %v, stderr %q; want 1, stderr containing %q", code, err, stderr.String(), tt.want)
			}
		})
	}
	if n := ran.Load(); n != 0 {
		t.Errorf("the daemon ran %d refused requests", n)
	}
}

func dialRaw(t *testing.T, dir string) *net.UnixConn {
	t.Helper()
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: filepath.Join(dir, socketFile), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestServeSilentClient checks that a client that connects and sends
// nothing is dropped.
func TestServeSilentClient(t *testing.T) {
	dir := shortDir(t)
	startDaemon(t, dir, echo, func(s *server) { s.requestTimeout = 20 * time.Millisecond })
	conn := dialRaw(t, dir)
	var stderr bytes.Buffer
	code, err := readFrames(conn, io.Discard, &stderr)
	if err != nil || code != 1 || !strings.Contains(stderr.String(), "timeout") {
		t.Errorf("got %d, %v, stderr %q; want 1 and a timeout", code, err, stderr.String())
	}
}

// TestServeStalledClient checks that a client that stops reading is dropped
// and its command cancelled.
func TestServeStalledClient(t *testing.T) {
	dir := shortDir(t)
	done := make(chan error, 1)
	startDaemon(t, dir, func(ctx context.Context, _ Request, stdout, _ io.Writer) int {
		chunk := make([]byte, MaxFrameSize)
		var err error
		for err == nil {
			_, err = stdout.Write(chunk)
		}
		<-ctx.Done() // cancelled because the write failed
		done <- err
		return 1
	}, func(s *server) { s.writeTimeout = 20 * time.Millisecond })
	conn := dialRaw(t, dir)
	msg, err := encodeRequest(Request{Args: []string{"export"}, Dir: shortDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	// Read nothing.
	if err := <-done; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("write to a stalled client: got %v, want a deadline error", err)
	}
}

func TestServePeerUID(t *testing.T) {
	if runtime.GOOS != "linux" && runtime.GOOS != "darwin" {
		t.Skip("peer credentials are checked on Linux and macOS only")
	}
	dir := shortDir(t)
	var ran atomic.Bool
	startDaemon(t, dir, func(context.Context, Request, io.Writer, io.Writer) int {
		ran.Store(true)
		return 0
	}, func(s *server) { s.uid = os.Getuid() + 1 })
	var stderr bytes.Buffer
	code, err := Forward(t.Context(), dir, Request{Args: []string{"status"}}, io.Discard, &stderr)
	want := fmt.Sprintf("takes commands only from uid %d", os.Getuid()+1)
	if err != nil || code != 1 || !strings.Contains(stderr.String(), want) {
		t.Errorf("got %d, %v, stderr %q; want 1, stderr containing %q", code, err, stderr.String(), want)
	}
	if ran.Load() {
		t.Error("the daemon ran a command from another uid")
	}
}

func TestServeSocketFile(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string)
		wantErr string
	}{
		{"none", func(*testing.T, string) {}, ""},
		{"stale socket", staleSocket, ""},
		{"regular file", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, socketFile), []byte("notes"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "is not a socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortDir(t)
			tt.setup(t, dir)
			l, err := TryLock(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Unlock()
			if tt.wantErr != "" {
				err := Serve(t.Context(), dir, echo, slog.New(slog.DiscardHandler))
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("Serve: got %v, want an error containing %q", err, tt.wantErr)
				}
				if _, err := os.Stat(filepath.Join(dir, socketFile)); err != nil {
					t.Errorf("Serve removed what was not its socket: %v", err)
				}
				return
			}
			serveLocked(t, l, echo)
			fi, err := os.Lstat(filepath.Join(dir, socketFile))
			if err != nil {
				t.Fatal(err)
			}
			if runtime.GOOS != "windows" && fi.Mode().Perm() != 0o600 {
				t.Errorf("socket mode: got %v, want 0600", fi.Mode().Perm())
			}
			var stdout bytes.Buffer
			if code, err := Forward(t.Context(), dir, Request{Args: []string{"hi"}}, &stdout, io.Discard); err != nil || code != 0 || stdout.String() != "hi" {
				t.Errorf("Forward: got %d, %v, %q; want 0, nil, \"hi\"", code, err, stdout.String())
			}
		})
	}
}

func TestServeNeedsLock(t *testing.T) {
	dir := shortDir(t)
	err := Serve(t.Context(), dir, echo, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "does not hold") {
		t.Errorf("Serve without the lock: got %v, want an error", err)
	}
}

// TestRunnerCannotReachOwnDaemon checks that a command the daemon runs gets
// an error, not a deadlock, if it tries to reach the daemon.
func TestRunnerCannotReachOwnDaemon(t *testing.T) {
	dir := shortDir(t)
	startDaemon(t, dir, func(ctx context.Context, req Request, stdout, _ io.Writer) int {
		_, _, aerr := Acquire(ctx, dir, req, io.Discard, io.Discard)
		_, ferr := Forward(ctx, dir, req, io.Discard, io.Discard)
		_, werr := WaitLock(ctx, dir, nil)
		for _, err := range []error{aerr, ferr, werr} {
			fmt.Fprintln(stdout, errors.Is(err, errInDaemon))
		}
		return 0
	})
	var stdout bytes.Buffer
	if _, err := Forward(t.Context(), dir, Request{Args: []string{"status"}}, &stdout, io.Discard); err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(stdout.String()); !slices.Equal(got, []string{"true", "true", "true"}) {
		t.Errorf("errors are errInDaemon (Acquire, Forward, WaitLock): got %v, want all true", got)
	}
}
