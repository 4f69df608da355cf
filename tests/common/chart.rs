//! The chart rendered by real helm, and the alert rules it ships, as the tests of the chart, the
//! alerts and the real Prometheus use them.
#![allow(dead_code)] // each test crate uses its own subset

use serde_json::Value;

use super::{output_text, run_tool};

/// Every optional object of the chart switched on at once.
pub const ALL_ON: &str = "tests/fixtures/chart-all-on.yaml";

/// `helm template` of the chart with these extra arguments (`-f FILE`, `--set …`); None when
/// helm is missing (skipped, or a failure under SIDEWATCH_REQUIRE_ALL).
pub fn render(args: &[&str]) -> Option<String> {
    let mut all = vec![
        "template",
        "sw",
        "charts/sidewatch",
        "--namespace",
        "sidewatch",
    ];
    all.extend_from_slice(args);
    let out = run_tool("helm", &all)?;
    assert!(out.status.success(), "{}", output_text(&out));
    Some(String::from_utf8(out.stdout).unwrap())
}

pub fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(yaml).unwrap()
}

/// The rule groups of the rendered PrometheusRule, as a Prometheus rule file.
pub fn rule_file(rendered: &str) -> Value {
    let docs = documents(rendered);
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("the chart renders a PrometheusRule");
    serde_json::json!({"groups": rule["spec"]["groups"]})
}

/// The alerting rules of a rule file.
pub fn alerts(file: &Value) -> Vec<&Value> {
    file["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter(|r| r.get("alert").is_some())
        .collect()
}
