package wal

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// snapshotsKept is how many snapshots WriteSnapshot leaves on disk. Two, so
// that a damaged newest snapshot can fall back to the one before it.
const snapshotsKept = 2

// WriteSnapshot writes a snapshot covering the log up to and including
// index into dir/snap. write produces the snapshot by calling emit once per
// entry; each entry may hold up to MaxEntrySize bytes. The entries go to a
// temporary file that is fsynced and renamed into place, and the directory
// is fsynced, so a crash leaves either the whole snapshot or none.
// WriteSnapshot then keeps the newest 2 snapshots and deletes older ones.
//
// index must not be older than the newest snapshot already there. Calls for
// the same dir must not run concurrently. If write returns an error, nothing
// changes on disk and WriteSnapshot returns that error.
func WriteSnapshot(dir string, index uint64, write func(emit func(data []byte) error) error) error {
	snapDir := filepath.Join(dir, snapDirName)
	if err := os.MkdirAll(snapDir, 0o700); err != nil {
		return fmt.Errorf("wal: create snapshot directory: %w", err)
	}
	existing, err := listIndexed(snapDir, snapExt)
	if err != nil {
		return fmt.Errorf("wal: list snapshots: %w", err)
	}
	if n := len(existing); n > 0 && index < existing[n-1].index {
		return fmt.Errorf("wal: snapshot at entry %d is older than the newest one, at entry %d", index, existing[n-1].index)
	}
	if err := removeTemps(snapDir); err != nil {
		return err
	}

	tmp, err := os.CreateTemp(snapDir, indexName(index, ".*"+tmpExt))
	if err != nil {
		return fmt.Errorf("wal: create snapshot: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	bw := bufio.NewWriterSize(tmp, writeBufferSize)
	if _, err := bw.Write(fileHeader(snapshotMagic, index)); err != nil {
		return fmt.Errorf("wal: write snapshot: %w", err)
	}
	var count uint64
	finished := false
	emit := func(data []byte) error {
		if finished {
			return errors.New("wal: snapshot entry emitted after the write function returned")
		}
		if len(data) > MaxEntrySize {
			return fmt.Errorf("%w: snapshot entry of %d bytes, limit %d", ErrEntryTooLarge, len(data), MaxEntrySize)
		}
		count++
		if err := writeFrame(bw, count, data); err != nil {
			return fmt.Errorf("wal: write snapshot: %w", err)
		}
		return nil
	}
	err = write(emit)
	finished = true
	if err != nil {
		return err
	}
	// The footer proves the snapshot complete: a snapshot cut short by
	// damage could otherwise pass for a smaller, valid one.
	if err := writeFrame(bw, 0, binary.LittleEndian.AppendUint64(nil, count)); err != nil {
		return fmt.Errorf("wal: write snapshot: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("wal: write snapshot: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("wal: sync snapshot: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("wal: close snapshot: %w", err)
	}
	final := filepath.Join(snapDir, indexName(index, snapExt))
	if err := os.Rename(tmp.Name(), final); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("wal: install snapshot: %w", err)
	}
	committed = true
	if err := syncDir(snapDir); err != nil {
		return fmt.Errorf("wal: install snapshot: %w", err)
	}
	return pruneSnapshots(snapDir)
}

// removeTemps deletes temporary files a crashed WriteSnapshot left behind.
func removeTemps(snapDir string) error {
	entries, err := os.ReadDir(snapDir)
	if err != nil {
		return fmt.Errorf("wal: list snapshots: %w", err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), tmpExt) {
			if err := os.Remove(filepath.Join(snapDir, e.Name())); err != nil {
				return fmt.Errorf("wal: remove stale snapshot: %w", err)
			}
		}
	}
	return nil
}

// pruneSnapshots deletes all but the newest snapshotsKept snapshots.
func pruneSnapshots(snapDir string) error {
	snaps, err := listIndexed(snapDir, snapExt)
	if err != nil {
		return fmt.Errorf("wal: list snapshots: %w", err)
	}
	if len(snaps) <= snapshotsKept {
		return nil
	}
	for _, s := range snaps[:len(snaps)-snapshotsKept] {
		if err := os.Remove(s.path); err != nil {
			return fmt.Errorf("wal: snapshot written, but removing an old one failed: %w", err)
		}
	}
	if err := syncDir(snapDir); err != nil {
		return fmt.Errorf("wal: snapshot written, but removing an old one failed: %w", err)
	}
	return nil
}

// ReadSnapshot finds the newest intact snapshot in dir/snap, calls fn with
// each of its entries in order, and returns the log index it covers. With no
// snapshot it returns 0 without calling fn; replay the whole log then.
//
// Every snapshot is verified in full before fn sees any of it, so fn is
// never called with part of a damaged snapshot. If the newest snapshot is
// damaged, ReadSnapshot falls back to the one before it (or to none) only if
// the log in dir/log still holds every entry after that older one;
// otherwise it returns the *CorruptError for the newest. fn may keep data;
// if fn returns an error, ReadSnapshot returns it unchanged.
func ReadSnapshot(dir string, fn func(data []byte) error) (index uint64, err error) {
	snaps, err := listIndexed(filepath.Join(dir, snapDirName), snapExt)
	if err != nil {
		return 0, fmt.Errorf("wal: list snapshots: %w", err)
	}
	if len(snaps) == 0 {
		return 0, nil
	}
	// Where the log starts bounds how far back a fallback can go. With no
	// segment at all, Open starts a new log after the newest snapshot.
	segs, err := listIndexed(filepath.Join(dir, logDirName), segmentExt)
	if err != nil {
		return 0, fmt.Errorf("wal: list segments: %w", err)
	}
	covers := func(index uint64) bool { return len(segs) > 0 && segs[0].index <= index+1 }

	var newest *CorruptError
	for i := len(snaps) - 1; i >= 0; i-- {
		s := snaps[i]
		err := scanSnapshot(dir, s, nil)
		var ce *CorruptError
		if errors.As(err, &ce) {
			if newest == nil {
				newest = ce
			}
			continue
		}
		if err != nil {
			return 0, err
		}
		if newest != nil && !covers(s.index) {
			return 0, cannotFallBack(newest, s.index, segs)
		}
		if err := scanSnapshot(dir, s, fn); err != nil {
			return 0, err
		}
		return s.index, nil
	}
	if !covers(0) {
		return 0, cannotFallBack(newest, 0, segs)
	}
	return 0, nil
}

// cannotFallBack extends the newest snapshot's damage report with why no
// older state can stand in for it.
func cannotFallBack(newest *CorruptError, older uint64, segs []indexedFile) error {
	e := *newest
	start := "has no segments"
	if len(segs) > 0 {
		start = fmt.Sprintf("starts at entry %d", segs[0].index)
	}
	if older == 0 {
		e.Reason += fmt.Sprintf(" (and no older snapshot can replace it: the log %s, not at entry 1)", start)
	} else {
		e.Reason += fmt.Sprintf(" (and the older snapshot at entry %d cannot replace it: the log %s, not at entry %d)", older, start, older+1)
	}
	return &e
}

// scanSnapshot reads the snapshot s and verifies every entry and the
// footer. With fn nil it only verifies; otherwise it calls fn per entry.
func scanSnapshot(dir string, s indexedFile, fn func([]byte) error) error {
	f, err := os.Open(s.path)
	if err != nil {
		return fmt.Errorf("wal: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("wal: %w", err)
	}
	size := st.Size()
	corrupt := func(off int64, format string, args ...any) error {
		return &CorruptError{Path: s.path, Offset: off, Reason: fmt.Sprintf(format, args...), Dir: dir}
	}
	if size < fileHeaderSize {
		return corrupt(0, "snapshot header is %d of %d bytes", size, fileHeaderSize)
	}
	br := bufio.NewReaderSize(f, readBufferSize)
	hdr := make([]byte, fileHeaderSize)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return fmt.Errorf("wal: read %s: %w", s.path, noEOF(err))
	}
	index, err := parseFileHeader(hdr, snapshotMagic)
	if errors.Is(err, errVersion) {
		return fmt.Errorf("wal: %s: %w", s.path, err)
	}
	if err != nil {
		return corrupt(0, "%v", err)
	}
	if index != s.index {
		return corrupt(0, "snapshot header says it covers entry %d, but its name says %d", index, s.index)
	}

	fr := frameReader{r: br, off: fileHeaderSize, size: size}
	var buf []byte
	for want := uint64(1); ; want++ {
		off := fr.off
		n, data, err := fr.next(buf)
		if err == io.EOF {
			return corrupt(off, "snapshot ends without its footer after %d entries", want-1)
		}
		var damage *frameDamage
		if errors.As(err, &damage) {
			return corrupt(off, "%s", damage.reason)
		}
		if err != nil {
			return fmt.Errorf("wal: read %s: %w", s.path, err)
		}
		if n == 0 { // the footer
			if len(data) != 8 || binary.LittleEndian.Uint64(data) != want-1 {
				return corrupt(off, "snapshot footer does not match the %d entries before it", want-1)
			}
			if fr.off != size {
				return corrupt(fr.off, "%d unexpected bytes after the snapshot footer", size-fr.off)
			}
			return nil
		}
		if n != want {
			return corrupt(off, "found snapshot entry %d where entry %d belongs", n, want)
		}
		if fn == nil {
			buf = data
			continue
		}
		if err := fn(data); err != nil {
			return err
		}
	}
}
