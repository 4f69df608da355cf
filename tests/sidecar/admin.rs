//! The admin server: drain on SIGTERM and on GET/POST /drain, the metrics format (promtool),
//! methods, and JSON logs.

#[allow(unused_imports)]
use crate::common;
use std::time::{Duration, Instant};

use common::{eventually, healthy, skip_or_fail, which, Behaviour, Sidewatch, Upstream};
use nix::sys::signal::Signal;

const WITHIN: Duration = Duration::from_secs(10);

async fn ready_sidewatch(up: &Upstream, drain_delay: &str) -> Sidewatch {
    ready_sidewatch_with(up, drain_delay, &[]).await
}

async fn ready_sidewatch_with(
    up: &Upstream,
    drain_delay: &str,
    more: &[(&str, &str)],
) -> Sidewatch {
    let url = up.url();
    let mut env = vec![
        ("SIDEWATCH_DRAIN_DELAY", drain_delay),
        ("SIDEWATCH_DRAIN_MAX", "120s"),
        ("SIDEWATCH_DRAIN_GRACE_PERIOD", "130s"),
        // This host's other tests open connections all the time; the drain tests in
        // tests/sidecar/drain.rs run in namespaces of their own with PassiveOpens on.
        ("SIDEWATCH_DRAIN_PASSIVE_OPENS", "false"),
    ];
    env.extend_from_slice(more);
    let sw = Sidewatch::start(&["--target", &url, "--interval", "50ms"], &env);
    sw.wait_ready(WITHIN).await;
    sw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_exits_zero() {
    let up = Upstream::start(healthy()).await;
    let mut sw = ready_sidewatch(&up, "1500ms").await;
    let sent = Instant::now();
    sw.signal(Signal::SIGTERM);
    let body = sw.wait_reason("draining", WITHIN).await;
    assert_eq!(body["reasons"][0]["signal"], "drain");
    assert!(body["reasons"][0]["message"]
        .as_str()
        .unwrap()
        .contains("SIGTERM"));
    // Still serving while draining, and probes have stopped.
    let probes = up.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(sw.get("/livez").await.0, 200);
    // After the drain it keeps serving (drain.linger is 15 s) until a scrape has its outcome,
    // then exits.
    sw.wait_log("drain ended").await;
    assert_eq!(
        sw.metric("sidewatch_drains_total{outcome=\"quiet\"}").await,
        Some(1.0)
    );
    let status = sw.wait_exit(WITHIN).await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        sent.elapsed() >= Duration::from_millis(1500),
        "exited before drain.delay"
    );
    assert!(up.requests.load(std::sync::atomic::Ordering::SeqCst) <= probes + 1);
    sw.wait_log("scraped=true").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unscraped_it_lingers_for_drain_linger_then_exits() {
    let up = Upstream::start(healthy()).await;
    let mut sw = ready_sidewatch_with(&up, "1s", &[("SIDEWATCH_DRAIN_LINGER", "2s")]).await;
    let sent = Instant::now();
    sw.signal(Signal::SIGTERM);
    let status = sw.wait_exit(WITHIN).await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        sent.elapsed() >= Duration::from_secs(3),
        "exited {:?} after SIGTERM, before drain.delay + drain.linger",
        sent.elapsed()
    );
    sw.wait_log("scraped=false").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lingering_ends_a_second_before_the_grace_period() {
    let up = Upstream::start(healthy()).await;
    let mut sw = ready_sidewatch_with(
        &up,
        "1s",
        &[
            ("SIDEWATCH_DRAIN_MAX", "2s"),
            ("SIDEWATCH_DRAIN_GRACE_PERIOD", "4s"),
            ("SIDEWATCH_DRAIN_LINGER", "5m"),
        ],
    )
    .await;
    let sent = Instant::now();
    sw.signal(Signal::SIGTERM);
    // Within WITHIN (10 s), far less than the 5 min linger: the grace period bounds it.
    let status = sw.wait_exit(WITHIN).await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        sent.elapsed() >= Duration::from_secs(3),
        "{:?}",
        sent.elapsed()
    );
    sw.wait_log("scraped=false").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_aborts_the_drain() {
    let up = Upstream::start(healthy()).await;
    let mut sw = ready_sidewatch(&up, "60s").await;
    sw.signal(Signal::SIGTERM);
    sw.wait_reason("draining", WITHIN).await;
    sw.signal(Signal::SIGINT);
    let status = sw.wait_exit(WITHIN).await;
    assert!(!status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_post_drain_join_one_drain_and_answer_when_it_ends() {
    let up = Upstream::start(healthy()).await;
    let sw = ready_sidewatch(&up, "1s").await;
    let client = common::client();
    let started = Instant::now();
    let (get, post) = tokio::join!(
        client.get(sw.url("/drain")).send(),
        client.post(sw.url("/drain")).send()
    );
    let elapsed = started.elapsed();
    for resp in [get.unwrap(), post.unwrap()] {
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        assert_eq!(body["outcome"], "quiet");
    }
    assert!(
        elapsed >= Duration::from_secs(1),
        "answered after {elapsed:?}, before drain.delay"
    );
    assert_eq!(
        sw.metric("sidewatch_drains_total{outcome=\"quiet\"}").await,
        Some(1.0)
    );
    assert_eq!(
        sw.metric("sidewatch_drain_duration_seconds_count").await,
        Some(1.0)
    );
    // After the drain, a new call joins the ended drain and answers at once.
    let resp = client.get(sw.url("/drain")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        sw.metric("sidewatch_drains_total{outcome=\"quiet\"}").await,
        Some(1.0)
    );
    // The drained sidecar stays up and not ready until it is stopped.
    let (status, body) = sw.readyz().await;
    assert_eq!(
        (status, body["reasons"][0]["reason"].as_str()),
        (503, Some("draining"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_and_paths_are_refused_without_effect() {
    let up = Upstream::start(healthy()).await;
    let sw = ready_sidewatch(&up, "1s").await;
    let client = common::client();
    let put = client.put(sw.url("/drain")).send().await.unwrap();
    assert_eq!(put.status(), 405);
    assert_eq!(put.headers()["allow"], "GET, POST");
    let post = client.post(sw.url("/readyz")).send().await.unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(
        client.get(sw.url("/nope")).send().await.unwrap().status(),
        404
    );
    let head = client.head(sw.url("/readyz")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(sw.readyz().await.0, 200, "nothing started a drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_check_metrics() {
    // Before anything starts: without promtool there is nothing to check the output with.
    if which("promtool").is_none() {
        skip_or_fail("promtool is not installed (Debian package prometheus)");
        return;
    }
    let up = Upstream::start(healthy()).await;
    let sw = ready_sidewatch(&up, "1s").await;
    up.set(Behaviour::Status(500, ""));
    sw.wait_reason("http_5xx", WITHIN).await;
    let (status, text) = sw.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "sidewatch_ready",
        "sidewatch_ready_transitions_total",
        "sidewatch_probe_up",
        "sidewatch_probe_duration_seconds_bucket",
        "sidewatch_probe_failures_total",
        "sidewatch_drains_total",
        "sidewatch_drain_duration_seconds_bucket",
        "sidewatch_build_info",
    ] {
        assert!(
            text.contains(&format!("\n{name}")),
            "{name} missing from /metrics"
        );
    }
    let Some((clean, report)) = common::promtool_check_metrics(&text) else {
        return;
    };
    assert!(clean, "promtool failed or warned: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_one_line_per_transition_with_reasons() {
    let up = Upstream::start(healthy()).await;
    let url = up.url();
    let sw = Sidewatch::start(
        &[
            "--target",
            &url,
            "--interval",
            "50ms",
            "--failure-threshold",
            "1",
            "--log-format",
            "json",
        ],
        &[],
    );
    sw.wait_ready(WITHIN).await;
    up.set(Behaviour::Status(503, ""));
    sw.wait_reason("http_5xx", WITHIN).await;
    let line = eventually("a JSON transition line", WITHIN, || {
        let logs = sw.logs();
        async move {
            logs.into_iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
                .find(|j| j["message"] == "readiness changed" && j["ready"] == false)
        }
    })
    .await;
    assert_eq!(line["level"], "INFO");
    let reasons = line["reasons"].as_str().unwrap();
    assert!(reasons.contains("probe:app=http_5xx"), "{reasons}");
    let transitions = sw
        .logs()
        .iter()
        .filter(|l| l.contains("readiness changed"))
        .count();
    assert_eq!(transitions, 2, "start -> ready, ready -> not ready");
}
