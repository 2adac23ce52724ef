package ledger

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/wal"
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

// loadGCPercent is the garbage collector's target (GOGC) while a hub's
// ledger loads. Loading only grows the heap: nearly every record and index
// entry it builds stays, and at the default of 100 the collector marks that
// growing heap again each time it doubles. At 400, loading a million
// records took 10-30 % less CPU (less than half of it in the collector)
// for 2-7 % more peak memory. An agent's ledger
// loads with the default: it is small and opens in a fraction of a second,
// and at a site memory counts for more than that.
const loadGCPercent = 400

// gcRelax counts the loads in progress in the process; the first raises the
// collector's target and the last restores it, so that ledgers opened at
// once (in tests, say) do not restore each other's raised value.
var gcRelax struct {
	sync.Mutex
	loads   int
	percent int // the target before the first load
}

// relaxGC raises the garbage collector's target to loadGCPercent, unless
// it is higher already or off, and returns the function that undoes it.
func relaxGC() (restore func()) {
	gcRelax.Lock()
	defer gcRelax.Unlock()
	if gcRelax.loads == 0 {
		gcRelax.percent = debug.SetGCPercent(loadGCPercent)
		if gcRelax.percent < 0 || gcRelax.percent > loadGCPercent {
			debug.SetGCPercent(gcRelax.percent)
		}
	}
	gcRelax.loads++
	return func() {
		gcRelax.Lock()
		defer gcRelax.Unlock()
		if gcRelax.loads--; gcRelax.loads == 0 {
			debug.SetGCPercent(gcRelax.percent)
		}
	}
}

// load fills db from the newest snapshot in dir and the log after it, in
// one memdb transaction, and returns the open log. Reading and decoding run
// in one goroutine and applying in the caller's, so that on a machine with
// two cores the one does not wait for the other.
func load(db *memdb.MemDB, dir string, opts Options, lg *slog.Logger, in *interner) (*loaded, error) {
	if opts.Role == RoleHub {
		defer relaxGC()()
	}
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
			if err := applyChange(txn, c.change); err != nil {
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
