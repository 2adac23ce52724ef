// Package atomicfile writes files so that a crash or power cut at any instant
// leaves either the old content or the new, never a torn mix.
package atomicfile

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
)

// Write replaces path with data: a temporary file beside it is written,
// synced and renamed over path, and the directory is synced.
func Write(path string, data []byte, perm os.FileMode) error {
	return WriteFrom(path, bytes.NewReader(data), perm)
}

// Copy replaces dst with a copy of the file src, streamed, as Write does.
func Copy(dst, src string, perm os.FileMode) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer f.Close()
	return WriteFrom(dst, f, perm)
}

// WriteFrom replaces path with what r yields, streamed, as Write does.
func WriteFrom(path string, r io.Reader, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	err = tmp.Chmod(perm)
	if err != nil && runtime.GOOS == "windows" {
		err = nil // Windows has no Unix modes; the ACL of the directory applies
	}
	if err == nil {
		_, err = io.Copy(tmp, r)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err == nil {
		err = SyncDir(filepath.Dir(path))
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// SyncDir makes a rename or a new file in dir durable.
func SyncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil // NTFS journals renames; directory handles cannot be synced
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
