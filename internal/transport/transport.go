// Package transport sets up the QUIC connections between agents and the hub:
// mutually authenticated TLS 1.3 with Ed25519 keys pinned out of band (the
// enrolment file on the agent, the enrolled key on the hub), and QUIC
// settings for long, lossy satellite paths. docs/transport.md explains each
// setting and what it was measured to do.
package transport

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/quic-go/quic-go"

	"fieldsync/protocol"
)

// QUIC settings for satellite links; docs/transport.md explains each and
// what it was measured to do.
const (
	// HandshakeTimeout covers several lost handshake flights at 600 ms RTT;
	// quic-go's 5 s default gives up on a GEO link with a few per cent loss.
	HandshakeTimeout = 30 * time.Second
	// IdleTimeout outlives the SPEC's 60 s cut and any LEO handover, so a
	// session pauses through them instead of being torn down and
	// redialled. It matches the hub's wait for the agent's next message.
	IdleTimeout = 2 * time.Minute
	// KeepAlive keeps NAT bindings on satellite terminals open while a
	// session waits on the hub, at one small packet each way.
	KeepAlive = 15 * time.Second
	// Flow-control windows. The receive window must cover what is in
	// flight while a lost packet is sent again below QUIC: about three
	// bandwidth-delay products (GEO: 5 Mbit/s × 600 ms × 3 ≈ 1.1 MB).
	StreamWindow     = 8 << 20
	ConnectionWindow = 12 << 20
	initialWindowRx  = 2 << 20
)

// QUICConfig returns the QUIC configuration both ends use.
func QUICConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:           HandshakeTimeout,
		MaxIdleTimeout:                 IdleTimeout,
		KeepAlivePeriod:                KeepAlive,
		InitialStreamReceiveWindow:     initialWindowRx,
		MaxStreamReceiveWindow:         StreamWindow,
		InitialConnectionReceiveWindow: initialWindowRx * 3 / 2,
		MaxConnectionReceiveWindow:     ConnectionWindow,
		MaxIncomingStreams:             4,
		MaxIncomingUniStreams:          -1,
		// 1280, quic-go's default, but set: left at zero, quic-go v0.65.0
		// sizes a migrated path's congestion controller for 1200-byte
		// packets while its pacer keeps 1280, and its send loop spins
		// (for ever under testing/synctest). See QUICPacketSize for why
		// not larger.
		InitialPacketSize: QUICPacketSize,
	}
}

// resetKeyLabel separates the stateless reset key from every other use of
// the hub's key.
const resetKeyLabel = "fieldsync hub: QUIC stateless reset key v1"

// ResetKey derives the key of a hub's stateless resets from its Ed25519
// key, so that it survives restarts without a file of its own: a
// restarted hub resets the connections of the one before it, whose reset
// tokens its agents hold. The label keeps it apart from every other use
// of the key.
func ResetKey(key ed25519.PrivateKey) *quic.StatelessResetKey {
	k := quic.StatelessResetKey(sha256.Sum256(append([]byte(resetKeyLabel), key.Seed()...)))
	return &k
}

// ticketKeyLabel is the label of the key that seals the hub's TLS session
// tickets, derived from the hub's key.
const ticketKeyLabel = "fieldsync hub: TLS session ticket key v1"

// ticketKey derives the key that seals a hub's session tickets from its
// Ed25519 key, as ResetKey does: a restarted hub still opens the tickets
// it gave out, so its agents' next syncs resume their sessions. (Go's
// default, a random key per process, would make each of them pay a full
// handshake after a restart.) Agents send no 0-RTT data, so the tickets
// protect no data: a resumed handshake still agrees a fresh key (ECDHE).
func ticketKey(key ed25519.PrivateKey) [32]byte {
	return sha256.Sum256(append([]byte(ticketKeyLabel), key.Seed()...))
}

// certificate wraps an Ed25519 key in a self-signed certificate: TLS needs a
// certificate, but trust comes from the pinned key, not from the certificate.
func certificate(key ed25519.PrivateKey) (tls.Certificate, error) {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "fieldsync"},
		NotBefore:    time.Unix(0, 0),
		NotAfter:     time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("make TLS certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// PeerKey returns the Ed25519 key the peer presented in the handshake.
func PeerKey(cs tls.ConnectionState) (ed25519.PublicKey, error) {
	if len(cs.PeerCertificates) == 0 {
		return nil, errors.New("peer presented no certificate")
	}
	pub, ok := cs.PeerCertificates[0].PublicKey.(ed25519.PublicKey)
	if !ok {
		return nil, errors.New("peer key is not Ed25519")
	}
	return pub, nil
}

func rawKey(rawCerts [][]byte) (ed25519.PublicKey, error) {
	if len(rawCerts) == 0 {
		return nil, errors.New("peer presented no certificate")
	}
	cert, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return nil, fmt.Errorf("peer certificate: %w", err)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok {
		return nil, errors.New("peer key is not Ed25519")
	}
	return pub, nil
}

// ServerTLS is the hub's TLS configuration. Every client must present an
// Ed25519 key; the hub matches it against enrolled agents at the first
// message, where a new agent can also present its enrolment secret.
func ServerTLS(key ed25519.PrivateKey) (*tls.Config, error) {
	cert, err := certificate(key)
	if err != nil {
		return nil, err
	}
	conf := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAnyClientCert,
		NextProtos:   []string{protocol.ALPN},
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			_, err := rawKey(rawCerts)
			return err
		},
	}
	conf.SetSessionTicketKeys([][32]byte{ticketKey(key)})
	return conf, nil
}

// ClientTLS is an agent's TLS configuration: it presents the agent's key and
// accepts only a hub whose key has the pinned fingerprint.
func ClientTLS(key ed25519.PrivateKey, hubPin string, sessions tls.ClientSessionCache) (*tls.Config, error) {
	cert, err := certificate(key)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{protocol.ALPN},
		ServerName:   "fieldsync-hub",
		// The hub's certificate is self-signed; it is trusted by its pinned
		// key below, not by a certificate authority.
		InsecureSkipVerify: true,
		ClientSessionCache: sessions,
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			pub, err := rawKey(rawCerts)
			if err != nil {
				return err
			}
			if got := protocol.Fingerprint(pub); got != hubPin {
				return fmt.Errorf("hub key %s does not match the pinned %s: this is not your hub", got, hubPin)
			}
			return nil
		},
	}, nil
}
