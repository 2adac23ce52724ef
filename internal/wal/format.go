package wal

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"path/filepath"
)

// MaxEntrySize is the largest payload an entry may have, in bytes. Append
// refuses larger entries, and a reader treats a frame claiming more as
// damage, so a corrupt length can never make it allocate more than this.
const MaxEntrySize = 64 << 20

// File format constants; doc.go describes the layout they implement.
const (
	formatVersion   = 1
	fileHeaderSize  = 24 // magic, version, crc, index
	frameHeaderSize = 16 // length, crc, index

	segmentMagic  = "fswalseg"
	snapshotMagic = "fswalsnp"
)

// castagnoli is CRC-32C, chosen over IEEE for its better error detection on
// storage data and for the hardware support on amd64 and arm64.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrEntryTooLarge is returned by Append and AppendBatch, and by a snapshot's
// emit function, for an entry of more than MaxEntrySize bytes.
var ErrEntryTooLarge = errors.New("wal: entry exceeds MaxEntrySize")

// CorruptError reports damage in a segment or snapshot file that recovery
// must not repair on its own, because acknowledged data may be lost with it.
type CorruptError struct {
	Path   string // the damaged file
	Offset int64  // byte offset of the damage within Path
	Reason string // what is wrong there
	Dir    string // the data directory the file belongs to
}

// Error says in one line what is damaged and what the operator can do.
func (e *CorruptError) Error() string {
	dir := e.Dir
	if dir == "" {
		dir = filepath.Dir(filepath.Dir(e.Path))
	}
	return fmt.Sprintf("wal: the log is damaged at %s byte %d: %s; restore %s from a backup or move the file aside to open without it",
		e.Path, e.Offset, e.Reason, dir)
}

// frameHeader is the decoded fixed part of a frame.
type frameHeader struct {
	length uint32
	crc    uint32
	index  uint64
}

func parseFrameHeader(b []byte) frameHeader {
	return frameHeader{
		length: binary.LittleEndian.Uint32(b[0:4]),
		crc:    binary.LittleEndian.Uint32(b[4:8]),
		index:  binary.LittleEndian.Uint64(b[8:16]),
	}
}

// frameCRC computes a frame's checksum. It covers the length and the index as
// well as the payload, so a damaged length or a misplaced entry is caught by
// the checksum and not only by later consistency checks.
func frameCRC(hdr []byte, payload []byte) uint32 {
	crc := crc32.Update(0, castagnoli, hdr[0:4])
	crc = crc32.Update(crc, castagnoli, hdr[8:16])
	return crc32.Update(crc, castagnoli, payload)
}

func crcUpdate(crc uint32, p []byte) uint32 {
	return crc32.Update(crc, castagnoli, p)
}

// putFrameHeader fills hdr (frameHeaderSize bytes) for payload at index.
func putFrameHeader(hdr []byte, index uint64, payload []byte) {
	binary.LittleEndian.PutUint32(hdr[0:4], uint32(len(payload)))
	binary.LittleEndian.PutUint64(hdr[8:16], index)
	binary.LittleEndian.PutUint32(hdr[4:8], frameCRC(hdr, payload))
}

// writeFrame writes the frame for payload at index to w without copying the
// payload into a frame buffer first (entries can be large).
func writeFrame(w io.Writer, index uint64, payload []byte) error {
	var hdr [frameHeaderSize]byte
	putFrameHeader(hdr[:], index, payload)
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// fileHeader builds the header of a segment or snapshot file.
func fileHeader(magic string, index uint64) []byte {
	b := make([]byte, fileHeaderSize)
	copy(b[0:8], magic)
	binary.LittleEndian.PutUint32(b[8:12], formatVersion)
	binary.LittleEndian.PutUint64(b[16:24], index)
	binary.LittleEndian.PutUint32(b[12:16], fileHeaderCRC(b))
	return b
}

func fileHeaderCRC(b []byte) uint32 {
	crc := crc32.Update(0, castagnoli, b[0:12])
	return crc32.Update(crc, castagnoli, b[16:24])
}

// errVersion marks a file written by a newer format version: not damage, so
// not a *CorruptError; the remedy is a newer program.
var errVersion = errors.New("unsupported format version")

// parseFileHeader checks a file header and returns the index it carries. A
// problem is returned as a reason for a *CorruptError, or wraps errVersion.
func parseFileHeader(b []byte, magic string) (uint64, error) {
	if string(b[0:8]) != magic {
		return 0, fmt.Errorf("file header has magic %q, want %q", b[0:8], magic)
	}
	if binary.LittleEndian.Uint32(b[12:16]) != fileHeaderCRC(b) {
		return 0, errors.New("file header checksum mismatch")
	}
	if v := binary.LittleEndian.Uint32(b[8:12]); v != formatVersion {
		return 0, fmt.Errorf("%w %d (this build reads version %d); use a newer fieldsync", errVersion, v, formatVersion)
	}
	return binary.LittleEndian.Uint64(b[16:24]), nil
}

// frameReader decodes frames one after another from a file. It knows the
// file's size so that a damaged length can never make it allocate or read
// more than the bytes that are actually there.
type frameReader struct {
	r    *bufio.Reader
	off  int64 // file offset of the next frame
	size int64 // file size
	hdr  [frameHeaderSize]byte
}

// frameDamage describes a frame that cannot be decoded: the caller decides
// whether it is a torn tail or corruption.
type frameDamage struct {
	reason string
}

func (d *frameDamage) Error() string { return d.reason }

// next decodes the frame at fr.off. The payload is read into buf when it
// fits and into a new slice otherwise; pass nil to get a slice the caller
// may keep. It returns io.EOF at a clean end of file, a *frameDamage
// when the bytes there are not an intact frame, and other errors for I/O
// failures. After a *frameDamage the reader is positioned nowhere useful.
func (fr *frameReader) next(buf []byte) (index uint64, payload []byte, err error) {
	remaining := fr.size - fr.off
	if remaining == 0 {
		return 0, nil, io.EOF
	}
	if remaining < frameHeaderSize {
		return 0, nil, &frameDamage{fmt.Sprintf("%d bytes left, too few for an entry header", remaining)}
	}
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return 0, nil, noEOF(err)
	}
	h := parseFrameHeader(fr.hdr[:])
	if h.length > MaxEntrySize {
		return 0, nil, &frameDamage{fmt.Sprintf("entry length %d exceeds the limit of %d", h.length, MaxEntrySize)}
	}
	if int64(h.length) > remaining-frameHeaderSize {
		return 0, nil, &frameDamage{fmt.Sprintf("entry of %d bytes runs past the end of the file (%d bytes left)", h.length, remaining-frameHeaderSize)}
	}
	// Allocated only now that the length is known to be within both
	// MaxEntrySize and the bytes actually left in the file.
	if int(h.length) <= cap(buf) {
		payload = buf[:h.length]
	} else {
		payload = make([]byte, h.length)
	}
	if _, err := io.ReadFull(fr.r, payload); err != nil {
		return 0, nil, noEOF(err)
	}
	if frameCRC(fr.hdr[:], payload) != h.crc {
		return 0, nil, &frameDamage{fmt.Sprintf("checksum mismatch in entry of %d bytes", h.length)}
	}
	fr.off += frameHeaderSize + int64(h.length)
	return h.index, payload, nil
}

// noEOF turns an EOF that the file size said could not happen (the file
// shrank under us) into io.ErrUnexpectedEOF, so it is never mistaken for a
// clean end.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
