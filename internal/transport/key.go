package transport

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"hash"
	"net"
	"time"

	"github.com/quic-go/quic-go"
)

// keyLabel is the TLS exporter label (RFC 8446, 7.5) of the secret both
// ends of a QUIC connection derive the shield's frame keys from: once a
// peer is keyed, a frame without a valid MAC from its address is
// dropped, so that a sniffer who spoofs addresses can no longer forge
// the shield's bookkeeping (docs/transport.md, "Hostile input").
const keyLabel = "EXPORTER-fieldsync-shield"

// keyLinger is how long a hub keeps a peer's key after its connection
// ended: as long as an agent's shield lingers at most (Shield.linger).
const keyLinger = 3 * time.Second

// frameKey authenticates the frames to and from one peer: a key for each
// direction, so that a frame cannot be reflected back to its sender.
type frameKey struct {
	secret     []byte
	send, recv hash.Hash
	// retired says the connection the key came from ended: frames to the
	// peer still go keyed for keyLinger (QUIC's CONNECTION_CLOSE), but a
	// new sender on the address (a new connection from the same socket)
	// may start over unkeyed.
	retired bool
}

func newFrameKey(secret []byte, mode Mode) *frameKey {
	derive := func(dir string) []byte {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte("fieldsync shield frames, " + dir))
		return m.Sum(nil)
	}
	up, down := derive("agent to hub"), derive("hub to agent")
	if mode == Server {
		up, down = down, up
	}
	return &frameKey{secret: secret, send: hmac.New(sha256.New, up), recv: hmac.New(sha256.New, down)}
}

// seal marks the frame b keyed and appends its MAC.
func (k *frameKey) seal(b []byte) []byte {
	b[0] |= keyed
	k.send.Reset()
	k.send.Write(b)
	var sum [sha256.Size]byte
	return append(b, k.send.Sum(sum[:0])[:macSize]...)
}

// verify reports whether f is keyed and its MAC is right.
func (k *frameKey) verify(f frame) bool {
	if f.mac == nil {
		return false
	}
	k.recv.Reset()
	k.recv.Write(f.body)
	var sum [sha256.Size]byte
	return hmac.Equal(k.recv.Sum(sum[:0])[:macSize], f.mac)
}

// seal authenticates a frame to p, once p is keyed.
func (p *peer) seal(b []byte) []byte {
	if p.key == nil {
		return b
	}
	return p.key.seal(b)
}

// macLen is the bytes seal adds.
func (p *peer) macLen() int {
	if p.key == nil {
		return 0
	}
	return macSize
}

// keyConn keys the peer of conn (at its remote address) with a secret
// exported from conn's handshake, once that completes; with unkey set
// the key goes when conn ends, so that a new connection from the same
// address starts unkeyed.
func (s *Shield) keyConn(conn *quic.Conn, unkey bool) {
	addr := conn.RemoteAddr()
	set := func() {
		tlsState := conn.ConnectionState().TLS
		secret, err := tlsState.ExportKeyingMaterial(keyLabel, nil, 32)
		if err != nil {
			return
		}
		s.setKey(addr, secret)
		if unkey {
			// Not at once: what QUIC sends last (its CONNECTION_CLOSE),
			// and its retransmissions, must still go keyed.
			context.AfterFunc(conn.Context(), func() {
				s.retireKey(addr, secret)
				time.AfterFunc(keyLinger, func() { s.unsetKey(addr, secret) })
			})
		}
	}
	select {
	case <-conn.HandshakeComplete():
		set()
		return
	default:
	}
	// 0-RTT: the handshake is still under way. The goroutine ends with
	// it, or with the connection.
	go func() {
		select {
		case <-conn.HandshakeComplete():
			set()
		case <-conn.Context().Done():
		}
	}()
}

func (s *Shield) setKey(addr net.Addr, secret []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.byQUIC[addr.String()]; p != nil {
		p.key, p.strict = newFrameKey(secret, s.conf.Mode), false
	}
}

func (s *Shield) retireKey(addr net.Addr, secret []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.byQUIC[addr.String()]; p != nil && p.key != nil && hmac.Equal(p.key.secret, secret) {
		p.key.retired = true
	}
}

func (s *Shield) unsetKey(addr net.Addr, secret []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.byQUIC[addr.String()]; p != nil && p.key != nil && hmac.Equal(p.key.secret, secret) {
		p.key, p.strict = nil, false
	}
}
