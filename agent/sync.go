package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/quic-go/quic-go"

	"fieldsync/internal/ledger"
	"fieldsync/internal/transport"
	"fieldsync/protocol"
)

// Meta keys for the sync status.
const (
	metaLastSync     = "last_sync"
	metaLastSyncTook = "last_sync_took"
	metaLastError    = "last_error"
	metaLastErrorAt  = "last_error_at"
	metaDeferred     = "deferred" // what the last sync that ended well left for later, and why
)

// ChunkSize is how much of a bundle one wire message carries; the hub makes
// each chunk durable before the next, so an interrupted transfer resumes
// from the last chunk boundary.
const ChunkSize = protocol.MaxChunk

// SyncResult says what one sync moved.
type SyncResult struct {
	BundlesSent int           `json:"bundles_sent"`
	BytesSent   int64         `json:"bytes_sent"`
	Resumed     int64         `json:"resumed_from"` // bytes of a partial upload the hub already had
	DownApplied int           `json:"down_applied"`
	Took        time.Duration `json:"took"`
	LinkBytes   int64         `json:"link_bytes"`         // put on the link both ways, QUIC, TLS, UDP and IP included
	TLSResumed  bool          `json:"tls_resumed"`        // the handshake resumed the last session (no certificates exchanged)
	Deferred    string        `json:"deferred,omitempty"` // why something was left for later (budget, records-only)
}

// udpIPHeader is what each QUIC packet costs on the link beyond its own
// bytes: an IPv4 and a UDP header.
const udpIPHeader = 28

// Progress reports bytes moved during a long transfer.
type Progress func(sent, total int64)

// SyncOptions tune one sync.
type SyncOptions struct {
	// Progress, if set, hears how the upload goes.
	Progress Progress
	// RecordsOnly leaves attachments for a later sync, on a better link.
	RecordsOnly bool
	// Budget caps the bytes put on the link per UTC day, both directions,
	// all overhead included (0: no cap). A sync sends what fits, records
	// first; the rest waits for tomorrow's budget.
	Budget int64
}

// Sync seals pending records, connects to the hub once, uploads every bundle
// the hub lacks (resuming a partial upload) and then the attachments, takes
// what the hub sends down, and records the outcome in the status. It
// returns an error if the hub could not be reached or refused the session.
// A sync started while another runs waits for it to end.
func (a *Agent) Sync(ctx context.Context, opts SyncOptions) (SyncResult, error) {
	select {
	case a.syncing <- struct{}{}:
		defer func() { <-a.syncing }()
	case <-ctx.Done():
		return SyncResult{}, fmt.Errorf("wait for the sync in progress: %w", ctx.Err())
	}
	start := a.now()
	a.transfer.Store(&transfer{since: start, what: "sealing"})
	defer a.transfer.Store(nil)
	res, err := a.sync(ctx, opts)
	err = explainHubClose(err)
	res.Took = a.now().Sub(start)
	if serr := a.recordSyncOutcome(start, res, err); serr != nil && err == nil {
		err = serr
	}
	return res, err
}

func (a *Agent) sync(ctx context.Context, opts SyncOptions) (res SyncResult, err error) {
	progress := a.track("records", opts.Progress)
	if _, err := a.Seal(); err != nil {
		return res, err
	}
	left, err := a.budgetLeft(opts.Budget)
	if err != nil {
		return res, err
	}
	if left <= 0 {
		res.Deferred = "today's link budget is spent; it renews at 00:00 UTC"
		return res, nil
	}
	a.phase("connecting")
	tlsConf, err := transport.ClientTLS(a.key, a.id.HubKeyPin, a.tickets)
	if err != nil {
		return res, err
	}
	// With the ticket of the last session the handshake resumes it (no
	// certificates exchanged). It is not used for 0-RTT: quic-go sends
	// early data before it has a round-trip sample, and over a long path
	// its loss timer then fired on data still on its way, and its window
	// collapsed for the rest of the sync (real binaries, bgan, 2 MB: 62 s
	// instead of 52 s; docs/transport.md).
	dctx, cancel := context.WithTimeout(ctx, transport.HandshakeTimeout)
	conn, err := transport.Dial(dctx, a.id.HubAddr, tlsConf)
	cancel()
	if err != nil {
		return res, fmt.Errorf("reach hub %s: %w", a.id.HubAddr, err)
	}
	defer conn.CloseWithError(0, "")
	defer func() {
		st := conn.ConnectionStats()
		res.LinkBytes = int64(st.BytesSent+st.BytesReceived) + int64(st.PacketsSent+st.PacketsReceived)*udpIPHeader
	}()
	res, err = a.session(ctx, conn, opts, left, progress)
	res.TLSResumed = conn.ConnectionState().TLS.DidResume
	return res, err
}

