//! The Helm chart, with real helm: lint, render with the defaults and with every option on, check
//! the objects against the schemas of every supported Kubernetes (`common::KUBERNETES`; the alert
//! rules: tests/metrics/alerts.rs), refuse an older cluster, and the chart, deploy/ and the Dockerfile with
//! checkov (the checks skipped are justified in the docs/hardening.md, "Security scan").

#[allow(unused_imports)]
use crate::common;
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
    for kind in CRDS.iter().chain(&[
        "ConfigMap",
        "Role",
        "RoleBinding",
        "DaemonSet",
        "ClusterRole",
        "ClusterRoleBinding",
    ]) {
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
    let readme = include_str!("../../README.md");
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

/// The node agent: off by default; on, a DaemonSet of the sidecar's image on every node's network
/// with the node's cgroup tree read-only, as strict as the webhook otherwise, and an account that
/// may do exactly two things. The webhook is told, so that `auto` picks the agent.
#[test]
fn the_node_agent_runs_on_every_node_with_two_permissions_and_no_more() {
    let Some(default) = chart::render(&[]) else {
        return;
    };
    assert!(!kinds(&default).iter().any(|k| k == "DaemonSet"));
    assert!(!default.contains("--node-agent"));
    assert!(default.contains("--share-process-namespace=true"));
    let Some(yaml) = chart::render(&[
        "--set",
        "node.enabled=true",
        "--set",
        "node.port=9466",
        "--set",
        "node.interval=1s",
        "--set",
        "node.maxStreams=120",
        "--set",
        "webhook.shareProcessNamespace=false",
    ]) else {
        return;
    };
    let docs = chart::documents(&yaml);
    let one = |kind: &str| -> &Value {
        let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "{kind}: {found:?}");
        found[0]
    };
    let webhook = one("Deployment");
    let webhook_args = &webhook["spec"]["template"]["spec"]["containers"][0]["args"];
    let webhook_args: Vec<&str> = webhook_args
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(webhook_args.contains(&"--node-agent"), "{webhook_args:?}");
    assert!(
        webhook_args.contains(&"--shutdown-delay=5s"),
        "{webhook_args:?}"
    );
    assert!(
        webhook_args.contains(&"--share-process-namespace=false"),
        "{webhook_args:?}"
    );

    let ds = one("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    assert!(pod["priorityClassName"].is_null());
    assert!(pod["hostPID"].is_null() && pod["shareProcessNamespace"].is_null());
    let c = &pod["containers"][0];
    assert_eq!(
        c["args"],
        serde_json::json!([
            "node",
            "--listen=[::]:9466",
            "--cgroup-root=/host/sys/fs/cgroup",
            "--interval=1s",
            "--max-streams=120"
        ])
    );
    assert_eq!(
        c["env"],
        serde_json::json!([{"name": "NODE_NAME",
            "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}])
    );
    assert_eq!(c["ports"][0]["containerPort"], 9466);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"], serde_json::json!({"drop": ["ALL"]}));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(sc["privileged"].is_null());
    assert_eq!(
        c["resources"],
        serde_json::json!({"requests": {"cpu": "50m", "memory": "32Mi"},
            "limits": {"memory": "64Mi"}})
    );
    assert_eq!(
        c["volumeMounts"],
        serde_json::json!([{"name": "cgroup", "mountPath": "/host/sys/fs/cgroup", "readOnly": true}])
    );
    assert_eq!(
        pod["volumes"],
        serde_json::json!([{"name": "cgroup",
            "hostPath": {"path": "/sys/fs/cgroup", "type": "Directory"}}])
    );
    // Its own account, bound to a role of exactly two rules.
    let account = pod["serviceAccountName"].as_str().unwrap();
    assert_ne!(
        account,
        webhook["spec"]["template"]["spec"]["serviceAccountName"]
    );
    assert!(docs
        .iter()
        .any(|d| d["kind"] == "ServiceAccount" && d["metadata"]["name"] == account));
    assert_eq!(
        one("ClusterRole")["rules"],
        serde_json::json!([
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
        ])
    );
    let binding = one("ClusterRoleBinding");
    assert_eq!(
        binding["roleRef"]["name"],
        one("ClusterRole")["metadata"]["name"]
    );
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": account, "namespace": "sidewatch"}])
    );
    // The webhook's Service and PDB select the webhook's pods alone, never the agents.
    let agent_labels = ds["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    for kind in ["Service", "PodDisruptionBudget"] {
        let d = one(kind);
        let selector = d["spec"]["selector"]["matchLabels"]
            .as_object()
            .or(d["spec"]["selector"].as_object())
            .unwrap();
        assert!(
            selector.iter().any(|(k, v)| agent_labels.get(k) != Some(v)),
            "{kind} selects the node agents: {selector:?}"
        );
    }
    // A priority class when asked; a value that is not a duration is refused by the schema.
    let Some(yaml) = chart::render(&[
        "--set",
        "node.enabled=true",
        "--set",
        "node.priorityClassName=system-node-critical",
    ]) else {
        return;
    };
    assert!(yaml.contains("priorityClassName: system-node-critical"));
    let Some(out) = run_tool(
        "helm",
        &[
            "template",
            "sw",
            "charts/sidewatch",
            "--set",
            "node.interval=fast",
        ],
    ) else {
        return;
    };
    assert!(!out.status.success(), "{}", output_text(&out));
}

/// The webhook's stop, as the chart sets it: its readiness probe takes it out of the endpoints
/// within the shutdown delay, and the grace period covers the delay and the webhook's own bound
/// on answering what is in flight (21 s, `src/webhook/stop.rs`).
#[test]
fn the_webhooks_grace_period_covers_its_shutdown_delay_and_its_stop() {
    for (set, delay) in [(None, 5), (Some("webhook.shutdownDelaySeconds=12"), 12)] {
        let args: Vec<&str> = set.map(|s| vec!["--set", s]).unwrap_or_default();
        let Some(yaml) = chart::render(&args) else {
            return;
        };
        let docs = chart::documents(&yaml);
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
        assert_eq!(grace, delay + 25);
        assert!(
            grace > delay + 21,
            "the grace period ends before the webhook's stop"
        );
        let c = &pod["containers"][0];
        let flag = format!("--shutdown-delay={delay}s");
        assert!(
            c["args"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == flag.as_str()),
            "{}",
            c["args"]
        );
        let probe = &c["readinessProbe"];
        assert_eq!(probe["httpGet"]["path"], "/readyz");
        let unready_within =
            probe["periodSeconds"].as_i64().unwrap() * probe["failureThreshold"].as_i64().unwrap();
        assert!(
            unready_within < delay,
            "unready after {unready_within} s, the delay is {delay} s"
        );
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    }
}
