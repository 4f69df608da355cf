//! The README's reference sections are produced by the code: they cannot drift from it.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use sidewatch::engine::{Engine, Observation, SignalSpec};
use sidewatch::metrics::Metrics;
use sidewatch::reason::Reason;

const README: &str = include_str!("../README.md");

#[test]
fn the_readyz_example_is_what_the_engine_serialises() {
    let mut engine = Engine::new();
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_694_400); // 2026-11-26T12:00:00Z
    let spec = SignalSpec {
        failure_threshold: 1,
        success_threshold: 1,
        critical: true,
    };
    engine.register("probe:app", spec, at);
    let refused = Observation::Failure {
        reason: Reason::Refused,
        message: "tcp connect error: Connection refused (os error 111)".into(),
    };
    engine.observe("probe:app", refused, at);
    let json = serde_json::to_string(engine.verdict()).unwrap();
    let block = README
        .split("<!-- readyz-example: checked by tests/readme.rs -->\n```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("README has the readyz example block");
    assert_eq!(block, json);
}

#[test]
fn the_metric_table_lists_exactly_the_registered_metrics() {
    let metrics = Metrics::new(["app"]);
    // Its label values come from the Pod, so no series exists until a restart is seen.
    metrics
        .container_restarts
        .with_label_values(&["app", "other"])
        .inc();
    let text = String::from_utf8(metrics.encode()).unwrap();
    let registered: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let section = README
        .split("## Metrics")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a Metrics section");
    let documented: BTreeSet<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    assert_eq!(documented, registered);
}

#[test]
fn every_reason_label_is_explained() {
    for reason in Reason::PROBE {
        assert!(
            README.contains(&format!("`{reason}`")),
            "README does not explain {reason}"
        );
    }
}