// session runs one sync session on conn: hello, bundles, attachments, what
// the hub sends down. left is what today's link budget allows.
func (a *Agent) session(ctx context.Context, conn *quic.Conn, opts SyncOptions, left int64, progress Progress) (res SyncResult, err error) {
	stream, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return res, fmt.Errorf("open stream to hub: %w", err)
	}
	// Closing the connection ends blocked reads when ctx is cancelled.
	stop := context.AfterFunc(ctx, func() { conn.CloseWithError(0, "cancelled") })
	defer stop()

	// Keep-alives hold the connection open even if the hub's side of the
	// session hangs; a read deadline per message bounds that wait.
	r := bufio.NewReader(deadlineReader{stream})
	hello, err := a.hello()
	if err != nil {
		return res, err
	}
	// The attachments the hub may lack are offered right behind the
	// hello, so that its answer comes back beside the HelloOK instead of a
	// round trip after the bundles.
	var offers [][]protocol.BlobRef
	if !opts.RecordsOnly {
		pending, err := a.pendingBlobs()
		if err != nil {
			return res, err
		}
		// The rest, past what a hub takes in one session, in the next one.
		pending = pending[:min(len(pending), protocol.MaxBlobOffers)]
		offers = slices.Collect(slices.Chunk(pending, protocol.MaxBlobQuery))
	}
	if err := protocol.WriteMessage(stream, hello); err != nil {
		return res, fmt.Errorf("send hello: %w", err)
	}

	// A reader goroutine takes the hub's answers (the HelloOK, attachment
	// answers, acknowledgements while later bundles still go out, hub
	// bundles) so the link never idles waiting for one. It starts before
	// the offers go: the hub answers each as it reads it, and would stop
	// reading if its answers were not read.
	helloOK := make(chan *protocol.HelloOK, 1)
	acks := make(chan error, 1)
	needs := make(chan *protocol.BlobNeed, len(offers))
	var answered sync.Map // attachments the hub has answered mid-upload (refused, held), by hash
	var wg sync.WaitGroup
	// If the reader stops first (the hub refused the session or a bundle,
	// or sent something the agent cannot take), the upload must stop with
	// it rather than spend the link on bytes the hub will not keep: the
	// reader closes the connection, and its error is the one the user sees.
	var readerFailed atomic.Pointer[error]
	wg.Go(func() {
		err := a.readAcks(r, helloOK, needs, &answered, &res)
		if err != nil {
			readerFailed.CompareAndSwap(nil, &err)
			conn.CloseWithError(0, "")
		}
		acks <- err
	})
	abort := func(err error) (SyncResult, error) {
		readerFailed.CompareAndSwap(nil, &err)
		conn.CloseWithError(0, "")
		// The reader must end before res is returned: it writes to it.
		wg.Wait()
		return res, *readerFailed.Load()
	}
	for _, batch := range offers {
		if err := protocol.WriteMessage(stream, &protocol.BlobQuery{Blobs: batch}); err != nil {
			return abort(fmt.Errorf("offer attachments: %w", err))
		}
	}

	// The bundles and attachments go out at once, before the HelloOK and
	// the BlobNeed say where the hub stands, unless an upload may be open:
	// the hub may then hold part of one, and its answers say from where to
	// resume. Sent at once, they save the session a round trip; what the
	// hub turns out to hold already (carried by hand, or the same scan
	// from another site) stops when its answer arrives, having cost at
	// most a round trip of the link.
	bundles, err := a.unacked()
	if err != nil {
		return abort(err)
	}
	cutOff, err := a.uploadCutOff()
	if err != nil {
		return abort(err)
	}
	var ok *protocol.HelloOK
	waitHello := func() error {
		select {
		case ok = <-helloOK:
			return nil
		case err := <-acks:
			acks <- err // for the caller below
			if err == nil {
				err = errors.New("hub ended the session before accepting it")
			}
			return err
		}
	}
	if len(bundles) > 0 && cutOff {
		if err := waitHello(); err != nil {
			return abort(err)
		}
	}
	if len(bundles) > 0 || len(offers) > 0 {
		if err := a.setUploadCutOff(true); err != nil {
			return abort(err)
		}
	}
	var total int64
	for _, b := range bundles {
		total += b.Size
	}
	var sent int64
	for _, b := range bundles {
		if ok == nil {
			select {
			case ok = <-helloOK:
			default:
			}
		}
		offset := int64(0)
		if ok != nil {
			if b.Seq <= ok.HubHWM {
				continue
			}
			if ok.Partial.Seq == b.Seq && ok.Partial.Offset <= uint64(b.Size) {
				offset = int64(ok.Partial.Offset)
				res.Resumed += offset
			}
		}
		if opts.Budget > 0 && b.Size-offset > left-sent {
			res.Deferred = fmt.Sprintf("bundle %d (%d bytes) does not fit in what is left of today's link budget", b.Seq, b.Size-offset)
			break
		}
		// A HelloOK that arrives meanwhile may say the hub holds this
		// bundle already (carried by hand): the rest of it stays here.
		held := func() bool {
			if ok == nil {
				select {
				case ok = <-helloOK:
				default:
				}
			}
			return ok != nil && b.Seq <= ok.HubHWM
		}
		n, err := a.sendBundle(stream, b, offset, held, func(done int64) {
			if progress != nil {
				progress(sent+offset+done, total)
			}
		})
		sent += b.Size
		res.BytesSent += n
		if err != nil {
			return abort(fmt.Errorf("send bundle %d: %w", b.Seq, err))
		}
		res.BundlesSent++
	}
	if ok == nil {
		if err := waitHello(); err != nil {
			return abort(err)
		}
	}
	a.removeOutbox(ok.HubHWM)
	// Attachments after records: the records reach the hub first.
	blobBudget := int64(-1)
	if opts.Budget > 0 {
		blobBudget = max(0, left-sent)
	}
	if res.Deferred != "" || opts.RecordsOnly {
		blobBudget = 0
		if pending, err := a.pendingBlobs(); err == nil && len(pending) > 0 && res.Deferred == "" {
			res.Deferred = fmt.Sprintf("%d attachment(s): records only", len(pending))
		}
	}
	n, err := a.sendBlobs(stream, offers, !cutOff, needs, acks, &answered, a.track("attachments", opts.Progress), blobBudget)
	res.BytesSent += n
	if err != nil {
		return abort(err)
	}
	if err := protocol.WriteMessage(stream, &protocol.Done{}); err != nil {
		return abort(fmt.Errorf("send done: %w", err))
	}
	a.phase("receiving")
	wg.Wait()
	if err := <-acks; err != nil {
		return res, err
	}
	stream.Close()
	// Once nothing is left to send, the hub holds no part of anything, and
	// the next sync may send before the hub's answers; while something is
	// (records only, the budget, a refusal), it waits for them, which say
	// where to resume.
	bundles, err = a.unacked()
	if err != nil {
		return res, err
	}
	pending, err := a.pendingBlobs()
	if err != nil || len(bundles) > 0 || len(pending) > 0 {
		return res, err
	}
	return res, a.setUploadCutOff(false)
}

