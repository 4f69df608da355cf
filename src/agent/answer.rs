//! What the agent says, a pure function of the verdict, the overload judge and the time since
//! the pod became ready. Each form is one line HAProxy 2.6's agent parser takes (its words:
//! `up`, `down`, `ready`, `drain`, `N%`, and a description after `#`); a line it cannot parse,
//! or one without its newline, it ignores, so the line always ends in `\n`.

use std::time::{Duration, Instant};

use super::config::{AgentConfig, Weight};
use crate::engine::Verdict;
use crate::metrics::label_values;

/// Where the slow start's ramp begins: a pod that just became ready takes some traffic at once
/// (HAProxy's own `slowstart` starts at its first step, above 0, for the same reason).
pub const SLOW_START_FLOOR: Weight = Weight(10);

/// HAProxy keeps the description for its stats page and logs; a pod's reasons can be long.
const MAX_DESCRIPTION: usize = 200;

label_values! {
    /// The `answer` label of `sidewatch_agent_answers_total`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Kind {
        Up => "up",
        Down => "down",
        Drain => "drain",
        /// Up at less than full weight: a slow start or overload.
        Weight => "weight",
    }
}

/// When the pod last became ready, from the verdicts seen one after another.
#[derive(Debug, Default)]
pub struct Ramp {
    ready_since: Option<Instant>,
}

impl Ramp {
    pub fn see(&mut self, verdict: &Verdict, now: Instant) {
        match (verdict.ready && !verdict.draining, self.ready_since) {
            (true, None) => self.ready_since = Some(now),
            (false, _) => self.ready_since = None,
            (true, Some(_)) => {}
        }
    }

    /// The slow start's weight `now`: linear from the floor to full over `over`.
    fn weight(&self, over: Duration, now: Instant) -> Weight {
        let Some(since) = self.ready_since else {
            return SLOW_START_FLOOR;
        };
        let done = now.saturating_duration_since(since).as_secs_f64() / over.as_secs_f64();
        let floor = f64::from(SLOW_START_FLOOR.0);
        let w = floor + (100.0 - floor) * done.min(1.0);
        Weight(w.floor().clamp(floor, 100.0) as u8)
    }
}

/// The answer to one connection, and its label.
pub fn answer(
    config: &AgentConfig,
    verdict: &Verdict,
    overloaded: bool,
    ramp: &Ramp,
    now: Instant,
) -> (Kind, String) {
    // A drain wins over everything: no new connections, and those under way finish.
    if verdict.draining {
        return (Kind::Drain, "drain\n".to_owned());
    }
    if !verdict.ready {
        return (Kind::Down, format!("down #{}\n", describe(verdict)));
    }
    let mut weight = Weight::FULL;
    if let Some(over) = config.slow_start {
        weight = weight.min(ramp.weight(over, now));
    }
    if overloaded {
        if let Some(w) = config.overload_weight {
            weight = weight.min(w);
        }
    }
    // `ready` lifts a DRAIN this agent (or a sidewatch before a restart) set: only the agent
    // may undo what it did.
    let line = format!("up ready {weight}\n");
    let kind = if weight == Weight::FULL {
        Kind::Up
    } else {
        Kind::Weight
    };
    (kind, line)
}

