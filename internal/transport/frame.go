package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The shield's wire format. docs/transport.md ("The shield's frames")
// describes it; this file is its implementation.
//
// A shield datagram starts with a type byte whose bits 0x80 and 0x40 are
// clear. Every QUIC packet has the fixed bit 0x40 set (RFC 9000, 17.2 and
// 17.3), so one socket carries both, and a hub tells a shielded agent from
// a plain QUIC client by the first byte of each datagram.
//
//	data:      0x10 | seq (4)                | QUIC packet
//	data+ack:  0x11 | seq (4) | ack block    | QUIC packet
//	ack:       0x12 | ack block
//	ping:      0x13 | id (4)
//
//	ack block: next (4) | echo (varint) | n (1) | n × (gap varint, length varint)
//
// seq numbers a sender's data frames, one per QUIC packet; a
// retransmission keeps its seq. next says every seq before it arrived;
// the ranges list what arrived above it: the first starts gap packets
// after next, each further one gap packets after the end of the one
// before, and each covers length packets. echo is the id of the latest
// ping received, or zero. Sequence numbers wrap around (serial number
// arithmetic, RFC 1982).
const (
	frameData    byte = 0x10
	frameDataAck byte = 0x11
	frameAck     byte = 0x12
	framePing    byte = 0x13
)

// Limits on frames, and the sizes they lead to.
const (
	// MaxDatagram bounds a shield datagram: what fits in one IPv6 packet
	// on a 1500-byte MTU (1500 - 40 - 8), and so in IPv4 too.
	MaxDatagram = 1452
	// dataHeader is the bytes a data frame adds to a QUIC packet.
	dataHeader = 5
	// QUICPacketSize is the size of the QUIC packets both ends send: a
	// shielded one fills MaxDatagram exactly.
	QUICPacketSize = MaxDatagram - dataHeader
	// MaxRanges bounds the ranges in one ack block.
	MaxRanges = 32
	// maxAckBlock is the longest ack block: next, echo, n and MaxRanges
	// ranges of two varints of at most 5 bytes each (they fit in 32 bits).
	maxAckBlock = 4 + 5 + 1 + MaxRanges*2*5
)

// errFrame is wrapped by every parse error: the datagram is dropped.
var errFrame = errors.New("malformed shield frame")

// span is a run of sequence numbers [start, start+n).
type span struct {
	start uint32
	n     uint32
}

func (s span) end() uint32 { return s.start + s.n }

// ackBlock is what a receiver reports: everything before next arrived,
// and so did the ranges above it, in ascending order.
type ackBlock struct {
	next   uint32
	echo   uint32
	ranges []span
}

// frame is one parsed shield datagram. payload aliases the datagram.
type frame struct {
	typ     byte
	seq     uint32 // data: the frame's sequence number; ping: its id
	ack     *ackBlock
	payload []byte
}

// isShield reports whether a datagram is a shield frame rather than a QUIC
// packet (or something else, which QUIC drops).
func isShield(b []byte) bool {
	return len(b) > 0 && b[0]&0xc0 == 0 && b[0] >= frameData && b[0] <= framePing
}

// seqLess reports whether a comes before b in serial number order.
func seqLess(a, b uint32) bool { return int32(a-b) < 0 }

// seqDiff returns a - b in serial number order.
func seqDiff(a, b uint32) int64 { return int64(int32(a - b)) }

