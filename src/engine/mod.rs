//! The readiness engine: a pure, synchronous function from signal observations to one verdict.
//!
//! Each input (probes, memory, the process, the pod) registers its signals with their thresholds
//! and reports each observation. The engine owns no I/O and no clock: every
//! call takes `now`, so tests drive it deterministically.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Serialize, Serializer};

use crate::reason::Reason;
pub use signal::{Kube, Memory, Signal};

/// How one signal turns observations into health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalSpec {
    /// Consecutive failures that turn a healthy signal unhealthy.
    pub failure_threshold: u32,
    /// Consecutive successes that turn an unhealthy signal healthy again.
    pub success_threshold: u32,
    /// A non-critical signal is reported but never vetoes readiness.
    pub critical: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    Success,
    Failure { reason: Reason, message: String },
}

/// One reason the pod is (or would be) not ready, as `/readyz` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cause {
    pub signal: Signal,
    pub reason: Reason,
    pub message: String,
    #[serde(serialize_with = "rfc3339")]
    pub since: SystemTime,
}

/// The engine's answer. `warnings` lists failing non-critical signals, and the drain and the
/// pod's termination when they do not veto (`DrainReadiness::ServeWhileTerminating`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub ready: bool,
    /// A drain has started: its own state, whether or not it vetoes readiness.
    pub draining: bool,
    pub reasons: Vec<Cause>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Cause>,
}

impl Verdict {
    /// The reasons on one line, for logs and Events: `signal=reason (message); …`.
    pub fn summary(&self) -> String {
        if self.reasons.is_empty() {
            return "none".to_owned();
        }
        self.reasons
            .iter()
            .map(|c| format!("{}={} ({})", c.signal, c.reason, c.message))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The pod is being deleted (its Kubernetes signal says so): the kubelet's preStop hook may
    /// drain without the token.
    pub fn terminating(&self) -> bool {
        self.reasons
            .iter()
            .chain(&self.warnings)
            .any(|c| c.reason == Reason::Terminating)
    }
}

/// One signal on the status page: `failing` is up with failures below its threshold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SignalView {
    pub signal: Signal,
    pub state: &'static str,
    pub critical: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Cause>,
}

/// A part that watches nothing, and why: said by `/readyz?verbose` and the status page, so that
/// "ready" is read knowing what was not looked at. `blind`: the part is set up to watch but cannot
/// see now (its source is away); its signals veto nothing until it sees again.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NotWatched {
    pub part: &'static str,
    pub why: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub blind: bool,
}

/// What a drain does to readiness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainReadiness {
    /// Not ready from the drain's start: load balancers that only follow readiness stop sending.
    #[default]
    Fail,
    /// While Kubernetes terminates the pod, neither the termination nor the drain vetoes: the
    /// pod stays ready, so its endpoint stays `serving` and proxies that fall back to serving
    /// terminating endpoints (KEP-1669) may still use it. A drain of a pod that is not
    /// terminating still fails readiness.
    ServeWhileTerminating,
}

/// What an input changed, so callers log and count only real transitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    None,
    /// Still ready, or still not ready, but the reasons or their messages differ.
    Detail,
    /// Ready flipped.
    Readiness,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    /// Registered, no success yet: not ready (startup grace).
    Starting,
    Up,
    Down,
}

#[derive(Debug)]
struct SignalState {
    spec: SignalSpec,
    health: Health,
    failures: u32,
    successes: u32,
    registered: SystemTime,
    /// The latest failure while failures are consecutive; `since` is when this reason began.
    failure: Option<Cause>,
}

#[derive(Debug)]
pub struct Engine {
    signals: BTreeMap<Signal, SignalState>,
    not_watched: Vec<NotWatched>,
    drain: Option<Cause>,
    drain_readiness: DrainReadiness,
    verdict: Verdict,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    pub fn new() -> Self {
        Self::with_drain_readiness(DrainReadiness::Fail)
    }

    pub fn with_drain_readiness(drain_readiness: DrainReadiness) -> Self {
        Self {
            signals: BTreeMap::new(),
            not_watched: Vec::new(),
            drain: None,
            drain_readiness,
            verdict: Verdict {
                ready: true,
                draining: false,
                reasons: Vec::new(),
                warnings: Vec::new(),
            },
        }
    }

    /// Adds a signal; it is unhealthy (reason `starting`) until its first success.
    pub fn register(&mut self, signal: Signal, spec: SignalSpec, now: SystemTime) -> Change {
        self.signals.insert(
            signal,
            SignalState {
                spec,
                health: Health::Starting,
                failures: 0,
                successes: 0,
                registered: now,
                failure: None,
            },
        );
        self.recompute()
    }

