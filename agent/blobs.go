package agent

import (
	"cmp"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

// blobMetaPrefix marks, in the meta table, attachments the hub holds.
const blobMetaPrefix = "blob:"

// pendingBlobs returns the attachments of sealed records that the hub has
// not confirmed holding, smallest first, so that one large video does not
// hold back a dozen waybill scans on a slow link.
func (a *Agent) pendingBlobs() ([]protocol.BlobRef, error) {
	var out []protocol.BlobRef
	err := a.led.Read(func(txn *memdb.Txn) error {
		pts, err := a.syncPoints(txn)
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for r, err := range ledger.RecordsOf(txn).OfAgent(a.id.AgentID, 0) {
			if err != nil {
				return err
			}
			if r.Seq > pts.sealed {
				break
			}
			for _, att := range r.Attachments {
				if seen[att.SHA256] {
					continue
				}
				seen[att.SHA256] = true
				held, err := txn.First(ledger.TableMeta, ledger.IndexID, blobMetaPrefix+att.SHA256)
				if err != nil {
					return err
				}
				if held == nil {
					out = append(out, protocol.BlobRef{Hash: att.SHA256, Size: att.Size})
				}
			}
		}
		return nil
	})
	slices.SortStableFunc(out, func(x, y protocol.BlobRef) int { return cmp.Compare(x.Size, y.Size) })
	return out, err
}

// sendBlobs sends the attachments offered in offers that the hub needs,
// each from the offset the hub holds, as far as budget bytes allow
// (negative: no limit), and returns the bytes sent. The hub's answers come
// on needs, one per offer, in order. With early set, an offer's attachments
// go out from their start before its answer arrives (no upload was cut
// off, so the hub holds no part of one); the answer then stops those the
// hub holds already. An attachment the hub answers mid-upload (answered:
// refused, or held) stops too.
func (a *Agent) sendBlobs(w io.Writer, offers [][]protocol.BlobRef, early bool, needs <-chan *protocol.BlobNeed, readErr <-chan error, answered *sync.Map, progress Progress, budget int64) (int64, error) {
	if budget == 0 {
		return 0, nil
	}
	var total, sent int64
	for _, batch := range offers {
		for _, b := range batch {
			total += b.Size
		}
	}
	for _, batch := range offers {
		var need *protocol.BlobNeed
		wait := func() error {
			select {
			case need = <-needs:
				return nil
			case err := <-readErr:
				if err == nil {
					err = errors.New("hub ended the session")
				}
				return err
			}
		}
		poll := func() {
			if need == nil {
				select {
				case need = <-needs:
				default:
				}
			}
		}
		if !early {
			if err := wait(); err != nil {
				return sent, err
			}
		}
		for _, b := range batch {
			poll()
			want, ok := protocol.BlobWant{Hash: b.Hash}, true
			if need != nil {
				want, ok = wanted(need, b.Hash)
			}
			size := b.Size - want.Offset
			if !ok {
				total -= b.Size
				continue
			}
			if budget >= 0 && sent+size > budget {
				total -= b.Size
				continue // waits for a sync with budget left
			}
			total -= want.Offset // what the hub holds of it already is not sent again
			stop := func() bool {
				poll()
				if _, done := answered.Load(b.Hash); done {
					return true
				}
				if need == nil {
					return false
				}
				_, still := wanted(need, b.Hash)
				return !still
			}
			n, err := a.sendBlob(w, want, stop, func(done int64) {
				if progress != nil {
					progress(sent+done, total)
				}
			})
			sent += n
			if err != nil {
				return sent, fmt.Errorf("send attachment %s: %w", want.Hash, err)
			}
		}
		if need == nil {
			if err := wait(); err != nil {
				return sent, err
			}
		}
		// What the hub neither wants nor refuses, it holds already.
		held := map[string]bool{}
		for _, b := range batch {
			held[b.Hash] = true
		}
		for _, w := range need.Blobs {
			delete(held, w.Hash)
		}
		for _, r := range need.Refused {
			delete(held, r.Hash)
		}
		for h := range held {
			if err := a.blobDelivered(&protocol.BlobAck{Hash: h, State: protocol.AckDuplicate}); err != nil {
				return sent, err
			}
		}
	}
	return sent, nil
}

// wanted says whether the hub's answer asks for the attachment hash, and
// from where.
func wanted(need *protocol.BlobNeed, hash string) (protocol.BlobWant, bool) {
	for _, w := range need.Blobs {
		if w.Hash == hash {
			return w, true
		}
	}
	return protocol.BlobWant{}, false
}

// sendBlob streams one attachment from want.Offset in chunks, until its end
// or until stop says the hub does not want the rest.
func (a *Agent) sendBlob(w io.Writer, want protocol.BlobWant, stop func() bool, progress func(int64)) (int64, error) {
	f, err := a.attachments.Open(want.Hash)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if _, err := f.Seek(want.Offset, io.SeekStart); err != nil {
		return 0, err
	}
	c := &protocol.BlobChunk{Total: uint64(st.Size())}
	if _, err := hex.Decode(c.Hash[:], []byte(want.Hash)); err != nil {
		return 0, err
	}
	buf := make([]byte, ChunkSize)
	var sent int64
	for off := want.Offset; ; {
		if stop() {
			return sent, nil
		}
		n, err := io.ReadFull(f, buf)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			return sent, err
		}
		c.Offset, c.Data = uint64(off), buf[:n]
		c.Final = off+int64(n) >= st.Size()
		if err := protocol.WriteMessage(w, c); err != nil {
			return sent, err
		}
		off += int64(n)
		sent += int64(n)
		progress(sent)
		if c.Final {
			return sent, nil
		}
	}
}

// blobDelivered records the hub's word on an attachment.
func (a *Agent) blobDelivered(ack *protocol.BlobAck) error {
	if ack.State == protocol.AckRefused {
		a.log.Warn("hub refused an attachment", "sha256", ack.Hash, "reason", ack.Reason)
		return nil // offered again next time; the hub's feedback says why
	}
	return a.led.Write(func(tx *ledger.Txn) error {
		return tx.Put(ledger.TableMeta, &ledger.Meta{Key: blobMetaPrefix + ack.Hash, Value: ack.State})
	})
}
