package hub

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"fieldsync/internal/atomicfile"
)

// DropSettle is how long a file in the drop folder must stay unchanged before
// the hub takes it, so a bundle still being copied from a USB stick is never
// read half-written.
const DropSettle = 2 * time.Second

// watchDrop applies bundles copied into dir, then moves each to done/ or to
// rejected/ with NAME.reason beside it. It returns when ctx ends.
func (h *Hub) watchDrop(ctx context.Context, dir string) error {
	for _, d := range []string{dir, filepath.Join(dir, "done"), filepath.Join(dir, "rejected")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("create drop folder: %w", err)
		}
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch drop folder: %w", err)
	}
	defer w.Close()
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watch drop folder %s: %w", dir, err)
	}
	// due holds files seen changing, and when they may be taken.
	due := map[string]time.Time{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !e.IsDir() && dropCandidate(e.Name()) {
			due[e.Name()] = time.Now().Add(DropSettle)
		}
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := time.Time{}
		for _, t := range due {
			if next.IsZero() || t.Before(next) {
				next = t
			}
		}
		if !next.IsZero() {
			timer.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-w.Errors:
			h.log.Warn("drop folder watch", "err", err)
		case ev := <-w.Events:
			name := filepath.Base(ev.Name)
			if filepath.Dir(ev.Name) == filepath.Clean(dir) && dropCandidate(name) && !ev.Has(fsnotify.Remove) && !ev.Has(fsnotify.Rename) {
				due[name] = time.Now().Add(DropSettle)
			}
		case <-timer.C:
			now := time.Now()
			for name, t := range due {
				if t.After(now) {
					continue
				}
				delete(due, name)
				path := filepath.Join(dir, name)
				st, err := os.Stat(path)
				if err != nil || st.IsDir() || now.Sub(st.ModTime()) < DropSettle {
					if err == nil && !st.IsDir() {
						due[name] = st.ModTime().Add(DropSettle) // still being written
					}
					continue
				}
				h.takeDropped(dir, name)
			}
		}
	}
}

// takeDropped applies one dropped file and moves it out of the way.
func (h *Hub) takeDropped(dir, name string) {
	path := filepath.Join(dir, name)
	res, err := h.ImportFile(path)
	if err == nil {
		h.log.Info("dropped bundle taken", "file", name, "state", res.State, "agent", res.Agent, "bundle", res.Seq)
		moveAside(path, filepath.Join(dir, "done"), "")
		return
	}
	var ie *IntakeError
	reason := err.Error()
	if errors.As(err, &ie) {
		reason = ie.Result.State + ": " + ie.Result.Reason
	}
	h.log.Warn("dropped bundle rejected", "file", name, "reason", reason)
	moveAside(path, filepath.Join(dir, "rejected"), reason)
}

// moveAside moves path into dir without overwriting anything there, and
// writes NAME.reason beside it when a reason is given.
func moveAside(path, dir, reason string) {
	base := filepath.Base(path)
	dst := filepath.Join(dir, base)
	for i := 1; fileExists(dst); i++ {
		dst = filepath.Join(dir, fmt.Sprintf("%s.%d", base, i))
	}
	if reason != "" {
		atomicfile.Write(dst+".reason", []byte(reason+"\n"), 0o644)
	}
	os.Rename(path, dst)
	atomicfile.SyncDir(dir)
}

// dropCandidate skips hidden and temporary files that copy tools write first.
func dropCandidate(name string) bool {
	if strings.HasPrefix(name, ".") || strings.HasSuffix(name, "~") || strings.HasSuffix(name, ".reason") {
		return false
	}
	for _, s := range []string{".tmp", ".part", ".partial", ".crdownload", ".swp"} {
		if strings.HasSuffix(name, s) {
			return false
		}
	}
	return true
}
