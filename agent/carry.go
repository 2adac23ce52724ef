package agent

import (
	"crypto/ed25519"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"fieldsync/internal/atomicfile"
	"fieldsync/protocol"
)

// Export seals pending records and copies every bundle the hub has not
// acknowledged into dir (a USB stick), for `hub import` or the hub's drop
// folder. It returns the files written. Bundles stay in the outbox until the
// hub acknowledges them, by a sync or by a bundle the hub sends back.
func (a *Agent) Export(dir string) ([]string, error) {
	if _, err := a.Seal(); err != nil {
		return nil, err
	}
	bundles, err := a.unacked()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	var out []string
	for _, b := range bundles {
		src := a.outboxPath(b.Seq)
		dst := filepath.Join(dir, filepath.Base(src))
		data, err := os.ReadFile(src)
		if err != nil {
			return out, fmt.Errorf("read sealed bundle %d: %w", b.Seq, err)
		}
		if err := atomicfile.Write(dst, data, 0o600); err != nil {
			return out, err
		}
		out = append(out, dst)
	}
	return out, nil
}

// Import applies a bundle the hub sent down, carried by hand: pledges,
// feedback and acknowledgements. It is idempotent.
func (a *Agent) Import(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("open bundle %s: %w", path, err)
	}
	defer f.Close()
	b, err := a.openDown(f)
	if err != nil {
		return 0, fmt.Errorf("bundle %s: %w", filepath.Base(path), err)
	}
	if err := a.applyDown(b); err != nil {
		return 0, fmt.Errorf("apply bundle %s: %w", filepath.Base(path), err)
	}
	return len(b.Down), nil
}

// openDown decrypts and verifies a bundle from the hub for this agent.
func (a *Agent) openDown(r io.Reader) (*protocol.Bundle, error) {
	hubKey, err := a.hubKey()
	if err != nil {
		return nil, err
	}
	return protocol.OpenBundle(io.LimitReader(r, protocol.MaxBundleSize+1), a.ageID, func(m *protocol.Manifest) (ed25519.PublicKey, error) {
		if m.Kind != protocol.KindHub || m.To != a.id.AgentID {
			return nil, fmt.Errorf("bundle is a %q bundle for %q, not a hub bundle for this agent (%s)", m.Kind, m.To, a.id.AgentID)
		}
		return hubKey, nil
	})
}
