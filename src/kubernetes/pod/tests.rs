use super::*;

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_694_400 + secs)
}

/// The monotonic clock `secs` into a test.
fn m(secs: u64) -> Instant {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(Instant::now) + Duration::from_secs(secs)
}

/// Both clocks `secs` into a test, agreeing.
fn at(secs: u64) -> Now {
    Now {
        wall: t(secs),
        mono: m(secs),
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A pod with an app container and sidewatch as a native sidecar.
fn pod(
    app_restarts: i32,
    last: Option<(&str, SystemTime)>,
    waiting: Option<&str>,
    deleting: bool,
) -> Pod {
    let last_state = last.map(|(reason, at)| {
            serde_json::json!({"terminated": {"exitCode": 137, "reason": reason, "finishedAt": rfc3339(at)}})
        });
    let state = match waiting {
        Some(w) => serde_json::json!({"waiting": {"reason": w}}),
        None => serde_json::json!({"running": {}}),
    };
    let mut metadata = serde_json::json!({"name": "web-1", "namespace": "shop"});
    if deleting {
        metadata["deletionTimestamp"] = rfc3339(t(0)).into();
    }
    serde_json::from_value(serde_json::json!({
            "metadata": metadata,
            "spec": {
                "initContainers": [{"name": "sidewatch", "restartPolicy": "Always"}],
                "containers": [{"name": "app"}, {"name": "logger"}],
                "readinessGates": [{"conditionType": "sidewatch.io/healthy"}]
            },
            "status": {
                "initContainerStatuses": [{"name": "sidewatch", "restartCount": 9, "ready": true, "image": "s", "imageID": "", "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": rfc3339(t(0))}}}],
                "containerStatuses": [
                    {"name": "app", "restartCount": app_restarts, "ready": true, "image": "a", "imageID": "", "state": state, "lastState": last_state},
                    {"name": "logger", "restartCount": 0, "ready": true, "image": "l", "imageID": ""}
                ]
            }
        }))
        .unwrap()
}

fn tracker() -> Tracker {
    Tracker::new(
        None,
        "sidewatch".into(),
        "sidewatch.io/healthy".into(),
        Duration::from_secs(15),
    )
}

fn reason(o: &Observation) -> Option<Reason> {
    match o {
        Observation::Success => None,
        Observation::Failure { reason, .. } => Some(*reason),
    }
}

#[test]
fn an_oom_kill_seen_rising_holds_for_the_cooldown() {
    let mut tr = tracker();
    let first = tr.observe(&pod(0, None, None, false), at(100));
    assert_eq!(
        (first.app, first.restarts.len(), first.has_gate),
        (Observation::Success, 0, true)
    );
    let u = tr.observe(&pod(1, Some(("OOMKilled", t(99))), None, false), at(101));
    assert_eq!(reason(&u.app), Some(Reason::OomKilled));
    assert_eq!(
        u.restarts,
        [Restart {
            container: "app".into(),
            reason: "oom_killed",
            count: 1
        }]
    );
    assert_eq!(tr.hold_until(), Some(m(116)), "from when the rise was seen");
    assert_eq!(reason(&tr.app_observation(m(115))), Some(Reason::OomKilled));
    assert_eq!(tr.app_observation(m(116)), Observation::Success);
}

#[test]
fn old_terminations_at_start_up_are_history_and_recent_ones_are_not() {
    let mut tr = tracker();
    let u = tr.observe(&pod(3, Some(("Error", t(0))), None, false), at(3600));
    assert_eq!((u.app, u.restarts.len()), (Observation::Success, 0));
    let mut tr = tracker();
    let u = tr.observe(&pod(3, Some(("Error", t(3590))), None, false), at(3600));
    assert_eq!(reason(&u.app), Some(Reason::ContainerRestarted));
    assert_eq!(tr.hold_until(), Some(m(3605)));
}

#[test]
fn a_wall_clock_jump_neither_stretches_nor_cuts_the_cooldown() {
    let mut tr = tracker();
    tr.observe(&pod(0, None, None, false), at(100));
    tr.observe(&pod(1, Some(("Error", t(100))), None, false), at(100));
    // Back an hour: the wall clock says the cooldown has an hour and 15 s to go. It has 15 s.
    let back = Now {
        wall: t(101) - Duration::from_secs(3600),
        mono: m(101),
    };
    let u = tr.observe(&pod(1, Some(("Error", t(100))), None, false), back);
    assert_eq!(reason(&u.app), Some(Reason::ContainerRestarted));
    assert_eq!(tr.hold_until(), Some(m(115)));
    assert_eq!(tr.app_observation(m(115)), Observation::Success);
    // Forward a day during another cooldown: it still lasts its 15 s.
    tr.observe(&pod(2, Some(("Error", t(200))), None, false), at(200));
    let ahead = Now {
        wall: t(201 + 86_400),
        mono: m(201),
    };
    let u = tr.observe(&pod(2, Some(("Error", t(200))), None, false), ahead);
    assert_eq!(reason(&u.app), Some(Reason::ContainerRestarted));
    assert_eq!(tr.hold_until(), Some(m(215)));
}

#[test]
fn a_termination_ahead_of_our_clock_holds_the_cooldown_and_no_more() {
    let mut tr = tracker();
    tr.observe(&pod(0, None, None, false), at(100));
    // The kubelet's clock is an hour ahead of ours.
    tr.observe(&pod(1, Some(("OOMKilled", t(3700))), None, false), at(101));
    assert_eq!(tr.hold_until(), Some(m(116)));
    let mut tr = tracker();
    let u = tr.observe(&pod(1, Some(("OOMKilled", t(3700))), None, false), at(101));
    assert_eq!(reason(&u.app), Some(Reason::OomKilled), "at start-up too");
    assert_eq!(tr.hold_until(), Some(m(116)));
}

#[test]
fn crash_loop_back_off_is_unready_while_it_lasts() {
    let mut tr = tracker();
    tr.observe(&pod(2, None, None, false), at(0));
    let u = tr.observe(&pod(2, None, Some("CrashLoopBackOff"), false), at(1));
    assert_eq!(reason(&u.app), Some(Reason::ContainerRestarted));
    let u = tr.observe(&pod(2, None, None, false), at(2));
    assert_eq!(u.app, Observation::Success);
}

#[test]
fn sidewatch_own_restarts_and_other_containers_do_not_hold_the_app() {
    let mut tr = tracker();
    tr.observe(&pod(0, None, None, false), at(0));
    let mut p = pod(0, None, None, false);
    let status = p.status.as_mut().unwrap();
    status.init_container_statuses.as_mut().unwrap()[0].restart_count = 10;
    status.container_statuses.as_mut().unwrap()[1].restart_count = 1;
    let u = tr.observe(&p, at(1));
    assert_eq!(u.app, Observation::Success);
    assert_eq!(
        u.restarts,
        [Restart {
            container: "logger".into(),
            reason: "other",
            count: 1
        }]
    );
}

#[test]
fn deletion_and_a_missing_gate_are_reported() {
    let mut tr = Tracker::new(
        None,
        "sidewatch".into(),
        "example.com/other".into(),
        Duration::from_secs(15),
    );
    let u = tr.observe(&pod(0, None, None, true), at(0));
    assert!(u.terminating);
    assert!(!u.has_gate);
}
