package transport

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	quicPacket := append([]byte{0x40}, bytes.Repeat([]byte{7}, 100)...)
	ack := &ackBlock{next: 1000, echo: 3, ranges: []span{{1002, 5}, {1010, 1}, {1000 + maxAhead - 1, 2}}}
	wrap := &ackBlock{next: 0xfffffff0, ranges: []span{{0xfffffffe, 4}}} // across the wrap
	tests := []struct {
		name  string
		frame []byte
		want  frame
	}{
		{"data", appendData(nil, 42, false, 0, nil, quicPacket), frame{typ: frameData, seq: 42, payload: quicPacket}},
		{"data with ack", appendData(nil, 43, false, 0, ack, quicPacket), frame{typ: frameDataAck, seq: 43, ack: ack, payload: quicPacket}},
		{"new sender's data", appendData(nil, 44, true, 40, nil, quicPacket), frame{typ: frameData, seq: 44, isNew: true, isn: 40, payload: quicPacket}},
		{"new sender's data with ack", appendData(nil, 45, true, 40, ack, quicPacket), frame{typ: frameDataAck, seq: 45, isNew: true, isn: 40, ack: ack, payload: quicPacket}},
		{"ack", appendAck(nil, ack), frame{typ: frameAck, ack: ack}},
		{"ack across the wrap", appendAck(nil, wrap), frame{typ: frameAck, ack: wrap}},
		{"ack of nothing", appendAck(nil, &ackBlock{next: 5}), frame{typ: frameAck, ack: &ackBlock{next: 5}}},
		{"ping", appendPing(nil, 9), frame{typ: framePing, seq: 9}},
		{"forward", appendForward(nil, 77), frame{typ: frameForward, seq: 77}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !isShield(tt.frame) {
				t.Fatalf("isShield(% x) = false", tt.frame[:1])
			}
			got, err := parseFrame(tt.frame)
			if err != nil {
				t.Fatal(err)
			}
			if got.ack != nil && len(got.ack.ranges) == 0 {
				got.ack.ranges = nil
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseFrame = %+v (ack %+v), want %+v (ack %+v)", got, got.ack, tt.want, tt.want.ack)
			}
		})
	}
}

// TestQUICIsNotShield checks that what QUIC sends is never taken for a
// shield frame: every QUIC packet has the fixed bit 0x40 set.
func TestQUICIsNotShield(t *testing.T) {
	for b := range 256 {
		if b&0x40 != 0 && isShield([]byte{byte(b), 0, 0, 0, 0, 0}) {
			t.Errorf("first byte 0x%02x, with QUIC's fixed bit, taken for a shield frame", b)
		}
	}
}

func TestParseFrameErrors(t *testing.T) {
	ranges := func(n int) []byte {
		b := []byte{frameAck, 0, 0, 0, 0, 0, byte(n)}
		for range n {
			b = append(b, 1, 1)
		}
		return b
	}
	tests := []struct {
		name  string
		frame []byte
	}{
		{"empty", nil},
		{"QUIC packet", []byte{0xc0, 0, 0, 0, 1}},
		{"unknown type", []byte{0x15, 0, 0, 0, 0}},
		{"too long", append(appendData(nil, 1, false, 0, nil, []byte{1}), make([]byte, MaxDatagram)...)},
		{"new sender without isn", []byte{frameData | newSender, 0, 0, 0, 1, 0, 0}},
		{"new-sender bit on an ack", append([]byte{frameAck | newSender}, appendAck(nil, &ackBlock{next: 1})[1:]...)},
		{"data without seq", []byte{frameData, 0, 0}},
		{"data without payload", []byte{frameData, 0, 0, 0, 1}},
		{"ack cut short", []byte{frameAck, 0, 0}},
		{"ack without count", []byte{frameAck, 0, 0, 0, 0, 0}},
		{"ack with bad echo", []byte{frameAck, 0, 0, 0, 0, 0x80}},
		{"ack with echo over 32 bits", append([]byte{frameAck, 0, 0, 0, 0}, 0xff, 0xff, 0xff, 0xff, 0x7f, 0)},
		{"too many ranges", ranges(MaxRanges + 1)},
		{"ranges cut short", ranges(3)[:10]},
		{"zero gap", []byte{frameAck, 0, 0, 0, 0, 0, 1, 0, 1}},
		{"zero length", []byte{frameAck, 0, 0, 0, 0, 0, 1, 1, 0}},
		{"range past half the space", []byte{frameAck, 0, 0, 0, 0, 0, 1, 0x80, 0x80, 0x80, 0x80, 0x08, 1}},
		{"bytes after an ack", append(appendAck(nil, &ackBlock{next: 1}), 0)},
		{"short ping", []byte{framePing, 0, 0}},
		{"long forward", []byte{frameForward, 0, 0, 0, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseFrame(tt.frame)
			if !errors.Is(err, errFrame) {
				t.Errorf("parseFrame(% x) = %v, want an errFrame", tt.frame, err)
			}
		})
	}
}

// FuzzParseFrame feeds hostile datagrams to the frame parser: it must not
// panic, must respect its limits, and what it accepts must encode back to
// a frame that parses the same.
func FuzzParseFrame(f *testing.F) {
	f.Add(appendData(nil, 1, false, 0, nil, []byte{0x40, 1, 2}))
	f.Add(appendData(nil, 2, true, 1, &ackBlock{next: 7, echo: 1, ranges: []span{{9, 2}}}, []byte{0x40}))
	f.Add(appendAck(nil, &ackBlock{next: 3, ranges: []span{{5, 1}, {8, 3}}}))
	f.Add(appendPing(nil, 5))
	f.Add(appendForward(nil, 6))
	f.Add([]byte{0xc3, 0, 0, 0, 1})
	f.Add(newFrameKey(make([]byte, 32), Client).seal(appendData(nil, 1, false, 0, nil, []byte{0x40, 1, 2})))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := parseFrame(b)
		if err != nil {
			return
		}
		if len(b) > MaxDatagram {
			t.Fatalf("accepted %d bytes, over MaxDatagram", len(b))
		}
		var again []byte
		switch fr.typ {
		case frameData, frameDataAck:
			again = appendData(nil, fr.seq, fr.isNew, fr.isn, fr.ack, fr.payload)
		case frameAck:
			if len(fr.ack.ranges) > MaxRanges {
				t.Fatalf("%d ranges accepted", len(fr.ack.ranges))
			}
			again = appendAck(nil, fr.ack)
		case framePing:
			again = appendPing(nil, fr.seq)
		case frameForward:
			again = appendForward(nil, fr.seq)
		}
		if fr.mac != nil {
			again[0] |= keyed
			again = append(again, fr.mac...)
		}
		fr2, err := parseFrame(again)
		if err != nil {
			t.Fatalf("re-encoded frame does not parse: %v", err)
		}
		if fr.ack != nil && len(fr.ack.ranges) == 0 {
			fr.ack.ranges = nil
		}
		if fr2.ack != nil && len(fr2.ack.ranges) == 0 {
			fr2.ack.ranges = nil
		}
		fr.body, fr2.body = nil, nil // what the MAC covers: the bytes as they came
		if !reflect.DeepEqual(fr, fr2) {
			t.Fatalf("round trip changed the frame: %+v, then %+v", fr, fr2)
		}
	})
}