    /// Feeds one observation of a registered signal; unknown signals are ignored.
    pub fn observe(
        &mut self,
        signal: &Signal,
        observation: Observation,
        now: SystemTime,
    ) -> Change {
        let Some(state) = self.signals.get_mut(signal) else {
            return Change::None;
        };
        match observation {
            Observation::Success => {
                state.failures = 0;
                state.successes = state.successes.saturating_add(1);
                let recovered = match state.health {
                    Health::Starting | Health::Up => true,
                    Health::Down => state.successes >= state.spec.success_threshold,
                };
                if recovered {
                    state.health = Health::Up;
                    state.failure = None;
                }
            }
            Observation::Failure { reason, message } => {
                state.successes = 0;
                state.failures = state.failures.saturating_add(1);
                let since = match &state.failure {
                    Some(previous) if previous.reason == reason => previous.since,
                    _ => now,
                };
                state.failure = Some(Cause {
                    signal: signal.clone(),
                    reason,
                    message,
                    since,
                });
                if state.health == Health::Up && state.failures >= state.spec.failure_threshold {
                    state.health = Health::Down;
                }
            }
        }
        self.recompute()
    }

    /// Starts the drain: not ready from now on, whatever the signals say. Later calls change nothing.
    pub fn start_drain(&mut self, message: &str, now: SystemTime) -> Change {
        if self.drain.is_some() {
            return Change::None;
        }
        self.drain = Some(Cause {
            signal: Signal::Drain,
            reason: Reason::Draining,
            message: message.to_owned(),
            since: now,
        });
        self.recompute()
    }

    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// Says that `part` watches nothing, and why.
    pub fn not_watched(&mut self, part: &'static str, why: String) {
        self.not_watched.push(NotWatched {
            part,
            why,
            blind: false,
        });
    }

    /// Says that `part` cannot see now, and why (`Some`), or that it sees again (`None`). While
    /// blind, its signals neither veto nor warn: what it cannot see is no verdict on the app,
    /// and a source shared by a whole node (its agent restarting) must not take every pod out.
    pub fn blind(&mut self, part: &'static str, why: Option<String>) -> Change {
        let before = self.not_watched.clone();
        self.not_watched.retain(|n| !(n.blind && n.part == part));
        if let Some(why) = why {
            self.not_watched.push(NotWatched {
                part,
                why,
                blind: true,
            });
        }
        match self.recompute() {
            Change::None if self.not_watched != before => Change::Detail,
            change => change,
        }
    }

    fn is_blind(&self, signal: &Signal) -> bool {
        self.not_watched
            .iter()
            .any(|n| n.blind && n.part == signal.part())
    }

    pub fn parts_not_watched(&self) -> &[NotWatched] {
        &self.not_watched
    }

    /// Every registered signal as it stands, for the status page.
    pub fn signals(&self) -> Vec<SignalView> {
        self.signals
            .iter()
            .map(|(signal, state)| SignalView {
                signal: signal.clone(),
                state: match state.health {
                    _ if self.is_blind(signal) => "blind",
                    Health::Starting => "starting",
                    Health::Up if state.failure.is_some() => "failing",
                    Health::Up => "up",
                    Health::Down => "down",
                },
                critical: state.spec.critical,
                failure: state.failure.clone(),
            })
            .collect()
    }

    fn recompute(&mut self) -> Change {
        let mut reasons = Vec::new();
        let mut warnings = Vec::new();
        for (name, state) in &self.signals {
            let cause = match (state.health, &state.failure) {
                _ if self.is_blind(name) => continue,
                (Health::Up, _) => continue,
                (_, Some(failure)) => failure.clone(),
                (Health::Starting, None) => Cause {
                    signal: name.clone(),
                    reason: Reason::Starting,
                    message: "no successful check yet".to_owned(),
                    since: state.registered,
                },
                (Health::Down, None) => continue,
            };
            if state.spec.critical {
                reasons.push(cause);
            } else {
                warnings.push(cause);
            }
        }
        // Serving while terminating: the termination and the drain are said, not vetoes.
        let serving = self.drain_readiness == DrainReadiness::ServeWhileTerminating
            && reasons.iter().any(|c| c.reason == Reason::Terminating);
        if serving {
            let (terminating, rest): (Vec<Cause>, Vec<Cause>) = reasons
                .into_iter()
                .partition(|c| c.reason == Reason::Terminating);
            reasons = rest;
            warnings.splice(0..0, self.drain.iter().cloned().chain(terminating));
        } else {
            reasons.splice(0..0, self.drain.iter().cloned());
        }
        let next = Verdict {
            ready: reasons.is_empty(),
            draining: self.drain.is_some(),
            reasons,
            warnings,
        };
        let change = if next.ready != self.verdict.ready {
            Change::Readiness
        } else if next != self.verdict {
            Change::Detail
        } else {
            Change::None
        };
        self.verdict = next;
        change
    }
}

fn rfc3339<S: Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*at))
}

pub mod bus;
pub mod history;
mod signal;
pub mod task;

#[cfg(test)]
mod tests;
