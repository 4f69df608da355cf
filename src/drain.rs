//! The drain: not ready at once, then held until the app port's traffic has stopped (or
//! `drain.max`). `/drain`, SIGTERM and the demo start or join the same one; one task owns it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};

use crate::config::DrainConfig;
use crate::metrics::Metrics;
use crate::traffic::{compare, Activity, TrafficWatcher};
use crate::watcher::Input;

/// How often the port is looked at while draining; `quiet` is judged to this precision.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// How often `sidewatch_app_connections` is refreshed outside a drain.
const IDLE_POLL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DrainEnd {
    pub outcome: &'static str,
    pub duration_seconds: f64,
    pub new_connections: u64,
    pub bytes_in: u64,
}

#[derive(Clone)]
pub struct Drain(Arc<Inner>);

struct Inner {
    started: watch::Sender<Option<String>>,
    ended: watch::Sender<Option<DrainEnd>>,
}

impl Drain {
    /// Spawns the drain task on `runtime` (the watch runtime, beside the probes and away from a
    /// flooded admin server). Without a traffic watcher the drain ends after `delay`.
    pub fn spawn(
        config: DrainConfig,
        traffic: Option<TrafficWatcher>,
        inputs: mpsc::Sender<Input>,
        metrics: Metrics,
        runtime: &Handle,
    ) -> Self {
        let drain = Drain(Arc::new(Inner {
            started: watch::Sender::new(None),
            ended: watch::Sender::new(None),
        }));
        let task = DrainTask {
            config,
            traffic,
            metrics,
            inputs,
            started: drain.0.started.subscribe(),
            ended: drain.0.ended.clone(),
        };
        runtime.spawn(task.run());
        drain
    }

    /// `Some(who)` from the moment a drain starts.
    pub fn started(&self) -> watch::Receiver<Option<String>> {
        self.0.started.subscribe()
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
        let mut ended = self.0.ended.subscribe();
        async move {
            match ended.wait_for(Option::is_some).await {
                Ok(end) => end.unwrap_or(ABANDONED),
                Err(_) => ABANDONED,
            }
        }
    }
}

/// What a waiter gets if the drain task is gone (it never returns early; this is for the type).
const ABANDONED: DrainEnd = DrainEnd {
    outcome: "max",
    duration_seconds: 0.0,
    new_connections: 0,
    bytes_in: 0,
};

struct DrainTask {
    config: DrainConfig,
    traffic: Option<TrafficWatcher>,
    metrics: Metrics,
    inputs: mpsc::Sender<Input>,
    started: watch::Receiver<Option<String>>,
    ended: watch::Sender<Option<DrainEnd>>,
}

impl DrainTask {
    async fn run(mut self) {
        let mut idle = tokio::time::interval(IDLE_POLL);
        let mut started = self.started.clone();
        let by = loop {
            tokio::select! {
                by = started.wait_for(Option::is_some) => {
                    break by.ok().and_then(|s| s.clone()).unwrap_or_default();
                }
                _ = idle.tick() => self.look(),
            }
        };
        let began = Instant::now();
        let message = format!("drain requested by {by}");
        let _ = self.inputs.send(Input::Drain { message }).await;
        tracing::info!(
            by = %by,
            delay = ?self.config.delay,
            quiet = ?self.config.quiet,
            max = ?self.config.max,
            "drain started: not ready from now on",
        );
        let end = self.hold(began).await;
        self.metrics.drains.with_label_values(&[end.outcome]).inc();
        self.metrics.drain_duration.observe(end.duration_seconds);
        tracing::info!(
            outcome = end.outcome,
            seconds = end.duration_seconds,
            new_connections = end.new_connections,
            bytes_in = end.bytes_in,
            "drain ended",
        );
        self.ended.send_replace(Some(end));
    }

