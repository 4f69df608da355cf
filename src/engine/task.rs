//! The engine task: takes watcher inputs, runs the engine, publishes each new verdict with its
//! `/readyz` body pre-rendered, and logs and counts readiness transitions. The logs are
//! rate-limited (a flapping app must not flood them); the metrics count every transition.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::bus::{Input, Published};
use super::history::History;
use super::{Change, Engine, Signal, Verdict};
use crate::metrics::{self, label_values, Registry};
use crate::reason::Reason;
use crate::util::sleep_until;

label_values! {
    /// A verdict's readiness, as the `to` label of `sidewatch_ready_transitions_total` and the
    /// history's states name it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Readiness {
        Ready => "ready",
        NotReady => "not_ready",
    }
}

impl Readiness {
    pub fn of(verdict: &Verdict) -> Readiness {
        if verdict.ready {
            Readiness::Ready
        } else {
            Readiness::NotReady
        }
    }
}

/// The verdict's metrics: readiness, its transitions, and which reasons hold it.
pub struct EngineMetrics {
    ready: prometheus::IntGauge,
    transitions: prometheus::IntCounterVec,
    reasons: prometheus::IntGaugeVec,
    known: Vec<Reason>,
}

impl EngineMetrics {
    /// `reasons`: every reason the signals that run here can give, each series there from the start.
    pub fn new(registry: &Registry, reasons: &[Reason]) -> Self {
        let ready = registry.register(metrics::gauge(
            "sidewatch_ready",
            "1 when sidewatch reports this pod ready. When 0, sidewatch_not_ready_reason (or GET /readyz) says why.",
        ));
        let transitions = registry.register(metrics::counter_vec(
            "sidewatch_ready_transitions_total",
            "Readiness changes. A fast rise means a flapping app: read the reasons in the logs.",
            &["to"],
        ));
        for to in Readiness::ALL {
            transitions.with_label_values(&[to.as_str()]);
        }
        let by_reason = registry.register(metrics::gauge_vec(
            "sidewatch_not_ready_reason",
            "1 while a critical signal keeps the pod out of rotation for this reason (starting and draining included), 0 otherwise.",
            &["reason"],
        ));
        let mut known = reasons.to_vec();
        known.extend([Reason::Starting, Reason::Draining]);
        known.sort();
        known.dedup();
        for r in &known {
            by_reason.with_label_values(&[r.as_str()]);
        }
        EngineMetrics {
            ready,
            transitions,
            reasons: by_reason,
            known,
        }
    }

    pub(crate) fn verdict(&self, verdict: &Verdict) {
        self.ready.set(i64::from(verdict.ready));
        for r in &self.known {
            let holds = verdict.reasons.iter().any(|c| c.reason == *r);
            self.reasons
                .with_label_values(&[r.as_str()])
                .set(i64::from(holds));
        }
    }
}

pub async fn run_engine(
    mut engine: Engine,
    mut inputs: mpsc::Receiver<Input>,
    publish: watch::Sender<Arc<Published>>,
    metrics: EngineMetrics,
    stop: CancellationToken,
) {
    metrics.verdict(engine.verdict());
    let mut history = History::new(SystemTime::now());
    let mut limiter = LogLimiter::default();
    loop {
        let due = limiter.due();
        let input = tokio::select! {
            input = inputs.recv() => match input {
                Some(input) => input,
                // Every input has let go of its sender: nothing is left to decide on.
                None => break,
            },
            // At exit the window's summary is logged below: the latest state stays in the logs.
            _ = stop.cancelled() => break,
            _ = sleep_until(due), if due.is_some() => {
                log_flapping(&mut limiter, engine.verdict(), Instant::now());
                continue;
            }
        };
        let now = SystemTime::now();
        let change = match input {
            Input::Observe {
                signal,
                observation,
            } => engine.observe(&signal, observation, now),
            Input::Drain { message } => engine.start_drain(&message, now),
            Input::Blind { part, why } => engine.blind(part, why),
        };
        if change == Change::None {
            continue;
        }
        // What was published is the verdict before this input: nothing sent it since.
        let before = publish.borrow().verdict.clone();
        let verdict = engine.verdict();
        if change == Change::Readiness {
            history.record(&before, verdict, now);
        }
        publish.send_replace(Published::new(&engine, history.latest()));
        metrics.verdict(verdict);
        let what = if change == Change::Readiness {
            let to = Readiness::of(verdict);
            metrics.transitions.with_label_values(&[to.as_str()]).inc();
            Logged::Transition
        } else if labels(&before) != labels(verdict) {
            if starting_ended(&before, verdict) {
                Logged::StartUp
            } else {
                Logged::Reasons
            }
        } else {
            continue;
        };
        let at = Instant::now();
        log_flapping(&mut limiter, &before, at);
        let message = match what {
            Logged::Transition => "readiness changed",
            Logged::Reasons | Logged::StartUp => "reasons changed",
        };
        if what == Logged::StartUp || limiter.admit(what, at) {
            tracing::info!(ready = verdict.ready, reasons = %verdict.summary(), "{message}");
        } else {
            // Still there for whoever asks for debug logs (and the benchmarks).
            tracing::debug!(ready = verdict.ready, reasons = %verdict.summary(), rate_limited = true, "{message}");
        }
    }
    log_flapping(&mut limiter, engine.verdict(), Instant::now() + LOG_WINDOW);
}

/// At most `LOG_BURST` lines about readiness in a `LOG_WINDOW`; past that, changes are counted
/// and one line at the window's end says how many were not logged and what the verdict is then.
/// The first changes and the latest state are always in the logs.
const LOG_BURST: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Logged {
    Transition,
    Reasons,
    /// A signal's first success: start-up progress, logged without limit.
    StartUp,
}

