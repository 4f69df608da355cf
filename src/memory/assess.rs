//! From memory samples to engine observations: thresholds with hysteresis, PSI, the OOM trend, and
//! the cooldown after an OOM kill. Pure: time comes in with each sample.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::sample::{Bound, Sample};
use crate::engine::Observation;
use crate::reason::Reason;

/// The trend is fitted over this much recent history.
const TREND_WINDOW: Duration = Duration::from_secs(10);
/// Below this share of the limit no OOM is predicted: start-up growth of a small app is no leak.
const TREND_FLOOR: f64 = 0.5;
/// A prediction holds until the estimate passes `predict_within` by this factor, so an estimate
/// hovering at the threshold does not flap the pod in and out of rotation.
const TREND_RELEASE: f64 = 1.2;
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    pub unready_above: f64,
    pub ready_below: f64,
    pub pressure_full_above: Option<f64>,
    pub pressure_some_above: Option<f64>,
    pub predict_within: Option<Duration>,
    pub oom_cooldown: Duration,
}

/// What one sample says, signal by signal.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    pub usage: Observation,
    pub pressure: Option<Observation>,
    pub trend: Observation,
    /// Seconds until the limit at the current trend, when memory grows toward a limit.
    pub predicted_oom: Option<f64>,
    pub oom: Option<Observation>,
    /// OOM kills to count now: the first at once when the counters move, the rest of a burst
    /// once they settle.
    pub new_oom_kills: u64,
    /// The full account of the OOM kills since the counters last settled, once they have.
    pub settled: Option<OomSettled>,
    /// `memory.high` events since the previous sample.
    pub new_high_events: u64,
}

pub struct Assessor {
    t: Thresholds,
    high: bool,
    pressured: bool,
    predicted: bool,
    history: VecDeque<(Instant, u64)>,
    /// The level whose limit bound at the last sample: the trend is of one level's working set.
    bound_level: Option<usize>,
    oom: OomTracker,
    high_seen: Option<u64>,
}

impl Assessor {
    pub fn new(t: Thresholds) -> Self {
        Self {
            oom: OomTracker::new(t.oom_cooldown),
            t,
            high: false,
            pressured: false,
            predicted: false,
            history: VecDeque::new(),
            bound_level: None,
            high_seen: None,
        }
    }

    /// A new cgroup in place of the old one (the container restarted): its counters start at zero,
    /// so every kill it counts is new, and the old one's history says nothing about its trend.
    /// A running OOM cooldown goes on: the kill happened.
    pub fn new_cgroup(&mut self) {
        self.oom.new_cgroup();
        self.high_seen = Some(0);
        self.history.clear();
        self.high = false;
        self.predicted = false;
    }

    /// When the assessor needs a sample without a notification: the OOM cooldown's end, or the
    /// look that settles an OOM burst.
    pub fn wake_at(&self) -> Option<Instant> {
        self.oom.wake_at()
    }

    /// What is left to say while the memory cannot be read: no veto but a cooling OOM kill, and
    /// the account of a burst that settles meanwhile.
    pub fn unreadable(&mut self, at: Instant) -> Assessment {
        let look = self.oom.unreadable(at);
        Assessment {
            usage: Observation::Success,
            pressure: None,
            trend: Observation::Success,
            predicted_oom: None,
            oom: look.observation,
            new_oom_kills: look.new_kills,
            settled: look.settled,
            new_high_events: 0,
        }
    }

    pub fn assess(&mut self, s: &Sample) -> Assessment {
        let level = s.bound.map(|b| b.level);
        if level != self.bound_level {
            // Another level's working set: the old series says nothing about this one's trend.
            self.history.clear();
            self.bound_level = level;
        }
        let usage = self.usage(s);
        let pressure = s
            .pressure
            .map(|p| self.pressure(p.some_avg10, p.full_avg10));
        let new_high_events = match (s.high_events, self.high_seen) {
            (Some(now), Some(seen)) => now.saturating_sub(seen),
            _ => 0,
        };
        self.high_seen = s.high_events;
        let look = self.oom.look(s.at, s.oom);
        if look.moved {
            // The kill freed memory: the old trend says nothing about the next one.
            self.history.clear();
        }
        let (trend, predicted_oom) = self.trend(s);
        Assessment {
            usage,
            pressure,
            trend,
            predicted_oom,
            oom: look.observation,
            new_oom_kills: look.new_kills,
            settled: look.settled,
            new_high_events,
        }
    }