/// The reasons on one line of printable ASCII, bounded: a message comes from outside (an app's
/// error text) and must not end the line early or start another.
fn describe(verdict: &Verdict) -> String {
    let text: String = verdict
        .summary()
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
        .collect();
    crate::util::clip(&text, MAX_DESCRIPTION).to_owned()
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::engine::{Cause, Signal};
    use crate::reason::Reason;

    fn verdict(ready: bool, draining: bool, message: &str) -> Verdict {
        let reasons = if ready {
            vec![]
        } else {
            vec![Cause {
                signal: Signal::probe("app"),
                reason: Reason::Refused,
                message: message.to_owned(),
                since: SystemTime::now(),
            }]
        };
        Verdict {
            ready,
            draining,
            reasons,
            warnings: vec![],
        }
    }

    fn config(overload: Option<u8>, slow_start: Option<u64>) -> AgentConfig {
        AgentConfig {
            listen: None,
            overload_weight: overload.map(Weight),
            slow_start: slow_start.map(Duration::from_secs),
        }
    }

    #[test]
    fn ready_is_up_at_full_weight_and_draining_is_drain_whatever_else_holds() {
        let now = Instant::now();
        let mut ramp = Ramp::default();
        let up = verdict(true, false, "");
        ramp.see(&up, now);
        let plain = config(None, None);
        assert_eq!(
            answer(&plain, &up, true, &ramp, now),
            (Kind::Up, "up ready 100%\n".into())
        );
        let draining = verdict(false, true, "x");
        assert_eq!(
            answer(&config(Some(50), Some(30)), &draining, true, &ramp, now),
            (Kind::Drain, "drain\n".into())
        );
        // serve_while_terminating keeps it ready while draining: still a drain for HAProxy.
        let serving = verdict(true, true, "");
        assert_eq!(answer(&plain, &serving, false, &ramp, now).0, Kind::Drain);
    }

    #[test]
    fn down_carries_the_reasons_on_one_bounded_line() {
        let hostile = format!("evil\r\nup 100%\n\t#{}", "é".repeat(500));
        let v = verdict(false, false, &hostile);
        let (kind, line) = answer(
            &config(None, None),
            &v,
            false,
            &Ramp::default(),
            Instant::now(),
        );
        assert_eq!(kind, Kind::Down);
        assert!(
            line.starts_with("down #probe:app=refused (evil  up 100% "),
            "{line}"
        );
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        assert!(!line.contains('\r'));
        assert!(
            line.len() <= "down #\n".len() + MAX_DESCRIPTION,
            "{}",
            line.len()
        );
        assert!(line.is_ascii());
    }

    #[test]
    fn slow_start_ramps_from_the_floor_and_starts_again_after_each_unready_spell() {
        let c = config(None, Some(30));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut ramp = Ramp::default();
        let up = verdict(true, false, "");
        ramp.see(&up, t0);
        let w = |ramp: &Ramp, s| answer(&c, &up, false, ramp, at(s));
        assert_eq!(w(&ramp, 0), (Kind::Weight, "up ready 10%\n".into()));
        assert_eq!(w(&ramp, 15).1, "up ready 55%\n");
        assert_eq!(w(&ramp, 30), (Kind::Up, "up ready 100%\n".into()));
        assert_eq!(w(&ramp, 3000).1, "up ready 100%\n");
        // Seeing ready again changes nothing; unready then ready starts over.
        ramp.see(&up, at(20));
        assert_eq!(w(&ramp, 15).1, "up ready 55%\n");
        ramp.see(&verdict(false, false, "x"), at(40));
        ramp.see(&up, at(41));
        assert_eq!(w(&ramp, 41).1, "up ready 10%\n");
    }

    #[test]
    fn overload_lowers_the_weight_only_when_opted_in_and_the_lower_of_two_wins() {
        let now = Instant::now();
        let mut ramp = Ramp::default();
        let up = verdict(true, false, "");
        ramp.see(&up, now);
        assert_eq!(
            answer(&config(Some(50), None), &up, true, &ramp, now),
            (Kind::Weight, "up ready 50%\n".into())
        );
        assert_eq!(
            answer(&config(Some(50), None), &up, false, &ramp, now).1,
            "up ready 100%\n"
        );
        assert_eq!(
            answer(&config(None, None), &up, true, &ramp, now).1,
            "up ready 100%\n"
        );
        let later = now + Duration::from_secs(27);
        assert_eq!(
            answer(&config(Some(50), Some(30)), &up, true, &ramp, now).1,
            "up ready 10%\n"
        );
        assert_eq!(
            answer(&config(Some(50), Some(30)), &up, true, &ramp, later).1,
            "up ready 50%\n"
        );
    }
}
