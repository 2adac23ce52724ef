// Package ledger is the durable, indexed state of an agent or a hub.
//
// State lives in go-memdb tables (see Schema), except the records
// themselves, which live in a compact store of their own with one memdb row
// saying how many a state has (see records.go and Records); durability is
// a write-ahead log (package wal). A write runs a function against a memdb write
// transaction; every object it puts or deletes is also encoded into one log
// entry (see the format in entry.go), and what is applied to memdb is that
// encoding decoded again, so that replay gives the same state (a record
// that comes with the JSON it was decoded from, as a bundle's do, is logged
// in that JSON instead: see PutRecord). Write returns only once that entry
// is appended and fsynced, so nothing a caller acknowledges is lost.
//
// Concurrent writers share fsyncs (group commit). Each writer commits its
// transaction to memdb and queues its entry in one step, so the order of
// the log is the order of memdb and the next writer builds on the state
// before it; one flusher writes everything queued with a single sync.
// Until that sync, the change is visible only to later writers, which
// depend on it and fail with it: Read sees the state once it is durable,
// and a Write that changes nothing returns only once the state it read is
// durable, so no one can act on a change the disk might still lose.
//
// A large Write is applied to memdb in several transactions (memdbChunk
// says why); no reader sees one partly done, because Read and snapshots
// read the state published when a Write ends, and a Write that fails
// undoes the parts it committed.
//
// Agent and hub share the schema; Options.Role leaves out the indexes of
// records a role never queries (see Role), which changes nothing on disk.
//
// Recovery loads the newest snapshot and replays the log after it through
// the same apply function that live writes use, so the state after a
// restart is the state before it. A snapshot is written every
// Options.SnapshotEvery entries, in the background, and the log it covers
// is dropped. A load that takes more than a few seconds logs its progress.
//
// If the log fails to persist an entry, every later Write and Read returns
// an error wrapping ErrFailed: memory then holds changes the disk may not,
// and only reopening (recovering from the log) is safe.
package ledger

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/wal"
	"fieldsync/protocol"
)

// memdbChunk bounds the entries a Write puts into any one index in one memdb
// transaction; past it, the Write commits that transaction and opens the
// next. go-immutable-radix keeps the watch channels a transaction must
// close in a set of at most 8,192 per index, and a transaction that
// overflows it closes them instead by walking the whole index before and
// after its commit, a cost that grows with the table. An insert into a
// large tree can add several channels: at a hub holding 200,000 records,
// memdb transactions of 1,536 bundle records overflowed, and a
// 10,000-record bundle applied at a quarter of the speed it had in
// transactions of 1,024.
const memdbChunk = 1024

// indexLoad is how many entries obj puts into the memdb index it fills
// most: one, or none for a record (its row is one key, changed in place).
func indexLoad(obj any) int {
	if _, ok := obj.(*protocol.Record); ok {
		return 0
	}
	return 1
}

// DefaultSnapshotEvery is how many log entries may accumulate before the
// ledger writes a snapshot and drops the log it covers.
const DefaultSnapshotEvery = 50_000

// ErrFailed is wrapped by the errors of writes and reads after the log
// failed to persist an entry (a full disk, an I/O error).
var ErrFailed = errors.New("ledger: a write failed to reach the disk; restart to recover from the log")

// ErrClosed is returned by the methods of a closed ledger.
var ErrClosed = errors.New("ledger: closed")

// errSnapshotAborted stops a snapshot when the ledger closes under it.
var errSnapshotAborted = errors.New("ledger: snapshot abandoned because the ledger is closing")

// Options tune a ledger.
type Options struct {
	// SnapshotEvery is the number of log entries between snapshots
	// (DefaultSnapshotEvery if zero; negative disables snapshots).
	SnapshotEvery int
	// NoSync skips fsync; for tests and benchmarks that measure other things.
	NoSync bool
	// Role decides which indexes of records the ledger keeps (see Role);
	// the zero value, RoleHub, keeps them all. The data on disk does not
	// depend on it.
	Role   Role
	Logger *slog.Logger

	// progressEvery replaces loadProgressEvery; for tests.
	progressEvery time.Duration
}

