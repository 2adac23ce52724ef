package linksim_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"testing"
	"testing/synctest"
	"time"

	"github.com/quic-go/quic-go"

	"fieldsync/internal/linksim"
)

// tlsConfigs returns a server and a client configuration that trust each
// other. Inside a synctest bubble the clock reads 2000-01-01, so the
// certificate must be made there.
func tlsConfigs(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		DNSNames:     []string{"hub"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv}},
		NextProtos:   []string{"linksim-test"},
	}
	client = &tls.Config{RootCAs: pool, ServerName: "hub", NextProtos: []string{"linksim-test"}}
	return server, client
}

// TestQUICOverGeo sends 1 MiB on one QUIC stream from the agent to the hub
// over a geo path, inside a synctest bubble.
func TestQUICOverGeo(t *testing.T) {
	geo, err := linksim.ProfileByName("geo")
	if err != nil {
		t.Fatal(err)
	}
	quicTransfer(t, geo, 1, 1<<20)
}

// quicTransfer sends size bytes on one QUIC stream from the agent to the
// hub over a path of p, and checks that they all arrive.
func quicTransfer(t *testing.T, p linksim.Profile, seed int64, size int) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute) // virtual
		defer cancel()
		serverTLS, clientTLS := tlsConfigs(t)
		conf := &quic.Config{
			// quic-go's 5 s default gives up when a few handshake
			// flights are lost at 600 ms RTT.
			HandshakeIdleTimeout: 30 * time.Second,
		}

		path := linksim.NewPath(p, seed)
		defer path.Close()
		agentConn, hubConn := path.Endpoints()
		hubTr := &quic.Transport{Conn: hubConn}
		defer hubTr.Close()
		agentTr := &quic.Transport{Conn: agentConn}
		defer agentTr.Close()

		ln, err := hubTr.Listen(serverTLS, conf)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()

		payload := make([]byte, size)
		rng := mrand.NewChaCha8([32]byte{1})
		rng.Read(payload)

		type result struct {
			data []byte
			err  error
		}
		received := make(chan result, 1)
		go func() {
			conn, err := ln.Accept(ctx)
			if err != nil {
				received <- result{err: err}
				return
			}
			str, err := conn.AcceptStream(ctx)
			if err != nil {
				received <- result{err: err}
				return
			}
			data, err := io.ReadAll(str)
			conn.CloseWithError(0, "done")
			received <- result{data, err}
		}()

		start := time.Now()
		conn, err := agentTr.Dial(ctx, hubConn.LocalAddr(), clientTLS, conf)
		if err != nil {
			t.Fatal(err)
		}
		handshake := time.Since(start)
		str, err := conn.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := str.Write(payload); err != nil {
			t.Fatal(err)
		}
		if err := str.Close(); err != nil {
			t.Fatal(err)
		}
		res := <-received
		elapsed := time.Since(start)
		if res.err != nil {
			t.Fatalf("hub read: %v", res.err)
		}
		if !bytes.Equal(res.data, payload) {
			t.Fatalf("hub read %d bytes that differ from the %d sent", len(res.data), len(payload))
		}
		<-conn.Context().Done() // the hub's CONNECTION_CLOSE arrived

		s := path.Stats()
		up := s.Uplink
		t.Logf("%s, %d bytes: handshake %v, transfer done after %v virtual time", p.Name, size, handshake, elapsed)
		t.Logf("uplink: %d datagrams, %d bytes sent (%.3f link bytes per payload byte), %d lost, %d queue drops",
			up.Sent.Packets, up.Sent.Bytes, float64(up.Sent.WireBytes())/float64(len(payload)), up.Lost.Packets, up.QueueDrops.Packets)
		t.Logf("downlink: %d datagrams, %d bytes sent, %d lost", s.Downlink.Sent.Packets, s.Downlink.Sent.Bytes, s.Downlink.Lost.Packets)
	})
}
