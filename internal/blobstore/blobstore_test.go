package blobstore

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func TestPutAndOpen(t *testing.T) {
	s := New(t.TempDir())
	for _, tc := range []struct {
		name, content string
	}{
		{"scan", "%PDF-1.7 waybill WB-2026-1142"},
		{"empty", ""},
		{"same content again", "%PDF-1.7 waybill WB-2026-1142"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			att, err := s.Put("waybill.pdf", strings.NewReader(tc.content))
			if err != nil {
				t.Fatal(err)
			}
			if att.SHA256 != sum(tc.content) || att.Size != int64(len(tc.content)) || att.Name != "waybill.pdf" {
				t.Fatalf("got %+v", att)
			}
			if !s.Has(att.SHA256) {
				t.Fatal("Has is false after Put")
			}
			f, err := s.Open(att.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, _ := io.ReadAll(f)
			if string(got) != tc.content {
				t.Fatalf("read back %q", got)
			}
		})
	}
}

func TestPutVerified(t *testing.T) {
	s := New(t.TempDir())
	for _, tc := range []struct {
		name, content, claim, wantErr string
	}{
		{"matches", "photo bytes", sum("photo bytes"), ""},
		{"does not match", "forged bytes", sum("photo bytes 2"), "not the"},
		{"not a hash", "x", "../../etc/passwd", "not a SHA-256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.PutVerified(strings.NewReader(tc.content), tc.claim)
			if tc.wantErr == "" {
				if err != nil || !s.Has(tc.claim) {
					t.Fatalf("err %v, has %v", err, s.Has(tc.claim))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
			}
			if s.Has(tc.claim) || s.Has(sum(tc.content)) {
				t.Fatal("refused content was kept")
			}
		})
	}
	// Nothing half-written is left behind.
	filepath.WalkDir(s.dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".incoming") {
			t.Errorf("temporary file left: %s", p)
		}
		return nil
	})
}
