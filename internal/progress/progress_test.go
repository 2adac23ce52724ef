package progress

import (
	"bytes"
	"testing"
	"time"
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

// TestMeter checks the rate and time left through a resumed first phase
// and a second phase with its own total.
func TestMeter(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := start
	m := &Meter{now: func() time.Time { return now }}
	for _, step := range []struct {
		at          time.Duration
		done, total int64
		want        Reading
	}{
		// Resumed at 600 kB: those bytes crossed in an earlier session.
		{0, 600_000, 1_000_000, Reading{Done: 600_000, Total: 1_000_000}},
		{500 * time.Millisecond, 650_000, 1_000_000, Reading{Done: 650_000, Total: 1_000_000}},
		{2 * time.Second, 800_000, 1_000_000, Reading{Done: 800_000, Total: 1_000_000, Rate: 100_000, Left: 2 * time.Second}},
		{3 * time.Second, 1_000_000, 1_000_000, Reading{Done: 1_000_000, Total: 1_000_000, Rate: 400_000.0 / 3}},
		// Done: waiting for the other end does not lower the rate.
		{9 * time.Second, 1_000_000, 1_000_000, Reading{Done: 1_000_000, Total: 1_000_000, Rate: 400_000.0 / 3}},
		// Attachments: a new total starts a new phase.
		{9 * time.Second, 0, 5_000_000, Reading{Done: 0, Total: 5_000_000}},
		{13 * time.Second, 1_000_000, 5_000_000, Reading{Done: 1_000_000, Total: 5_000_000, Rate: 250_000, Left: 16 * time.Second}},
	} {
		now = start.Add(step.at)
		m.Update(step.done, step.total)
		if got := m.Read(); got != step.want {
			t.Errorf("at %v, %d of %d: got %+v, want %+v", step.at, step.done, step.total, got, step.want)
		}
	}
	var zero Meter
	if got := zero.Read(); got != (Reading{}) {
		t.Errorf("zero meter reads %+v", got)
	}
	if got, want := (Reading{Done: 4 << 20, Total: 16 << 20, Rate: 600 << 10, Left: 20 * time.Second}).String(),
		"4.0 MB of 16.0 MB (25 %), 600.0 kB/s, about 20s left"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}
