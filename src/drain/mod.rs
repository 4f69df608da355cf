//! The drain: not ready at once, then held until the app port's traffic has stopped (or
//! `drain.max`). `/drain`, SIGTERM and the demo start or join the same one; one task owns it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

mod access;
pub mod config;
mod outcome;

pub use crate::engine::bus::DrainEnd;
use crate::engine::bus::{Input, Notice};
use crate::liveness::Tasks;
use crate::metrics::{self, Registry};
use crate::traffic::{compare, Activity, Need, Snapshot, TrafficWatcher};
pub use access::Access;
use config::DrainConfig;
pub use outcome::Outcome;

/// How often the port is looked at while draining; `quiet` is judged to this precision.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// How often `sidewatch_app_connections` is refreshed outside a drain: as often as the traffic
/// watch looks at the sockets for it anyway. A look in between would reuse the last one's, and
/// its read of the namespace's counters (`/proc/net/snmp`, generated from every CPU's counters)
/// was a fifth of an idle sidecar's CPU.
const IDLE_POLL: Duration = crate::traffic::CONNECTIONS_SEEN_WITHIN;

/// The drain's metrics: `sidewatch_app_connections` only when the app port's traffic is watched.
#[derive(Clone)]
pub struct DrainMetrics {
    drains: prometheus::IntCounterVec,
    duration: prometheus::Histogram,
    draining: prometheus::IntGauge,
    connections: Option<prometheus::IntGauge>,
    dumps: Option<prometheus::IntCounter>,
}

impl DrainMetrics {
    pub fn new(registry: &Registry, traffic: bool) -> Self {
        let drains = registry.register(metrics::counter_vec(
            "sidewatch_drains_total",
            "Drains ended, by outcome: quiet = traffic stopped, max = drain.max reached (raise it or find the client that keeps sending).",
            &["outcome"],
        ));
        for outcome in Outcome::ALL {
            drains.with_label_values(&[outcome.as_str()]);
        }
        let duration = registry.register(metrics::histogram(
            "sidewatch_drain_duration_seconds",
            "How long each drain held the app's shutdown; keep it under terminationGracePeriodSeconds.",
            &[1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0],
        ));
        let draining = registry.register(metrics::gauge(
            "sidewatch_draining",
            "1 from the moment a drain starts (the pod is being deleted): not ready on purpose, no sickness.",
        ));
        let connections = traffic.then(|| {
            registry.feature(crate::metrics::Feature::DrainTraffic);
            registry.register(metrics::gauge(
                "sidewatch_app_connections",
                "Open TCP connections on the app port (drain.port). Those still open at the end of a drain were idle keep-alives.",
            ))
        });
        let dumps = traffic.then(|| {
            registry.register(metrics::counter(
                "sidewatch_app_socket_dumps_total",
                "Looks at the app port's sockets that dumped them (the rest reused the last, the namespace's counters showing nothing new): each walks the node's TCP hash.",
            ))
        });
        DrainMetrics {
            drains,
            duration,
            draining,
            connections,
            dumps,
        }
    }
}

#[derive(Clone)]
pub struct Drain(Arc<Inner>);

struct Inner {
    started: watch::Sender<Option<String>>,
    /// Cancelled when the drain starts (or at shutdown): the probes run until it.
    draining: CancellationToken,
    ended: watch::Sender<Option<DrainEnd>>,
    event: Event,
}

/// Completes when the drain's Kubernetes Event has been posted or given up: the sender is
/// dropped either way.
type Event = Arc<Mutex<Option<oneshot::Receiver<()>>>>;

impl Drain {
    /// Spawns the drain task (on the watch runtime, beside the probes and away from a flooded
    /// admin server) until `stop`. Without a traffic watcher the drain ends after `delay`. With
    /// `notices`, its end becomes a Kubernetes Event.
    pub fn spawn(
        config: DrainConfig,
        traffic: Option<TrafficWatcher>,
        inputs: mpsc::Sender<Input>,
        metrics: DrainMetrics,
        notices: Option<mpsc::Sender<Notice>>,
        tasks: &Tasks,
        stop: &CancellationToken,
    ) -> Self {
        let drain = Drain(Arc::new(Inner {
            started: watch::Sender::new(None),
            draining: stop.child_token(),
            ended: watch::Sender::new(None),
            event: Event::default(),
        }));
        let task = DrainTask {
            config,
            traffic,
            metrics,
            inputs,
            notices,
            event: drain.0.event.clone(),
            started: drain.0.started.subscribe(),
            ended: drain.0.ended.clone(),
        };
        tasks.spawn("drain", stop, task.run());
        drain
    }

