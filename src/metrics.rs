//! Prometheus metrics: registered once at start-up, updated next to the code that observes them.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::reason::Reason;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub ready: IntGauge,
    pub transitions: IntCounterVec,
    pub probe_up: IntGaugeVec,
    pub probe_duration: HistogramVec,
    pub probe_failures: IntCounterVec,
    pub drains: IntCounterVec,
    pub drain_duration: Histogram,
    pub memory_usage: IntGauge,
    pub memory_limit: IntGauge,
    pub memory_pressure: GaugeVec,
    pub predicted_oom: Gauge,
    pub oom_kills: IntCounter,
    pub memory_read_errors: IntCounterVec,
    pub process_exits: IntCounter,
    pub app_connections: IntGauge,
    pub container_restarts: IntCounterVec,
    pub kube_errors: IntCounterVec,
    pub events_dropped: IntCounter,
    pub admin_connections: IntGauge,
    pub admin_evictions: IntCounter,
}

impl Metrics {
    /// Registers every metric; `probes` are the probe names with the reasons each can fail with,
    /// pre-filled so that every series exists at zero.
    pub fn new<'a>(probes: impl IntoIterator<Item = (&'a str, &'static [Reason])>) -> Self {
        let ready = IntGauge::new(
            "sidewatch_ready",
            "1 when sidewatch reports this pod ready. When 0, GET /readyz lists the reasons.",
        )
        .expect("static metric definition");
        let transitions = IntCounterVec::new(
            Opts::new(
                "sidewatch_ready_transitions_total",
                "Readiness changes. A fast rise means a flapping app: read the reasons in the logs.",
            ),
            &["to"],
        )
        .expect("static metric definition");
        let probe_up = IntGaugeVec::new(
            Opts::new(
                "sidewatch_probe_up",
                "1 when the probe's last check succeeded. When 0, see sidewatch_probe_failures_total for why.",
            ),
            &["probe"],
        )
        .expect("static metric definition");
        let probe_duration = HistogramVec::new(
            HistogramOpts::new(
                "sidewatch_probe_duration_seconds",
                "Time of each check, connect to last byte. Growth toward the timeout predicts timeouts.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["probe"],
        )
        .expect("static metric definition");
        let probe_failures = IntCounterVec::new(
            Opts::new(
                "sidewatch_probe_failures_total",
                "Failed checks by reason: refused = app not listening, reset = accepted then dropped, \
                 invalid_response = not HTTP (or not gRPC), http_5xx = app error, timeout = no answer in time, tls = certificate or handshake, \
                 not_serving / unknown_service = the gRPC health service's answer.",
            ),
            &["probe", "reason"],
        )
        .expect("static metric definition");
        let drains = IntCounterVec::new(
            Opts::new(
                "sidewatch_drains_total",
                "Drains ended, by outcome: quiet = traffic stopped, max = drain.max reached (raise it or find the client that keeps sending).",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let drain_duration = Histogram::with_opts(
            HistogramOpts::new(
                "sidewatch_drain_duration_seconds",
                "How long each drain held the app's shutdown; keep it under terminationGracePeriodSeconds.",
            )
            .buckets(vec![1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0]),
        )
        .expect("static metric definition");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "sidewatch_build_info",
                "Always 1; the version label says which sidewatch runs.",
            ),
            &["version"],
        )
        .expect("static metric definition");

        let memory_usage = IntGauge::new(
            "sidewatch_memory_usage_bytes",
            "The app's working set (usage minus inactive file cache, as the kubelet counts it). Compare with sidewatch_memory_limit_bytes.",
        )
        .expect("static metric definition");
        let memory_limit = IntGauge::new(
            "sidewatch_memory_limit_bytes",
            "The app's memory limit; 0 when there is none. Near the usage, raise the limit or fix the leak.",
        )
        .expect("static metric definition");
        let memory_pressure = GaugeVec::new(
            Opts::new(
                "sidewatch_memory_pressure_avg10",
                "Percent of the last 10 s the app's tasks stalled on memory (PSI, cgroup v2 only); full = all tasks stalled.",
            ),
            &["kind"],
        )
        .expect("static metric definition");
        let predicted_oom = Gauge::new(
            "sidewatch_memory_predicted_oom_seconds",
            "Seconds until the memory limit at the current trend; +Inf when memory is not growing toward a limit.",
        )
        .expect("static metric definition");
        let oom_kills = IntCounter::new(
            "sidewatch_oom_kills_total",
            "Processes the kernel OOM killer killed in the app's cgroup, workers included. Any rise means requests were dropped: raise the limit.",
        )
        .expect("static metric definition");
        let memory_read_errors = IntCounterVec::new(
            Opts::new(
                "sidewatch_memory_read_errors_total",
                "Failed reads of the app's memory files, by kind (gone = the cgroup directory was removed, as at a container restart; missing, garbled, io); \
                 while they fail, memory signals do not veto readiness.",
            ),
            &["kind"],
        )
        .expect("static metric definition");
        let process_exits = IntCounter::new(
            "sidewatch_process_exits_total",
            "Exits of the app's main process (process.match). A rise means the app crashed or restarted.",
        )
        .expect("static metric definition");

        let app_connections = IntGauge::new(
            "sidewatch_app_connections",
            "Open TCP connections on the app port (drain.port). Those still open at the end of a drain were idle keep-alives.",
        )
        .expect("static metric definition");

        let container_restarts = IntCounterVec::new(
            Opts::new(
                "sidewatch_container_restarts_total",
                "Container restarts the kubelet reported, by container and last termination reason (oom_killed: raise the memory limit).",
            ),
            &["container", "reason"],
        )
        .expect("static metric definition");
        let kube_errors = IntCounterVec::new(
            Opts::new(
                "sidewatch_kube_errors_total",
                "Failed Kubernetes API requests by operation; local signals keep deciding. Check RBAC (403) and API server reachability.",
            ),
            &["op"],
        )
        .expect("static metric definition");
        let events_dropped = IntCounter::new(
            "sidewatch_events_dropped_total",
            "Kubernetes Events not posted because of the rate limit: the app is flapping, read the logs.",
        )
        .expect("static metric definition");

        let admin_connections = IntGauge::new(
            "sidewatch_admin_connections",
            "Open connections to sidewatch's own port (probes, scrapes, held drains).",
        )
        .expect("static metric definition");
        let admin_evictions = IntCounter::new(
            "sidewatch_admin_evictions_total",
            "Idle or slow connections to sidewatch's own port closed to admit new ones at the connection cap: \
             a rise means a client holds many connections open (a leak or an attack).",
        )
        .expect("static metric definition");

        let registry = Registry::new();
        for c in [
            Box::new(ready.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(transitions.clone()),
            Box::new(probe_up.clone()),
            Box::new(probe_duration.clone()),
            Box::new(probe_failures.clone()),
            Box::new(drains.clone()),
            Box::new(drain_duration.clone()),
            Box::new(build_info.clone()),
            Box::new(memory_usage.clone()),
            Box::new(memory_limit.clone()),
            Box::new(memory_pressure.clone()),
            Box::new(predicted_oom.clone()),
            Box::new(oom_kills.clone()),
            Box::new(memory_read_errors.clone()),
            Box::new(process_exits.clone()),
            Box::new(app_connections.clone()),
            Box::new(container_restarts.clone()),
            Box::new(kube_errors.clone()),
            Box::new(events_dropped.clone()),
            Box::new(admin_connections.clone()),
            Box::new(admin_evictions.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }

        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for to in ["ready", "not_ready"] {
            transitions.with_label_values(&[to]);
        }
        for outcome in ["quiet", "max"] {
            drains.with_label_values(&[outcome]);
        }
        predicted_oom.set(f64::INFINITY);
        for kind in ["some", "full"] {
            memory_pressure.with_label_values(&[kind]);
        }
        for op in ["watch", "patch_status", "create_event"] {
            kube_errors.with_label_values(&[op]);
        }
        for kind in ["gone", "missing", "garbled", "io"] {
            memory_read_errors.with_label_values(&[kind]);
        }
        for (probe, reasons) in probes {
            probe_up.with_label_values(&[probe]);
            probe_duration.with_label_values(&[probe]);
            for reason in reasons {
                probe_failures.with_label_values(&[probe, reason.as_str()]);
            }
        }
        Self {
            registry,
            ready,
            transitions,
            probe_up,
            probe_duration,
            probe_failures,
            drains,
            drain_duration,
            memory_usage,
            memory_limit,
            memory_pressure,
            predicted_oom,
            oom_kills,
            memory_read_errors,
            process_exits,
            app_connections,
            container_restarts,
            kube_errors,
            events_dropped,
            admin_connections,
            admin_evictions,
        }
    }

    /// The text exposition format (0.0.4).
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(8 * 1024);
        // Encoding into a Vec cannot fail on I/O; a collector error would be a bug of ours.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_probe_reason_series_exists_from_the_start() {
        let m = Metrics::new([("app", &Reason::HTTP[..])]);
        let text = String::from_utf8(m.encode()).unwrap();
        for r in Reason::HTTP {
            let series =
                format!("sidewatch_probe_failures_total{{probe=\"app\",reason=\"{r}\"}} 0");
            assert!(text.contains(&series), "{series} missing");
        }
        assert!(text.contains("sidewatch_build_info{version=\""));
        assert!(text.contains("# HELP sidewatch_ready 1 when"));
    }
}
