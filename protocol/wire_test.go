package protocol

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

const testRecipient = "age1pq1exampleexampleexampleexampleexampleexampleexampleexample"

// testMessages is one of each message, in the order of a session, with
// their names in testdata/messages.txt.
func testMessages() []struct {
	name string
	m    Message
} {
	return []struct {
		name string
		m    Message
	}{
		{"hello", &Hello{Version: Version, Agent: testAgent, Site: testSite, BundleHWM: 12, PledgeHWM: 40, FeedbackHWM: 3,
			OldestUnsynced: testAt, AgentRecipient: testRecipient}},
		{"hello-enrol", &Hello{Version: Version, Agent: testAgent, Site: testSite,
			EnrolSecret: "q0bSYJwXfm4lAMgFhIuDRoEJ3l2ZcY0ZcbZ8j8CwZsw", AgentRecipient: testRecipient,
			AgentKey: EncodePublicKey(make([]byte, 32))}},
		{"hello-ok", &HelloOK{Version: Version, HubHWM: 10}},
		{"hello-ok-partial", &HelloOK{Version: Version, HubHWM: 10, Partial: Partial{Seq: 11, Offset: 524288}, DownPending: 1}},
		{"chunk", &Chunk{Seq: 11, Offset: 524288, Total: 600000, Data: []byte("…bundle bytes…")}},
		{"chunk-final", &Chunk{Seq: 11, Offset: 599990, Total: 600000, Final: true, Data: []byte("0123456789")}},
		{"chunk-final-empty", &Chunk{Seq: 11, Offset: 600000, Total: 600000, Final: true, Data: []byte{}}},
		{"blob-query", &BlobQuery{Blobs: []BlobRef{{Hash: strings.Repeat("ab", 32), Size: 1 << 20}}}},
		{"blob-need", &BlobNeed{Blobs: []BlobWant{{Hash: strings.Repeat("ab", 32), Offset: 262144}}}},
		{"blob-chunk", &BlobChunk{Hash: [32]byte{0xab, 0xab}, Offset: 262144, Total: 1 << 20, Data: []byte("…scan bytes…")}},
		{"blob-chunk-final", &BlobChunk{Hash: [32]byte{0xab, 0xab}, Offset: 1<<20 - 4, Total: 1 << 20, Final: true, Data: []byte("%EOF")}},
		{"blob-ack", &BlobAck{Hash: strings.Repeat("ab", 32), State: AckApplied}},
		{"done", &Done{}},
		{"ack", &Ack{Seq: 11, State: AckApplied}},
		{"ack-quarantined", &Ack{Seq: 12, State: AckQuarantined, Reason: "agent A-1 was revoked on 2025-03-14T09:26:53Z"}},
		{"down-bundle", &DownBundle{Seq: 4, Data: []byte("age-encryption.org/v1\n…")}},
		{"error", &Error{Code: CodeRevoked, Message: "agent A-1 was revoked; ask the hub operator for a new enrolment"}},
		{"bye", &Bye{}},
	}
}

func TestMessageRoundTrip(t *testing.T) {
	for _, tt := range testMessages() {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteMessage(&buf, tt.m); err != nil {
				t.Fatalf("WriteMessage: %v", err)
			}
			frame := bytes.Clone(buf.Bytes())
			got, err := ReadMessage(bufio.NewReader(&buf))
			if err != nil {
				t.Fatalf("ReadMessage: %v", err)
			}
			want := tt.m
			if c, ok := want.(*Chunk); ok && len(c.Data) == 0 {
				c2 := *c
				c2.Data = got.(*Chunk).Data // empty either way
				want = &c2
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("read back\n got %#v\nwant %#v", got, want)
			}
			again, err := AppendMessage(nil, got)
			if err != nil || !bytes.Equal(again, frame) {
				t.Errorf("encode(decode(frame)) = %x, %v; want %x", again, err, frame)
			}
			if got.Type() != MessageType(frame[0]) || got.Type().String() != tt.name[:len(got.Type().String())] {
				t.Errorf("type %v, frame byte %#x", got.Type(), frame[0])
			}
		})
	}
}

// TestMessageVectors keeps testdata/messages.txt, one frame per message in
// hex, for a second implementation to test against.
func TestMessageVectors(t *testing.T) {
	var b strings.Builder
	b.WriteString("# fieldsync wire frames (docs/protocol.md): a comment line naming the message, then the frame in hex.\n")
	for _, tt := range testMessages() {
		frame, err := AppendMessage(nil, tt.m)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "# %s\n%s\n", tt.name, hex.EncodeToString(frame))
	}
	const path = "testdata/messages.txt"
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run Vector -update)", err)
	}
	if b.String() != string(want) {
		t.Errorf("frames differ from %s; if the format changed on purpose, run go test -run Vector -update", path)
	}
	for _, line := range strings.Split(string(want), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		frame, _ := hex.DecodeString(line)
		if _, err := DecodeMessage(frame); err != nil {
			t.Errorf("vector %s: %v", line[:min(len(line), 20)], err)
		}
	}
}

