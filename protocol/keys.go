package protocol

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// Signing keys are Ed25519. The same key signs an agent's (or the hub's)
// bundles and is its TLS key on the wire, so the fingerprint an operator
// compares on the phone is the one the agent pins.

// MaxKeyFileSize bounds a signing key file read by [ParseSigningKey].
const MaxKeyFileSize = 4 << 10

// FingerprintPrefix starts every key fingerprint.
const FingerprintPrefix = "SHA256:"

// signingKeyPEMType is the PEM block type of a PKCS #8 private key.
const signingKeyPEMType = "PRIVATE KEY"

// Fingerprint returns the short, copyable name of a public key:
// "SHA256:" followed by the unpadded base64url SHA-256 of the 32 key bytes,
// 50 characters in all. It is what enrolment files pin and what operators
// compare.
func Fingerprint(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return FingerprintPrefix + base64.RawURLEncoding.EncodeToString(sum[:])
}

// checkFingerprint reports whether s has the form [Fingerprint] returns.
func checkFingerprint(s string) error {
	rest, ok := strings.CutPrefix(s, FingerprintPrefix)
	if !ok {
		return fmt.Errorf("%q is not a key fingerprint (it starts with %s)", s, FingerprintPrefix)
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(rest)
	if err != nil || len(b) != sha256.Size {
		return fmt.Errorf("%q is not a key fingerprint (%s and 43 base64url characters)", s, FingerprintPrefix)
	}
	return nil
}

// EncodePublicKey returns pub as standard base64 (44 characters), the text
// form used in enrolment files and hello messages.
func EncodePublicKey(pub ed25519.PublicKey) string {
	return base64.StdEncoding.EncodeToString(pub)
}

// ParsePublicKey parses the text form written by [EncodePublicKey].
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%q is not an Ed25519 public key (44 base64 characters)", truncate(s, 60))
	}
	return ed25519.PublicKey(b), nil
}

// MarshalSigningKey encodes key as a PEM "PRIVATE KEY" block (PKCS #8),
// the form OpenSSL and most tools read. The caller writes it to a private
// file.
func MarshalSigningKey(key ed25519.PrivateKey) ([]byte, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("signing key is not an Ed25519 private key")
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode signing key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: signingKeyPEMType, Bytes: der}), nil
}

// ParseSigningKey parses a key written by [MarshalSigningKey]: one PEM
// "PRIVATE KEY" block holding an Ed25519 PKCS #8 key, and nothing else but
// white space.
func ParseSigningKey(data []byte) (ed25519.PrivateKey, error) {
	if len(data) > MaxKeyFileSize {
		return nil, fmt.Errorf("key file is %d bytes, larger than a signing key (%d)", len(data), MaxKeyFileSize)
	}
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, errors.New("not a PEM key file (no -----BEGIN PRIVATE KEY----- block)")
	}
	if block.Type != signingKeyPEMType {
		return nil, fmt.Errorf("PEM block is %q, want %q (PKCS #8)", block.Type, signingKeyPEMType)
	}
	if len(strings.TrimSpace(string(rest))) != 0 {
		return nil, errors.New("key file has data after the key")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("key is not PKCS #8: %w", err)
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, want Ed25519", k)
	}
	return key, nil
}

// truncate shortens s for an error message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