    fn usage(&mut self, s: &Sample) -> Observation {
        if s.under_oom {
            return Observation::Failure {
                reason: Reason::MemoryHigh,
                message: format!(
                    "the cgroup is out of memory (under_oom) at {}",
                    mib(s.working_set)
                ),
            };
        }
        let Some(limit) = s.limit.filter(|l| *l > 0) else {
            self.high = false;
            return Observation::Success;
        };
        let share = s.working_set as f64 / limit as f64;
        if share > self.t.unready_above {
            self.high = true;
        } else if share < self.t.ready_below {
            self.high = false;
        }
        if !self.high {
            return Observation::Success;
        }
        Observation::Failure {
            reason: Reason::MemoryHigh,
            message: format!(
                "working set {} is {:.0}% of the {} limit ({}; ready again below {:.0}%)",
                mib(s.working_set),
                share * 100.0,
                mib(limit),
                whose(s.bound),
                self.t.ready_below * 100.0
            ),
        }
    }

    fn pressure(&mut self, some: f64, full: f64) -> Observation {
        let over = |v: f64, limit: Option<f64>| limit.filter(|l| v > *l);
        let full_over = over(full, self.t.pressure_full_above);
        let some_over = over(some, self.t.pressure_some_above);
        self.pressured = full_over.is_some() || some_over.is_some();
        match (full_over, some_over) {
            (Some(l), _) => pressure_failure("full", full, l),
            (None, Some(l)) => pressure_failure("some", some, l),
            (None, None) => Observation::Success,
        }
    }

    fn trend(&mut self, s: &Sample) -> (Observation, Option<f64>) {
        self.history.push_back((s.at, s.working_set));
        while self
            .history
            .front()
            .is_some_and(|(t, _)| s.at.duration_since(*t) > TREND_WINDOW)
        {
            self.history.pop_front();
        }
        let (Some(limit), Some(slope)) = (s.limit, slope(&self.history)) else {
            self.predicted = false;
            return (Observation::Success, None);
        };
        if slope <= 0.0 || s.working_set >= limit {
            self.predicted = false;
            return (Observation::Success, None);
        }
        let eta = (limit - s.working_set) as f64 / slope;
        let floor = (limit as f64 * TREND_FLOOR) as u64;
        let release = if self.predicted { TREND_RELEASE } else { 1.0 };
        self.predicted = self
            .t
            .predict_within
            .is_some_and(|w| s.working_set >= floor && eta < w.as_secs_f64() * release);
        let observation = if self.predicted {
            Observation::Failure {
                reason: Reason::OomPredicted,
                message: format!(
                    "working set {} grows {}/s: the {} limit ({}) in {eta:.1}s",
                    mib(s.working_set),
                    mib(slope as u64),
                    mib(limit),
                    whose(s.bound)
                ),
            }
        } else {
            Observation::Success
        };
        (observation, Some(eta))
    }
}

fn pressure_failure(kind: &str, value: f64, limit: f64) -> Observation {
    Observation::Failure {
        reason: Reason::MemoryPressure,
        message: format!("PSI {kind} avg10 {value:.1}% is above {limit}%"),
    }
}

/// Least-squares slope in bytes per second; `None` with fewer than 3 samples or no time spread.
fn slope(history: &VecDeque<(Instant, u64)>) -> Option<f64> {
    if history.len() < 3 {
        return None;
    }
    let t0 = history.front()?.0;
    let n = history.len() as f64;
    let points = history
        .iter()
        .map(|(t, v)| (t.duration_since(t0).as_secs_f64(), *v as f64));
    let (sx, sy, sxx, sxy) = points.fold((0.0, 0.0, 0.0, 0.0), |(sx, sy, sxx, sxy), (x, y)| {
        (sx + x, sy + y, sxx + x * x, sxy + x * y)
    });
    let denominator = n * sxx - sx * sx;
    (denominator > 1e-9).then(|| (n * sxy - sx * sy) / denominator)
}

/// "the pod's memory.max", for messages.
fn whose(bound: Option<Bound>) -> String {
    match bound {
        Some(b) => format!("{} {}", b.scope.describe(), b.file),
        None => "no limit".to_owned(),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

mod oom;
#[cfg(test)]
mod tests;

use oom::OomTracker;
pub use oom::{OomSettled, OOM_SETTLE};
