// Package progress shows how a long transfer is going: bytes moved, rate and
// time left, redrawn on one terminal line. On anything that is not a
// terminal it stays quiet, so logs and scripts see only the final summary.
package progress

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Bar draws progress for one transfer. The zero value draws nothing.
type Bar struct {
	mu    sync.Mutex
	w     io.Writer
	label string
	start time.Time
	last  time.Time
	drawn bool
}

// New returns a bar that draws on w when w is a terminal.
func New(w io.Writer, label string) *Bar {
	f, ok := w.(*os.File)
	if !ok {
		return &Bar{}
	}
	st, err := f.Stat()
	if err != nil || st.Mode()&os.ModeCharDevice == 0 {
		return &Bar{}
	}
	return &Bar{w: w, label: label, start: time.Now()}
}

// Update reports done of total bytes. It redraws at most every 200 ms.
func (b *Bar) Update(done, total int64) {
	if b == nil || b.w == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if now.Sub(b.last) < 200*time.Millisecond && done < total {
		return
	}
	b.last = now
	elapsed := now.Sub(b.start).Seconds()
	rate := 0.0
	if elapsed > 0 {
		rate = float64(done) / elapsed
	}
	eta := "?"
	if rate > 0 && total >= done {
		eta = time.Duration(float64(total-done) / rate * float64(time.Second)).Round(time.Second).String()
	}
	pct := 100.0
	if total > 0 {
		pct = 100 * float64(done) / float64(total)
	}
	fmt.Fprintf(b.w, "\r%s %5.1f%%  %s / %s  %s/s  ETA %s   ", b.label, pct, Bytes(done), Bytes(total), Bytes(int64(rate)), eta)
	b.drawn = true
}

// Done ends the bar's line.
func (b *Bar) Done() {
	if b == nil || b.w == nil || !b.drawn {
		return
	}
	fmt.Fprintln(b.w)
}

// Bytes formats a byte count for people: 1.4 MB, 730 kB, 12 B.
func Bytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f kB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
