//! The own-pod ValidatingAdmissionPolicy, as shipped in deploy/policy and the chart: its CEL
//! evaluated (tests/common/policy.rs) against admission requests of the shapes the API server
//! builds, allowed for the sidecar's own pod and denied for any other; the chart's copy the same
//! as deploy's, rendered for every supported Kubernetes (admissionregistration.k8s.io/v1 is GA
//! since 1.30, older than the window: the chart gates it on nothing but its value) and valid for
//! each.

#[allow(unused_imports)]
use crate::common;
use common::policy::{self, pod_token, request, Policy, Verdict};
use common::{chart, kubernetes_validate_for, run_tool, tempdir, KUBERNETES};
use serde_json::{json, Value};

const UID: &str = "0b5e4a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
const STATUS: (&str, &str, &str) = ("", "pods", "status");
const EVENTS: (&str, &str, &str) = ("events.k8s.io", "events", "");

fn pod(name: &str, uid: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": uid},
        "spec": {"containers": [{"name": "app", "image": "example/app"}]},
        "status": {"conditions": [{"type": "sidewatch.io/ready", "status": "True"}]}})
}

/// An events.k8s.io/v1 Event as kube's recorder posts it.
fn event(regarding: Value) -> Value {
    json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "web-1.17f2a9c3d4e5f6a7", "namespace": "shop"},
        "eventTime": "2026-12-01T10:00:00.000000Z", "reportingController": "sidewatch",
        "reportingInstance": "web-1", "action": "Unready", "reason": "Unready", "type": "Warning",
        "note": "out of rotation: connection_refused", "regarding": regarding})
}

fn regarding(kind: &str, name: &str, uid: &str) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "name": name, "namespace": "shop", "uid": uid})
}

fn sidecar() -> Value {
    pod_token("shop", "sidewatch", "web-1", UID)
}

fn denied(verdict: &Verdict, says: &str) {
    match verdict {
        Verdict::Denied(message) => assert!(message.contains(says), "{message}"),
        other => panic!("want denied ({says}), got {other:?}"),
    }
}

#[test]
fn the_sidecar_may_patch_its_own_pods_status_and_post_events_about_it() {
    let p = Policy::shipped();
    let own = pod("web-1", UID);
    let patch = request(&sidecar(), "UPDATE", STATUS, "shop", "web-1", &own);
    assert_eq!(p.admit(&patch), Verdict::Allowed);
    let about_own = event(regarding("Pod", "web-1", UID));
    for op in ["CREATE", "UPDATE"] {
        let r = request(
            &sidecar(),
            op,
            EVENTS,
            "shop",
            "web-1.17f2a9c3d4e5f6a7",
            &about_own,
        );
        assert_eq!(p.admit(&r), Verdict::Allowed, "{op}");
    }
}

