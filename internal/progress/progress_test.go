package progress

import (
	"bytes"
	"testing"
)

func TestBytes(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"}, {1023, "1023 B"}, {1024, "1.0 kB"}, {1536, "1.5 kB"},
		{20 << 20, "20.0 MB"}, {3 << 30, "3.0 GB"},
	} {
		if got := Bytes(tc.n); got != tc.want {
			t.Errorf("Bytes(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

func TestBarIsQuietOffTerminal(t *testing.T) {
	var buf bytes.Buffer
	b := New(&buf, "upload")
	b.Update(10, 100)
	b.Done()
	if buf.Len() != 0 {
		t.Fatalf("drew %q on a non-terminal", buf.String())
	}
}