// metaUploadOpen is set in the meta table when an upload starts, and
// cleared when a session ends well with nothing left to send: set at the
// start of a sync, the hub may hold part of a bundle or attachment.
const metaUploadOpen = "upload_open"

// uploadCutOff reports whether the hub may hold part of an upload: one was
// cut off, or left for later, since the last sync that sent everything.
func (a *Agent) uploadCutOff() (bool, error) {
	var open bool
	err := a.led.Read(func(txn *memdb.Txn) error {
		obj, err := txn.First(ledger.TableMeta, ledger.IndexID, metaUploadOpen)
		open = obj != nil && obj.(*ledger.Meta).Value != ""
		return err
	})
	return open, err
}

func (a *Agent) setUploadCutOff(open bool) error {
	if was, err := a.uploadCutOff(); err != nil || was == open {
		return err
	}
	v := ""
	if open {
		v = "1"
	}
	return a.led.Write(func(tx *ledger.Txn) error {
		return tx.Put(ledger.TableMeta, &ledger.Meta{Key: metaUploadOpen, Value: v})
	})
}

func (a *Agent) hello() (*protocol.Hello, error) {
	h := &protocol.Hello{
		Version:        protocol.Version,
		Agent:          a.id.AgentID,
		Site:           a.id.Site,
		EnrolSecret:    a.enrolSecret(),
		AgentRecipient: a.ageID.Recipient().String(),
		AgentKey:       protocol.EncodePublicKey(a.key.Public().(ed25519.PublicKey)),
	}
	err := a.led.Read(func(txn *memdb.Txn) error {
		last, err := a.lastBundle(txn)
		if err != nil {
			return err
		}
		if last != nil {
			h.BundleHWM = last.Seq
		}
		if h.OldestUnsynced, err = a.oldestUnsynced(txn); err != nil {
			return err
		}
		h.PledgeHWM, h.FeedbackHWM, err = a.downHWMs(txn)
		return err
	})
	return h, err
}

