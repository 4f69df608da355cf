use json_patch::PatchOperation;
use serde_json::{json, Value};

use super::*;

fn pod(annotations: Value, app: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "annotations": annotations},
        "spec": {"containers": [app]}})
}

fn web() -> Value {
    json!({"name": "web", "image": "example/web",
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
        "resources": {"limits": {"memory": "256Mi"}}})
}

fn opted_in() -> Value {
    json!({"sidewatch.io/inject": "true"})
}

/// Applies the patch as the API server would; also returns the warnings.
/// As the webhook does: the injector sees the view of the pod, the patch applies to the pod.
fn mutated(p: &Value, scope: Scope, token: &str) -> Outcome {
    let view = view::of(&p.to_string()).unwrap();
    mutate(&view, &Settings::default(), scope, token)
}

fn injected(p: &Value) -> (Value, Vec<String>) {
    match mutated(p, Scope::Annotated, "t0ken") {
        Outcome::Patch { patch, warnings } => {
            assert!(
                patch
                    .0
                    .iter()
                    .all(|op| matches!(op, PatchOperation::Add(_))),
                "{patch:?}"
            );
            let mut doc = p.clone();
            json_patch::patch(&mut doc, &patch).unwrap();
            (doc, warnings)
        }
        other => panic!("no patch: {other:?}"),
    }
}

/// The refusal's message, once its kind is `kind`.
fn refused(p: &Value, kind: RefusalKind) -> String {
    match mutated(p, Scope::Annotated, "t0ken") {
        Outcome::Refused(why) if why.kind == kind => why.message,
        other => panic!("not refused as {kind:?}: {other:?}"),
    }
}

fn env<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)?["value"].as_str()
}

#[test]
fn an_annotated_pod_gets_a_native_sidecar_first_and_a_drain_hook() {
    let mut p = pod(
        json!({"sidewatch.io/inject": "true", "sidewatch.io/readiness-gate": "true"}),
        web(),
    );
    p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "x", "x-future": {"a": 1}}]);
    let (out, warnings) = injected(&p);
    // The spec does not say the app's user and group: memory from the app container's
    // processes, the process namespace shared (memory_tests.rs has every other choice).
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(out["spec"]["shareProcessNamespace"], true);
    let init = out["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(init[0]["name"], "sidewatch");
    assert_eq!(init[0]["restartPolicy"], "Always");
    // The init container that was there is whole, one place down.
    assert_eq!(init[1], p["spec"]["initContainers"][0]);
    let probes: Value = serde_json::from_str(env(&init[0], "SIDEWATCH_PROBES").unwrap()).unwrap();
    assert_eq!(probes[0]["http"]["url"], "http://${POD_IP}:8080/healthz");
    assert_eq!(env(&init[0], "SIDEWATCH_DRAIN_MAX"), Some("25s"));
    assert_eq!(env(&init[0], "SIDEWATCH_DRAIN_PORT"), Some("8080"));
    assert_eq!(
        env(&init[0], "SIDEWATCH_KUBERNETES_APP_CONTAINER"),
        Some("web")
    );
    assert_eq!(
        env(&init[0], "SIDEWATCH_INJECTED_DRAIN_TOKEN"),
        Some("t0ken")
    );
    let hook = &out["spec"]["containers"][0]["lifecycle"]["preStop"]["httpGet"];
    assert_eq!(
        (&hook["path"], &hook["port"]),
        (&json!("/drain"), &json!(9102))
    );
    assert_eq!(hook["httpHeaders"][0]["value"], "t0ken");
    assert_eq!(out["spec"]["readinessGates"][0]["conditionType"], GATE);
    assert_eq!(out["metadata"]["annotations"][INJECTED], "true");
    assert_eq!(out["metadata"]["labels"][INJECTED], "true");
    let note = out["metadata"]["annotations"][INJECTION].as_str().unwrap();
    assert!(
        note.contains("readinessProbe.httpGet") || note.contains("readinessProbe"),
        "{note}"
    );
}

