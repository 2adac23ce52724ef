package wal

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// kvState is the state machine of the snapshot tests: entries "key=value"
// set keys, and there are few keys, so later entries overwrite earlier ones
// and the order of replay matters.
type kvState map[string]string

func (s kvState) apply(data []byte) error {
	k, v, ok := strings.Cut(string(data), "=")
	if !ok {
		return fmt.Errorf("entry %q is not key=value", data)
	}
	s[k] = v
	return nil
}

// emitAll is a WriteSnapshot callback that writes the state as entries.
func (s kvState) emitAll(emit func([]byte) error) error {
	for _, k := range slices.Sorted(maps.Keys(s)) {
		if err := emit([]byte(k + "=" + s[k])); err != nil {
			return err
		}
	}
	return nil
}

func kvEntry(i uint64) []byte { return fmt.Appendf(nil, "k%02d=v%d", i%23, i) }

// TestSnapshotReplayEquivalence checks that the state rebuilt from a
// snapshot at N plus the log after N equals the state from replaying the
// whole log, across Compact and a reopen.
func TestSnapshotReplayEquivalence(t *testing.T) {
	const n = 300
	for _, at := range []uint64{1, 180, n} {
		t.Run(fmt.Sprintf("snapshot at %d", at), func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{SegmentSize: 512, NoSync: true}
			l := openLog(t, dir, opts)
			for i := uint64(1); i <= n; i++ {
				if _, err := l.Append(kvEntry(i)); err != nil {
					t.Fatal(err)
				}
			}
			full, atN := kvState{}, kvState{}
			err := l.Replay(1, func(index uint64, data []byte) error {
				if index <= at {
					if err := atN.apply(data); err != nil {
						return err
					}
				}
				return full.apply(data)
			})
			if err != nil {
				t.Fatal(err)
			}

			if err := WriteSnapshot(dir, at, atN.emitAll); err != nil {
				t.Fatal(err)
			}
			before := len(segmentPaths(t, dir))
			if err := l.Compact(at); err != nil {
				t.Fatal(err)
			}
			after := len(segmentPaths(t, dir))
			if first := l.FirstIndex(); first > at+1 || (at > 2 && (first == 1 || after >= before)) {
				t.Errorf("Compact(%d): FirstIndex() = %d, %d segments before, %d after", at, first, before, after)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}

			restored := kvState{}
			index, err := ReadSnapshot(dir, restored.apply)
			if err != nil || index != at {
				t.Fatalf("ReadSnapshot = %d, %v; want %d", index, err, at)
			}
			l = openLog(t, dir, opts)
			err = l.Replay(index+1, func(_ uint64, data []byte) error { return restored.apply(data) })
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(restored, full) {
				t.Errorf("snapshot + replay gave %v, full replay gave %v", restored, full)
			}
			if next, err := l.Append(kvEntry(n + 1)); next != n+1 || err != nil {
				t.Errorf("Append after reopen = %d, %v; want %d", next, err, n+1)
			}
		})
	}
}

func TestWriteSnapshotKeepsNewestTwo(t *testing.T) {
	dir := t.TempDir()
	for _, index := range []uint64{10, 20, 30, 40} {
		state := kvState{"at": fmt.Sprint(index)}
		if err := WriteSnapshot(dir, index, state.emitAll); err != nil {
			t.Fatal(err)
		}
	}
	files, err := listIndexed(filepath.Join(dir, snapDirName), snapExt)
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, f := range files {
		got = append(got, f.index)
	}
	if want := []uint64{30, 40}; !slices.Equal(got, want) {
		t.Errorf("snapshots kept: %v, want %v", got, want)
	}
	state := kvState{}
	if index, err := ReadSnapshot(dir, state.apply); index != 40 || err != nil || state["at"] != "40" {
		t.Errorf("ReadSnapshot = %d, %v, %v; want 40 and its state", index, err, state)
	}
	// Rewriting the newest is allowed; going back is a caller's bug.
	if err := WriteSnapshot(dir, 40, state.emitAll); err != nil {
		t.Errorf("rewriting the newest snapshot: %v", err)
	}
	if err := WriteSnapshot(dir, 35, state.emitAll); err == nil {
		t.Error("WriteSnapshot older than the newest succeeded")
	}
}

