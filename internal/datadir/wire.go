package datadir

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// The control protocol, as specified in the package documentation.
const (
	// protocolVersion is the version a client sends and a daemon speaks.
	protocolVersion = 1

	// MaxRequestSize is the largest request, in bytes of JSON, that a
	// daemon accepts and a client sends.
	MaxRequestSize = 1 << 20
	// MaxFrameSize is the largest frame payload, in bytes. Longer writes
	// are split.
	MaxFrameSize = 32 << 10

	requestHeaderSize = 4
	frameHeaderSize   = 5
	exitPayloadSize   = 4

	streamStdout = 1
	streamStderr = 2
	streamExit   = 3

	// envPrefix is the prefix of the environment variables a request may
	// carry.
	envPrefix = "FIELDSYNC_"

	// socketFile is the control socket in the data directory.
	socketFile = "control.sock"
	// maxSocketPath is the longest socket path every platform can bind
	// (sun_path is 104 bytes on macOS and BSD, 108 on Linux and Windows,
	// including the terminating NUL).
	maxSocketPath = 103

	// requestTimeout bounds how long a daemon waits for a request after a
	// client connects, and how long a client takes to send it.
	requestTimeout = 10 * time.Second
	// writeTimeout bounds how long a daemon waits for a client to take one
	// frame of output; a client that stops reading for longer is dropped
	// and its command cancelled.
	writeTimeout = time.Minute
	// dialTimeout bounds connecting to the socket.
	dialTimeout = 5 * time.Second
	// lingerTimeout bounds how long a daemon that refused a request waits
	// for the client to read the answer and hang up.
	lingerTimeout = time.Second
	// maxConns bounds how many commands a daemon runs at once; more wait
	// in the socket's backlog.
	maxConns = 64
)

// Request is one command invocation forwarded to the daemon.
type Request struct {
	// Args are the command's arguments after the program name.
	Args []string
	// Dir is the client's working directory, against which the command
	// resolves relative paths (such as --attach FILE).
	Dir string
	// Env holds the client's FIELDSYNC_* environment variables, which the
	// command reads instead of the daemon's.
	Env map[string]string
}

// wireRequest is Request as it travels.
type wireRequest struct {
	Version int               `json:"version"`
	Args    []string          `json:"args"`
	Dir     string            `json:"dir"`
	Env     map[string]string `json:"env,omitempty"`
}

// versionError is a request in a protocol version the daemon does not speak.
type versionError struct{ got int }

func (e *versionError) Error() string {
	return fmt.Sprintf("this command speaks control protocol %d, the daemon speaks %d: restart the daemon after an upgrade", e.got, protocolVersion)
}

// errRequestTooLarge is a request over MaxRequestSize.
var errRequestTooLarge = fmt.Errorf("command line too large to forward (limit %d bytes)", MaxRequestSize)

// encodeRequest returns req as it is sent, after checking it is one that
// decodeRequest accepts.
func encodeRequest(req Request) ([]byte, error) {
	if err := validateRequest(req); err != nil {
		return nil, err
	}
	payload, err := json.Marshal(wireRequest{Version: protocolVersion, Args: req.Args, Dir: req.Dir, Env: req.Env})
	if err != nil {
		return nil, err
	}
	if len(payload) > MaxRequestSize {
		return nil, errRequestTooLarge
	}
	msg := make([]byte, requestHeaderSize, requestHeaderSize+len(payload))
	binary.BigEndian.PutUint32(msg, uint32(len(payload)))
	return append(msg, payload...), nil
}

