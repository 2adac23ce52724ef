package hub

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"

	"filippo.io/age"
	"github.com/hashicorp/go-memdb"

	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

// upload is what one sync session is receiving: bundles chunk by chunk, then
// the attachments their records name. Each chunk is synced to a partial file
// before the next is read, so the partial file's size is the durable offset
// from which an interrupted upload resumes.
type upload struct {
	h     *Hub
	agent *ledger.Agent
	w     io.Writer

	part    *os.File
	partKey string

	// hwm is the agent's bundle high-water mark as this session knows it:
	// chunks of a bundle at or under it are a duplicate, dropped unwritten
	// (the agent sent them before the HelloOK told it).
	hwm uint64
	// dupAcked are the duplicate bundles already answered in this session.
	dupAcked map[uint64]bool

	// wanted holds the attachments the agent's records name, by hash, with
	// their sizes: the only attachments the hub takes from this agent.
	// scannedTo is the highest record seq read into it: the records
	// applied since are read when a chunk names an attachment it lacks.
	wanted    map[string]int64
	scannedTo uint64
	// offered are the attachments the agent offered in this session (at
	// most protocol.MaxBlobOffers): the only ones whose chunks it may send.
	offered map[string]bool
	// answered are attachments refused, or found held already, before
	// their last chunk: their further chunks, already on their way, are
	// dropped.
	answered map[string]bool
}

func (u *upload) close() {
	if u.part != nil {
		u.part.Close()
		u.part = nil
	}
}

