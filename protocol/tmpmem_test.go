package protocol

import (
	"runtime"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

func TestTmpMem(t *testing.T) {
	for _, n := range []int{1000, 10000} {
	raw := linesOf(t, testRecords(n, 3))
	for _, lv := range []struct{ l zstd.EncoderLevel; w int }{{zstd.SpeedFastest, 8 << 20}, {zstd.SpeedFastest, 1 << 20},{zstd.SpeedDefault, 1 << 20},{zstd.SpeedBetterCompression, 1 << 20}, {zstd.SpeedBestCompression, 8 << 20}, {zstd.SpeedBestCompression, 1 << 20}} {
		runtime.GC()
		var a, b runtime.MemStats
		runtime.ReadMemStats(&a)
		enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(lv.l), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(lv.w))
		st := time.Now()
		out := enc.EncodeAll(raw, nil)
		d := time.Since(st)
		runtime.ReadMemStats(&b)
		enc.Close()
		t.Logf("n=%d %v w=%d raw=%d out=%d alloc=%dMB took=%v", n, lv.l, lv.w>>20, len(raw), len(out), (b.TotalAlloc-a.TotalAlloc)>>20, d)
	}
	}
}
