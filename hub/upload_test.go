package hub

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"fieldsync/internal/ledger"
	"fieldsync/protocol"
)

// TestBlobUploadsArePerAgent: two agents uploading the same attachment at
// once each resume their own partial upload, neither truncates the other's,
// and once one has finished, the blob counts as held for the other too.
func TestBlobUploadsArePerAgent(t *testing.T) {
	th := newTestHub(t)
	a := th.site("S-A", "Plant A", "Kyiv", "energy")
	b := th.site("S-B", "Plant B", "Lviv", "energy")

	content := bytes.Repeat([]byte("signed waybill scan "), 300)
	h := sha256.Sum256(content)
	sum := hex.EncodeToString(h[:])
	third := len(content) / 3

	type session struct {
		up  *upload
		out *bytes.Buffer
	}
	open := func(agentID string) session {
		out := new(bytes.Buffer)
		up := &upload{h: th.Hub, agent: &ledger.Agent{ID: agentID}, w: out,
			wanted: map[string]int64{sum: int64(len(content))}, offered: map[string]bool{sum: true}}
		t.Cleanup(up.close)
		return session{up, out}
	}
	sa, sb := open(a.id), open(b.id)

	send := func(s session, from, to int) {
		t.Helper()
		c := &protocol.BlobChunk{Hash: h, Offset: uint64(from), Total: uint64(len(content)),
			Final: to == len(content), Data: content[from:to]}
		if err := s.up.blobChunk(c); err != nil {
			t.Fatalf("chunk [%d, %d): %v", from, to, err)
		}
	}
	// need asks which attachments the hub needs from s and from which offset.
	need := func(s session) *protocol.BlobNeed {
		t.Helper()
		s.out.Reset()
		if err := s.up.blobQuery(&protocol.BlobQuery{Blobs: []protocol.BlobRef{{Hash: sum, Size: int64(len(content))}}}); err != nil {
			t.Fatalf("blob query: %v", err)
		}
		m, err := protocol.ReadMessage(s.out)
		if err != nil {
			t.Fatal(err)
		}
		n, ok := m.(*protocol.BlobNeed)
		if !ok {
			t.Fatalf("answer is a %T, not a BlobNeed", m)
		}
		return n
	}
	offset := func(s session) int64 {
		t.Helper()
		n := need(s)
		if len(n.Blobs) != 1 || len(n.Refused) != 0 {
			t.Fatalf("need %+v, want the attachment once", n)
		}
		return n.Blobs[0].Offset
	}

	send(sa, 0, 2*third)
	send(sb, 0, third) // an upload starting over must not cut a's short
	if got, want := offset(sa), int64(2*third); got != want {
		t.Errorf("a resumes at %d, want %d", got, want)
	}
	if got, want := offset(sb), int64(third); got != want {
		t.Errorf("b resumes at %d, want %d", got, want)
	}

	sa.out.Reset()
	send(sa, 2*third, len(content))
	m, err := protocol.ReadMessage(sa.out)
	if err != nil {
		t.Fatal(err)
	}
	if ack, ok := m.(*protocol.BlobAck); !ok || ack.State != protocol.AckApplied {
		t.Fatalf("a's last chunk answered with %+v, want an applied BlobAck", m)
	}
	if !th.blobs.Has(sum) {
		t.Fatal("the blob is not stored after a's upload")
	}
	if n := need(sb); len(n.Blobs) != 0 || len(n.Refused) != 0 {
		t.Errorf("b is asked for %+v after a delivered the same attachment, want nothing", n)
	}
	if size := th.partialSize(blobPartKey(b.id, sum)); size != 0 {
		t.Errorf("b's partial upload of %d bytes is kept after the blob was stored", size)
	}
	if _, err := os.Stat(filepath.Join(th.dir, partialDir, blobPartKey(b.id, sum)+".part")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("b's partial upload is still there: %v", err)
	}
}

