package inbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"fieldsync/internal/atomicfile"
)

// The folders inside the inbox that taken and rejected files move to.
const (
	DoneDir     = "done"
	RejectedDir = "rejected"
)

// Defaults for Options.
const (
	DefaultSettle      = 2 * time.Second
	DefaultAttachWait  = 10 * time.Minute
	DefaultOrphanAfter = 24 * time.Hour
)

// maxMoveRetry caps the wait between attempts to move a file that could not
// be moved (locked by another program on Windows, say).
const maxMoveRetry = time.Minute

// Options tune a Watcher. The zero value gives the defaults.
type Options struct {
	// Settle is how long a file must go unchanged before it is taken
	// (DefaultSettle if zero).
	Settle time.Duration
	// AttachWait is how long a record file waits for the attachments it
	// names before it is rejected (DefaultAttachWait if zero).
	AttachWait time.Duration
	// OrphanAfter is how long an attachment waits for a record file to name
	// it before it is rejected (DefaultOrphanAfter if zero).
	OrphanAfter time.Duration
	// Logger receives what the watcher does, with the keys file, records and
	// reason; nil discards it.
	Logger *slog.Logger
}

// Ingester stores the records of one record file.
type Ingester interface {
	// Ingest stores entries, read from the record file at the absolute path
	// file, all or none, and returns the ids of the stored records.
	// attachments maps each name in the entries' Attach to the absolute path
	// of that file in the inbox; the files stay there until Ingest returns.
	// An error rejects the record file, with the error as the reason;
	// but an error once ctx has ended leaves the file in the inbox, to be
	// offered again at the next start.
	Ingest(ctx context.Context, file string, entries []Entry, attachments map[string]string) ([]string, error)
}

// Watcher takes the files dropped into an inbox folder. Make one with
// NewWatcher.
type Watcher struct {
	dir    string
	ingest Ingester
	opts   Options
	log    *slog.Logger

	// Owned by Serve's goroutine.
	perm  fs.FileMode // of the inbox folder
	files map[string]*file
}

// file is a file in the inbox that has not been taken yet.
type file struct {
	name    string
	record  bool      // a record file, not an attachment
	seen    time.Time // when the watcher first saw it
	size    int64     // as when its last change was seen
	mtime   time.Time // as when its last change was seen
	settled bool
	due     time.Time // when to look at it next; zero: when something else happens

	// A record file once parsed, while it waits for its attachments.
	entries   []Entry
	parsed    bool
	waitUntil time.Time
	readFails int

	// A decided move that has not happened yet.
	move      *move
	moveFails int
}

// move is where a file goes.
type move struct {
	dir    string // DoneDir or RejectedDir
	reason string // for RejectedDir
	dst    string // the name chosen in dir, once chosen
}

// NewWatcher returns a Watcher for the inbox folder dir that passes the
// records of the files dropped there to ingest.
func NewWatcher(dir string, ingest Ingester, opts Options) *Watcher {
	if opts.Settle <= 0 {
		opts.Settle = DefaultSettle
	}
	if opts.AttachWait <= 0 {
		opts.AttachWait = DefaultAttachWait
	}
	if opts.OrphanAfter <= 0 {
		opts.OrphanAfter = DefaultOrphanAfter
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Watcher{dir: dir, ingest: ingest, opts: opts, log: log}
}

// Watch watches the inbox folder dir until ctx ends, passing the records of
// the files dropped there to ingest. See NewWatcher and Watcher.Serve.
func Watch(ctx context.Context, dir string, ingest Ingester, opts Options) error {
	return NewWatcher(dir, ingest, opts).Serve(ctx)
}

// Serve creates the inbox folder and its done and rejected folders if they
// are missing, takes the files already there, then watches the folder for
// new files until ctx ends. It returns nil when ctx ends, or an error if the
// folder cannot be watched. Serve may be called once.
func (w *Watcher) Serve(ctx context.Context) error {
	dir, err := filepath.Abs(w.dir)
	if err != nil {
		return fmt.Errorf("inbox %s: %w", w.dir, err)
	}
	w.dir = dir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("inbox: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("inbox: %w", err)
	}
	// Whoever may drop files into the inbox may read done and rejected,
	// and the reasons.
	w.perm = fi.Mode().Perm()
	for _, d := range []string{w.path(DoneDir), w.path(RejectedDir)} {
		if err := os.MkdirAll(d, w.perm); err != nil {
			return fmt.Errorf("inbox: %w", err)
		}
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("inbox %s: watch: %w", dir, err)
	}
	defer fw.Close() // waits for fsnotify's reader goroutine
	if err := fw.Add(dir); err != nil {
		return fmt.Errorf("inbox %s: watch: %w", dir, err)
	}
	w.files = make(map[string]*file)
	// Watching starts before the scan, so nothing dropped in between is
	// missed.
	if err := w.scan(time.Now()); err != nil {
		return err
	}

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if ctx.Err() != nil {
			return nil
		}
		if next, ok := w.next(); ok {
			timer.Reset(time.Until(next))
		} else {
			timer.Stop()
		}
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return fmt.Errorf("inbox %s: watch ended", dir)
			}
			if err := w.event(ev, time.Now()); err != nil {
				return err
			}
		case err, ok := <-fw.Errors:
			if !ok {
				return fmt.Errorf("inbox %s: watch ended", dir)
			}
			// Events may have been lost (a queue overflow, say): look at
			// the folder itself.
			w.log.Warn("inbox watch failed; rescanning", "file", dir, "reason", err)
			if err := w.scan(time.Now()); err != nil {
				return err
			}
		case <-timer.C:
			w.tick(ctx, time.Now())
		}
	}
}

