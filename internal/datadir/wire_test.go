package datadir

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestEncodeRequest(t *testing.T) {
	abs := filepath.Join(os.TempDir(), "site")
	tests := []struct {
		name    string
		req     Request
		wantErr string
	}{
		{"plain", Request{Args: []string{"status", "--json"}, Dir: abs}, ""},
		{"env", Request{Dir: abs, Env: map[string]string{"FIELDSYNC_DIR": "/d"}}, ""},
		{"relative dir", Request{Dir: "site"}, "not absolute"},
		{"no dir", Request{Args: []string{"status"}}, "not absolute"},
		{"not UTF-8", Request{Args: []string{"--attach", "scan\xff.jpg"}, Dir: abs}, "not valid UTF-8"},
		{"NUL", Request{Args: []string{"a\x00"}, Dir: abs}, "NUL"},
		{"foreign env", Request{Dir: abs, Env: map[string]string{"PATH": "/bin"}}, "not a FIELDSYNC_ variable"},
		{"lower-case env", Request{Dir: abs, Env: map[string]string{"FIELDSYNC_dir": "/d"}}, "not a FIELDSYNC_ variable"},
		{"too large", Request{Args: []string{strings.Repeat("x", MaxRequestSize)}, Dir: abs}, "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, err := encodeRequest(tt.req)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("encodeRequest: got %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodeRequest(bytes.NewReader(msg))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.req) {
				t.Errorf("round trip: got %+v, want %+v", got, tt.req)
			}
		})
	}
}

// FuzzDecodeRequest feeds the daemon's request decoder what a hostile or
// broken client might send. What it accepts must encode back to a request
// that decodes the same.
func FuzzDecodeRequest(f *testing.F) {
	good, err := encodeRequest(Request{
		Args: []string{"record", "delivery", "--item", "Ноутбук", "--qty", "3"},
		Dir:  "/home/site",
		Env:  map[string]string{"FIELDSYNC_DIR": "/var/lib/fieldsync"},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)-1])
	f.Add(binary.BigEndian.AppendUint32(nil, MaxRequestSize+1))
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Add(append([]byte{0, 0, 0, 27}, `{"version":1,"dir":"/"}   x`...))
	f.Add(append([]byte{0, 0, 0, 37}, `{"version":1,"dir":"/","args":["\u0000"]}`...))
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := decodeRequest(bytes.NewReader(data))
		if err != nil {
			return
		}
		msg, err := encodeRequest(req)
		if err != nil {
			t.Fatalf("decoded %+v, which does not encode: %v", req, err)
		}
		again, err := decodeRequest(bytes.NewReader(msg))
		if err != nil {
			t.Fatalf("re-encoded request does not decode: %v", err)
		}
		if !reflect.DeepEqual(again, req) {
			t.Fatalf("round trip: got %+v, want %+v", again, req)
		}
	})
}

// FuzzReadFrames feeds the client's frame decoder what a broken daemon might
// send: it must not panic, and copies out no more than it was given.
func FuzzReadFrames(f *testing.F) {
	f.Add(appendFrame(appendFrame(nil, streamStdout, []byte("hi\n")), streamExit, []byte{0, 0, 0, 3}))
	f.Add(appendFrame(nil, streamStderr, []byte("oops")))
	f.Add(appendFrame(nil, streamExit, []byte{0, 0, 3}))
	f.Add(appendFrame(nil, 9, nil))
	f.Add(binary.BigEndian.AppendUint32([]byte{streamStdout}, MaxFrameSize+1))
	f.Fuzz(func(t *testing.T, data []byte) {
		var stdout, stderr bytes.Buffer
		readFrames(bytes.NewReader(data), &stdout, &stderr)
		if stdout.Len()+stderr.Len() > len(data) {
			t.Fatalf("copied %d bytes out of %d", stdout.Len()+stderr.Len(), len(data))
		}
	})
}

// fakeConn is a connection that records what is written to it.
type fakeConn struct {
	bytes.Buffer
	fail error
}

