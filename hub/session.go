package hub

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"filippo.io/age"
	"github.com/hashicorp/go-memdb"
	"github.com/quic-go/quic-go"

	"fieldsync/internal/ledger"
	"fieldsync/internal/transport"
	"fieldsync/protocol"
)

// Limits on one sync session.
const (
	// SessionIdle is how long the hub waits for the agent's next message.
	SessionIdle = 2 * time.Minute
)

// sessionError is a refusal sent to the agent before closing.
type sessionError struct {
	code string
	msg  string
}

func (e *sessionError) Error() string { return e.code + ": " + e.msg }

// handleConn runs one agent's sync session on a QUIC connection.
func (h *Hub) handleConn(ctx context.Context, conn *quic.Conn) {
	defer conn.CloseWithError(0, "")
	sctx, cancel := context.WithTimeout(ctx, 24*time.Hour)
	defer cancel()
	stream, err := conn.AcceptStream(sctx)
	if err != nil {
		return
	}
	err = h.session(sctx, conn, stream)
	outcome := "ok"
	var se *sessionError
	switch {
	case errors.Is(err, errSuperseded):
		outcome = "superseded" // logged where it was decided
	case errors.As(err, &se):
		outcome = se.code
		protocol.WriteMessage(stream, &protocol.Error{Code: se.code, Message: se.msg})
		h.log.Warn("sync session ended", "remote", conn.RemoteAddr().String(), "err", err)
	case err != nil:
		outcome = "error"
		h.log.Warn("sync session ended", "remote", conn.RemoteAddr().String(), "err", err)
	}
	h.metrics.sessions.WithLabelValues(outcome).Inc()
	stream.Close()
	// The agent closes the connection once it has read the last message;
	// closing first could drop that message in flight.
	select {
	case <-conn.Context().Done():
	case <-time.After(10 * time.Second):
	}
}

// deadlineReader renews a read deadline before every read, so a silent agent
// cannot hold a session forever, and tells the session when it last heard
// from the agent.
type deadlineReader struct {
	s    *quic.Stream
	sess *agentSession
}

func (d deadlineReader) Read(p []byte) (int, error) {
	d.s.SetReadDeadline(time.Now().Add(SessionIdle))
	n, err := d.s.Read(p)
	if n > 0 {
		d.sess.heard()
	}
	return n, err
}

func (h *Hub) session(ctx context.Context, conn *quic.Conn, stream *quic.Stream) (err error) {
	sess := &agentSession{remote: conn.RemoteAddr().String(), since: h.now().UTC(), conn: conn}
	r := bufio.NewReader(deadlineReader{stream, sess})
	msg, err := protocol.ReadMessage(r)
	if err != nil {
		return &sessionError{protocol.CodeMalformed, "expected hello: " + err.Error()}
	}
	hello, ok := msg.(*protocol.Hello)
	if !ok {
		return &sessionError{protocol.CodeMalformed, fmt.Sprintf("expected hello, got %T", msg)}
	}
	if hello.Version != protocol.Version {
		return &sessionError{protocol.CodeVersion, fmt.Sprintf("hub speaks version %d, agent %d: upgrade the older side", protocol.Version, hello.Version)}
	}
	peer, err := transport.PeerKey(conn.ConnectionState().TLS)
	if err != nil {
		return &sessionError{protocol.CodeUnauthenticated, err.Error()}
	}
	a, err := h.authenticate(hello, peer)
	if err != nil {
		return err
	}
	log := h.log.With("agent", a.ID, "site", a.Site)
	sess.agent, sess.site = a.ID, a.Site
	// Deferred before the upload's close, so it runs after it: the next
	// session of this agent starts once this one's partial files are shut.
	release, err := h.sessions.claim(ctx, sess, h.log)
	if err != nil {
		return err
	}
	defer release()
	defer func() {
		if sess.superseded.Load() {
			err = errSuperseded
		}
	}()
	// A session this one replaced may have applied bundles meanwhile:
	// where to resume is what the hub holds now.
	if a, err = h.agent(a.ID); err != nil {
		return err
	} else if a == nil || a.IsRevoked() {
		return &sessionError{protocol.CodeRevoked, "agent " + sess.agent + " was revoked; ask the hub operator for a new enrolment"}
	}

	ok2 := &protocol.HelloOK{Version: protocol.Version, HubHWM: a.BundleHWM}
	if off := h.partialSize(fmt.Sprintf("%s-%d", a.ID, a.BundleHWM+1)); off > 0 {
		ok2.Partial = protocol.Partial{Seq: a.BundleHWM + 1, Offset: uint64(off)}
	}
	if err := protocol.WriteMessage(stream, ok2); err != nil {
		return err
	}
	log.Info("sync session", "remote", conn.RemoteAddr().String(), "agent_hwm", hello.BundleHWM, "hub_hwm", a.BundleHWM)

	// Uploads: bundles, then attachments, until Done.
	up := &upload{h: h, agent: a, w: stream}
	defer up.close()
	for {
		msg, err := protocol.ReadMessage(r)
		if err != nil {
			var me *protocol.MessageError
			if errors.As(err, &me) {
				return &sessionError{me.Code, me.Error()}
			}
			return fmt.Errorf("read from agent: %w", err)
		}
		switch m := msg.(type) {
		case *protocol.Done:
		case *protocol.Chunk:
			if err = up.chunk(m); err == nil {
				sess.received(fmt.Sprintf("bundle %d", m.Seq), m.Offset, m.Total, len(m.Data))
			}
		case *protocol.BlobQuery:
			err = up.blobQuery(m)
		case *protocol.BlobChunk:
			if err = up.blobChunk(m); err == nil {
				sess.received(fmt.Sprintf("attachment %x", m.Hash[:6]), m.Offset, m.Total, len(m.Data))
			}
		default:
			err = &sessionError{protocol.CodeMalformed, fmt.Sprintf("expected chunk, blob or done, got %s", m.Type())}
		}
		if err != nil {
			return err
		}
		if _, done := msg.(*protocol.Done); done {
			break
		}
	}

	// What the agent lacks goes down, and Bye right behind it. Nothing
	// waits for an acknowledgement: what the agent holds is what its hello
	// says, so a hub bundle that did not reach it goes again next time.
	// (Sent while the upload still ran, the hub bundle's acknowledgements
	// would queue behind the upload's data, and quic-go would send it
	// again before they came back.)
	down := &downlink{h: h, agent: a.ID, w: stream,
		from: down{seq: a.DownSeq, pledgeHWM: hello.PledgeHWM, feedbackHWM: hello.FeedbackHWM}}
	if err := down.send(); err != nil {
		return err
	}
	if err := protocol.WriteMessage(stream, &protocol.Bye{}); err != nil {
		return err
	}
	return down.close()
}

