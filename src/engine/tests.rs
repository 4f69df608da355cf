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

fn probe(name: &str) -> Signal {
    Signal::probe(name)
}

fn reasons(e: &Engine) -> Vec<(String, Reason)> {
    e.verdict()
        .reasons
        .iter()
        .map(|c| (c.signal.to_string(), c.reason))
        .collect()
}

#[test]
fn not_ready_until_the_first_success() {
    let mut e = Engine::new();
    assert_eq!(e.register(probe("app"), SPEC, t(0)), Change::Readiness);
    assert_eq!(reasons(&e), [("probe:app".into(), Reason::Starting)]);
    assert_eq!(e.verdict().reasons[0].since, t(0));
    assert_eq!(
        e.observe(&probe("app"), fail(Reason::Refused), t(1)),
        Change::Detail
    );
    assert_eq!(reasons(&e), [("probe:app".into(), Reason::Refused)]);
    // The first success is enough at start-up, whatever the success threshold.
    assert_eq!(
        e.observe(&probe("app"), Observation::Success, t(2)),
        Change::Readiness
    );
    assert!(e.verdict().ready);
    assert!(e.verdict().reasons.is_empty());
}

#[test]
fn failures_below_the_threshold_keep_the_pod_ready() {
    let mut e = Engine::new();
    e.register(probe("app"), SPEC, t(0));
    e.observe(&probe("app"), Observation::Success, t(1));
    assert_eq!(
        e.observe(&probe("app"), fail(Reason::Timeout), t(2)),
        Change::None
    );
    assert!(e.verdict().ready);
    e.observe(&probe("app"), Observation::Success, t(3));
    // The count of failures restarts after a success.
    assert_eq!(
        e.observe(&probe("app"), fail(Reason::Timeout), t(4)),
        Change::None
    );
    assert_eq!(
        e.observe(&probe("app"), fail(Reason::Timeout), t(5)),
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
    e.register(probe("app"), SPEC, t(0));
    e.observe(&probe("app"), Observation::Success, t(1));
    e.observe(&probe("app"), fail(Reason::Http5xx), t(2));
    e.observe(&probe("app"), fail(Reason::Http5xx), t(3));
    assert!(!e.verdict().ready);
    assert_eq!(
        e.observe(&probe("app"), Observation::Success, t(4)),
        Change::None
    );
    assert!(!e.verdict().ready);
    assert_eq!(
        e.observe(&probe("app"), Observation::Success, t(5)),
        Change::Readiness
    );
    assert!(e.verdict().ready);
}

#[test]
fn a_new_reason_restarts_since_and_the_same_reason_keeps_it() {
    let mut e = Engine::new();
    e.register(probe("app"), SPEC, t(0));
    e.observe(&probe("app"), fail(Reason::Refused), t(1));
    e.observe(&probe("app"), fail(Reason::Refused), t(2));
    assert_eq!(e.verdict().reasons[0].since, t(1));
    assert_eq!(
        e.observe(&probe("app"), fail(Reason::Reset), t(3)),
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
    e.register(probe("app"), SPEC, t(0));
    e.register(probe("extra"), advisory, t(0));
    e.observe(&probe("app"), Observation::Success, t(1));
    assert!(
        e.verdict().ready,
        "a starting non-critical signal does not block"
    );
    e.observe(&probe("extra"), Observation::Success, t(1));
    e.observe(&probe("extra"), fail(Reason::Refused), t(2));
    e.observe(&probe("extra"), fail(Reason::Refused), t(3));
    assert!(e.verdict().ready);
    assert_eq!(e.verdict().warnings.len(), 1);
    assert_eq!(e.verdict().warnings[0].signal, probe("extra"));
}

#[test]
fn every_failing_critical_signal_is_listed() {
    let mut e = Engine::new();
    e.register(probe("a"), SPEC, t(0));
    e.register(probe("b"), SPEC, t(0));
    e.observe(&probe("a"), Observation::Success, t(1));
    assert!(!e.verdict().ready, "b has not succeeded yet");
    e.observe(&probe("b"), Observation::Success, t(1));
    assert!(e.verdict().ready);
    for at in [2, 3] {
        e.observe(&probe("a"), fail(Reason::Refused), t(at));
        e.observe(&probe("b"), fail(Reason::Tls), t(at));
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
    e.register(probe("app"), SPEC, t(0));
    e.observe(&probe("app"), Observation::Success, t(1));
    assert_eq!(e.start_drain("SIGTERM", t(2)), Change::Readiness);
    assert_eq!(reasons(&e), [("drain".into(), Reason::Draining)]);
    assert_eq!(e.start_drain("again", t(3)), Change::None);
    assert_eq!(e.verdict().reasons[0].message, "SIGTERM");
    assert_eq!(
        e.observe(&probe("app"), Observation::Success, t(4)),
        Change::None
    );
    assert!(!e.verdict().ready);
}

#[test]
fn unknown_signals_change_nothing() {
    let mut e = Engine::new();
    assert_eq!(
        e.observe(&probe("nope"), fail(Reason::Refused), t(0)),
        Change::None
    );
    assert!(e.verdict().ready);
}

#[test]
fn verdict_serialises_as_design_md_shows() {
    let mut e = Engine::new();
    e.register(probe("app"), SPEC, t(0));
    e.observe(&probe("app"), fail(Reason::Refused), t(1));
    let json = serde_json::to_value(e.verdict()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"ready": false, "draining": false, "reasons": [{
                "signal": "probe:app", "reason": "refused", "message": "refused happened",
                "since": "2023-11-14T22:13:21.000Z"}]})
    );
}

const SINGLE: SignalSpec = SignalSpec {
    failure_threshold: 1,
    success_threshold: 1,
    critical: true,
};

fn terminating(e: &mut Engine, at: SystemTime) -> Change {
    let pod = Signal::Kube(Kube::Pod);
    e.observe(&pod, fail(Reason::Terminating), at)
}

/// A pod, its probe up, its pod signal registered; `readiness` decides what the drain does.
fn pod_engine(readiness: DrainReadiness) -> Engine {
    let mut e = Engine::with_drain_readiness(readiness);
    e.register(probe("app"), SPEC, t(0));
    e.register(Signal::Kube(Kube::Pod), SINGLE, t(0));
    e.observe(&probe("app"), Observation::Success, t(1));
    e.observe(&Signal::Kube(Kube::Pod), Observation::Success, t(1));
    assert!(e.verdict().ready);
    e
}

#[test]
fn by_default_termination_and_drain_each_take_the_pod_out() {
    let mut e = pod_engine(DrainReadiness::Fail);
    assert_eq!(terminating(&mut e, t(2)), Change::Readiness);
    assert_eq!(e.start_drain("kubelet preStop", t(3)), Change::Detail);
    let v = e.verdict();
    assert!(!v.ready && v.draining);
    let reasons: Vec<Reason> = v.reasons.iter().map(|c| c.reason).collect();
    assert_eq!(reasons, [Reason::Draining, Reason::Terminating]);
    assert!(v.terminating());
}

#[test]
fn serving_while_terminating_keeps_the_pod_ready_and_says_why() {
    let mut e = pod_engine(DrainReadiness::ServeWhileTerminating);
    assert_eq!(terminating(&mut e, t(2)), Change::Detail);
    assert_eq!(e.start_drain("kubelet preStop", t(3)), Change::Detail);
    let v = e.verdict();
    assert!(v.ready && v.draining, "{v:?}");
    let warnings: Vec<Reason> = v.warnings.iter().map(|c| c.reason).collect();
    assert_eq!(warnings, [Reason::Draining, Reason::Terminating]);
    assert!(
        v.terminating(),
        "the preStop hook may still drain without the token"
    );
    // A real failure still takes it out, with the drain said beside it.
    e.observe(&probe("app"), fail(Reason::Refused), t(4));
    assert_eq!(
        e.observe(&probe("app"), fail(Reason::Refused), t(5)),
        Change::Readiness
    );
    assert_eq!(e.verdict().reasons[0].reason, Reason::Refused);
}

#[test]
fn serving_while_terminating_still_fails_a_drain_of_a_pod_kubernetes_keeps() {
    let mut e = pod_engine(DrainReadiness::ServeWhileTerminating);
    assert_eq!(e.start_drain("POST /drain", t(2)), Change::Readiness);
    let v = e.verdict();
    assert!(!v.ready && v.draining);
    assert_eq!(v.reasons[0].reason, Reason::Draining);
}

#[test]
fn a_blind_part_vetoes_nothing_says_why_and_sees_again() {
    let mut e = Engine::new();
    let usage = Signal::Memory(Memory::Usage);
    e.register(probe("app"), SPEC, t(0));
    e.register(usage.clone(), SPEC, t(0));
    e.observe(&probe("app"), Observation::Success, t(1));
    assert_eq!(reasons(&e), [("memory:usage".into(), Reason::Starting)]);
    // Blind before its first sample: not starting, not ready-vetoing, and said.
    let why = "the node agent at http://10.0.0.1:9465 cannot be reached".to_owned();
    assert_eq!(e.blind("memory", Some(why.clone())), Change::Readiness);
    assert!(e.verdict().ready);
    assert!(e.verdict().warnings.is_empty());
    assert_eq!(
        e.parts_not_watched(),
        [NotWatched {
            part: "memory",
            why: why.clone(),
            blind: true
        }]
    );
    let state = |e: &Engine, s: &Signal| {
        e.signals()
            .into_iter()
            .find(|v| v.signal == *s)
            .unwrap()
            .state
    };
    assert_eq!(state(&e, &usage), "blind");
    assert_eq!(state(&e, &probe("app")), "up");
    // The same again changes nothing; another reason is a detail.
    assert_eq!(e.blind("memory", Some(why)), Change::None);
    assert_eq!(
        e.blind("memory", Some("ended the stream".into())),
        Change::Detail
    );
    assert_eq!(e.parts_not_watched().len(), 1);
    // Observations while blind are kept: the signal is judged on them once it sees again.
    e.observe(&usage, fail(Reason::MemoryHigh), t(2));
    e.observe(&usage, fail(Reason::MemoryHigh), t(3));
    assert!(e.verdict().ready);
    assert_eq!(e.blind("memory", None), Change::Readiness);
    assert_eq!(reasons(&e), [("memory:usage".into(), Reason::MemoryHigh)]);
    assert!(e.parts_not_watched().is_empty());
    assert_eq!(e.blind("memory", None), Change::None);
}

#[test]
fn a_part_not_watched_stays_when_another_is_blind_and_serialises_as_before() {
    let mut e = Engine::new();
    e.not_watched("process", "process.match is not set".into());
    e.blind("memory", Some("x".into()));
    e.blind("memory", None);
    let json = serde_json::to_value(e.parts_not_watched()).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{"part": "process", "why": "process.match is not set"}])
    );
    e.blind("memory", Some("x".into()));
    let json = serde_json::to_value(&e.parts_not_watched()[1]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"part": "memory", "why": "x", "blind": true})
    );
}
