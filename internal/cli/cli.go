// Package cli holds what the agent and hub command lines share: running a
// cobra command tree with one-line errors and exit codes, opening a data
// directory or forwarding the command to the daemon that holds it, and JSON
// output.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"fieldsync/internal/datadir"
)

// ExitError ends a command with a given exit status and no further message;
// a forwarded command uses it to pass on the daemon's status.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// Execute runs root with args and returns the process exit status. Errors are
// printed as one line prefixed with the program name.
func Execute(ctx context.Context, root *cobra.Command, args []string, stdout, stderr io.Writer) int {
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SilenceUsage = true
	root.SilenceErrors = true
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	if e, ok := errors.AsType[*ExitError](err); ok {
		return e.Code
	}
	msg := err.Error()
	if strings.HasPrefix(msg, "unknown flag") || strings.HasPrefix(msg, "unknown command") ||
		strings.HasPrefix(msg, "accepts ") || strings.HasPrefix(msg, "requires ") ||
		strings.Contains(msg, "required flag") || strings.HasPrefix(msg, "invalid argument") {
		msg += " (see --help)"
	}
	fmt.Fprintf(stderr, "%s: %s\n", root.Name(), oneLine(msg))
	return 1
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// PrintJSON writes v as one indented JSON document.
func PrintJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// DefaultDir is the data directory when --dir is not given: $FIELDSYNC_DIR,
// else a per-user folder named for the program.
func DefaultDir(program string) string {
	if d := os.Getenv("FIELDSYNC_DIR"); d != "" {
		return d
	}
	if d, err := os.UserConfigDir(); err == nil {
		return filepath.Join(d, "fieldsync", program)
	}
	return filepath.Join(".fieldsync", program)
}

// Session is how one command invocation reaches its data directory: either
// the daemon's already-open state (when the daemon runs the command for a
// client) or the directory itself, locked for the command's duration.
type Session[T any] struct {
	Dir  string
	Args []string // the original arguments, for forwarding
	Cwd  string   // where relative paths resolve
	// Open opens the state once the lock is held.
	Open func(dir string) (T, error)
	// Held is set when the daemon runs this command on its open state.
	Held *T
	// Missing is the error for a data directory that does not exist: it
	// tells the user how to create one.
	Missing error
	Stderr  io.Writer
	lock    *datadir.Lock
	opened  T
	hasOpen bool
}

// Abs resolves a path the user typed against the user's working directory,
// which is not the daemon's when the command was forwarded.
func (s *Session[T]) Abs(p string) string {
	if filepath.IsAbs(p) || s.Cwd == "" {
		return p
	}
	return filepath.Join(s.Cwd, p)
}

// State returns the open state: the daemon's, or the directory's own after
// taking its lock. When a daemon holds the directory, the whole command is
// forwarded to it and State returns an *ExitError with the daemon's status
// after copying its output; when another command holds it, State waits.
func (s *Session[T]) State(ctx context.Context, stdout io.Writer) (T, error) {
	var zero T
	if s.Held != nil {
		return *s.Held, nil
	}
	if s.hasOpen {
		return s.opened, nil
	}
	if _, err := os.Stat(s.Dir); errors.Is(err, os.ErrNotExist) && s.Missing != nil {
		return zero, fmt.Errorf("%s: %w", s.Dir, s.Missing)
	}
	lock, code, err := datadir.Acquire(ctx, s.Dir, datadir.Request{Args: s.Args, Dir: s.Cwd}, stdout, s.Stderr)
	if err != nil {
		return zero, fmt.Errorf("open %s: %w", s.Dir, err)
	}
	if lock == nil {
		// The daemon ran the command and its output is already copied.
		return zero, &ExitError{Code: code}
	}
	st, err := s.Open(s.Dir)
	if err != nil {
		lock.Unlock()
		return zero, err
	}
	s.lock, s.opened, s.hasOpen = lock, st, true
	return st, nil
}

// Release closes state the session opened itself and unlocks the directory.
func (s *Session[T]) Release(closeFn func(T) error) error {
	if !s.hasOpen {
		return nil
	}
	err := closeFn(s.opened)
	s.hasOpen = false
	if uerr := s.lock.Unlock(); err == nil {
		err = uerr
	}
	return err
}

// Own opens the state for a daemon, which must hold the directory itself:
// when another process holds it, Own fails and says which.
func (s *Session[T]) Own() (T, error) {
	var zero T
	if s.Held != nil {
		return zero, errors.New("the daemon is already running on this directory")
	}
	if _, err := os.Stat(s.Dir); errors.Is(err, os.ErrNotExist) && s.Missing != nil {
		return zero, fmt.Errorf("%s: %w", s.Dir, s.Missing)
	}
	lock, err := datadir.TryLock(s.Dir)
	if err != nil {
		return zero, fmt.Errorf("%s is in use: %w", s.Dir, err)
	}
	st, err := s.Open(s.Dir)
	if err != nil {
		lock.Unlock()
		return zero, err
	}
	s.lock, s.opened, s.hasOpen = lock, st, true
	return st, nil
}

// NewLogger returns the logger for a command: daemons say what they do,
// one-shot commands only what went wrong; verbose says everything.
func NewLogger(stderr io.Writer, daemon, verbose bool) *slog.Logger {
	level := slog.LevelWarn
	if daemon {
		level = slog.LevelInfo
	}
	if verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
}

// ServeCommands runs, until ctx ends, the control socket through which a
// command started while this daemon holds dir is passed to it. root builds
// the command tree for one such command, bound to the daemon's open state.
func ServeCommands(ctx context.Context, dir string, root func(req datadir.Request, stderr io.Writer) *cobra.Command, log *slog.Logger) error {
	return datadir.Serve(ctx, dir, func(ctx context.Context, req datadir.Request, stdout, stderr io.Writer) int {
		return Execute(ctx, root(req, stderr), req.Args, stdout, stderr)
	}, log)
}
