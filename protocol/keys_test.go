package protocol

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
)

func TestFingerprint(t *testing.T) {
	// A fixed key gives a fixed fingerprint: the pin in enrolment files
	// must not change between versions.
	pub := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)).Public().(ed25519.PublicKey)
	got := Fingerprint(pub)
	const want = "SHA256:E545QOZLVJFyIIjZoNdBYo_IJuCUddNBp4Cs3jxLgHA"
	if got != want {
		t.Errorf("Fingerprint = %s, want %s", got, want)
	}
	if len(got) != 50 {
		t.Errorf("fingerprint is %d characters, want 50", len(got))
	}
	if err := checkFingerprint(got); err != nil {
		t.Errorf("checkFingerprint(%s): %v", got, err)
	}
	for _, bad := range []string{"", "SHA256:", "MD5:" + got[7:], got + "A", got[:49], got[:7] + "+" + got[8:]} {
		if checkFingerprint(bad) == nil {
			t.Errorf("checkFingerprint(%q) accepted it", bad)
		}
	}
}

func TestSigningKeyRoundTrip(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(nil)
	pemBytes, err := MarshalSigningKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(pemBytes, []byte("-----BEGIN PRIVATE KEY-----\n")) {
		t.Errorf("key file starts %q", pemBytes[:30])
	}
	got, err := ParseSigningKey(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(key) {
		t.Error("parsed key differs")
	}
	// White space around the block (an editor's final newline, CRLF) is fine.
	crlf := bytes.ReplaceAll(pemBytes, []byte("\n"), []byte("\r\n"))
	if _, err := ParseSigningKey(append([]byte("\n"), crlf...)); err != nil {
		t.Errorf("CRLF key file: %v", err)
	}
	if _, err := MarshalSigningKey(key[:10]); err == nil {
		t.Error("MarshalSigningKey took a short key")
	}
}

func TestParseSigningKeyRefuses(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(nil)
	good, _ := MarshalSigningKey(key)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ec)
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "not a PEM key file"},
		{"age identity", []byte("AGE-SECRET-KEY-PQ-1XXXX\n"), "not a PEM key file"},
		{"ecdsa", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER}), "want Ed25519"},
		{"other block", pem.EncodeToMemory(&pem.Block{Type: "OPENSSH PRIVATE KEY", Bytes: []byte{1}}), "PKCS #8"},
		{"garbage DER", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), "not PKCS #8"},
		{"two keys", append(bytes.Clone(good), good...), "data after the key"},
		{"huge", bytes.Repeat([]byte("A"), MaxKeyFileSize+1), "larger than a signing key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseSigningKey(tt.data)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error with %q", err, tt.want)
			}
		})
	}
}

func TestPublicKeyText(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(nil)
	s := EncodePublicKey(pub)
	got, err := ParsePublicKey(s)
	if err != nil || !got.Equal(pub) {
		t.Fatalf("ParsePublicKey(%s) = %x, %v", s, got, err)
	}
	for _, bad := range []string{"", "AAAA", s[:43], s + "=", strings.ToUpper(s[:20]) + "!" + s[21:]} {
		if _, err := ParsePublicKey(bad); err == nil {
			t.Errorf("ParsePublicKey(%q) accepted it", bad)
		}
	}
}
