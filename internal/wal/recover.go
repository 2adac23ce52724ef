package wal

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
)

// readBufferSize is the bufio buffer for reading segments and snapshots:
// large enough that sequential reads cost few system calls, small enough
// not to matter on a site box with tens of MB.
const readBufferSize = 256 << 10

// segment is one file of the log.
type segment struct {
	first uint64 // index of its first entry; also its file name
	path  string
}

// segmentScan is what reading a whole segment found.
type segmentScan struct {
	entries uint64 // intact entries, first .. first+entries-1
	end     int64  // offset just past the last intact entry
	size    int64  // file size

	// For the last segment only: the bytes from end to size are a torn tail
	// to truncate, because reason was found at end and nothing intact after.
	torn   bool
	reason string
	// headerTorn says even the file header is incomplete: the segment
	// holds nothing and must be rewritten from scratch.
	headerTorn bool
}

// scanSegment reads and verifies every entry of seg. In the last segment,
// damage that only a crash during an append can explain is reported as a
// torn tail in the result; everything else is a *CorruptError. scanSegment
// never modifies the file.
func scanSegment(dir string, seg segment, last bool) (segmentScan, error) {
	var s segmentScan
	f, err := os.Open(seg.path)
	if err != nil {
		return s, fmt.Errorf("wal: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return s, fmt.Errorf("wal: %w", err)
	}
	s.size = st.Size()
	corrupt := func(off int64, format string, args ...any) error {
		return &CorruptError{Path: seg.path, Offset: off, Reason: fmt.Sprintf(format, args...), Dir: dir}
	}

	// A segment is created, given its header and fsynced before any entry
	// goes into it, so only the newest one can have a torn header.
	if s.size < fileHeaderSize {
		if last {
			s.headerTorn, s.reason = true, fmt.Sprintf("segment header is %d of %d bytes", s.size, fileHeaderSize)
			return s, nil
		}
		return s, corrupt(0, "segment header is %d of %d bytes", s.size, fileHeaderSize)
	}
	hdr := make([]byte, fileHeaderSize)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return s, fmt.Errorf("wal: read %s: %w", seg.path, noEOF(err))
	}
	first, err := parseFileHeader(hdr, segmentMagic)
	if errors.Is(err, errVersion) {
		return s, fmt.Errorf("wal: %s: %w", seg.path, err)
	}
	if err != nil {
		if last {
			zero, zerr := allZero(f, 0, s.size)
			if zerr != nil {
				return s, fmt.Errorf("wal: read %s: %w", seg.path, zerr)
			}
			if zero {
				s.headerTorn, s.reason = true, "segment is all zeros"
				return s, nil
			}
		}
		return s, corrupt(0, "%v", err)
	}
	if first != seg.first {
		return s, corrupt(0, "segment header says its first entry is %d, but its name says %d", first, seg.first)
	}

	fr := frameReader{r: bufio.NewReaderSize(f, readBufferSize), off: fileHeaderSize, size: s.size}
	var buf []byte
	want := seg.first
	for {
		off := fr.off
		index, payload, err := fr.next(buf)
		if err == io.EOF {
			s.end = off
			return s, nil
		}
		var damage *frameDamage
		switch {
		case errors.As(err, &damage):
		case err != nil:
			return s, fmt.Errorf("wal: read %s: %w", seg.path, err)
		case index == want:
			buf = payload
			want++
			s.entries++
			continue
		case index > want:
			// An intact entry from further on: entries are missing.
			return s, corrupt(off, "found entry %d where entry %d belongs: %s", index, want, missing(want, index-1))
		default:
			// An intact but older entry: stale bytes, as a file system may
			// expose after a crash, are damage like any other.
			damage = &frameDamage{fmt.Sprintf("found old entry %d where entry %d belongs", index, want)}
		}

		if !last {
			return s, corrupt(off, "%s, in a segment older than the newest, which no crash can leave torn", damage.reason)
		}
		later, err := laterEntry(f, off, s.size, want)
		if err != nil {
			return s, fmt.Errorf("wal: read %s: %w", seg.path, err)
		}
		if later >= 0 {
			return s, corrupt(off, "%s, and an intact entry follows at byte %d", damage.reason, later)
		}
		s.end, s.torn, s.reason = off, true, damage.reason
		return s, nil
	}
}

// missing describes the missing entries from..to.
func missing(from, to uint64) string {
	if from == to {
		return fmt.Sprintf("entry %d is missing", from)
	}
	return fmt.Sprintf("entries %d..%d are missing", from, to)
}

// laterEntry returns the offset of the first intact frame that starts after
// off and carries an index of at least want, or -1 if there is none.
//
// This is what tells a torn tail from corruption. A crash during an append
// leaves zeros, a prefix of what was being written, or stale bytes from
// earlier use of the disk blocks; none of it is an intact, checksummed entry
// continuing the log. An intact entry after the damage, on the other hand,
// may have been acknowledged, and truncating would lose it.
func laterEntry(f *os.File, off, size int64, want uint64) (int64, error) {
	start := off + 1
	if size-start < frameHeaderSize {
		return -1, nil
	}
	// Each entry takes at least a frame header, which bounds the highest
	// index that could follow; checking that first keeps the scan linear,
	// since random bytes almost never pass it.
	maxIndex := want + uint64((size-off)/frameHeaderSize)
	br := bufio.NewReaderSize(io.NewSectionReader(f, start, size-start), readBufferSize)
	var win [frameHeaderSize]byte
	if _, err := io.ReadFull(br, win[:]); err != nil {
		return -1, noEOF(err)
	}
	var scratch []byte
	for p := start; ; p++ {
		h := parseFrameHeader(win[:])
		if h.index >= want && h.index <= maxIndex && h.length <= MaxEntrySize &&
			int64(h.length) <= size-p-frameHeaderSize {
			if scratch == nil {
				scratch = make([]byte, 32<<10)
			}
			ok, err := frameIntact(f, p, win[:], h, scratch)
			if err != nil {
				return -1, err
			}
			if ok {
				return p, nil
			}
		}
		b, err := br.ReadByte()
		if err == io.EOF {
			return -1, nil
		}
		if err != nil {
			return -1, err
		}
		copy(win[:], win[1:])
		win[frameHeaderSize-1] = b
	}
}

// frameIntact reports whether the frame with header hdr at off has a
// matching checksum. It streams the payload through scratch rather than
// allocating it: h.length comes from bytes that may be garbage.
func frameIntact(f *os.File, off int64, hdr []byte, h frameHeader, scratch []byte) (bool, error) {
	crc := frameCRC(hdr, nil)
	r := io.NewSectionReader(f, off+frameHeaderSize, int64(h.length))
	for {
		n, err := r.Read(scratch)
		crc = crcUpdate(crc, scratch[:n])
		if err == io.EOF {
			return crc == h.crc, nil
		}
		if err != nil {
			return false, err
		}
	}
}

// allZero reports whether the bytes of f from off to size are all zero.
func allZero(f *os.File, off, size int64) (bool, error) {
	r := io.NewSectionReader(f, off, size-off)
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		for _, b := range buf[:n] {
			if b != 0 {
				return false, nil
			}
		}
		if err == io.EOF {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
}