    /// Cancelled from the moment a drain starts.
    pub fn draining(&self) -> &CancellationToken {
        &self.0.draining
    }

    /// Starts the drain, or joins the one under way, and resolves when it has ended. The drain
    /// starts at the call, whether or not the future is awaited.
    pub fn start(&self, by: &str) -> impl std::future::Future<Output = DrainEnd> + Send + 'static {
        self.0.started.send_if_modified(|started| {
            if started.is_some() {
                return false;
            }
            *started = Some(by.to_owned());
            true
        });
        self.0.draining.cancel();
        let mut ended = self.0.ended.subscribe();
        async move {
            match ended.wait_for(Option::is_some).await {
                Ok(end) => end.unwrap_or_else(abandoned),
                Err(_) => abandoned(),
            }
        }
    }

    /// Resolves once the ended drain's Kubernetes Event is posted or given up, at once when
    /// there is none.
    pub async fn event_done(&self) {
        let pending = self
            .0
            .event
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(rx) = pending {
            let _ = rx.await;
        }
    }
}

/// What a waiter gets if the drain task is gone (it never returns early; this is for the type).
fn abandoned() -> DrainEnd {
    let now = Instant::now();
    DrainEnd {
        outcome: Outcome::Max.as_str(),
        duration_seconds: 0.0,
        new_connections: 0,
        bytes_in: 0,
        began: now,
        ended: now,
    }
}

struct DrainTask {
    config: DrainConfig,
    traffic: Option<TrafficWatcher>,
    metrics: DrainMetrics,
    inputs: mpsc::Sender<Input>,
    notices: Option<mpsc::Sender<Notice>>,
    event: Event,
    started: watch::Receiver<Option<String>>,
    ended: watch::Sender<Option<DrainEnd>>,
}

impl DrainTask {
    async fn run(mut self) {
        let mut idle = crate::beat::interval(IDLE_POLL);
        let mut started = self.started.clone();
        let by = loop {
            tokio::select! {
                by = started.wait_for(Option::is_some) => {
                    break by.ok().and_then(|s| s.clone()).unwrap_or_default();
                }
                _ = idle.tick() => {}
            }
            self.look().await;
        };
        let began = Instant::now();
        self.metrics.draining.set(1);
        let message = format!("drain requested by {by}");
        let _ = self.inputs.send(Input::Drain { message }).await;
        tracing::info!(
            by = %by,
            delay = ?self.config.delay,
            quiet = ?self.config.quiet,
            max = ?self.config.max,
            "drain started: not ready from now on",
        );
        let mut end = self.hold(began).await;
        self.metrics.drains.with_label_values(&[end.outcome]).inc();
        self.metrics.duration.observe(end.duration_seconds);
        // After the metrics: a scrape that begins later sees the outcome.
        end.ended = Instant::now();
        tracing::info!(
            outcome = end.outcome,
            seconds = end.duration_seconds,
            new_connections = end.new_connections,
            bytes_in = end.bytes_in,
            "drain ended",
        );
        if let Some(notices) = &self.notices {
            let (posted, done) = oneshot::channel();
            if notices.try_send(Notice::Drained { end, posted }).is_ok() {
                *self.event.lock().unwrap_or_else(|e| e.into_inner()) = Some(done);
            }
        }
        self.ended.send_replace(Some(end));
        // The connections gauge stays fresh while sidewatch lingers, and until it stops.
        loop {
            idle.tick().await;
            self.look().await;
        }
    }

