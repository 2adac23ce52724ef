//go:build unix

package datadir

import (
	"errors"
	"io/fs"
	"os"
	"syscall"
)

// restrictSocket lets only the owner connect.
func restrictSocket(path string) error { return os.Chmod(path, 0o600) }

// noListener reports whether a dial error means nobody serves the socket:
// it is missing, or left behind by a daemon that died.
func noListener(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED)
}
