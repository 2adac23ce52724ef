package ledger

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/wal"
	"fieldsync/protocol"
)

// loaded is what load recovered.
type loaded struct {
	log       *wal.Log
	snapIndex uint64 // the log index the snapshot covers, 0 without one
	replayed  int    // log entries applied after the snapshot
	objects   int    // changes applied: snapshot objects and log changes
}

// loadProgressEvery is how often a long load logs how far it has come, so
// that an operator watching a large ledger open sees it is not stuck.
const loadProgressEvery = 3 * time.Second

// loadBatch is how many changes the reader hands to the applier at once.
const loadBatch = 1024

// indexedChange is a decoded change and the log entry it came from (0 for
// a snapshot).
type indexedChange struct {
	index uint64
	change
}

var errStopped = errors.New("stopped")

// load fills db from the newest snapshot in dir and the log after it, in
// one memdb transaction, and returns the open log. Reading and decoding run
// in one goroutine and applying in the caller's, so that on a machine with
// two cores the one does not wait for the other.
func load(db *memdb.MemDB, records *recordStore, dir string, opts Options, lg *slog.Logger, in *interner) (*loaded, error) {
	batches := make(chan []indexedChange, 4)
	stop := make(chan struct{})
	var res loaded
	var readErr error
	go func() {
		defer close(batches)
		readErr = decodeState(dir, opts, lg, in, &res, batches, stop)
	}()

	txn := db.Txn(true)
	defer txn.Abort()
	var applyErr error
	start := time.Now()
	every := loadProgressEvery
	if opts.progressEvery != 0 {
		every = opts.progressEvery
	}
	nextReport := start.Add(every)
	for batch := range batches {
		if applyErr != nil {
			continue // until the reader notices stop
		}
		if now := time.Now(); now.After(nextReport) {
			nextReport = now.Add(every)
			elapsed := now.Sub(start)
			lg.Info("ledger loading", "dir", dir, "objects", res.objects,
				"per_second", int(float64(res.objects)/elapsed.Seconds()), "elapsed", elapsed.Round(time.Second))
		}
		res.objects += len(batch)
		for _, c := range batch {
			err := func() error {
				if c.table != TableRecords {
					return applyChange(txn, c.change)
				}
				if c.del {
					return errors.New("a record is deleted: records are never deleted")
				}
				r := c.obj.(*protocol.Record)
				_, err := records.add(r, c.raw)
				if errors.Is(err, errDuplicateRecord) && records.holds(r.ID, c.raw) {
					// The same record put twice, which memdb, before the
					// record store, took as a replacement: a log written
					// then still opens.
					return nil
				}
				return err
			}()
			if err != nil {
				if c.index == 0 {
					applyErr = fmt.Errorf("load snapshot: %w", err)
				} else {
					applyErr = fmt.Errorf("replay log entry %d: %w", c.index, err)
				}
				close(stop)
				break
			}
		}
	}
	err := applyErr
	if err == nil {
		err = readErr
	}
	if err != nil {
		if res.log != nil {
			res.log.Close()
		}
		return nil, err
	}
	// The records row is put once: nothing reads the state until it is
	// loaded.
	n := records.count()
	if err := txn.Insert(TableRecords, &recordsRow{Key: recordsRowKey, n: n, store: records}); err != nil {
		res.log.Close()
		return nil, fmt.Errorf("load records: %w", err)
	}
	txn.Commit()
	return &res, nil
}

// decodeState decodes the snapshot and the log after it into batches of
// changes.
func decodeState(dir string, opts Options, lg *slog.Logger, in *interner, res *loaded,
	batches chan<- []indexedChange, stop <-chan struct{}) error {
	batch := make([]indexedChange, 0, loadBatch)
	send := func() error {
		select {
		case batches <- batch:
			batch = make([]indexedChange, 0, loadBatch)
			return nil
		case <-stop:
			return errStopped
		}
	}
	var index uint64
	emit := func(c change) error {
		batch = append(batch, indexedChange{index, c})
		if len(batch) == loadBatch {
			return send()
		}
		return nil
	}

	snapIndex, err := wal.ReadSnapshot(dir, func(data []byte) error {
		return decodeEntry(data, in, emit)
	})
	if errors.Is(err, errStopped) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load snapshot: %w", err)
	}
	res.snapIndex = snapIndex
	log, err := wal.Open(dir, wal.Options{NoSync: opts.NoSync, Logger: lg})
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	res.log = log
	err = log.Replay(snapIndex+1, func(i uint64, data []byte) error {
		index = i
		res.replayed++
		if err := decodeEntry(data, in, emit); err != nil && !errors.Is(err, errStopped) {
			return fmt.Errorf("replay log entry %d: %w", i, err)
		}
		return err
	})
	if err == nil && len(batch) > 0 {
		err = send()
	}
	if errors.Is(err, errStopped) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("replay log: %w", err)
	}
	return nil
}
