package hub

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the hub's Prometheus metrics, on a registry of its own so that
// tests can open several hubs in one process.
type metrics struct {
	reg            *prometheus.Registry
	recordsApplied prometheus.Counter
	bundlesRefused *prometheus.CounterVec
	sessions       *prometheus.CounterVec
	bytesReceived  prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		recordsApplied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fieldsync_records_applied_total", Help: "Records applied at the hub (each once).",
		}),
		bundlesRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldsync_bundles_refused_total", Help: "Bundles refused or quarantined, by reason.",
		}, []string{"reason"}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldsync_sync_sessions_total", Help: "QUIC sync sessions, by outcome.",
		}, []string{"outcome"}),
		bytesReceived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "fieldsync_bytes_received_total", Help: "Bundle bytes received over QUIC.",
		}),
	}
	m.reg.MustRegister(m.recordsApplied, m.bundlesRefused, m.sessions, m.bytesReceived)
	return m
}

// refusalKind reduces a refusal reason to a small label set for metrics.
func refusalKind(reason string) string {
	for _, k := range []string{"tampered", "truncated", "not-for-us", "bad-signature", "unknown-sender", "too-large", "malformed", "version"} {
		if strings.Contains(reason, k) {
			return k
		}
	}
	return "other"
}
