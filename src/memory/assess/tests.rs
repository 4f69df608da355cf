use super::super::sample::{OomCounts, Scope};
use super::*;

const MIB: u64 = 1 << 20;

fn thresholds() -> Thresholds {
    Thresholds {
        unready_above: 0.92,
        ready_below: 0.85,
        pressure_full_above: Some(20.0),
        pressure_some_above: None,
        predict_within: Some(Duration::from_secs(30)),
        oom_cooldown: Duration::from_secs(15),
    }
}

fn sample(t0: Instant, ms: u64, ws: u64) -> Sample {
    Sample {
        working_set: ws,
        limit: Some(100 * MIB),
        bound: Some(Bound {
            level: 0,
            scope: Scope::Own,
            file: "memory.max",
        }),
        oom: Some(OomCounts::default()),
        ..Sample::empty(t0 + Duration::from_millis(ms))
    }
}

fn kills(kills: u64, group_kills: u64) -> Option<OomCounts> {
    Some(OomCounts {
        kills,
        group_kills,
        ooms: 0,
    })
}

fn reason(o: &Observation) -> Option<Reason> {
    match o {
        Observation::Success => None,
        Observation::Failure { reason, .. } => Some(*reason),
    }
}

#[test]
fn usage_has_hysteresis_between_the_two_thresholds() {
    let t0 = Instant::now();
    let mut a = Assessor::new(thresholds());
    let mut at = |ms, ws| reason(&a.assess(&sample(t0, ms, ws)).usage);
    assert_eq!(at(0, 90 * MIB), None);
    assert_eq!(at(30_000, 93 * MIB), Some(Reason::MemoryHigh));
    assert_eq!(
        at(60_000, 88 * MIB),
        Some(Reason::MemoryHigh),
        "between: stays"
    );
    assert_eq!(at(90_000, 84 * MIB), None);
    assert_eq!(at(120_000, 88 * MIB), None, "between: stays ready");
}

#[test]
fn a_cgroup_under_oom_is_memory_high_whatever_the_numbers() {
    let mut a = Assessor::new(thresholds());
    let mut s = sample(Instant::now(), 0, MIB);
    s.under_oom = true;
    assert_eq!(reason(&a.assess(&s).usage), Some(Reason::MemoryHigh));
    s.under_oom = false;
    assert_eq!(a.assess(&s).usage, Observation::Success);
}

#[test]
fn no_limit_means_no_usage_or_trend_signal() {
    let t0 = Instant::now();
    let mut a = Assessor::new(thresholds());
    for i in 0..10 {
        let mut s = sample(t0, i * 250, (i + 1) * 200 * MIB);
        s.limit = None;
        let r = a.assess(&s);
        assert_eq!(r.usage, Observation::Success);
        assert_eq!(r.trend, Observation::Success);
        assert_eq!(r.predicted_oom, None);
    }
}

#[test]
fn a_steady_leak_is_predicted_before_the_threshold() {
    let t0 = Instant::now();
    let mut a = Assessor::new(thresholds());
    // 2 MiB/s from 50 MiB: the 100 MiB limit in 25 s, inside predict_oom_within (30 s).
    let mut first_prediction = None;
    for i in 0..20u64 {
        let r = a.assess(&sample(t0, i * 250, 50 * MIB + i * MIB / 2));
        if first_prediction.is_none() && reason(&r.trend) == Some(Reason::OomPredicted) {
            first_prediction = Some((i, r.predicted_oom.unwrap()));
        }
        assert_eq!(r.usage, Observation::Success);
    }
    let (i, eta) = first_prediction.expect("predicted");
    assert_eq!(i, 2, "three samples are enough");
    assert!((eta - 24.5).abs() < 0.5, "eta {eta}");
}

#[test]
fn a_prediction_hovering_at_the_threshold_does_not_flap() {
    let t0 = Instant::now();
    let mut a = Assessor::new(thresholds());
    let mut ws = 60.0;
    let mut at = 0;
    let mut step = |a: &mut Assessor, rate: f64| {
        at += 1000;
        ws += rate;
        a.assess(&sample(t0, at, (ws * MIB as f64) as u64))
    };
    // 1.2 MiB/s from 60 of 100 MiB: under 30 s to the limit, predicted.
    let mut r = step(&mut a, 1.2);
    for _ in 0..7 {
        r = step(&mut a, 1.2);
    }
    assert_eq!(reason(&r.trend), Some(Reason::OomPredicted));
    // Growth slows: the estimate moves past 30 s; the prediction holds up to 1.2 × 30 s.
    let mut in_band = 0;
    for _ in 0..5 {
        let r = step(&mut a, 0.5);
        let eta = r.predicted_oom.unwrap();
        let expected = (eta < 36.0).then_some(Reason::OomPredicted);
        assert_eq!(reason(&r.trend), expected, "at eta {eta}");
        in_band += usize::from(eta > 30.0 && eta < 36.0);
    }
    assert!(in_band > 0, "the scenario never reached the band");
}

