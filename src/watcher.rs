//! The engine task: takes watcher inputs, runs the engine, publishes each new verdict with its
//! `/readyz` body pre-rendered, and logs and counts readiness transitions.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::engine::{Change, Engine, Observation, Verdict};
use crate::liveness::Liveness;
use crate::metrics::Metrics;

pub enum Input {
    Observe {
        signal: String,
        observation: Observation,
    },
    Drain {
        message: String,
    },
}

/// A verdict as the HTTP server serves it: reading it never waits on the engine.
#[derive(Debug)]
pub struct Published {
    pub verdict: Verdict,
    pub body: Bytes,
}

impl Published {
    pub fn new(verdict: &Verdict) -> Arc<Self> {
        let body = serde_json::to_vec(verdict).unwrap_or_else(|_| b"{\"ready\":false}".to_vec());
        Arc::new(Published {
            verdict: verdict.clone(),
            body: Bytes::from(body),
        })
    }
}

pub async fn run_engine(
    mut engine: Engine,
    mut inputs: mpsc::Receiver<Input>,
    publish: watch::Sender<Arc<Published>>,
    metrics: Metrics,
    liveness: Liveness,
) {
    let guard = liveness.register("engine");
    metrics.ready.set(i64::from(engine.verdict().ready));
    while let Some(input) = inputs.recv().await {
        let now = SystemTime::now();
        let before = publish.borrow().verdict.clone();
        let change = match input {
            Input::Observe {
                signal,
                observation,
            } => engine.observe(&signal, observation, now),
            Input::Drain { message } => engine.start_drain(&message, now),
        };
        if change == Change::None {
            continue;
        }
        let verdict = engine.verdict();
        publish.send_replace(Published::new(verdict));
        if change == Change::Readiness {
            metrics.ready.set(i64::from(verdict.ready));
            let to = if verdict.ready { "ready" } else { "not_ready" };
            metrics.transitions.with_label_values(&[to]).inc();
            tracing::info!(ready = verdict.ready, reasons = %summary(verdict), "readiness changed");
        } else if labels(&before) != labels(verdict) {
            tracing::info!(ready = verdict.ready, reasons = %summary(verdict), "reasons changed");
        }
    }
    // Every watcher has let go of its sender: the process is shutting down.
    guard.finish();
}

fn labels(v: &Verdict) -> Vec<(&str, &str)> {
    v.reasons
        .iter()
        .map(|c| (c.signal.as_str(), c.reason.as_str()))
        .collect()
}

/// `probe:app=refused (connection refused); …` for one log line.
pub fn summary(v: &Verdict) -> String {
    if v.reasons.is_empty() {
        return "none".to_owned();
    }
    v.reasons
        .iter()
        .map(|c| format!("{}={} ({})", c.signal, c.reason, c.message))
        .collect::<Vec<_>>()
        .join("; ")
}
