package protocol

import (
	"encoding/hex"
)

// Attachments (scans, photos) travel apart from bundles, after the records
// that name them, in their own messages: the agent offers the attachments
// the hub may lack (BlobQuery) right behind its Hello, the hub answers with
// those it needs and how much of each it already holds (BlobNeed) right
// behind its HelloOK, so the answer costs no round trip of its own; the
// agent sends its bundles, then the attachments in chunks (BlobChunk), and
// the hub acknowledges each once it has verified the content against its
// SHA-256 and made it durable (BlobAck). The hash is authenticated by the
// signed record that names the attachment: the hub takes an attachment's
// chunks only once such a record is applied, and refuses (BlobAck) one that
// no record names.

// AttachmentFileInfix names an attachment carried by hand:
// AGENT-att-SHA256.age, the attachment's bytes encrypted to the hub with
// age, like a bundle. The hub takes it only if a record of AGENT names the
// hash, and only if the content matches it.
const AttachmentFileInfix = "-att-"

// Limits on attachment messages.
const (
	// MaxBlobQuery bounds the attachments offered in one BlobQuery.
	MaxBlobQuery = 512
	// MaxBlobOffers bounds the attachments offered in one session, and so
	// what a hub keeps about them; an agent with more offers the rest in
	// its next session.
	MaxBlobOffers = 64 * MaxBlobQuery
)

// BlobRef names an attachment by content hash and size.
type BlobRef struct {
	Hash string `json:"sha256"`
	Size int64  `json:"size"`
}

// BlobQuery offers attachments the hub may lack.
type BlobQuery struct {
	Blobs []BlobRef `json:"blobs"`
}

// BlobWant is one attachment the hub needs, from Offset on (what it already
// holds durably of an interrupted upload).
type BlobWant struct {
	Hash   string `json:"sha256"`
	Offset int64  `json:"offset"`
}

// BlobNeed answers a BlobQuery: the attachments to send; those not listed
// the hub has, or will not take (see Refused: an attachment a record names
// with another size).
type BlobNeed struct {
	Blobs   []BlobWant `json:"blobs"`
	Refused []BlobAck  `json:"refused,omitempty"`
}

// BlobChunk carries bytes [Offset, Offset+len(Data)) of an attachment.
type BlobChunk struct {
	Hash   [32]byte
	Offset uint64
	Total  uint64
	Final  bool
	Data   []byte
}

// BlobAck says an attachment is durably at the hub (State AckApplied or
// AckDuplicate) or refused with a reason.
type BlobAck struct {
	Hash   string `json:"sha256"`
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
}

// Type implements Message.
func (*BlobQuery) Type() MessageType { return MsgBlobQuery }

// Type implements Message.
func (*BlobNeed) Type() MessageType { return MsgBlobNeed }

// Type implements Message.
func (*BlobChunk) Type() MessageType { return MsgBlobChunk }

// Type implements Message.
func (*BlobAck) Type() MessageType { return MsgBlobAck }

// HashHex returns the chunk's attachment hash as lowercase hex.
func (c *BlobChunk) HashHex() string { return hex.EncodeToString(c.Hash[:]) }

func checkBlobHash(t MessageType, h string) error {
	if !hashRE.MatchString(h) {
		return msgErr(t, CodeMalformed, "%q is not a lowercase hex SHA-256", truncate(h, 80))
	}
	return nil
}

func (q *BlobQuery) validate() error {
	if len(q.Blobs) > MaxBlobQuery {
		return msgErr(MsgBlobQuery, CodeTooLarge, "%d attachments, over the %d limit", len(q.Blobs), MaxBlobQuery)
	}
	for _, b := range q.Blobs {
		if err := checkBlobHash(MsgBlobQuery, b.Hash); err != nil {
			return err
		}
		if b.Size < 0 || b.Size > MaxAttachmentSize {
			return msgErr(MsgBlobQuery, CodeTooLarge, "attachment %s of %d bytes is over the %d-byte limit", b.Hash, b.Size, int64(MaxAttachmentSize))
		}
	}
	return nil
}

func (n *BlobNeed) validate() error {
	if len(n.Blobs)+len(n.Refused) > MaxBlobQuery {
		return msgErr(MsgBlobNeed, CodeTooLarge, "%d attachments, over the %d limit", len(n.Blobs)+len(n.Refused), MaxBlobQuery)
	}
	for _, b := range n.Blobs {
		if err := checkBlobHash(MsgBlobNeed, b.Hash); err != nil {
			return err
		}
		if b.Offset < 0 || b.Offset > MaxAttachmentSize {
			return msgErr(MsgBlobNeed, CodeMalformed, "offset %d of attachment %s is out of range", b.Offset, b.Hash)
		}
	}
	for i := range n.Refused {
		if err := n.Refused[i].validate(); err != nil {
			return err
		}
	}
	return nil
}

func (c *BlobChunk) validate() error {
	end := c.Offset + uint64(len(c.Data))
	switch {
	case c.Total > MaxAttachmentSize:
		return msgErr(MsgBlobChunk, CodeTooLarge, "attachment of %d bytes is over the %d-byte limit", c.Total, int64(MaxAttachmentSize))
	case len(c.Data) > MaxChunk:
		return msgErr(MsgBlobChunk, CodeTooLarge, "%d data bytes, over the %d-byte limit", len(c.Data), MaxChunk)
	case c.Offset > c.Total || end > c.Total:
		return msgErr(MsgBlobChunk, CodeMalformed, "bytes %d to %d run past the attachment's %d", c.Offset, end, c.Total)
	case c.Final && end != c.Total:
		return msgErr(MsgBlobChunk, CodeMalformed, "final chunk ends at %d, not at the attachment's end %d", end, c.Total)
	case !c.Final && end == c.Total:
		return msgErr(MsgBlobChunk, CodeMalformed, "chunk ends the attachment but is not marked final")
	}
	return nil
}

func (a *BlobAck) validate() error {
	if err := checkBlobHash(MsgBlobAck, a.Hash); err != nil {
		return err
	}
	switch a.State {
	case AckApplied, AckDuplicate, AckRefused:
	default:
		return msgErr(MsgBlobAck, CodeMalformed, "state %q is not one of applied, duplicate, refused", a.State)
	}
	if err := checkText("reason", a.Reason, MaxNoteLen); err != nil {
		return msgErr(MsgBlobAck, CodeMalformed, "%v", err)
	}
	return nil
}

func decodeBlobChunk(p []byte) (*BlobChunk, error) {
	if len(p) < 32 {
		return nil, msgErr(MsgBlobChunk, CodeMalformed, "bad header")
	}
	c := &BlobChunk{}
	copy(c.Hash[:], p[:32])
	off, rest, ok1 := uvarint(p[32:])
	total, rest, ok2 := uvarint(rest)
	if !ok1 || !ok2 || len(rest) < 1 {
		return nil, msgErr(MsgBlobChunk, CodeMalformed, "bad header")
	}
	if rest[0] > 1 {
		return nil, msgErr(MsgBlobChunk, CodeMalformed, "final flag is %d, not 0 or 1", rest[0])
	}
	c.Offset, c.Total, c.Final, c.Data = off, total, rest[0] == 1, rest[1:]
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}
