//! OOM kills from the kernel's counters: one count per kill, settled once the counters stop
//! moving; looks soon after v2's `oom` event; the cooldown after a kill, also while the cgroup
//! cannot be read. Pure: time comes in with each look.

use std::time::{Duration, Instant};

use super::super::sample::{Bound, OomCounts};
use crate::engine::Observation;
use crate::reason::Reason;

/// After the OOM counters move, how long they must stay still before the kill is accounted: the
/// kernel counts a group kill member by member (the victim first, the rest after), and tells of
/// changes to `memory.events` at most every 10 ms.
pub const OOM_SETTLE: Duration = Duration::from_millis(50);
/// After v2's `oom` event (the limit hit, the killer about to act) without a kill yet: look
/// again this soon, then twice as late each time, this many times. The kernel tells of the
/// kill's change to `memory.events` up to 10 ms late (its notifications' rate limit); v1's
/// eventfd does the same follow-up.
const OOM_FOLLOW_UP_FIRST: Duration = Duration::from_millis(2);
const OOM_FOLLOW_UPS: u32 = 6;

/// What the kernel did in one OOM burst, once its counters stopped moving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomSettled {
    /// Times the OOM killer acted: one per OOM, whether one process or a whole group died.
    pub kills: u64,
    /// Of those, the kills of a whole group (`memory.oom.group=1`, the kubelet's default on v2).
    pub group_kills: u64,
    /// Processes killed in all, as the kernel counted them, less the victim of a group kill,
    /// which it counts twice.
    pub processes: u64,
}

impl OomSettled {
    /// For the log and the Event: "1 OOM kill(s) of the whole group (memory.oom.group), 3
    /// process(es) killed, at the pod's memory.max of 67108864 bytes".
    pub fn describe(&self, limit: Option<u64>, bound: Option<Bound>) -> String {
        let what = match (self.kills, self.group_kills) {
            (k, g) if g == k => format!(
                "{k} OOM kill(s) of the whole group (memory.oom.group), {} process(es) killed",
                self.processes
            ),
            (k, 0) => format!("{k} OOM kill(s), one process each"),
            (k, g) => format!(
                "{k} OOM kill(s), {g} of them of the whole group, {} process(es) killed",
                self.processes
            ),
        };
        match (limit, bound) {
            (Some(limit), Some(bound)) => format!(
                "{what}, at {} {} of {limit} bytes",
                bound.scope.describe(),
                bound.file
            ),
            _ => format!("{what}, with no memory limit seen"),
        }
    }

    /// From the counters' rise over the burst. With group kills, every kill of the burst is
    /// taken for one (the kubelet sets `memory.oom.group` on every container or on none).
    fn from_rise(rise: OomCounts) -> OomSettled {
        if rise.group_kills > 0 {
            OomSettled {
                kills: rise.group_kills,
                group_kills: rise.group_kills,
                processes: rise.kills.saturating_sub(rise.group_kills),
            }
        } else {
            OomSettled {
                kills: rise.kills,
                group_kills: 0,
                processes: rise.kills,
            }
        }
    }
}

/// OOM counters that moved and have not settled yet.
#[derive(Clone, Copy, Debug)]
struct Burst {
    /// The counters before it.
    base: OomCounts,
    /// Kills counted already (the first, at once).
    counted: u64,
    settle_at: Instant,
}

/// What one look at the counters says.
pub(super) struct Look {
    /// The counters rose: a kill.
    pub(super) moved: bool,
    pub(super) new_kills: u64,
    pub(super) settled: Option<OomSettled>,
    pub(super) observation: Option<Observation>,
}

pub(super) struct OomTracker {
    cooldown: Duration,
    seen: Option<OomCounts>,
    burst: Option<Burst>,
    /// The next look after an `oom` event with no kill yet, and how many were taken.
    follow_up: Option<(Instant, u32)>,
    until: Option<Instant>,
}

impl OomTracker {
    pub(super) fn new(cooldown: Duration) -> Self {
        OomTracker {
            cooldown,
            seen: None,
            burst: None,
            follow_up: None,
            until: None,
        }
    }

    /// A new cgroup's counters start at zero: every kill it counts is new. A running cooldown
    /// goes on: the kill happened.
    pub(super) fn new_cgroup(&mut self) {
        self.seen = Some(OomCounts::default());
        self.burst = None;
    }

