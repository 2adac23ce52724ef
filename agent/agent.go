// Package agent is the site agent: a durable offline ledger of what a site
// received (deliveries, trainings, confirmations of pledges, and their
// corrections), the inbox folder that turns dropped files into records, and
// the sync that carries sealed bundles to the hub.
//
// Everything lives in one data directory:
//
//	identity.json    the site, the agent id and the hub's pins (from enrolment)
//	agent.key        the agent's Ed25519 signing and TLS key (0600)
//	agent.agekey     the agent's age identity, for what the hub sends down (0600)
//	log/, snap/      the ledger's write-ahead log and snapshots
//	attachments/     attached files, by SHA-256
//	outbox/          sealed bundles waiting for the hub's acknowledgement
//	inbox/           files dropped here become records
package agent

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"filippo.io/age"

	"fieldsync/internal/atomicfile"
	"fieldsync/internal/blobstore"
	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

// Files in the data directory.
const (
	identityFile = "identity.json"
	keyFile      = "agent.key"
	ageKeyFile   = "agent.agekey"
	outboxDir    = "outbox"
	inboxDir     = "inbox"
	attachDir    = "attachments"
)

// ErrNotInitialised is returned by Open when the directory holds no agent.
var ErrNotInitialised = errors.New("no agent here: run `agent init --enroll FILE` with the enrolment file from the hub operator")

// Identity is who this agent is and which hub it trusts, from the enrolment
// file. It holds no secret keys.
type Identity struct {
	AgentID      string `json:"agent_id"`
	Site         string `json:"site"`
	SiteName     string `json:"site_name"`
	Sector       string `json:"sector,omitempty"`
	Region       string `json:"region,omitempty"`
	HubAddr      string `json:"hub_addr"`
	HubKeyPin    string `json:"hub_key_pin"`
	HubKey       string `json:"hub_key"` // Ed25519, base64; verifies what the hub sends down
	HubRecipient string `json:"hub_recipient"`
	// EnrolSecret is the one-time secret presented at the first sync; the
	// hub burns it, and the agent forgets it after its first success.
	EnrolSecret string    `json:"enrol_secret,omitempty"`
	Enrolled    time.Time `json:"enrolled"`
}

// Agent is an open site agent. It is safe for concurrent use.
type Agent struct {
	dir         string
	id          Identity
	key         ed25519.PrivateKey
	ageID       *age.HybridIdentity
	led         *ledger.Ledger
	attachments *blobstore.Store
	log         *slog.Logger
	now         func() time.Time

	// mu guards id.EnrolSecret, the one field of id that changes once the
	// agent is open; the daemon serves other commands on the same Agent.
	mu sync.Mutex
	// sealMu makes sealing one at a time, so that each bundle number is
	// given to one set of records and one outbox file.
	sealMu sync.Mutex
	// syncing holds a token while a sync runs: two sessions at once would
	// upload the same bundle into the same partial file at the hub.
	syncing chan struct{}
	// transfer is the sync in progress, for `agent status`; nil between
	// syncs.
	transfer atomic.Pointer[transfer]
	// tickets keeps the hub's session ticket for the next sync.
	tickets *ticketCache
}

// Options configure Open.
type Options struct {
	Logger *slog.Logger
	// NoSync skips fsync in the ledger: for benchmarks only.
	NoSync bool
}

// Open opens the agent in dir. The caller must hold the directory's lock.
func Open(dir string, opts Options) (*Agent, error) {
	lg := opts.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	id, err := readIdentity(dir)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, keyFile))
	if err != nil {
		return nil, fmt.Errorf("read agent key: %w", err)
	}
	key, err := protocol.ParseSigningKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("read agent key %s: %w", filepath.Join(dir, keyFile), err)
	}
	ageID, err := readAgeIdentity(filepath.Join(dir, ageKeyFile))
	if err != nil {
		return nil, err
	}
	led, err := ledger.Open(dir, ledger.Options{Role: ledger.RoleAgent, Logger: lg, NoSync: opts.NoSync})
	if err != nil {
		return nil, fmt.Errorf("open agent ledger in %s: %w", dir, err)
	}
	for _, d := range []string{outboxDir, inboxDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			led.Close()
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	return &Agent{
		dir: dir, id: id, key: key, ageID: ageID, led: led,
		attachments: blobstore.New(filepath.Join(dir, attachDir)),
		log:         lg.With("agent", id.AgentID, "site", id.Site),
		now:         time.Now,
		syncing:     make(chan struct{}, 1),
		tickets: &ticketCache{path: filepath.Join(dir, ticketFile), pin: id.HubKeyPin,
			agent: protocol.Fingerprint(key.Public().(ed25519.PublicKey))},
	}, nil
}

