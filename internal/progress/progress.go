// Package progress shows how a long transfer is going: bytes moved, rate and
// time left. A Meter measures; a Bar redraws it on one terminal line and
// stays quiet on anything that is not a terminal, so logs and scripts see
// only the final summary; `agent status` reads the daemon's Meter.
package progress

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// Meter measures one transfer from the updates it is given. A change of
// total starts a new phase (records, then attachments), and bytes that
// were already across when a phase began (a resumed upload) do not count
// towards its rate. The zero value is ready; it is safe for concurrent use.
type Meter struct {
	mu          sync.Mutex
	now         func() time.Time // time.Now unless a test sets it
	phaseStart  time.Time
	phaseEnd    time.Time // when done reached total; zero before
	base        int64     // done at the phase's first update
	done, total int64
}

// Reading is a Meter's state at one instant.
type Reading struct {
	Done, Total int64
	Rate        float64       // bytes per second in this phase; 0 until measurable
	Left        time.Duration // at Rate; 0 when unknown
}

// Update reports done of total bytes.
func (m *Meter) Update(done, total int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock()
	if m.phaseStart.IsZero() || total != m.total {
		m.phaseStart, m.phaseEnd, m.base = now, time.Time{}, done
	}
	m.done, m.total = done, total
	if done >= total && m.phaseEnd.IsZero() {
		// Done: the rate is what it was, not what waiting for the
		// other end makes of it.
		m.phaseEnd = now
	}
}

// Read returns the transfer's state now.
func (m *Meter) Read() Reading {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := Reading{Done: m.done, Total: m.total}
	if m.phaseStart.IsZero() {
		return r
	}
	end := m.phaseEnd
	if end.IsZero() {
		end = m.clock()
	}
	// Under a second in, a rate says more about buffers than the link.
	if elapsed := end.Sub(m.phaseStart).Seconds(); elapsed >= 1 && m.done > m.base {
		r.Rate = float64(m.done-m.base) / elapsed
		if m.total > m.done {
			r.Left = time.Duration(float64(m.total-m.done) / r.Rate * float64(time.Second)).Round(time.Second)
		}
	}
	return r
}

func (m *Meter) clock() time.Time {
	if m.now != nil {
		return m.now()
	}
	return time.Now()
}

// String reads r as a person would: "4.2 MB of 20.1 MB (21 %), 610.0 kB/s,
// about 26s left".
func (r Reading) String() string {
	pct := 100.0
	if r.Total > 0 {
		pct = 100 * float64(r.Done) / float64(r.Total)
	}
	s := fmt.Sprintf("%s of %s (%.0f %%)", Bytes(r.Done), Bytes(r.Total), pct)
	if r.Rate > 0 {
		s += fmt.Sprintf(", %s/s", Bytes(int64(r.Rate)))
	}
	if r.Left > 0 {
		s += fmt.Sprintf(", about %s left", r.Left)
	}
	return s
}

// Bar draws progress for one transfer. The zero value draws nothing.
type Bar struct {
	mu    sync.Mutex
	w     io.Writer
	label string
	meter Meter
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
	return &Bar{w: w, label: label}
}

// Update reports done of total bytes. It redraws at most every 200 ms.
func (b *Bar) Update(done, total int64) {
	if b == nil || b.w == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.meter.Update(done, total)
	now := time.Now()
	if now.Sub(b.last) < 200*time.Millisecond && done < total {
		return
	}
	b.last = now
	// \x1b[K clears what a longer line before left.
	fmt.Fprintf(b.w, "\r%s %s\x1b[K", b.label, b.meter.Read())
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
