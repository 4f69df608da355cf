//! The memory step alone, for each choice of the install: what `auto` becomes, what the pod gets
//! for it, and what a pod left without memory signals is told.

use serde_json::{json, Value};

use super::super::annotations::{Memory, Options};
use super::super::patch::Edits;
use super::super::sidecar::{MemoryPlan, Sidecar};
use super::super::Settings;
use super::memory;

struct Chosen {
    plan: MemoryPlan,
    /// The pod with the step's edits applied.
    pod: Value,
    notes: Vec<String>,
    warnings: Vec<String>,
}

fn choose(settings: &Settings, annotations: Value, spec: Value) -> Chosen {
    let pod = json!({"metadata": {"annotations": annotations}, "spec": spec});
    let options = Options::parse(pod["metadata"]["annotations"].as_object()).unwrap();
    let (mut notes, mut warnings) = (Vec::new(), Vec::new());
    let mut edits = Edits::new(&pod);
    let app = &pod["spec"]["containers"][0];
    let plan = memory(
        &options,
        settings,
        &pod["spec"],
        app,
        &mut edits,
        &mut notes,
        &mut warnings,
    )
    .unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &edits.into_patch()).unwrap();
    Chosen {
        plan,
        pod: out,
        notes,
        warnings,
    }
}

fn spec(app: Value) -> Value {
    json!({"containers": [app]})
}

fn web() -> Value {
    json!({"name": "web", "image": "example/web", "resources": {"limits": {"memory": "256Mi"}}})
}

fn with_ids() -> Value {
    let mut app = web();
    app["securityContext"] = json!({"runAsUser": 1000, "runAsGroup": 1000});
    app
}

fn sidecar(settings: &Settings, plan: MemoryPlan) -> Value {
    Sidecar {
        settings,
        native: true,
        app: "web",
        target: ("SIDEWATCH_TARGET", "tcp://${POD_IP}:8080".into()),
        drain_port: Some(8080),
        admin_port: 9102,
        admin_port_named: true,
        agent_port: None,
        grace: 30,
        token: "t",
        kubernetes: true,
        memory_unready_above: None,
        drain_readiness: None,
        overload_signal: false,
        memory: plan,
        app_memory_limit: true,
    }
    .container()
}

fn env<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)
}

fn agent() -> Settings {
    Settings {
        node_agent: true,
        ..Settings::default()
    }
}

fn refused_sharing() -> Settings {
    Settings {
        share_process_namespace: false,
        ..Settings::default()
    }
}

#[test]
fn with_a_node_agent_every_pod_reads_it_with_a_token_for_its_audience_alone() {
    let settings = agent();
    for app in [web(), with_ids()] {
        let c = choose(&settings, json!({}), spec(app));
        assert_eq!(c.plan.source, Memory::Node);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(
            c.pod["spec"]["volumes"],
            json!([{"name": "sidewatch-node-token", "projected": {"sources": [
                {"serviceAccountToken": {"audience": "sidewatch.io/node",
                    "expirationSeconds": 600, "path": "token"}}]}}])
        );
        // Nothing of the pod's security changes: no sharing, no hostPath, the sidecar's own user.
        assert!(c.pod["spec"]["shareProcessNamespace"].is_null());
        let container = sidecar(&settings, c.plan);
        assert_eq!(
            container["volumeMounts"],
            json!([{"name": "sidewatch-node-token",
                "mountPath": "/var/run/secrets/sidewatch.io/node", "readOnly": true}])
        );
        assert_eq!(
            env(&container, "SIDEWATCH_MEMORY_SOURCE").unwrap()["value"],
            "node"
        );
        assert_eq!(
            env(&container, "HOST_IP").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
            "status.hostIP"
        );
        assert!(env(&container, "SIDEWATCH_PROCESS_MATCH").is_none());
        assert!(env(&container, "SIDEWATCH_MEMORY_LIMIT").is_none());
        assert_eq!(container["securityContext"]["runAsUser"], 65532);
        assert!(container["securityContext"]["runAsGroup"].is_null());
    }
    // A pod that refuses sharing loses nothing with the agent, and is not changed.
    let mut s = spec(web());
    s["shareProcessNamespace"] = false.into();
    let c = choose(&settings, json!({}), s);
    assert_eq!(c.plan.source, Memory::Node);
    assert_eq!(c.pod["spec"]["shareProcessNamespace"], false);
    // The pod's own choice still wins.
    let c = choose(
        &settings,
        json!({"sidewatch.io/memory": "app-root"}),
        spec(with_ids()),
    );
    assert_eq!(c.plan.source, Memory::AppRoot);
}

