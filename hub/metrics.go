package hub

import (
	"sync"

	"github.com/hashicorp/go-memdb"
	"github.com/prometheus/client_golang/prometheus"

	"fieldsync/internal/ledger"
)

// metrics are the hub's Prometheus metrics, on a registry of its own so that
// tests can open several hubs in one process.
type metrics struct {
	reg            *prometheus.Registry
	recordsApplied prometheus.Counter
	bundlesRefused *prometheus.CounterVec
	sessions       *prometheus.CounterVec
	bytesReceived  prometheus.Counter

	sitesOnce sync.Once // registers the per-site collector, which needs the hub
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

// registerSites adds the per-site freshness gauges, read from the ledger at
// each scrape. It is idempotent.
func (m *metrics) registerSites(h *Hub) {
	m.sitesOnce.Do(func() { m.reg.MustRegister(siteCollector{h}) })
}

var (
	siteLastSyncDesc = prometheus.NewDesc("fieldsync_site_last_sync_seconds",
		"Seconds since the site's most recent sync; absent for a site that never synced.", []string{"site"}, nil)
	siteOldestUnsyncedDesc = prometheus.NewDesc("fieldsync_site_oldest_unsynced_seconds",
		"Age in seconds of the oldest record the site's agent held unsynced when it last synced (0 if none); absent for a site that never synced.",
		[]string{"site"}, nil)
	siteAgentStateDesc = prometheus.NewDesc("fieldsync_site_agent_state",
		"1 for the state of the site's agents taken together (active, silent, pending, revoked, not enrolled), 0 for the others.",
		[]string{"site", "state"}, nil)
)

// siteCollector reports each site's sync freshness at scrape time, derived
// as the status document's last_sync, oldest_unsynced and agent_state are.
type siteCollector struct{ h *Hub }

func (c siteCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- siteLastSyncDesc
	ch <- siteOldestUnsyncedDesc
	ch <- siteAgentStateDesc
}

func (c siteCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.h.now().UTC()
	var syncs map[string]*siteSync
	err := c.h.led.Read(func(txn *memdb.Txn) error {
		var err error
		if syncs, err = siteSyncs(txn, now); err != nil {
			return err
		}
		it, err := txn.Get(ledger.TableSites, ledger.IndexID)
		if err != nil {
			return err
		}
		for obj := it.Next(); obj != nil; obj = it.Next() {
			if id := obj.(*ledger.Site).ID; syncs[id] == nil {
				syncs[id] = &siteSync{state: AgentNotEnrolled}
			}
		}
		return nil
	})
	if err != nil {
		ch <- prometheus.NewInvalidMetric(siteLastSyncDesc, err)
		return
	}
	states := []string{AgentActive, AgentSilent, AgentPending, AgentRevoked, AgentNotEnrolled}
	for site, s := range syncs {
		if !s.lastSync.IsZero() {
			ch <- prometheus.MustNewConstMetric(siteLastSyncDesc, prometheus.GaugeValue, max(0, now.Sub(s.lastSync).Seconds()), site)
			oldest := 0.0
			if !s.oldestUnsynced.IsZero() {
				oldest = max(0, now.Sub(s.oldestUnsynced).Seconds())
			}
			ch <- prometheus.MustNewConstMetric(siteOldestUnsyncedDesc, prometheus.GaugeValue, oldest, site)
		}
		for _, st := range states {
			v := 0.0
			if s.state == st {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(siteAgentStateDesc, prometheus.GaugeValue, v, site, st)
		}
	}
}
