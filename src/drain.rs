//! The drain: not ready at once, held until the load balancers have had time to notice, then ended.
//! `/drain`, SIGTERM and the demo all join the same one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::watcher::Input;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DrainEnd {
    pub outcome: &'static str,
    pub duration_seconds: f64,
}

#[derive(Clone)]
pub struct Drain(Arc<Inner>);

struct Inner {
    started: watch::Sender<bool>,
    ended: watch::Sender<Option<DrainEnd>>,
    delay: Duration,
    inputs: mpsc::Sender<Input>,
    metrics: Metrics,
    /// The watch runtime, so the drain timer runs beside the probes and not behind a flooded server.
    runtime: Handle,
}

impl Drain {
    pub fn new(
        delay: Duration,
        inputs: mpsc::Sender<Input>,
        metrics: Metrics,
        runtime: Handle,
    ) -> Self {
        Drain(Arc::new(Inner {
            started: watch::Sender::new(false),
            ended: watch::Sender::new(None),
            delay,
            inputs,
            metrics,
            runtime,
        }))
    }

    /// Flips to true when a drain starts.
    pub fn started(&self) -> watch::Receiver<bool> {
        self.0.started.subscribe()
    }

    /// Starts the drain, or joins the one under way, and resolves when it has ended.
    pub fn start(&self, by: &str) -> impl std::future::Future<Output = DrainEnd> + Send + 'static {
        let first = self
            .0
            .started
            .send_if_modified(|started| !std::mem::replace(started, true));
        if first {
            tracing::info!(by, delay = ?self.0.delay, "drain started: not ready from now on");
            let inner = self.0.clone();
            let message = format!("drain requested by {by}");
            self.0.runtime.spawn(async move {
                let began = Instant::now();
                let _ = inner.inputs.send(Input::Drain { message }).await;
                tokio::time::sleep_until((began + inner.delay).into()).await;
                let seconds = began.elapsed().as_secs_f64();
                let end = DrainEnd {
                    outcome: "quiet",
                    duration_seconds: seconds,
                };
                inner.metrics.drains.with_label_values(&[end.outcome]).inc();
                inner.metrics.drain_duration.observe(seconds);
                tracing::info!(outcome = end.outcome, seconds, "drain ended");
                inner.ended.send_replace(Some(end));
            });
        }
        let mut ended = self.0.ended.subscribe();
        async move {
            match ended.wait_for(Option::is_some).await {
                Ok(end) => end.unwrap_or(FALLBACK),
                // The sender lives in `Inner`, which this receiver's drain keeps alive.
                Err(_) => FALLBACK,
            }
        }
    }
}

const FALLBACK: DrainEnd = DrainEnd {
    outcome: "quiet",
    duration_seconds: 0.0,
};