// downHWMs returns the highest pledge change and feedback seq the agent
// holds from hub bundles: where the hub's next bundle for it starts.
func (a *Agent) downHWMs(txn *memdb.Txn) (pledge, feedback uint64, err error) {
	p, err := txn.Last(ledger.TablePledges, ledger.IndexSeq)
	if err != nil {
		return 0, 0, err
	}
	if p != nil {
		pledge = p.(*protocol.Pledge).Seq
	}
	it, err := txn.ReverseLowerBound(ledger.TableFeedback, ledger.IndexID, a.id.AgentID, uint64(math.MaxUint64))
	if err != nil {
		return 0, 0, err
	}
	if f, ok := it.Next().(*ledger.Feedback); ok && f.Agent == a.id.AgentID {
		feedback = f.Seq
	}
	return pledge, feedback, nil
}

// sendBundle streams one bundle from offset in chunks, until its end or
// until stop says the hub holds it already; it returns the bytes put on the
// stream.
func (a *Agent) sendBundle(w io.Writer, b *ledger.Bundle, offset int64, stop func() bool, progress func(int64)) (int64, error) {
	f, err := os.Open(a.outboxPath(b.Seq))
	if err != nil {
		return 0, fmt.Errorf("open sealed bundle: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return 0, err
	}
	buf := make([]byte, ChunkSize)
	var sent int64
	for off := offset; ; {
		if stop() {
			return sent, nil
		}
		n, err := io.ReadFull(f, buf)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			return sent, err
		}
		final := off+int64(n) >= b.Size
		if err != nil && !final {
			// Without this, a short file would be sent as empty chunks forever.
			return sent, fmt.Errorf("outbox file %s ends at byte %d, before the %d bytes sealed", filepath.Base(f.Name()), off+int64(n), b.Size)
		}
		if err := protocol.WriteMessage(w, &protocol.Chunk{Seq: b.Seq, Offset: uint64(off), Total: uint64(b.Size), Final: final, Data: buf[:n]}); err != nil {
			return sent, err
		}
		off += int64(n)
		sent += int64(n)
		progress(off - offset)
		if final {
			return sent, nil
		}
	}
}

