package agent

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"filippo.io/age"
	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/atomicfile"
	"fieldsync/internal/ledger"
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
		if sameContent(dst, src) {
			out = append(out, dst) // an earlier export to this stick wrote it, and it is intact
			continue
		}
		if err := atomicfile.Copy(dst, src, 0o600); err != nil {
			if acked, aerr := a.acked(b.Seq); errors.Is(err, fs.ErrNotExist) && aerr == nil && acked {
				continue // a sync running meanwhile delivered it
			}
			return out, fmt.Errorf("export bundle %d: %w", b.Seq, err)
		}
		out = append(out, dst)
	}
	blobs, err := a.exportBlobs(dir)
	return append(out, blobs...), err
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

// exportBlobs writes the attachments the hub has not confirmed holding into
// dir, each as an age file encrypted to the hub. The hub checks each against
// the hash that the agent's signed records name.
func (a *Agent) exportBlobs(dir string) ([]string, error) {
	pending, err := a.pendingBlobs()
	if err != nil {
		return nil, err
	}
	recipient, err := age.ParseHybridRecipient(a.id.HubRecipient)
	if err != nil {
		return nil, fmt.Errorf("hub recipient in identity: %w", err)
	}
	var out []string
	for _, b := range pending {
		dst := filepath.Join(dir, a.id.AgentID+protocol.AttachmentFileInfix+b.Hash+".age")
		if a.sealedCopyIntact(dst, b.Hash) {
			// Encrypting a large scan again would only cost the engineer
			// time; a copy damaged on the stick is sealed anew.
			out = append(out, dst)
			continue
		}
		sum, err := a.sealBlob(dst, b.Hash, recipient)
		if err != nil {
			return out, fmt.Errorf("export attachment %s: %w", b.Hash, err)
		}
		if err := a.led.Write(func(tx *ledger.Txn) error {
			return tx.Put(ledger.TableMeta, &ledger.Meta{Key: metaSealed + b.Hash, Value: sum})
		}); err != nil {
			return out, err
		}
		out = append(out, dst)
	}
	return out, nil
}

// metaSealed + an attachment's hash is the SHA-256 (hex) of the sealed copy
// last written to a stick: age encrypts anew each time, so only this tells
// an intact copy from a damaged one.
const metaSealed = "sealed:"

// sealedCopyIntact reports whether dst holds the sealed copy of the
// attachment sum that the agent last wrote.
func (a *Agent) sealedCopyIntact(dst, sum string) bool {
	var want string
	a.led.Read(func(txn *memdb.Txn) error {
		if obj, err := txn.First(ledger.TableMeta, ledger.IndexID, metaSealed+sum); err == nil && obj != nil {
			want = obj.(*ledger.Meta).Value
		}
		return nil
	})
	if want == "" {
		return false
	}
	got, err := fileSHA256(dst)
	return err == nil && got == want
}

// sealBlob writes the attachment sum to dst, encrypted to the hub, and
// returns the SHA-256 of what it wrote.
func (a *Agent) sealBlob(dst, sum string, to age.Recipient) (string, error) {
	src, err := a.attachments.Open(sum)
	if err != nil {
		return "", err
	}
	defer src.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".export-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	defer tmp.Close()
	h := sha256.New()
	w, err := age.Encrypt(io.MultiWriter(tmp, h), to)
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(w, src); err != nil {
		return "", err
	}
	if err := w.Close(); err != nil {
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), os.Rename(tmp.Name(), dst)
}

// fileSHA256 returns the SHA-256 of the file at path, in hex.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sameContent reports whether the files at x and y hold the same bytes.
func sameContent(x, y string) bool {
	fx, err := os.Open(x)
	if err != nil {
		return false
	}
	defer fx.Close()
	fy, err := os.Open(y)
	if err != nil {
		return false
	}
	defer fy.Close()
	if sx, err := fx.Stat(); err != nil {
		return false
	} else if sy, err := fy.Stat(); err != nil || sx.Size() != sy.Size() {
		return false
	}
	bx, by := make([]byte, 64<<10), make([]byte, 64<<10)
	for {
		nx, ex := io.ReadFull(fx, bx)
		ny, ey := io.ReadFull(fy, by)
		if nx != ny || !bytes.Equal(bx[:nx], by[:ny]) {
			return false
		}
		if ex != nil || ey != nil {
			return (ex == io.EOF || ex == io.ErrUnexpectedEOF) && (ey == io.EOF || ey == io.ErrUnexpectedEOF)
		}
	}
}
