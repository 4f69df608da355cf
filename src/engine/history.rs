//! The last readiness transitions, for "why was this pod out of rotation?": each with its time,
//! the state it left and how long that lasted, and the reasons (with the failing checks'
//! evidence) of the not-ready side. Bounded: `CAP` transitions, each a few causes of clipped text.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use super::task::Readiness;
use super::{rfc3339, Cause, Verdict};

/// Enough for a crash loop's last hours at one transition a minute, and small enough to render.
pub const CAP: usize = 50;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transition {
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    pub from: &'static str,
    pub to: &'static str,
    /// How long the state it left had lasted (since the previous transition, or the start).
    pub lasted_seconds: f64,
    /// Why it was not ready: the new reasons going not ready, the old ones coming back.
    pub reasons: Vec<Cause>,
}

#[derive(Debug)]
pub struct History {
    entries: VecDeque<Transition>,
    since: SystemTime,
    /// What `/readyz?verbose` and the page show: rebuilt on a transition only.
    shared: Arc<[Transition]>,
}

impl History {
    pub fn new(start: SystemTime) -> Self {
        History {
            entries: VecDeque::with_capacity(CAP),
            since: start,
            shared: Arc::from([]),
        }
    }

    /// Records the turn from `before` to `after` at `at`.
    pub fn record(&mut self, before: &Verdict, after: &Verdict, at: SystemTime) {
        let state = |v: &Verdict| Readiness::of(v).as_str();
        let reasons = if after.ready {
            &before.reasons
        } else {
            &after.reasons
        };
        if self.entries.len() == CAP {
            self.entries.pop_front();
        }
        self.entries.push_back(Transition {
            at,
            from: state(before),
            to: state(after),
            lasted_seconds: at
                .duration_since(self.since)
                .unwrap_or_default()
                .as_secs_f64(),
            reasons: reasons.clone(),
        });
        self.since = at;
        self.shared = self.entries.iter().rev().cloned().collect();
    }

    /// Newest first.
    pub fn latest(&self) -> Arc<[Transition]> {
        self.shared.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::Signal;
    use crate::reason::Reason;

    fn verdict(ready: bool, message: &str) -> Verdict {
        let reasons = if ready {
            Vec::new()
        } else {
            vec![Cause {
                signal: Signal::probe("app"),
                reason: Reason::Http5xx,
                message: message.to_owned(),
                since: SystemTime::UNIX_EPOCH,
            }]
        };
        Verdict {
            ready,
            draining: false,
            reasons,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn the_history_keeps_the_latest_transitions_after_ten_thousand() {
        let start = SystemTime::UNIX_EPOCH;
        let mut history = History::new(start);
        let (up, down) = (verdict(true, ""), verdict(false, "HTTP/1.1 503"));
        let mut at = start;
        for i in 0..10_000u64 {
            at += Duration::from_secs(1 + i % 3);
            let (before, after) = if i % 2 == 0 {
                (&up, &down)
            } else {
                (&down, &up)
            };
            history.record(before, after, at);
        }
        let latest = history.latest();
        assert_eq!(latest.len(), CAP);
        // Newest first: the 10,000th went ready again (from the 9,999th's not ready).
        assert_eq!((latest[0].from, latest[0].to), ("not_ready", "ready"));
        assert_eq!(latest[0].at, at);
        assert_eq!(latest[0].reasons, down.reasons);
        // 9,999 % 3 = 0: the last not-ready stretch lasted 1 s.
        assert_eq!(latest[0].lasted_seconds, 1.0);
        assert_eq!((latest[1].from, latest[1].to), ("ready", "not_ready"));
        assert_eq!(latest[1].reasons, down.reasons);
        assert!(latest.windows(2).all(|w| w[0].at > w[1].at));
        let json = serde_json::to_string(&*latest).unwrap();
        assert!(json.len() < 20_000, "{} bytes", json.len());
    }
}