#[test]
fn the_node_token_volume_takes_a_free_name() {
    let mut s = spec(web());
    s["volumes"] = json!([{"name": "sidewatch-node-token", "emptyDir": {}}]);
    let c = choose(
        &Settings::default(),
        json!({"sidewatch.io/memory": "node"}),
        s,
    );
    let volumes = c.pod["spec"]["volumes"].as_array().unwrap();
    assert_eq!(volumes[0]["emptyDir"], json!({}));
    assert_eq!(volumes[1]["name"], "sidewatch-node-token-2");
    assert_eq!(
        c.plan.mount.as_ref().unwrap()["name"],
        "sidewatch-node-token-2"
    );
    assert!(c
        .warnings
        .iter()
        .any(|w| w.contains("sidewatch-node-token-2")));
    // Asked for by the pod while this install says no agent runs: told it would be blind.
    assert!(
        c.warnings.iter().any(|w| w.contains("blind")),
        "{:?}",
        c.warnings
    );
    let c = choose(
        &agent(),
        json!({"sidewatch.io/memory": "node"}),
        spec(web()),
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn by_default_a_pod_of_unknown_user_gets_its_containers_processes() {
    let c = choose(&Settings::default(), json!({}), spec(web()));
    assert_eq!(c.plan.source, Memory::Proc);
    assert!(c.plan.pattern.is_none());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert!(
        c.notes.iter().any(|n| n.contains("container ID")),
        "{:?}",
        c.notes
    );
    assert_eq!(c.pod["spec"]["shareProcessNamespace"], true);
    let container = sidecar(&Settings::default(), c.plan);
    assert_eq!(
        env(&container, "SIDEWATCH_MEMORY_SOURCE").unwrap()["value"],
        "proc"
    );
    assert!(env(&container, "SIDEWATCH_PROCESS_MATCH").is_none());
    assert_eq!(
        env(&container, "SIDEWATCH_MEMORY_LIMIT").unwrap()["valueFrom"]["resourceFieldRef"],
        json!({"containerName": "web", "resource": "limits.memory"})
    );
    assert!(env(&container, "HOST_IP").is_none());
    // Root apps too: the sidecar reads world-readable /proc files as its own user.
    let mut root = web();
    root["securityContext"] = json!({"runAsUser": 0, "runAsGroup": 0});
    assert_eq!(
        choose(&Settings::default(), json!({}), spec(root))
            .plan
            .source,
        Memory::Proc
    );
    // An install-wide proc needs no process-match any more.
    let proc = Settings {
        memory: Memory::Proc,
        ..Settings::default()
    };
    let c = choose(&proc, json!({}), spec(with_ids()));
    assert_eq!(c.plan.source, Memory::Proc);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn a_pod_that_refuses_sharing_is_never_changed_and_is_told_what_would_help() {
    let mut s = spec(with_ids());
    s["shareProcessNamespace"] = false.into();
    let c = choose(&Settings::default(), json!({}), s);
    assert_eq!(c.plan.source, Memory::None);
    assert_eq!(c.pod["spec"]["shareProcessNamespace"], false);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let w = &c.warnings[0];
    for what in [
        "memory signals off for this pod",
        "the pod sets shareProcessNamespace: false",
        "drop shareProcessNamespace: false",
        "sidewatch.io/memory: cgroup",
        "node.enabled",
    ] {
        assert!(w.contains(what), "{what}: {w}");
    }
    assert!(!w.contains("sidewatch.io/memory: node"), "{w}");
    // Where the install refuses sharing, dropping the field would not be enough.
    let mut s = spec(web());
    s["shareProcessNamespace"] = false.into();
    let c = choose(&refused_sharing(), json!({}), s);
    let w = &c.warnings[0];
    assert!(
        w.contains("set shareProcessNamespace: true in the pod spec instead of false"),
        "{w}"
    );
    assert!(!w.contains("drop shareProcessNamespace"), "{w}");
}

#[test]
fn an_install_that_refuses_sharing_chooses_neither_app_root_nor_proc_and_says_so() {
    let settings = refused_sharing();
    for (annotations, app) in [
        (json!({}), web()),
        (json!({}), with_ids()),
        (json!({"sidewatch.io/memory": "app-root"}), with_ids()),
        (json!({"sidewatch.io/memory": "proc"}), web()),
    ] {
        let c = choose(&settings, annotations.clone(), spec(app));
        assert_eq!(c.plan.source, Memory::None, "{annotations}");
        assert!(c.pod["spec"]["shareProcessNamespace"].is_null());
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        let w = &c.warnings[0];
        for what in [
            "memory signals off for this pod",
            "webhook.shareProcessNamespace: false",
            "set shareProcessNamespace: true in the pod spec",
            "webhook.shareProcessNamespace: true",
            "node.enabled",
        ] {
            assert!(w.contains(what), "{annotations} {what}: {w}");
        }
    }
    // process-match cannot work there either: left out, and said.
    let c = choose(
        &settings,
        json!({"sidewatch.io/process-match": "java"}),
        spec(web()),
    );
    assert!(c.plan.pattern.is_none());
    assert!(
        c.warnings.iter().any(|w| w.contains("process-match")),
        "{:?}",
        c.warnings
    );
    // A pod that shares by itself needs nothing of the injector.
    let mut s = spec(with_ids());
    s["shareProcessNamespace"] = true.into();
    let c = choose(&settings, json!({}), s);
    assert_eq!(c.plan.source, Memory::AppRoot);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // With an agent, the sharing choice does not matter.
    let both = Settings {
        node_agent: true,
        share_process_namespace: false,
        ..Settings::default()
    };
    assert_eq!(
        choose(&both, json!({}), spec(web())).plan.source,
        Memory::Node
    );
}

#[test]
fn an_install_wide_none_names_the_node_agent_when_one_runs() {
    let settings = Settings {
        memory: Memory::None,
        node_agent: true,
        ..Settings::default()
    };
    let c = choose(&settings, json!({}), spec(web()));
    assert_eq!(c.plan.source, Memory::None);
    let w = &c.warnings[0];
    assert!(w.contains("--memory-source is none"), "{w}");
    assert!(w.contains("sidewatch.io/memory: node"), "{w}");
    assert!(!w.contains("node.enabled"), "{w}");
    // Asked for by the pod: nothing to tell.
    let c = choose(
        &settings,
        json!({"sidewatch.io/memory": "none"}),
        spec(web()),
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}
