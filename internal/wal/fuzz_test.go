package wal

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// FuzzReplay feeds arbitrary bytes to Open and Replay as the only segment of
// a log. They must never panic or allocate more than MaxEntrySize, and must
// either refuse the file untouched or leave exactly a header followed by
// the entries Replay returns.
func FuzzReplay(f *testing.F) {
	valid := func(n int) []byte {
		dir := fixture(f, n, 0)
		data, err := os.ReadFile(segmentPaths(f, dir)[0])
		if err != nil {
			f.Fatal(err)
		}
		return data
	}
	three := valid(3)
	f.Add(three)
	f.Add(three[:len(three)-5])
	f.Add(append(bytes.Clone(three), make([]byte, 64)...))
	f.Add(valid(0))
	f.Add(fileHeader(segmentMagic, 1)[:7])
	f.Add([]byte{})
	f.Add(append(fileHeader(segmentMagic, 1), 0xff, 0xff, 0xff, 0x03, 1, 2, 3, 4, 1, 0, 0, 0, 0, 0, 0, 0))

	f.Fuzz(func(t *testing.T, seg []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, logDirName, indexName(1, segmentExt))
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, seg, 0o600); err != nil {
			t.Fatal(err)
		}

		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		l, err := Open(dir, Options{NoSync: true})
		var entries [][]byte
		if err == nil {
			next := l.FirstIndex()
			err = l.Replay(1, func(index uint64, data []byte) error {
				if index != next {
					t.Fatalf("Replay gave entry %d, want %d", index, next)
				}
				next++
				entries = append(entries, data)
				return nil
			})
			if err != nil {
				t.Fatalf("Replay after a successful Open: %v", err)
			}
			if cerr := l.Close(); cerr != nil {
				t.Fatal(cerr)
			}
		}
		runtime.ReadMemStats(&after)
		if got := after.TotalAlloc - before.TotalAlloc; got > MaxEntrySize {
			t.Fatalf("Open and Replay allocated %d bytes for a %d-byte segment", got, len(seg))
		}

		got, rerr := os.ReadFile(path)
		if rerr != nil {
			t.Fatal(rerr)
		}
		if err != nil {
			var ce *CorruptError
			if !errors.As(err, &ce) && !errors.Is(err, errVersion) {
				t.Fatalf("Open error %v (%T) is neither damage nor a version mismatch", err, err)
			}
			if !bytes.Equal(got, seg) {
				t.Fatalf("Open failed (%v) but modified the segment", err)
			}
			return
		}
		var want bytes.Buffer
		want.Write(fileHeader(segmentMagic, 1))
		for i, data := range entries {
			if err := writeFrame(&want, uint64(i+1), data); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("after recovery the segment is not its header and %d replayed entries", len(entries))
		}
		if !bytes.HasPrefix(seg, got) && len(got) > fileHeaderSize {
			t.Fatalf("recovery kept bytes that were not a prefix of the segment")
		}
	})
}

// FuzzFrameRoundTrip checks that a frame decodes to what was encoded, and
// that any bytes that decode as a frame re-encode to exactly those bytes.
func FuzzFrameRoundTrip(f *testing.F) {
	f.Add(uint64(1), []byte("entry"), []byte{})
	f.Add(uint64(0), []byte{}, []byte{1, 2, 3})
	f.Add(^uint64(0), bytes.Repeat([]byte{0xaa}, 300), make([]byte, frameHeaderSize))

	f.Fuzz(func(t *testing.T, index uint64, payload, raw []byte) {
		var frame bytes.Buffer
		if err := writeFrame(&frame, index, payload); err != nil {
			t.Fatal(err)
		}
		// Encode then decode, with trailing bytes that must stay unread.
		file := append(bytes.Clone(frame.Bytes()), raw...)
		fr := frameReader{r: bufio.NewReader(bytes.NewReader(file)), size: int64(len(file))}
		gotIndex, gotPayload, err := fr.next(nil)
		if err != nil {
			t.Fatalf("decoding an encoded frame: %v", err)
		}
		if gotIndex != index || !bytes.Equal(gotPayload, payload) || fr.off != int64(frame.Len()) {
			t.Fatalf("decoded entry %d of %d bytes ending at %d, want entry %d of %d bytes ending at %d",
				gotIndex, len(gotPayload), fr.off, index, len(payload), frame.Len())
		}

		// Decode arbitrary bytes; what decodes must re-encode identically.
		fr = frameReader{r: bufio.NewReader(bytes.NewReader(raw)), size: int64(len(raw))}
		gotIndex, gotPayload, err = fr.next(nil)
		var damage *frameDamage
		if err == io.EOF || errors.As(err, &damage) {
			return
		}
		if err != nil {
			t.Fatalf("decoding from memory: %v", err)
		}
		var again bytes.Buffer
		if err := writeFrame(&again, gotIndex, gotPayload); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again.Bytes(), raw[:fr.off]) {
			t.Fatalf("decoded frame re-encodes differently")
		}
	})
}