/// The log rate limit: a window opens at the first line after a quiet one.
#[derive(Debug, Default)]
struct LogLimiter {
    window: Option<Instant>,
    logged: u32,
    not_logged: NotLogged,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct NotLogged {
    transitions: u64,
    reasons: u64,
}

impl LogLimiter {
    /// True when this change is logged; otherwise it is counted for the window's summary.
    fn admit(&mut self, what: Logged, now: Instant) -> bool {
        let open = self.window.is_some_and(|w| now < w + LOG_WINDOW);
        if !open {
            self.window = Some(now);
            self.logged = 0;
        }
        if self.logged < LOG_BURST {
            self.logged += 1;
            return true;
        }
        match what {
            Logged::Transition => self.not_logged.transitions += 1,
            Logged::Reasons | Logged::StartUp => self.not_logged.reasons += 1,
        }
        false
    }

    /// When the summary of the changes not logged is due.
    fn due(&self) -> Option<Instant> {
        let pending = self.not_logged != NotLogged::default();
        self.window.filter(|_| pending).map(|w| w + LOG_WINDOW)
    }

    /// The changes not logged in a window that has ended; the next change opens a new one.
    fn take_due(&mut self, now: Instant) -> Option<NotLogged> {
        if self.due().is_none_or(|due| now < due) {
            return None;
        }
        self.window = None;
        Some(std::mem::take(&mut self.not_logged))
    }
}

/// Logs the summary of a window that has ended, with `verdict`, the state at its end.
fn log_flapping(limiter: &mut LogLimiter, verdict: &Verdict, now: Instant) {
    if let Some(n) = limiter.take_due(now) {
        tracing::warn!(
            transitions = n.transitions,
            reason_changes = n.reasons,
            window = %humantime::format_duration(LOG_WINDOW),
            ready = verdict.ready,
            reasons = %verdict.summary(),
            "readiness flapping: changes not logged (rate limit); the metrics count them all"
        );
    }
}

/// True when the only change is that signals left `starting` (their first success).
fn starting_ended(before: &Verdict, after: &Verdict) -> bool {
    let had = labels(before);
    let has = labels(after);
    has.iter().all(|l| had.contains(l))
        && before
            .reasons
            .iter()
            .filter(|c| !has.contains(&(&c.signal, c.reason)))
            .all(|c| c.reason == Reason::Starting)
}

fn labels(v: &Verdict) -> Vec<(&Signal, Reason)> {
    v.reasons.iter().map(|c| (&c.signal, c.reason)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn a_burst_is_logged_then_counted_and_summed_up_at_the_window_end() {
        let start = t0();
        let mut l = LogLimiter::default();
        let ms = |n: u64| start + Duration::from_millis(n);
        for i in 0..LOG_BURST {
            assert!(
                l.admit(Logged::Transition, ms(u64::from(i) * 20)),
                "line {i}"
            );
        }
        assert_eq!(l.due(), None, "nothing suppressed yet");
        for i in 0..30 {
            let what = if i % 3 == 0 {
                Logged::Reasons
            } else {
                Logged::Transition
            };
            assert!(!l.admit(what, ms(300 + i * 20)));
        }
        assert_eq!(l.due(), Some(start + LOG_WINDOW));
        assert_eq!(l.take_due(ms(9_999)), None, "not yet");
        assert_eq!(
            l.take_due(start + LOG_WINDOW),
            Some(NotLogged {
                transitions: 20,
                reasons: 10
            })
        );
        assert_eq!(l.due(), None);
        // Still flapping: a new window, a new burst.
        assert!(l.admit(Logged::Transition, ms(10_050)));
    }

    #[test]
    fn a_quiet_window_resets_the_budget_without_a_summary() {
        let start = t0();
        let mut l = LogLimiter::default();
        for _ in 0..LOG_BURST {
            assert!(l.admit(Logged::Transition, start));
        }
        assert_eq!(l.due(), None);
        assert!(l.admit(Logged::Transition, start + LOG_WINDOW));
    }

    fn verdict(reasons: &[(Signal, Reason)]) -> Verdict {
        Verdict {
            ready: reasons.is_empty(),
            draining: false,
            reasons: reasons
                .iter()
                .map(|(signal, reason)| crate::engine::Cause {
                    signal: signal.clone(),
                    reason: *reason,
                    message: String::new(),
                    since: SystemTime::UNIX_EPOCH,
                })
                .collect(),
            warnings: Vec::new(),
        }
    }

    #[test]
    fn only_signals_leaving_starting_is_start_up_progress() {
        let start = verdict(&[
            (Signal::Memory(crate::engine::Memory::Oom), Reason::Starting),
            (Signal::probe("app"), Reason::Starting),
        ]);
        let later = verdict(&[(Signal::probe("app"), Reason::Starting)]);
        assert!(starting_ended(&start, &later));
        let failing = verdict(&[(Signal::probe("app"), Reason::Refused)]);
        assert!(!starting_ended(&later, &failing));
        let other = verdict(&[
            (Signal::Memory(crate::engine::Memory::Oom), Reason::Starting),
            (Signal::probe("app"), Reason::Refused),
        ]);
        assert!(!starting_ended(&failing, &other));
        let fixed = verdict(&[(Signal::probe("app"), Reason::Starting)]);
        assert!(
            !starting_ended(&failing, &fixed),
            "a failure gone is no start-up"
        );
    }
}