// readAcks reads the hub's answers: the HelloOK (handed to the sender on
// helloOK) or a refusal, then an Ack per bundle, a BlobNeed per BlobQuery, a
// BlobAck per attachment, the hub bundles, and Bye. Attachments the hub
// answers before their last chunk (refused, or held already) go into
// answered, so that the sender stops sending them.
func (a *Agent) readAcks(r *bufio.Reader, helloOK chan<- *protocol.HelloOK, needs chan<- *protocol.BlobNeed, answered *sync.Map, res *SyncResult) error {
	msg, err := protocol.ReadMessage(r)
	if err != nil {
		return fmt.Errorf("read hub answer: %w", err)
	}
	ok, isOK := msg.(*protocol.HelloOK)
	if !isOK {
		return hubError(msg)
	}
	if err := a.forgetEnrolSecret(); err != nil {
		return err
	}
	if ok.HubHWM > 0 {
		// The sender removes their outbox files, once it no longer reads
		// them.
		if err := a.markAcked(ok.HubHWM, "", ""); err != nil {
			return err
		}
	}
	helloOK <- ok
	for {
		msg, err := protocol.ReadMessage(r)
		if err != nil {
			return fmt.Errorf("read from hub: %w", err)
		}
		switch m := msg.(type) {
		case *protocol.Ack:
			switch m.State {
			case protocol.AckRefused:
				// The hub did not keep it and the same bytes will not do:
				// keep the records unsynced and say so.
				return fmt.Errorf("hub refused bundle %d: %s", m.Seq, m.Reason)
			case protocol.AckHeld:
				// Kept, but applied only once the bundles before it arrive:
				// not acknowledged yet.
				continue
			}
			if err := a.markAcked(m.Seq, m.State, m.Reason); err != nil {
				return err
			}
			a.removeOutbox(m.Seq)
		case *protocol.DownBundle:
			// Applied durably; the next hello says what arrived, so there
			// is nothing to acknowledge here.
			b, err := a.openDown(bytes.NewReader(m.Data))
			if err != nil {
				return fmt.Errorf("bundle from hub: %w", err)
			}
			if err := a.applyDown(b); err != nil {
				return err
			}
			res.DownApplied++
		case *protocol.BlobNeed:
			for _, ref := range m.Refused {
				a.log.Warn("hub refused an attachment", "sha256", ref.Hash, "reason", ref.Reason)
			}
			// One answer per query, and the buffer holds as many as were
			// sent; blocking here on an answer nobody asked for would hang
			// the sync.
			select {
			case needs <- m:
			default:
				return errors.New("hub sent an attachment answer nobody asked for")
			}
		case *protocol.BlobAck:
			answered.Store(m.Hash, true)
			if err := a.blobDelivered(m); err != nil {
				return err
			}
		case *protocol.Bye:
			return nil
		default:
			return hubError(msg)
		}
	}
}

// explainHubClose says in words why the hub closed the connection, where
// quic-go would only say "Application error 0x1 (remote)".
func explainHubClose(err error) error {
	var ae *quic.ApplicationError
	if !errors.As(err, &ae) || !ae.Remote {
		return err
	}
	switch ae.ErrorCode {
	case protocol.SessionSuperseded:
		return errors.New("the hub ended this session: a newer connection with this agent's key took over (is a copy of this agent running elsewhere?)")
	case protocol.SessionRevoked:
		return errors.New("the hub revoked this agent during the session; ask the hub operator for a new enrolment")
	}
	return err
}

func hubError(msg protocol.Message) error {
	if e, ok := msg.(*protocol.Error); ok {
		return fmt.Errorf("hub refused: %s (%s)", e.Message, e.Code)
	}
	return fmt.Errorf("hub sent an unexpected %T", msg)
}

// forgetEnrolSecret drops the one-time secret once the hub has accepted the
// agent: it is burnt at the hub and worthless to anyone who finds it here.
func (a *Agent) forgetEnrolSecret() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.id.EnrolSecret == "" {
		return nil
	}
	id := a.id
	id.EnrolSecret = ""
	if err := writeIdentity(a.dir, id); err != nil {
		return err
	}
	// Only this field changes: other fields of a.id are read without mu.
	a.id.EnrolSecret = ""
	return nil
}