func (c *fakeConn) Write(p []byte) (int, error) {
	if c.fail != nil {
		return 0, c.fail
	}
	return c.Buffer.Write(p)
}

func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }

func TestFrames(t *testing.T) {
	long := bytes.Repeat([]byte{'x'}, 2*MaxFrameSize+1)
	tests := []struct {
		name       string
		writes     []string // "1:..." to stdout, "2:..." to stderr
		code       int
		wantFrames int
		wantCode   int
	}{
		{"nothing", nil, 0, 1, 0},
		{"empty write", []string{"1:"}, 0, 1, 0},
		{"interleaved", []string{"1:a", "2:b", "1:c"}, 4, 4, 4},
		{"split", []string{"1:" + string(long)}, 0, 4, 0},
		{"status too large", nil, math.MaxInt64, 1, math.MaxInt32},
		{"status too small", nil, math.MinInt64, 1, math.MinInt32},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var conn fakeConn
			f := &frames{w: &conn, timeout: time.Second}
			var wantStdout, wantStderr string
			for _, w := range tt.writes {
				stream, text, _ := strings.Cut(w, ":")
				sw := streamWriter{f, streamStdout}
				if stream == "2" {
					sw.stream = streamStderr
					wantStderr += text
				} else {
					wantStdout += text
				}
				if n, err := sw.Write([]byte(text)); n != len(text) || err != nil {
					t.Fatalf("Write: got %d, %v; want %d, nil", n, err, len(text))
				}
			}
			if err := f.finish(tt.code); err != nil {
				t.Fatal(err)
			}
			if _, err := f.write(streamStdout, []byte("late")); !errors.Is(err, errResponseDone) {
				t.Errorf("write after finish: got %v, want errResponseDone", err)
			}
			frameCount := 0
			for b := conn.Bytes(); len(b) > 0; frameCount++ {
				b = b[frameHeaderSize+int(binary.BigEndian.Uint32(b[1:])):]
			}
			if frameCount != tt.wantFrames {
				t.Errorf("frames: got %d, want %d", frameCount, tt.wantFrames)
			}
			var stdout, stderr bytes.Buffer
			code, err := readFrames(&conn, &stdout, &stderr)
			if err != nil || code != tt.wantCode || stdout.String() != wantStdout || stderr.String() != wantStderr {
				t.Errorf("read back: got %d, %v, %d bytes, %q; want %d", code, err, stdout.Len(), stderr.String(), tt.wantCode)
			}
		})
	}
}

func TestFramesClientGone(t *testing.T) {
	conn := fakeConn{fail: io.ErrClosedPipe}
	failed := 0
	f := &frames{w: &conn, timeout: time.Second, onFail: func() { failed++ }}
	for range 2 {
		if _, err := f.write(streamStdout, []byte("x")); !errors.Is(err, io.ErrClosedPipe) {
			t.Errorf("write: got %v, want io.ErrClosedPipe", err)
		}
	}
	if err := f.finish(0); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("finish: got %v, want io.ErrClosedPipe", err)
	}
	if failed != 1 {
		t.Errorf("onFail called %d times, want once", failed)
	}
}

func TestReadFramesErrors(t *testing.T) {
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"nothing", nil, errNoExit.Error()},
		{"cut in a header", []byte{streamStdout, 0}, errNoExit.Error()},
		{"cut in a payload", appendFrame(nil, streamStdout, []byte("hello"))[:7], errNoExit.Error()},
		{"no exit frame", appendFrame(nil, streamStdout, []byte("hello")), errNoExit.Error()},
		{"frame too large", binary.BigEndian.AppendUint32([]byte{streamStdout}, MaxFrameSize+1), "limit"},
		{"unknown stream", appendFrame(nil, 4, nil), "unknown type 4"},
		{"short exit frame", appendFrame(nil, streamExit, []byte{0}), "exit frame of 1 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := readFrames(bytes.NewReader(tt.data), io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