    /// The cooldown's end, the look that settles a burst, or a follow-up look.
    pub(super) fn wake_at(&self) -> Option<Instant> {
        let settle = self.burst.map(|b| b.settle_at);
        let follow_up = self.follow_up.map(|(at, _)| at);
        [self.until, settle, follow_up].into_iter().flatten().min()
    }

    pub(super) fn look(&mut self, at: Instant, counts: Option<OomCounts>) -> Look {
        let moved = self.moved(at, counts);
        let (new_kills, settled) = self.count(at, moved);
        Look {
            moved,
            new_kills,
            settled,
            observation: self.observation(at, counts),
        }
    }

    pub(super) fn unreadable(&mut self, at: Instant) -> Look {
        self.follow_up = None;
        let (new_kills, settled) = self.count(at, false);
        Look {
            moved: false,
            new_kills,
            settled,
            observation: self.observation(at, None),
        }
    }

    /// True when the OOM counters rose since the previous sample (a smaller count is a new
    /// cgroup, after a container restart: a new baseline).
    fn moved(&mut self, at: Instant, counts: Option<OomCounts>) -> bool {
        let Some(now) = counts else {
            // Nothing to follow up on where nothing can be read.
            self.follow_up = None;
            return false;
        };
        let Some(seen) = self.seen.replace(now) else {
            return false;
        };
        if now.kills < seen.kills || now.group_kills < seen.group_kills {
            self.burst = None;
            self.follow_up = None;
            return false;
        }
        self.follow_up = match self.follow_up {
            _ if now.kills > seen.kills => None,
            _ if now.ooms > seen.ooms => Some((at + OOM_FOLLOW_UP_FIRST, 1)),
            Some((due, n)) if at >= due && n < OOM_FOLLOW_UPS => {
                Some((at + OOM_FOLLOW_UP_FIRST * 2u32.pow(n), n + 1))
            }
            Some((due, n)) if at < due => Some((due, n)),
            _ => None,
        };
        if now.kills == seen.kills && now.group_kills == seen.group_kills {
            return false;
        }
        self.until = Some(at + self.cooldown);
        match &mut self.burst {
            Some(burst) => burst.settle_at = at + OOM_SETTLE,
            None => {
                self.burst = Some(Burst {
                    base: seen,
                    counted: 0,
                    settle_at: at + OOM_SETTLE,
                })
            }
        }
        true
    }

    /// The kills to count now: one at once when a burst starts (a kill happened, whatever it
    /// turns out to be), the rest when it settles, with its account. It settles on the last
    /// counters seen, also when the cgroup can no longer be read (gone with the app's last
    /// process, or removed).
    fn count(&mut self, at: Instant, moved: bool) -> (u64, Option<OomSettled>) {
        let (Some(now), Some(burst)) = (self.seen, self.burst.as_mut()) else {
            return (0, None);
        };
        if moved && burst.counted == 0 {
            burst.counted = 1;
            return (1, None);
        }
        if moved || at < burst.settle_at {
            return (0, None);
        }
        let settled = OomSettled::from_rise(OomCounts {
            kills: now.kills - burst.base.kills,
            group_kills: now.group_kills - burst.base.group_kills,
            ooms: 0,
        });
        let more = settled.kills.saturating_sub(burst.counted);
        self.burst = None;
        (more, Some(settled))
    }

    /// `None` when the source shows no OOM kills and none is cooling down; while one is, a
    /// failure even when the cgroup cannot be read any more: the kill happened.
    fn observation(&mut self, at: Instant, counts: Option<OomCounts>) -> Option<Observation> {
        if self.until.is_some_and(|until| at >= until) {
            self.until = None;
        }
        let cooldown = humantime::format_duration(self.cooldown);
        match (self.until, counts) {
            (Some(_), Some(c)) => Some(Observation::Failure {
                reason: Reason::OomKilled,
                message: format!(
                    "OOM kill in the app's cgroup (the kernel's counters: oom_kill {}, oom_group_kill {}); ready again {cooldown} after the last",
                    c.kills, c.group_kills
                ),
            }),
            (Some(_), None) => Some(Observation::Failure {
                reason: Reason::OomKilled,
                message: format!("OOM kill in the app's cgroup; ready again {cooldown} after the last"),
            }),
            (None, Some(_)) => Some(Observation::Success),
            (None, None) => None,
        }
    }
}