func frame(t MessageType, payload string) []byte {
	b := []byte{byte(t)}
	b = binary.AppendUvarint(b, uint64(len(payload)))
	return append(b, payload...)
}

func chunkFrame(seq, off, total uint64, flag byte, data string) []byte {
	var p []byte
	p = binary.AppendUvarint(p, seq)
	p = binary.AppendUvarint(p, off)
	p = binary.AppendUvarint(p, total)
	p = append(p, flag)
	return frame(MsgChunk, string(p)+data)
}

func TestReadMessageRefuses(t *testing.T) {
	hello := `{"version":1,"agent":"A-1","site":"S-1","bundle_hwm":0,"pledge_hwm":0,"feedback_hwm":0}`
	if _, err := DecodeMessage(frame(MsgHello, hello)); err != nil {
		t.Fatalf("the unbroken hello does not decode: %v", err)
	}
	tests := []struct {
		name  string
		frame []byte
		code  string // "" for an io error
	}{
		{"unknown type", frame(0x42, "{}"), CodeMalformed},
		{"type zero", frame(0, ""), CodeMalformed},
		{"hello over limit", frame(MsgHello, strings.Repeat(" ", MaxControlSize+1)), CodeTooLarge},
		{"chunk over limit", append([]byte{byte(MsgChunk)}, binary.AppendUvarint(nil, maxChunkPayload+1)...), CodeTooLarge},
		{"length overflows", append([]byte{byte(MsgAck)}, bytes.Repeat([]byte{0xff}, 10)...), CodeMalformed},
		{"length not minimal", []byte{byte(MsgDone), 0x80, 0x00}, CodeMalformed},
		{"done with payload", frame(MsgDone, "x"), CodeTooLarge},
		{"hello unknown field", frame(MsgHello, strings.Replace(hello, `"version":1,`, `"version":1,"x":1,`, 1)), CodeMalformed},
		{"hello with spaces", frame(MsgHello, strings.Replace(hello, `"version":1,`, `"version": 1,`, 1)), CodeMalformed},
		{"hello duplicate key", frame(MsgHello, strings.Replace(hello, `"version":1,`, `"version":1,"agent":"A-2",`, 1)), CodeMalformed},
		{"hello trailing data", frame(MsgHello, hello+"{}"), CodeMalformed},
		{"hello not an object", frame(MsgHello, `[1]`), CodeMalformed},
		{"hello bad agent", frame(MsgHello, strings.Replace(hello, `"A-1"`, `"A 1"`, 1)), CodeMalformed},
		{"hello secret without recipient", frame(MsgHello, strings.Replace(hello, `}`, `,"enroll_secret":"abc"}`, 1)), CodeMalformed},
		{"hello version 0", frame(MsgHello, strings.Replace(hello, `"version":1`, `"version":0`, 1)), CodeVersion},
		{"hello-ok partial without seq", frame(MsgHelloOK, `{"version":1,"hub_hwm_for_agent":3,"partial":{"seq":0,"offset":5}}`), CodeMalformed},
		{"hello-ok partial not next", frame(MsgHelloOK, `{"version":1,"hub_hwm_for_agent":3,"partial":{"seq":7,"offset":5}}`), CodeMalformed},
		{"chunk flag 2", chunkFrame(1, 0, 10, 2, "0123456789"), CodeMalformed},
		{"chunk past total", chunkFrame(1, 5, 10, 1, "0123456789"), CodeMalformed},
		{"chunk final short", chunkFrame(1, 0, 10, 1, "01234"), CodeMalformed},
		{"chunk not final at end", chunkFrame(1, 0, 10, 0, "0123456789"), CodeMalformed},
		{"chunk seq 0", chunkFrame(0, 0, 10, 1, "0123456789"), CodeMalformed},
		{"chunk total over limit", chunkFrame(1, 0, MaxBundleSize+1, 0, "x"), CodeTooLarge},
		{"chunk header cut", frame(MsgChunk, "\x01\x00"), CodeMalformed},
		{"chunk varint not minimal", frame(MsgChunk, "\x81\x00\x00\x01\x01x"), CodeMalformed},
		{"down bundle empty", frame(MsgDownBundle, "\x01"), CodeMalformed},
		{"ack unknown state", frame(MsgAck, `{"seq":1,"state":"lost"}`), CodeMalformed},
		{"ack seq 0", frame(MsgAck, `{"seq":0,"state":"applied"}`), CodeMalformed},
		{"ack control character", frame(MsgAck, `{"seq":1,"state":"refused","reason":"a\u0007b"}`), CodeMalformed},
		{"retired down ack", frame(0x07, `{"seq":1}`), CodeMalformed},
		{"hello string hwm", frame(MsgHello, strings.Replace(hello, `"pledge_hwm":0`, `"pledge_hwm":"0"`, 1)), CodeMalformed},
		{"error bad code", frame(MsgError, `{"code":"Bad Code","message":"x"}`), CodeMalformed},
		{"error message too long", frame(MsgError, `{"code":"internal","message":"`+strings.Repeat("x", MaxErrorMessageLen+1)+`"}`), CodeMalformed},
		{"empty", nil, "EOF"},
		{"cut in length", []byte{byte(MsgChunk), 0x80}, "unexpected EOF"},
		{"cut in payload", frame(MsgAck, `{"seq":1,"state":"applied"}`)[:10], "unexpected EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, r := range []io.Reader{bytes.NewReader(tt.frame), struct{ io.Reader }{bytes.NewReader(tt.frame)}} {
				m, err := ReadMessage(r)
				if err == nil {
					t.Fatalf("ReadMessage gave %#v", m)
				}
				var me *MessageError
				switch {
				case errors.As(err, &me):
					if me.Code != tt.code {
						t.Errorf("code %q (%v), want %q", me.Code, err, tt.code)
					}
				case err.Error() != tt.code:
					t.Errorf("error %v, want %q", err, tt.code)
				}
			}
			_, err := ReadMessage(bytes.NewReader(tt.frame))
			t.Log(err)
		})
	}
}

