// Package ledger is the durable, indexed state of an agent or a hub.
//
// State lives in go-memdb tables (see Schema); durability is a write-ahead
// log (package wal). A write runs a function against a memdb write
// transaction; every object it puts is also encoded into one log entry. The
// entry is appended and fsynced before Write returns, so nothing a caller
// acknowledges is lost. Concurrent writers share fsyncs: entries queue in
// commit order and one flusher writes each queued batch with a single sync.
//
// Recovery loads the newest snapshot and replays the log after it through the
// same apply function that live writes use, so the state after a restart is
// the state before it.
package ledger

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/wal"
)

// DefaultSnapshotEvery is how many log entries may accumulate before the
// ledger writes a snapshot and drops the log it covers.
const DefaultSnapshotEvery = 50_000

// ErrFailed is returned by every write after the log failed to persist an
// entry: memory may then hold state the disk does not, so the ledger refuses
// to go on until it is reopened.
var ErrFailed = errors.New("ledger: an earlier write failed to reach the disk; restart to recover from the log")

// Options tune a ledger.
type Options struct {
	// SnapshotEvery is the number of log entries between snapshots
	// (DefaultSnapshotEvery if zero; negative disables snapshots).
	SnapshotEvery int
	// NoSync skips fsync; for tests and benchmarks that measure other things.
	NoSync bool
	Logger *slog.Logger
}

// Ledger is an open ledger. It is safe for concurrent use.
type Ledger struct {
	db   *memdb.MemDB
	log  *wal.Log
	dir  string
	opts Options
	lg   *slog.Logger

	// mu orders writers: an entry's place in the log is its place in memdb.
	mu      sync.Mutex
	queue   []*pending
	failed  error
	wake    chan struct{} // signals the flusher that the queue is not empty
	done    chan struct{} // closed when the flusher has exited
	closing chan struct{}

	snapMu        sync.Mutex     // one snapshot at a time
	snapshots     sync.WaitGroup // background snapshots, waited for by Close
	sinceSnapshot int            // entries since the last snapshot (under mu)
	nextIndex     uint64         // log index the next queued entry will get (under mu)

	batchHook func(entries int)
}

type pending struct {
	data []byte
	err  chan error
}

// Open opens the ledger in dir, creating it if needed, and recovers its state.
func Open(dir string, opts Options) (*Ledger, error) {
	if opts.SnapshotEvery == 0 {
		opts.SnapshotEvery = DefaultSnapshotEvery
	}
	lg := opts.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create ledger directory: %w", err)
	}
	db, err := memdb.NewMemDB(Schema())
	if err != nil {
		return nil, fmt.Errorf("ledger schema: %w", err)
	}
	l := &Ledger{db: db, dir: dir, opts: opts, lg: lg,
		wake: make(chan struct{}, 1), done: make(chan struct{}), closing: make(chan struct{})}

	start := time.Now()
	txn := db.Txn(true)
	defer txn.Abort()
	snapIndex, err := wal.ReadSnapshot(filepath.Join(dir), func(data []byte) error {
		return applyPut(txn, data)
	})
	if err != nil {
		return nil, fmt.Errorf("load snapshot: %w", err)
	}
	log, err := wal.Open(dir, wal.Options{NoSync: opts.NoSync, Logger: lg})
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	replayed := 0
	err = log.Replay(snapIndex+1, func(index uint64, data []byte) error {
		replayed++
		return applyEntry(txn, data)
	})
	if err != nil {
		log.Close()
		return nil, fmt.Errorf("replay log: %w", err)
	}
	txn.Commit()
	l.log = log
	l.sinceSnapshot = replayed
	l.nextIndex = log.LastIndex() + 1
	lg.Info("ledger opened", "dir", dir, "snapshot_index", snapIndex, "replayed", replayed,
		"torn_bytes", log.Recovered().TornBytes, "took", time.Since(start).Round(time.Millisecond))
	go l.flusher()
	return l, nil
}

