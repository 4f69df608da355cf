//! The pod watch and the publisher of the readiness gate and Events, in process and in paused
//! time: named scenarios (one `Scenario` each, as controller-rs' fixtures) against the fake API
//! server served without a socket, each asserting the order and counts of the requests the fake
//! saw and the signals, app container and metrics that came out. Virtual time covers minutes of
//! backoff, cooldown and rate limit in milliseconds of wall time; no root, no tool, no socket.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/fake_api.rs"]
mod fake_api;
mod harness;

use std::time::{Duration, SystemTime};

use serde_json::json;
use sidewatch::engine::bus::{DrainEnd, Notice};
use sidewatch::engine::{Kube, Observation};
use sidewatch::kubernetes::config::KubernetesConfig;
use sidewatch::reason::Reason;
use tokio::time::Instant;

use harness::{about, gaps, gate_of, ready, unready, Harness, Op, WITHIN};
use Op::{Event, EventRepeat, Gate, List, Watch};

const SECOND: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
enum Scenario {
    /// Ready, then one turn to not ready: one patch each, one Event, nothing more for minutes.
    GateFlipsOnce,
    /// The watch is cut (a load balancer's idle timeout): resumed from its version, no relist.
    WatchDroppedThenResumed,
    /// The watch is cut and history compacted: 410 Gone, a relist after backoff, the gate
    /// asserted again with its `lastTransitionTime` kept.
    WatchCompactedThenRelisted,
    /// The status patch conflicts (409) four times: retried at 0.5, 1, 2, 4, 8 s, then set.
    PatchConflictsThenSucceeds,
    /// A status patch that never answers is given up after 10 s and retried.
    PatchHangsThenTimesOut,
    /// The API server is unreachable for two minutes while the app fails: relists and patches
    /// back off (jittered to 10 s, doubling to 30 s), then the gate is set within 30 s of its return.
    ApiDownForMinutes,
    /// The app container is OOM-killed: the app signal fails at once, then cools down in 15 s.
    AppOomKilledThenCoolsDown,
    /// The app container's runtime ID and memory limit reach the `app` channel, and its new ID
    /// after a restart.
    AppContainerIdAndLimit,
    /// The pod is deleted: the pod signal fails; after the drain its Event is posted.
    PodDeletedThenDrained,
    /// The app flaps eight times in 0.8 s: five Events, three held back, the latest posted later.
    FlappingEventsHeldBack,
}

impl Scenario {
    async fn check(self) {
        let (wall, virtual_start) = (std::time::Instant::now(), Instant::now());
        match self {
            Scenario::GateFlipsOnce => gate_flips_once().await,
            Scenario::WatchDroppedThenResumed => watch_dropped_then_resumed().await,
            Scenario::WatchCompactedThenRelisted => watch_compacted_then_relisted().await,
            Scenario::PatchConflictsThenSucceeds => patch_conflicts_then_succeeds().await,
            Scenario::PatchHangsThenTimesOut => patch_hangs_then_times_out().await,
            Scenario::ApiDownForMinutes => api_down_for_minutes().await,
            Scenario::AppOomKilledThenCoolsDown => app_oom_killed_then_cools_down().await,
            Scenario::AppContainerIdAndLimit => app_container_id_and_limit().await,
            Scenario::PodDeletedThenDrained => pod_deleted_then_drained().await,
            Scenario::FlappingEventsHeldBack => flapping_events_held_back().await,
        }
        eprintln!(
            "scenario {self:?}: {:.1?} of virtual time in {:.1?} of wall time",
            virtual_start.elapsed(),
            wall.elapsed()
        );
    }
}

/// The Kubernetes section as a pod gets it by default (gate `sidewatch.io/healthy`, Events on,
/// 15 s restart cooldown).
fn config() -> KubernetesConfig {
    KubernetesConfig::default()
}

/// A harness whose first gate patch (ready) and first watch have been made, and settled.
async fn settled(verdict: sidewatch::engine::Verdict) -> Harness {
    let h = Harness::start(fake_api::pod(true), config(), verdict);
    h.wait_for(Gate, 1).await;
    h.wait_for(Watch, 1).await;
    h.run_for(SECOND).await;
    h
}