    /// Polls the port until it has been quiet for `quiet` after at least `delay`, or `max`.
    async fn hold(&mut self, began: Instant) -> DrainEnd {
        let mut ticker = tokio::time::interval(DRAIN_POLL);
        let mut previous = self.traffic.as_mut().and_then(|t| t.snapshot().ok());
        let mut last_activity = began;
        let mut total = Activity::default();
        loop {
            // The poll's scheduled time, not its wake-up: a late wake must not make ten polls
            // measure 0.9999 s of quiet and cost one more poll.
            let now = ticker.tick().await.into_std();
            if let (Some(traffic), Some(prev)) = (self.traffic.as_mut(), previous.as_ref()) {
                match traffic.snapshot() {
                    Ok(next) => {
                        let activity = compare(prev, &next);
                        self.metrics.app_connections.set(activity.open as i64);
                        total.new_connections += activity.new_connections;
                        total.bytes_in += activity.bytes_in;
                        if !activity.is_quiet() {
                            tracing::debug!(?activity, "drain: traffic");
                            last_activity = now;
                        }
                        previous = Some(next);
                    }
                    // A failed look is no evidence of quiet.
                    Err(e) => {
                        tracing::warn!(error = %e, "drain: cannot read the app port's sockets");
                        last_activity = now;
                    }
                }
            }
            let elapsed = now - began;
            let outcome = if elapsed >= self.config.max {
                Some("max")
            } else if elapsed >= self.config.delay && now - last_activity >= self.config.quiet {
                Some("quiet")
            } else {
                None
            };
            if let Some(outcome) = outcome {
                return DrainEnd {
                    outcome,
                    duration_seconds: elapsed.as_secs_f64(),
                    new_connections: total.new_connections,
                    bytes_in: total.bytes_in,
                };
            }
        }
    }

    /// Refreshes the open-connections gauge outside a drain.
    fn look(&mut self) {
        if let Some(traffic) = self.traffic.as_mut() {
            match traffic.snapshot() {
                Ok(s) => self
                    .metrics
                    .app_connections
                    .set(s.sockets.values().filter(|s| s.open).count() as i64),
                Err(e) => tracing::debug!(error = %e, "cannot read the app port's sockets"),
            }
        }
    }
}

/// Who may start a drain: loopback always; others with the drain token, or once the API server
/// says the pod is terminating (the kubelet's preStop hook comes from the node).
pub struct Access {
    pub token: Option<Vec<u8>>,
    /// Set by the Kubernetes watcher when the pod has a deletionTimestamp.
    pub terminating: Arc<AtomicBool>,
}

impl Access {
    pub fn allows(&self, peer: IpAddr, presented: Option<&[u8]>) -> bool {
        if crate::net::is_loopback(peer) || self.terminating.load(Ordering::Relaxed) {
            return true;
        }
        match (&self.token, presented) {
            // Constant time: the comparison must not tell a caller how much of a guess was right.
            (Some(token), Some(given)) => bool::from(token.as_slice().ct_eq(given)),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(token: Option<&str>, terminating: bool) -> Access {
        Access {
            token: token.map(|t| t.as_bytes().to_vec()),
            terminating: Arc::new(AtomicBool::new(terminating)),
        }
    }

    #[test]
    fn loopback_may_always_drain() {
        let a = access(None, false);
        for ip in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(a.allows(ip.parse().unwrap(), None), "{ip}");
        }
    }

    #[test]
    fn others_need_the_exact_token() {
        let a = access(Some("s3cret"), false);
        let node: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(a.allows(node, Some(b"s3cret")));
        assert!(!a.allows(node, Some(b"s3cre")));
        assert!(!a.allows(node, Some(b"s3cret!")));
        assert!(!a.allows(node, Some(b"")));
        assert!(!a.allows(node, None));
        assert!(
            !access(None, false).allows(node, Some(b"anything")),
            "no token configured"
        );
    }

    #[test]
    fn a_terminating_pod_may_be_drained_from_the_node() {
        let a = access(None, true);
        assert!(a.allows("10.1.2.3".parse().unwrap(), None));
    }
}
