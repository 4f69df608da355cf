//! The Helm chart, with real helm: lint, render with the defaults and with every option on, check
//! the objects against the schemas of every supported Kubernetes (`common::KUBERNETES`; the alert
//! rules: tests/alerts.rs), refuse an older cluster, and the chart, deploy/ and the Dockerfile with
//! checkov (the checks skipped are justified in the docs/hardening.md, "Security scan").

mod common;

use common::{
    chart, kube_minor, kubernetes_validate_for, output_text, run_tool, tempdir, KUBERNETES,
};
use serde_json::Value;

/// Checks skipped on purpose; docs/hardening.md "Security scan" says why for each.
const SKIPPED: &str =
    "CKV_K8S_21,CKV_K8S_43,CKV_K8S_15,CKV2_K8S_6,CKV_K8S_11,CKV_K8S_38,CKV_DOCKER_2";
const CRDS: [&str; 5] = [
    "Certificate",
    "Issuer",
    "PodMonitor",
    "PrometheusRule",
    "ServiceMonitor",
];

fn kinds(yaml: &str) -> Vec<String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).unwrap();
    docs.iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_chart_lints_strictly_and_rejects_unknown_values() {
    for extra in [vec![], vec!["-f", chart::ALL_ON]] {
        let mut args = vec!["lint", "--strict", "charts/sidewatch"];
        args.extend(extra);
        let Some(out) = run_tool("helm", &args) else {
            return;
        };
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let Some(out) = run_tool(
        "helm",
        &[
            "lint",
            "--strict",
            "charts/sidewatch",
            "--set",
            "webhok.replicas=2",
        ],
    ) else {
        return;
    };
    assert!(
        !out.status.success(),
        "a misspelt value must fail: {}",
        output_text(&out)
    );
    assert!(
        output_text(&out).contains("webhok"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn every_option_renders_and_validates_for_every_supported_kubernetes() {
    let Some(default) = chart::render(&[]) else {
        return;
    };
    let Some(all) = chart::render(&["-f", chart::ALL_ON]) else {
        return;
    };
    let default_kinds = kinds(&default);
    for kind in [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
        "Secret",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        assert!(
            default_kinds.iter().any(|k| k == kind),
            "{kind} missing by default"
        );
    }
    let all_kinds = kinds(&all);
    for kind in CRDS.iter().chain(&["ConfigMap", "Role", "RoleBinding"]) {
        assert!(
            all_kinds.iter().any(|k| k == kind),
            "{kind} missing with every option on"
        );
    }
    // Rendered for each version, as helm does for the cluster it installs into, and both
    // renderings of a version validated in one run of the tool.
    let dir = tempdir::Dir::new();
    for version in KUBERNETES {
        let mut rendered = Vec::new();
        for (name, args) in [("default", vec![]), ("all", vec!["-f", chart::ALL_ON])] {
            let mut args = args;
            args.extend(["--kube-version", version]);
            let Some(yaml) = chart::render(&args) else {
                return;
            };
            let file = dir.path().join(format!("{name}-{version}.yaml"));
            std::fs::write(&file, &yaml).unwrap();
            rendered.push((name, yaml, file));
        }
        let files: Vec<&std::path::Path> = rendered.iter().map(|(_, _, f)| f.as_path()).collect();
        let Some(reports) = kubernetes_validate_for(&files, &[version]) else {
            return;
        };
        let (_, passed, report) = &reports[0];
        assert!(passed, "{version}: {report}");
        for (name, yaml, file) in &rendered {
            let builtin = kinds(yaml)
                .iter()
                .filter(|k| !CRDS.contains(&k.as_str()))
                .count();
            let checked = format!("{} passed for resource ", file.display());
            assert_eq!(
                report.matches(&checked).count(),
                builtin,
                "{name} {version}: {report}"
            );
        }
    }
}

/// The window is stated in one place for the tests (`common::KUBERNETES`); the chart's
/// `kubeVersion` and the README follow it, and helm refuses the version before it.
#[test]
fn the_chart_refuses_a_kubernetes_older_than_the_supported_window() {
    let (major, first) = kube_minor(KUBERNETES[0]);
    let (_, last) = kube_minor(KUBERNETES[KUBERNETES.len() - 1]);
    let meta: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/sidewatch/Chart.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(meta["kubeVersion"], format!(">={}-0", KUBERNETES[0]));
    let readme = include_str!("../README.md");
    let window = format!("Kubernetes {major}.{first}–{major}.{last}");
    assert!(readme.contains(&window), "the README does not say {window}");
    let older = format!("{major}.{}.9", first - 1);
    let Some(out) = run_tool(
        "helm",
        &[
            "template",
            "sw",
            "charts/sidewatch",
            "--kube-version",
            &older,
        ],
    ) else {
        return;
    };
    assert!(!out.status.success(), "rendered for {older}");
    assert!(
        output_text(&out).contains("chart requires kubeVersion"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn checkov_finds_nothing_beyond_the_justified_skips() {
    let Some(default) = chart::render(&[]) else {
        return;
    };
    let Some(all) = chart::render(&["-f", chart::ALL_ON]) else {
        return;
    };
    let Some(deploy) = run_tool("kubectl", &["kustomize", "deploy"]) else {
        return;
    };
    let dir = tempdir::Dir::new();
    let mut files = Vec::new();
    for (name, yaml) in [
        ("default", default),
        ("all", all),
        ("deploy", String::from_utf8(deploy.stdout).unwrap()),
    ] {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        files.push(file);
    }
    let mut args = vec![
        "--compact",
        "--quiet",
        "--skip-download",
        "--skip-check",
        SKIPPED,
        "-f",
        "Dockerfile",
    ];
    for f in &files {
        args.extend(["-f", f.to_str().unwrap()]);
    }
    let Some(out) = run_tool("checkov", &args) else {
        return;
    };
    let report = output_text(&out);
    assert!(out.status.success(), "{report}");
    assert!(!report.contains("FAILED for resource"), "{report}");
    assert!(
        report.contains("Passed checks"),
        "checkov ran no check: {report}"
    );
}