async fn gate_flips_once() {
    let h = settled(ready()).await;
    assert_eq!(gate_of(&h.of(Gate)[0]).0, "True");
    h.set_verdict(unready(Reason::Http5xx));
    h.wait_for(Event, 1).await;
    h.run_for(Duration::from_secs(300)).await;
    // The quiet watch closed by the server at its `timeoutSeconds` (290 s) and resumed: no relist.
    assert_eq!(h.ops(), [List, Watch, Gate, Gate, Event, Watch]);
    assert!(about(gaps(&h.of(Watch))[0], 290 * SECOND));
    let (status, reason, _) = gate_of(&h.of(Gate)[1]);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Http5xx"));
    let event = &h.of(Event)[0].body;
    assert_eq!(event["reason"], "NotReadyHttp5xx");
    assert_eq!(event["type"], "Warning");
    assert_eq!(h.api.gate().unwrap().0, "False");
    for op in ["watch", "patch_status", "create_event"] {
        let series = format!("sidewatch_kube_errors_total{{op=\"{op}\"}}");
        assert_eq!(h.metric(&series), 0.0, "{series}");
    }
}

async fn watch_dropped_then_resumed() {
    let h = settled(ready()).await;
    let version = h.api.pod()["metadata"]["resourceVersion"].clone();
    h.api.drop_watches();
    let watches = h.wait_for(Watch, 2).await;
    h.run_for(Duration::from_secs(60)).await;
    // Resumed from the version of the gate's own patch, which the first watch delivered.
    let from = format!("resourceVersion={}", version.as_str().unwrap());
    assert!(watches[1].query.contains(&from), "{}", watches[1].query);
    assert_eq!(h.ops(), [List, Watch, Gate, Watch]);
    assert_eq!(h.metric("sidewatch_kube_errors_total{op=\"watch\"}"), 0.0);
}

async fn watch_compacted_then_relisted() {
    let mut h = settled(ready()).await;
    h.signals_so_far();
    h.api.compact();
    let lists = h.wait_for(List, 2).await;
    let gates = h.wait_for(Gate, 2).await;
    h.run_for(Duration::from_secs(60)).await;
    assert_eq!(h.ops(), [List, Watch, Gate, Watch, List, Watch, Gate]);
    // The resumed watch got 410 Gone; the relist waited the first backoff, jittered: [0.5, 1) s.
    let gone = &h.of(Watch)[1];
    let wait = lists[1].instant.duration_since(gone.instant);
    assert!(wait >= SECOND / 2 && wait < SECOND, "{wait:?}");
    // Asserted again after the relist, its transition time kept: the status did not flip.
    assert_eq!(gate_of(&gates[1]), gate_of(&gates[0]));
    assert_eq!(h.metric("sidewatch_kube_errors_total{op=\"watch\"}"), 1.0);
    // The app as the relist saw it, then as the watch delivered the gate's own patch.
    let signals = h.signals_so_far();
    let success = || (Kube::App, Observation::Success);
    assert_eq!(signals, [success(), success()]);
}

async fn patch_conflicts_then_succeeds() {
    let h = Harness::start(fake_api::pod(true), config(), ready());
    h.api.fail_patches_with(Some(409));
    h.wait_for(Gate, 5).await;
    h.api.fail_patches_with(None);
    let gates = h.wait_for(Gate, 6).await;
    h.run_for(Duration::from_secs(120)).await;
    let want = [500, 1000, 2000, 4000, 8000].map(Duration::from_millis);
    let got = gaps(&gates);
    assert!(got.iter().zip(want).all(|(g, w)| about(*g, w)), "{got:?}");
    assert_eq!(h.of(Gate).len(), 6, "no patch once the gate is set");
    assert_eq!(h.api.gate().unwrap().0, "True");
    assert_eq!(
        h.metric("sidewatch_kube_errors_total{op=\"patch_status\"}"),
        5.0
    );
}

