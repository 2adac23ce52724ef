package wal

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
)

// Directory and file names under the data directory.
const (
	logDirName  = "log"
	snapDirName = "snap"
	segmentExt  = ".wal"
	snapExt     = ".snap"
	tmpExt      = ".tmp"
	nameDigits  = 20 // enough for any uint64, so names sort like indexes
)

// indexName is the file name for index: zero-padded so that a directory
// listing shows files in index order.
func indexName(index uint64, ext string) string {
	return fmt.Sprintf("%0*d%s", nameDigits, index, ext)
}

// parseIndexName returns the index in a name made by indexName, and false
// for any other name (including files an operator moved aside by renaming).
func parseIndexName(name, ext string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, ext)
	if !ok || len(digits) != nameDigits {
		return 0, false
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	return n, err == nil
}

// indexedFile is a segment or snapshot file found in a directory.
type indexedFile struct {
	index uint64
	path  string
}

// listIndexed returns the files in dir named by indexName with ext, in
// index order. A missing directory holds no files.
func listIndexed(dir, ext string) ([]indexedFile, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var files []indexedFile
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		if index, ok := parseIndexName(e.Name(), ext); ok {
			files = append(files, indexedFile{index, filepath.Join(dir, e.Name())})
		}
	}
	slices.SortFunc(files, func(a, b indexedFile) int {
		switch {
		case a.index < b.index:
			return -1
		case a.index > b.index:
			return 1
		}
		return 0
	})
	return files, nil
}

// syncDir makes the creation, removal or renaming of files in dir durable:
// on POSIX systems a file's directory entry is only safe on disk after the
// directory itself is fsynced.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		// Windows cannot flush a directory handle, and NTFS journals
		// directory changes itself.
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