// Txn is a write transaction handed to a Write function. Reads see the
// state including everything committed before; Put and Delete change it.
type Txn struct {
	*memdb.Txn
	puts []json.RawMessage
}

// put is one change in a log entry.
type put struct {
	Table  string          `json:"t"`
	Delete bool            `json:"d,omitempty"`
	Obj    json.RawMessage `json:"o"`
}

// Put inserts or replaces obj in table. Objects read from memdb are shared
// and immutable: copy one before changing it.
func (t *Txn) Put(table string, obj any) error {
	return t.change(table, obj, false)
}

// Delete removes obj from table.
func (t *Txn) Delete(table string, obj any) error {
	return t.change(table, obj, true)
}

func encodePut(table string, obj any, del bool) ([]byte, error) {
	raw, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encode %s object: %w", table, err)
	}
	return json.Marshal(put{Table: table, Delete: del, Obj: raw})
}

func (t *Txn) change(table string, obj any, del bool) error {
	p, err := encodePut(table, obj, del)
	if err != nil {
		return err
	}
	// Apply the decoded copy, not obj: live writes and replay must see the
	// very same bytes, so whatever JSON drops is dropped in both.
	if err := applyPut(t.Txn, p); err != nil {
		return err
	}
	t.puts = append(t.puts, p)
	return nil
}

// Write runs fn in a write transaction and makes its changes durable: it
// returns nil only after they are in the log and synced to disk. If fn
// returns an error nothing changes.
func (l *Ledger) Write(fn func(tx *Txn) error) error {
	l.mu.Lock()
	if l.failed != nil {
		l.mu.Unlock()
		return l.failed
	}
	tx := &Txn{Txn: l.db.Txn(true)}
	if err := fn(tx); err != nil {
		tx.Abort()
		l.mu.Unlock()
		return err
	}
	if len(tx.puts) == 0 {
		tx.Abort()
		l.mu.Unlock()
		return nil
	}
	data := encodeEntry(tx.puts)
	if len(data) > wal.MaxEntrySize {
		tx.Abort()
		l.mu.Unlock()
		return fmt.Errorf("ledger: change of %d bytes exceeds the log's entry limit of %d", len(data), wal.MaxEntrySize)
	}
	p := &pending{data: data, err: make(chan error, 1)}
	l.queue = append(l.queue, p)
	l.nextIndex++
	tx.Commit()
	l.sinceSnapshot++
	snap := l.opts.SnapshotEvery > 0 && l.sinceSnapshot >= l.opts.SnapshotEvery
	if snap {
		l.sinceSnapshot = 0
	}
	l.mu.Unlock()
	l.kick()
	if err := <-p.err; err != nil {
		return err
	}
	if snap {
		// In the background: a writer's acknowledgement must not wait for a
		// snapshot of the whole state.
		l.snapshots.Go(func() {
			if err := l.Snapshot(); err != nil {
				l.lg.Warn("snapshot failed; the log keeps everything", "err", err)
			}
		})
	}
	return nil
}

// flusher writes queued entries in batches, one fsync per batch, so that
// concurrent writers share the cost of a sync.
func (l *Ledger) flusher() {
	defer close(l.done)
	for {
		select {
		case <-l.wake:
		case <-l.closing:
			l.flush()
			return
		}
		l.flush()
	}
}

func (l *Ledger) flush() {
	for {
		l.mu.Lock()
		batch := l.queue
		l.queue = nil
		l.mu.Unlock()
		if len(batch) == 0 {
			return
		}
		data := make([][]byte, 0, len(batch))
		for _, p := range batch {
			if p.data != nil { // barrier markers carry no data
				data = append(data, p.data)
			}
		}
		var err error
		if len(data) > 0 {
			if l.batchHook != nil {
				l.batchHook(len(data))
			}
			_, err = l.log.AppendBatch(data)
		}
		if err != nil {
			err = fmt.Errorf("%w: %v", ErrFailed, err)
			l.mu.Lock()
			l.failed = err
			l.mu.Unlock()
		}
		for _, p := range batch {
			p.err <- err
		}
	}
}

