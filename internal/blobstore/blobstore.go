// Package blobstore keeps attachment files content-addressed by SHA-256 in a
// data directory: scans of waybills, photos of damaged goods. Files are
// streamed in and out, never read whole into memory.
package blobstore

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"

	"fieldsync/internal/atomicfile"
	"fieldsync/protocol"
)

// Store is a content-addressed file store rooted at one directory.
type Store struct {
	dir string
}

// New returns the store rooted at dir.
func New(dir string) *Store { return &Store{dir: dir} }

var hashRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Path returns where the blob with the given hex SHA-256 lives.
func (s *Store) Path(sum string) (string, error) {
	if !hashRE.MatchString(sum) {
		return "", fmt.Errorf("%q is not a SHA-256 content hash", sum)
	}
	return filepath.Join(s.dir, sum[:2], sum), nil
}

// Has reports whether the blob is stored.
func (s *Store) Has(sum string) bool {
	p, err := s.Path(sum)
	if err != nil {
		return false
	}
	_, err = os.Stat(p)
	return err == nil
}

// Add copies the file at path into the store and describes it as an
// attachment. The copy is synced before Add returns, so a record that names
// it never points at a blob lost to a power cut.
func (s *Store) Add(path string) (protocol.Attachment, error) {
	f, err := os.Open(path)
	if err != nil {
		return protocol.Attachment{}, fmt.Errorf("attach %s: %w", path, err)
	}
	defer f.Close()
	att, err := s.Put(filepath.Base(path), f)
	if err != nil {
		return protocol.Attachment{}, fmt.Errorf("attach %s: %w", path, err)
	}
	return att, nil
}

// Put stores the content of r under its hash. At most
// protocol.MaxAttachmentSize bytes are accepted.
func (s *Store) Put(name string, r io.Reader) (protocol.Attachment, error) {
	return s.put(name, r, "")
}

// PutVerified stores the content of r only if its SHA-256 is sum: what
// arrives from outside is kept under the hash it claims only once that claim
// is checked.
func (s *Store) PutVerified(r io.Reader, sum string) (protocol.Attachment, error) {
	if _, err := s.Path(sum); err != nil {
		return protocol.Attachment{}, err
	}
	return s.put(sum, r, sum)
}

func (s *Store) put(name string, r io.Reader, want string) (protocol.Attachment, error) {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return protocol.Attachment{}, err
	}
	tmp, err := os.CreateTemp(s.dir, ".incoming-*")
	if err != nil {
		return protocol.Attachment{}, err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	defer tmp.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, protocol.MaxAttachmentSize+1))
	if err != nil {
		return protocol.Attachment{}, err
	}
	if n > protocol.MaxAttachmentSize {
		return protocol.Attachment{}, fmt.Errorf("file is larger than the %d-byte limit for attachments", int64(protocol.MaxAttachmentSize))
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if want != "" && sum != want {
		return protocol.Attachment{}, fmt.Errorf("content has SHA-256 %s, not the %s it claims", sum, want)
	}
	if err := tmp.Sync(); err != nil {
		return protocol.Attachment{}, err
	}
	if err := tmp.Close(); err != nil {
		return protocol.Attachment{}, err
	}
	dst, _ := s.Path(sum)
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return protocol.Attachment{}, err
	}
	if _, err := os.Stat(dst); errors.Is(err, os.ErrNotExist) {
		if err := os.Rename(tmp.Name(), dst); err != nil {
			return protocol.Attachment{}, err
		}
		if err := atomicfile.SyncDir(filepath.Dir(dst)); err != nil {
			return protocol.Attachment{}, err
		}
	}
	return protocol.Attachment{Name: name, SHA256: sum, Size: n}, nil
}

// Open opens a stored blob for reading.
func (s *Store) Open(sum string) (*os.File, error) {
	p, err := s.Path(sum)
	if err != nil {
		return nil, err
	}
	return os.Open(p)
}