// partial opens (or keeps open) the partial file for key.
func (u *upload) partial(key string) (*os.File, error) {
	if u.part != nil && u.partKey == key {
		return u.part, nil
	}
	u.close()
	f, err := os.OpenFile(filepath.Join(u.h.dir, partialDir, key+".part"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	u.part, u.partKey = f, key
	return f, nil
}

// chunk takes part of a bundle; the last chunk hands the bundle to intake
// and acknowledges it. A bundle the hub holds already is answered at its
// first chunk, and none of it is written.
func (u *upload) chunk(c *protocol.Chunk) error {
	if c.Seq <= max(u.hwm, u.agent.BundleHWM) {
		if u.dupAcked[c.Seq] {
			return nil
		}
		if u.dupAcked == nil {
			u.dupAcked = map[uint64]bool{}
		}
		u.dupAcked[c.Seq] = true
		return protocol.WriteMessage(u.w, &protocol.Ack{Seq: c.Seq, State: protocol.AckDuplicate,
			Reason: "the hub holds this bundle already"})
	}
	f, err := u.partial(fmt.Sprintf("%s-%d", u.agent.ID, c.Seq))
	if err != nil {
		return err
	}
	if err := writeAt(f, c.Offset, c.Data); err != nil {
		return &sessionError{protocol.CodeMalformed, fmt.Sprintf("bundle %d: %v", c.Seq, err)}
	}
	u.h.metrics.bytesReceived.Add(float64(len(c.Data)))
	if !c.Final {
		return nil
	}
	path := f.Name()
	u.close()
	res, err := u.h.IntakeFile(path)
	var ie *IntakeError
	if err != nil && !errors.As(err, &ie) {
		return fmt.Errorf("intake bundle %d: %w", c.Seq, err)
	}
	// The partial file is done with whatever the outcome: an applied
	// bundle is archived, a refused one must be sent anew.
	os.Remove(path)
	if a, err := u.h.agent(u.agent.ID); err != nil {
		return err
	} else if a != nil {
		u.hwm = a.BundleHWM
	}
	return protocol.WriteMessage(u.w, &protocol.Ack{Seq: c.Seq, State: res.State, Reason: res.Reason})
}

// named returns the size with which a record of the agent names the
// attachment sum, reading the records applied since it last looked (each
// record once per session).
func (u *upload) named(sum string) (int64, bool, error) {
	if size, ok := u.wanted[sum]; ok {
		return size, true, nil
	}
	if u.wanted == nil {
		u.wanted = map[string]int64{}
	}
	var err error
	if u.scannedTo, err = u.h.attachmentsOf(u.agent.ID, u.scannedTo, u.wanted); err != nil {
		return 0, false, err
	}
	size, ok := u.wanted[sum]
	return size, ok, nil
}

// blobQuery answers which offered attachments the hub needs, and from where.
// The agent asks before it sends the bundles whose records name them, so an
// attachment no applied record names yet is wanted too; its chunks are
// taken only once such a record is applied (blobChunk).
func (u *upload) blobQuery(q *protocol.BlobQuery) error {
	if u.offered == nil {
		u.offered = map[string]bool{}
	}
	need := &protocol.BlobNeed{Blobs: []protocol.BlobWant{}}
	for _, b := range q.Blobs {
		if !u.offered[b.Hash] && len(u.offered) >= protocol.MaxBlobOffers {
			return &sessionError{protocol.CodeTooLarge, fmt.Sprintf("more than %d attachments offered in one session", protocol.MaxBlobOffers)}
		}
		u.offered[b.Hash] = true
		size, ok, err := u.named(b.Hash)
		if err != nil {
			return err
		}
		switch {
		case ok && size != b.Size:
			need.Refused = append(need.Refused, protocol.BlobAck{Hash: b.Hash, State: protocol.AckRefused,
				Reason: fmt.Sprintf("the agent's records name this attachment with %d bytes, not %d", size, b.Size)})
		case ok && u.h.blobs.Has(b.Hash):
			// Only for an attachment the agent's records name: whether the
			// hub holds some other file is none of its business.
			// Held already (perhaps from another agent that sent it at the
			// same time): not listed, so the agent counts it as delivered,
			// and what this agent sent of it will not be resumed.
			u.h.removePartial(blobPartKey(u.agent.ID, b.Hash))
		default:
			need.Blobs = append(need.Blobs, protocol.BlobWant{Hash: b.Hash, Offset: u.h.partialSize(blobPartKey(u.agent.ID, b.Hash))})
		}
	}
	return protocol.WriteMessage(u.w, need)
}

// blobPartKey names the partial file of an attachment upload. It is the
// agent's as well as the content's: two agents that send the same
// attachment at once (one scan of a donor's waybill, attached at two sites)
// each resume their own upload, where one shared partial file would be
// truncated by each under the other. The finished blob is stored once,
// under its hash alone, and counts as held for every agent.
func blobPartKey(agentID, sum string) string { return "blob-" + agentID + "-" + sum }

// blobChunk takes part of an attachment; the last chunk verifies the content
// against its hash, stores it, and acknowledges it. An attachment that no
// applied record of the agent names with that size is refused at its first
// chunk, one the hub holds already is acknowledged as a duplicate, and the
// further chunks of either are dropped: the agent sent them before the
// answer reached it.
func (u *upload) blobChunk(c *protocol.BlobChunk) error {
	sum := c.HashHex()
	if !u.offered[sum] {
		return &sessionError{protocol.CodeMalformed, fmt.Sprintf("attachment %s was not offered", sum)}
	}
	if u.answered[sum] {
		return nil
	}
	answer := func(state, reason string) error {
		if u.answered == nil {
			u.answered = map[string]bool{}
		}
		u.answered[sum] = true
		return protocol.WriteMessage(u.w, &protocol.BlobAck{Hash: sum, State: state, Reason: reason})
	}
	if size, ok, err := u.named(sum); err != nil {
		return err
	} else if !ok || uint64(size) != c.Total {
		return answer(protocol.AckRefused, "no applied record of this agent names this attachment with this size; it is offered again once one is")
	}
	if u.h.blobs.Has(sum) {
		// Sent before the hub's answer to the offer said it holds it.
		u.h.removePartial(blobPartKey(u.agent.ID, sum))
		return answer(protocol.AckDuplicate, "")
	}
	f, err := u.partial(blobPartKey(u.agent.ID, sum))
	if err != nil {
		return err
	}
	if err := writeAt(f, c.Offset, c.Data); err != nil {
		return &sessionError{protocol.CodeMalformed, fmt.Sprintf("attachment %s: %v", sum, err)}
	}
	u.h.metrics.bytesReceived.Add(float64(len(c.Data)))
	if !c.Final {
		return nil
	}
	path := f.Name()
	u.close()
	ack := &protocol.BlobAck{Hash: sum, State: protocol.AckApplied}
	in, err := os.Open(path)
	if err != nil {
		return err
	}
	_, err = u.h.blobs.PutVerified(in, sum)
	in.Close()
	if err != nil {
		ack.State, ack.Reason = protocol.AckRefused, err.Error()
	}
	os.Remove(path) // kept or refused, the partial upload is done
	return protocol.WriteMessage(u.w, ack)
}

// attachmentsOf adds to out the attachments named by the records of
// agentID after record seq from, and returns the highest seq it read.
func (h *Hub) attachmentsOf(agentID string, from uint64, out map[string]int64) (uint64, error) {
	err := h.led.Read(func(txn *memdb.Txn) error {
		for r, err := range ledger.RecordsOf(txn).OfAgent(agentID, from+1) {
			if err != nil {
				return err
			}
			for _, a := range r.Attachments {
				out[a.SHA256] = a.Size
			}
			from = r.Seq
		}
		return nil
	})
	return from, err
}

// removePartial drops the partial file for key, if there is one.
func (h *Hub) removePartial(key string) {
	if err := os.Remove(filepath.Join(h.dir, partialDir, key+".part")); err != nil && !errors.Is(err, os.ErrNotExist) {
		h.log.Warn("partial upload not removed", "file", key+".part", "err", err)
	}
}

func (h *Hub) partialSize(key string) int64 {
	st, err := os.Stat(filepath.Join(h.dir, partialDir, key+".part"))
	if err != nil {
		return 0
	}
	return st.Size()
}

// writeAt puts data at offset in a partial file and syncs it. Data may
// start before the end of what is held (a resend after an interruption),
// never after it.
func writeAt(f *os.File, offset uint64, data []byte) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if int64(offset) > st.Size() {
		return fmt.Errorf("data starts at %d but the hub holds only %d bytes", offset, st.Size())
	}
	if err := f.Truncate(int64(offset)); err != nil {
		return err
	}
	if _, err := f.WriteAt(data, int64(offset)); err != nil {
		return err
	}
	return f.Sync()
}

// attachmentFile matches AGENT-att-SHA256.age, an attachment carried by hand
// (protocol.AttachmentFileInfix).
var attachmentFile = regexp.MustCompile(`^(.+)` + protocol.AttachmentFileInfix + `([0-9a-f]{64})\.age$`)

// ImportFile applies one file carried by hand: a bundle, or an attachment
// named by the records of the agent its name gives.
func (h *Hub) ImportFile(path string) (Result, error) {
	m := attachmentFile.FindStringSubmatch(filepath.Base(path))
	if m == nil {
		res, err := h.IntakeFile(path)
		if err == nil && (res.State == protocol.AckApplied || res.State == protocol.AckDuplicate) {
			// An upload of the same bundle cut off earlier will not be
			// resumed: the agent sends only bundles after the hub's mark.
			h.removePartial(fmt.Sprintf("%s-%d", res.Agent, res.Seq))
		}
		return res, err
	}
	res := Result{File: filepath.Base(path), Agent: m[1]}
	agentID, sum := m[1], m[2]
	if h.blobs.Has(sum) {
		res.State, res.Reason = protocol.AckDuplicate, "attachment "+sum[:12]+"… is held already"
		return res, nil
	}
	wanted := map[string]int64{}
	if _, err := h.attachmentsOf(agentID, 0, wanted); err != nil {
		return res, err
	}
	if _, ok := wanted[sum]; !ok {
		return h.refuse(res, protocol.ReasonUnknownSender, fmt.Sprintf("no record of agent %s names attachment %s; import its bundles first", agentID, sum))
	}
	f, err := os.Open(path)
	if err != nil {
		return res, fmt.Errorf("open attachment %s: %w", path, err)
	}
	defer f.Close()
	r, err := age.Decrypt(f, h.ageID)
	if err != nil {
		return h.refuse(res, protocol.ReasonNotForUs, fmt.Sprintf("attachment cannot be decrypted by this hub: %v", err))
	}
	if _, err := h.blobs.PutVerified(r, sum); err != nil {
		return h.refuse(res, protocol.ReasonTampered, fmt.Sprintf("attachment %s: %v", sum, err))
	}
	res.State = protocol.AckApplied
	return res, nil
}
