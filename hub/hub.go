// Package hub is the fieldsync hub: it enrols and revokes site agents, issues
// pledges, takes in bundles (over QUIC, from `hub import`, or from the drop
// folder), applies each record exactly once, and aggregates what was pledged,
// received and confirmed by site, donor and programme.
//
// Everything lives in one data directory:
//
//	hub.json           public facts: fingerprint, age recipient
//	hub.key            the hub's Ed25519 key: TLS on the wire, signature on bundles sent down (0600)
//	age-identity.txt   the hub's age hybrid post-quantum identity; bundles are encrypted to it (0600)
//	operator.token     the operator token for the dashboard and the API (0600)
//	log/, snap/        the ledger's write-ahead log and snapshots
//	partial/           uploads in progress, kept across restarts so transfers resume
//	bundles/           every bundle applied, as received
//	quarantine/        bundles not applied, with the reason in the ledger
//	attachments/       attached files sites sent, by SHA-256
//	drop/              bundles carried by hand are dropped here
package hub

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"filippo.io/age"

	"fieldsync/internal/atomicfile"
	"fieldsync/internal/blobstore"
	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

// Files and folders in the hub's data directory.
const (
	infoFile      = "hub.json"
	keyFile       = "hub.key"
	ageIDFile     = "age-identity.txt"
	tokenFile     = "operator.token"
	partialDir    = "partial"
	bundlesDir    = "bundles"
	quarantineDir = "quarantine"
	dropDir       = "drop"
	attachDir     = "attachments"
)

// ErrNotInitialised is returned by Open when the directory holds no hub.
var ErrNotInitialised = errors.New("no hub here: run `hub init` first")

// Info is what the hub publishes about itself.
type Info struct {
	Fingerprint string    `json:"fingerprint"` // of the hub's Ed25519 key, pinned by agents
	Recipient   string    `json:"recipient"`   // age1pq1… recipient bundles are encrypted to
	Key         string    `json:"key"`         // the Ed25519 public key, base64
	Created     time.Time `json:"created"`
}

// Hub is an open hub. It is safe for concurrent use.
type Hub struct {
	dir   string
	info  Info
	key   ed25519.PrivateKey
	ageID *age.HybridIdentity
	token string
	led   *ledger.Ledger
	blobs *blobstore.Store // attachments, by SHA-256
	log   *slog.Logger
	now   func() time.Time

	// intakeMu serialises applying bundles: the chain check and the apply
	// must see the same agent state.
	intakeMu sync.Mutex
	metrics  *metrics
	status   statusCache   // the aggregate behind Status
	sessions agentSessions // one sync session per agent
}

// Options configure Open.
type Options struct {
	Logger *slog.Logger
	NoSync bool // skip fsync in the ledger: benchmarks only
}

// Init creates a hub in dir: its keys and the operator token.
func Init(dir string) (Info, error) {
	if _, err := os.Stat(filepath.Join(dir, infoFile)); err == nil {
		return Info{}, fmt.Errorf("%s already holds a hub; use another --dir", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Info{}, fmt.Errorf("create %s: %w", dir, err)
	}
	pub, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		return Info{}, err
	}
	ageID, err := age.GenerateHybridIdentity()
	if err != nil {
		return Info{}, err
	}
	tok := make([]byte, 32)
	rand.Read(tok)
	now := time.Now().UTC().Truncate(time.Second)
	info := Info{
		Fingerprint: protocol.Fingerprint(pub),
		Recipient:   ageID.Recipient().String(),
		Key:         base64.StdEncoding.EncodeToString(pub),
		Created:     now,
	}
	keyPEM, err := protocol.MarshalSigningKey(key)
	if err != nil {
		return Info{}, err
	}
	idText := fmt.Sprintf("# created: %s\n# public key: %s\n%s\n", now.Format(time.RFC3339), info.Recipient, ageID)
	infoJSON, _ := json.MarshalIndent(info, "", "  ")
	for _, f := range []struct {
		name string
		data []byte
	}{
		{keyFile, keyPEM},
		{ageIDFile, []byte(idText)},
		{tokenFile, []byte(base64.RawURLEncoding.EncodeToString(tok) + "\n")},
		{infoFile, append(infoJSON, '\n')},
	} {
		if err := atomicfile.Write(filepath.Join(dir, f.name), f.data, 0o600); err != nil {
			return Info{}, err
		}
	}
	return info, nil
}

// Open opens the hub in dir. The caller must hold the directory's lock.
func Open(dir string, opts Options) (*Hub, error) {
	lg := opts.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	b, err := os.ReadFile(filepath.Join(dir, infoFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", dir, ErrNotInitialised)
	}
	if err != nil {
		return nil, fmt.Errorf("read hub info: %w", err)
	}
	var info Info
	if err := json.Unmarshal(b, &info); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, infoFile), err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, keyFile))
	if err != nil {
		return nil, fmt.Errorf("read hub key: %w", err)
	}
	key, err := protocol.ParseSigningKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("read hub key %s: %w", filepath.Join(dir, keyFile), err)
	}
	idFile, err := os.Open(filepath.Join(dir, ageIDFile))
	if err != nil {
		return nil, fmt.Errorf("read hub age identity: %w", err)
	}
	ids, err := age.ParseIdentities(idFile)
	idFile.Close()
	if err != nil {
		return nil, fmt.Errorf("read hub age identity: %w", err)
	}
	ageID, ok := ids[0].(*age.HybridIdentity)
	if !ok || len(ids) != 1 {
		return nil, fmt.Errorf("%s must hold one hybrid post-quantum age identity", filepath.Join(dir, ageIDFile))
	}
	tok, err := os.ReadFile(filepath.Join(dir, tokenFile))
	if err != nil {
		return nil, fmt.Errorf("read operator token: %w", err)
	}
	led, err := ledger.Open(dir, ledger.Options{Logger: lg, NoSync: opts.NoSync})
	if err != nil {
		return nil, fmt.Errorf("open hub ledger in %s: %w", dir, err)
	}
	for _, d := range []string{partialDir, bundlesDir, quarantineDir, dropDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			led.Close()
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	removeSharedBlobParts(filepath.Join(dir, partialDir))
	return &Hub{
		dir: dir, info: info, key: key, ageID: ageID, token: string(trimSpace(tok)),
		led: led, blobs: blobstore.New(filepath.Join(dir, attachDir)), log: lg, now: time.Now, metrics: newMetrics(),
	}, nil
}

// removeSharedBlobParts removes partial attachment uploads named by content
// alone ("blob-" and 64 hex digits), as hubs before per-agent partial files
// kept them: nothing resumes them now (see blobPartKey).
func removeSharedBlobParts(dir string) {
	parts, _ := filepath.Glob(filepath.Join(dir, "blob-*.part"))
	for _, p := range parts {
		name := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), "blob-"), ".part")
		if _, err := hex.DecodeString(name); err == nil && len(name) == 64 {
			os.Remove(p)
		}
	}
}

// Close closes the ledger.
func (h *Hub) Close() error { return h.led.Close() }

// Info returns what the hub publishes about itself.
func (h *Hub) Info() Info { return h.info }

// Dir returns the data directory.
func (h *Hub) Dir() string { return h.dir }

// DropDir returns the default drop folder.
func (h *Hub) DropDir() string { return filepath.Join(h.dir, dropDir) }

// Token returns the operator token.
func (h *Hub) Token() string { return h.token }

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}
