//! The documentation's reference parts are produced by the code, so they cannot drift from it,
//! and every link in it leads somewhere.

use std::time::{Duration, SystemTime};

use sidewatch::engine::{Engine, Observation, Signal, SignalSpec};
use sidewatch::reason::Reason;

const README: &str = include_str!("../../README.md");
const ENDPOINTS: &str = include_str!("../../docs/endpoints.md");

#[test]
fn the_readyz_example_is_what_the_engine_serialises() {
    let mut engine = Engine::new();
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_694_400); // 2026-11-26T12:00:00Z
    let spec = SignalSpec {
        failure_threshold: 1,
        success_threshold: 1,
        critical: true,
    };
    engine.register(Signal::probe("app"), spec, at);
    let refused = Observation::Failure {
        reason: Reason::Refused,
        message: "127.0.0.1:8080: Connection refused (os error 111)".into(),
    };
    engine.observe(&Signal::probe("app"), refused, at);
    let json = serde_json::to_string(engine.verdict()).unwrap();
    let block = ENDPOINTS
        .split("<!-- readyz-example: checked by tests/repo/docs.rs -->\n```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("docs/endpoints.md has the readyz example block");
    assert_eq!(block, json);
}

#[test]
fn every_reason_label_is_explained() {
    for reason in Reason::HTTP.iter().chain(&Reason::GRPC) {
        assert!(
            README.contains(&format!("`{reason}`")),
            "README does not explain {reason}"
        );
    }
}

/// The not-ready runbook says what each reason that is not a probe's means (a probe's are in the
/// README): its alert's summary lists them. `draining` is on purpose, and the alert leaves it out.
#[test]
fn the_not_ready_runbook_explains_every_other_reason() {
    let runbooks = include_str!("../../docs/runbooks.md");
    let section = runbooks
        .split("\n## SidewatchPodNotReady\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/runbooks.md has a SidewatchPodNotReady section");
    let probes: Vec<Reason> = [&Reason::HTTP[..], &Reason::GRPC, &Reason::TCP].concat();
    for reason in Reason::ALL {
        if probes.contains(reason) || *reason == Reason::Draining {
            continue;
        }
        assert!(
            section.contains(&format!("`{reason}`")),
            "the SidewatchPodNotReady runbook does not explain {reason}"
        );
    }
}

/// Every relative link of README.md, docs/, BENCHMARKS.md and the chart's README names a file
/// that exists, and an anchor (`#…`) a heading of that file, as GitHub makes its ids.
#[test]
fn every_link_in_the_documentation_leads_somewhere() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![
        root.join("README.md"),
        root.join("BENCHMARKS.md"),
        root.join("charts/sidewatch/README.md"),
        root.join("tests/fixtures/pods/README.md"),
    ];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 8, "{docs:?}");
    files.extend(docs);
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let dest = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            if !dest.exists() {
                broken.push(format!("{}: {target}: no such file", file.display()));
                continue;
            }
            if !anchor.is_empty() {
                let heads = std::fs::read_to_string(&dest)
                    .map(|t| anchors(&t))
                    .unwrap_or_default();
                if !heads.iter().any(|h| h == anchor) {
                    broken.push(format!(
                        "{}: {target}: no heading #{anchor}",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} links checked");
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The targets of `[text](target)` outside code blocks and code spans.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Code spans hold examples, not links.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            match after.find(')') {
                Some(end) => {
                    out.push(after[..end].to_owned());
                    rest = &after[end..];
                }
                None => break,
            }
        }
    }
    out
}

/// GitHub's heading ids: lower case, punctuation dropped, spaces as dashes.
fn anchors(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let id: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        out.push(id);
    }
    out
}

/// The alerts the chart ships, as (name, severity, for), from its rule file.
fn shipped_alerts() -> Vec<(String, String, String)> {
    let file: serde_json::Value = serde_saphyr::from_str(include_str!(
        "../../charts/sidewatch/rules/sidewatch.rules.yaml"
    ))
    .unwrap();
    let rules = file["groups"][0]["rules"].as_array().unwrap();
    rules
        .iter()
        .filter_map(|r| {
            let name = r["alert"].as_str()?;
            let field = |v: &serde_json::Value| v.as_str().unwrap_or("0s").to_owned();
            Some((
                name.to_owned(),
                field(&r["labels"]["severity"]),
                field(&r["for"]),
            ))
        })
        .collect()
}

/// docs/metrics.md lists every alert of the chart, with its severity and `for:`, in order.
#[test]
fn the_alert_reference_is_what_the_chart_ships() {
    let metrics = include_str!("../../docs/metrics.md");
    let table = metrics
        .split("<!-- alerts: checked against charts/sidewatch/rules/sidewatch.rules.yaml by tests/repo/docs.rs -->\n")
        .nth(1)
        .expect("docs/metrics.md has the alerts table");
    let documented: Vec<(String, String, String)> = table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let name = cells[1]
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or_default();
            (name.to_owned(), cells[2].to_owned(), cells[3].to_owned())
        })
        .collect();
    let shipped = shipped_alerts();
    assert!(shipped.len() >= 13, "{shipped:?}");
    assert_eq!(documented, shipped);
}

/// docs/runbooks.md has one section per alert, in the rule file's order, headed by its name
/// (the anchor of its runbook_url) and opening with its severity and `for:`.
#[test]
fn every_alert_has_its_runbook() {
    let runbooks = include_str!("../../docs/runbooks.md");
    let sections: Vec<(&str, &str)> = runbooks
        .split("\n## ")
        .skip(1)
        .map(|s| s.split_once('\n').unwrap_or((s, "")))
        .collect();
    let names: Vec<&str> = sections.iter().map(|(h, _)| h.trim()).collect();
    let shipped = shipped_alerts();
    let expected: Vec<&str> = shipped.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, expected);
    for ((name, body), (_, severity, for_)) in sections.iter().zip(&shipped) {
        let wait = if for_ == "0s" {
            "fires at once".to_owned()
        } else {
            format!("for {for_}")
        };
        assert!(
            body.trim_start()
                .starts_with(&format!("*{severity}, {wait}")),
            "{name}: the runbook opens with {:?}, not `*{severity}, {wait}`",
            body.trim_start().lines().next()
        );
    }
    let rules = include_str!("../../charts/sidewatch/rules/sidewatch.rules.yaml");
    let file: serde_json::Value = serde_saphyr::from_str(rules).unwrap();
    for rule in file["groups"][0]["rules"].as_array().unwrap() {
        let Some(name) = rule["alert"].as_str() else {
            continue;
        };
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_default();
        let anchor = url.split_once('#').map(|(_, a)| a).unwrap_or_default();
        assert!(
            anchors(runbooks).iter().any(|a| a == anchor) && anchor == name.to_lowercase(),
            "{name}: runbook_url {url} has no section in docs/runbooks.md"
        );
    }
}