// Ledger is an open ledger. It is safe for concurrent use.
type Ledger struct {
	db      *memdb.MemDB
	records *recordStore
	log     *wal.Log
	// published is db as of the end of the last Write (a memdb snapshot,
	// sharing its trees): what Read and snapshots see. Guarded by mu.
	published *memdb.MemDB
	dir       string
	opts      Options
	lg        *slog.Logger

	// wmu is held by a writer from opening its memdb transaction until its
	// entry is queued; memdb allows one write transaction at a time anyway.
	// in and the objectEncoder are used under it.
	wmu sync.Mutex
	in  *interner
	enc objectEncoder

	// mu guards what follows; it is held briefly, never during I/O.
	mu        sync.Mutex
	work      sync.Cond  // signalled when queue grows or the ledger closes
	synced    sync.Cond  // broadcast when durable advances or failed is set
	queue     []*pending // entries committed to memdb, not yet written
	committed uint64     // log index of the last entry committed to memdb
	durable   uint64     // log index of the last entry synced to disk
	failed    error      // set once the log failed: sticky
	closed    bool
	snapIndex uint64 // log index the newest snapshot covers
	snapTried uint64 // log index the last background snapshot started at
	snapping  bool   // a background snapshot is running

	snapMu    sync.Mutex     // one snapshot at a time
	snapshots sync.WaitGroup // snapshots in progress, waited for by Close
	closing   atomic.Bool    // tells a snapshot in progress to give up
	done      chan struct{}  // closed when the flusher has exited

	// batchHook, if set, is called by the flusher before it writes a batch
	// of entries with one sync; an error fails the batch as the log would.
	// For tests and benchmarks.
	batchHook func(entries int) error
}

type pending struct {
	index uint64
	data  []byte
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
	l := &Ledger{db: db, records: newRecordStore(opts.Role), dir: dir, opts: opts, lg: lg, in: newInterner(), done: make(chan struct{})}
	l.work.L = &l.mu
	l.synced.L = &l.mu

	start := time.Now()
	rec, err := load(db, l.records, dir, opts, lg, l.in)
	if err != nil {
		return nil, err
	}
	l.log = rec.log
	l.published = db.Snapshot()
	l.committed = rec.log.LastIndex()
	l.durable = l.committed
	l.snapIndex = rec.snapIndex
	l.snapTried = rec.snapIndex
	lg.Info("ledger opened", "dir", dir, "role", opts.Role, "objects", rec.objects, "snapshot_index", rec.snapIndex, "replayed", rec.replayed,
		"torn_bytes", rec.log.Recovered().TornBytes, "took", time.Since(start).Round(time.Millisecond))
	go l.flusher()
	return l, nil
}

// Txn is a write transaction handed to a Write function. Reads see the
// state including everything committed before; Put and Delete change it.
// Change state only through Txn's methods: they are what reaches the log.
//
// A change may move a large Write on to a new memdb transaction (see
// memdbChunk): take tx.Txn afresh after a change rather than keeping it.
type Txn struct {
	*memdb.Txn
	l     *Ledger
	entry []byte          // the log entry: every change so far
	err   error           // the first failed change: the Write fails with it
	load  int             // indexLoad of the changes in the current memdb transaction
	done  []memdb.Changes // the changes of the memdb transactions committed so far
	mark  *storeMark      // the record store before this Write's first record
	live  bool            // the records row is live (see recordsRow)
}

// begin opens the memdb transaction that the next changes go to. It tracks
// its changes, so that a failed Write can undo them once committed.
func (t *Txn) begin() {
	t.Txn = t.l.db.Txn(true)
	t.Txn.TrackChanges()
	t.load = 0
}

// reserve makes room for obj in the current memdb transaction, moving on
// to the next if obj would take it past memdbChunk.
func (t *Txn) reserve(obj any) {
	n := indexLoad(obj)
	if t.load > 0 && t.load+n > memdbChunk {
		t.checkpoint()
	}
	t.load += n
}

// checkpoint commits the current memdb transaction, keeping what it
// changed, and opens the next.
func (t *Txn) checkpoint() {
	t.done = append(t.done, t.Txn.Changes())
	t.Txn.Commit()
	t.begin()
}

// rollback abandons the Write: it aborts the current memdb transaction and
// undoes those committed before, newest first, so that memdb holds again
// the published state. For each part, every object it wrote is deleted
// before every object it replaced or deleted comes back, so that no unique
// index sees two objects with one key.
func (t *Txn) rollback() error {
	t.Txn.Abort()
	if t.mark != nil {
		if err := t.l.records.restore(*t.mark); err != nil {
			return err
		}
		t.mark = nil
	}
	if len(t.done) == 0 {
		return nil
	}
	txn := t.l.db.Txn(true)
	defer txn.Abort()
	for i := len(t.done) - 1; i >= 0; i-- {
		for _, c := range t.done[i] {
			if c.After != nil {
				if err := txn.Delete(c.Table, c.After); err != nil {
					return fmt.Errorf("undo a change to %s: %w", c.Table, err)
				}
			}
		}
		for _, c := range t.done[i] {
			if c.Before != nil {
				if err := txn.Insert(c.Table, c.Before); err != nil {
					return fmt.Errorf("undo a change to %s: %w", c.Table, err)
				}
			}
		}
	}
	txn.Commit()
	t.done = nil
	return nil
}