func (w *Watcher) path(elem ...string) string {
	return filepath.Join(append([]string{w.dir}, elem...)...)
}

// next returns the earliest time a file is due.
func (w *Watcher) next() (time.Time, bool) {
	var next time.Time
	for _, f := range w.files {
		if !f.due.IsZero() && (next.IsZero() || f.due.Before(next)) {
			next = f.due
		}
	}
	return next, !next.IsZero()
}

// ignored reports whether name is a file the inbox leaves alone: hidden,
// temporary, or being downloaded.
func ignored(name string) bool {
	lower := strings.ToLower(name)
	if strings.HasPrefix(name, ".") || strings.HasPrefix(name, "~$") || strings.HasSuffix(name, "~") {
		return true
	}
	for _, s := range []string{".tmp", ".part", ".partial", ".swp", ".crdownload", ".download"} {
		if strings.HasSuffix(lower, s) {
			return true
		}
	}
	return lower == "thumbs.db" || lower == "desktop.ini"
}

// scan looks at every file in the inbox: at start, and after events were
// lost.
func (w *Watcher) scan(now time.Time) error {
	des, err := os.ReadDir(w.dir)
	if err != nil {
		return fmt.Errorf("inbox: %w", err)
	}
	present := make(map[string]bool, len(des))
	for _, de := range des {
		present[de.Name()] = true
		if ignored(de.Name()) || de.IsDir() {
			continue
		}
		fi, err := de.Info()
		if err != nil {
			continue // gone since ReadDir
		}
		if f := w.files[de.Name()]; f != nil && f.size == fi.Size() && f.mtime.Equal(fi.ModTime()) {
			continue
		}
		w.changed(de.Name(), fi, now)
	}
	for name := range w.files {
		if !present[name] {
			delete(w.files, name)
		}
	}
	return nil
}

// event notes a change reported by fsnotify.
func (w *Watcher) event(ev fsnotify.Event, now time.Time) error {
	if filepath.Clean(ev.Name) == w.dir {
		if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
			return fmt.Errorf("inbox %s was removed or renamed", w.dir)
		}
		return nil
	}
	if filepath.Dir(ev.Name) != w.dir {
		return nil
	}
	name := filepath.Base(ev.Name)
	if ignored(name) {
		return nil
	}
	fi, err := os.Lstat(ev.Name)
	if errors.Is(err, fs.ErrNotExist) {
		// Moved away or deleted, by us or by someone.
		if f := w.files[name]; f != nil {
			delete(w.files, name)
			if !f.record {
				w.wakeWaiting(now) // a record file may wait for it in vain
			}
		}
		return nil
	}
	if err != nil || fi.IsDir() {
		return nil
	}
	w.changed(name, fi, now)
	return nil
}

// changed notes that the file name, with fi, was created or changed: it
// has to settle again before it is taken.
func (w *Watcher) changed(name string, fi fs.FileInfo, now time.Time) {
	f := w.files[name]
	if f == nil {
		f = &file{name: name, record: isRecordFile(name), seen: now}
		w.files[name] = f
	}
	if f.move != nil {
		return // already decided; the move is being retried
	}
	f.size, f.mtime = fi.Size(), fi.ModTime()
	f.settled = false
	f.parsed, f.entries = false, nil
	f.due = now.Add(w.opts.Settle)
}

// tick looks at the files that are due.
func (w *Watcher) tick(ctx context.Context, now time.Time) {
	var due []*file
	for _, f := range w.files {
		if !f.due.IsZero() && !f.due.After(now) {
			due = append(due, f)
		}
	}
	// Attachments first, so that a record file and its attachments that
	// settle together are taken together; then in the order they came.
	slices.SortFunc(due, func(a, b *file) int {
		if a.record != b.record {
			if a.record {
				return 1
			}
			return -1
		}
		return cmp.Or(a.seen.Compare(b.seen), strings.Compare(a.name, b.name))
	})
	for _, f := range due {
		if ctx.Err() != nil {
			return
		}
		if w.files[f.name] != f || f.due.IsZero() || f.due.After(now) {
			continue // taken or moved along with another file meanwhile
		}
		w.look(ctx, f, now)
	}
}

