package datadir

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Runner runs one forwarded command inside the daemon, writing its output to
// stdout and stderr, and returns its exit status. Runners run concurrently,
// one per client. ctx ends when the client goes away or the daemon shuts
// down. A Runner resolves relative paths against req.Dir, reads req.Env
// rather than the daemon's environment, and reads nothing from stdin; it
// must not call [Acquire], [Forward] or [WaitLock] for the daemon's own
// directory (they fail: the daemon would be waiting on itself).
type Runner func(ctx context.Context, req Request, stdout, stderr io.Writer) int

// Serve answers on the control socket of dir, running each request with run
// in its own goroutine, until ctx ends; then it stops listening, cancels the
// commands still running, waits for them to return and returns nil. The
// calling process must hold dir's [Lock] for as long as Serve runs.
func Serve(ctx context.Context, dir string, run Runner, log *slog.Logger) error {
	s := &server{
		dir:            dir,
		run:            run,
		log:            log,
		uid:            os.Getuid(),
		requestTimeout: requestTimeout,
		writeTimeout:   writeTimeout,
	}
	return s.serve(ctx)
}

// server is one Serve; tests make their own with other limits.
type server struct {
	dir            string
	run            Runner
	log            *slog.Logger
	uid            int // the only uid served, where peers' uids are known
	requestTimeout time.Duration
	writeTimeout   time.Duration
}

// servingKey marks the context of a command the daemon runs, with the key
// of the directory it serves.
type servingKey struct{}

// serving reports whether ctx is that of a command the daemon for dir runs.
func serving(ctx context.Context, dir string) bool {
	key, _ := ctx.Value(servingKey{}).(string)
	return key != "" && key == dirKey(dir)
}

func (s *server) serve(ctx context.Context) error {
	if !holds(s.dir) {
		return fmt.Errorf("serve %s: this process does not hold the directory's lock", s.dir)
	}
	path, err := socketPath(s.dir)
	if err != nil {
		return err
	}
	if err := removeStale(path); err != nil {
		return err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "unix", path)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := restrictSocket(path); err != nil {
		ln.Close()
		return fmt.Errorf("restrict access to %s: %w", path, err)
	}
	s.log.Info("control socket ready", "path", path)

	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxConns)
	var pause time.Duration
	for ctx.Err() == nil {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			continue
		}
		conn, aerr := ln.Accept()
		if aerr != nil {
			<-sem
			if ctx.Err() != nil {
				break
			}
			if errors.Is(aerr, net.ErrClosed) {
				err = fmt.Errorf("serve %s: %w", path, aerr)
				break
			}
			// Out of file descriptors, say: wait and try again, as
			// net/http does.
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			s.log.Warn("accept on control socket", "path", path, "err", aerr)
			t := time.NewTimer(pause)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
			continue
		}
		pause = 0
		wg.Go(func() {
			defer func() { <-sem }()
			s.handle(ctx, conn.(*net.UnixConn))
		})
	}
	ln.Close() // also removes the socket file
	wg.Wait()
	return err
}

// handle answers one connection.
func (s *server) handle(ctx context.Context, conn *net.UnixConn) {
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.WithValue(ctx, servingKey{}, dirKey(s.dir)))
	defer cancel()
	resp := &frames{w: conn, timeout: s.writeTimeout, onFail: cancel}
	log := s.log

	uid, pid, known, err := peerCred(conn)
	if err != nil {
		log.Warn("refused a command: cannot tell who sent it", "err", err)
		return
	}
	if known {
		log = log.With("peer_pid", pid)
		if uid != s.uid {
			log.Warn("refused a command from another user", "peer_uid", uid)
			s.refuse(conn, resp, fmt.Sprintf("the daemon for %s takes commands only from uid %d; run the command as that user", s.dir, s.uid))
			return
		}
	}

	conn.SetReadDeadline(time.Now().Add(s.requestTimeout))
	req, err := decodeRequest(conn)
	if err != nil {
		log.Warn("refused a command", "err", err)
		s.refuse(conn, resp, err.Error())
		return
	}
	conn.SetReadDeadline(time.Time{})

	// The client sends nothing after its request: a read that returns means
	// it has gone (or broke the protocol), and its command is cancelled.
	var watch sync.WaitGroup
	watch.Go(func() {
		var b [1]byte
		conn.Read(b[:])
		cancel()
	})
	start := time.Now()
	code := s.run(ctx, req, streamWriter{resp, streamStdout}, streamWriter{resp, streamStderr})
	err = resp.finish(code)
	conn.SetReadDeadline(time.Now()) // ends the watch
	watch.Wait()
	log.Debug("ran a forwarded command", "cmd", commandPath(req.Args), "exit", code, "took", time.Since(start))
	if err != nil {
		log.Debug("client left before the command finished", "cmd", commandPath(req.Args), "err", err)
	}
}

// refuse answers a request that is not run.
func (s *server) refuse(conn *net.UnixConn, resp *frames, msg string) {
	line := fmt.Sprintf("%s: %s\n", filepath.Base(os.Args[0]), msg)
	if _, err := resp.write(streamStderr, []byte(line)); err != nil {
		return
	}
	if resp.finish(1) != nil {
		return
	}
	// Closing with the request still unread may reset the connection and
	// lose the answer: let the client read it and hang up first.
	conn.CloseWrite()
	conn.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.Copy(io.Discard, io.LimitReader(conn, requestHeaderSize+MaxRequestSize))
}

// commandPath is the leading words of args, which name the command, for the
// log; the rest may hold what the user typed as notes.
func commandPath(args []string) string {
	var words []string
	for _, a := range args {
		if strings.HasPrefix(a, "-") || len(words) == 3 {
			break
		}
		words = append(words, a)
	}
	return strings.Join(words, " ")
}

// socketPath returns the control socket of dir.
func socketPath(dir string) (string, error) {
	path := filepath.Join(dir, socketFile)
	if len(path) > maxSocketPath {
		return "", fmt.Errorf("control socket path %q is %d bytes, longer than the %d a socket path may have: use a shorter data directory path", path, len(path), maxSocketPath)
	}
	return path, nil
}

// removeStale removes a socket file left by a daemon that died. Anything
// else at that path is left alone: it is not ours to remove.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check for a stale control socket: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket: move it out of the data directory", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale control socket: %w", err)
	}
	return nil
}