async fn patch_hangs_then_times_out() {
    let h = settled(ready()).await;
    h.api.set_delay(Duration::from_secs(60));
    h.set_verdict(unready(Reason::Timeout));
    let hung = h.wait_for(Gate, 2).await;
    h.api.set_delay(Duration::ZERO);
    let gates = h.wait_for(Gate, 3).await;
    h.run_for(Duration::from_secs(120)).await;
    // Given up at 10 s; its Event then; the retry after the first backoff.
    let event = &h.of(Event)[0];
    assert!(about(
        event.instant.duration_since(hung[1].instant),
        10 * SECOND
    ));
    assert!(
        about(gaps(&gates)[1], 10 * SECOND + SECOND / 2),
        "{:?}",
        gaps(&gates)
    );
    assert_eq!(h.ops(), [List, Watch, Gate, Gate, Event, Gate]);
    assert_eq!(gate_of(&gates[2]).0, "False");
    assert_eq!(
        h.metric("sidewatch_kube_errors_total{op=\"patch_status\"}"),
        1.0
    );
    assert_eq!(
        h.metric("sidewatch_kube_errors_total{op=\"create_event\"}"),
        0.0
    );
}

async fn api_down_for_minutes() {
    let h = settled(ready()).await;
    let down_at = Instant::now();
    h.api.set_down(true);
    h.set_verdict(unready(Reason::Refused));
    h.run_for(Duration::from_secs(120)).await;
    h.api.set_down(false);
    let up_at = Instant::now();
    let gates = h.wait_for(Gate, 2).await;
    h.run_for(Duration::from_secs(60)).await;

    let refused = h.api.refusals();
    let (patches, gets): (Vec<_>, Vec<_>) = refused.into_iter().partition(|r| r.method == "PATCH");
    let posts = gets.iter().filter(|r| r.method == "POST").count();
    let gets: Vec<_> = gets.into_iter().filter(|r| r.method == "GET").collect();
    // The gate: at once, then doubling from 0.5 s to 30 s, exactly (no jitter for one pod's own).
    let want = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000].map(Duration::from_millis);
    let got = gaps(&patches);
    assert_eq!(got.len(), want.len(), "{got:?}");
    assert!(got.iter().zip(want).all(|(g, w)| about(*g, w)), "{got:?}");
    assert_eq!(posts, 1, "the NotReady Event, tried once");
    // The watch: a list again after each failure, jittered, doubling to at most 10 s + 10 s.
    let got = gaps(&gets);
    assert!(got.len() >= 6, "{got:?}");
    assert!(
        got.iter().all(|g| *g >= SECOND / 2 && *g < 20 * SECOND),
        "{got:?}"
    );
    assert!(gets[0].instant.duration_since(down_at) < SECOND);
    // Back: listed within 20 s, the gate set at its next retry.
    let relist = &h.of(List)[1];
    assert!(relist.instant.duration_since(up_at) < 20 * SECOND);
    assert!(gates[1].instant.duration_since(up_at) <= 30 * SECOND);
    assert_eq!(gate_of(&gates[1]).0, "False");
    // Asserted again after the relist too, unless the relist came first (the jitter decides).
    assert_eq!(h.of(List).len(), 2);
    let after_up = h.of(Gate).split_off(1);
    assert!(matches!(after_up.len(), 1 | 2), "{:?}", h.ops());
    assert!(after_up.iter().all(|g| gate_of(g).0 == "False"));
    assert!(after_up.last().unwrap().instant >= relist.instant);
    let errors = |op: &str| h.metric(&format!("sidewatch_kube_errors_total{{op=\"{op}\"}}"));
    assert_eq!(errors("watch"), gets.len() as f64);
    assert_eq!(errors("patch_status"), patches.len() as f64);
    assert_eq!(errors("create_event"), 1.0);
    assert_eq!(h.api.refused(), patches.len() + gets.len() + posts);
}