// Put inserts or replaces obj in table. Objects read from memdb are shared
// and immutable: copy one before changing it. A record (in TableRecords)
// is never replaced: see PutRecord.
func (t *Txn) Put(table string, obj any) error {
	return t.change(table, obj, false)
}

// PutRecord stores r, a record decoded from raw by
// protocol.DecodeRecordJSON or encoding/json (which agree wherever the
// first decodes), as a bundle's records are. The log and the store keep
// raw as it is; replay decodes it, as it decodes what Put logs, to the very
// record r is, so r is stored without Put's encode and decode. Records are
// never replaced: one whose id or (agent, sequence number) is stored
// already fails the Write.
func (t *Txn) PutRecord(r *protocol.Record, raw []byte) error {
	if t.err != nil {
		return t.err
	}
	if err := t.addRecord(r, raw); err != nil {
		t.err = err
		return err
	}
	t.entry = appendChange(t.entry, TableRecords, false, raw)
	return nil
}

// Grow makes room in the Write's log entry for n more bytes of changes, for
// a caller that knows how much it will put (a bundle's records): growing the
// entry a step at a time copies it over and over.
func (t *Txn) Grow(n int) {
	if len(t.entry) == 0 {
		n++ // the version byte
	}
	t.entry = slices.Grow(t.entry, n)
}

// addRecord adds r to the record store and the records row to the state.
func (t *Txn) addRecord(r *protocol.Record, raw []byte) error {
	if t.mark == nil {
		m := t.l.records.mark()
		t.mark = &m
	}
	if _, err := t.l.records.add(r, raw); err != nil {
		return fmt.Errorf("store record %s: %w", r.ID, err)
	}
	if t.live {
		return nil
	}
	t.live = true
	return t.Txn.Insert(TableRecords, &recordsRow{Key: recordsRowKey, live: true, store: t.l.records})
}

// fixRecords ends the Write's live records row: the state it publishes
// has the records there are now.
func (t *Txn) fixRecords() error {
	if !t.live {
		return nil
	}
	t.live = false
	n := t.l.records.count()
	return t.Txn.Insert(TableRecords, &recordsRow{Key: recordsRowKey, n: n, store: t.l.records})
}

// Insert is Put, so that memdb's Insert cannot bypass the log.
func (t *Txn) Insert(table string, obj any) error {
	return t.change(table, obj, false)
}

// Delete removes obj from table.
func (t *Txn) Delete(table string, obj any) error {
	return t.change(table, obj, true)
}

// DeleteAll removes every object that index matches with args, and returns
// how many it removed.
func (t *Txn) DeleteAll(table, index string, args ...any) (int, error) {
	it, err := t.Txn.Get(table, index, args...)
	if err != nil {
		return 0, err
	}
	var objs []any
	for obj := it.Next(); obj != nil; obj = it.Next() {
		objs = append(objs, obj)
	}
	for _, obj := range objs {
		if err := t.Delete(table, obj); err != nil {
			return 0, err
		}
	}
	return len(objs), nil
}

// DeletePrefix removes every object whose prefixIndex key starts with
// prefix, and reports whether it removed any. prefixIndex ends in
// "_prefix", as with memdb.
func (t *Txn) DeletePrefix(table, prefixIndex, prefix string) (bool, error) {
	n, err := t.DeleteAll(table, prefixIndex, prefix)
	return n > 0, err
}

func (t *Txn) change(table string, obj any, del bool) error {
	if t.err != nil {
		return t.err
	}
	t.reserve(obj)
	err := func() error {
		raw, err := t.l.enc.encode(obj)
		if err != nil {
			return fmt.Errorf("encode %s object: %w", table, err)
		}
		// Apply the decoded copy, not obj: live writes and replay must see
		// the very same bytes, so whatever JSON drops is dropped in both.
		c, err := decodeChange(table, del, raw, t.l.in)
		if err != nil {
			return err
		}
		if c.table == TableRecords {
			if c.del {
				return errors.New("records are never deleted: void one with a record of its own")
			}
			if err := t.addRecord(c.obj.(*protocol.Record), raw); err != nil {
				return err
			}
		} else if err := applyChange(t.Txn, c); err != nil {
			return err
		}
		t.entry = appendChange(t.entry, table, del, raw)
		return nil
	}()
	// A change that failed half way may have left memdb's transaction
	// inconsistent with the log entry: the whole Write fails.
	t.err = err
	return err
}

