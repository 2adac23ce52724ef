// Package wal is a durable write-ahead log with snapshots: the source of
// truth behind the agent's and the hub's ledger.
//
// The ledger keeps its state in go-memdb, which forgets everything when the
// process ends. Every change is therefore first appended here and fsynced,
// and only then committed to memdb; after a crash the state is rebuilt from
// the newest snapshot plus the log entries after it.
//
// # Using it
//
//	index, err := wal.ReadSnapshot(dir, apply) // 0 and no calls if there is none
//	log, err := wal.Open(dir, wal.Options{})
//	err = log.Replay(index+1, func(i uint64, data []byte) error { return apply(data) })
//	i, err := log.Append(change)     // returns once change is on disk
//	err = wal.WriteSnapshot(dir, i, dumpState)
//	err = log.Compact(i)             // drops the segments the snapshot covers
//
// Append is safe for concurrent use and commits in groups: while one caller
// writes and fsyncs, the others queue, and the next of them writes the whole
// queue with a single fsync. A lone writer never waits for company.
//
// # Files
//
// Everything lives under one directory, DIR:
//
//	DIR/log/00000000000000000001.wal   segments, named by their first index
//	DIR/snap/00000000000000000042.snap snapshots, named by the index they cover
//
// A segment file starts with a header and holds consecutive entries; when it
// grows past Options.SegmentSize the next entry starts a new segment. A
// snapshot holds the framed entries emitted by the WriteSnapshot callback; it
// is written to a temporary file, fsynced and renamed into place, so it is
// either complete or absent.
//
// # Format
//
// All integers are little-endian. Both kinds of file start with a 24-byte
// header:
//
//	magic    [8]byte  "fswalseg" (segment) or "fswalsnp" (snapshot)
//	version  uint32   1
//	crc      uint32   CRC-32C (Castagnoli) of the other 20 header bytes
//	index    uint64   segment: index of its first entry (equal to the name);
//	                  snapshot: the last log index the snapshot covers
//
// Then follow frames, each a 16-byte frame header and a payload:
//
//	length   uint32   payload length, at most MaxEntrySize
//	crc      uint32   CRC-32C of length, index and payload
//	index    uint64   the entry's log index (in a snapshot: 1, 2, 3, ...)
//	payload  [length]byte
//
// Indexes in a log start at 1 and are consecutive across segments, so a
// missing, duplicated or misplaced entry is detected, not just a damaged one.
// A snapshot ends with a footer frame of index 0 whose 8-byte payload is the
// number of entries before it; a snapshot without its footer is damaged.
//
// # Recovery
//
// Open reads every segment. A crash can leave the last segment ending in a
// partly written entry, a fully written entry whose checksum does not match,
// or zeros where the file system extended the file but not its data. None
// of that was ever acknowledged (Append returns only after the fsync that
// covers it), so Open truncates it away and reports it in Recovered.
//
// Damage that a crash cannot explain is never repaired silently: a bad entry
// followed by an intact one, a bad entry in any segment but the last, or a
// gap in the indexes makes Open fail with a *CorruptError that names the file
// and byte offset. Acknowledged entries may sit behind the damage, so
// deciding what to give up is left to a person.
package wal