// decodeRequest reads one request from r, which is untrusted.
func decodeRequest(r io.Reader) (Request, error) {
	var hdr [requestHeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Request{}, fmt.Errorf("read request header: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > MaxRequestSize {
		return Request{}, errRequestTooLarge
	}
	// Grow with what arrives, not with what the header claims.
	var buf bytes.Buffer
	if _, err := io.CopyN(&buf, r, int64(n)); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Request{}, fmt.Errorf("read request: %w", err)
	}
	payload := buf.Bytes()
	if !utf8.Valid(payload) {
		return Request{}, errors.New("request is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	var w wireRequest
	if err := dec.Decode(&w); err != nil {
		return Request{}, fmt.Errorf("malformed request: %w", err)
	}
	if dec.More() {
		return Request{}, errors.New("malformed request: data after the JSON object")
	}
	if w.Version != protocolVersion {
		return Request{}, &versionError{got: w.Version}
	}
	req := Request{Args: w.Args, Dir: w.Dir, Env: w.Env}
	if len(req.Args) == 0 {
		req.Args = nil
	}
	if len(req.Env) == 0 {
		req.Env = nil
	}
	if err := validateRequest(req); err != nil {
		return Request{}, err
	}
	return req, nil
}

// validateRequest checks what JSON alone does not.
func validateRequest(req Request) error {
	for _, a := range req.Args {
		if err := checkString("argument", a); err != nil {
			return err
		}
	}
	if err := checkString("working directory", req.Dir); err != nil {
		return err
	}
	if !filepath.IsAbs(req.Dir) {
		return fmt.Errorf("working directory %q is not absolute", req.Dir)
	}
	for k, v := range req.Env {
		if !validEnvName(k) {
			return fmt.Errorf("environment variable %q is not a FIELDSYNC_ variable", k)
		}
		if err := checkString("environment variable "+k, v); err != nil {
			return err
		}
	}
	return nil
}

// checkString refuses what JSON would silently change (invalid UTF-8 turns
// into U+FFFD, so a file name would name another file) and what no command
// line can hold (NUL).
func checkString(what, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s %q is not valid UTF-8 and cannot be passed to the daemon", what, s)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("%s %q contains a NUL byte", what, s)
	}
	return nil
}

func validEnvName(k string) bool {
	if len(k) <= len(envPrefix) || !strings.HasPrefix(k, envPrefix) {
		return false
	}
	for _, c := range []byte(k) {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// appendFrame appends one frame to b.
func appendFrame(b []byte, stream byte, payload []byte) []byte {
	b = append(b, stream)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// exitFrame returns the frame that ends a response.
func exitFrame(code int) []byte {
	code = max(math.MinInt32, min(code, math.MaxInt32))
	return appendFrame(nil, streamExit, binary.BigEndian.AppendUint32(nil, uint32(int32(code))))
}

// errNoExit is a response that ended before its exit frame.
var errNoExit = errors.New("the daemon closed the connection before the command finished; it may or may not have taken effect")

// readFrames copies the output frames from r, which is untrusted, to stdout
// and stderr, and returns the status in the exit frame.
func readFrames(r io.Reader, stdout, stderr io.Writer) (int, error) {
	var hdr [frameHeaderSize]byte
	buf := make([]byte, MaxFrameSize)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return 0, errNoExit
			}
			return 0, fmt.Errorf("read from daemon: %w", err)
		}
		n := binary.BigEndian.Uint32(hdr[1:])
		if n > MaxFrameSize {
			return 0, fmt.Errorf("daemon sent a frame of %d bytes (limit %d)", n, MaxFrameSize)
		}
		p := buf[:n]
		if _, err := io.ReadFull(r, p); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return 0, errNoExit
			}
			return 0, fmt.Errorf("read from daemon: %w", err)
		}
		var w io.Writer
		switch hdr[0] {
		case streamStdout:
			w = stdout
		case streamStderr:
			w = stderr
		case streamExit:
			if n != exitPayloadSize {
				return 0, fmt.Errorf("daemon sent an exit frame of %d bytes (want %d)", n, exitPayloadSize)
			}
			return int(int32(binary.BigEndian.Uint32(p))), nil
		default:
			return 0, fmt.Errorf("daemon sent a frame of unknown type %d", hdr[0])
		}
		if _, err := w.Write(p); err != nil {
			return 0, err
		}
	}
}

// deadlineWriter is the connection as frameWriters see it.
type deadlineWriter interface {
	io.Writer
	SetWriteDeadline(time.Time) error
}

// frames serializes the frames of one response onto its connection. After
// one write fails, all fail: the client is gone.
type frames struct {
	mu      sync.Mutex
	w       deadlineWriter
	timeout time.Duration
	err     error
	buf     []byte
	onFail  func() // called once, when the first write fails
}

// errResponseDone is a write after the command returned.
var errResponseDone = errors.New("write after the command finished")

func (f *frames) write(stream byte, p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	written := 0
	for len(p) > 0 {
		if f.err != nil {
			return written, f.err
		}
		chunk := p[:min(len(p), MaxFrameSize)]
		f.buf = appendFrame(f.buf[:0], stream, chunk)
		if err := f.send(f.buf); err != nil {
			return written, err
		}
		written += len(chunk)
		p = p[len(chunk):]
	}
	return written, nil
}

// send writes one frame; f.mu is held.
func (f *frames) send(frame []byte) error {
	err := f.w.SetWriteDeadline(time.Now().Add(f.timeout))
	if err == nil {
		_, err = f.w.Write(frame)
	}
	if err != nil {
		f.err = fmt.Errorf("send output to client: %w", err)
		if f.onFail != nil {
			f.onFail()
		}
		return f.err
	}
	return nil
}

// finish sends the exit frame; later writes fail.
func (f *frames) finish(code int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	err := f.send(exitFrame(code))
	if err == nil {
		f.err = errResponseDone
	}
	return err
}

// streamWriter is one output stream of a response.
type streamWriter struct {
	f      *frames
	stream byte
}

func (s streamWriter) Write(p []byte) (int, error) { return s.f.write(s.stream, p) }
