//! The readiness engine: a pure, synchronous function from signal observations to one verdict.
//!
//! Watchers (probes now; memory, process and Kubernetes watchers later) register a named signal
//! with its thresholds and report each observation. The engine owns no I/O and no clock: every
//! call takes `now`, so tests drive it deterministically.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Serialize, Serializer};

use crate::reason::Reason;

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
    pub signal: String,
    pub reason: Reason,
    pub message: String,
    #[serde(serialize_with = "rfc3339")]
    pub since: SystemTime,
}

/// The engine's answer. `warnings` lists failing non-critical signals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub ready: bool,
    pub reasons: Vec<Cause>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Cause>,
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
    signals: BTreeMap<String, SignalState>,
    drain: Option<Cause>,
    verdict: Verdict,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    pub fn new() -> Self {
        Self {
            signals: BTreeMap::new(),
            drain: None,
            verdict: Verdict {
                ready: true,
                reasons: Vec::new(),
                warnings: Vec::new(),
            },
        }
    }

    /// Adds a signal; it is unhealthy (reason `starting`) until its first success.
    pub fn register(&mut self, signal: &str, spec: SignalSpec, now: SystemTime) -> Change {
        self.signals.insert(
            signal.to_owned(),
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
    pub fn observe(&mut self, signal: &str, observation: Observation, now: SystemTime) -> Change {
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
                    signal: signal.to_owned(),
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
            signal: "drain".to_owned(),
            reason: Reason::Draining,
            message: message.to_owned(),
            since: now,
        });
        self.recompute()
    }

    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    fn recompute(&mut self) -> Change {
        let mut reasons: Vec<Cause> = self.drain.iter().cloned().collect();
        let mut warnings = Vec::new();
        for (name, state) in &self.signals {
            let cause = match (state.health, &state.failure) {
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
        let next = Verdict {
            ready: reasons.is_empty(),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SPEC: SignalSpec = SignalSpec {
        failure_threshold: 2,
        success_threshold: 2,
        critical: true,
    };

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn fail(reason: Reason) -> Observation {
        Observation::Failure {
            reason,
            message: format!("{reason} happened"),
        }
    }

    fn reasons(e: &Engine) -> Vec<(String, Reason)> {
        e.verdict()
            .reasons
            .iter()
            .map(|c| (c.signal.clone(), c.reason))
            .collect()
    }

    #[test]
    fn not_ready_until_the_first_success() {
        let mut e = Engine::new();
        assert_eq!(e.register("probe:app", SPEC, t(0)), Change::Readiness);
        assert_eq!(reasons(&e), [("probe:app".into(), Reason::Starting)]);
        assert_eq!(e.verdict().reasons[0].since, t(0));
        assert_eq!(
            e.observe("probe:app", fail(Reason::Refused), t(1)),
            Change::Detail
        );
        assert_eq!(reasons(&e), [("probe:app".into(), Reason::Refused)]);
        // The first success is enough at start-up, whatever the success threshold.
        assert_eq!(
            e.observe("probe:app", Observation::Success, t(2)),
            Change::Readiness
        );
        assert!(e.verdict().ready);
        assert!(e.verdict().reasons.is_empty());
    }

    #[test]
    fn failures_below_the_threshold_keep_the_pod_ready() {
        let mut e = Engine::new();
        e.register("probe:app", SPEC, t(0));
        e.observe("probe:app", Observation::Success, t(1));
        assert_eq!(
            e.observe("probe:app", fail(Reason::Timeout), t(2)),
            Change::None
        );
        assert!(e.verdict().ready);
        e.observe("probe:app", Observation::Success, t(3));
        // The count of failures restarts after a success.
        assert_eq!(
            e.observe("probe:app", fail(Reason::Timeout), t(4)),
            Change::None
        );
        assert_eq!(
            e.observe("probe:app", fail(Reason::Timeout), t(5)),
            Change::Readiness
        );
        assert!(!e.verdict().ready);
        let cause = &e.verdict().reasons[0];
        assert_eq!(cause.reason, Reason::Timeout);
        assert_eq!(cause.since, t(4), "since is the first failure of the run");
    }

    #[test]
    fn recovery_needs_the_success_threshold() {
        let mut e = Engine::new();
        e.register("probe:app", SPEC, t(0));
        e.observe("probe:app", Observation::Success, t(1));
        e.observe("probe:app", fail(Reason::Http5xx), t(2));
        e.observe("probe:app", fail(Reason::Http5xx), t(3));
        assert!(!e.verdict().ready);
        assert_eq!(
            e.observe("probe:app", Observation::Success, t(4)),
            Change::None
        );
        assert!(!e.verdict().ready);
        assert_eq!(
            e.observe("probe:app", Observation::Success, t(5)),
            Change::Readiness
        );
        assert!(e.verdict().ready);
    }

    #[test]
    fn a_new_reason_restarts_since_and_the_same_reason_keeps_it() {
        let mut e = Engine::new();
        e.register("probe:app", SPEC, t(0));
        e.observe("probe:app", fail(Reason::Refused), t(1));
        e.observe("probe:app", fail(Reason::Refused), t(2));
        assert_eq!(e.verdict().reasons[0].since, t(1));
        assert_eq!(
            e.observe("probe:app", fail(Reason::Reset), t(3)),
            Change::Detail
        );
        assert_eq!(e.verdict().reasons[0].reason, Reason::Reset);
        assert_eq!(e.verdict().reasons[0].since, t(3));
    }

    #[test]
    fn a_non_critical_signal_warns_but_never_vetoes() {
        let mut e = Engine::new();
        let advisory = SignalSpec {
            critical: false,
            ..SPEC
        };
        e.register("probe:app", SPEC, t(0));
        e.register("probe:extra", advisory, t(0));
        e.observe("probe:app", Observation::Success, t(1));
        assert!(
            e.verdict().ready,
            "a starting non-critical signal does not block"
        );
        e.observe("probe:extra", Observation::Success, t(1));
        e.observe("probe:extra", fail(Reason::Refused), t(2));
        e.observe("probe:extra", fail(Reason::Refused), t(3));
        assert!(e.verdict().ready);
        assert_eq!(e.verdict().warnings.len(), 1);
        assert_eq!(e.verdict().warnings[0].signal, "probe:extra");
    }

    #[test]
    fn every_failing_critical_signal_is_listed() {
        let mut e = Engine::new();
        e.register("probe:a", SPEC, t(0));
        e.register("probe:b", SPEC, t(0));
        e.observe("probe:a", Observation::Success, t(1));
        assert!(!e.verdict().ready, "b has not succeeded yet");
        e.observe("probe:b", Observation::Success, t(1));
        assert!(e.verdict().ready);
        for at in [2, 3] {
            e.observe("probe:a", fail(Reason::Refused), t(at));
            e.observe("probe:b", fail(Reason::Tls), t(at));
        }
        assert_eq!(
            reasons(&e),
            [
                ("probe:a".into(), Reason::Refused),
                ("probe:b".into(), Reason::Tls)
            ]
        );
    }

    #[test]
    fn drain_is_not_ready_at_once_and_for_good() {
        let mut e = Engine::new();
        e.register("probe:app", SPEC, t(0));
        e.observe("probe:app", Observation::Success, t(1));
        assert_eq!(e.start_drain("SIGTERM", t(2)), Change::Readiness);
        assert_eq!(reasons(&e), [("drain".into(), Reason::Draining)]);
        assert_eq!(e.start_drain("again", t(3)), Change::None);
        assert_eq!(e.verdict().reasons[0].message, "SIGTERM");
        assert_eq!(
            e.observe("probe:app", Observation::Success, t(4)),
            Change::None
        );
        assert!(!e.verdict().ready);
    }

    #[test]
    fn unknown_signals_change_nothing() {
        let mut e = Engine::new();
        assert_eq!(e.observe("nope", fail(Reason::Refused), t(0)), Change::None);
        assert!(e.verdict().ready);
    }

    #[test]
    fn verdict_serialises_as_design_md_shows() {
        let mut e = Engine::new();
        e.register("probe:app", SPEC, t(0));
        e.observe("probe:app", fail(Reason::Refused), t(1));
        let json = serde_json::to_value(e.verdict()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"ready": false, "reasons": [{
                "signal": "probe:app", "reason": "refused", "message": "refused happened",
                "since": "2023-11-14T22:13:21.000Z"}]})
        );
    }
}
