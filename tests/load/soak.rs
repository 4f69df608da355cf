//! The soak benchmark's two-minute version: `bench/soak.py --duration 120` runs the real binary at a
//! 50 ms probe interval while a real app cycles through every failure class (refused, reset,
//! invalid_response, http_5xx, unexpected_status, body_mismatch, timeout, tls twice, memory_high,
//! oom_predicted, a real OOM kill in a cgroup v1 memory cgroup, process_exited; dns all along),
//! under steady /metrics and /readyz traffic. Needs root, cgroup v1 memory and python3.
//!
//! At the end of each cycle the harness counts sidewatch's descriptors at rest: load paused, admin
//! connections closed, the minimum of 100 counts over 1 s (a probe connection in flight lives about
//! 1 ms of every 50). That count is exact, so no tolerance: any descriptor left behind by a cycle
//! shows as one more at the next.

#[allow(unused_imports)]
use crate::{common, pki};
use std::path::Path;

use common::{output_text, run_tool, skip_or_fail};

const V1_ROOT: &str = "/sys/fs/cgroup/memory";

/// Probe reasons each probe of the soak's config must have counted.
const PROBE_REASONS: &[(&str, &str)] = &[
    ("app", "refused"),
    ("app", "reset"),
    ("app", "invalid_response"),
    ("app", "http_5xx"),
    ("app", "unexpected_status"),
    ("app", "body_mismatch"),
    ("app", "timeout"),
    ("tls", "tls"),
    ("dns", "dns"),
];

/// Reasons of the memory, process and TLS signals: each phase of every cycle must have seen its
/// reason on /readyz (the logs cannot say it: a soak's transitions pass their rate limit).
const PHASE_REASONS: &[&str] = &[
    "memory_high",
    "oom_predicted",
    "oom_killed",
    "process_exited",
    "tls",
];

fn metric(text: &str, series: &str) -> f64 {
    common::sample(text, series).unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

/// The soak's certificates in `dir`: a CA, a leaf for 127.0.0.1 it signed (what the tls probe
/// trusts) and a self-signed leaf nobody trusts.
fn write_certificates(dir: &Path) {
    let pki = pki::Pki::new();
    let leaf = pki.leaf();
    let bad = pki::Leaf::self_signed(&["127.0.0.1"]);
    for (name, pem) in [
        ("ca.pem", pki.ca_pem()),
        ("leaf.pem", leaf.cert_pem),
        ("leaf.key", leaf.key_pem),
        ("bad.pem", bad.cert_pem),
        ("bad.key", bad.key_pem),
    ] {
        std::fs::write(dir.join(name), pem).expect("write a certificate");
    }
}

#[test]
fn two_minute_soak_leaks_no_descriptor_and_sees_every_failure_class() {
    if !Path::new(V1_ROOT).join("memory.limit_in_bytes").exists() {
        skip_or_fail("no cgroup v1 memory controller at /sys/fs/cgroup/memory");
        return;
    }
    if !rustix::process::geteuid().is_root() {
        skip_or_fail("the soak creates a memory cgroup: root needed");
        return;
    }
    let dir = common::tempdir::Dir::new();
    write_certificates(dir.path());
    let json = dir.path().join("soak.json");
    let (json_arg, out_arg) = (json.to_str().unwrap(), dir.path().to_str().unwrap());
    let args = [
        "bench/soak.py",
        "--duration",
        "120",
        "--bin",
        common::BIN,
        "--sample-every",
        "1",
        "--table-every",
        "30",
        "--json",
        json_arg,
        "--out",
        out_arg,
        "--certs",
        out_arg,
    ];
    let Some(out) = run_tool("python3", &args) else {
        return;
    };
    let text = output_text(&out);
    assert!(out.status.success(), "bench/soak.py failed:\n{text}");
    eprintln!("{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("read the soak's report"))
            .expect("the soak's report is JSON");

    // Descriptors at rest: never more than after the first cycle (its lazily opened ones, such as
    // the TLS client's and the cgroup's eventfds, are in by then).
    let quiet = report["quiescent"].as_array().expect("quiescent counts");
    assert!(
        quiet.len() >= 2,
        "fewer than two whole cycles ran in two minutes: {text}"
    );
    let fds: Vec<u64> = quiet.iter().map(|q| q["fds"].as_u64().unwrap()).collect();
    let worst = quiet.iter().max_by_key(|q| q["fds"].as_u64()).unwrap();
    assert!(
        fds[1..].iter().all(|&n| n <= fds[0]),
        "descriptors at rest grew, per cycle {fds:?}\nafter cycle 1: {}\nat most: {}",
        quiet[0]["fd_kinds"],
        worst["fd_kinds"]
    );

    // Every failure class actually happened, seen by sidewatch itself.
    let metrics = report["metrics_text"].as_str().expect("final /metrics");
    for (probe, reason) in PROBE_REASONS {
        let series =
            format!("sidewatch_probe_failures_total{{probe=\"{probe}\",reason=\"{reason}\"}}");
        assert!(metric(metrics, &series) > 0.0, "{series} stayed 0");
    }
    let cycles = report["cycles"].as_f64().unwrap();
    assert!(metric(metrics, "sidewatch_oom_kills_total") >= cycles);
    assert!(metric(metrics, "sidewatch_process_exits_total") >= cycles);
    let phases = report["phases"].as_array().expect("phases");
    for reason in PHASE_REASONS {
        let seen = phases
            .iter()
            .filter(|p| p["reason"] == *reason && p["detect_s"].is_number())
            .count();
        assert!(
            seen as f64 >= cycles,
            "{reason} seen in {seen} phases over {cycles} cycles"
        );
    }

    // Each phase saw its reason and came back ready; the load never saw an error, /livez never
    // failed; slow clients were cut off; sidewatch drained and exited cleanly at the end.
    assert_eq!(report["findings"], serde_json::json!([]), "{text}");
    assert_eq!(report["load_errors"], serde_json::json!([]), "{text}");
    let load = &report["load"];
    assert!(load["metrics"].as_u64().unwrap() >= 100, "{load}");
    assert!(load["livez_200"].as_u64().unwrap() >= 10, "{load}");
    assert_eq!(report["exit_code"], 0);
}
