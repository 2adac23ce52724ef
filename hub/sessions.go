package hub

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"fieldsync/protocol"
)

// SupersedeAfter is how long an agent's session must have been silent
// before a new session of the same agent may replace it. An agent redials
// only once its own session has failed, so a silent old session is one the
// agent has left (killed, or its link gone for longer than its idle
// timeout) and the hub has not noticed yet; a session that is still
// talking means a second copy of the agent's key is in use, and the
// newcomer is refused rather than allowed to cut the live one off.
const SupersedeAfter = 10 * time.Second

// errSuperseded ends a session that a newer one of the same agent replaced.
var errSuperseded = errors.New("a newer session of this agent took over")

// agentSessions lets one session per agent run at a time: two sessions of
// one agent would write the same partial upload. They are also what
// `hub status` shows as syncing now.
type agentSessions struct {
	mu  sync.Mutex
	run map[string]*agentSession // by agent id: the newest session
}

// closer is the part of a QUIC connection that a newer session uses to end
// an older one.
type closer interface {
	CloseWithError(quic.ApplicationErrorCode, string) error
}

// agentSession is one agent's sync session.
type agentSession struct {
	agent, site, remote string
	since               time.Time
	conn                closer
	done                chan struct{} // closed once the session has ended
	superseded          atomic.Bool   // a newer session ended this one
	lastHeard           atomic.Int64  // unix nanoseconds of the last bytes from the agent

	mu       sync.Mutex
	bytes    int64  // payload bytes received and stored in this session
	object   string // what the agent is sending now
	at, size int64  // how far into object, of its size
}

// heard notes that bytes arrived from the agent.
func (s *agentSession) heard() { s.lastHeard.Store(time.Now().UnixNano()) }

// silentFor is how long the agent has not been heard from.
func (s *agentSession) silentFor() time.Duration {
	return time.Since(time.Unix(0, s.lastHeard.Load()))
}

// received notes a chunk of object stored, at offset of total, n bytes long.
func (s *agentSession) received(object string, offset, total uint64, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bytes += int64(n)
	// Both are under the protocol's size limits, far below 1<<63.
	s.object, s.at, s.size = object, int64(offset)+int64(n), int64(total)
}

// claim makes me its agent's session. A previous session that has been
// silent for SupersedeAfter is ended, and claim waits for it to finish, so
// that sessions of one agent never overlap; one still talking makes claim
// refuse me. Claims chain: each waits only for the session before it. The
// caller must call release when its session has ended.
func (s *agentSessions) claim(ctx context.Context, me *agentSession, log *slog.Logger) (release func(), err error) {
	me.done = make(chan struct{})
	if me.lastHeard.Load() == 0 {
		me.heard()
	}
	s.mu.Lock()
	old := s.run[me.agent]
	if old != nil && old.silentFor() < SupersedeAfter {
		s.mu.Unlock()
		log.Warn("second session of an agent refused: is a copy of its key in use elsewhere?",
			"agent", me.agent, "site", me.site, "remote", me.remote, "active_remote", old.remote)
		return nil, &sessionError{protocol.CodeBusy, fmt.Sprintf(
			"another session of agent %s is active from %s; if this agent just restarted, retry in %v", me.agent, old.remote, SupersedeAfter)}
	}
	if s.run == nil {
		s.run = map[string]*agentSession{}
	}
	s.run[me.agent] = me
	s.mu.Unlock()
	release = func() {
		s.mu.Lock()
		if s.run[me.agent] == me {
			delete(s.run, me.agent)
		}
		s.mu.Unlock()
		close(me.done)
	}
	if old == nil {
		return release, nil
	}
	log.Info("session superseded by a newer one of the same agent", "agent", me.agent,
		"old_remote", old.remote, "silent_for", old.silentFor().Round(time.Second), "remote", me.remote)
	old.superseded.Store(true)
	old.conn.CloseWithError(protocol.SessionSuperseded, errSuperseded.Error())
	select {
	case <-old.done:
	case <-ctx.Done():
		release()
		return nil, ctx.Err()
	}
	if me.superseded.Load() {
		// A newer session came while this one waited; it waits on this one.
		release()
		return nil, errSuperseded
	}
	return release, nil
}

// end closes agent's session, if one runs, with code and reason.
func (s *agentSessions) end(agent string, code quic.ApplicationErrorCode, reason string) {
	s.mu.Lock()
	r := s.run[agent]
	s.mu.Unlock()
	if r != nil {
		r.conn.CloseWithError(code, reason)
	}
}

// Session is a sync session in progress, as `hub status` shows it.
type Session struct {
	Agent  string    `json:"agent"`
	Site   string    `json:"site"`
	Remote string    `json:"remote"` // the agent's address
	Since  time.Time `json:"since"`
	// LastHeard is when bytes last came from the agent.
	LastHeard time.Time `json:"last_heard"`
	Received  int64     `json:"received_bytes"` // payload stored so far in this session
	// Sending is what the agent is sending now ("bundle 12", "attachment
	// 1a2b3c4d5e6f"), At bytes of its Size across; empty before the first
	// chunk.
	Sending string `json:"sending,omitempty"`
	At      int64  `json:"at,omitempty"`
	Size    int64  `json:"size,omitempty"`
}

// list returns the sessions in progress, by agent.
func (s *agentSessions) list() []Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Session, 0, len(s.run))
	for _, r := range s.run {
		r.mu.Lock()
		out = append(out, Session{Agent: r.agent, Site: r.site, Remote: r.remote, Since: r.since.Truncate(time.Second),
			LastHeard: time.Unix(0, r.lastHeard.Load()).UTC().Truncate(time.Second),
			Received:  r.bytes, Sending: r.object, At: r.at, Size: r.size})
		r.mu.Unlock()
	}
	slices.SortFunc(out, func(x, y Session) int { return cmp.Compare(x.Agent, y.Agent) })
	return out
}