// Write runs fn in a write transaction and makes its changes durable: it
// returns nil only after they are in the log and synced to disk. If fn
// returns an error, or a change fails, nothing changes.
//
// If fn changes nothing, Write still waits until the state fn read is
// durable, so that a decision based on it ("already stored, acknowledge")
// holds after a crash.
func (l *Ledger) Write(fn func(tx *Txn) error) error {
	index, err := l.commit(fn)
	if err != nil {
		return err
	}
	return l.waitDurable(index)
}

// commit runs fn, commits its transaction to memdb and queues its entry,
// all under wmu so that the log's order is memdb's. It returns the log
// index the entry gets (or, if fn changed nothing, the last one fn saw).
func (l *Ledger) commit(fn func(tx *Txn) error) (uint64, error) {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if err := l.usable(); err != nil {
		return 0, err
	}
	tx := &Txn{l: l}
	tx.begin()
	committed := false
	defer func() {
		if committed {
			tx.Txn.Abort() // a no-op after Commit; releases a Write that changed nothing
			return
		}
		// fn failed or panicked, or the Write cannot be logged: memdb
		// must hold the published state again.
		l.abandon(tx)
	}()
	err := fn(tx)
	if err == nil {
		err = tx.err
	}
	if err == nil {
		err = tx.fixRecords()
	}
	if err != nil {
		return 0, err
	}
	if len(tx.entry) > wal.MaxEntrySize {
		return 0, fmt.Errorf("ledger: change of %d bytes exceeds the log's entry limit of %d", len(tx.entry), wal.MaxEntrySize)
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.usableLocked(); err != nil {
		return 0, err
	}
	if len(tx.entry) == 0 {
		committed = true
		return l.committed, nil
	}
	l.committed++
	l.queue = append(l.queue, &pending{index: l.committed, data: tx.entry})
	tx.Txn.Commit()
	committed = true
	l.published = l.db.Snapshot()
	l.work.Signal()
	if every := l.opts.SnapshotEvery; every > 0 && !l.snapping && l.committed-l.snapTried >= uint64(every) {
		// In the background: a writer's acknowledgement must not wait for
		// a snapshot of the whole state. After a failed one, the next
		// waits for another SnapshotEvery entries, not for the next write.
		l.snapping = true
		l.snapTried = l.committed
		l.snapshots.Add(1)
		go func() {
			defer l.snapshots.Done()
			err := l.snapshot()
			l.mu.Lock()
			l.snapping = false
			l.mu.Unlock()
			if err != nil && !errors.Is(err, errSnapshotAborted) && !errors.Is(err, ErrFailed) {
				l.lg.Warn("snapshot failed; the log keeps everything", "err", err)
			}
		}()
	}
	return l.committed, nil
}

// abandon undoes what tx changed in memdb. If that fails, memdb no longer
// matches the log, and the ledger fails as if the log had.
func (l *Ledger) abandon(tx *Txn) {
	if err := tx.rollback(); err != nil {
		l.mu.Lock()
		if l.failed == nil {
			l.failed = fmt.Errorf("%w: %w", ErrFailed, err)
			l.synced.Broadcast()
		}
		l.mu.Unlock()
		l.lg.Error("ledger could not undo a failed write; restart to recover from the log", "err", err)
	}
}

func (l *Ledger) usable() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.usableLocked()
}

func (l *Ledger) usableLocked() error {
	if l.closed {
		return ErrClosed
	}
	return l.failed
}

// waitDurable waits until the log holds everything up to index.
func (l *Ledger) waitDurable(index uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waitDurableLocked(index)
}

func (l *Ledger) waitDurableLocked(index uint64) error {
	for l.durable < index {
		if l.failed != nil {
			return l.failed
		}
		l.synced.Wait()
	}
	return nil
}

// flusher writes queued entries in batches, one fsync per batch, so that
// concurrent writers share the cost of a sync. It exits once the ledger is
// closed and the queue is empty.
func (l *Ledger) flusher() {
	defer close(l.done)
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		for len(l.queue) == 0 {
			if l.closed {
				return
			}
			l.work.Wait()
		}
		batch := l.queue
		l.queue = nil
		if l.failed != nil {
			// Nothing after a failed entry may reach the log: its state
			// was built on the lost one. Waiters see failed.
			continue
		}
		l.mu.Unlock()
		err := l.append(batch)
		l.mu.Lock()
		if err != nil {
			l.failed = fmt.Errorf("%w: %w", ErrFailed, err)
			l.lg.Error("ledger write failed; restart to recover from the log", "err", err)
		} else {
			l.durable = batch[len(batch)-1].index
		}
		l.synced.Broadcast()
	}
}

