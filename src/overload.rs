//! Overload seen from inside the pod: the app port's accept queue and its listeners' drops, and
//! the namespace's listen overflows, as metrics; the port's own judged with a hold and hysteresis
//! into `sidewatch_app_overloaded`, and, opted in (`overload.signal`), into the readiness signal
//! `overload`. Off by default: when every
//! pod of a Service is overloaded, taking them out of rotation moves their load onto fewer.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::engine::bus::Input;
use crate::engine::{Observation, Signal};
use crate::metrics::{self, Registry};
use crate::reason::Reason;
use crate::traffic::{ListenCounters, ListenQueue, ListenWatch};
use crate::units::{duration, Fraction};

const POLL: Duration = Duration::from_secs(1);
/// The namespace's counters judge nothing (the port's own listeners do): they are exported, read
/// once in this many polls, since `/proc/net/netstat` costs as much to read as the rest together.
const COUNTERS_EVERY: u32 = 10;

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverloadConfig {
    /// Fail readiness while overloaded (the metrics are there either way).
    pub signal: bool,
    /// An accept queue this full, of its backlog, is overloaded; it must fall below half of it to
    /// count as relieved.
    pub queue_above: Fraction,
    /// Overloaded once the queue is full or the port's listeners drop connections, poll after
    /// poll, this long; relieved once neither holds for as long.
    #[serde(with = "duration")]
    pub hold: Duration,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        Self {
            signal: false,
            queue_above: Fraction(0.9),
            hold: Duration::from_secs(5),
        }
    }
}

#[derive(Clone)]
pub struct OverloadMetrics {
    queue: prometheus::IntGauge,
    backlog: prometheus::IntGauge,
    accept_drops: prometheus::IntCounter,
    overflows: prometheus::IntCounter,
    drops: prometheus::IntCounter,
    overloaded: prometheus::IntGauge,
}

impl OverloadMetrics {
    pub fn new(registry: &Registry) -> Self {
        OverloadMetrics {
            queue: registry.register(metrics::gauge(
                "sidewatch_app_accept_queue",
                "Connections the kernel accepted on the app port and the app has not yet, summed over its listeners. Near sidewatch_app_accept_backlog, new connections are dropped.",
            )),
            backlog: registry.register(metrics::gauge(
                "sidewatch_app_accept_backlog",
                "The app port's listen backlog, summed over its listeners: the accept queue's bound.",
            )),
            accept_drops: registry.register(metrics::counter(
                "sidewatch_app_accept_drops_total",
                "Connections the app port's listeners dropped, a full accept queue mostly (their sk_drops). Clients see connect timeouts, then 502 or 504.",
            )),
            overflows: registry.register(metrics::counter(
                "sidewatch_listen_overflows_total",
                "Connections dropped in the pod's network namespace, on any port, because an accept queue was full (TcpExt ListenOverflows; the node's with hostNetwork). Read every 10 s.",
            )),
            drops: registry.register(metrics::counter(
                "sidewatch_listen_drops_total",
                "Incoming connections dropped in the pod's network namespace for any reason, overflows included (TcpExt ListenDrops).",
            )),
            overloaded: registry.register(metrics::gauge(
                "sidewatch_app_overloaded",
                "1 while the app port is judged overloaded (overload.queue_above, overload.hold); fails readiness only with overload.signal.",
            )),
        }
    }
}

/// Full or overflowing, held for `hold` before the verdict turns; relieved (below half the
/// threshold, no overflow) held as long before it turns back.
#[derive(Debug)]
pub struct Judge {
    above: f64,
    hold: Duration,
    overloaded: bool,
    since: Option<Instant>,
}

impl Judge {
    pub fn new(config: &OverloadConfig) -> Self {
        Judge {
            above: config.queue_above.0,
            hold: config.hold,
            overloaded: false,
            since: None,
        }
    }

    /// `fullest`: the fullest listener's queue over its backlog, if known; `dropped`: the port's
    /// listeners dropped connections since the last look.
    pub fn look(&mut self, now: Instant, fullest: Option<f64>, dropped: bool) -> bool {
        let turning = if self.overloaded {
            !dropped && fullest.is_none_or(|f| f < self.above / 2.0)
        } else {
            dropped || fullest.is_some_and(|f| f >= self.above)
        };
        if !turning {
            self.since = None;
        } else if now - *self.since.get_or_insert(now) >= self.hold {
            self.overloaded = !self.overloaded;
            self.since = None;
        }
        self.overloaded
    }
}

pub struct OverloadWatcher {
    pub watch: ListenWatch,
    pub config: OverloadConfig,
    pub metrics: OverloadMetrics,
    /// With `overload.signal`.
    pub inputs: Option<mpsc::Sender<Input>>,
    /// The judge's state, for the agent endpoint's `agent.overload_weight`.
    pub judged: watch::Sender<bool>,
}