#[test]
fn injection_is_opt_in_and_a_second_pass_changes_nothing() {
    let (once, _) = injected(&pod(opted_in(), web()));
    let again = Outcome::Untouched(Skip::Injected);
    assert_eq!(mutated(&once, Scope::Annotated, "x"), again);
    assert_eq!(mutated(&once, Scope::Namespace, "x"), again);
    let plain = pod(json!({}), web());
    let not_asked = Outcome::Untouched(Skip::NotOptedIn);
    assert_eq!(mutated(&plain, Scope::Annotated, "x"), not_asked);
    let out = pod(json!({"sidewatch.io/inject": "false"}), web());
    let opted_out = Outcome::Untouched(Skip::OptedOut);
    assert_eq!(mutated(&out, Scope::Namespace, "x"), opted_out);
    assert!(matches!(
        mutated(&plain, Scope::Namespace, "x"),
        Outcome::Patch { .. }
    ));
}

#[test]
fn an_existing_pre_stop_hook_is_kept_and_an_empty_lifecycle_filled() {
    let mut app = web();
    app["lifecycle"] = json!({"preStop": {"exec": {"command": ["sleep", "10"]}}});
    let (out, warnings) = injected(&pod(opted_in(), app.clone()));
    assert_eq!(out["spec"]["containers"][0]["lifecycle"], app["lifecycle"]);
    assert!(
        warnings.iter().any(|w| w.contains("preStop")),
        "{warnings:?}"
    );
    app["lifecycle"] = json!({});
    let (out, _) = injected(&pod(opted_in(), app));
    assert_eq!(
        out["spec"]["containers"][0]["lifecycle"]["preStop"]["httpGet"]["path"],
        "/drain"
    );
}

#[test]
fn the_admin_port_moves_off_a_port_the_pod_uses_or_probes() {
    let mut app = web();
    app["ports"] = json!([{"containerPort": 9102}, {"name": "http", "containerPort": 8080}]);
    app["livenessProbe"] = json!({"httpGet": {"port": 9103}});
    let (out, warnings) = injected(&pod(opted_in(), app));
    let sidecar = &out["spec"]["initContainers"][0];
    assert_eq!(sidecar["ports"][0]["containerPort"], 9104);
    assert_eq!(env(sidecar, "SIDEWATCH_LISTEN"), Some("[::]:9104"));
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["port"], 9104);
    assert_eq!(
        out["spec"]["containers"][0]["lifecycle"]["preStop"]["httpGet"]["port"],
        9104
    );
    assert!(warnings.iter().any(|w| w.contains("9104")), "{warnings:?}");
    let mut annotated = opted_in();
    annotated["sidewatch.io/admin-port"] = "8080".into();
    assert!(refused(&pod(annotated, web()), RefusalKind::AdminPort).contains("8080"));
}

