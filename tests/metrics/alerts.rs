//! The chart's alerts with real promtool: the rules it renders pass `promtool check rules`, and the
//! unit tests of tests/fixtures/alerts.test.yaml pass `promtool test rules` against them. Every
//! alert must have a case where it fires and one where it must not; the chart's `for:` values are
//! the rule file's own, and overriding them reaches the rendered rules.

#[allow(unused_imports)]
use crate::common;
use std::collections::BTreeMap;

use common::{chart, output_text, run_tool, tempdir};
use serde_json::{json, Value};

const FIXTURE: &str = include_str!("../fixtures/alerts.test.yaml");
const RULES: &str = include_str!("../../charts/sidewatch/rules/sidewatch.rules.yaml");
const VALUES: &str = include_str!("../../charts/sidewatch/values.yaml");

fn rendered() -> Option<Value> {
    chart::render(&["-f", chart::ALL_ON]).map(|r| chart::rule_file(&r))
}

fn promtool(dir: &std::path::Path, args: &[&str]) -> Option<std::process::Output> {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let file = all.pop().unwrap();
    all.push(dir.join(file).to_str().unwrap().to_owned());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    run_tool("promtool", &refs)
}

#[test]
fn the_rendered_rules_pass_promtool_check() {
    let Some(rules) = rendered() else { return };
    let dir = tempdir::Dir::new();
    std::fs::write(dir.path().join("rules.json"), rules.to_string()).unwrap();
    let Some(out) = promtool(dir.path(), &["check", "rules", "rules.json"]) else {
        return;
    };
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    let n = rules["groups"][0]["rules"].as_array().unwrap().len();
    assert!(
        text.contains(&format!("SUCCESS: {n} rules found")),
        "{text}"
    );
    assert!(!text.contains("WARNING"), "{text}");
}

/// The fixture as promtool reads it: each expected alert completed with its rule's plain-text
/// annotations, and every `quiet_at` time turned into an empty expectation for every alert.
/// Returns it with, per alert, how many firing and how many empty expectations it has.
fn complete(fixture: &mut Value, rules: &Value) -> BTreeMap<String, (usize, usize)> {
    let alerts: BTreeMap<String, &Value> = chart::alerts(rules)
        .into_iter()
        .map(|r| (r["alert"].as_str().unwrap().to_owned(), r))
        .collect();
    let mut seen: BTreeMap<String, (usize, usize)> =
        alerts.keys().map(|a| (a.clone(), (0, 0))).collect();
    for test in fixture["tests"].as_array_mut().unwrap() {
        let test = test.as_object_mut().unwrap();
        let mut checks = test
            .remove("alert_rule_test")
            .map(|c| c.as_array().unwrap().clone())
            .unwrap_or_default();
        if let Some(times) = test.remove("quiet_at") {
            for at in times.as_array().unwrap() {
                for name in alerts.keys() {
                    checks.push(json!({"eval_time": at, "alertname": name, "exp_alerts": []}));
                }
            }
        }
        for check in &mut checks {
            let name = check["alertname"].as_str().unwrap().to_owned();
            let rule = alerts
                .get(&name)
                .unwrap_or_else(|| panic!("the fixture tests {name}, which the chart lacks"));
            let expected = check["exp_alerts"].as_array_mut().unwrap();
            let counts = seen.get_mut(&name).unwrap();
            if expected.is_empty() {
                counts.1 += 1;
            } else {
                counts.0 += expected.len();
            }
            for alert in expected {
                let annotations = &mut alert["exp_annotations"];
                for key in ["description", "runbook_url"] {
                    let text = rule["annotations"][key].as_str().unwrap();
                    assert!(!text.contains("{{"), "{name}: {key} must be plain text");
                    annotations[key] = text.into();
                }
            }
        }
        test.insert("alert_rule_test".into(), Value::Array(checks));
    }
    seen
}

#[test]
fn every_alert_fires_when_it_should_and_only_then() {
    let Some(rules) = rendered() else { return };
    let mut fixture: Value = serde_saphyr::from_str(FIXTURE).unwrap();
    let seen = complete(&mut fixture, &rules);
    for (alert, (fires, quiet)) in &seen {
        assert!(*fires > 0, "no case where {alert} fires");
        assert!(*quiet > 0, "no case where {alert} must stay silent");
    }
    let dir = tempdir::Dir::new();
    std::fs::write(dir.path().join("rules.json"), rules.to_string()).unwrap();
    std::fs::write(dir.path().join("tests.json"), fixture.to_string()).unwrap();
    let Some(out) = promtool(dir.path(), &["test", "rules", "tests.json"]) else {
        return;
    };
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("SUCCESS"),
        "{}",
        output_text(&out)
    );
}

