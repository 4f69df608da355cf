//! One grid for the periodic looks: each period's ticks fall on multiples of it counted from one
//! epoch, so looks of commensurate periods (the probe at 1 s, the overload watch at 1 s, the memory
//! at 2 s or 250 ms, the drain's idle look at 10 s) come due in the same millisecond and wake the
//! watch runtime once for all of them. An idle sidecar's CPU is mostly its wake-ups.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::time::{Interval, MissedTickBehavior};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The first point of `period`'s grid at or after `at`.
fn on_grid(period: Duration, at: Instant) -> Instant {
    let epoch = epoch();
    let period_ns = period.as_nanos().max(1);
    let since = at.saturating_duration_since(epoch).as_nanos();
    let steps = since.div_ceil(period_ns);
    // Saturates far beyond any uptime: a period of years times their count.
    epoch + Duration::from_nanos(u64::try_from(steps * period_ns).unwrap_or(u64::MAX))
}

/// When the look after one now should come: the grid point nearest `period` from now, and at
/// least half a period away. Looks paced this way are `period` apart on average, and on the grid.
pub fn after(period: Duration) -> Instant {
    on_grid(period, Instant::now() + period / 2)
}

/// A ticker on the grid: its first tick at once (the look a watcher makes as it starts), its
/// second half a period to a period and a half later, then every period on the grid. Missed
/// ticks are skipped, so that it stays on the grid: a look that overran its period waits for the
/// next point, not a whole period.
pub struct Ticker {
    first: bool,
    interval: Interval,
}

impl Ticker {
    /// When the tick was due.
    pub async fn tick(&mut self) -> tokio::time::Instant {
        if std::mem::take(&mut self.first) {
            return tokio::time::Instant::now();
        }
        self.interval.tick().await
    }
}

pub fn interval(period: Duration) -> Ticker {
    let mut interval = tokio::time::interval_at(after(period).into(), period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    Ticker {
        first: true,
        interval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commensurate_periods_meet_on_the_grid() {
        let second = Duration::from_secs(1);
        let now = Instant::now();
        let a = on_grid(second, now);
        assert!(a >= now && a - now <= second);
        // A 250 ms grid and a 2 s grid pass through every point of the 1 s grid they reach.
        let quarter = on_grid(Duration::from_millis(250), a);
        assert_eq!(quarter, a);
        let two = on_grid(Duration::from_secs(2), a);
        assert!(two == a || two == a + second);
        // A point on the grid is its own.
        assert_eq!(on_grid(second, a), a);
    }

    #[test]
    fn the_next_look_is_half_a_period_to_one_and_a_half_away() {
        for ms in [1, 250, 1000, 2000, 10_000] {
            let period = Duration::from_millis(ms);
            let now = Instant::now();
            let next = after(period);
            assert!(next >= now + period / 2, "{ms} ms");
            assert!(next <= Instant::now() + period * 3 / 2, "{ms} ms");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_ticker_skips_what_it_missed_and_stays_on_the_grid() {
        let period = Duration::from_secs(1);
        let mut ticker = interval(period);
        let started = tokio::time::Instant::now();
        assert_eq!(ticker.tick().await, started, "the first tick at once");
        let second = ticker.tick().await.into_std();
        assert_eq!(on_grid(period, second), second);
        // A look that overran two periods.
        tokio::time::advance(period * 2 + Duration::from_millis(300)).await;
        let late = ticker.tick().await.into_std();
        let next = ticker.tick().await.into_std();
        assert_eq!(on_grid(period, next), next, "back on the grid");
        assert!(next > late);
    }
}
