package datadir

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrNoDaemon means no daemon answers for the data directory. Nothing was
// sent: the command did not run.
var ErrNoDaemon = errors.New("no daemon answers for the data directory")

// errInDaemon is a command the daemon runs that tries to reach its own
// daemon, which would wait on itself.
var errInDaemon = errors.New("the daemon for this directory is running this very command; use its open state")

// Forward sends req to the daemon holding dir, copies the command's output to
// stdout and stderr as it comes, and returns the command's exit status. An
// empty req.Dir means the current working directory, a nil req.Env this
// process's FIELDSYNC_* variables. stdin is not forwarded. If no daemon
// answers, Forward returns an error matching [ErrNoDaemon]. When ctx ends,
// Forward disconnects, and the daemon cancels the command.
func Forward(ctx context.Context, dir string, req Request, stdout, stderr io.Writer) (int, error) {
	if serving(ctx, dir) {
		return 0, fmt.Errorf("forward to the daemon for %s: %w", dir, errInDaemon)
	}
	path, err := socketPath(dir)
	if err != nil {
		return 0, fmt.Errorf("forward to %s: %w", dir, ErrNoDaemon) // no daemon can listen there
	}
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("forward to %s: %w", dir, ErrNoDaemon)
	}
	req, err = fillRequest(req)
	var msg []byte
	if err == nil {
		msg, err = encodeRequest(req)
	}
	if err != nil {
		return 0, fmt.Errorf("forward to the daemon for %s: %w", dir, err)
	}

	d := net.Dialer{Timeout: dialTimeout}
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if noListener(err) {
			return 0, fmt.Errorf("forward to %s: %w", dir, ErrNoDaemon)
		}
		return 0, fmt.Errorf("connect to the daemon for %s: %w", dir, err)
	}
	defer conn.Close()
	// Closing the connection is how the daemon learns to cancel.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	conn.SetWriteDeadline(time.Now().Add(requestTimeout))
	if _, err := conn.Write(msg); err != nil {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("send the command to the daemon for %s: %w", dir, ctx.Err())
		}
		// A daemon that refuses a command may answer before reading it
		// all; the answer is then waiting to be read.
		conn.SetReadDeadline(time.Now().Add(requestTimeout))
		if code, rerr := readFrames(conn, stdout, stderr); rerr == nil {
			return code, nil
		}
		return 0, fmt.Errorf("send the command to the daemon for %s: %w", dir, err)
	}
	conn.SetWriteDeadline(time.Time{})
	code, err := readFrames(conn, stdout, stderr)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return 0, fmt.Errorf("run the command in the daemon for %s: %w", dir, err)
	}
	return code, nil
}

// fillRequest fills in what the caller left to Forward.
func fillRequest(req Request) (Request, error) {
	if req.Dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return req, fmt.Errorf("find the working directory: %w", err)
		}
		req.Dir = wd
	} else if !filepath.IsAbs(req.Dir) {
		abs, err := filepath.Abs(req.Dir)
		if err != nil {
			return req, err
		}
		req.Dir = abs
	}
	if req.Env == nil {
		for _, kv := range os.Environ() {
			k, v, _ := strings.Cut(kv, "=")
			if !validEnvName(k) {
				continue
			}
			if req.Env == nil {
				req.Env = make(map[string]string)
			}
			req.Env[k] = v
		}
	}
	return req, nil
}

// Acquire gets a command at dir, in one of three ways:
//
//   - dir is free: Acquire returns its Lock. The caller runs the command
//     itself, then unlocks.
//   - A daemon holds dir: Acquire forwards req to it (see [Forward]), copying
//     the command's output, and returns a nil Lock and the command's exit
//     status.
//   - Another command holds dir: Acquire writes
//     "waiting for DIR: in use by pid N (COMMAND)" to stderr, once, and
//     waits until dir is free or a daemon takes it, whichever comes first,
//     or until ctx ends.
func Acquire(ctx context.Context, dir string, req Request, stdout, stderr io.Writer) (*Lock, int, error) {
	return acquire(ctx, dir, req, stdout, stderr, nil)
}

// acquire is Acquire; tick, for tests, is called before every pause.
func acquire(ctx context.Context, dir string, req Request, stdout, stderr io.Writer, tick func()) (*Lock, int, error) {
	code := 0
	notify := func(b BusyError) {
		fmt.Fprintf(stderr, "waiting for %s: in use by %s\n", dir, b.holder())
	}
	probe := func() (bool, error) {
		c, err := Forward(ctx, dir, req, stdout, stderr)
		if errors.Is(err, ErrNoDaemon) {
			return false, nil
		}
		code = c
		return true, err
	}
	l, err := wait(ctx, dir, notify, probe, tick)
	return l, code, err
}
