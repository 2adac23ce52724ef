package datadir

import (
	"errors"
	"io/fs"

	"golang.org/x/sys/windows"
)

// restrictSocket does nothing: Windows has no Unix modes, and the socket
// file inherits the data directory's ACL.
func restrictSocket(string) error { return nil }

// noListener reports whether a dial error means nobody serves the socket:
// it is missing, or left behind by a daemon that died.
func noListener(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, windows.WSAECONNREFUSED)
}