// parseFrame parses one shield datagram. It never panics and never
// allocates more than the ranges of one ack block.
func parseFrame(b []byte) (frame, error) {
	var f frame
	if len(b) > MaxDatagram {
		return f, fmt.Errorf("%w: %d bytes, over the %d-byte limit", errFrame, len(b), MaxDatagram)
	}
	if !isShield(b) {
		return f, fmt.Errorf("%w: type byte 0x%02x", errFrame, firstByte(b))
	}
	f.typ = b[0]
	b = b[1:]
	switch f.typ {
	case frameData, frameDataAck:
		if len(b) < 4 {
			return f, fmt.Errorf("%w: data frame without a sequence number", errFrame)
		}
		f.seq = binary.BigEndian.Uint32(b)
		b = b[4:]
		if f.typ == frameDataAck {
			ack, rest, err := parseAckBlock(b)
			if err != nil {
				return f, err
			}
			f.ack, b = &ack, rest
		}
		if len(b) == 0 {
			return f, fmt.Errorf("%w: data frame without a payload", errFrame)
		}
		f.payload = b
	case frameAck:
		ack, rest, err := parseAckBlock(b)
		if err != nil {
			return f, err
		}
		if len(rest) != 0 {
			return f, fmt.Errorf("%w: %d bytes after an ack", errFrame, len(rest))
		}
		f.ack = &ack
	case framePing:
		if len(b) != 4 {
			return f, fmt.Errorf("%w: ping of %d bytes, want 4", errFrame, len(b))
		}
		f.seq = binary.BigEndian.Uint32(b)
	}
	return f, nil
}

func firstByte(b []byte) byte {
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

func parseAckBlock(b []byte) (ackBlock, []byte, error) {
	var a ackBlock
	if len(b) < 4 {
		return a, nil, fmt.Errorf("%w: ack block cut short", errFrame)
	}
	a.next = binary.BigEndian.Uint32(b)
	b = b[4:]
	echo, n := binary.Uvarint(b)
	if n <= 0 || echo > 1<<32-1 {
		return a, nil, fmt.Errorf("%w: bad ping echo", errFrame)
	}
	a.echo = uint32(echo)
	b = b[n:]
	if len(b) < 1 {
		return a, nil, fmt.Errorf("%w: ack block without a range count", errFrame)
	}
	count := int(b[0])
	b = b[1:]
	if count > MaxRanges {
		return a, nil, fmt.Errorf("%w: %d ranges, over the limit of %d", errFrame, count, MaxRanges)
	}
	if count > 0 {
		a.ranges = make([]span, 0, count)
	}
	// pos is how far above next the previous range ended; ranges must
	// stay within half the sequence space above next so that serial
	// comparisons hold.
	var pos uint64
	for range count {
		gap, n := binary.Uvarint(b)
		if n <= 0 {
			return a, nil, fmt.Errorf("%w: bad range gap", errFrame)
		}
		b = b[n:]
		length, n := binary.Uvarint(b)
		if n <= 0 {
			return a, nil, fmt.Errorf("%w: bad range length", errFrame)
		}
		b = b[n:]
		if gap == 0 || length == 0 || gap > 1<<31 || length > 1<<31 || pos+gap+length > 1<<31 {
			return a, nil, fmt.Errorf("%w: range out of bounds", errFrame)
		}
		a.ranges = append(a.ranges, span{start: a.next + uint32(pos+gap), n: uint32(length)})
		pos += gap + length
	}
	return a, b, nil
}

// appendAckBlock appends a's encoding; a must have at most MaxRanges
// ranges, ascending, disjoint, non-adjacent and above next.
func appendAckBlock(b []byte, a *ackBlock) []byte {
	b = binary.BigEndian.AppendUint32(b, a.next)
	b = binary.AppendUvarint(b, uint64(a.echo))
	b = append(b, byte(len(a.ranges)))
	prev := a.next
	for _, r := range a.ranges {
		b = binary.AppendUvarint(b, uint64(r.start-prev))
		b = binary.AppendUvarint(b, uint64(r.n))
		prev = r.end()
	}
	return b
}

// appendData appends a data frame carrying payload, with ack if not nil.
func appendData(b []byte, seq uint32, ack *ackBlock, payload []byte) []byte {
	if ack == nil {
		b = append(b, frameData)
		b = binary.BigEndian.AppendUint32(b, seq)
	} else {
		b = append(b, frameDataAck)
		b = binary.BigEndian.AppendUint32(b, seq)
		b = appendAckBlock(b, ack)
	}
	return append(b, payload...)
}

func appendAck(b []byte, a *ackBlock) []byte {
	return appendAckBlock(append(b, frameAck), a)
}

func appendPing(b []byte, id uint32) []byte {
	return binary.BigEndian.AppendUint32(append(b, framePing), id)
}
