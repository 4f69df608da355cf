//! The memory watcher's metrics.

use super::read;
use crate::metrics::{self, Registry};

/// A prediction further out than this is no prediction: flat memory with a tiny slope would
/// give 10^7 s one sample and +Inf the next.
pub(super) const PREDICTION_HORIZON: f64 = 24.0 * 60.0 * 60.0;

/// The `source` label values of `sidewatch_memory_source`.
const SOURCES: [&str; 5] = ["cgroup", "app-root", "proc", "node", "none"];
/// The `kind` values of `sidewatch_memory_read_errors_total` that only the node source gives.
pub(super) const NODE_KINDS: [&str; 2] = ["node_away", "node_refused"];

/// The memory watcher's metrics, only when it runs; PSI's only where the cgroup has PSI.
#[derive(Clone)]
pub struct MemoryMetrics {
    registry: Registry,
    pub(super) usage: prometheus::IntGauge,
    pub(super) limit: prometheus::IntGauge,
    pub(super) predicted: prometheus::Gauge,
    pub(super) pace: prometheus::Gauge,
    pub(super) oom_kills: prometheus::IntCounter,
    pub(super) oom_group_kills: prometheus::IntCounter,
    pub(super) oom_killed_processes: prometheus::IntCounter,
    pub(super) high_events: prometheus::IntCounter,
    pub(super) read_errors: prometheus::IntCounterVec,
    source: prometheus::IntGaugeVec,
    pressure: std::sync::Arc<std::sync::Mutex<Option<prometheus::GaugeVec>>>,
}

impl MemoryMetrics {
    pub fn new(registry: &Registry) -> Self {
        let read_errors = registry.register(metrics::counter_vec(
            "sidewatch_memory_read_errors_total",
            "Failed reads of the app's memory files, by kind (gone = the cgroup directory was removed, as at a container restart; missing, garbled, io; \
             with memory.source node: node_away = the node agent unreachable or its stream broken, node_refused = it refused the token, see the logs); \
             while they fail, memory signals do not veto readiness.",
            &["kind"],
        ));
        for kind in ["gone", "missing", "garbled", "io"] {
            read_errors.with_label_values(&[kind]);
        }
        let source = registry.register(metrics::gauge_vec(
            "sidewatch_memory_source",
            "1 for where the app's memory is read now: cgroup (a host path of the node's tree), app-root (the app container's own cgroup through its root), proc (its processes' RSS), node (the node agent's stream) or none (the app not found yet).",
            &["source"],
        ));
        for s in SOURCES {
            source.with_label_values(&[s]);
        }
        MemoryMetrics {
            registry: registry.clone(),
            usage: registry.register(metrics::gauge(
                "sidewatch_memory_usage_bytes",
                "The app's working set (usage minus inactive file cache, as the kubelet counts it). Compare with sidewatch_memory_limit_bytes.",
            )),
            limit: registry.register(metrics::gauge(
                "sidewatch_memory_limit_bytes",
                "The app's memory limit; 0 when there is none. Near the usage, raise the limit or fix the leak.",
            )),
            predicted: registry.register(metrics::float_gauge(
                "sidewatch_memory_predicted_oom_seconds",
                "Seconds until the memory limit at the current trend; +Inf when memory is not growing toward a limit within a day.",
            )),
            pace: registry.register(metrics::float_gauge(
                "sidewatch_memory_sample_interval_seconds",
                "The wait before the next look at the app's memory: memory.interval while it moves or nears the limit, memory.idle_interval while it sits far from it and still. Kernel notifications wake sidewatch at once either way.",
            )),
            oom_kills: registry.register(metrics::counter(
                "sidewatch_oom_kills_total",
                "OOM kills in the app's cgroup: one per time the kernel's OOM killer acted, whether it killed one process (a worker, say) or the whole container (memory.oom.group). Any rise means requests were dropped: raise the limit.",
            )),
            oom_group_kills: registry.register(metrics::counter(
                "sidewatch_oom_group_kills_total",
                "Of sidewatch_oom_kills_total, the kills of a whole group (memory.oom.group=1, the kubelet's default on cgroup v2): every process of the container died at once.",
            )),
            oom_killed_processes: registry.register(metrics::counter(
                "sidewatch_oom_killed_processes_total",
                "Processes killed by those OOM kills in all: above sidewatch_oom_kills_total when group kills took several processes each.",
            )),
            high_events: registry.register(metrics::counter(
                "sidewatch_memory_high_events_total",
                "Times the app's memory went over a memory.high (cgroup v2; the kubelet's memory QoS sets it below the limit) and the kernel reclaimed and throttled its allocations. Rising steadily: the app runs at its memory.high, slowed.",
            )),
            read_errors,
            source,
            pressure: Default::default(),
        }
    }

    /// The node source's own series: the blind gauge and its read error kinds, from the start.
    pub(crate) fn node(&self) -> prometheus::IntGauge {
        for kind in NODE_KINDS {
            self.read_errors.with_label_values(&[kind]);
        }
        self.registry.register(metrics::gauge(
            "sidewatch_memory_blind",
            "1 while the node agent's stream of this pod's memory is away (memory.source node): memory signals then veto nothing. \
             Lasting: check the agent on this pod's node and sidewatch_memory_read_errors_total{kind=~\"node_.*\"}.",
        ))
    }

    pub(super) fn source(&self, now: &str) {
        for s in SOURCES {
            self.source.with_label_values(&[s]).set(i64::from(s == now));
        }
    }

    /// PSI's gauges exist while the watched cgroup has PSI: 0 then means no stall, not "no PSI".
    pub(crate) fn pressure(&self, psi: Option<read::Pressure>) {
        let mut gauges = self.pressure.lock().unwrap_or_else(|e| e.into_inner());
        match (psi, gauges.as_ref()) {
            (Some(p), _) => {
                let g = gauges.get_or_insert_with(|| {
                    self.registry.register(metrics::float_gauge_vec(
                        "sidewatch_memory_pressure_avg10",
                        "Percent of the last 10 s the app's tasks stalled on memory (PSI); full = all tasks stalled.",
                        &["kind"],
                    ))
                });
                g.with_label_values(&["some"]).set(p.some_avg10);
                g.with_label_values(&["full"]).set(p.full_avg10);
            }
            (None, Some(g)) => {
                self.registry.unregister(g);
                *gauges = None;
            }
            (None, None) => {}
        }
    }
}
