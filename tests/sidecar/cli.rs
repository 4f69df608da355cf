//! The command line as a user meets it: bad configs and flags fail before anything starts, with
//! the file, line, column and field; `check-config`, `version` and `demo` work.

#[allow(unused_imports)]
use crate::common;
use common::{Within, COMMAND_WITHIN};
use std::process::Output;
use std::time::Duration;

use common::write_config;

fn sidewatch(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = common::sidewatch_command();
    cmd.args(args).env_remove("SIDEWATCH_LOG_FORMAT");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    // A refused config exits at once; one that was wrongly accepted would serve for ever.
    cmd.output_within(Duration::from_secs(30))
        .expect("run sidewatch")
}

/// `run` with this config must exit 2, print the location and field, and never listen.
fn refused(yaml: &str, line_col: &str, field: &str, words: &str) {
    let (_dir, path) = write_config(yaml);
    let p = path.to_str().unwrap();
    // Had it started, it would serve until the helper's deadline kills it and fails the test.
    let out = sidewatch(&["run", "--config", p, "--listen", "127.0.0.1:0"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let location = format!("{p}:{line_col}: field `{field}`");
    assert!(
        stderr.contains(&location),
        "want {location:?} in:\n{stderr}"
    );
    assert!(stderr.contains(words), "want {words:?} in:\n{stderr}");
    assert!(!stderr.contains("sidewatch started"), "{stderr}");
    let check = sidewatch(&["check-config", "--config", p], &[]);
    assert_eq!(check.status.code(), Some(2));
}

#[test]
fn an_unknown_key_is_refused() {
    refused(
        "listen: 127.0.0.1:9102\nprobes:\n  - name: app\n    tcp: {address: \"127.0.0.1:80\"}\n    intervall: 1s\n",
        "5:5",
        "probes[0].intervall",
        "unknown field `intervall`",
    );
}

#[test]
fn a_wrong_type_is_refused() {
    refused(
        "probes:\n  - name: app\n    tcp: {address: \"127.0.0.1:80\"}\n    critical: maybe\n",
        "4:15",
        "probes[0].critical",
        "maybe",
    );
}

#[test]
fn a_bad_duration_is_refused() {
    refused(
        "drain:\n  delay: 5 minutes-ish\n",
        "2:3",
        "drain.delay",
        "expected a duration",
    );
}

#[test]
fn a_bad_url_is_refused() {
    refused(
        "probes:\n  - name: app\n    http:\n      url: \"htp//nope\"\n",
        "4:12",
        "probes[0].http.url",
        "bad URL",
    );
}

#[test]
fn a_missing_file_is_named() {
    let out = sidewatch(&["run", "--config", "/nonexistent/sidewatch.yaml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sidewatch.yaml"));
}

#[test]
fn a_bad_flag_or_env_is_refused() {
    let out = sidewatch(
        &["run", "--target", "ftp://x/", "--listen", "127.0.0.1:1"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--target"));
    let out = sidewatch(
        &[
            "run",
            "--target",
            "tcp://127.0.0.1:80",
            "--interval",
            "fast",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let out = sidewatch(
        &["check-config", "--target", "tcp://127.0.0.1:80"],
        &[("SIDEWATCH_DRAIN_DELAY", "later")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SIDEWATCH_DRAIN_DELAY"));
}

#[test]
fn run_without_a_target_says_why() {
    let out = sidewatch(&["run", "--listen", "127.0.0.1:0"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--target"));
}

#[test]
fn check_config_prints_the_effective_config_with_every_source() {
    let (_dir, path) = write_config(
        "probes:\n  - name: app\n    tcp: {address: \"127.0.0.1:80\"}\ndrain: {delay: 2s}\n",
    );
    let out = sidewatch(
        &[
            "check-config",
            "--config",
            path.to_str().unwrap(),
            "--interval",
            "250ms",
        ],
        &[
            ("SIDEWATCH_DRAIN_DELAY", "3s"),
            ("SIDEWATCH_LISTEN", "127.0.0.1:9999"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["listen"], "127.0.0.1:9999");
    assert_eq!(printed["drain"]["delay"], "3s");
    assert_eq!(printed["probes"][0]["interval"], "250ms");
    assert_eq!(printed["probes"][0]["tcp"]["address"], "127.0.0.1:80");
}

#[test]
fn version_prints_the_version() {
    let out = sidewatch(&["version"], &[]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sidewatch {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_demo_classifies_every_fault() {
    let out = sidewatch(
        &["demo", "--phase", "1500ms", "--listen", "127.0.0.1:0"],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for reason in [
        "refused",
        "invalid_response",
        "http_5xx",
        "timeout",
        "not_serving",
        "draining",
    ] {
        assert!(
            stdout.contains(&format!("NOT READY: {reason}")),
            "{reason} missing:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("7 of 7 behaviours classified as expected"),
        "{stdout}"
    );
}

/// The injector's targets name the pod's IP as `${POD_IP}`: sidewatch reads it from the
/// environment at start, in brackets when it is IPv6, and says which variable is missing.
#[test]
fn a_variable_in_a_probe_address_is_the_pods_ip() {
    let probes = r#"[{"name": "app", "http": {"url": "http://${POD_IP}:8080/healthz"}},
        {"name": "rpc", "grpc": {"address": "${POD_IP}:9555", "service": "shop.Cart"}},
        {"name": "db", "tcp": {"address": "${POD_IP}:5432"}}]"#;
    for (ip, url, address) in [
        (
            "10.244.1.7",
            "http://10.244.1.7:8080/healthz",
            "10.244.1.7:9555",
        ),
        (
            "fd00:10:244::7",
            "http://[fd00:10:244::7]:8080/healthz",
            "[fd00:10:244::7]:9555",
        ),
    ] {
        let out = sidewatch(
            &["check-config"],
            &[("POD_IP", ip), ("SIDEWATCH_PROBES", probes)],
        );
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(printed["probes"][0]["http"]["url"], url);
        assert_eq!(printed["probes"][1]["grpc"]["address"], address);
        assert_eq!(printed["probes"][1]["grpc"]["service"], "shop.Cart");
        assert_eq!(printed["drain"]["port"], serde_json::Value::Null);
    }
    let out = common::sidewatch_command()
        .arg("check-config")
        .env_remove("POD_IP")
        .env("SIDEWATCH_PROBES", probes)
        .output_within(COMMAND_WITHIN)
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("SIDEWATCH_PROBES") && text.contains("POD_IP is not set"),
        "{text}"
    );
}

#[test]
fn a_bad_probe_list_in_the_environment_names_the_variable_and_the_field() {
    for (probes, words) in [
        (
            "[{name: app, grpc: {address: nowhere}}]",
            "probes[0].grpc.address",
        ),
        (
            "[{name: app, http: {url: 'http://h/', headers: [{name: 'bad name', value: x}]}}]",
            "bad header name",
        ),
        ("[{name: app}", "not YAML"),
    ] {
        let out = sidewatch(&["check-config"], &[("SIDEWATCH_PROBES", probes)]);
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(
            text.contains("SIDEWATCH_PROBES") && text.contains(words),
            "want {words:?} in {text}"
        );
    }
}

/// The injected sidecar's drain token lives in the variable drain.token_env names: a setting of
/// no section, which must not be taken for a misspelt one.
#[test]
fn the_variable_named_by_drain_token_env_is_not_a_setting() {
    let out = sidewatch(
        &["check-config", "--target", "tcp://127.0.0.1:80"],
        &[
            (
                "SIDEWATCH_DRAIN_TOKEN_ENV",
                "SIDEWATCH_INJECTED_DRAIN_TOKEN",
            ),
            ("SIDEWATCH_INJECTED_DRAIN_TOKEN", "0123abcd"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let out = sidewatch(
        &["check-config", "--target", "tcp://127.0.0.1:80"],
        &[("SIDEWATCH_INJECTED_DRAIN_TOKEN", "0123abcd")],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "without token_env it is unknown"
    );
}
