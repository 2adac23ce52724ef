package wal

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
)

// payloadFor is the deterministic payload of entry i in tests: its size
// varies so that frames do not line up on any particular boundary.
func payloadFor(i uint64) []byte {
	return bytes.Repeat(fmt.Appendf(nil, "entry %d;", i), int(i%5)+1)
}

// openLog opens dir and closes the log when the test ends.
func openLog(t testing.TB, dir string, opts Options) *Log {
	t.Helper()
	l, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return l
}

// appendN appends the payloads for the next n indexes and checks the
// indexes Append returns.
func appendN(t testing.TB, l *Log, n int) {
	t.Helper()
	for range n {
		want := l.LastIndex() + 1
		got, err := l.Append(payloadFor(want))
		if err != nil {
			t.Fatalf("Append: %v", err)
		}
		if got != want {
			t.Fatalf("Append returned index %d, want %d", got, want)
		}
	}
}

type entry struct {
	index uint64
	data  string
}

func replayAll(t testing.TB, l *Log, from uint64) []entry {
	t.Helper()
	var got []entry
	err := l.Replay(from, func(index uint64, data []byte) error {
		got = append(got, entry{index, string(data)})
		return nil
	})
	if err != nil {
		t.Fatalf("Replay(%d): %v", from, err)
	}
	return got
}

// wantEntries is what replaying first..last should give.
func wantEntries(first, last uint64) []entry {
	var want []entry
	for i := first; i <= last; i++ {
		want = append(want, entry{i, string(payloadFor(i))})
	}
	return want
}

func checkEntries(t testing.TB, got, want []entry) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("replayed %d entries %s, want %d entries %s", len(got), summary(got), len(want), summary(want))
	}
}

func summary(es []entry) string {
	if len(es) == 0 {
		return "[]"
	}
	return fmt.Sprintf("[%d..%d]", es[0].index, es[len(es)-1].index)
}

func segmentPaths(t testing.TB, dir string) []string {
	t.Helper()
	files, err := listIndexed(filepath.Join(dir, logDirName), segmentExt)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range files {
		paths = append(paths, f.path)
	}
	return paths
}

// copyDir copies the tree at src into dst, so each subtest can damage its
// own copy of a fixture.
func copyDir(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// readTree returns the contents of every file under dir by relative path.
func readTree(t testing.TB, dir string) map[string]string {
	t.Helper()
	tree := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		rel, _ := filepath.Rel(dir, path)
		tree[rel] = string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func TestAppendReplayReopen(t *testing.T) {
	tests := []struct {
		name        string
		segmentSize int64
	}{
		{"one segment", 0},
		{"a segment per entry", 1},
		{"small segments", 300},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{SegmentSize: tt.segmentSize, NoSync: true}
			l := openLog(t, dir, opts)
			if got, want := l.FirstIndex(), uint64(1); got != want {
				t.Errorf("new log: FirstIndex() = %d, want %d", got, want)
			}
			if got, want := l.LastIndex(), uint64(0); got != want {
				t.Errorf("new log: LastIndex() = %d, want %d", got, want)
			}
			appendN(t, l, 40)
			checkEntries(t, replayAll(t, l, 0), wantEntries(1, 40))
			for _, from := range []uint64{1, 2, 17, 40, 41, 100} {
				checkEntries(t, replayAll(t, l, from), wantEntries(from, 40))
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}

			l = openLog(t, dir, opts)
			rec := l.Recovered()
			if rec.Entries != 40 || rec.FirstIndex != 1 || rec.LastIndex != 40 || rec.TornBytes != 0 {
				t.Errorf("Recovered() = %+v, want 40 entries 1..40 and no torn bytes", rec)
			}
			if rec.Segments != len(segmentPaths(t, dir)) {
				t.Errorf("Recovered().Segments = %d, want %d", rec.Segments, len(segmentPaths(t, dir)))
			}
			appendN(t, l, 5)
			checkEntries(t, replayAll(t, l, 1), wantEntries(1, 45))
		})
	}
}