// TestOpenRemovesSharedBlobParts checks that opening a hub removes the
// partial attachment uploads of hubs from before per-agent partial files,
// which nothing would resume, and keeps the per-agent ones.
func TestOpenRemovesSharedBlobParts(t *testing.T) {
	dir := t.TempDir()
	if _, err := Init(dir); err != nil {
		t.Fatal(err)
	}
	sum := strings.Repeat("ab", 32)
	shared := filepath.Join(dir, partialDir, "blob-"+sum+".part")
	own := filepath.Join(dir, partialDir, blobPartKey("A-1", sum)+".part")
	bundle := filepath.Join(dir, partialDir, "A-1-7.part")
	if err := os.MkdirAll(filepath.Dir(shared), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{shared, own, bundle} {
		if err := os.WriteFile(p, []byte("part"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	h, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	if _, err := os.Stat(shared); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("shared partial upload kept (%v)", err)
	}
	for _, p := range []string{own, bundle} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", filepath.Base(p), err)
		}
	}
}

// TestBlobChunksAnsweredEarly: an attachment sent before the hub's answer
// to the offer reached the agent is answered at its first chunk when the
// hub will not take it (no record names it) or holds it already (from
// another agent), and its further chunks, already on their way, are
// dropped without ending the session; one the hub needs is stored.
func TestBlobChunksAnsweredEarly(t *testing.T) {
	th := newTestHub(t)
	a := th.site("S-A", "Plant A", "Kyiv", "energy")
	held := []byte("a waybill scan the hub holds from another site")
	if _, err := th.blobs.Put("waybill.pdf", bytes.NewReader(held)); err != nil {
		t.Fatal(err)
	}
	fresh := bytes.Repeat([]byte("new scan "), 100)
	hash := func(b []byte) [32]byte { return sha256.Sum256(b) }
	hexOf := func(b []byte) string { h := hash(b); return hex.EncodeToString(h[:]) }

	tests := []struct {
		name    string
		content []byte
		named   bool
		want    []string // BlobAck states, in order
		stored  bool
	}{
		{"named nowhere", fresh, false, []string{protocol.AckRefused}, false},
		{"held already", held, true, []string{protocol.AckDuplicate}, true},
		{"needed", fresh, true, []string{protocol.AckApplied}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := new(bytes.Buffer)
			wanted := map[string]int64{}
			if tt.named {
				wanted[hexOf(tt.content)] = int64(len(tt.content))
			}
			up := &upload{h: th.Hub, agent: &ledger.Agent{ID: a.id}, w: out, wanted: wanted,
				offered: map[string]bool{hexOf(tt.content): true}}
			t.Cleanup(up.close)
			half := len(tt.content) / 2
			for _, c := range []*protocol.BlobChunk{
				{Hash: hash(tt.content), Total: uint64(len(tt.content)), Data: tt.content[:half]},
				{Hash: hash(tt.content), Offset: uint64(half), Total: uint64(len(tt.content)), Final: true, Data: tt.content[half:]},
			} {
				if err := up.blobChunk(c); err != nil {
					t.Fatalf("chunk at %d: %v", c.Offset, err)
				}
			}
			var got []string
			for out.Len() > 0 {
				m, err := protocol.ReadMessage(out)
				if err != nil {
					t.Fatal(err)
				}
				ack, ok := m.(*protocol.BlobAck)
				if !ok || ack.Hash != hexOf(tt.content) {
					t.Fatalf("hub answered %+v", m)
				}
				got = append(got, ack.State)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("answers %v, want %v", got, tt.want)
			}
			if th.blobs.Has(hexOf(tt.content)) != tt.stored {
				t.Errorf("stored: %v, want %v", !tt.stored, tt.stored)
			}
		})
	}
}

// TestBlobChunkNotOffered: the hub takes chunks only of attachments offered
// in the session, so that what it keeps about them stays bounded; a chunk
// of another ends the session as malformed.
func TestBlobChunkNotOffered(t *testing.T) {
	th := newTestHub(t)
	a := th.site("S-A", "Plant A", "Kyiv", "energy")
	up := &upload{h: th.Hub, agent: &ledger.Agent{ID: a.id}, w: io.Discard}
	t.Cleanup(up.close)
	data := []byte("scan")
	err := up.blobChunk(&protocol.BlobChunk{Hash: sha256.Sum256(data), Total: uint64(len(data)), Final: true, Data: data})
	var se *sessionError
	if !errors.As(err, &se) || se.code != protocol.CodeMalformed {
		t.Fatalf("chunk of an attachment not offered: %v, want a malformed session", err)
	}
}

// TestHeldBundleAnsweredAtFirstChunk: chunks of a bundle the hub holds
// already (sent before the HelloOK told the agent) are answered once, as a
// duplicate, and none of them is written.
func TestHeldBundleAnsweredAtFirstChunk(t *testing.T) {
	th := newTestHub(t)
	a := th.site("S-A", "Plant A", "Kyiv", "energy")
	out := new(bytes.Buffer)
	up := &upload{h: th.Hub, agent: &ledger.Agent{ID: a.id, BundleHWM: 3}, w: out}
	t.Cleanup(up.close)
	for _, c := range []*protocol.Chunk{
		{Seq: 2, Offset: 0, Total: 8, Data: []byte("bund")},
		{Seq: 2, Offset: 4, Total: 8, Final: true, Data: []byte("le 2")},
	} {
		if err := up.chunk(c); err != nil {
			t.Fatal(err)
		}
	}
	m, err := protocol.ReadMessage(out)
	if ack, ok := m.(*protocol.Ack); err != nil || !ok || ack.Seq != 2 || ack.State != protocol.AckDuplicate {
		t.Fatalf("hub answered %+v (%v), want a duplicate Ack of bundle 2", m, err)
	}
	if out.Len() != 0 {
		t.Errorf("%d more bytes of answers, want one Ack", out.Len())
	}
	if size := th.partialSize(fmt.Sprintf("%s-%d", a.id, 2)); size != 0 {
		t.Errorf("%d bytes of the held bundle written", size)
	}
}