// look does what is due for f.
func (w *Watcher) look(ctx context.Context, f *file, now time.Time) {
	f.due = time.Time{}
	switch {
	case f.move != nil:
		w.retryMove(f, now)
	case !f.settled:
		w.settle(ctx, f, now)
	case f.record:
		w.take(ctx, f, now) // its attachments' wait is over
	default:
		w.orphan(f, now)
	}
}

// settle takes f if it has not changed since its last change was reported.
func (w *Watcher) settle(ctx context.Context, f *file, now time.Time) {
	fi, err := os.Lstat(w.path(f.name))
	if errors.Is(err, fs.ErrNotExist) {
		delete(w.files, f.name)
		return
	}
	if err != nil {
		w.log.Warn("cannot look at inbox file", "file", f.name, "reason", err)
		f.due = now.Add(w.opts.Settle)
		return
	}
	if fi.Size() != f.size || !fi.ModTime().Equal(f.mtime) {
		// Changed without an event (or the event is still queued).
		w.changed(f.name, fi, now)
		return
	}
	// Irregular files stay allowed: Windows reports files with reparse
	// points (OneDrive, deduplication) so, and they read as usual.
	if fi.Mode()&(fs.ModeSymlink|fs.ModeDevice|fs.ModeCharDevice|fs.ModeNamedPipe|fs.ModeSocket) != 0 {
		w.reject(f, "is not a regular file (a link, device or pipe); copy the file itself into the inbox", now)
		return
	}
	f.settled = true
	if f.record {
		w.take(ctx, f, now)
		return
	}
	f.due = f.seen.Add(w.opts.OrphanAfter)
	w.log.Debug("inbox attachment waits for a record file", "file", f.name)
	w.wakeWaiting(now) // record files waiting for it may now be complete
}

// wakeWaiting makes the record files that wait for attachments look again.
func (w *Watcher) wakeWaiting(now time.Time) {
	for _, r := range w.files {
		if r.record && r.parsed && r.move == nil {
			r.due = now
		}
	}
}

// take ingests the settled record file f if all its attachments are there
// and settled, and moves it and them to done; or rejects it.
func (w *Watcher) take(ctx context.Context, f *file, now time.Time) {
	first := !f.parsed
	if !f.parsed {
		entries, err := w.parse(f)
		if err != nil {
			var pe *ParseError
			if errors.As(err, &pe) || f.readFails >= 5 {
				w.reject(f, err.Error(), now)
				return
			}
			// Windows refuses to open a file that another program still
			// holds; try again a little later.
			f.readFails++
			w.log.Warn("cannot read inbox file; retrying", "file", f.name, "reason", err)
			f.settled = false
			f.due = now.Add(w.opts.Settle)
			return
		}
		f.entries, f.parsed, f.readFails = entries, true, 0
		f.waitUntil = now.Add(w.opts.AttachWait)
	}

	attachments := make(map[string]string)
	var files []*file
	var missing []string
	ready := true
	for _, e := range f.entries {
		for _, name := range e.Attach {
			if _, ok := attachments[name]; ok {
				continue
			}
			a := w.attachment(name)
			switch {
			case a == nil:
				missing = append(missing, name)
			case !a.settled:
				ready = false
			default:
				attachments[name] = w.path(a.name)
				if !slices.Contains(files, a) {
					files = append(files, a)
				}
			}
		}
	}
	if len(missing) > 0 || !ready {
		if len(missing) > 0 && !now.Before(f.waitUntil) {
			w.reject(f, fmt.Sprintf("attachment %q never arrived (waited %s); drop it into the inbox, then this file again", missing[0], formatDuration(w.opts.AttachWait)), now)
			return
		}
		if len(missing) > 0 && first {
			w.log.Info("inbox file waits for its attachments", "file", f.name, "missing", missing)
		}
		f.due = time.Time{} // woken when an attachment settles or goes
		if len(missing) > 0 {
			f.due = f.waitUntil
		}
		return
	}

	ids, err := w.ingest.Ingest(ctx, w.path(f.name), f.entries, attachments)
	if err != nil {
		if ctx.Err() != nil {
			// Stopping: the file stays and is offered again next time.
			f.due = now
			return
		}
		w.reject(f, err.Error(), now)
		return
	}
	w.log.Info("inbox file taken", "file", f.name, "records", len(ids))
	// The record file first: once it is in done, it is not offered again.
	for _, x := range append([]*file{f}, files...) {
		x.move = &move{dir: DoneDir}
		x.due = time.Time{}
		w.retryMove(x, now)
	}
}