func TestAppendBatch(t *testing.T) {
	l := openLog(t, t.TempDir(), Options{SegmentSize: 200, NoSync: true})
	appendN(t, l, 3)
	batch := [][]byte{payloadFor(4), payloadFor(5), payloadFor(6), payloadFor(7)}
	first, err := l.AppendBatch(batch)
	if err != nil {
		t.Fatal(err)
	}
	if first != 4 {
		t.Errorf("AppendBatch returned %d, want 4", first)
	}
	if first, err := l.AppendBatch(nil); first != 0 || err != nil {
		t.Errorf("AppendBatch(nil) = %d, %v; want 0, nil", first, err)
	}
	appendN(t, l, 1)
	checkEntries(t, replayAll(t, l, 1), wantEntries(1, 8))
}

func TestAppendErrors(t *testing.T) {
	l := openLog(t, t.TempDir(), Options{NoSync: true})
	appendN(t, l, 2)
	if _, err := l.Append(make([]byte, MaxEntrySize+1)); !errors.Is(err, ErrEntryTooLarge) {
		t.Errorf("Append(too large) error = %v, want ErrEntryTooLarge", err)
	}
	// A refused entry takes no index and leaves the log usable.
	appendN(t, l, 1)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append([]byte("late")); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close: %v, want ErrClosed", err)
	}
	if err := l.Replay(1, func(uint64, []byte) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("Replay after Close: %v, want ErrClosed", err)
	}
	if err := l.Compact(1); !errors.Is(err, ErrClosed) {
		t.Errorf("Compact after Close: %v, want ErrClosed", err)
	}
	if err := l.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close: %v, want ErrClosed", err)
	}
}

func TestReplayStopsOnCallbackError(t *testing.T) {
	l := openLog(t, t.TempDir(), Options{NoSync: true})
	appendN(t, l, 10)
	stop := errors.New("stop")
	var seen []uint64
	err := l.Replay(3, func(index uint64, _ []byte) error {
		seen = append(seen, index)
		if index == 5 {
			return stop
		}
		return nil
	})
	if err != stop {
		t.Errorf("Replay error = %v, want the callback's error unchanged", err)
	}
	if want := []uint64{3, 4, 5}; !slices.Equal(seen, want) {
		t.Errorf("Replay visited %v, want %v", seen, want)
	}
}

func TestCompact(t *testing.T) {
	const n = 30
	tests := []struct {
		name      string
		upTo      uint64
		wantFirst uint64 // FirstIndex after Compact
		wantErr   bool
	}{
		{name: "nothing", upTo: 0, wantFirst: 1},
		{name: "inside the first segment", upTo: 2, wantFirst: 1},
		{name: "middle", upTo: 17, wantFirst: 16},
		{name: "to the end rolls the active segment", upTo: n, wantFirst: n + 1},
		{name: "past the end", upTo: n + 1, wantFirst: 1, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			// Five entries of at most 100 bytes per segment: segments start
			// at 1, 6, 11, ...
			opts := Options{SegmentSize: fileHeaderSize + 5*frameHeaderSize + 5*60, NoSync: true}
			l := openLog(t, dir, opts)
			for i := uint64(1); i <= n; i++ {
				if _, err := l.Append(bytes.Repeat([]byte{'x'}, 60)); err != nil {
					t.Fatal(err)
				}
			}
			if got := len(segmentPaths(t, dir)); got != 6 {
				t.Fatalf("fixture has %d segments, want 6", got)
			}
			err := l.Compact(tt.upTo)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Compact(%d) error = %v, want error: %v", tt.upTo, err, tt.wantErr)
			}
			if got := l.FirstIndex(); got != tt.wantFirst {
				t.Errorf("FirstIndex() = %d, want %d", got, tt.wantFirst)
			}
			if got := l.LastIndex(); got != n {
				t.Errorf("LastIndex() = %d, want %d", got, n)
			}
			if tt.wantFirst > 1 {
				err := l.Replay(tt.wantFirst-1, func(uint64, []byte) error { return nil })
				if !errors.Is(err, ErrCompacted) {
					t.Errorf("Replay(%d) error = %v, want ErrCompacted", tt.wantFirst-1, err)
				}
			}
			if got := len(replayAll(t, l, tt.wantFirst)); got != int(n+1-tt.wantFirst) {
				t.Errorf("Replay(%d) gave %d entries, want %d", tt.wantFirst, got, n+1-tt.wantFirst)
			}
			index, err := l.Append([]byte("after"))
			if err != nil || index != n+1 {
				t.Fatalf("Append after Compact = %d, %v; want %d", index, err, n+1)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}

			l = openLog(t, dir, opts)
			if got := l.FirstIndex(); got != tt.wantFirst {
				t.Errorf("after reopen: FirstIndex() = %d, want %d", got, tt.wantFirst)
			}
			if got := l.LastIndex(); got != n+1 {
				t.Errorf("after reopen: LastIndex() = %d, want %d", got, n+1)
			}
			got := replayAll(t, l, tt.wantFirst)
			if len(got) == 0 || got[len(got)-1] != (entry{n + 1, "after"}) {
				t.Errorf("after reopen: replay ends with %v, want entry %d", got[len(got)-1:], n+1)
			}
		})
	}
}

