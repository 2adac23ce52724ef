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
//	data:      0x10 | seq (4) [| isn (4)]               | QUIC packet
//	data+ack:  0x11 | seq (4) [| isn (4)] | ack block   | QUIC packet
//	ack:       0x12 | ack block
//	ping:      0x13 | id (4)
//	forward:   0x14 | next (4)
//
// A data frame with the new-sender bit 0x08 in its type (0x18, 0x19)
// also carries the sender's first sequence number, its isn: a sender sets
// it until the first acknowledgement, so that a receiver still holding
// the state of an earlier sender from the same address starts over.
//
//	ack block: next (4) | echo (varint) | n (1) | n × (gap varint, length varint)
//
// Any frame with the keyed bit 0x20 in its type ends in an 8-byte MAC of
// everything before it (key.go): once both ends finished their QUIC
// handshake, they send nothing else.
//
// seq numbers a sender's data frames, one per QUIC packet; a
// retransmission keeps its seq. next says every seq before it arrived;
// the ranges list what arrived above it: the first starts gap packets
// after next, each further one gap packets after the end of the one
// before, and each covers length packets. echo is the id of the latest
// ping received, or zero. A ping asks for an ack at once. A forward says
// the sender gave up on everything before next (it never happens on a
// working path). Sequence numbers wrap around (serial number arithmetic,
// RFC 1982).
const (
	frameData    byte = 0x10
	frameDataAck byte = 0x11
	frameAck     byte = 0x12
	framePing    byte = 0x13
	frameForward byte = 0x14
	// newSender marks a data frame that carries the sender's isn.
	newSender byte = 0x08
	// keyed marks a frame that ends in a MAC of everything before it,
	// under the key both ends derived from their QUIC handshake
	// (docs/transport.md, "Hostile input").
	keyed byte = 0x20
)

// Limits on frames, and the sizes they lead to.
const (
	// MaxDatagram bounds a shield datagram: what fits in one IPv6 packet
	// on a 1500-byte MTU (1500 - 40 - 8), and so in IPv4 too.
	MaxDatagram = 1452
	// dataHeader is the bytes a data frame adds to a QUIC packet (a new
	// sender's adds 4 more).
	dataHeader = 5
	// QUICPacketSize is the size of the QUIC packets quic-go sends over a
	// Shield: its default, since it does no path MTU discovery on a
	// wrapped socket, and v0.65.0 paces wrongly (a busy loop) with a
	// larger InitialPacketSize and no discovery. A shielded packet with
	// an ack riding on it stays under MaxDatagram.
	QUICPacketSize = 1280
	// macSize is the bytes of a keyed frame's MAC: a truncated
	// HMAC-SHA256.
	macSize = 8
	// maxPayload bounds the QUIC packet in a data frame.
	maxPayload = MaxDatagram - dataHeader - 4 - macSize
	// MaxRanges bounds the ranges in one ack block.
	MaxRanges = 64
	// maxAckSpan bounds how far above its next an ack block's ranges
	// reach: a receiver takes data frames up to maxAhead past its next.
	maxAckSpan = maxAhead + 1
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
	typ     byte // without the newSender bit
	isn     uint32
	isNew   bool   // the frame carries isn
	seq     uint32 // data: the frame's sequence number; ping: its id; forward: next
	ack     *ackBlock
	payload []byte
	mac     []byte // a keyed frame's MAC, or nil
	body    []byte // what the MAC covers
}

// isShield reports whether a datagram is a shield frame rather than a QUIC
// packet (or something else, which QUIC drops).
func isShield(b []byte) bool {
	if len(b) == 0 || b[0]&0xc0 != 0 {
		return false
	}
	switch t := b[0] &^ keyed; t {
	case frameData, frameDataAck, frameAck, framePing, frameForward,
		frameData | newSender, frameDataAck | newSender:
		return true
	}
	return false
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
	if b[0]&keyed != 0 {
		if len(b) < 1+macSize {
			return f, fmt.Errorf("%w: keyed frame of %d bytes", errFrame, len(b))
		}
		f.mac = b[len(b)-macSize:]
		b = b[:len(b)-macSize]
		f.body = b
	}
	f.typ = b[0] &^ newSender &^ keyed
	f.isNew = b[0]&newSender != 0
	b = b[1:]
	switch f.typ {
	case frameData, frameDataAck:
		if len(b) < 4 {
			return f, fmt.Errorf("%w: data frame without a sequence number", errFrame)
		}
		f.seq = binary.BigEndian.Uint32(b)
		b = b[4:]
		if f.isNew {
			if len(b) < 4 {
				return f, fmt.Errorf("%w: new sender's frame without its first sequence number", errFrame)
			}
			f.isn = binary.BigEndian.Uint32(b)
			b = b[4:]
		}
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
	case framePing, frameForward:
		if len(b) != 4 {
			return f, fmt.Errorf("%w: frame 0x%02x of %d bytes, want 4", errFrame, f.typ, len(b))
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
	// stay within what a receiver tracks (maxAhead past its next, and the
	// packet at maxAhead itself): a sender walks what an ack covers, so
	// an ack must cover no more than a sender may have in flight.
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
		if gap == 0 || length == 0 || gap > maxAckSpan || length > maxAckSpan || pos+gap+length > maxAckSpan {
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

// appendData appends a data frame carrying payload, with ack if not nil,
// and with isn if isNew is set.
func appendData(b []byte, seq uint32, isNew bool, isn uint32, ack *ackBlock, payload []byte) []byte {
	t := frameData
	if ack != nil {
		t = frameDataAck
	}
	if isNew {
		t |= newSender
	}
	b = append(b, t)
	b = binary.BigEndian.AppendUint32(b, seq)
	if isNew {
		b = binary.BigEndian.AppendUint32(b, isn)
	}
	if ack != nil {
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

func appendForward(b []byte, next uint32) []byte {
	return binary.BigEndian.AppendUint32(append(b, frameForward), next)
}