/// The fixture itself must be able to fail: a summary changed by one character is caught.
#[test]
fn a_wrong_expectation_fails_promtool() {
    let Some(rules) = rendered() else { return };
    let mut fixture: Value = serde_saphyr::from_str(FIXTURE).unwrap();
    complete(&mut fixture, &rules);
    let summary = &mut fixture["tests"][0]["alert_rule_test"][1]["exp_alerts"][0]
        ["exp_annotations"]["summary"];
    *summary = format!("{}!", summary.as_str().unwrap()).into();
    let dir = tempdir::Dir::new();
    std::fs::write(dir.path().join("rules.json"), rules.to_string()).unwrap();
    std::fs::write(dir.path().join("tests.json"), fixture.to_string()).unwrap();
    let Some(out) = promtool(dir.path(), &["test", "rules", "tests.json"]) else {
        return;
    };
    assert!(!out.status.success(), "{}", output_text(&out));
}

#[test]
fn the_chart_values_give_each_alert_its_rule_file_for_and_override_it() {
    let file: Value = serde_saphyr::from_str(RULES).unwrap();
    let values: Value = serde_saphyr::from_str(VALUES).unwrap();
    let own: BTreeMap<String, String> = chart::alerts(&file)
        .into_iter()
        .map(|r| {
            let name = r["alert"].as_str().unwrap().to_owned();
            (name, r["for"].as_str().unwrap_or("0s").to_owned())
        })
        .collect();
    let chart_for: BTreeMap<String, String> =
        serde_json::from_value(values["prometheusRule"]["for"].clone()).unwrap();
    assert_eq!(
        chart_for, own,
        "values.yaml prometheusRule.for and the rule file differ"
    );

    let Some(r) = chart::render(&[
        "-f",
        chart::ALL_ON,
        "--set",
        "prometheusRule.for.SidewatchPodNotReady=7s",
        "--set",
        "prometheusRule.job=pods",
        "--set",
        "prometheusRule.runbookUrl=https://wiki.example/sw",
    ]) else {
        return;
    };
    let rules = chart::rule_file(&r);
    let alerts = chart::alerts(&rules);
    let not_ready = alerts
        .iter()
        .find(|a| a["alert"] == "SidewatchPodNotReady")
        .unwrap();
    assert_eq!(not_ready["for"], "7s");
    assert_eq!(
        not_ready["annotations"]["runbook_url"],
        "https://wiki.example/sw#sidewatchpodnotready"
    );
    let down = alerts
        .iter()
        .find(|a| a["alert"] == "SidewatchSidecarDown")
        .unwrap();
    let expr = down["expr"].as_str().unwrap();
    assert!(
        expr.contains("up{job=\"pods\"}") && !expr.contains("job=\"sidewatch\""),
        "{expr}"
    );
    // The scrape objects set the same job.
    for kind in ["PodMonitor", "ServiceMonitor"] {
        let docs = chart::documents(&r);
        let monitor = docs.iter().find(|d| d["kind"] == kind).unwrap();
        let text = monitor.to_string();
        assert!(
            text.contains(r#""targetLabel":"job""#) && text.contains(r#""replacement":"pods""#),
            "{kind}: {text}"
        );
    }
}

/// Every alert is expected firing by one of the real-Prometheus tests (in its `expected` list): a
/// new alert without a real exposition behind it is caught here.
#[test]
fn every_alert_is_seen_firing_in_a_real_prometheus() {
    let file: Value = serde_saphyr::from_str(RULES).unwrap();
    let expected: Vec<&str> = [
        include_str!("prometheus.rs"),
        include_str!("prometheus_node.rs"),
    ]
    .iter()
    .map(|text| {
        let list = text.split("let expected").nth(1).expect("an expected list");
        list.split("];").next().unwrap_or_default()
    })
    .collect();
    let missing: Vec<&str> = chart::alerts(&file)
        .into_iter()
        .filter_map(|r| r["alert"].as_str())
        .filter(|name| !expected.iter().any(|l| l.contains(&format!("\"{name}\""))))
        .collect();
    assert!(missing.is_empty(), "never seen firing: {missing:?}");
}
