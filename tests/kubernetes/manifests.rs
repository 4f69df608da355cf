//! What users install from this repository: the Dockerfile passes hadolint, and `deploy/`
//! renders with `kubectl kustomize` and validates against the schemas of every supported
//! Kubernetes (`common::KUBERNETES`), with a sidewatch configuration the binary itself accepts.

#[allow(unused_imports)]
use crate::common;
use common::{Within, COMMAND_WITHIN};
use std::path::Path;

use common::{output_text, run_tool};

#[test]
fn the_dockerfile_passes_hadolint() {
    let Some(out) = run_tool("hadolint", &["Dockerfile"]) else {
        return;
    };
    assert!(
        out.status.success() && output_text(&out).trim().is_empty(),
        "{}",
        output_text(&out)
    );
}

fn rendered_deploy() -> Option<String> {
    let out = run_tool("kubectl", &["kustomize", "deploy"])?;
    assert!(out.status.success(), "{}", output_text(&out));
    Some(String::from_utf8(out.stdout).unwrap())
}

#[test]
fn deploy_renders_and_validates_for_every_supported_kubernetes() {
    let Some(yaml) = rendered_deploy() else {
        return;
    };
    for kind in [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodMonitor",
    ] {
        assert!(yaml.contains(&format!("kind: {kind}\n")), "{kind} missing");
    }
    let dir = common::tempdir::Dir::new();
    let file = dir.path().join("deploy.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let Some(reports) = common::kubernetes_validate(&file) else {
        return;
    };
    for (version, passed, report) in reports {
        assert!(passed, "{version}: {report}");
        assert_eq!(
            report.matches(" passed for resource ").count(),
            5,
            "{version}: {report}"
        );
        // The PodMonitor is a CRD, which the Kubernetes schemas do not carry.
        let unchecked: Vec<&str> = report.lines().filter(|l| !l.contains(" passed ")).collect();
        assert!(
            unchecked.iter().all(|l| l.contains("PodMonitor")),
            "{version}: {report}"
        );
    }
}

#[test]
fn the_example_sidecar_configuration_is_one_sidewatch_accepts() {
    let Some(yaml) = rendered_deploy() else {
        return;
    };
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).unwrap();
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let sidecar = deployment["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sidewatch")
        .unwrap();
    let args: Vec<&str> = sidecar["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "run");
    let mut cmd = common::sidewatch_command();
    cmd.arg("check-config").args(&args[1..]);
    for env in sidecar["env"].as_array().unwrap() {
        if let Some(value) = env["value"].as_str() {
            cmd.env(env["name"].as_str().unwrap(), value);
        }
    }
    let out = cmd.output_within(COMMAND_WITHIN).unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(config["drain"]["max"], "35s");
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        35 < grace,
        "drain.max must stay under terminationGracePeriodSeconds"
    );
    assert_eq!(config["drain"]["grace_period"], format!("{grace}s"));
    assert!(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rbac.yaml")).exists());
}