#[test]
fn dead_ends_are_refused_or_degraded_with_a_reason() {
    let mut p = pod(opted_in(), web());
    p["spec"]["hostNetwork"] = true.into();
    assert!(refused(&p, RefusalKind::DeadEnd).contains("hostNetwork"));
    p["metadata"]["annotations"]["sidewatch.io/host-network"] = "true".into();
    injected(&p);

    let mut p = pod(
        json!({"sidewatch.io/inject": "true", "sidewatch.io/readiness-gate": "true"}),
        web(),
    );
    p["spec"]["automountServiceAccountToken"] = false.into();
    let (out, warnings) = injected(&p);
    assert!(out["spec"]["readinessGates"].is_null());
    assert!(warnings
        .iter()
        .any(|w| w.contains("automountServiceAccountToken")));
    assert_eq!(
        env(
            &out["spec"]["initContainers"][0],
            "SIDEWATCH_KUBERNETES_ENABLED"
        ),
        Some("false")
    );

    let mut p = pod(
        json!({"sidewatch.io/inject": "true", "sidewatch.io/mode": "plain"}),
        web(),
    );
    p["spec"]["restartPolicy"] = "Never".into();
    assert!(refused(&p, RefusalKind::DeadEnd).contains("restartPolicy"));
    p["spec"]["restartPolicy"] = "Always".into();
    let (out, _) = injected(&p);
    assert_eq!(out["spec"]["containers"][1]["name"], "sidewatch");
    assert!(out["spec"]["containers"][1]["restartPolicy"].is_null());

    let mut p = pod(opted_in(), web());
    p["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "sidewatch", "image": "mine"}));
    assert!(refused(&p, RefusalKind::Shape).contains("there already"));

    let mut bad = opted_in();
    bad["sidewatch.io/app-container"] = "nope".into();
    assert!(refused(&pod(bad, web()), RefusalKind::AppContainer).contains("nope"));
}

/// The install-wide memory source (`--memory-source`, the chart's `webhook.memorySource`) for
/// the pods that do not annotate one; the annotation still wins.
#[test]
fn the_install_chooses_the_memory_source_of_pods_that_do_not() {
    let with = |memory: Memory, p: &Value| {
        let view = view::of(&p.to_string()).unwrap();
        let settings = Settings {
            memory,
            ..Settings::default()
        };
        match mutate(&view, &settings, Scope::Annotated, "t") {
            Outcome::Patch { patch, warnings } => {
                let mut doc = p.clone();
                json_patch::patch(&mut doc, &patch).unwrap();
                (doc, warnings)
            }
            other => panic!("no patch: {other:?}"),
        }
    };
    let plain = pod(opted_in(), web());
    let (out, warnings) = with(Memory::Cgroup, &plain);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        out["spec"]["volumes"][0]["hostPath"]["path"],
        "/sys/fs/cgroup"
    );
    let sidecar = &out["spec"]["initContainers"][0];
    assert_eq!(env(sidecar, "SIDEWATCH_MEMORY_SOURCE"), Some("cgroup"));
    // proc finds the app container's processes by its container ID; none is off, and said.
    let (out, warnings) = with(Memory::Proc, &plain);
    assert!(warnings.is_empty(), "{warnings:?}");
    let sidecar = &out["spec"]["initContainers"][0];
    assert_eq!(env(sidecar, "SIDEWATCH_MEMORY_SOURCE"), Some("proc"));
    assert_eq!(env(sidecar, "SIDEWATCH_PROCESS_MATCH"), None);
    let (out, warnings) = with(Memory::None, &plain);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("--memory-source is none"),
        "{warnings:?}"
    );
    assert!(warnings[0].contains("memory signals off for this pod"));
    let sidecar = &out["spec"]["initContainers"][0];
    assert_eq!(env(sidecar, "SIDEWATCH_MEMORY_SOURCE"), Some("none"));
    let mut annotated = opted_in();
    annotated["sidewatch.io/process-match"] = "java".into();
    let (out, _) = with(Memory::Proc, &pod(annotated.clone(), web()));
    let sidecar = &out["spec"]["initContainers"][0];
    assert_eq!(env(sidecar, "SIDEWATCH_MEMORY_SOURCE"), Some("proc"));
    annotated["sidewatch.io/memory"] = "none".into();
    let (out, warnings) = with(Memory::Cgroup, &pod(annotated, web()));
    assert!(warnings.is_empty(), "the pod asked for none: {warnings:?}");
    assert!(out["spec"]["volumes"].is_null());
}

#[test]
fn memory_modes_bring_what_they_need_and_respect_names() {
    let mut p = pod(
        json!({"sidewatch.io/inject": "true", "sidewatch.io/memory": "cgroup"}),
        web(),
    );
    p["spec"]["volumes"] = json!([{"name": "sidewatch-cgroup", "emptyDir": {}}]);
    let (out, warnings) = injected(&p);
    let volumes = out["spec"]["volumes"].as_array().unwrap();
    assert_eq!(volumes[0], p["spec"]["volumes"][0]);
    assert_eq!(volumes[1]["name"], "sidewatch-cgroup-2");
    assert_eq!(volumes[1]["hostPath"]["path"], "/sys/fs/cgroup");
    let sidecar = &out["spec"]["initContainers"][0];
    assert_eq!(sidecar["volumeMounts"][0]["name"], "sidewatch-cgroup-2");
    assert_eq!(sidecar["volumeMounts"][0]["readOnly"], true);
    assert!(warnings.iter().any(|w| w.contains("sidewatch-cgroup-2")));

    let (out, _) = injected(&pod(
        json!({"sidewatch.io/inject": "true", "sidewatch.io/process-match": "java"}),
        web(),
    ));
    let sidecar = &out["spec"]["initContainers"][0];
    assert_eq!(env(sidecar, "SIDEWATCH_MEMORY_SOURCE"), Some("proc"));
    assert_eq!(env(sidecar, "SIDEWATCH_PROCESS_MATCH"), Some("java"));
    assert_eq!(out["spec"]["shareProcessNamespace"], true);
    let limit = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SIDEWATCH_MEMORY_LIMIT")
        .unwrap();
    assert_eq!(
        limit["valueFrom"]["resourceFieldRef"],
        json!({"containerName": "web", "resource": "limits.memory"})
    );

    let mut p = pod(
        json!({"sidewatch.io/inject": "true", "sidewatch.io/process-match": "java"}),
        web(),
    );
    p["spec"]["shareProcessNamespace"] = false.into();
    assert!(refused(&p, RefusalKind::Memory).contains("shareProcessNamespace"));
}