// TestConcurrentAppend has many goroutines append at once, with segments
// rolling under them, and checks that every entry got its own index, that
// the indexes have no gaps, and that all of it replays after a reopen.
func TestConcurrentAppend(t *testing.T) {
	const writers, perWriter = 8, 500
	dir := t.TempDir()
	opts := Options{SegmentSize: 16 << 10, NoSync: true}
	l := openLog(t, dir, opts)

	var commits, committed int
	l.commitHook = func(n int) { commits++; committed += n } // called by one leader at a time

	got := make([][]uint64, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				data := fmt.Appendf(nil, "w%d-%d", w, i)
				var index uint64
				var err error
				if i%10 == 9 { // some batches in the mix
					index, err = l.AppendBatch([][]byte{data})
				} else {
					index, err = l.Append(data)
				}
				if err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
				got[w] = append(got[w], index)
			}
		})
	}
	wg.Wait()

	owner := map[uint64]string{}
	for w, indexes := range got {
		if !slices.IsSorted(indexes) {
			t.Errorf("writer %d got indexes out of order", w)
		}
		for i, index := range indexes {
			if prev, dup := owner[index]; dup {
				t.Fatalf("index %d given to both %s and w%d-%d", index, prev, w, i)
			}
			owner[index] = fmt.Sprintf("w%d-%d", w, i)
		}
	}
	if len(owner) != writers*perWriter || l.LastIndex() != writers*perWriter {
		t.Fatalf("%d distinct indexes, LastIndex() = %d; want %d of each", len(owner), l.LastIndex(), writers*perWriter)
	}
	if committed != writers*perWriter {
		t.Errorf("commit hook saw %d entries, want %d", committed, writers*perWriter)
	}
	t.Logf("%d entries in %d commits", committed, commits)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = openLog(t, dir, opts)
	replayed := replayAll(t, l, 1)
	if len(replayed) != writers*perWriter {
		t.Fatalf("replayed %d entries after reopen, want %d", len(replayed), writers*perWriter)
	}
	for i, e := range replayed {
		if e.index != uint64(i+1) || e.data != owner[e.index] {
			t.Fatalf("replayed entry %d = %d %q, want %d %q", i, e.index, e.data, i+1, owner[uint64(i+1)])
		}
	}
}