impl OverloadWatcher {
    pub async fn run(mut self) {
        let mut judge = Judge::new(&self.config);
        let mut last: Option<ListenCounters> = None;
        let mut last_drops: Option<u64> = None;
        let mut said: Option<bool> = None;
        let mut polls = 0u32;
        let mut ticker = crate::beat::interval(POLL);
        loop {
            ticker.tick().await;
            polls = polls.wrapping_add(1);
            let Some(look) = Look::take(self.watch, polls % COUNTERS_EVERY == 1).await else {
                return; // the look panicked: this watch is dead
            };
            self.watch = look.watch;
            let queue = match look.queue {
                Some(Ok(q)) => {
                    self.metrics.queue.set(q.queued as i64);
                    self.metrics.backlog.set(q.backlog as i64);
                    (q.listeners > 0).then_some(q)
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "cannot read the app port's accept queue");
                    None
                }
                None => None,
            };
            // A listener opened again starts from 0: no drop is counted for it.
            let dropped = match (queue, last_drops) {
                (Some(q), Some(before)) => q.drops.saturating_sub(before),
                _ => 0,
            };
            self.metrics.accept_drops.inc_by(dropped);
            last_drops = queue.map(|q| q.drops);
            match look.counters {
                None => {}
                Some(Ok(now)) => {
                    if let Some(before) = last {
                        let overflows = now.overflows.saturating_sub(before.overflows);
                        self.metrics.overflows.inc_by(overflows);
                        self.metrics
                            .drops
                            .inc_by(now.drops.saturating_sub(before.drops));
                    }
                    last = Some(now);
                }
                Some(Err(e)) => tracing::debug!(error = %e, "cannot read the listen counters"),
            }
            let overloaded = judge.look(Instant::now(), queue.map(|q| q.fullest), dropped > 0);
            self.metrics.overloaded.set(i64::from(overloaded));
            self.judged
                .send_if_modified(|was| std::mem::replace(was, overloaded) != overloaded);
            let was = said.replace(overloaded);
            if was == Some(overloaded) {
                continue;
            }
            let port = self.watch.port();
            let what = match queue {
                Some(q) => format!("accept queue {}/{} on port {port}", q.queued, q.backlog),
                None => format!("accept queue on port {port} unknown"),
            };
            let what = format!("{what}, {dropped} connections dropped in the last second");
            if overloaded {
                tracing::warn!(%what, "the app port is overloaded");
            } else if was == Some(true) {
                tracing::info!(%what, "the app port is no longer overloaded");
            }
            let Some(inputs) = &self.inputs else { continue };
            let observation = if overloaded {
                Observation::Failure {
                    reason: Reason::Overloaded,
                    message: what,
                }
            } else {
                Observation::Success
            };
            let input = Input::Observe {
                signal: Signal::Overload,
                observation,
            };
            if inputs.send(input).await.is_err() {
                return; // the engine is gone
            }
        }
    }
}

/// One look at the port: its accept queues (a sock_diag dump) and, every `COUNTERS_EVERY`, the
/// listen counters.
struct Look {
    watch: ListenWatch,
    queue: Option<std::io::Result<ListenQueue>>,
    counters: Option<std::io::Result<ListenCounters>>,
}

impl Look {
    /// A dump walks the kernel's listening hash and `/proc/net/netstat` is generated from every
    /// CPU's counters, and the watch runtime has one thread, the probes': those run on the
    /// blocking pool, so a slow kernel never delays a probe. The lookups of known listeners in
    /// between are answered within their send, and run here: no trip to another thread and
    /// back, once a second. `None` when the blocking part panicked.
    async fn take(mut watch: ListenWatch, counters: bool) -> Option<Look> {
        if !counters {
            if let Some(queue) = watch.look_up() {
                return Some(Look {
                    watch,
                    queue: Some(queue),
                    counters: None,
                });
            }
        }
        tokio::task::spawn_blocking(move || {
            let queue = watch.queue();
            let counters = counters.then(|| watch.counters());
            Look {
                watch,
                queue,
                counters,
            }
        })
        .await
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_turns_after_its_hold_and_back_only_well_below() {
        let config = OverloadConfig {
            hold: Duration::from_secs(5),
            ..OverloadConfig::default()
        };
        let mut judge = Judge::new(&config);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Full for 4 s, a gap, then full for 5 s.
        for s in 0..=4 {
            assert!(!judge.look(at(s), Some(1.0), false));
        }
        assert!(!judge.look(at(5), Some(0.2), false));
        for s in 6..=10 {
            assert!(!judge.look(at(s), Some(0.95), false), "at {s}");
        }
        assert!(judge.look(at(11), Some(0.95), false));
        // 0.6 is below the threshold but not below half of it: still overloaded.
        for s in 12..=30 {
            assert!(judge.look(at(s), Some(0.6), false));
        }
        // Relieved, but overflows still rise (the last at 39).
        for s in 31..=39 {
            assert!(judge.look(at(s), Some(0.0), s % 3 == 0));
        }
        for s in 40..=44 {
            assert!(judge.look(at(s), Some(0.0), false), "at {s}");
        }
        assert!(!judge.look(at(45), None, false));
        // Overflows alone, with no queue known, are overload too.
        for s in 46..=50 {
            assert!(!judge.look(at(s), None, true));
        }
        assert!(judge.look(at(51), None, true));
    }
}