func (l *Ledger) append(batch []*pending) error {
	data := make([][]byte, len(batch))
	for i, p := range batch {
		data[i] = p.data
	}
	if l.batchHook != nil {
		if err := l.batchHook(len(data)); err != nil {
			return err
		}
	}
	first, err := l.log.AppendBatch(data)
	if err != nil {
		return err
	}
	if first != batch[0].index {
		return fmt.Errorf("internal error: log gave entry %d index %d", batch[0].index, first)
	}
	return nil
}

// Read runs fn in a read transaction on a consistent view of the state:
// everything acknowledged before Read was called, and nothing that is not
// yet durable (Read waits for a sync in progress if it must).
func (l *Ledger) Read(fn func(txn *memdb.Txn) error) error {
	txn, err := l.view()
	if err != nil {
		return err
	}
	defer txn.Abort()
	return fn(txn)
}

// view returns a read transaction on the newest state, once it is durable.
func (l *Ledger) view() (*memdb.Txn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	// Writers publish under mu, so this view is exactly the log up to
	// committed.
	txn := l.published.Txn(false)
	if err := l.waitDurableLocked(l.committed); err != nil {
		return nil, err
	}
	return txn, nil
}

// DB returns the underlying memdb. Its state may be ahead of the disk by the
// writes being synced (Read waits for them), and during a large Write it
// may hold part of it (Read does not see that). Never write to it directly:
// writes go through Write so they reach the log.
func (l *Ledger) DB() *memdb.MemDB { return l.db }

// Snapshot writes a snapshot of the current state and drops the log entries
// it covers.
func (l *Ledger) Snapshot() error {
	l.mu.Lock()
	if err := l.usableLocked(); err != nil {
		l.mu.Unlock()
		return err
	}
	l.snapshots.Add(1)
	l.mu.Unlock()
	defer l.snapshots.Done()
	return l.snapshot()
}

func (l *Ledger) snapshot() error {
	l.snapMu.Lock()
	defer l.snapMu.Unlock()
	// The view and its index are taken together under mu, so the view is
	// exactly the log up to index; waiting makes that prefix durable.
	l.mu.Lock()
	txn := l.published.Txn(false)
	index := l.committed
	if index == l.snapIndex {
		l.mu.Unlock()
		return nil // nothing new since the last one
	}
	err := l.waitDurableLocked(index)
	l.mu.Unlock()
	if err != nil {
		return err
	}

	start := time.Now()
	var enc objectEncoder
	objects := 0
	err = wal.WriteSnapshot(l.dir, index, func(emit func([]byte) error) error {
		var chunk []byte
		add := func(table string, raw []byte) error {
			chunk = appendChange(chunk, table, false, raw)
			objects++
			if len(chunk) < snapshotChunk {
				return nil
			}
			if l.closing.Load() {
				return errSnapshotAborted
			}
			err := emit(chunk)
			chunk = chunk[:0]
			return err
		}
		// Records first, in the order they were stored, which loading
		// keeps.
		err := RecordsOf(txn).eachJSON(func(raw []byte) error { return add(TableRecords, raw) })
		if err != nil {
			return err
		}
		for table := range Schema().Tables {
			if table == TableRecords {
				continue
			}
			it, err := txn.Get(table, IndexID)
			if err != nil {
				return err
			}
			for obj := it.Next(); obj != nil; obj = it.Next() {
				raw, err := enc.encode(obj)
				if err != nil {
					return fmt.Errorf("encode %s object: %w", table, err)
				}
				if err := add(table, raw); err != nil {
					return err
				}
			}
		}
		if len(chunk) > 0 {
			return emit(chunk)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write snapshot at %d: %w", index, err)
	}
	if err := l.log.Compact(index); err != nil {
		return fmt.Errorf("compact log to %d: %w", index, err)
	}
	l.mu.Lock()
	l.snapIndex = index
	l.mu.Unlock()
	l.lg.Info("snapshot written", "index", index, "objects", objects,
		"took", time.Since(start).Round(time.Millisecond))
	return nil
}

// Close waits for the writes in flight to be synced, abandons a snapshot
// in progress, and closes the log. Later calls of any method return
// ErrClosed.
func (l *Ledger) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	// No entry is queued and no snapshot starts after this.
	l.closed = true
	l.work.Signal()
	l.mu.Unlock()
	l.closing.Store(true)
	<-l.done
	l.snapshots.Wait()
	return l.log.Close()
}
