package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/inbox"
	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

// Backoff bounds for reconnecting to an unreachable hub.
const (
	MinBackoff = 2 * time.Second
	MaxBackoff = 2 * time.Minute
	// PollEvery is how often the daemon syncs with nothing to send, to fetch
	// new pledges and feedback from the hub.
	PollEvery = 10 * time.Minute
)

// RunOptions configure the daemon.
type RunOptions struct {
	Inbox string // the inbox folder; DIR/inbox if empty
	// Settle is how long a dropped file must stay unchanged before it is
	// taken (the inbox default if zero).
	Settle time.Duration
	// Sync tunes each sync: a daily link budget, records only.
	Sync SyncOptions
}

// Run is the daemon: it watches the inbox, and syncs with the hub whenever
// there is something to send, backing off with jitter while the hub cannot
// be reached. It returns when ctx ends.
func (a *Agent) Run(ctx context.Context, opts RunOptions) error {
	dir := opts.Inbox
	if dir == "" {
		dir = a.InboxDir()
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	inboxErr := make(chan error, 1)
	wg.Go(func() {
		inboxErr <- inbox.Watch(ctx, dir, ingester{a}, inbox.Options{Logger: a.log, Settle: opts.Settle})
	})

	backoff := MinBackoff
	for {
		_, err := a.Sync(ctx, opts.Sync)
		if ctx.Err() != nil {
			return nil
		}
		wait := PollEvery
		if err != nil {
			a.log.Warn("sync failed", "err", err, "retry_in", backoff)
			// Jitter over the upper half of the backoff: sites that lost
			// the hub together do not all come back at the same instant.
			wait = backoff/2 + rand.N(backoff/2+1)
			backoff = min(backoff*2, MaxBackoff)
		} else {
			backoff = MinBackoff
		}
		select {
		case err := <-inboxErr:
			return fmt.Errorf("inbox: %w", err)
		default:
		}
		if err := a.waitForWork(ctx, wait, err != nil); err != nil {
			return nil
		}
	}
}

// waitForWork blocks until a new record is stored, the wait passes or ctx
// ends. Records stored while the last sync ran end the wait at once, unless
// that sync failed (backingOff).
func (a *Agent) waitForWork(ctx context.Context, wait time.Duration, backingOff bool) error {
	ws := memdb.NewWatchSet()
	var pending bool
	err := a.led.Read(func(txn *memdb.Txn) error {
		ch, err := ledger.WatchRecords(txn)
		if err != nil {
			return err
		}
		ws.Add(ch)
		st, err := a.syncPoints(txn)
		if err != nil {
			return err
		}
		pending = ledger.RecordsOf(txn).LastSeq(a.id.AgentID) > st.sealed
		return nil
	})
	if err != nil {
		return err
	}
	if pending {
		// Something arrived while the last sync ran; but after a failure,
		// still honour the backoff.
		if !backingOff {
			return ctx.Err()
		}
		ws = memdb.NewWatchSet()
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	ws.WatchCtx(wctx)
	return ctx.Err()
}

// ingester turns inbox files into records.
type ingester struct{ a *Agent }

// Ingest stores the records of one inbox file, all or none, once: the file's
// content hash is the batch key.
func (in ingester) Ingest(ctx context.Context, file string, entries []inbox.Entry, attachments map[string]string) ([]string, error) {
	sum, err := fileSHA256(file)
	if err != nil {
		return nil, err
	}
	key := "inbox:" + sum
	recs := make([]protocol.Record, len(entries))
	attach := make([][]string, len(entries))
	for i, e := range entries {
		recs[i] = e.Record
		for _, name := range e.Attach {
			p, ok := attachments[name]
			if !ok {
				return nil, fmt.Errorf("record %d: attachment %q is not in the inbox", i+1, name)
			}
			attach[i] = append(attach[i], p)
		}
	}
	stored, err := in.a.AddBatch(recs, attach, key)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(stored))
	for i, r := range stored {
		ids[i] = r.ID
	}
	in.a.log.Info("inbox file ingested", "file", file, "records", len(ids))
	return ids, nil
}