// parse reads the record file f.
func (w *Watcher) parse(f *file) ([]Entry, error) {
	r, err := os.Open(w.path(f.name))
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return Parse(f.name, r)
}

// attachment returns the settled-or-settling attachment file called name, or
// nil. A name that matches no file exactly matches a file whose name differs
// only in case, if there is exactly one (Windows users do not see case).
func (w *Watcher) attachment(name string) *file {
	if a := w.files[name]; a != nil && !a.record && a.move == nil {
		return a
	}
	var found *file
	for _, a := range w.files {
		if !a.record && a.move == nil && strings.EqualFold(a.name, name) {
			if found != nil {
				return nil
			}
			found = a
		}
	}
	return found
}

// orphan rejects the attachment f, which no record file named in time,
// unless a record file waiting for other attachments names it.
func (w *Watcher) orphan(f *file, now time.Time) {
	for _, r := range w.files {
		if !r.record || !r.parsed || r.move != nil {
			continue
		}
		for _, e := range r.entries {
			for _, name := range e.Attach {
				if w.attachment(name) == f {
					// It goes with r, or gets another period if r is
					// rejected.
					f.due = now.Add(w.opts.OrphanAfter)
					return
				}
			}
		}
	}
	w.reject(f, fmt.Sprintf("no record file named this attachment within %s; drop it again with a record file that names it in attach", formatDuration(w.opts.OrphanAfter)), now)
}

// reject moves f to rejected with reason.
func (w *Watcher) reject(f *file, reason string, now time.Time) {
	reason = oneLine(reason)
	w.log.Warn("inbox file rejected", "file", f.name, "reason", reason)
	f.move = &move{dir: RejectedDir, reason: reason}
	w.retryMove(f, now)
}

// retryMove carries out f's move. If it fails, it is tried again later,
// waiting longer each time.
func (w *Watcher) retryMove(f *file, now time.Time) {
	err := w.moveFile(f)
	if err == nil {
		delete(w.files, f.name)
		return
	}
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Lstat(w.path(f.name)); errors.Is(serr, fs.ErrNotExist) {
			delete(w.files, f.name) // someone took it away
			return
		}
	}
	f.moveFails++
	wait := min(w.opts.Settle<<min(f.moveFails, 10), maxMoveRetry)
	w.log.Error("cannot move inbox file; retrying", "file", f.name, "reason", err, "retry_in", wait)
	f.due = now.Add(wait)
}

// moveFile moves f to its move's folder under a name not used there, writing
// the reason first when it is rejected.
func (w *Watcher) moveFile(f *file) error {
	m := f.move
	if m.dst == "" {
		dst, err := freeName(w.path(m.dir), f.name, m.dir == RejectedDir)
		if err != nil {
			return err
		}
		m.dst = dst
	}
	to := w.path(m.dir, m.dst)
	if m.reason != "" {
		// The reason first: a crash in between leaves a reason without
		// its file (the file is still in the inbox), never a file without
		// its reason.
		if err := atomicfile.Write(to+".reason", []byte(m.reason+"\n"), w.perm&^0o111|0o600); err != nil {
			return err
		}
	}
	if _, err := os.Lstat(to); err == nil {
		m.dst = "" // taken meanwhile; choose again next time
		return fmt.Errorf("move %s: %s already exists", f.name, to)
	}
	if err := os.Rename(w.path(f.name), to); err != nil {
		return err
	}
	if err := atomicfile.SyncDir(w.path(m.dir)); err != nil {
		return err
	}
	return atomicfile.SyncDir(w.dir)
}

// freeName returns name, or name with a numbered suffix, so that it is not
// used in dir (nor name.reason, with reason).
func freeName(dir, name string, reason bool) (string, error) {
	ext := filepath.Ext(name)
	base := strings.TrimSuffix(name, ext)
	for i := 0; i < 100000; i++ {
		cand := name
		if i > 0 {
			cand = fmt.Sprintf("%s-%d%s", base, i, ext)
		}
		if exists(filepath.Join(dir, cand)) || reason && exists(filepath.Join(dir, cand+".reason")) {
			continue
		}
		return cand, nil
	}
	return "", fmt.Errorf("no free name for %s in %s", name, dir)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

// oneLine puts a message on one line, for the reason file.
func oneLine(s string) string {
	return strings.TrimSpace(strings.Map(func(r rune) rune {
		switch r {
		case '\r', '\n', '\v', '\f', '\u0085', '\u2028', '\u2029':
			return ' '
		}
		return r
	}, s))
}

// formatDuration writes 24h rather than 24h0m0s.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