// Close closes the ledger.
func (a *Agent) Close() error { return a.led.Close() }

// Identity returns who this agent is.
func (a *Agent) Identity() Identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id
}

// enrolSecret returns the one-time enrolment secret, or "" once the hub has
// accepted the agent.
func (a *Agent) enrolSecret() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id.EnrolSecret
}

// Dir returns the data directory.
func (a *Agent) Dir() string { return a.dir }

// InboxDir returns the inbox folder.
func (a *Agent) InboxDir() string { return filepath.Join(a.dir, inboxDir) }

// Init creates a new agent in dir from an enrolment file: generates its keys
// and pins the hub. It works offline; the hub learns the agent's keys at the
// first sync, which presents the enrolment's one-time secret.
func Init(dir string, enrol *protocol.Enrolment) (Identity, error) {
	if _, err := os.Stat(filepath.Join(dir, identityFile)); err == nil {
		return Identity{}, fmt.Errorf("%s already holds an agent; use another --dir, or remove it to start over", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Identity{}, fmt.Errorf("create %s: %w", dir, err)
	}
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		return Identity{}, err
	}
	ageID, err := age.GenerateHybridIdentity()
	if err != nil {
		return Identity{}, err
	}
	keyPEM, err := protocol.MarshalSigningKey(key)
	if err != nil {
		return Identity{}, err
	}
	if err := atomicfile.Write(filepath.Join(dir, keyFile), keyPEM, 0o600); err != nil {
		return Identity{}, err
	}
	if err := atomicfile.Write(filepath.Join(dir, ageKeyFile), []byte(ageID.String()+"\n"), 0o600); err != nil {
		return Identity{}, err
	}
	id := Identity{
		AgentID: enrol.AgentID, Site: enrol.Site, SiteName: enrol.SiteName,
		Sector: enrol.Sector, Region: enrol.Region,
		HubAddr: enrol.HubAddr, HubKeyPin: enrol.HubKeyPin, HubKey: enrol.HubKey, HubRecipient: enrol.HubRecipient,
		EnrolSecret: enrol.Secret, Enrolled: time.Now().UTC().Truncate(time.Second),
	}
	if err := writeIdentity(dir, id); err != nil {
		return Identity{}, err
	}
	return id, nil
}

func readIdentity(dir string) (Identity, error) {
	var id Identity
	b, err := os.ReadFile(filepath.Join(dir, identityFile))
	if errors.Is(err, os.ErrNotExist) {
		return id, fmt.Errorf("%s: %w", dir, ErrNotInitialised)
	}
	if err != nil {
		return id, fmt.Errorf("read agent identity: %w", err)
	}
	if err := json.Unmarshal(b, &id); err != nil {
		return id, fmt.Errorf("read agent identity %s: %w", filepath.Join(dir, identityFile), err)
	}
	return id, nil
}

// writeIdentity replaces identity.json atomically. It holds the one-time
// secret until the first sync, so it is private.
func writeIdentity(dir string, id Identity) error {
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, identityFile), append(b, '\n'), 0o600)
}

func readAgeIdentity(path string) (*age.HybridIdentity, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read agent age key: %w", err)
	}
	id, err := age.ParseHybridIdentity(string(trimNewline(b)))
	if err != nil {
		return nil, fmt.Errorf("read agent age key %s: %w", path, err)
	}
	return id, nil
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
