package datadir

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gofrs/flock"
)

const (
	// lockFile is the file in the data directory that is locked.
	lockFile = "lock"
	// holderOffset is where the holder's details start in the lock file;
	// byte 0 is locked on Windows and cannot be read by others.
	holderOffset = 1
	// maxHolderSize bounds how much of the lock file is read.
	maxHolderSize = 4096
	// maxCommandLen bounds the command line kept in the lock file.
	maxCommandLen = 256

	// Polling for a busy lock: flock(2) and LockFileEx cannot be woken by a
	// context, so a cancellable wait polls, backing off to pollMax.
	pollMin = 5 * time.Millisecond
	pollMax = 250 * time.Millisecond
	// notifyGrace is how long a waiter holds back its message while the
	// holder has not yet written its details (it has just taken the lock).
	notifyGrace = 200 * time.Millisecond
)

// ErrBusy means another process holds the data directory. Errors from
// [TryLock] that match it are *[BusyError]s naming the holder.
var ErrBusy = errors.New("data directory in use")

// BusyError says who holds a data directory. PID is 0 and Command empty when
// the holder is not known (it has not yet written its details).
type BusyError struct {
	PID     int
	Command string
	Dir     string
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("%s is in use by %s", e.Dir, e.holder())
}

// Is makes errors.Is(err, ErrBusy) true for a *BusyError.
func (e *BusyError) Is(target error) bool { return target == ErrBusy }

func (e *BusyError) holder() string {
	switch {
	case e.PID == 0:
		return "another process"
	case e.Command == "":
		return fmt.Sprintf("pid %d", e.PID)
	}
	return fmt.Sprintf("pid %d (%s)", e.PID, e.Command)
}

// Lock is an exclusive hold on a data directory, from [TryLock] or
// [WaitLock] until [Lock.Unlock]. A Lock is held by a process, not by a
// goroutine; the kernel releases it when the process ends.
type Lock struct {
	dir  string
	key  string
	path string

	mu sync.Mutex
	fl *flock.Flock // nil once unlocked
}

// held lists the data directories this process holds, so that [Serve] can
// check it is called under the lock.
var held struct {
	sync.Mutex
	dirs map[string]bool
}

// dirKey names a directory the same way however it was spelled.
func dirKey(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		return abs
	}
	return filepath.Clean(dir)
}

func holds(dir string) bool {
	held.Lock()
	defer held.Unlock()
	return held.dirs[dirKey(dir)]
}

// TryLock takes the lock on dir without waiting. If another process holds
// it, TryLock returns a *[BusyError] (matching [ErrBusy]). dir must exist:
// TryLock creates the lock file, not the directory.
func TryLock(dir string) (*Lock, error) {
	path := filepath.Join(dir, lockFile)
	fl := flock.New(path, flock.SetPermissions(0o600))
	ok, err := fl.TryLock()
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	if !ok {
		return nil, readHolder(dir)
	}
	l := &Lock{dir: dir, key: dirKey(dir), path: path, fl: fl}
	// The details only serve messages to waiters; a lock without them (a
	// full disk, say) is still a lock, and waiters then say "another process".
	_ = writeHolder(path, holder{PID: os.Getpid(), Command: commandLine(), Since: time.Now().UTC()})
	held.Lock()
	if held.dirs == nil {
		held.dirs = make(map[string]bool)
	}
	held.dirs[l.key] = true
	held.Unlock()
	return l, nil
}

// WaitLock takes the lock on dir, waiting while another process holds it,
// until ctx ends. It calls notify (if not nil) once, with the holder, when it
// starts to wait.
func WaitLock(ctx context.Context, dir string, notify func(holder BusyError)) (*Lock, error) {
	return wait(ctx, dir, notify, nil, nil)
}

// wait is WaitLock, with probe called at every try while the directory is
// busy: when it returns stop, wait returns (nil, err) at once. tick, for
// tests, is called before every pause.
func wait(ctx context.Context, dir string, notify func(BusyError), probe func() (stop bool, err error), tick func()) (*Lock, error) {
	if serving(ctx, dir) {
		return nil, fmt.Errorf("lock %s: %w", dir, errInDaemon)
	}
	start := time.Now()
	notified := notify == nil
	delay := pollMin
	for {
		l, err := TryLock(dir)
		var busy *BusyError
		if !errors.As(err, &busy) {
			return l, err
		}
		if probe != nil {
			if stop, err := probe(); stop {
				return nil, err
			}
		}
		if !notified && (busy.PID != 0 || time.Since(start) >= notifyGrace) {
			notify(*busy)
			notified = true
		}
		if tick != nil {
			tick()
		}
		// Jitter keeps waiters that started together from trying together.
		t := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("wait for %s, in use by %s: %w", dir, busy.holder(), ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, pollMax)
	}
}

// Dir returns the data directory, as it was given to [TryLock].
func (l *Lock) Dir() string { return l.dir }

// Unlock releases the lock. Calling it again does nothing.
func (l *Lock) Unlock() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fl == nil {
		return nil
	}
	held.Lock()
	delete(held.dirs, l.key)
	held.Unlock()
	// Forget the holder first, while still holding the lock, so that nobody
	// reads our details as those of the next holder.
	_ = clearHolder(l.path)
	err := l.fl.Unlock() // also closes the file
	l.fl = nil
	if err != nil {
		return fmt.Errorf("unlock %s: %w", l.dir, err)
	}
	return nil
}

// holder is what the lock file says about who holds it.
type holder struct {
	PID     int       `json:"pid"`
	Command string    `json:"command"`
	Since   time.Time `json:"since"`
}

func writeHolder(path string, h holder) error {
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	data = append(data, '\n')
	// A second handle: the lock's own is read-only, and on Windows a handle
	// that does not own the lock may write anywhere but byte 0.
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(data, holderOffset)
	if err == nil {
		err = f.Truncate(holderOffset + int64(len(data)))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func clearHolder(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	err = f.Truncate(holderOffset)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// readHolder returns a BusyError for dir with whatever the lock file says.
// The holder may be writing it at this very moment; what cannot be read is
// reported as unknown.
func readHolder(dir string) *BusyError {
	e := &BusyError{Dir: dir}
	f, err := os.Open(filepath.Join(dir, lockFile))
	if err != nil {
		return e
	}
	defer f.Close()
	buf := make([]byte, maxHolderSize)
	n, err := f.ReadAt(buf, holderOffset)
	if err != nil && !errors.Is(err, io.EOF) {
		return e
	}
	var h holder
	if json.Unmarshal(bytes.TrimSpace(buf[:n]), &h) != nil || h.PID <= 0 {
		return e
	}
	e.PID, e.Command = h.PID, truncate(h.Command, maxCommandLen)
	return e
}

// commandLine is this process's command line, for others' messages.
func commandLine() string {
	args := append([]string{filepath.Base(os.Args[0])}, os.Args[1:]...)
	return truncate(strings.Join(args, " "), maxCommandLen)
}

// truncate cuts s to at most n bytes, at a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "…"
	s = s[:n-len(mark)]
	// Drop the start of a rune the cut went through.
	for range utf8.UTFMax - 1 {
		if r, size := utf8.DecodeLastRuneInString(s); r != utf8.RuneError || size != 1 {
			break
		}
		s = s[:len(s)-1]
	}
	return s + mark
}