#[test]
fn another_pod_another_namespace_or_a_token_without_the_claim_is_denied() {
    let p = Policy::shipped();
    // Another pod of the namespace: what RBAC alone allows.
    let other = pod("web-2", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d");
    let r = request(&sidecar(), "UPDATE", STATUS, "shop", "web-2", &other);
    denied(&p.admit(&r), "its own pod only (web-1), not of web-2");
    // The same name, another pod (a StatefulSet's pod made again): the uid tells them apart.
    let again = pod("web-1", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d");
    let r = request(&sidecar(), "UPDATE", STATUS, "shop", "web-1", &again);
    denied(&p.admit(&r), "its own pod only");
    // Another namespace (a RoleBinding there by mistake).
    let elsewhere = request(
        &sidecar(),
        "UPDATE",
        STATUS,
        "billing",
        "web-1",
        &pod("web-1", UID),
    );
    denied(&p.admit(&elsewhere), "only in its own namespace");
    // A legacy Secret token, or `kubectl create token`: no pod claims at all.
    let mut legacy = sidecar();
    legacy.as_object_mut().unwrap().remove("extra");
    let r = request(
        &legacy,
        "UPDATE",
        STATUS,
        "shop",
        "web-1",
        &pod("web-1", UID),
    );
    denied(&p.admit(&r), "token bound to its pod");
    let mut unbound = sidecar();
    unbound["extra"] = json!({"authentication.kubernetes.io/credential-id": ["JTI=1"]});
    let r = request(
        &unbound,
        "UPDATE",
        STATUS,
        "shop",
        "web-1",
        &pod("web-1", UID),
    );
    denied(&p.admit(&r), "token bound to its pod");
    // Events about anything but its own pod.
    for (what, about) in [
        (
            "another pod",
            regarding("Pod", "web-2", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"),
        ),
        (
            "its name with another uid",
            regarding("Pod", "web-1", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"),
        ),
        ("a Deployment", regarding("Deployment", "web-1", UID)),
        (
            "no uid",
            json!({"kind": "Pod", "name": "web-1", "namespace": "shop"}),
        ),
    ] {
        let r = request(&sidecar(), "CREATE", EVENTS, "shop", "x", &event(about));
        let verdict = p.admit(&r);
        assert!(
            matches!(&verdict, Verdict::Denied(m) if m.contains("Events about its own pod only")),
            "an Event about {what}: {verdict:?}"
        );
    }
    let mut no_regarding = event(Value::Null);
    no_regarding.as_object_mut().unwrap().remove("regarding");
    let r = request(&sidecar(), "CREATE", EVENTS, "shop", "x", &no_regarding);
    denied(&p.admit(&r), "Events about its own pod only");
}

#[test]
fn other_callers_and_other_writes_are_not_the_policys_business() {
    let p = Policy::shipped();
    let other = pod("web-2", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d");
    // A controller's service account (a rollout controller setting its own readiness gate).
    let controller = pod_token(
        "shop",
        "rollouts",
        "rollouts-0",
        "1f2e3d4c-5b6a-4978-8a9b-0c1d2e3f4a5b",
    );
    let r = request(&controller, "UPDATE", STATUS, "shop", "web-2", &other);
    assert_eq!(p.admit(&r), Verdict::NotMatched);
    // A service account whose name only ends like ours.
    let lookalike = pod_token("shop", "not-sidewatch", "web-1", UID);
    let r = request(&lookalike, "UPDATE", STATUS, "shop", "web-2", &other);
    assert_eq!(p.admit(&r), Verdict::NotMatched);
    // The kubelet.
    let kubelet = json!({"username": "system:node:node-a", "groups": ["system:nodes", "system:authenticated"]});
    let r = request(&kubelet, "UPDATE", STATUS, "shop", "web-2", &other);
    assert_eq!(p.admit(&r), Verdict::NotMatched);
    // Writes the Role does not grant are RBAC's to refuse.
    let r = request(
        &sidecar(),
        "UPDATE",
        ("", "pods", ""),
        "shop",
        "web-2",
        &other,
    );
    assert_eq!(p.admit(&r), Verdict::NotMatched);
    let r = request(&sidecar(), "DELETE", STATUS, "shop", "web-2", &other);
    assert_eq!(p.admit(&r), Verdict::NotMatched);
}

/// The chart's policy, rendered for `version`, with `args`.
fn chart_policy(version: &str, args: &[&str]) -> Option<Vec<Value>> {
    let mut all = vec!["--kube-version", version];
    all.extend_from_slice(args);
    let rendered = chart::render(&all)?;
    Some(
        chart::documents(&rendered)
            .into_iter()
            .filter(|d| {
                d["kind"]
                    .as_str()
                    .is_some_and(|k| k.starts_with("ValidatingAdmissionPolicy"))
            })
            .collect(),
    )
}

#[test]
fn the_chart_ships_the_same_policy_for_every_supported_kubernetes_and_a_value_turns_it_off() {
    let Some(chart) = chart_policy(KUBERNETES[0], &[]) else {
        return;
    };
    let text = std::fs::read_to_string(policy::FILE).unwrap();
    let deploy: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    assert_eq!(chart.len(), 2, "a policy and its binding");
    for (c, d) in chart.iter().zip(&deploy) {
        assert_eq!(c["kind"], d["kind"]);
        let mut spec = c["spec"].clone();
        if let Some(name) = spec.get_mut("policyName") {
            assert_eq!(*name, chart[0]["metadata"]["name"]);
            *name = d["spec"]["policyName"].clone();
        }
        assert_eq!(
            spec, d["spec"],
            "the chart's {} differs from deploy's",
            c["kind"]
        );
    }
    for version in &KUBERNETES[1..] {
        assert_eq!(
            chart_policy(version, &[]).unwrap(),
            chart,
            "the policy rendered for {version}"
        );
    }
    let newest = KUBERNETES[KUBERNETES.len() - 1];
    let off = chart_policy(newest, &["--set", "ownPodPolicy.enabled=false"]).unwrap();
    assert_eq!(off.len(), 0);
    // Another service account named in the values is held too.
    let more = chart_policy(
        newest,
        &["--set", "ownPodPolicy.serviceAccounts={sidewatch,web}"],
    )
    .unwrap();
    let p = Policy::of(&more);
    let web = pod_token("shop", "web", "web-1", UID);
    let r = request(
        &web,
        "UPDATE",
        STATUS,
        "shop",
        "web-2",
        &pod("web-2", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"),
    );
    denied(&p.admit(&r), "its own pod only");
    let r = request(&web, "UPDATE", STATUS, "shop", "web-1", &pod("web-1", UID));
    assert_eq!(p.admit(&r), Verdict::Allowed);
}

#[test]
fn the_policy_validates_for_every_supported_kubernetes() {
    let Some(rendered) = chart::render(&["--kube-version", KUBERNETES[0]]) else {
        return;
    };
    let Some(deploy) = run_tool("kubectl", &["kustomize", "deploy/policy"]) else {
        return;
    };
    assert!(deploy.status.success(), "{}", common::output_text(&deploy));
    let dir = tempdir::Dir::new();
    let chart_file = dir.path().join("chart.yaml");
    std::fs::write(&chart_file, &rendered).unwrap();
    let deploy_file = dir.path().join("deploy.yaml");
    std::fs::write(&deploy_file, &deploy.stdout).unwrap();
    let Some(reports) = kubernetes_validate_for(&[&deploy_file, &chart_file], &KUBERNETES) else {
        return;
    };
    for (version, passed, report) in reports {
        assert!(passed, "{version}: {report}");
        for file in [&deploy_file, &chart_file] {
            let checked = format!(
                "{} passed for resource validatingadmissionpolicybinding/",
                file.display()
            );
            assert!(
                report.contains(&checked),
                "{} {version}: the policy was not checked: {report}",
                file.display()
            );
        }
    }
}