// TestConcurrentCompactReplay runs appends, replays and compactions at
// once, as a ledger taking snapshots in the background does.
func TestConcurrentCompactReplay(t *testing.T) {
	l := openLog(t, t.TempDir(), Options{SegmentSize: 1 << 10, NoSync: true})
	const total = 2000
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() {
		defer close(done)
		for range total {
			if _, err := l.Append(payloadFor(1)); err != nil {
				t.Error(err)
				return
			}
		}
	})
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			if err := l.Compact(l.LastIndex() / 2); err != nil {
				t.Error(err)
				return
			}
			from := l.FirstIndex()
			next := from
			err := l.Replay(from, func(index uint64, _ []byte) error {
				if index != next {
					return fmt.Errorf("replay gave entry %d, want %d", index, next)
				}
				next++
				return nil
			})
			// A compaction between FirstIndex and Replay is the one
			// acceptable failure.
			if err != nil && !errors.Is(err, ErrCompacted) {
				t.Error(err)
				return
			}
		}
	})
	wg.Wait()
	if got := l.LastIndex(); got != total {
		t.Errorf("LastIndex() = %d, want %d", got, total)
	}
}

// TestGroupCommitSharesFsync shows that appenders arriving while a commit
// is in its fsync are written together by the next one, with one fsync.
func TestGroupCommitSharesFsync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := openLog(t, t.TempDir(), Options{NoSync: true})
		release := make(chan struct{})
		var batches []int // appended by the leader only, one at a time
		l.commitHook = func(n int) {
			batches = append(batches, n)
			if len(batches) == 1 {
				<-release // hold the first fsync until the others queue
			}
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			if _, err := l.Append([]byte("lone")); err != nil {
				t.Error(err)
			}
		})
		synctest.Wait() // the first appender now waits in its fsync
		for i := range 7 {
			wg.Go(func() {
				if _, err := l.AppendBatch([][]byte{fmt.Appendf(nil, "queued %d", i)}); err != nil {
					t.Error(err)
				}
			})
		}
		synctest.Wait() // the other seven are queued behind it
		close(release)
		wg.Wait()
		if want := []int{1, 7}; !slices.Equal(batches, want) {
			t.Errorf("entries per fsync = %v, want %v", batches, want)
		}
		if got := l.LastIndex(); got != 8 {
			t.Errorf("LastIndex() = %d, want 8", got)
		}
	})
}

// TestLoneWriterDoesNotWait checks that sequential appends each commit at
// once, one fsync each: group commit adds no wait for company.
func TestLoneWriterDoesNotWait(t *testing.T) {
	l := openLog(t, t.TempDir(), Options{NoSync: true})
	var batches []int
	l.commitHook = func(n int) { batches = append(batches, n) }
	appendN(t, l, 3)
	if want := []int{1, 1, 1}; !slices.Equal(batches, want) {
		t.Errorf("entries per fsync = %v, want %v", batches, want)
	}
}

func TestCloseWaitsForCommits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, err := Open(t.TempDir(), Options{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		release := make(chan struct{})
		l.commitHook = func(int) { <-release }
		var wg sync.WaitGroup
		wg.Go(func() {
			if _, err := l.Append([]byte("in flight")); err != nil {
				t.Errorf("Append in flight during Close: %v", err)
			}
		})
		synctest.Wait()
		closed := make(chan error)
		go func() { closed <- l.Close() }()
		synctest.Wait()
		select {
		case err := <-closed:
			t.Fatalf("Close returned %v while a commit was in flight", err)
		default:
		}
		close(release)
		if err := <-closed; err != nil {
			t.Fatal(err)
		}
		wg.Wait()
	})
}

// TestWriteFailureIsSticky checks that after a failed write the log refuses
// every later append (the file's state is unknown), and that reopening
// recovers what was acknowledged before.
func TestWriteFailureIsSticky(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 3)
	l.active.Close() // every write to the segment now fails
	for i := range 2 {
		if _, err := l.Append([]byte("lost")); err == nil {
			t.Fatalf("Append %d after the segment broke succeeded", i)
		}
	}
	if err := l.Compact(3); err == nil {
		t.Error("Compact on a failed log succeeded")
	}
	if got := l.LastIndex(); got != 3 {
		t.Errorf("LastIndex() = %d after failed appends, want 3", got)
	}
	l.Close() // reports the segment closed twice; nothing to check

	l = openLog(t, dir, Options{NoSync: true})
	checkEntries(t, replayAll(t, l, 1), wantEntries(1, 3))
	appendN(t, l, 1)
}
