package wal

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// fixture writes a log of n entries (payloadFor) into a new directory,
// closes it, and returns the directory.
func fixture(t testing.TB, n int, segmentSize int64) string {
	t.Helper()
	dir := t.TempDir()
	l, err := Open(dir, Options{SegmentSize: segmentSize, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, n)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

// frameOffsets returns the offset of each frame in a well-formed segment.
func frameOffsets(t testing.TB, path string) []int64 {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var offs []int64
	for off := int64(fileHeaderSize); off < int64(len(data)); {
		offs = append(offs, off)
		off += frameHeaderSize + int64(binary.LittleEndian.Uint32(data[off:]))
	}
	return offs
}

func lastSegment(t testing.TB, dir string) string {
	t.Helper()
	paths := segmentPaths(t, dir)
	return paths[len(paths)-1]
}

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// edit applies change to the contents of the file at path.
func edit(t testing.TB, path string, change func([]byte) []byte) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, change(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestTornTailAtEveryOffset cuts the last entry off at every byte, as a
// crash during its append could, and checks that Open recovers the entries
// before it and the log carries on with the right index.
func TestTornTailAtEveryOffset(t *testing.T) {
	const n = 6
	layouts := []struct {
		name        string
		segmentSize int64
	}{
		{"one segment", 0},
		{"several segments", 150},
	}
	for _, layout := range layouts {
		t.Run(layout.name, func(t *testing.T) {
			pristine := fixture(t, n, layout.segmentSize)
			seg := lastSegment(t, pristine)
			rel, _ := filepath.Rel(pristine, seg)
			offs := frameOffsets(t, seg)
			start, end := offs[len(offs)-1], fileSize(t, seg)

			for cut := start; cut < end; cut++ {
				t.Run(fmt.Sprintf("cut=%d", cut-start), func(t *testing.T) {
					dir := t.TempDir()
					copyDir(t, pristine, dir)
					if err := os.Truncate(filepath.Join(dir, rel), cut); err != nil {
						t.Fatal(err)
					}
					opts := Options{SegmentSize: layout.segmentSize, NoSync: true}
					l := openLog(t, dir, opts)
					if got, want := l.Recovered().TornBytes, cut-start; got != want {
						t.Errorf("Recovered().TornBytes = %d, want %d", got, want)
					}
					checkEntries(t, replayAll(t, l, 1), wantEntries(1, n-1))
					appendN(t, l, 1) // checks it gets index n
					if err := l.Close(); err != nil {
						t.Fatal(err)
					}

					l = openLog(t, dir, opts)
					if got := l.Recovered().TornBytes; got != 0 {
						t.Errorf("second Open truncated %d more bytes", got)
					}
					checkEntries(t, replayAll(t, l, 1), wantEntries(1, n))
				})
			}
		})
	}
}

// TestRecoverTornTail covers the other shapes a crash leaves at the end of
// the log, all of which Open must repair without complaint.
func TestRecoverTornTail(t *testing.T) {
	const n = 5
	newSegment := func(content []byte) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			path := filepath.Join(dir, logDirName, indexName(n+1, segmentExt))
			if err := os.WriteFile(path, content, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	lastFrame := func(t *testing.T, dir string) (path string, off int64) {
		path = lastSegment(t, dir)
		offs := frameOffsets(t, path)
		return path, offs[len(offs)-1]
	}
	tests := []struct {
		name        string
		damage      func(t *testing.T, dir string)
		wantEntries uint64
		wantTorn    int64
	}{
		{
			name: "zero-filled tail",
			damage: func(t *testing.T, dir string) {
				edit(t, lastSegment(t, dir), func(b []byte) []byte { return append(b, make([]byte, 4096)...) })
			},
			wantEntries: n, wantTorn: 4096,
		},
		{
			name: "last entry zeroed",
			damage: func(t *testing.T, dir string) {
				path, off := lastFrame(t, dir)
				edit(t, path, func(b []byte) []byte { clear(b[off:]); return b })
			},
			wantEntries: n - 1, wantTorn: frameHeaderSize + int64(len(payloadFor(n))),
		},
		{
			name: "garbage appended",
			damage: func(t *testing.T, dir string) {
				garbage := make([]byte, 300)
				r := rand.NewChaCha8([32]byte{1})
				r.Read(garbage)
				edit(t, lastSegment(t, dir), func(b []byte) []byte { return append(b, garbage...) })
			},
			wantEntries: n, wantTorn: 300,
		},
		{
			name: "checksum mismatch in last entry",
			damage: func(t *testing.T, dir string) {
				path, _ := lastFrame(t, dir)
				edit(t, path, func(b []byte) []byte { b[len(b)-1] ^= 0x40; return b })
			},
			wantEntries: n - 1, wantTorn: frameHeaderSize + int64(len(payloadFor(n))),
		},
		{
			name: "impossible length in last entry",
			damage: func(t *testing.T, dir string) {
				path, off := lastFrame(t, dir)
				edit(t, path, func(b []byte) []byte { binary.LittleEndian.PutUint32(b[off:], 0xffff_fff0); return b })
			},
			wantEntries: n - 1, wantTorn: frameHeaderSize + int64(len(payloadFor(n))),
		},
		{
			name: "stale copy of an old entry at the tail",
			damage: func(t *testing.T, dir string) {
				path := lastSegment(t, dir)
				offs := frameOffsets(t, path)
				edit(t, path, func(b []byte) []byte { return append(b, b[offs[0]:offs[1]]...) })
			},
			wantEntries: n, wantTorn: frameHeaderSize + int64(len(payloadFor(1))),
		},
		{
			name:        "new segment with a torn header",
			damage:      newSegment(fileHeader(segmentMagic, n+1)[:10]),
			wantEntries: n, wantTorn: 10,
		},
		{
			name:        "new segment left empty",
			damage:      newSegment(nil),
			wantEntries: n, wantTorn: 0,
		},
		{
			name:        "new segment of zeros",
			damage:      newSegment(make([]byte, 512)),
			wantEntries: n, wantTorn: 512,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := fixture(t, n, 0)
			tt.damage(t, dir)
			l := openLog(t, dir, Options{NoSync: true})
			rec := l.Recovered()
			if rec.Entries != tt.wantEntries || rec.TornBytes != tt.wantTorn {
				t.Errorf("Recovered() = %d entries, %d torn bytes; want %d, %d (%+v)",
					rec.Entries, rec.TornBytes, tt.wantEntries, tt.wantTorn, rec)
			}
			checkEntries(t, replayAll(t, l, 1), wantEntries(1, tt.wantEntries))
			appendN(t, l, 1)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			l = openLog(t, dir, Options{NoSync: true})
			checkEntries(t, replayAll(t, l, 1), wantEntries(1, tt.wantEntries+1))
		})
	}
}

// TestOpenRefusesCorruption damages the log where no crash could, and
// checks that Open fails with a *CorruptError pointing at the damage and
// leaves every file exactly as it was.
func TestOpenRefusesCorruption(t *testing.T) {
	const n = 12
	// entryAt returns the segment holding entry k of the fixture, and the
	// offset of its frame.
	entryAt := func(t *testing.T, dir string, k uint64) (string, int64) {
		for _, path := range segmentPaths(t, dir) {
			first, _ := parseIndexName(filepath.Base(path), segmentExt)
			offs := frameOffsets(t, path)
			if k >= first && k < first+uint64(len(offs)) {
				return path, offs[k-first]
			}
		}
		t.Fatalf("fixture has no entry %d", k)
		return "", 0
	}
	tests := []struct {
		name        string
		segmentSize int64 // the fixture's, 200 if zero
		damage      func(t *testing.T, dir string) (path string, off int64)
		reason      string // part of the error's Reason
	}{
		{
			name:        "flipped byte in an early entry of the only segment",
			segmentSize: DefaultSegmentSize,
			damage: func(t *testing.T, dir string) (string, int64) {
				path, off := entryAt(t, dir, 2)
				edit(t, path, func(b []byte) []byte { b[off+frameHeaderSize+2] ^= 1; return b })
				return path, off
			},
			reason: "checksum mismatch",
		},
		{
			name: "flipped byte in an early entry",
			damage: func(t *testing.T, dir string) (string, int64) {
				path, off := entryAt(t, dir, 1)
				edit(t, path, func(b []byte) []byte { b[off+frameHeaderSize+2] ^= 1; return b })
				return path, off
			},
			reason: "checksum mismatch",
		},
		{
			name: "bad entry followed by an intact one in the last segment",
			damage: func(t *testing.T, dir string) (string, int64) {
				path, off := entryAt(t, dir, n-1)
				edit(t, path, func(b []byte) []byte { b[off+frameHeaderSize] ^= 0x80; return b })
				return path, off
			},
			reason: "an intact entry follows",
		},
		{
			name: "impossible length in an early entry",
			damage: func(t *testing.T, dir string) (string, int64) {
				path, off := entryAt(t, dir, 2)
				edit(t, path, func(b []byte) []byte { binary.LittleEndian.PutUint32(b[off:], MaxEntrySize+1); return b })
				return path, off
			},
			reason: "exceeds the limit",
		},
		{
			name: "bad last entry of a segment that is not the last",
			damage: func(t *testing.T, dir string) (string, int64) {
				path := segmentPaths(t, dir)[0]
				offs := frameOffsets(t, path)
				edit(t, path, func(b []byte) []byte { b[len(b)-1] ^= 1; return b })
				return path, offs[len(offs)-1]
			},
			reason: "older than the newest",
		},
		{
			name: "truncated segment that is not the last",
			damage: func(t *testing.T, dir string) (string, int64) {
				path := segmentPaths(t, dir)[1]
				offs := frameOffsets(t, path)
				edit(t, path, func(b []byte) []byte { return b[:len(b)-3] })
				return path, offs[len(offs)-1]
			},
			reason: "past the end of the file",
		},
		{
			name: "missing segment",
			damage: func(t *testing.T, dir string) (string, int64) {
				paths := segmentPaths(t, dir)
				if err := os.Remove(paths[1]); err != nil {
					t.Fatal(err)
				}
				return paths[2], 0
			},
			reason: "are missing",
		},
		{
			name: "entry with the wrong index",
			damage: func(t *testing.T, dir string) (string, int64) {
				path, off := entryAt(t, dir, 2)
				edit(t, path, func(b []byte) []byte {
					// A well-formed frame, checksum and all, numbered 3.
					length := int64(binary.LittleEndian.Uint32(b[off:]))
					putFrameHeader(b[off:], 3, b[off+frameHeaderSize:off+frameHeaderSize+length])
					return b
				})
				return path, off
			},
			reason: "entry 2 is missing",
		},
		{
			name: "damaged segment header",
			damage: func(t *testing.T, dir string) (string, int64) {
				path := segmentPaths(t, dir)[0]
				edit(t, path, func(b []byte) []byte { b[3] ^= 1; return b })
				return path, 0
			},
			reason: "magic",
		},
		{
			name: "segment renamed",
			damage: func(t *testing.T, dir string) (string, int64) {
				paths := segmentPaths(t, dir)
				last := paths[len(paths)-1]
				first, _ := parseIndexName(filepath.Base(last), segmentExt)
				// Renamed one index up, it matches neither its header nor
				// the end of the segment before it.
				renamed := filepath.Join(filepath.Dir(last), indexName(first+1, segmentExt))
				if err := os.Rename(last, renamed); err != nil {
					t.Fatal(err)
				}
				return renamed, 0
			},
			reason: "missing",
		},
		{
			name: "log ends before the newest snapshot",
			damage: func(t *testing.T, dir string) (string, int64) {
				err := WriteSnapshot(dir, n+5, func(emit func([]byte) error) error { return nil })
				if err != nil {
					t.Fatal(err)
				}
				path := lastSegment(t, dir)
				return path, fileSize(t, path)
			},
			reason: "covers entries up to",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			segmentSize := cmp.Or(tt.segmentSize, 200) // several entries per segment
			dir := fixture(t, n, segmentSize)
			wantPath, wantOff := tt.damage(t, dir)
			before := readTree(t, dir)

			l, err := Open(dir, Options{SegmentSize: segmentSize})
			if err == nil {
				l.Close()
				t.Fatal("Open succeeded on a damaged log")
			}
			var ce *CorruptError
			if !errors.As(err, &ce) {
				t.Fatalf("Open error = %v (%T), want a *CorruptError", err, err)
			}
			if ce.Path != wantPath || ce.Offset != wantOff {
				t.Errorf("CorruptError at %s byte %d, want %s byte %d", ce.Path, ce.Offset, wantPath, wantOff)
			}
			if !strings.Contains(ce.Reason, tt.reason) {
				t.Errorf("CorruptError reason %q, want it to mention %q", ce.Reason, tt.reason)
			}
			msg := err.Error()
			for _, want := range []string{ce.Path, "restore " + dir + " from a backup", "move the file aside"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not mention %q", msg, want)
				}
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error %q is more than one line", msg)
			}
			after := readTree(t, dir)
			if len(after) != len(before) {
				t.Errorf("Open changed the files in the log: %d before, %d after", len(before), len(after))
			}
			for name, content := range before {
				if after[name] != content {
					t.Errorf("Open modified %s", name)
				}
			}
		})
	}
}

func TestOpenNewLogStartsAfterSnapshot(t *testing.T) {
	dir := t.TempDir()
	err := WriteSnapshot(dir, 41, func(emit func([]byte) error) error { return emit([]byte("state")) })
	if err != nil {
		t.Fatal(err)
	}
	l := openLog(t, dir, Options{NoSync: true})
	if got, want := l.FirstIndex(), uint64(42); got != want {
		t.Errorf("FirstIndex() = %d, want %d", got, want)
	}
	if index, err := l.Append([]byte("next")); index != 42 || err != nil {
		t.Errorf("Append = %d, %v; want 42", index, err)
	}
}

// TestLyingLengthAllocatesLittle checks that a frame claiming a huge
// payload in a small file costs no more memory than the file.
func TestLyingLengthAllocatesLittle(t *testing.T) {
	dir := t.TempDir()
	seg := fileHeader(segmentMagic, 1)
	seg = binary.LittleEndian.AppendUint32(seg, MaxEntrySize) // length
	seg = append(seg, make([]byte, 100)...)
	if err := os.MkdirAll(filepath.Join(dir, logDirName), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, logDirName, indexName(1, segmentExt)), seg, 0o600); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	l, err := Open(dir, Options{NoSync: true})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if got := after.TotalAlloc - before.TotalAlloc; got > 4<<20 {
		t.Errorf("Open allocated %d bytes for a %d-byte segment", got, len(seg))
	}
}