func (a *Agent) oldestUnsynced(txn *memdb.Txn) (time.Time, error) {
	st, err := a.syncPoints(txn)
	if err != nil {
		return time.Time{}, err
	}
	for r, err := range ledger.RecordsOf(txn).OfAgent(a.id.AgentID, st.acked+1) {
		if err != nil {
			return time.Time{}, err
		}
		return r.At, nil
	}
	return time.Time{}, nil
}

func (a *Agent) recordSyncOutcome(start time.Time, res SyncResult, syncErr error) error {
	return a.led.Write(func(tx *ledger.Txn) error {
		if syncErr == nil {
			// Left for later (budget spent, records only): `agent status`
			// says so, or the unsynced records would go unexplained.
			note := ""
			if res.Deferred != "" {
				note = start.UTC().Format(time.RFC3339) + " " + res.Deferred
			}
			if err := tx.Put(ledger.TableMeta, &ledger.Meta{Key: metaDeferred, Value: note}); err != nil {
				return err
			}
			if res.LinkBytes == 0 {
				// Nothing reached the hub: that is no sync, and the last
				// one stays the last one.
				return nil
			}
		}
		if res.LinkBytes > 0 {
			key := metaLinkBytes + start.UTC().Format(time.DateOnly)
			used, err := metaInt(tx.Txn, key)
			if err != nil {
				return err
			}
			if err := tx.Put(ledger.TableMeta, &ledger.Meta{Key: key, Value: strconv.FormatInt(used+res.LinkBytes, 10)}); err != nil {
				return err
			}
		}
		if syncErr != nil {
			if err := tx.Put(ledger.TableMeta, &ledger.Meta{Key: metaLastError, Value: syncErr.Error()}); err != nil {
				return err
			}
			return tx.Put(ledger.TableMeta, &ledger.Meta{Key: metaLastErrorAt, Value: start.UTC().Format(time.RFC3339)})
		}
		for k, v := range map[string]string{
			metaLastSync: start.UTC().Format(time.RFC3339), metaLastSyncTook: res.Took.Round(time.Millisecond).String(),
			metaLastError: "", metaLastErrorAt: "",
		} {
			if err := tx.Put(ledger.TableMeta, &ledger.Meta{Key: k, Value: v}); err != nil {
				return err
			}
		}
		return nil
	})
}

// metaLinkBytes + a UTC date counts the bytes syncs put on the link that day.
const metaLinkBytes = "link_bytes:"

// budgetLeft returns what today's link budget still allows (a large number
// when there is no budget).
func (a *Agent) budgetLeft(budget int64) (int64, error) {
	if budget <= 0 {
		return math.MaxInt64 / 2, nil
	}
	var used int64
	err := a.led.Read(func(txn *memdb.Txn) error {
		var err error
		used, err = metaInt(txn, metaLinkBytes+a.now().UTC().Format(time.DateOnly))
		return err
	})
	return budget - used, err
}

func metaInt(txn *memdb.Txn, key string) (int64, error) {
	obj, err := txn.First(ledger.TableMeta, ledger.IndexID, key)
	if err != nil || obj == nil {
		return 0, err
	}
	n, _ := strconv.ParseInt(obj.(*ledger.Meta).Value, 10, 64)
	return n, nil
}

// ReplyTimeout bounds the wait for each message from the hub. Applying a
// full bundle takes the hub well under a second; the rest is the link.
const ReplyTimeout = 5 * time.Minute

// deadlineReader renews the stream's read deadline before every read:
// keep-alives hold a connection open even if the hub's side of the session
// hangs.
type deadlineReader struct{ s *quic.Stream }

func (d deadlineReader) Read(p []byte) (int, error) {
	d.s.SetReadDeadline(time.Now().Add(ReplyTimeout))
	return d.s.Read(p)
}
