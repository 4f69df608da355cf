//! `sidewatch.io/agent-port`: the HAProxy agent-check port the sidecar opens, and the ports of the
//! pod it must not take.

use serde_json::json;

use super::*;

fn asking(port: &str) -> Value {
    json!({"sidewatch.io/inject": "true", "sidewatch.io/agent-port": port})
}

fn agent_entry(sidecar: &Value) -> Option<&Value> {
    sidecar["ports"]
        .as_array()?
        .iter()
        .find(|p| p["containerPort"] != sidecar["readinessProbe"]["httpGet"]["port"])
}

#[test]
fn the_agent_port_is_opened_named_and_given_to_the_sidecar() {
    let (out, warnings) = injected(&pod(asking("true"), web()));
    assert!(warnings.is_empty(), "{warnings:?}");
    let sidecar = &out["spec"]["initContainers"][0];
    assert_eq!(env(sidecar, "SIDEWATCH_AGENT_LISTEN"), Some("[::]:9466"));
    assert_eq!(
        sidecar["ports"],
        json!([{"name": "sidewatch", "containerPort": 9102, "protocol": "TCP"},
            {"name": "sw-agent", "containerPort": 9466, "protocol": "TCP"}])
    );
    let note = out["metadata"]["annotations"][INJECTION].as_str().unwrap();
    assert!(note.contains("agent-check port 9466"), "{note}");

    // A number is that port; the admin port keeps out of its way.
    let (out, _) = injected(&pod(asking("9102"), web()));
    let sidecar = &out["spec"]["initContainers"][0];
    assert_eq!(env(sidecar, "SIDEWATCH_AGENT_LISTEN"), Some("[::]:9102"));
    assert_eq!(env(sidecar, "SIDEWATCH_LISTEN"), Some("[::]:9103"));
    assert_eq!(agent_entry(sidecar).unwrap()["containerPort"], 9102);

    // A name the pod has taken is left off, and said; the app's port is whole.
    let mut app = web();
    app["ports"] = json!([{"name": "http", "containerPort": 8080},
        {"name": "sw-agent", "containerPort": 8081}]);
    let (out, warnings) = injected(&pod(asking("9500"), app.clone()));
    assert_eq!(out["spec"]["containers"][0]["ports"], app["ports"]);
    let entry = agent_entry(&out["spec"]["initContainers"][0]).unwrap();
    assert_eq!(entry, &json!({"containerPort": 9500, "protocol": "TCP"}));
    assert!(
        warnings.iter().any(|w| w.contains("sw-agent")),
        "{warnings:?}"
    );
}

/// The container alone, as the plan gives it (the whole injection is above, once it can run).
#[test]
fn the_sidecar_listens_for_the_agent_check_on_both_families() {
    let sidecar = |agent_port| {
        sidecar::Sidecar {
            settings: &Settings::default(),
            native: true,
            app: "web",
            target: ("SIDEWATCH_TARGET", "tcp://${POD_IP}:8080".into()),
            drain_port: Some(8080),
            admin_port: 9102,
            admin_port_named: true,
            agent_port,
            grace: 30,
            token: "t",
            kubernetes: true,
            memory_unready_above: None,
            drain_readiness: None,
            overload_signal: false,
            memory: sidecar::MemoryPlan {
                source: Memory::None,
                pattern: None,
                mount: None,
                run_as: None,
            },
            app_memory_limit: true,
        }
        .container()
    };
    let opened = sidecar(Some((9466, true)));
    assert_eq!(env(&opened, "SIDEWATCH_AGENT_LISTEN"), Some("[::]:9466"));
    assert_eq!(
        agent_entry(&opened),
        Some(&json!({"name": "sw-agent", "containerPort": 9466, "protocol": "TCP"}))
    );
    // The readiness probe stays on the admin port.
    assert_eq!(opened["readinessProbe"]["httpGet"]["port"], 9102);
    let unnamed = sidecar(Some((9500, false)));
    assert_eq!(
        agent_entry(&unnamed),
        Some(&json!({"containerPort": 9500, "protocol": "TCP"}))
    );
    let closed = sidecar(None);
    assert_eq!(env(&closed, "SIDEWATCH_AGENT_LISTEN"), None);
    assert_eq!(agent_entry(&closed), None);
}

#[test]
fn without_the_annotation_no_agent_port_is_opened() {
    for annotations in [opted_in(), asking("false")] {
        let (out, _) = injected(&pod(annotations, web()));
        let sidecar = &out["spec"]["initContainers"][0];
        assert_eq!(env(sidecar, "SIDEWATCH_AGENT_LISTEN"), None);
        assert_eq!(sidecar["ports"].as_array().unwrap().len(), 1);
    }
}

#[test]
fn an_agent_port_the_pod_uses_is_refused_by_name() {
    let message = refused(&pod(asking("8080"), web()), RefusalKind::AgentPort);
    assert!(
        message.contains("sidewatch.io/agent-port 8080") && message.contains("\"web\""),
        "{message}"
    );
    // A port only probed is in use too: something listens there.
    let mut app = web();
    app["livenessProbe"] = json!({"tcpSocket": {"port": 9466}});
    let message = refused(&pod(asking("true"), app), RefusalKind::AgentPort);
    assert!(message.contains("9466"), "{message}");
    // So is a port of another container, and the admin port asked for.
    let mut p = pod(asking("9300"), web());
    p["spec"]["initContainers"] =
        json!([{"name": "proxy", "image": "x", "ports": [{"containerPort": 9300}]}]);
    assert!(refused(&p, RefusalKind::AgentPort).contains("\"proxy\""));
    let mut both = asking("9300");
    both["sidewatch.io/admin-port"] = "9300".into();
    let message = refused(&pod(both, web()), RefusalKind::AgentPort);
    assert!(message.contains("sidewatch.io/admin-port"), "{message}");
}

#[test]
fn a_bad_agent_port_is_refused_as_an_annotation() {
    for bad in ["yes", "0", "65536", "", "9466/tcp"] {
        let message = refused(&pod(asking(bad), web()), RefusalKind::Annotation);
        assert!(
            message.contains("sidewatch.io/agent-port"),
            "{bad:?}: {message}"
        );
    }
}
