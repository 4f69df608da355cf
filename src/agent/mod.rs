//! HAProxy's agent check (`agent-check agent-port P`): a TCP port that answers each connection
//! with one line (the verdict as `up ready N%`, `down #reasons` or `drain`) and closes. Off
//! unless `agent.listen` is set. Bounded like the admin port: a connection cap (at it, new
//! clients wait in the listen backlog), and each connection ended within `CONNECTION_WITHIN`
//! whatever the client does; what HAProxy sends (`agent-send`) is read and dropped.

mod answer;
pub mod config;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use answer::{answer, Kind, Ramp};
use config::AgentConfig;

use crate::engine::bus::Published;
use crate::metrics::{self, Registry};

/// One HAProxy checks every 100 ms at the most, and a connection lasts a round trip: a few
/// load balancers in front of a pod need a handful. The cap is for port scanners.
const MAX_CONNECTIONS: usize = 32;
/// The whole of a connection: the line written, the client's bytes read until it closes.
const CONNECTION_WITHIN: Duration = Duration::from_secs(1);
/// Bytes of `agent-send` read and dropped, at most, before closing.
const MAX_READ: usize = 4096;

#[derive(Clone)]
pub struct AgentMetrics {
    answers: prometheus::IntCounterVec,
}

impl AgentMetrics {
    pub fn new(registry: &Registry) -> Self {
        registry.feature(metrics::Feature::Agent);
        let answers = registry.register(metrics::counter_vec(
            "sidewatch_agent_answers_total",
            "Answers given to HAProxy's agent checks: up (full weight), weight (up at less: slow start or overload), down (not ready), drain. None rising while HAProxy should check means it does not reach agent.listen.",
            &["answer"],
        ));
        for kind in Kind::ALL {
            answers.with_label_values(&[kind.as_str()]);
        }
        AgentMetrics { answers }
    }
}

/// The agent endpoint: the verdict and the overload judge it answers from.
pub struct Agent {
    pub config: AgentConfig,
    pub verdict: watch::Receiver<Arc<Published>>,
    /// The overload judge's state (`false` where there is no app port).
    pub overloaded: watch::Receiver<bool>,
    pub metrics: AgentMetrics,
    /// Counts the connections accepted: the drain subtracts them from the namespace's
    /// PassiveOpens, since HAProxy's checks are not the app's traffic.
    pub accepted: Arc<AtomicU64>,
}

impl Agent {
    /// Serves until `stop`; connections under way end on their own within `CONNECTION_WITHIN`.
    pub async fn serve(mut self, listener: TcpListener, stop: CancellationToken) {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(agent = %addr, "agent: answering HAProxy's agent checks");
        }
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut ramp = Ramp::default();
        ramp.see(&self.verdict.borrow_and_update().verdict, Instant::now());
        let mut slot = None;
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                changed = self.verdict.changed() => {
                    if changed.is_err() {
                        return; // the engine is gone
                    }
                    ramp.see(&self.verdict.borrow_and_update().verdict, Instant::now());
                }
                permit = slots.clone().acquire_owned(), if slot.is_none() => {
                    // The semaphore is never closed.
                    slot = permit.ok();
                }
                accepted = listener.accept(), if slot.is_some() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            // Out of descriptors, mostly: wait rather than spin.
                            tracing::debug!(error = %e, "agent: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    self.accepted.fetch_add(1, Ordering::Relaxed);
                    let (kind, line) = {
                        let published = self.verdict.borrow();
                        let overloaded = *self.overloaded.borrow();
                        answer(&self.config, &published.verdict, overloaded, &ramp, Instant::now())
                    };
                    self.metrics.answers.with_label_values(&[kind.as_str()]).inc();
                    let permit = slot.take();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(CONNECTION_WITHIN, reply(stream, line)).await;
                        drop(permit);
                    });
                }
            }
        }
    }
}

/// Writes the line, then reads what the client sent until it closes: closing with its bytes
/// unread would send a reset, which may destroy the line before HAProxy has read it.
async fn reply(mut stream: TcpStream, line: String) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    stream.write_all(line.as_bytes()).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 512];
    let mut read = 0;
    while read < MAX_READ {
        match stream.read(&mut sink).await? {
            0 => break,
            n => read += n,
        }
    }
    Ok(())
}
