package agent

import (
	"cmp"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"

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
		it, err := txn.LowerBound(ledger.TableRecords, ledger.IndexSeq, a.id.AgentID, uint64(0))
		if err != nil {
			return err
		}
		for obj := it.Next(); obj != nil; obj = it.Next() {
			r := obj.(*protocol.Record)
			if r.Agent != a.id.AgentID || r.Seq > pts.sealed {
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

// sendBlobs offers pending attachments to the hub and sends those it needs,
// resuming each from the offset the hub holds, as far as budget bytes allow
// (negative: no limit). It returns the bytes sent.
func (a *Agent) sendBlobs(w io.Writer, needs <-chan *protocol.BlobNeed, readErr <-chan error, progress Progress, budget int64) (int64, error) {
	if budget == 0 {
		return 0, nil
	}
	pending, err := a.pendingBlobs()
	if err != nil || len(pending) == 0 {
		return 0, err
	}
	var total, sent int64
	for _, b := range pending {
		total += b.Size
	}
	for batch := range slices.Chunk(pending, protocol.MaxBlobQuery) {
		if err := protocol.WriteMessage(w, &protocol.BlobQuery{Blobs: batch}); err != nil {
			return sent, fmt.Errorf("offer attachments: %w", err)
		}
		var need *protocol.BlobNeed
		select {
		case need = <-needs:
		case err := <-readErr:
			if err == nil {
				err = errors.New("hub ended the session")
			}
			return sent, err
		}
		held := map[string]bool{}
		for _, b := range batch {
			held[b.Hash] = true
			total -= b.Size // counted back below if it is sent
		}
		for _, want := range need.Blobs {
			delete(held, want.Hash)
			size := sizeOf(batch, want.Hash) - want.Offset
			if budget >= 0 && sent+size > budget {
				continue // waits for a sync with budget left
			}
			// What the hub holds of it already is not sent again.
			total += size
			n, err := a.sendBlob(w, want, func(done int64) {
				if progress != nil {
					progress(sent+done, total)
				}
			})
			sent += n
			if err != nil {
				return sent, fmt.Errorf("send attachment %s: %w", want.Hash, err)
			}
		}
		for _, r := range need.Refused {
			delete(held, r.Hash)
		}
		// What the hub neither wants nor refuses, it holds already.
		for h := range held {
			if err := a.blobDelivered(&protocol.BlobAck{Hash: h, State: protocol.AckDuplicate}); err != nil {
				return sent, err
			}
		}
	}
	return sent, nil
}

// sendBlob streams one attachment from want.Offset in chunks.
func (a *Agent) sendBlob(w io.Writer, want protocol.BlobWant, progress func(int64)) (int64, error) {
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

func sizeOf(refs []protocol.BlobRef, hash string) int64 {
	for _, r := range refs {
		if r.Hash == hash {
			return r.Size
		}
	}
	return 0
}
