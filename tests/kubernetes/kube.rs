//! sidewatch against a fake API server speaking the real wire format, pointed at with a
//! kubeconfig exactly as a user would: pod watch signals, the readiness gate, Events, and an API
//! server that refuses, dies, comes back (ten times in ten seconds), hangs, fails one kind of
//! request, or forgets history.

#[allow(unused_imports)]
use crate::{common, fake_api, netns};
use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use common::policy::{self, Verdict};
use common::{eventually, healthy, tempdir, Behaviour, Sidewatch, Upstream};
use fake_api::FakeApi;

const WITHIN: Duration = Duration::from_secs(10);

/// The sidecar's environment in every test here.
const SIDECAR_ENV: [(&str, &str); 3] = [
    ("CONTAINER_NAME", "sidewatch"),
    ("SIDEWATCH_KUBERNETES_RESTART_COOLDOWN", "2s"),
    ("SIDEWATCH_DRAIN_PASSIVE_OPENS", "false"),
];

struct Setup {
    api: FakeApi,
    up: Upstream,
    sw: Sidewatch,
    dir: tempdir::Dir,
}

async fn setup(pod: serde_json::Value, env: &[(&str, &str)]) -> Setup {
    setup_with(pod, env, healthy()).await
}

/// As `setup`, with the app answering `app` from the start.
async fn setup_with(pod: serde_json::Value, env: &[(&str, &str)], app: Behaviour) -> Setup {
    let api = FakeApi::start(pod).await;
    let up = Upstream::start(app).await;
    let dir = tempdir::Dir::new();
    let kubeconfig = api.kubeconfig(dir.path());
    let mut all = SIDECAR_ENV.to_vec();
    all.extend_from_slice(env);
    let sw = Sidewatch::start_sidecar(&up.url(), "100ms", &kubeconfig, &all);
    Setup { api, up, sw, dir }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_killed_restart_is_unready_at_once_then_cools_down() {
    let s = setup(fake_api::pod(false), &[]).await;
    s.sw.wait_ready(WITHIN).await;
    s.api.wait_watching().await;
    s.sw.wait_log("kubernetes: on").await;

    s.api
        .update_pod(|pod| fake_api::app_restarted(pod, 1, 137, "OOMKilled", SystemTime::now()));
    // From the transition's log line, which stays: polling /readyz could miss a 2 s cooldown on
    // a loaded machine.
    s.sw.wait_log("kube:app=oom_killed").await;
    let series = "sidewatch_container_restarts_total{app_container=\"app\",reason=\"oom_killed\"}";
    assert_eq!(s.sw.metric(series).await, Some(1.0));
    s.sw.wait_ready(WITHIN).await;

    // A plain restart, and sidewatch's own restart which is no signal.
    s.api.update_pod(|pod| {
        pod["status"]["initContainerStatuses"][0]["restartCount"] = 4.into();
        let app = &mut pod["status"]["containerStatuses"][0];
        app["restartCount"] = 2.into();
        app["lastState"]["terminated"]["reason"] = "Error".into();
    });
    s.sw.wait_log("kube:app=container_restarted").await;
    let own = "sidewatch_container_restarts_total{app_container=\"sidewatch\",reason=\"other\"}";
    assert_eq!(s.sw.metric(own).await, None);
    s.sw.wait_ready(WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_termination_at_start_up_is_history() {
    let mut pod = fake_api::pod(false);
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    fake_api::app_restarted(&mut pod, 7, 137, "OOMKilled", an_hour_ago);
    let s = setup(pod, &[]).await;
    s.api.wait_watching().await;
    s.sw.wait_ready(WITHIN).await;
    let series = "sidewatch_container_restarts_total{app_container=\"app\",reason=\"oom_killed\"}";
    assert_eq!(s.sw.metric(series).await, Some(0.0));
    // Ready once does not say it never was held: the cooldown would have ended long before.
    let logs = s.sw.logs().join("\n");
    assert!(!logs.contains("oom_killed"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_is_patched_on_transitions_with_a_strategic_merge() {
    let s = setup(fake_api::pod(true), &[]).await;
    s.sw.wait_ready(WITHIN).await;
    s.api.wait_gate("True", WITHIN).await;
    s.up.set(Behaviour::Status(503, ""));
    let (_, message) = eventually("the gate False", WITHIN, || async {
        s.api.gate().filter(|(st, _)| st == "False")
    })
    .await;
    assert!(message.contains("probe:app=http_5xx"), "{message}");
    s.up.set(healthy());
    s.api.wait_gate("True", WITHIN).await;
    let patches = s.api.gate_patches();
    assert!(patches.len() >= 3, "{patches:?}");
    for p in &patches {
        assert_eq!(
            p.content_type, "application/strategic-merge-patch+json",
            "{p:?}"
        );
    }
    // The kubelet's own conditions survive.
    let pod = s.api.pod();
    assert!(pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Ready"));
    assert!(
        !s.api.requests().iter().any(|r| r
            .content_type
            .starts_with("application/merge-patch+json")
            && r.path.contains("/pods/")),
        "a JSON merge patch was sent to a pod"
    );
}

/// The gate's patches in runs of one status: (status, the lastTransitionTimes its patches sent,
/// how many patches).
fn gate_runs(api: &FakeApi) -> Vec<(String, BTreeSet<String>, usize)> {
    let mut runs: Vec<(String, BTreeSet<String>, usize)> = Vec::new();
    for (status, since) in api.gate_patch_times() {
        match runs.last_mut() {
            Some((last, times, n)) if *last == status => {
                times.insert(since);
                *n += 1;
            }
            _ => runs.push((status, BTreeSet::from([since]), 1)),
        }
    }
    runs
}

/// Waits until the gate is False with a message that names `reason`.
async fn wait_gate_reason(api: &FakeApi, reason: &str) {
    eventually(&format!("the gate False for {reason}"), WITHIN, || async {
        api.gate()
            .filter(|(st, m)| st == "False" && m.contains(reason))
            .map(|_| ())
    })
    .await;
}

/// The API server keeps times to the second: a flip within the second of the one before would
/// carry the same time, so the test lets the clock tick first (a wait on the clock, not on
/// sidewatch).
async fn a_second_after(time: &str) {
    eventually(&format!("the wall clock past {time}"), WITHIN, || async {
        (rfc3339(SystemTime::now()).as_str() > time).then_some(())
    })
    .await;
}

/// Kubernetes' conventions: `lastTransitionTime` is when the status last flipped. Patches that
/// change only the reason or the message (three reasons in a row), and the patch after a relist,
/// keep the time the status turned False; each flip sets a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_keeps_its_transition_time_until_the_status_flips() {
    let s = setup(fake_api::pod(true), &[]).await;
    s.sw.wait_ready(WITHIN).await;
    s.api.wait_gate("True", WITHIN).await;
    let ready_since = s.api.gate_since().unwrap();
    a_second_after(&ready_since).await;

    let failed_at = rfc3339(SystemTime::now());
    s.up.set(Behaviour::Status(503, ""));
    wait_gate_reason(&s.api, "http_5xx").await;
    let unready_since = s.api.gate_since().unwrap();
    // Later patches of the same status come in a later second: each would show a moved time.
    a_second_after(&unready_since).await;
    for (behaviour, reason) in [
        (Behaviour::Status(404, ""), "unexpected_status"),
        (Behaviour::Reset, "reset"),
    ] {
        s.up.set(behaviour);
        wait_gate_reason(&s.api, reason).await;
    }
    let patches = s.api.gate_patches().len();
    s.api.compact();
    eventually("the gate asserted again after a relist", WITHIN, || async {
        (s.api.gate_patches().len() > patches).then_some(())
    })
    .await;

    let healed_at = rfc3339(SystemTime::now());
    s.up.set(healthy());
    s.api.wait_gate("True", WITHIN).await;
    let runs = gate_runs(&s.api);
    eprintln!("gate patches by run of one status: {runs:?}");
    // A start-up patch (not ready before the first check) may come first: its own run.
    assert!(matches!(runs.len(), 3 | 4), "{runs:?}");
    let [ready, unready, again] = &runs[runs.len() - 3..] else {
        unreachable!()
    };
    assert_eq!(ready.0, "True");
    assert_eq!(ready.1, BTreeSet::from([ready_since.clone()]), "{runs:?}");
    assert_eq!(unready.0, "False");
    assert_eq!(
        unready.1,
        BTreeSet::from([unready_since.clone()]),
        "{runs:?}"
    );
    assert!(unready.2 >= 4, "three reasons and a relist: {runs:?}");
    assert!(unready_since >= failed_at && unready_since > ready_since);
    assert_eq!(again.0, "True");
    assert_eq!(again.1.len(), 1, "{runs:?}");
    let again_since = again.1.first().unwrap();
    assert!(again_since >= &healed_at && again_since > &unready_since);
    assert_eq!(s.api.gate_since().as_ref(), Some(again_since));
}

/// After a restart of sidewatch the pod's condition is the truth: a new sidecar that finds the
/// status it would write keeps the time it finds (here from an hour ago, as a sidecar before it
/// left it, with another reason), restarted once more it still does, and the first flip after
/// sets a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sidecar_keeps_the_transition_time_it_finds() {
    let an_hour_ago = rfc3339(SystemTime::now() - Duration::from_secs(3600));
    let mut pod = fake_api::pod(true);
    pod["status"]["conditions"].as_array_mut().unwrap().push(
        serde_json::json!({"type": "sidewatch.io/healthy", "status": "False",
            "reason": "Refused", "message": "probe:app=refused (connection refused)",
            "lastTransitionTime": an_hour_ago}),
    );
    let mut s = setup_with(pod, &[], Behaviour::Status(503, "")).await;
    for restart in 0..2 {
        if restart > 0 {
            let kubeconfig = s.api.kubeconfig(s.dir.path());
            drop(std::mem::replace(
                &mut s.sw,
                Sidewatch::start_sidecar(&s.up.url(), "100ms", &kubeconfig, &SIDECAR_ENV),
            ));
        }
        let patches = s.api.gate_patches().len();
        if restart == 0 {
            eventually("a gate patch of this sidecar", WITHIN, || async {
                (s.api.gate_patches().len() > patches).then_some(())
            })
            .await;
        } else {
            // The pod already holds what the restarted sidecar would write once its probe
            // fails: it may patch (a Starting first) or not, as the pod watch and the first
            // check race. Either way, what it sends keeps the time.
            s.sw.wait_reason("http_5xx", WITHIN).await;
        }
        wait_gate_reason(&s.api, "http_5xx").await;
        let sent = &s.api.gate_patch_times()[patches..];
        assert!(
            sent.iter()
                .all(|(st, t)| st == "False" && *t == an_hour_ago),
            "restart {restart}: {sent:?}"
        );
        assert_eq!(s.api.gate_since(), Some(an_hour_ago.clone()));
    }
    let healed_at = rfc3339(SystemTime::now());
    s.up.set(healthy());
    s.api.wait_gate("True", WITHIN).await;
    assert!(s.api.gate_since().unwrap() >= healed_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_at_sigterm_is_posted_as_an_event_before_the_exit() {
    let mut s = setup(
        fake_api::pod(false),
        &[
            ("SIDEWATCH_DRAIN_DELAY", "1s"),
            ("SIDEWATCH_DRAIN_LINGER", "30s"),
            ("SIDEWATCH_DRAIN_GRACE_PERIOD", "60s"),
        ],
    )
    .await;
    s.sw.wait_ready(WITHIN).await;
    s.api.wait_watching().await;
    s.sw.signal(nix::sys::signal::Signal::SIGTERM);
    s.sw.wait_log("drain ended").await;
    // The scrape it lingers for; the exit then waits for the Event too.
    assert_eq!(
        s.sw.metric("sidewatch_drains_total{outcome=\"quiet\"}")
            .await,
        Some(1.0)
    );
    assert!(s.sw.wait_exit(WITHIN).await.success());
    let drained: Vec<_> = s
        .api
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/events"))
        .filter(|r| r.body["action"] == "Drain")
        .collect();
    assert_eq!(drained.len(), 1, "{drained:?}");
    let event = &drained[0].body;
    assert_eq!(event["reason"], "Drained");
    assert_eq!(event["type"], "Normal");
    let note = event["note"].as_str().unwrap();
    assert!(note.contains("traffic stopped"), "{note}");
    s.sw.wait_log("scraped=true").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gate_in_the_spec_means_no_status_patch() {
    let s = setup(fake_api::pod(false), &[]).await;
    s.sw.wait_ready(WITHIN).await;
    s.api.wait_watching().await;
    s.up.set(Behaviour::Status(503, ""));
    s.sw.wait_reason("http_5xx", WITHIN).await;
    // The transition Event is the proof that the publisher has acted on the change.
    eventually("the NotReady event", WITHIN, || async {
        s.api
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/events") && r.body["reason"] == "NotReadyHttp5xx")
            .then_some(())
    })
    .await;
    assert!(s.api.gate_patches().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_posted_for_transitions_and_rate_limited() {
    let s = setup(fake_api::pod(false), &[]).await;
    s.sw.wait_ready(WITHIN).await;
    s.api.wait_watching().await;
    let posted = |api: &FakeApi| {
        api.requests()
            .iter()
            .filter(|r| r.path.contains("/events") && (r.method == "POST" || r.method == "PATCH"))
            .count()
    };
    // Flap 10 times: 20 transitions, against a burst of 5 Events.
    for _ in 0..10 {
        s.up.set(Behaviour::Status(503, ""));
        s.sw.wait_reason("http_5xx", WITHIN).await;
        s.up.set(healthy());
        s.sw.wait_ready(WITHIN).await;
    }
    s.sw.wait_metric_at_least("sidewatch_events_dropped_total", 10.0)
        .await;
    let n = posted(&s.api);
    assert!((1..=6).contains(&n), "{n} events posted for 20 transitions");
    let first = s
        .api
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/events"))
        .unwrap();
    assert!(
        first
            .path
            .starts_with("/apis/events.k8s.io/v1/namespaces/shop/"),
        "{}",
        first.path
    );
    assert_eq!(first.body["regarding"]["name"], "web-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_own_pod_policy_admits_the_sidecars_writes_and_stops_another_pods_token() {
    let s = setup(fake_api::pod(true), &[]).await;
    s.sw.wait_ready(WITHIN).await;
    s.api.wait_gate("True", WITHIN).await;
    s.up.set(Behaviour::Status(503, ""));
    s.api.wait_gate("False", WITHIN).await;
    let event = |v: &[(String, Verdict)]| v.iter().any(|(r, _)| r.contains("/events"));
    eventually("an Event judged by the policy", WITHIN, || async {
        event(&s.api.verdicts()).then_some(())
    })
    .await;
    let verdicts = s.api.verdicts();
    assert!(verdicts.len() >= 3, "{verdicts:?}");
    for (request, verdict) in &verdicts {
        assert_eq!(*verdict, Verdict::Allowed, "{request}");
        // Only the writes the trimmed Role grants.
        assert!(
            request == "PATCH /api/v1/namespaces/shop/pods/web-1/status"
                || request.starts_with("POST /apis/events.k8s.io/v1/namespaces/shop/events")
                || request.starts_with("PATCH /apis/events.k8s.io/v1/namespaces/shop/events/"),
            "{request}"
        );
    }
    // The same sidecar holding the token of another pod (web-1's token taken to web-0, or
    // web-0's used on web-1): its writes about web-1 are refused and counted, and the gate stays.
    let other = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
    s.api
        .set_caller(policy::pod_token("shop", "sidewatch", "web-0", other));
    s.up.set(healthy());
    s.sw.wait_ready(WITHIN).await;
    s.sw.wait_metric_at_least("sidewatch_kube_errors_total{op=\"patch_status\"}", 1.0)
        .await;
    let denied: Vec<_> = s.api.verdicts().into_iter().skip(verdicts.len()).collect();
    assert!(
        denied
            .iter()
            .any(|(r, v)| r.ends_with("/pods/web-1/status") && matches!(v, Verdict::Denied(_))),
        "{denied:?}"
    );
    assert_eq!(s.api.gate().map(|(st, _)| st), Some("False".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_api_leaves_probes_working_and_the_watch_recovers() {
    let api_pod = fake_api::pod(false);
    let s = setup(api_pod, &[]).await;
    s.api.fail_with(Some(403));
    s.sw.wait_ready(WITHIN).await;
    s.sw.wait_metric_at_least("sidewatch_kube_errors_total{op=\"watch\"}", 1.0)
        .await;
    s.up.set(Behaviour::Status(503, ""));
    s.sw.wait_reason("http_5xx", WITHIN).await;
    s.up.set(healthy());
    s.sw.wait_ready(WITHIN).await;

    s.api.fail_with(None);
    s.api
        .update_pod(|pod| pod["metadata"]["deletionTimestamp"] = rfc3339(SystemTime::now()).into());
    s.sw.wait_reason("terminating", Duration::from_secs(30))
        .await;
    let logs = s.sw.logs().join("\n");
    assert_eq!(
        logs.matches("cannot watch the pod").count(),
        1,
        "logged once per change:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_api_server_is_counted_and_local_signals_decide() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let dir = tempdir::Dir::new();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: dead\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\nusers:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: dead\n  context: {{cluster: dead, user: u}}\ncurrent-context: dead\n"
    )).unwrap();
    let up = Upstream::start(healthy()).await;
    let sw = Sidewatch::start_sidecar(&up.url(), "100ms", &kubeconfig, &[]);
    sw.wait_ready(WITHIN).await;
    sw.wait_metric_at_least("sidewatch_kube_errors_total{op=\"watch\"}", 1.0)
        .await;
    up.set(Behaviour::Reset);
    sw.wait_reason("reset", WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_timestamp_is_terminating() {
    let s = setup(fake_api::pod(false), &[]).await;
    s.sw.wait_ready(WITHIN).await;
    s.api.wait_watching().await;
    s.api
        .update_pod(|pod| pod["metadata"]["deletionTimestamp"] = rfc3339(SystemTime::now()).into());
    let body = s.sw.wait_reason("terminating", WITHIN).await;
    assert_eq!(body["reasons"][0]["signal"], "kube:pod");
    s.sw.wait_log("/drain is open to the kubelet").await;
}

/// A terminating pod's drain, as the kubelet runs it (the pod's deletion, then the preStop hook's
/// GET /drain), under each `drain.readiness`: by default `/readyz` turns 503 and the gate False;
/// serving while terminating, both stay as they were through the drain, which `/readyz` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_pod_drains_failing_or_serving_as_configured() {
    for (readiness, status, gate) in [
        ("fail", 503, "False"),
        ("serve_while_terminating", 200, "True"),
    ] {
        let s = setup(
            fake_api::pod(true),
            &[
                ("SIDEWATCH_DRAIN_READINESS", readiness),
                ("SIDEWATCH_DRAIN_DELAY", "2s"),
            ],
        )
        .await;
        s.sw.wait_ready(WITHIN).await;
        s.api.wait_gate("True", WITHIN).await;
        let patches_before = s.api.gate_patches().len();
        s.api.update_pod(|pod| {
            pod["metadata"]["deletionTimestamp"] = rfc3339(SystemTime::now()).into()
        });
        s.sw.wait_log("/drain is open to the kubelet").await;
        let url = s.sw.url("/drain");
        let pre_stop = tokio::spawn(async move { common::client().get(url).send().await });
        let body = eventually("/readyz to say draining", WITHIN, || async {
            let (code, body) = s.sw.readyz().await;
            (body["draining"] == true).then_some((code, body))
        })
        .await;
        assert_eq!(body.0, status, "{readiness}: {}", body.1);
        let said: Vec<&str> = body.1[if status == 200 { "warnings" } else { "reasons" }]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["reason"].as_str())
            .collect();
        assert_eq!(said, ["draining", "terminating"], "{readiness}: {}", body.1);
        let answer = pre_stop.await.unwrap().expect("the preStop hook's /drain");
        assert_eq!(answer.status().as_u16(), 200, "{readiness}");
        s.api.wait_gate(gate, WITHIN).await;
        let turned_false = s.api.gate_patches()[patches_before..]
            .iter()
            .any(|p| p.body.to_string().contains("\"status\":\"False\""));
        assert_eq!(
            turned_false,
            gate == "False",
            "{readiness}: the gate's patches"
        );
        assert_eq!(s.sw.metric("sidewatch_draining").await, Some(1.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_gone_forces_a_relist_and_the_gate_is_asserted_again() {
    let s = setup(fake_api::pod(true), &[]).await;
    s.sw.wait_ready(WITHIN).await;
    s.api.wait_gate("True", WITHIN).await;
    let lists = |api: &FakeApi| {
        api.requests()
            .iter()
            .filter(|r| r.method == "GET" && !r.query.contains("watch=true"))
            .count()
    };
    let (lists_before, patches_before) = (lists(&s.api), s.api.gate_patches().len());
    s.api.compact();
    eventually("a relist after 410 Gone", WITHIN, || async {
        (lists(&s.api) > lists_before).then_some(())
    })
    .await;
    eventually("the gate patched again", WITHIN, || async {
        (s.api.gate_patches().len() > patches_before).then_some(())
    })
    .await;
    assert_eq!(s.sw.readyz().await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_dropped_mid_stream_reconnects() {
    let s = setup(fake_api::pod(false), &[]).await;
    s.sw.wait_ready(WITHIN).await;
    s.api.wait_watching().await;
    let watches = |api: &FakeApi| {
        api.requests()
            .iter()
            .filter(|r| r.query.contains("watch=true"))
            .count()
    };
    let before = watches(&s.api);
    s.api.drop_watches();
    eventually("a new watch", WITHIN, || async {
        (watches(&s.api) > before).then_some(())
    })
    .await;
    s.api
        .update_pod(|pod| pod["metadata"]["deletionTimestamp"] = rfc3339(SystemTime::now()).into());
    s.sw.wait_reason("terminating", WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_api_server_does_not_slow_the_local_verdict() {
    let s = setup(fake_api::pod(true), &[]).await;
    // Every answer 8 s late (under sidewatch's 10 s bound per request): the verdict turns before
    // the API server has taken the gate's patch (an order, not a time budget).
    s.api.set_delay(Duration::from_secs(8));
    s.sw.wait_ready(WITHIN).await;
    s.up.set(Behaviour::Status(503, ""));
    s.sw.wait_reason("http_5xx", WITHIN).await;
    assert_ne!(s.api.gate().map(|(st, _)| st).as_deref(), Some("False"));
    s.api.set_delay(Duration::ZERO);
    let (_, message) = eventually("the gate False", Duration::from_secs(30), || async {
        s.api.gate().filter(|(st, _)| st == "False")
    })
    .await;
    assert!(message.contains("http_5xx"), "{message}");
}

/// The API server goes down and comes back ten times in ten seconds (each time every connection
/// is closed and new ones are closed unanswered), then once for six seconds. The probes alone
/// decide readiness throughout; the errors are counted; the watcher backs off (few connection
/// attempts per outage, no hot loop); after the last recovery the watch resumes, sees changes,
/// and the gate is asserted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_flapping_leaves_readiness_alone_and_is_caught_up_after() {
    let s = setup(fake_api::pod(true), &[]).await;
    s.sw.wait_ready(WITHIN).await;
    s.api.wait_gate("True", WITHIN).await;
    s.api.wait_watching().await;
    let readyz = s.sw.record_readyz(Duration::from_millis(20));
    let errors = "sidewatch_kube_errors_total{op=\"watch\"}";
    let errors_before = s.sw.metric(errors).await.unwrap();

    let mut attempts = Vec::new();
    for _ in 0..10 {
        let before = s.api.refused();
        s.api.set_down(true);
        // The outage's and the uptime's lengths are the scenario, not waits for something.
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.api.set_down(false);
        attempts.push(s.api.refused() - before);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let before = s.api.refused();
    s.api.set_down(true);
    tokio::time::sleep(Duration::from_secs(6)).await;
    s.api.set_down(false);
    let long = s.api.refused() - before;
    let recovered = SystemTime::now();
    eprintln!("connections during ten 0.5 s outages: {attempts:?}; during one of 6 s: {long}");
    assert!(
        attempts.iter().sum::<usize>() <= 30,
        "a hot loop against a dead API server: {attempts:?}"
    );
    assert!(long <= 8, "{long} connections in a 6 s outage");

    eventually(
        "a watch after the last recovery",
        Duration::from_secs(40),
        || async {
            s.api
                .requests()
                .iter()
                .any(|r| r.at > recovered && r.query.contains("watch=true"))
                .then_some(())
        },
    )
    .await;
    eventually("the gate asserted again", WITHIN, || async {
        s.api
            .gate_patches()
            .iter()
            .any(|p| p.at > recovered && p.body["status"]["conditions"][0]["status"] == "True")
            .then_some(())
    })
    .await;
    let counted = s.sw.metric(errors).await.unwrap() - errors_before;
    assert!(counted >= 2.0, "{counted} watch errors counted");
    let seen: Vec<u16> = readyz.stop().iter().map(|a| a.status).collect();
    assert!(seen.len() > 200, "{} /readyz answers", seen.len());
    assert!(
        seen.iter().all(|st| *st == 200),
        "readiness moved with the API server: {seen:?}"
    );
    // The watch is live: a restart of the app container is seen.
    s.api
        .update_pod(|pod| fake_api::app_restarted(pod, 1, 1, "Error", SystemTime::now()));
    s.sw.wait_reason("container_restarted", WITHIN).await;
    let logs = s.sw.logs().join("\n");
    assert!(
        logs.matches("cannot watch the pod").count() <= 12,
        "logged once per outage at most:\n{logs}"
    );
}

/// The API server fails the status patch alone (the watch stays up, nothing else changes): the
/// patch is retried with backoff until it lands, so the gate does not stay stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_gate_patch_is_retried_until_it_lands() {
    let s = setup(fake_api::pod(true), &[]).await;
    s.sw.wait_ready(WITHIN).await;
    s.api.wait_gate("True", WITHIN).await;
    s.api.fail_patches_with(Some(500));
    s.up.set(Behaviour::Status(503, ""));
    s.sw.wait_reason("http_5xx", WITHIN).await;
    s.sw.wait_metric_at_least("sidewatch_kube_errors_total{op=\"patch_status\"}", 1.0)
        .await;
    assert_eq!(s.api.gate().unwrap().0, "True", "the failure held");
    s.api.fail_patches_with(None);
    s.api.wait_gate("False", WITHIN).await;
    assert_eq!(s.sw.readyz().await.0, 503);
}

/// The API server accepts requests and never answers (a hung server, a black-holed connection):
/// the client's read timeout is 300 s (sized for the pod watch), so without a bound of
/// sidewatch's own per request the gate and the Events would wait that long. Each request is
/// given up after 10 s and the gate patched once the server answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_api_server_does_not_hold_the_gate_for_ever() {
    let s = setup(fake_api::pod(true), &[]).await;
    s.sw.wait_ready(WITHIN).await;
    s.api.wait_gate("True", WITHIN).await;
    let hung_from = SystemTime::now();
    s.api.set_delay(Duration::from_secs(3600));
    s.up.set(Behaviour::Status(503, ""));
    s.sw.wait_reason("http_5xx", WITHIN).await;
    eventually("a request to hang", WITHIN, || async {
        s.api
            .requests()
            .iter()
            .any(|r| r.at > hung_from && r.method != "GET")
            .then_some(())
    })
    .await;
    let healed = Instant::now();
    s.api.set_delay(Duration::ZERO);
    s.api.wait_gate("False", Duration::from_secs(30)).await;
    eprintln!(
        "gate False {:.1}s after the server answered again",
        healed.elapsed().as_secs_f64()
    );
    s.sw.wait_log("no answer within 10s").await;
}

/// The kubelet's preStop hook comes from the node and carries no token: once the API server
/// says the pod is terminating, /drain opens to it. A second namespace stands for the node.
#[test]
fn a_terminating_pod_opens_drain_to_the_node() {
    let Some(pod) = netns::Netns::create("kpod") else {
        return;
    };
    let Some(node) = netns::Netns::create("knode") else {
        return;
    };
    let pod_ip = netns::link(&pod, &node, 8);
    let node_name = node.0.clone();
    pod.run(move |ns| async move {
        let api = FakeApi::start(fake_api::pod(false)).await;
        let up = Upstream::start(healthy()).await;
        let dir = tempdir::Dir::new();
        let kubeconfig = api.kubeconfig(dir.path());
        let url = up.url();
        let sw = Sidewatch::start_in(
            Some(&ns),
            "0.0.0.0:0",
            &["--target", &url, "--interval", "100ms", "--cgroup", "none"],
            &[
                ("KUBECONFIG", kubeconfig.to_str().unwrap()),
                ("POD_NAME", "web-1"),
                ("POD_NAMESPACE", "shop"),
                ("SIDEWATCH_DRAIN_DELAY", "200ms"),
            ],
        );
        sw.wait_ready(WITHIN).await;
        api.wait_watching().await;
        let drain_url = format!("http://{pod_ip}:{}/drain", sw.addr.port());
        let refused = netns::in_netns(&node_name, {
            let url = drain_url.clone();
            move |_| async move {
                let status = common::client()
                    .get(&url)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                assert_eq!(status, 403, "before the deletion");
            }
        });
        join(refused).await;
        assert_eq!(sw.readyz().await.0, 200);

        api.update_pod(|pod| {
            pod["metadata"]["deletionTimestamp"] = rfc3339(SystemTime::now()).into()
        });
        sw.wait_reason("terminating", WITHIN).await;
        let allowed = netns::in_netns(&node_name, move |_| async move {
            let resp = common::client().get(&drain_url).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 200, "once terminating");
        });
        join(allowed).await;
    });
}

/// Waits for a node-side thread without blocking this runtime, which serves the app and the API.
async fn join(handle: std::thread::JoinHandle<()>) {
    let joined = tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap();
    if let Err(panic) = joined {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_in_the_cgroup_is_posted_as_an_event() {
    let dir = tempdir::Dir::new();
    let cgroup = dir.path().join("app.scope");
    std::fs::create_dir(&cgroup).unwrap();
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroup-v2");
    for entry in std::fs::read_dir(fixtures).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), cgroup.join(entry.file_name())).unwrap();
    }
    let api = FakeApi::start(fake_api::pod(false)).await;
    let up = Upstream::start(healthy()).await;
    let kubeconfig = api.kubeconfig(dir.path());
    let url = up.url();
    let sw = Sidewatch::start(
        &[
            "--target",
            &url,
            "--interval",
            "100ms",
            "--cgroup",
            cgroup.to_str().unwrap(),
        ],
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("POD_NAME", "web-1"),
            ("POD_NAMESPACE", "shop"),
            ("SIDEWATCH_MEMORY_OOM_COOLDOWN", "1s"),
        ],
    );
    sw.wait_ready(WITHIN).await;
    api.wait_watching().await;
    std::fs::write(
        cgroup.join("memory.events"),
        "low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\noom_group_kill 0\n",
    )
    .unwrap();
    let event = eventually("an OOMKilled Event", WITHIN, || async {
        api.requests()
            .into_iter()
            .find(|r| r.method == "POST" && r.body["reason"] == "OOMKilled")
    })
    .await;
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["regarding"]["name"], "web-1");
    // One process killed, no group kill: the Event says which.
    let note = event.body["note"].as_str().unwrap();
    assert!(
        note.contains("1 OOM kill(s), one process each"),
        "{}",
        event.body
    );
}

/// A benchmark, run by hand (BENCHMARKS.md): `cargo test --release --test kubernetes kube:: -- --ignored --nocapture`.
/// Time from the engine's transition (its log line) to the status patch arriving here, and the
/// API requests per minute in a steady state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark, run by hand"]
async fn bench_transition_to_gate_patch_and_steady_requests() {
    let api = FakeApi::start(fake_api::pod(true)).await;
    let up = Upstream::start(healthy()).await;
    let dir = tempdir::Dir::new();
    let kubeconfig = api.kubeconfig(dir.path());
    let url = up.url();
    let sw = Sidewatch::start(
        &[
            "--target",
            &url,
            "--interval",
            "20ms",
            "--failure-threshold",
            "1",
            "--cgroup",
            "none",
            "--log-format",
            "json",
        ],
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("POD_NAME", "web-1"),
            ("POD_NAMESPACE", "shop"),
            ("SIDEWATCH_KUBERNETES_EVENTS", "false"),
            // Past the log's burst, transitions are logged at debug only.
            ("RUST_LOG", "info,sidewatch=debug"),
        ],
    );
    sw.wait_ready(WITHIN).await;
    api.wait_watching().await;
    // Turning not ready is patched at once; turning ready again is within the gate's rate limit
    // (a burst of 5, then one a second), so the two directions are reported apart.
    let (mut unready_lags, mut ready_lags) = (Vec::new(), Vec::new());
    for i in 0..60 {
        let (behaviour, want) = if i % 2 == 0 {
            (Behaviour::Status(503, ""), "False")
        } else {
            (healthy(), "True")
        };
        let logged = sw
            .logs()
            .iter()
            .filter(|l| l.contains("readiness changed"))
            .count();
        up.set(behaviour);
        let line = eventually("the transition log line", WITHIN, || {
            let lines: Vec<String> = sw
                .logs()
                .into_iter()
                .filter(|l| l.contains("readiness changed"))
                .collect();
            async move { lines.get(logged).cloned() }
        })
        .await;
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        let logged_at = humantime::parse_rfc3339(json["timestamp"].as_str().unwrap()).unwrap();
        let patch = eventually("the patch", WITHIN, || async {
            api.gate_patches()
                .into_iter()
                .rev()
                .find(|p| p.at >= logged_at && p.body["status"]["conditions"][0]["status"] == want)
        })
        .await;
        let lag = patch.at.duration_since(logged_at).unwrap_or_default();
        if want == "False" {
            unready_lags.push(lag);
        } else {
            ready_lags.push(lag);
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (what, mut lags) in [("not ready", unready_lags), ("ready", ready_lags)] {
        lags.sort();
        println!(
            "transition to {what} -> status patch over {} transitions: median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
            lags.len(),
            ms(lags[lags.len() / 2]),
            ms(lags[lags.len() * 9 / 10]),
            ms(lags[lags.len() - 1])
        );
    }
    let before = api.requests().len();
    let window = Duration::from_secs(30);
    tokio::time::sleep(window).await; // the measurement window, not synchronisation
    let during: Vec<_> = api.requests().into_iter().skip(before).collect();
    println!(
        "steady state: {} API requests in {}s ({:.1}/min): {:?}",
        during.len(),
        window.as_secs(),
        during.len() as f64 * 60.0 / window.as_secs_f64(),
        during
            .iter()
            .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
            .collect::<Vec<_>>()
    );
}