#[test]
fn flat_or_falling_memory_and_small_apps_are_not_predicted() {
    let t0 = Instant::now();
    let mut a = Assessor::new(thresholds());
    for i in 0..8 {
        let r = a.assess(&sample(t0, i * 250, 80 * MIB - i * MIB));
        assert_eq!(r.trend, Observation::Success);
        assert_eq!(r.predicted_oom, None);
    }
    let mut a = Assessor::new(thresholds());
    for i in 0..8 {
        // Fast start-up growth, far below the limit.
        let r = a.assess(&sample(t0, i * 250, 10 * MIB + i * 4 * MIB));
        assert_eq!(r.trend, Observation::Success, "sample {i}");
        assert_eq!(
            r.predicted_oom.is_some(),
            i >= 2,
            "an estimate from the third sample"
        );
    }
}

#[test]
fn an_oom_kill_is_counted_once_and_cools_down() {
    let t0 = Instant::now();
    let mut a = Assessor::new(thresholds());
    let mut s = sample(t0, 0, 10 * MIB);
    s.oom = kills(3, 0); // history from before sidewatch started
    let r = a.assess(&s);
    assert_eq!((r.new_oom_kills, r.oom), (0, Some(Observation::Success)));
    s = sample(t0, 1000, 10 * MIB);
    s.oom = kills(5, 0);
    let r = a.assess(&s);
    assert_eq!((r.new_oom_kills, r.settled), (1, None), "the first at once");
    assert_eq!(reason(r.oom.as_ref().unwrap()), Some(Reason::OomKilled));
    assert_eq!(
        a.wake_at(),
        Some(t0 + Duration::from_millis(1000) + OOM_SETTLE)
    );
    // Still within the settling time: nothing more yet.
    s.at += OOM_SETTLE / 2;
    assert_eq!(a.assess(&s).new_oom_kills, 0);
    s.at = t0 + Duration::from_millis(1000) + OOM_SETTLE;
    let r = a.assess(&s);
    let settled = OomSettled {
        kills: 2,
        group_kills: 0,
        processes: 2,
    };
    assert_eq!((r.new_oom_kills, r.settled), (1, Some(settled)));
    assert_eq!(a.wake_at(), Some(t0 + Duration::from_millis(16_000)));
    s.at = t0 + Duration::from_millis(15_999);
    let r = a.assess(&s);
    assert_eq!(
        (r.new_oom_kills, reason(r.oom.as_ref().unwrap())),
        (0, Some(Reason::OomKilled))
    );
    s.at = t0 + Duration::from_millis(16_000);
    assert_eq!(a.assess(&s).oom, Some(Observation::Success));
    // A new cgroup starts from 0 again: a new baseline, not a kill.
    s.oom = kills(0, 0);
    assert_eq!(a.assess(&s).new_oom_kills, 0);
    s.oom = kills(1, 0);
    assert_eq!(a.assess(&s).new_oom_kills, 1);
}

/// memory.oom.group=1: the kernel counts the victim, then the group kill, then every member
/// (the victim again). A look in the middle sees only part of it; the burst is still one kill.
#[test]
fn a_group_kill_is_one_kill_however_its_counters_are_caught() {
    let t0 = Instant::now();
    let mut a = Assessor::new(thresholds());
    let mut s = sample(t0, 0, 10 * MIB);
    a.assess(&s);
    // Three processes: oom_kill +4, oom_group_kill +1, seen in two looks.
    s.at += Duration::from_millis(100);
    s.oom = kills(1, 0);
    assert_eq!(a.assess(&s).new_oom_kills, 1);
    s.at += Duration::from_millis(10);
    s.oom = kills(4, 1);
    let r = a.assess(&s);
    assert_eq!((r.new_oom_kills, r.settled), (0, None), "still moving");
    s.at += OOM_SETTLE;
    let r = a.assess(&s);
    let three = OomSettled {
        kills: 1,
        group_kills: 1,
        processes: 3,
    };
    assert_eq!((r.new_oom_kills, r.settled), (0, Some(three)));
    // One process alone under oom.group: +2 and +1, seen at once.
    s.at += Duration::from_millis(1000);
    s.oom = kills(6, 2);
    assert_eq!(a.assess(&s).new_oom_kills, 1);
    s.at += OOM_SETTLE;
    let one = OomSettled {
        kills: 1,
        group_kills: 1,
        processes: 1,
    };
    assert_eq!(a.assess(&s).settled, Some(one));
    // Two group kills of two processes in one burst: two kills, four processes.
    s.at += Duration::from_millis(1000);
    s.oom = kills(12, 4);
    assert_eq!(a.assess(&s).new_oom_kills, 1);
    s.at += OOM_SETTLE;
    let r = a.assess(&s);
    let two = OomSettled {
        kills: 2,
        group_kills: 2,
        processes: 4,
    };
    assert_eq!((r.new_oom_kills, r.settled), (1, Some(two)));
}

