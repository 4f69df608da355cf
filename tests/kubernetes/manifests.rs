//! What users install from this repository: the Dockerfile passes hadolint, and `deploy/`
//! renders with `kubectl kustomize` and validates against the schemas of every supported
//! Kubernetes (`common::KUBERNETES`), with a sidewatch configuration the binary itself accepts;
//! the load balancer examples of `deploy/examples/` validate where a schema exists.

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

/// The custom resources of `deploy/examples/`: this repository carries no schema for them (the
/// Kubernetes schemas know only the core kinds), so they are checked for shape only.
const EXAMPLE_CRDS: [&str; 7] = [
    "TargetGroupBinding",
    "BackendConfig",
    "HealthCheckPolicy",
    "HTTPRoute",
    "BackendTrafficPolicy",
    "DestinationRule",
    "IngressRoute",
];

fn example_files() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every example names what it is, and the README's table lists exactly the files there are.
#[test]
fn every_load_balancer_example_is_listed_and_names_its_objects() {
    let files = example_files();
    assert!(files.len() >= 10, "{files:?}");
    let readme = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/README.md"),
    )
    .unwrap();
    let mut listed: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .collect();
    listed.sort_unstable();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, names, "deploy/examples/README.md lists other files");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(!docs.is_empty(), "{}", file.display());
        for doc in docs {
            for field in ["apiVersion", "kind"] {
                assert!(doc[field].is_string(), "{}: no {field}", file.display());
            }
            assert!(
                doc["metadata"]["name"].is_string(),
                "{}: no metadata.name",
                file.display()
            );
            let kind = doc["kind"].as_str().unwrap();
            let core =
                ["v1", "networking.k8s.io/v1"].contains(&doc["apiVersion"].as_str().unwrap());
            assert!(
                core || EXAMPLE_CRDS.contains(&kind),
                "{}: {kind} is neither a core kind nor a known custom resource",
                file.display()
            );
        }
    }
}

/// The examples aim at the ports the injector opens: the admin port for `/readyz`, the agent
/// port for HAProxy's agent check.
#[test]
fn the_load_balancer_examples_aim_at_the_injected_ports() {
    use sidewatch::webhook::inject::{ADMIN_PORT, AGENT_PORT};
    let read = |name: &str| {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/examples")
                .join(name),
        )
        .unwrap()
    };
    let admin = ADMIN_PORT.to_string();
    for (file, setting) in [
        ("aws-alb-ip.yaml", format!("healthcheck-port: \"{admin}\"")),
        ("aws-nlb-ip.yaml", format!("healthcheck-port: \"{admin}\"")),
        ("gke-neg-ingress.yaml", format!("port: {admin}")),
        ("gke-gateway.yaml", format!("port: {admin}")),
        ("envoy-gateway.yaml", format!("port: {admin}")),
        (
            "haproxy-ingress.yaml",
            format!("agent-check-port: \"{AGENT_PORT}\""),
        ),
    ] {
        assert!(read(file).contains(&setting), "{file}: no {setting}");
    }
}

/// The core kinds of the examples (Services, Ingresses) validate against every supported
/// Kubernetes; the custom resources are reported as without a schema, and nothing else is.
#[test]
fn the_load_balancer_examples_validate_where_a_schema_exists() {
    let files = example_files();
    let paths: Vec<&Path> = files.iter().map(|f| f.as_path()).collect();
    let mut core = 0;
    for file in &files {
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&std::fs::read_to_string(file).unwrap()).unwrap();
        core += docs
            .iter()
            .filter(|d| !EXAMPLE_CRDS.contains(&d["kind"].as_str().unwrap_or_default()))
            .count();
    }
    assert!(core >= 10, "{core} core objects");
    let Some(reports) = common::kubernetes_validate_for(&paths, &common::KUBERNETES) else {
        return;
    };
    for (version, passed, report) in reports {
        assert!(passed, "{version}: {report}");
        assert_eq!(
            report.matches(" passed for resource ").count(),
            core,
            "{version}: {report}"
        );
        let unchecked: Vec<&str> = report.lines().filter(|l| !l.contains(" passed ")).collect();
        assert!(
            unchecked.iter().all(|l| EXAMPLE_CRDS
                .iter()
                .any(|k| l.contains(&format!("schema for kind {k} ")))),
            "{version}: {report}"
        );
    }
}