#[test]
fn a_pod_with_nothing_to_watch_is_explained() {
    let app = json!({"name": "batch", "image": "example/batch"});
    assert!(refused(&pod(opted_in(), app), RefusalKind::Target).contains("sidewatch.io/target"));
    let app =
        json!({"name": "dns", "image": "x", "ports": [{"containerPort": 53, "protocol": "UDP"}]});
    assert!(refused(&pod(opted_in(), app), RefusalKind::Target).contains("no TCP containerPort"));
    let mut annotated = opted_in();
    annotated["sidewatch.io/target"] = "tcp://${POD_IP}:53".into();
    let app =
        json!({"name": "dns", "image": "x", "ports": [{"containerPort": 53, "protocol": "UDP"}]});
    let (out, _) = injected(&pod(annotated, app));
    assert_eq!(
        env(&out["spec"]["initContainers"][0], "SIDEWATCH_TARGET"),
        Some("tcp://${POD_IP}:53")
    );
}

#[test]
fn a_label_of_the_pod_is_never_rewritten_and_a_clash_is_said() {
    let mut p = pod(opted_in(), web());
    p["metadata"]["labels"] = json!({"app": "web"});
    let (out, warnings) = injected(&p);
    assert_eq!(
        out["metadata"]["labels"],
        json!({"app": "web", INJECTED: "true"})
    );
    assert!(
        warnings.iter().all(|w| !w.contains("PodMonitor")),
        "{warnings:?}"
    );

    p["metadata"]["labels"][INJECTED] = json!("no");
    let (out, warnings) = injected(&p);
    assert_eq!(out["metadata"]["labels"][INJECTED], "no");
    assert!(
        warnings.iter().any(|w| w.contains("PodMonitor")),
        "{warnings:?}"
    );
}

#[test]
fn the_overload_annotation_reaches_the_sidecar() {
    let (out, _) = injected(&pod(
        json!({"sidewatch.io/inject": "true", "sidewatch.io/overload-signal": "true"}),
        web(),
    ));
    let sidecar = &out["spec"]["initContainers"][0];
    assert_eq!(env(sidecar, "SIDEWATCH_OVERLOAD_SIGNAL"), Some("true"));
    let (out, _) = injected(&pod(opted_in(), web()));
    let sidecar = &out["spec"]["initContainers"][0];
    assert_eq!(env(sidecar, "SIDEWATCH_OVERLOAD_SIGNAL"), None);
}

#[test]
fn the_drain_readiness_annotation_reaches_the_sidecar() {
    let (out, _) = injected(&pod(
        json!({"sidewatch.io/inject": "true", "sidewatch.io/drain-readiness": "serve_while_terminating"}),
        web(),
    ));
    let sidecar = &out["spec"]["initContainers"][0];
    assert_eq!(
        env(sidecar, "SIDEWATCH_DRAIN_READINESS"),
        Some("serve_while_terminating")
    );
    let (out, _) = injected(&pod(opted_in(), web()));
    assert_eq!(
        env(
            &out["spec"]["initContainers"][0],
            "SIDEWATCH_DRAIN_READINESS"
        ),
        None
    );
}

#[path = "agent_port_tests.rs"]
mod agent_port;