async fn app_oom_killed_then_cools_down() {
    let mut h = Harness::start(fake_api::pod(false), config(), ready());
    h.wait_for(Watch, 1).await;
    h.run_for(SECOND).await;
    // Not vetoing until the API server answers, then the app as the first list saw it.
    let first = h.signals_so_far();
    let success = |k| (k, Observation::Success);
    assert_eq!(
        first,
        [success(Kube::App), success(Kube::Pod), success(Kube::App)]
    );

    h.api
        .update_pod(|p| fake_api::app_restarted(p, 1, 137, "OOMKilled", SystemTime::now()));
    let restarted = Instant::now();
    let (kube, observation) = h.next_signal().await;
    assert_eq!(kube, Kube::App);
    assert!(
        matches!(
            observation,
            Observation::Failure {
                reason: Reason::OomKilled,
                ..
            }
        ),
        "{observation:?}"
    );
    assert_eq!(h.next_signal().await, success(Kube::App));
    // 15 s after `finishedAt`, which the kubelet writes to the second (and the wall clock runs
    // on while the virtual one waits).
    let cooled = restarted.elapsed();
    assert!(cooled > 13 * SECOND && cooled <= 15 * SECOND, "{cooled:?}");
    h.run_for(Duration::from_secs(300)).await;
    assert_eq!(h.signals_so_far(), []);
    let oom = "sidewatch_container_restarts_total{app_container=\"app\",reason=\"oom_killed\"}";
    assert_eq!(h.metric(oom), 1.0);
    assert_eq!(
        h.ops(),
        [List, Watch, Watch],
        "the quiet watch resumed at 290 s"
    );
}