// Read runs fn in a read transaction on a consistent view of the state.
func (l *Ledger) Read(fn func(txn *memdb.Txn) error) error {
	txn := l.db.Txn(false)
	defer txn.Abort()
	return fn(txn)
}

// DB returns the underlying memdb for reads with watch sets. Never write to it
// directly: writes go through Write so they reach the log.
func (l *Ledger) DB() *memdb.MemDB { return l.db }

// Snapshot writes a snapshot of the current state and drops the log entries
// it covers.
func (l *Ledger) Snapshot() error {
	l.snapMu.Lock()
	defer l.snapMu.Unlock()
	// The view and its index are taken together under mu, so the view is
	// exactly the log up to index; the barrier then makes that prefix durable.
	l.mu.Lock()
	txn := l.db.Txn(false)
	index := l.nextIndex - 1
	l.mu.Unlock()
	if err := l.barrier(); err != nil {
		return err
	}
	err := wal.WriteSnapshot(l.dir, index, func(emit func([]byte) error) error {
		for table := range Schema().Tables {
			it, err := txn.Get(table, IndexID)
			if err != nil {
				return err
			}
			for obj := it.Next(); obj != nil; obj = it.Next() {
				raw, err := json.Marshal(obj)
				if err != nil {
					return err
				}
				p, err := json.Marshal(put{Table: table, Obj: raw})
				if err != nil {
					return err
				}
				if err := emit(p); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write snapshot at %d: %w", index, err)
	}
	if err := l.log.Compact(index); err != nil {
		return fmt.Errorf("compact log to %d: %w", index, err)
	}
	l.lg.Info("snapshot written", "index", index)
	return nil
}

// barrier waits until everything queued before it is durable. It queues an
// empty marker: the flusher answers entries in order, after their batch is
// synced.
func (l *Ledger) barrier() error {
	p := &pending{err: make(chan error, 1)}
	l.mu.Lock()
	if l.failed != nil {
		l.mu.Unlock()
		return l.failed
	}
	l.queue = append(l.queue, p)
	l.mu.Unlock()
	l.kick()
	return <-p.err
}

func (l *Ledger) kick() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// Close flushes what is queued and closes the log.
func (l *Ledger) Close() error {
	l.snapshots.Wait()
	close(l.closing)
	<-l.done
	return l.log.Close()
}

func encodeEntry(puts []json.RawMessage) []byte {
	b := []byte{'['}
	for i, p := range puts {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, p...)
	}
	return append(b, ']')
}

// applyEntry applies one log entry: a JSON array of puts.
func applyEntry(txn *memdb.Txn, data []byte) error {
	var puts []json.RawMessage
	if err := json.Unmarshal(data, &puts); err != nil {
		return fmt.Errorf("decode log entry: %w", err)
	}
	for _, p := range puts {
		if err := applyPut(txn, p); err != nil {
			return err
		}
	}
	return nil
}

// applyPut applies one change. It is the only place state changes, for live
// writes, replay and snapshot loading alike; it uses no clock and no
// randomness.
func applyPut(txn *memdb.Txn, data []byte) error {
	var p put
	if err := json.Unmarshal(data, &p); err != nil {
		return fmt.Errorf("decode change: %w", err)
	}
	obj, ok := newObject(p.Table)
	if !ok {
		return fmt.Errorf("change names unknown table %q", p.Table)
	}
	if err := json.Unmarshal(p.Obj, obj); err != nil {
		return fmt.Errorf("decode %s object: %w", p.Table, err)
	}
	if p.Delete {
		if err := txn.Delete(p.Table, obj); err != nil && !errors.Is(err, memdb.ErrNotFound) {
			return fmt.Errorf("delete from %s: %w", p.Table, err)
		}
		return nil
	}
	if err := txn.Insert(p.Table, obj); err != nil {
		return fmt.Errorf("insert into %s: %w", p.Table, err)
	}
	return nil
}