    /// A look at the port's sockets off the runtime's thread: a netlink dump may block (up to
    /// its 1 s bound), and the probes share that thread. `None` without a traffic watcher.
    async fn snapshot(&mut self, need: Need) -> Option<std::io::Result<Snapshot>> {
        let mut traffic = self.traffic.take()?;
        let looked = tokio::task::spawn_blocking(move || {
            let snapshot = traffic.snapshot(need);
            (traffic, snapshot)
        })
        .await;
        match looked {
            Ok((traffic, snapshot)) => {
                self.traffic = Some(traffic);
                if let (Ok(s), Some(dumps)) = (&snapshot, &self.metrics.dumps) {
                    dumps.inc_by(u64::from(s.dumped));
                }
                Some(snapshot)
            }
            Err(e) => {
                tracing::error!(error = %e, "drain: the traffic watch failed; a drain now ends after drain.delay");
                None
            }
        }
    }

    /// Polls the port until it has been quiet for `quiet` after at least `delay`, or `max`.
    async fn hold(&mut self, began: Instant) -> DrainEnd {
        let mut ticker = tokio::time::interval(DRAIN_POLL);
        let mut previous = self.snapshot(Need::Bytes).await.and_then(Result::ok);
        let mut last_activity = began;
        let mut total = Activity::default();
        loop {
            // The poll's scheduled time, not its wake-up: a late wake must not make ten polls
            // measure 0.9999 s of quiet and cost one more poll.
            let now = ticker.tick().await.into_std();
            // Traffic this look sees is stamped no earlier than one poll before the look: on a
            // busy machine a tick can come far behind its schedule (and the ones it missed in a
            // burst after it), and the scheduled time would date the traffic before it happened
            // and end the drain that much short of `quiet`.
            let seen = Instant::now()
                .checked_sub(DRAIN_POLL)
                .map_or(now, |t| t.max(now));
            // A poll that can end the drain by quiet sees every socket: the counters alone can
            // hide a connection (see `Need::All`).
            let deciding = ends_quiet(&self.config, now - began, now, last_activity);
            let need = if deciding { Need::All } else { Need::Bytes };
            if let Some(prev) = previous.as_ref() {
                match self.snapshot(need).await {
                    // The watch is lost: from here on, as without one (the drain ends after
                    // `delay`), which the loss's own log says.
                    None => previous = None,
                    Some(Ok(next)) => {
                        let activity = compare(prev, &next);
                        if let Some(gauge) = &self.metrics.connections {
                            gauge.set(activity.open as i64);
                        }
                        total.new_connections += activity.new_connections;
                        total.bytes_in += activity.bytes_in;
                        if !activity.is_quiet() {
                            tracing::debug!(?activity, "drain: traffic");
                            last_activity = seen;
                        }
                        previous = Some(next);
                    }
                    // A failed look is no evidence of quiet.
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "drain: cannot read the app port's sockets");
                        last_activity = seen;
                    }
                }
            }
            let elapsed = now - began;
            let outcome = if elapsed >= self.config.max {
                Some(Outcome::Max)
            } else if ends_quiet(&self.config, elapsed, now, last_activity) {
                Some(Outcome::Quiet)
            } else {
                None
            };
            if let Some(outcome) = outcome {
                return DrainEnd {
                    outcome: outcome.as_str(),
                    duration_seconds: elapsed.as_secs_f64(),
                    new_connections: total.new_connections,
                    bytes_in: total.bytes_in,
                    began,
                    ended: Instant::now(),
                };
            }
        }
    }

    /// Refreshes the open-connections gauge outside a drain.
    async fn look(&mut self) {
        match self.snapshot(Need::Connections).await {
            Some(Ok(s)) => {
                if let Some(gauge) = &self.metrics.connections {
                    gauge.set(s.sockets.values().filter(|s| s.open).count() as i64);
                }
            }
            Some(Err(e)) => tracing::debug!(error = %e, "cannot read the app port's sockets"),
            None => {}
        }
    }
}

/// Whether a drain `elapsed` in, last active at `last_activity`, may end by quiet at `now`.
fn ends_quiet(
    config: &DrainConfig,
    elapsed: Duration,
    now: Instant,
    last_activity: Instant,
) -> bool {
    elapsed >= config.delay && now.saturating_duration_since(last_activity) >= config.quiet
}