async fn app_container_id_and_limit() {
    let mut pod = fake_api::pod(false);
    pod["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "256Mi"}});
    pod["status"]["containerStatuses"][0]["containerID"] = "containerd://aaa111".into();
    let mut h = Harness::start(pod, config(), ready());
    tokio::time::timeout(WITHIN, h.app.changed())
        .await
        .unwrap()
        .unwrap();
    let app = h.app.borrow_and_update().clone();
    assert_eq!(app.id.as_deref(), Some("aaa111"));
    assert_eq!(app.limit, Some(256 << 20));

    h.wait_for(Watch, 1).await;
    h.api.update_pod(|p| {
        fake_api::app_restarted(p, 1, 1, "Error", SystemTime::now());
        p["status"]["containerStatuses"][0]["containerID"] = "containerd://bbb222".into();
    });
    tokio::time::timeout(WITHIN, h.app.changed())
        .await
        .unwrap()
        .unwrap();
    let app = h.app.borrow_and_update().clone();
    assert_eq!(app.id.as_deref(), Some("bbb222"));
    assert_eq!(app.limit, Some(256 << 20));
    h.run_for(Duration::from_secs(60)).await;
    assert!(!h.app.has_changed().unwrap(), "one change per restart");
    let restarted = h.signals_so_far().into_iter().any(|(k, o)| {
        k == Kube::App
            && matches!(
                o,
                Observation::Failure {
                    reason: Reason::ContainerRestarted,
                    ..
                }
            )
    });
    assert!(restarted);
    let error = "sidewatch_container_restarts_total{app_container=\"app\",reason=\"error\"}";
    assert_eq!(h.metric(error), 1.0);
}

async fn pod_deleted_then_drained() {
    let mut h = settled(ready()).await;
    h.signals_so_far();
    h.api.update_pod(|p| {
        p["metadata"]["deletionTimestamp"] = humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .into();
    });
    loop {
        match h.next_signal().await {
            (Kube::Pod, Observation::Failure { reason, .. }) => {
                assert_eq!(reason, Reason::Terminating);
                break;
            }
            (Kube::App, Observation::Success) => {}
            other => panic!("{other:?}"),
        }
    }
    // The engine turns not ready on it.
    h.set_verdict(unready(Reason::Terminating));
    h.wait_for(Event, 1).await;
    let (posted_tx, posted) = tokio::sync::oneshot::channel();
    let now = std::time::Instant::now();
    let end = DrainEnd {
        outcome: "quiet",
        duration_seconds: 3.0,
        new_connections: 0,
        bytes_in: 0,
        began: now,
        ended: now,
    };
    let drained = Notice::Drained {
        end,
        posted: posted_tx,
    };
    h.notices.send(drained).await.unwrap();
    let _ = tokio::time::timeout(WITHIN, posted).await.unwrap();
    h.run_for(Duration::from_secs(60)).await;
    assert_eq!(h.ops(), [List, Watch, Gate, Gate, Event, Event]);
    let reasons: Vec<_> = h
        .of(Event)
        .iter()
        .map(|e| e.body["reason"].clone())
        .collect();
    assert_eq!(reasons, ["NotReadyTerminating", "Drained"]);
    assert_eq!(gate_of(&h.of(Gate)[1]).1, "Terminating");
}

async fn flapping_events_held_back() {
    let h = settled(ready()).await;
    let flapped = Instant::now();
    for i in 0..8 {
        let v = if i % 2 == 0 {
            unready(Reason::Http5xx)
        } else {
            ready()
        };
        h.set_verdict(v);
        h.run_for(SECOND / 10).await;
    }
    let events = h.wait_for_any(&[Event, EventRepeat], 6).await;
    h.run_for(Duration::from_secs(120)).await;
    // Five at once (the burst), the three after them held back; the latest posted when a token
    // frees, 10 s after the first was taken. Each repeat of a reason within kube's recorder's
    // cache time is a PATCH of the first one's `series` (its note kept: the held one's "3
    // readiness change(s) not posted" is not what the API server gets).
    let ops: Vec<_> = events.iter().map(Op::of).collect();
    assert_eq!(
        ops,
        [
            Event,
            Event,
            EventRepeat,
            EventRepeat,
            EventRepeat,
            EventRepeat
        ]
    );
    let reasons: Vec<_> = events.iter().map(|e| e.body["reason"].clone()).collect();
    let (down, up) = ("NotReadyHttp5xx", "Ready");
    assert_eq!(reasons, [down, up, down, up, down, up]);
    assert_eq!(events[5].body["series"]["count"], 3);
    let held = events[5].instant.duration_since(flapped);
    assert!(about(held, 10 * SECOND), "{held:?}");
    assert_eq!(h.of(Event).len() + h.of(EventRepeat).len(), 6);
    assert_eq!(h.metric("sidewatch_events_dropped_total"), 3.0);
    // Each turn to not ready patched at once, unless the gate still said so (the sixth flip);
    // back to ready within the gate's own limit: five at once, then one a second.
    let gates = h.of(Gate);
    let statuses: Vec<_> = gates.iter().map(|g| gate_of(g).0).collect();
    let (f, t) = ("False", "True");
    assert_eq!(statuses, [t, f, t, f, t, f, t]);
    let last = gates[6].instant.duration_since(flapped);
    assert!(about(last, SECOND), "{last:?}");
    assert_eq!(h.api.gate().unwrap().0, "True");
}

/// One test per scenario, by its name.
mod scenario {
    use super::Scenario;

    #[tokio::test(start_paused = true)]
    async fn gate_flips_once() {
        Scenario::GateFlipsOnce.check().await;
    }

    #[tokio::test(start_paused = true)]
    async fn watch_dropped_then_resumed() {
        Scenario::WatchDroppedThenResumed.check().await;
    }

    #[tokio::test(start_paused = true)]
    async fn watch_compacted_then_relisted() {
        Scenario::WatchCompactedThenRelisted.check().await;
    }

    #[tokio::test(start_paused = true)]
    async fn patch_conflicts_then_succeeds() {
        Scenario::PatchConflictsThenSucceeds.check().await;
    }

    #[tokio::test(start_paused = true)]
    async fn patch_hangs_then_times_out() {
        Scenario::PatchHangsThenTimesOut.check().await;
    }

    #[tokio::test(start_paused = true)]
    async fn api_down_for_minutes() {
        Scenario::ApiDownForMinutes.check().await;
    }

    #[tokio::test(start_paused = true)]
    async fn app_oom_killed_then_cools_down() {
        Scenario::AppOomKilledThenCoolsDown.check().await;
    }

    #[tokio::test(start_paused = true)]
    async fn app_container_id_and_limit() {
        Scenario::AppContainerIdAndLimit.check().await;
    }

    #[tokio::test(start_paused = true)]
    async fn pod_deleted_then_drained() {
        Scenario::PodDeletedThenDrained.check().await;
    }

    #[tokio::test(start_paused = true)]
    async fn flapping_events_held_back() {
        Scenario::FlappingEventsHeldBack.check().await;
    }
}
