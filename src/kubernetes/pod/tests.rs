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
            reason: RestartReason::OomKilled,
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
            reason: RestartReason::Other,
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

fn tracker_of(app: Option<&str>) -> Tracker {
    Tracker::new(
        app.map(str::to_owned),
        "sidewatch".into(),
        "sidewatch.io/healthy".into(),
        Duration::from_secs(15),
    )
}

#[test]
fn the_app_containers_id_and_limit_follow_its_restarts() {
    let mut p = pod(0, None, None, false);
    let mut tr = tracker_of(None);
    // Before the kubelet reports an ID, and without limits: nothing known.
    assert_eq!(tr.observe(&p, at(0)).app_container, AppContainer::default());
    let json = |p: &Pod| serde_json::to_value(p).unwrap();
    let mut v = json(&p);
    v["status"]["containerStatuses"][0]["containerID"] = "containerd://abc123".into();
    v["status"]["containerStatuses"][1]["containerID"] = "containerd://def456".into();
    v["spec"]["containers"][0]["resources"] = serde_json::json!({"limits": {"memory": "64Mi"}});
    p = serde_json::from_value(v.clone()).unwrap();
    let seen = tr.observe(&p, at(1)).app_container;
    assert_eq!(seen.id.as_deref(), Some("abc123"));
    assert_eq!(seen.limit, Some(64 << 20));
    // The restart brings a new ID; the one of another container never counts.
    v["status"]["containerStatuses"][0]["containerID"] = "cri-o://0f0f0f".into();
    p = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(
        tr.observe(&p, at(2)).app_container.id.as_deref(),
        Some("0f0f0f")
    );
    let mut logger = tracker_of(Some("logger"));
    assert_eq!(
        logger.observe(&p, at(2)).app_container.id.as_deref(),
        Some("def456")
    );
    assert_eq!(logger.observe(&p, at(2)).app_container.limit, None);
}

#[test]
fn the_pod_level_limit_counts_when_the_container_has_none() {
    let mut v = serde_json::to_value(pod(0, None, None, false)).unwrap();
    v["spec"]["resources"] = serde_json::json!({"limits": {"memory": "1Gi"}});
    v["spec"]["containers"][1]["resources"] = serde_json::json!({"limits": {"memory": "32Mi"}});
    let p: Pod = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(
        tracker_of(None).observe(&p, at(0)).app_container.limit,
        Some(1 << 30)
    );
    assert_eq!(
        tracker_of(Some("logger"))
            .observe(&p, at(0))
            .app_container
            .limit,
        Some(32 << 20)
    );
    // A quantity the parser cannot read is no limit, not a panic, and not the pod's either: the
    // container's own is the tighter one.
    v["spec"]["containers"][1]["resources"] = serde_json::json!({"limits": {"memory": "lots"}});
    let p: Pod = serde_json::from_value(v).unwrap();
    assert_eq!(
        tracker_of(Some("logger"))
            .observe(&p, at(0))
            .app_container
            .limit,
        None
    );
}
