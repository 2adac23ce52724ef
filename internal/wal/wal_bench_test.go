package wal

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAppend measures durable appends with real fsyncs, in the
// directory the test's TempDir is in (set TMPDIR to measure another disk;
// on tmpfs an fsync costs nothing and the numbers mean little).
//
// ns/op is the wall time per commit. Alongside it: commits/s, the p50 and
// p99 latency of one Append as its caller sees it, and entries/fsync. The
// nogroup variant is the baseline without group commit: the same eight
// writers, but each Append runs alone, so every entry pays its own fsync.
func BenchmarkAppend(b *testing.B) {
	benchmarks := []struct {
		name    string
		writers int
		group   bool
	}{
		{"writers=1", 1, true},
		{"writers=8", 8, true},
		{"writers=8,nogroup", 8, false},
	}
	for _, bm := range benchmarks {
		b.Run(bm.name, func(b *testing.B) { benchmarkAppend(b, bm.writers, bm.group) })
	}
}

func benchmarkAppend(b *testing.B, writers int, group bool) {
	l, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	var fsyncs atomic.Int64
	l.commitHook = func(int) { fsyncs.Add(1) }

	payload := make([]byte, 256) // about one ledger record
	latency := make([]time.Duration, b.N)
	var next atomic.Int64
	var serial sync.Mutex // nogroup: one Append at a time
	var wg sync.WaitGroup

	b.ResetTimer()
	start := time.Now()
	for range writers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				t0 := time.Now()
				if !group {
					serial.Lock()
				}
				_, err := l.Append(payload)
				if !group {
					serial.Unlock()
				}
				latency[i] = time.Since(t0)
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()

	slices.Sort(latency)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "commits/s")
	b.ReportMetric(float64(latency[b.N/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(latency[b.N*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(b.N)/float64(max(fsyncs.Load(), 1)), "entries/fsync")
}
