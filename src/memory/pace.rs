//! How soon the next look comes: `memory.interval` while memory moves or nears the limit,
//! `memory.idle_interval` while it sits far from it. Most pods spend their life far from their
//! limit, and four reads a second of files the kernel generates afresh are most of an idle
//! sidecar's CPU. What can happen between two slow looks is covered otherwise: the kernel's
//! notifications (a v1 usage threshold at `unready_above`, v1 OOM eventfd, v2 `memory.events`,
//! PSI triggers) wake the watcher at once, and the first slow look that sees growth turns fast.

use std::time::Duration;

use super::assess::Assessment;
use super::sample::Sample;
use crate::engine::Observation;

/// A change of the working set between two looks above this share of the limit is movement.
const STILL: f64 = 0.01;
/// Fast while the trend reaches the limit within this many times `predict_oom_within`: the
/// prediction then has a full window of fast samples behind it when it fires.
const NEAR_ETA: f64 = 4.0;

pub(super) struct Pace {
    fast: Duration,
    slow: Duration,
    ready_below: f64,
    /// Fast while the trend reaches the limit sooner than this (seconds).
    near_eta: f64,
    /// The working set at the last look that was read.
    last: Option<u64>,
}

impl Pace {
    pub fn new(
        fast: Duration,
        slow: Duration,
        ready_below: f64,
        predict: Option<Duration>,
    ) -> Self {
        Pace {
            fast,
            // An idle interval shorter than the interval is taken as the interval.
            slow: slow.max(fast),
            ready_below,
            near_eta: predict.map_or(0.0, |p| p.as_secs_f64() * NEAR_ETA),
            last: None,
        }
    }

    /// The wait after a look that read `s` and judged it `a`: slow only when every signal is
    /// calm, no OOM kill is being counted, the working set is below `ready_below` of the limit,
    /// the trend does not reach the limit soon, and it moved less than 1 % of the limit since
    /// the last look. Without a limit, only calm counts: nothing nears it.
    pub fn after(&mut self, s: &Sample, a: &Assessment) -> Duration {
        let last = self.last.replace(s.working_set);
        let calm = [
            Some(&a.usage),
            a.pressure.as_ref(),
            Some(&a.trend),
            a.oom.as_ref(),
        ]
        .into_iter()
        .flatten()
        .all(|o| matches!(o, Observation::Success))
            && a.new_oom_kills == 0
            && a.settled.is_none()
            && !s.under_oom;
        let far = match s.limit.filter(|l| *l > 0) {
            None => true,
            Some(limit) => {
                let still = (limit as f64 * STILL) as u64;
                (s.working_set as f64) < limit as f64 * self.ready_below
                    && a.predicted_oom.is_none_or(|eta| eta > self.near_eta)
                    && last.is_some_and(|l| l.abs_diff(s.working_set) <= still)
            }
        };
        if calm && far {
            self.slow
        } else {
            self.fast
        }
    }

    /// After a look that read nothing (the app not found yet, a file that failed): fast, to see
    /// the app as soon as it is there; the movement is measured from the next sample on.
    pub fn unread(&mut self) -> Duration {
        self.last = None;
        self.fast
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const MIB: u64 = 1 << 20;
    const FAST: Duration = Duration::from_millis(250);
    const SLOW: Duration = Duration::from_secs(2);

    fn pace() -> Pace {
        Pace::new(FAST, SLOW, 0.85, Some(Duration::from_secs(30)))
    }

    fn sample(working_set: u64, limit: Option<u64>) -> Sample {
        Sample {
            working_set,
            limit,
            ..Sample::empty(Instant::now())
        }
    }

    fn calm(predicted_oom: Option<f64>) -> Assessment {
        Assessment {
            usage: Observation::Success,
            pressure: Some(Observation::Success),
            trend: Observation::Success,
            predicted_oom,
            oom: Some(Observation::Success),
            new_oom_kills: 0,
            settled: None,
            new_high_events: 0,
        }
    }

    #[test]
    fn slow_only_once_still_and_far() {
        let mut p = pace();
        let limit = Some(100 * MIB);
        // The first look has nothing to compare with.
        assert_eq!(p.after(&sample(20 * MIB, limit), &calm(None)), FAST);
        assert_eq!(p.after(&sample(20 * MIB, limit), &calm(None)), SLOW);
        // Under 1 % of the limit is still; more is movement.
        assert_eq!(
            p.after(&sample(20 * MIB + MIB / 2, limit), &calm(None)),
            SLOW
        );
        assert_eq!(p.after(&sample(22 * MIB, limit), &calm(None)), FAST);
        assert_eq!(p.after(&sample(22 * MIB, limit), &calm(None)), SLOW);
        // A fall is movement too: memory freed may be a restart's or a kill's.
        assert_eq!(p.after(&sample(10 * MIB, limit), &calm(None)), FAST);
    }

    #[test]
    fn fast_near_the_limit_or_its_trend() {
        let mut p = pace();
        let limit = Some(100 * MIB);
        p.after(&sample(86 * MIB, limit), &calm(None));
        // At or above ready_below, however still.
        assert_eq!(p.after(&sample(86 * MIB, limit), &calm(None)), FAST);
        p.after(&sample(50 * MIB, limit), &calm(None));
        // A trend that reaches the limit within 4 x predict_oom_within (120 s).
        assert_eq!(p.after(&sample(50 * MIB, limit), &calm(Some(100.0))), FAST);
        assert_eq!(p.after(&sample(50 * MIB, limit), &calm(Some(500.0))), SLOW);
    }

    #[test]
    fn fast_while_any_signal_fails_or_a_kill_is_counted() {
        let failing = Observation::Failure {
            reason: crate::reason::Reason::MemoryPressure,
            message: String::new(),
        };
        let still = |p: &mut Pace| p.after(&sample(MIB, None), &calm(None));
        let mut p = pace();
        still(&mut p);
        assert_eq!(still(&mut p), SLOW, "no limit, calm: slow");
        let mut a = calm(None);
        a.pressure = Some(failing.clone());
        assert_eq!(p.after(&sample(MIB, None), &a), FAST);
        let mut a = calm(None);
        a.oom = Some(failing);
        assert_eq!(p.after(&sample(MIB, None), &a), FAST);
        let mut a = calm(None);
        a.new_oom_kills = 1;
        assert_eq!(p.after(&sample(MIB, None), &a), FAST);
        assert_eq!(still(&mut p), SLOW);
        assert_eq!(p.unread(), FAST);
    }

    #[test]
    fn an_idle_interval_below_the_interval_is_the_interval() {
        let mut p = Pace::new(SLOW, FAST, 0.85, None);
        p.after(&sample(MIB, None), &calm(None));
        assert_eq!(p.after(&sample(MIB, None), &calm(None)), SLOW);
    }
}
