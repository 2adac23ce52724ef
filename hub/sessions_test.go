package hub

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"fieldsync/protocol"
)

// fakeConn records how a session's connection was closed.
type fakeConn struct {
	once   sync.Once
	code   quic.ApplicationErrorCode
	closed chan struct{}
}

func (c *fakeConn) CloseWithError(code quic.ApplicationErrorCode, _ string) error {
	c.once.Do(func() {
		c.code = code
		close(c.closed)
	})
	return nil
}

func (c *fakeConn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// newSession is a session of agent, last heard from silent ago.
func newSession(agent string, silent time.Duration) (*agentSession, *fakeConn) {
	c := &fakeConn{closed: make(chan struct{})}
	s := &agentSession{agent: agent, site: "S-" + agent, remote: "192.0.2.1:4433", conn: c}
	s.lastHeard.Store(time.Now().Add(-silent).UnixNano())
	return s, c
}

// TestClaim checks who may replace whom: one session per agent, a silent
// one replaced (and waited for), a talking one kept and the newcomer
// refused, other agents untouched.
func TestClaim(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	tests := []struct {
		name      string
		oldSilent time.Duration // the running session's silence; negative: none runs
		newAgent  string
		want      string // "", "busy", or "replaces"
	}{
		{"first session", -1, "A-1", ""},
		{"old one still talking: a second copy of the key", 0, "A-1", "busy"},
		{"old one talking a moment ago", SupersedeAfter - time.Second, "A-1", "busy"},
		{"old one silent: the agent left it", SupersedeAfter + time.Second, "A-1", "replaces"},
		{"another agent's session is no obstacle", 0, "A-2", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s agentSessions
			var old *agentSession
			var oldConn *fakeConn
			var oldRelease func()
			if tt.oldSilent >= 0 {
				old, oldConn = newSession("A-1", tt.oldSilent)
				var err error
				if oldRelease, err = s.claim(t.Context(), old, log); err != nil {
					t.Fatal(err)
				}
				old.lastHeard.Store(time.Now().Add(-tt.oldSilent).UnixNano())
			}
			me, _ := newSession(tt.newAgent, 0)
			type result struct {
				release func()
				err     error
			}
			got := make(chan result, 1)
			go func() {
				release, err := s.claim(t.Context(), me, log)
				got <- result{release, err}
			}()
			if tt.want == "replaces" {
				// The newcomer ends the old session, then waits for it.
				<-oldConn.closed
				if oldConn.code != protocol.SessionSuperseded || !old.superseded.Load() {
					t.Errorf("old session closed with code %d, superseded %v", oldConn.code, old.superseded.Load())
				}
				select {
				case r := <-got:
					t.Fatalf("claimed (%v) before the old session ended", r.err)
				default:
				}
				oldRelease()
			}
			r := <-got
			var se *sessionError
			switch tt.want {
			case "busy":
				if !errors.As(r.err, &se) || se.code != protocol.CodeBusy {
					t.Fatalf("claim: %v, want busy", r.err)
				}
				if oldConn.isClosed() {
					t.Error("the talking session was closed")
				}
				if l := s.list(); len(l) != 1 || l[0].Remote != old.remote {
					t.Errorf("sessions %+v, want the old one only", l)
				}
				return
			default:
				if r.err != nil {
					t.Fatalf("claim: %v", r.err)
				}
			}
			if l := s.list(); len(l) != map[bool]int{true: 2, false: 1}[tt.newAgent != "A-1" && old != nil] {
				t.Errorf("sessions %+v", l)
			}
			r.release()
			select {
			case <-me.done:
			default:
				t.Error("release did not mark the session done")
			}
		})
	}
}

// TestClaimChains checks that a session waiting for an old one to end
// holds the agent's place: a third that comes meanwhile is refused, and
// cancelling the wait frees the place.
func TestClaimChains(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	var s agentSessions
	old, oldConn := newSession("A-1", time.Hour)
	if _, err := s.claim(t.Context(), old, log); err != nil {
		t.Fatal(err)
	}
	old.lastHeard.Store(time.Now().Add(-time.Hour).UnixNano())

	ctx, cancel := context.WithCancel(t.Context())
	second, _ := newSession("A-1", 0)
	waited := make(chan error, 1)
	go func() {
		_, err := s.claim(ctx, second, log)
		waited <- err
	}()
	<-oldConn.closed // the second is now waiting for the old one to end
	third, _ := newSession("A-1", 0)
	var se *sessionError
	if _, err := s.claim(t.Context(), third, log); !errors.As(err, &se) || se.code != protocol.CodeBusy {
		t.Fatalf("third session: %v, want busy while the second waits", err)
	}
	cancel()
	if err := <-waited; !errors.Is(err, context.Canceled) {
		t.Fatalf("second session: %v, want its wait cancelled", err)
	}
	if l := s.list(); len(l) != 0 {
		t.Errorf("sessions %+v after the waiting one gave up", l)
	}
}