func TestWriteSnapshotErrors(t *testing.T) {
	fail := errors.New("state unreadable")
	var lateEmit func([]byte) error
	tests := []struct {
		name    string
		write   func(emit func([]byte) error) error
		wantErr error // nil: any error
	}{
		{"write fails", func(func([]byte) error) error { return fail }, fail},
		{"entry too large", func(emit func([]byte) error) error {
			return emit(make([]byte, MaxEntrySize+1))
		}, ErrEntryTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			err := WriteSnapshot(dir, 5, tt.write)
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("WriteSnapshot error = %v, want %v", err, tt.wantErr)
			}
			if files := readTree(t, dir); len(files) != 0 {
				t.Errorf("failed WriteSnapshot left files: %v", slices.Collect(maps.Keys(files)))
			}
		})
	}
	t.Run("emit after return", func(t *testing.T) {
		dir := t.TempDir()
		err := WriteSnapshot(dir, 5, func(emit func([]byte) error) error { lateEmit = emit; return nil })
		if err != nil {
			t.Fatal(err)
		}
		if err := lateEmit([]byte("late")); err == nil {
			t.Error("emit after the write function returned succeeded")
		}
	})
	t.Run("stale temporary file is removed", func(t *testing.T) {
		dir := t.TempDir()
		stale := filepath.Join(dir, snapDirName, indexName(3, ".123"+tmpExt))
		if err := os.MkdirAll(filepath.Dir(stale), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(stale, []byte("half a snapshot"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := WriteSnapshot(dir, 5, kvState{}.emitAll); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("stale temporary file still there: %v", err)
		}
	})
}

// TestReadSnapshotFallback checks which state ReadSnapshot settles on when
// snapshots are damaged, depending on what the log still holds.
func TestReadSnapshotFallback(t *testing.T) {
	const n = 50
	snapPath := func(dir string, index uint64) string {
		return filepath.Join(dir, snapDirName, indexName(index, snapExt))
	}
	flip := func(index uint64) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			edit(t, snapPath(dir, index), func(b []byte) []byte { b[fileHeaderSize+frameHeaderSize] ^= 1; return b })
		}
	}
	dropFooter := func(index uint64) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			edit(t, snapPath(dir, index), func(b []byte) []byte { return b[:len(b)-frameHeaderSize-8] })
		}
	}
	both := func(a, b func(*testing.T, string)) func(*testing.T, string) {
		return func(t *testing.T, dir string) { a(t, dir); b(t, dir) }
	}
	tests := []struct {
		name      string
		snapshots []uint64
		damage    func(t *testing.T, dir string)
		compact   uint64 // Compact the log to this index first
		noLog     bool   // remove the log entirely
		wantIndex uint64
		wantPath  uint64 // if not 0: want a *CorruptError for this snapshot
	}{
		{name: "no snapshot", wantIndex: 0},
		{name: "newest intact", snapshots: []uint64{20, 40}, wantIndex: 40},
		{name: "newest damaged, log covers the older", snapshots: []uint64{20, 40}, damage: flip(40), wantIndex: 20},
		{name: "newest without footer, log covers the older", snapshots: []uint64{20, 40}, damage: dropFooter(40), wantIndex: 20},
		{name: "newest damaged, log compacted past the older", snapshots: []uint64{20, 40}, damage: flip(40), compact: 35, wantPath: 40},
		{name: "older damaged", snapshots: []uint64{20, 40}, damage: flip(20), compact: 35, wantIndex: 40},
		{name: "both damaged, log from the start", snapshots: []uint64{20, 40}, damage: both(flip(20), flip(40)), wantIndex: 0},
		{name: "both damaged, log compacted", snapshots: []uint64{20, 40}, damage: both(flip(20), flip(40)), compact: 10, wantPath: 40},
		{name: "only snapshot damaged, log from the start", snapshots: []uint64{40}, damage: flip(40), wantIndex: 0},
		{name: "only snapshot damaged, no log", snapshots: []uint64{40}, damage: flip(40), noLog: true, wantPath: 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			l := openLog(t, dir, Options{SegmentSize: 1, NoSync: true}) // a segment per entry
			appendN(t, l, n)
			for _, index := range tt.snapshots {
				state := kvState{"at": fmt.Sprint(index), "other": "x"}
				if err := WriteSnapshot(dir, index, state.emitAll); err != nil {
					t.Fatal(err)
				}
			}
			if tt.compact > 0 {
				if err := l.Compact(tt.compact); err != nil {
					t.Fatal(err)
				}
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if tt.noLog {
				if err := os.RemoveAll(filepath.Join(dir, logDirName)); err != nil {
					t.Fatal(err)
				}
			}
			if tt.damage != nil {
				tt.damage(t, dir)
			}

			state := kvState{}
			index, err := ReadSnapshot(dir, state.apply)
			if tt.wantPath != 0 {
				var ce *CorruptError
				if !errors.As(err, &ce) || ce.Path != snapPath(dir, tt.wantPath) {
					t.Fatalf("ReadSnapshot error = %v, want a *CorruptError for snapshot %d", err, tt.wantPath)
				}
				if len(state) != 0 {
					t.Errorf("ReadSnapshot failed but applied %v", state)
				}
				return
			}
			if err != nil {
				t.Fatalf("ReadSnapshot: %v", err)
			}
			if index != tt.wantIndex {
				t.Errorf("ReadSnapshot = %d, want %d", index, tt.wantIndex)
			}
			want := kvState{}
			if tt.wantIndex != 0 {
				want = kvState{"at": fmt.Sprint(tt.wantIndex), "other": "x"}
			}
			if !maps.Equal(state, want) {
				t.Errorf("ReadSnapshot applied %v, want %v", state, want)
			}
		})
	}
}

func TestSnapshotWithoutEntries(t *testing.T) {
	dir := t.TempDir()
	if err := WriteSnapshot(dir, 7, func(func([]byte) error) error { return nil }); err != nil {
		t.Fatal(err)
	}
	calls := 0
	index, err := ReadSnapshot(dir, func([]byte) error { calls++; return nil })
	if index != 7 || err != nil || calls != 0 {
		t.Errorf("ReadSnapshot = %d, %v with %d calls; want 7, nil, 0 calls", index, err, calls)
	}
}
