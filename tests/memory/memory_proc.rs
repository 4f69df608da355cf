//! The `proc` source and the process signal, on the test's own children (they share our /proc,
//! as containers with `shareProcessNamespace: true` do).

#[allow(unused_imports)]
use crate::common;
use std::time::Duration;

use common::{healthy, Hog, Sidewatch, Upstream};

const WITHIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_against_the_limit_then_exit_and_restart() {
    let marker = format!("sidewatch-proc-test-{}", std::process::id());
    let Some(mut hog) = Hog::spawn(8, 20, 80, &marker) else {
        return;
    };
    let up = Upstream::start(healthy()).await;
    let url = up.url();
    let sw = Sidewatch::start(
        &["--target", &url, "--interval", "100ms"],
        &[
            ("SIDEWATCH_PROCESS_MATCH", &marker),
            ("SIDEWATCH_MEMORY_SOURCE", "proc"),
            ("SIDEWATCH_MEMORY_LIMIT", "100Mi"),
            ("SIDEWATCH_MEMORY_INTERVAL", "50ms"),
            // Only the level, not the trend, is under test here.
            ("SIDEWATCH_MEMORY_PREDICT_OOM_WITHIN", "null"),
        ],
    );
    sw.wait_ready(WITHIN).await;
    assert_eq!(
        sw.metric("sidewatch_memory_limit_bytes").await,
        Some((100u64 << 20) as f64)
    );

    hog.go(); // to 80 MiB of allocations plus the interpreter: above 92 of 100 MiB
    let body = sw.wait_reason("memory_high", WITHIN).await;
    assert_eq!(body["reasons"][0]["signal"], "memory:usage");

    drop(hog);
    let body = sw.wait_reason("process_exited", WITHIN).await;
    let message = body["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["signal"] == "process:app")
        .map(|r| r["message"].as_str().unwrap().to_owned())
        .unwrap();
    assert!(message.contains("exited"), "{message}");
    assert_eq!(sw.metric("sidewatch_process_exits_total").await, Some(1.0));

    let Some(_again) = Hog::spawn(1, 1000, 1, &marker) else {
        return;
    };
    sw.wait_ready(WITHIN).await;
    sw.wait_log("app process is back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_process_is_not_ready() {
    let marker = format!("sidewatch-absent-{}", std::process::id());
    let up = Upstream::start(healthy()).await;
    let url = up.url();
    let sw = Sidewatch::start(
        &["--target", &url, "--interval", "100ms"],
        &[
            ("SIDEWATCH_PROCESS_MATCH", &marker),
            ("SIDEWATCH_MEMORY_SOURCE", "none"),
        ],
    );
    let body = sw.wait_reason("process_exited", WITHIN).await;
    let process = body["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["signal"] == "process:app")
        .unwrap();
    assert!(
        process["message"]
            .as_str()
            .unwrap()
            .contains("no process matches"),
        "{body}"
    );
    let Some(_app) = Hog::spawn(1, 1000, 1, &marker) else {
        return;
    };
    sw.wait_ready(WITHIN).await;
}

#[test]
fn proc_without_match_needs_a_shared_process_namespace() {
    use common::Within;
    // This test's own PID 1 is no pod's pause process: the pod shares no process namespace.
    let init = std::fs::read("/proc/1/cmdline").unwrap_or_default();
    let init = String::from_utf8_lossy(&init);
    if init.contains("pause") || init.contains("catatonit") {
        common::skip_or_fail("this test runs inside a pod that shares its process namespace");
        return;
    }
    let out = common::sidewatch_command()
        .args(["run", "--listen", "127.0.0.1:0"])
        .args(["--target", "tcp://127.0.0.1:9"])
        .env("SIDEWATCH_MEMORY_SOURCE", "proc")
        .env_remove("SIDEWATCH_PROCESS_MATCH")
        .env_remove("SIDEWATCH_MEMORY_LIMIT")
        // Had it started, it would serve until the deadline and fail the test.
        .output_within(Duration::from_secs(30))
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("memory.source is proc without process.match")
            && stderr.contains("shareProcessNamespace: true"),
        "{stderr}"
    );
}