// authenticate matches the peer's key and hello to an enrolled agent, or
// enrols a new agent that presents a valid one-time secret, burning it.
func (h *Hub) authenticate(hello *protocol.Hello, peer ed25519.PublicKey) (*ledger.Agent, error) {
	peerKey := base64.StdEncoding.EncodeToString(peer)
	if hello.AgentKey != "" && hello.AgentKey != protocol.EncodePublicKey(peer) {
		return nil, &sessionError{protocol.CodeUnauthenticated, "the hello names another key than the one the connection was made with"}
	}
	now := h.now().UTC()
	var out *ledger.Agent
	err := h.led.Write(func(tx *ledger.Txn) error {
		obj, err := tx.First(ledger.TableAgents, ledger.IndexID, hello.Agent)
		if err != nil {
			return err
		}
		var a ledger.Agent
		if obj != nil {
			a = *obj.(*ledger.Agent)
			if subtle.ConstantTimeCompare([]byte(a.Key), []byte(peerKey)) != 1 {
				return &sessionError{protocol.CodeUnauthenticated, "this key is not the one enrolled for " + hello.Agent}
			}
			if a.IsRevoked() {
				return &sessionError{protocol.CodeRevoked, "agent " + a.ID + " was revoked; ask the hub operator for a new enrolment"}
			}
		} else {
			admitted, err := admit(tx, hello.Agent, hello.Site, hello.EnrolSecret, peerKey, hello.AgentRecipient, now)
			if err != nil {
				return &sessionError{protocol.CodeUnauthenticated, err.Error()}
			}
			a = *admitted
			h.log.Info("agent enrolled", "agent", a.ID, "site", a.Site)
		}
		a.LastSeen = now
		a.OldestUnsynced = hello.OldestUnsynced
		out = &a
		return tx.Put(ledger.TableAgents, &a)
	})
	return out, err
}

func parseRecipient(s string) (age.Recipient, error) {
	if r, err := age.ParseHybridRecipient(s); err == nil {
		return r, nil
	}
	return age.ParseX25519Recipient(s)
}

// admit enrols a new agent that presents the one-time secret of its
// enrolment, burning the enrolment, and returns the agent to store. It is
// shared by the first sync and by a first bundle carried by hand.
func admit(tx *ledger.Txn, agentID, site, secret, key, recipient string, now time.Time) (*ledger.Agent, error) {
	e, err := checkEnrolment(tx.Txn, agentID, site, secret, recipient, now)
	if err != nil {
		return nil, err
	}
	used := *e
	used.Used = now
	if err := tx.Put(ledger.TableEnrolments, &used); err != nil {
		return nil, err
	}
	return &ledger.Agent{ID: agentID, Site: e.Site, Key: key, Recipient: recipient, Enrolled: now}, nil
}

// checkEnrolment finds the unused, unexpired enrolment of agentID whose
// secret is secret.
func checkEnrolment(txn *memdb.Txn, agentID, site, secret, recipient string, now time.Time) (*ledger.Enrolment, error) {
	obj, err := txn.First(ledger.TableEnrolments, ledger.IndexID, agentID)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(secret))
	e, _ := obj.(*ledger.Enrolment)
	switch {
	case e == nil || secret == "" ||
		subtle.ConstantTimeCompare([]byte(e.SecretHash), []byte(hex.EncodeToString(sum[:]))) != 1:
		return nil, fmt.Errorf("unknown agent %q: not enrolled at this hub", agentID)
	case !e.Used.IsZero():
		return nil, errors.New("this enrolment was already used or cancelled; ask the hub operator for a new one")
	case now.After(e.Expires):
		return nil, fmt.Errorf("this enrolment expired on %s; ask the hub operator for a new one", e.Expires.Format(time.RFC3339))
	case site != e.Site:
		return nil, fmt.Errorf("the enrolment is for site %s, not %s", e.Site, site)
	}
	if _, err := parseRecipient(recipient); err != nil {
		return nil, errors.New("the agent's age recipient is not valid")
	}
	return e, nil
}