func TestReadMessageNewerVersion(t *testing.T) {
	// A newer agent's hello decodes far enough to be answered with
	// CodeVersion, whatever else it carries.
	m, err := DecodeMessage(frame(MsgHello, `{"version":2,"agent":"A-1","capabilities":["x"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if h, ok := m.(*Hello); !ok || h.Version != 2 {
		t.Fatalf("got %#v, want a version 2 hello", m)
	}
	var me *MessageError
	if err := WriteMessage(io.Discard, m); !errors.As(err, &me) || me.Code != CodeVersion {
		t.Errorf("WriteMessage of a version 2 hello: %v", err)
	}
}

func TestReadMessageReadsOneFrame(t *testing.T) {
	var stream bytes.Buffer
	for _, tt := range testMessages() {
		WriteMessage(&stream, tt.m)
	}
	// A reader that is not an io.ByteReader: ReadMessage must not read
	// past each frame.
	r := struct{ io.Reader }{&stream}
	for _, tt := range testMessages() {
		m, err := ReadMessage(r)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if m.Type() != tt.m.Type() {
			t.Fatalf("got %v, want %v", m.Type(), tt.m.Type())
		}
	}
	if _, err := ReadMessage(r); err != io.EOF {
		t.Errorf("at the end: %v, want io.EOF", err)
	}
}

func TestReadMessageLimitBeforePayload(t *testing.T) {
	// A frame that claims 1 GiB is refused from its header: the reader
	// holds only the header, and an error if more is asked.
	hdr := append([]byte{byte(MsgDownBundle)}, binary.AppendUvarint(nil, 1<<30)...)
	r := io.MultiReader(bytes.NewReader(hdr), errReader{})
	_, err := ReadMessage(r)
	var me *MessageError
	if !errors.As(err, &me) || me.Code != CodeTooLarge || me.Type != MsgDownBundle {
		t.Fatalf("got %v, want a too-large down-bundle error", err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("read past the header") }

func TestWriteMessage(t *testing.T) {
	t.Run("clips error text", func(t *testing.T) {
		long := "bundle refused:\x1b[31m " + strings.Repeat("é", 2000) + "\xff"
		var buf bytes.Buffer
		if err := WriteMessage(&buf, &Error{Code: CodeMalformed, Message: long}); err != nil {
			t.Fatal(err)
		}
		m, err := ReadMessage(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if msg := m.(*Error).Message; len(msg) > MaxErrorMessageLen || !strings.HasPrefix(msg, "bundle refused:\uFFFD[31m é") {
			t.Errorf("message %q…", msg[:40])
		}
	})
	refused := []Message{
		nil,
		&Chunk{Seq: 1, Total: 10, Data: make([]byte, 11)},
		&Chunk{Seq: 1, Total: MaxBundleSize * 2, Data: make([]byte, MaxChunk+1)},
		&DownBundle{Seq: 1, Data: make([]byte, MaxDownBundleSize+1)},
		&Hello{Version: Version, Agent: "", Site: testSite},
		&Ack{Seq: 1, State: "fine"},
		&Error{Code: "", Message: "x"},
	}
	for _, m := range refused {
		var buf bytes.Buffer
		err := WriteMessage(&buf, m)
		if err == nil || buf.Len() != 0 {
			t.Errorf("WriteMessage(%T) = %v, wrote %d bytes", m, err, buf.Len())
		}
	}
}

func TestHelloTimes(t *testing.T) {
	// Times keep their instant through a hello, whatever zone they were in.
	kyiv := time.FixedZone("EET", 2*3600)
	h := &Hello{Version: Version, Agent: testAgent, Site: testSite, OldestUnsynced: time.Date(2025, 1, 2, 3, 4, 5, 6, kyiv)}
	frame, err := AppendMessage(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	m, err := DecodeMessage(frame)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.(*Hello).OldestUnsynced; !got.Equal(h.OldestUnsynced) {
		t.Errorf("oldest_unsynced %v, want %v", got, h.OldestUnsynced)
	}
}
