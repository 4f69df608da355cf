//! Each way an upstream fails gets its own reason, in `/readyz` and in
//! `sidewatch_probe_failures_total`, against real servers on loopback.

#[allow(unused_imports)]
use crate::common;
use std::time::Duration;

use common::{eventually, healthy, write_config, Behaviour, Sidewatch, Upstream};

const WITHIN: Duration = Duration::from_secs(10);

fn fast(target: &str) -> Vec<String> {
    [
        "--target",
        target,
        "--interval",
        "50ms",
        "--timeout",
        "300ms",
        "--failure-threshold",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start(args: &[String]) -> Sidewatch {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Sidewatch::start(&args, &[])
}

/// Healthy first, then `fault`: `/readyz` and the failure counter must both name `reason`.
async fn fault_gives_reason(fault: Behaviour, reason: &str) {
    let up = Upstream::start(healthy()).await;
    let sw = start(&fast(&up.url()));
    sw.wait_ready(WITHIN).await;
    up.set(fault);
    let body = sw.wait_reason(reason, WITHIN).await;
    assert_eq!(body["ready"], false);
    assert_eq!(body["reasons"][0]["signal"], "probe:app");
    assert!(body["reasons"][0]["since"]
        .as_str()
        .is_some_and(|s| s.ends_with('Z')));
    let series = format!("sidewatch_probe_failures_total{{probe=\"app\",reason=\"{reason}\"}}");
    let count = sw.metric(&series).await.unwrap_or(0.0);
    assert!(count >= 1.0, "{series} = {count}");
    assert_eq!(sw.metric("sidewatch_ready").await, Some(0.0));
    assert_eq!(
        sw.metric("sidewatch_probe_up{probe=\"app\"}").await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_on_a_healthy_upstream() {
    let up = Upstream::start(healthy()).await;
    let sw = start(&fast(&up.url()));
    sw.wait_ready(WITHIN).await;
    let (status, body) = sw.readyz().await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"ready": true, "draining": false, "reasons": []})
    );
    assert_eq!(sw.metric("sidewatch_ready").await, Some(1.0));
    assert_eq!(sw.get("/livez").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_first_success() {
    let up = Upstream::start(Behaviour::Status(503, "")).await;
    let sw = start(&fast(&up.url()));
    let body = sw.wait_reason("http_5xx", WITHIN).await;
    assert_eq!(
        body["reasons"][0]["message"],
        "HTTP/1.1 503 Service Unavailable"
    );
    up.set(healthy());
    sw.wait_ready(WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_when_nothing_listens() {
    let up = Upstream::start(healthy()).await;
    let sw = start(&fast(&up.url()));
    sw.wait_ready(WITHIN).await;
    up.stop();
    sw.wait_reason("refused", WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_when_the_connection_is_closed_without_an_answer() {
    fault_gives_reason(Behaviour::Close, "reset").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_when_the_connection_is_reset() {
    fault_gives_reason(Behaviour::Reset, "reset").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_response_on_bytes_that_are_not_http() {
    fault_gives_reason(
        Behaviour::Raw(b"\x00\x13garbage that is not HTTP\r\n\r\n"),
        "invalid_response",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_response_on_a_malformed_status_line() {
    fault_gives_reason(
        Behaviour::Raw(b"HTTP/1.1 2x0 OK\r\n\r\n"),
        "invalid_response",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_5xx_on_a_server_error() {
    fault_gives_reason(Behaviour::Status(502, ""), "http_5xx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_status_outside_expect_status() {
    fault_gives_reason(Behaviour::Status(404, ""), "unexpected_status").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_when_the_app_hangs() {
    fault_gives_reason(Behaviour::Hang, "timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_mismatch_when_body_contains_is_not_found() {
    let up = Upstream::start(Behaviour::Status(200, "status: ok")).await;
    let yaml = format!(
        "probes:\n  - name: app\n    http: {{url: \"{}\", body_contains: \"status: ok\"}}\n    interval: 50ms\n    failure_threshold: 1\n",
        up.url()
    );
    let (_dir, path) = write_config(&yaml);
    let sw = Sidewatch::start(&["--config", path.to_str().unwrap()], &[]);
    sw.wait_ready(WITHIN).await;
    up.set(Behaviour::Status(200, "status: degraded"));
    sw.wait_reason("body_mismatch", WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_probe_is_ready_while_the_port_accepts() {
    let up = Upstream::start(healthy()).await;
    let target = format!("tcp://{}", up.addr);
    let sw = start(&fast(&target));
    sw.wait_ready(WITHIN).await;
    up.stop();
    sw.wait_reason("refused", WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_critical_probe_warns_and_never_vetoes() {
    let app = Upstream::start(healthy()).await;
    let extra = Upstream::start(Behaviour::Status(500, "")).await;
    let yaml = format!(
        "probes:\n  - {{name: app, http: {{url: \"{}\"}}, interval: 50ms}}\n  - {{name: extra, http: {{url: \"{}\"}}, interval: 50ms, critical: false}}\n",
        app.url(),
        extra.url()
    );
    let (_dir, path) = write_config(&yaml);
    let sw = Sidewatch::start(&["--config", path.to_str().unwrap()], &[]);
    let body = eventually("a warning for extra", WITHIN, || async {
        let (status, body) = sw.readyz().await;
        (status == 200 && body["warnings"][0]["reason"] == "http_5xx").then_some(body)
    })
    .await;
    assert_eq!(body["reasons"], serde_json::json!([]));
    assert_eq!(
        sw.metric("sidewatch_probe_up{probe=\"extra\"}").await,
        Some(0.0)
    );
}

/// failure_threshold 3, success_threshold 2, on a scripted upstream: the transition counters show
/// that two failures in a row are tolerated and one success after an outage is not enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_and_recovery_follow_the_config() {
    use Behaviour::Status;
    let ok = Status(200, "");
    let bad = Status(503, "");
    let mut script = vec![ok.clone(), ok.clone(), bad.clone(), bad.clone(), ok.clone()];
    script.extend([bad.clone(), bad.clone(), bad.clone()]); // down
    script.push(ok.clone()); // one success: still down
    script.extend([bad.clone(), bad.clone(), bad.clone()]);
    script.extend([ok.clone(), ok.clone()]); // up, and stays up
    let len = script.len();
    let up = Upstream::scripted(script).await;
    let sw = start(&[
        "--target".into(),
        up.url(),
        "--interval".into(),
        "30ms".into(),
        "--failure-threshold".into(),
        "3".into(),
        "--success-threshold".into(),
        "2".into(),
    ]);
    eventually("the script to be served", WITHIN, || async {
        (up.requests.load(std::sync::atomic::Ordering::SeqCst) > len + 2).then_some(())
    })
    .await;
    sw.wait_ready(WITHIN).await;
    let to_ready = "sidewatch_ready_transitions_total{to=\"ready\"}";
    let to_not_ready = "sidewatch_ready_transitions_total{to=\"not_ready\"}";
    // start -> ready, ready -> not ready (3 failures), not ready -> ready (2 successes).
    assert_eq!(sw.metric(to_ready).await, Some(2.0));
    assert_eq!(sw.metric(to_not_ready).await, Some(1.0));
    let failures = sw
        .metric("sidewatch_probe_failures_total{probe=\"app\",reason=\"http_5xx\"}")
        .await;
    assert_eq!(failures, Some(8.0));
}

/// The evidence of a failing answer: its status line and its body's first bytes, on one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_answer_is_shown_with_its_status_line_and_first_bytes() {
    let body =
        "upstream connect error or disconnect/reset before headers.\r\n\treset reason: overflow";
    let up = Upstream::start(Behaviour::Status(503, body)).await;
    let sw = start(&fast(&up.url()));
    let readyz = sw.wait_reason("http_5xx", WITHIN).await;
    assert_eq!(
        readyz["reasons"][0]["message"],
        "HTTP/1.1 503 Service Unavailable: \"upstream connect error or disconnect/reset before headers. reset reason: overflow\""
    );
    let long = "x".repeat(10_000);
    up.set(Behaviour::Status(404, Box::leak(long.into_boxed_str())));
    let readyz = sw.wait_reason("unexpected_status", WITHIN).await;
    let message = readyz["reasons"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("HTTP/1.1 404 Not Found: \"xxx")
            && message.ends_with("\", want 200-399"),
        "{message}"
    );
    assert!(message.len() < 200, "{message}");
}