/// v2 tells of the limit hit (`oom`) before the kill, and of the kill up to 10 ms later: the
/// assessor asks for looks soon after, ever later, until the kill shows or it gives up.
#[test]
fn an_oom_event_without_a_kill_yet_asks_for_looks_soon_after() {
    let t0 = Instant::now();
    let mut a = Assessor::new(thresholds());
    let mut s = sample(t0, 0, 10 * MIB);
    a.assess(&s);
    assert_eq!(a.wake_at(), None);
    s.at += Duration::from_millis(100);
    s.oom = Some(OomCounts {
        ooms: 1,
        ..OomCounts::default()
    });
    a.assess(&s);
    assert_eq!(a.wake_at(), Some(s.at + Duration::from_millis(2)));
    s.at += Duration::from_millis(2);
    a.assess(&s);
    assert_eq!(a.wake_at(), Some(s.at + Duration::from_millis(4)));
    // A look before it is due (another notification) keeps it.
    let due = a.wake_at();
    s.at += Duration::from_millis(1);
    a.assess(&s);
    assert_eq!(a.wake_at(), due);
    // The kill shows: no more follow-ups, the kill counted at once.
    s.at += Duration::from_millis(3);
    s.oom = Some(OomCounts {
        kills: 1,
        group_kills: 0,
        ooms: 1,
    });
    assert_eq!(a.assess(&s).new_oom_kills, 1);
    assert_eq!(a.wake_at(), Some(s.at + OOM_SETTLE));
    // An oom event with no kill ever (the killer found nothing to kill): the looks end.
    let mut a = Assessor::new(thresholds());
    let mut s = sample(t0, 0, 10 * MIB);
    a.assess(&s);
    s.oom = Some(OomCounts {
        ooms: 1,
        ..OomCounts::default()
    });
    a.assess(&s);
    let mut looks = 0;
    while let Some(at) = a.wake_at() {
        s.at = at;
        a.assess(&s);
        looks += 1;
        assert!(looks <= 10, "the follow-ups end");
    }
    assert_eq!(looks, 6);
}

#[test]
fn high_events_are_counted_from_the_first_look() {
    let t0 = Instant::now();
    let mut a = Assessor::new(thresholds());
    let mut s = sample(t0, 0, 10 * MIB);
    s.high_events = Some(40);
    assert_eq!(a.assess(&s).new_high_events, 0, "history at start-up");
    s.high_events = Some(43);
    assert_eq!(a.assess(&s).new_high_events, 3);
    a.new_cgroup();
    s.high_events = Some(2);
    assert_eq!(a.assess(&s).new_high_events, 2);
}

#[test]
fn the_trend_starts_again_when_another_level_binds() {
    let t0 = Instant::now();
    let mut a = Assessor::new(thresholds());
    let mut pod = |ms, ws, level| {
        let mut s = sample(t0, ms, ws);
        s.bound = Some(Bound {
            level,
            scope: if level == 0 { Scope::Own } else { Scope::Pod },
            file: "memory.max",
        });
        a.assess(&s)
    };
    // 2 MiB/s from 60 MiB at level 0: predicted within 30 s after three samples.
    assert_eq!(pod(0, 60 * MIB, 0).predicted_oom, None);
    pod(1000, 62 * MIB, 0);
    assert!(pod(2000, 64 * MIB, 0).predicted_oom.is_some());
    // The pod's limit binds now: its series starts from its first sample.
    assert_eq!(pod(3000, 70 * MIB, 1).predicted_oom, None);
    assert_eq!(pod(4000, 72 * MIB, 1).predicted_oom, None);
    assert!(pod(5000, 74 * MIB, 1).predicted_oom.is_some());
}

#[test]
fn a_new_cgroup_counts_its_kills_from_zero() {
    let t0 = Instant::now();
    let mut a = Assessor::new(thresholds());
    let mut s = sample(t0, 0, 10 * MIB);
    s.oom = kills(4, 0);
    assert_eq!(a.assess(&s).new_oom_kills, 0, "history at start-up");
    // The new cgroup had its first kill before it was sampled: below the old count, yet new.
    a.new_cgroup();
    s = sample(t0, 1000, 10 * MIB);
    s.oom = kills(1, 0);
    let r = a.assess(&s);
    assert_eq!(r.new_oom_kills, 1);
    assert_eq!(reason(r.oom.as_ref().unwrap()), Some(Reason::OomKilled));
}

#[test]
fn pressure_full_is_on_by_default_and_some_only_when_set() {
    let t0 = Instant::now();
    let mut a = Assessor::new(thresholds());
    let mut s = sample(t0, 0, MIB);
    s.pressure = Some(super::super::read::Pressure {
        some_avg10: 90.0,
        full_avg10: 5.0,
    });
    assert_eq!(a.assess(&s).pressure, Some(Observation::Success));
    s.pressure = Some(super::super::read::Pressure {
        some_avg10: 90.0,
        full_avg10: 25.0,
    });
    let r = a.assess(&s);
    assert_eq!(
        reason(r.pressure.as_ref().unwrap()),
        Some(Reason::MemoryPressure)
    );
    let mut a = Assessor::new(Thresholds {
        pressure_some_above: Some(50.0),
        ..thresholds()
    });
    s.pressure = Some(super::super::read::Pressure {
        some_avg10: 60.0,
        full_avg10: 0.0,
    });
    let r = a.assess(&s);
    assert_eq!(
        reason(r.pressure.as_ref().unwrap()),
        Some(Reason::MemoryPressure)
    );
}
