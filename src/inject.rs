//! The injector's policy as a pure function: from a Pod and the webhook's settings to the JSON
//! Patch that adds sidewatch to it, or to no patch at all. The admission webhook is a thin shell
//! around `mutate`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, HTTPHeader,
    HostPathVolumeSource, Lifecycle, LifecycleHandler, ObjectFieldSelector, Pod, PodReadinessGate,
    Probe, ResourceFieldSelector, ResourceRequirements, SeccompProfile, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub const CONTAINER: &str = "sidewatch";
pub const ADMIN_PORT: i32 = 9102;
const ANNOTATION: &str = "sidewatch.io/";

/// Which webhook path the review came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `/mutate`: only pods annotated `sidewatch.io/inject: "true"`.
    Annotated,
    /// `/mutate-namespace`: every pod of an opted-in namespace unless annotated `"false"`.
    Namespace,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub image: String,
    /// A native sidecar (init container with `restartPolicy: Always`) unless false.
    pub native: bool,
    /// The sidecar's numeric user (the image's `nonroot` user by default).
    pub uid: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            image: "sidewatch:0.1.0".into(),
            native: true,
            uid: 65532,
        }
    }
}

/// What `mutate` decided.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Not opted in, or already injected: the pod is left as it is.
    Untouched,
    Patch(json_patch::Patch),
}

/// Adds sidewatch to `pod` when its annotations (and `scope`) ask for it. `token` is the per-pod
/// drain token the sidecar and the app's preStop hook share. An `Err` explains why an opted-in
/// pod cannot be injected (no port to watch, say): the webhook admits it unchanged with a warning.
pub fn mutate(
    pod: &Pod,
    settings: &Settings,
    scope: Scope,
    token: &str,
) -> Result<Outcome, String> {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let annotation = |key: &str| {
        annotations
            .get(&format!("{ANNOTATION}{key}"))
            .map(String::as_str)
    };
    let wanted = match (scope, annotation("inject")) {
        (Scope::Annotated, Some("true")) => true,
        (Scope::Namespace, Some("false")) => false,
        (Scope::Namespace, _) => true,
        (Scope::Annotated, _) => false,
    };
    let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
    let already = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == CONTAINER);
    if !wanted || already {
        return Ok(Outcome::Untouched);
    }

    let app_index = match annotation("app-container") {
        Some(name) => spec
            .containers
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| {
                format!("sidewatch.io/app-container names {name:?}, which the pod does not have")
            })?,
        None => 0,
    };
    let app = spec
        .containers
        .get(app_index)
        .ok_or("the pod has no containers")?;
    let target = match annotation("target") {
        Some(t) => t.to_owned(),
        None => derive_target(app)?,
    };
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    // Leave the app 5 s of its own shutdown inside the grace period, and never more than 25 s.
    let max = grace.saturating_sub(5).clamp(1, 25);
    let delay = max.min(5);

    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        value_env("CONTAINER_NAME", CONTAINER),
        value_env("SIDEWATCH_TARGET", &target),
        value_env("SIDEWATCH_DRAIN_DELAY", &format!("{delay}s")),
        value_env("SIDEWATCH_DRAIN_MAX", &format!("{max}s")),
        value_env(
            "SIDEWATCH_DRAIN_TOKEN_ENV",
            "SIDEWATCH_INJECTED_DRAIN_TOKEN",
        ),
        value_env("SIDEWATCH_INJECTED_DRAIN_TOKEN", token),
    ];
    if let Some(v) = annotation("memory-unready-above") {
        env.push(value_env("SIDEWATCH_MEMORY_UNREADY_ABOVE", v));
    }
    let mut mutated = pod.clone();
    let mspec = mutated.spec.as_mut().ok_or("the pod has no spec")?;
    let mut mounts = Vec::new();
    match (annotation("memory"), annotation("process-match")) {
        // The cgroup source: the node's cgroup tree, read-only, where the container's own view was
        // (hostPath: Pod Security "privileged" only). sidewatch then finds the pod's cgroup.
        (Some("cgroup"), pattern) => {
            env.push(value_env("SIDEWATCH_MEMORY_SOURCE", "cgroup"));
            if let Some(pattern) = pattern {
                env.push(value_env("SIDEWATCH_PROCESS_MATCH", pattern));
                mspec.share_process_namespace = Some(true);
            }
            mspec.volumes.get_or_insert_with(Vec::new).push(Volume {
                name: "sidewatch-cgroup".into(),
                host_path: Some(HostPathVolumeSource {
                    path: "/sys/fs/cgroup".into(),
                    type_: Some("Directory".into()),
                }),
                ..Default::default()
            });
            mounts.push(VolumeMount {
                name: "sidewatch-cgroup".into(),
                mount_path: "/sys/fs/cgroup".into(),
                read_only: Some(true),
                ..Default::default()
            });
        }
        // The proc source: the app's RSS against its limit, with a shared process namespace.
        (_, Some(pattern)) => {
            env.push(value_env("SIDEWATCH_PROCESS_MATCH", pattern));
            env.push(value_env("SIDEWATCH_MEMORY_SOURCE", "proc"));
            mspec.share_process_namespace = Some(true);
        }
        (_, None) => env.push(value_env("SIDEWATCH_MEMORY_SOURCE", "none")),
    }
    let has_memory_limit = app
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .is_some_and(|l| l.contains_key("memory"));
    if has_memory_limit {
        env.push(EnvVar {
            name: "SIDEWATCH_MEMORY_LIMIT".into(),
            value_from: Some(EnvVarSource {
                resource_field_ref: Some(ResourceFieldSelector {
                    container_name: Some(app.name.clone()),
                    resource: "limits.memory".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    let mut sidecar = sidecar(settings, env);
    if !mounts.is_empty() {
        sidecar.volume_mounts = Some(mounts);
    }
    if settings.native && annotation("mode") != Some("plain") {
        sidecar.restart_policy = Some("Always".into());
        mspec
            .init_containers
            .get_or_insert_with(Vec::new)
            .insert(0, sidecar);
    } else {
        mspec.containers.push(sidecar);
    }
    if annotation("readiness-gate") == Some("true") {
        let gates = mspec.readiness_gates.get_or_insert_with(Vec::new);
        if !gates
            .iter()
            .any(|g| g.condition_type == "sidewatch.io/healthy")
        {
            gates.push(PodReadinessGate {
                condition_type: "sidewatch.io/healthy".into(),
            });
        }
    }
    let app_mut = &mut mspec.containers[app_index];
    let kept_pre_stop = app_mut
        .lifecycle
        .as_ref()
        .is_some_and(|l| l.pre_stop.is_some());
    if !kept_pre_stop {
        app_mut
            .lifecycle
            .get_or_insert_with(Lifecycle::default)
            .pre_stop = Some(LifecycleHandler {
            http_get: Some(HTTPGetAction {
                path: Some("/drain".into()),
                port: IntOrString::Int(ADMIN_PORT),
                http_headers: Some(vec![HTTPHeader {
                    name: "X-Sidewatch-Drain-Token".into(),
                    value: token.into(),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let notes = mutated
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    notes.insert(format!("{ANNOTATION}injected"), "true".into());
    if kept_pre_stop {
        notes.insert(
            format!("{ANNOTATION}prestop"),
            "kept the app's own preStop hook; call sidewatch's /drain from it to drain without guessing".into(),
        );
    }

    let before = serde_json::to_value(pod).map_err(|e| e.to_string())?;
    let after = serde_json::to_value(&mutated).map_err(|e| e.to_string())?;
    Ok(Outcome::Patch(json_patch::diff(&before, &after)))
}

/// The app's readinessProbe httpGet (named ports resolved), else its first containerPort as TCP.
fn derive_target(app: &Container) -> Result<String, String> {
    let ports = app.ports.as_deref().unwrap_or_default();
    if let Some(get) = app
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
    {
        let port = match &get.port {
            IntOrString::Int(p) => Some(*p),
            IntOrString::String(name) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port),
        };
        if let Some(port) = port {
            let scheme = get.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
            let path = get.path.as_deref().unwrap_or("/");
            return Ok(format!("{scheme}://127.0.0.1:{port}{path}"));
        }
    }
    match ports.first() {
        Some(p) => Ok(format!("tcp://127.0.0.1:{}", p.container_port)),
        None => Err(format!(
            "container {:?} has neither a readinessProbe httpGet nor a containerPort: annotate sidewatch.io/target",
            app.name
        )),
    }
}

fn sidecar(settings: &Settings, env: Vec<EnvVar>) -> Container {
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(CONTAINER.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(if path == "/readyz" { 1 } else { 3 }),
        ..Default::default()
    };
    let quantity = |q: &str| Quantity(q.into());
    Container {
        name: CONTAINER.into(),
        image: Some(settings.image.clone()),
        args: Some(vec!["run".into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(CONTAINER.into()),
            container_port: ADMIN_PORT,
            ..Default::default()
        }]),
        readiness_probe: Some(probe("/readyz", 1)),
        liveness_probe: Some(probe("/livez", 10)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), quantity("5m")),
                ("memory".into(), quantity("16Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), quantity("32Mi"))])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(settings.uid),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(annotations: serde_json::Value, app: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "annotations": annotations},
            "spec": {"containers": [app]}
        }))
        .unwrap()
    }

    fn web() -> serde_json::Value {
        json!({"name": "web", "image": "example/web",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
            "resources": {"limits": {"memory": "256Mi"}}})
    }

    /// Applies the patch as the API server would, and reads the pod back.
    fn injected(p: &Pod, scope: Scope) -> Pod {
        let Outcome::Patch(patch) = mutate(p, &Settings::default(), scope, "t0ken").unwrap() else {
            panic!("no patch");
        };
        let mut doc = serde_json::to_value(p).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        serde_json::from_value(doc).unwrap()
    }

    fn env(c: &Container, name: &str) -> Option<String> {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    #[test]
    fn an_annotated_pod_gets_a_native_sidecar_and_a_drain_hook() {
        let p = pod(
            json!({"sidewatch.io/inject": "true", "sidewatch.io/readiness-gate": "true"}),
            web(),
        );
        let out = injected(&p, Scope::Annotated);
        let spec = out.spec.as_ref().unwrap();
        let sidecar = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(sidecar.name, "sidewatch");
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            env(sidecar, "SIDEWATCH_TARGET").as_deref(),
            Some("http://127.0.0.1:8080/healthz")
        );
        assert_eq!(env(sidecar, "SIDEWATCH_DRAIN_MAX").as_deref(), Some("25s"));
        let limit = sidecar
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "SIDEWATCH_MEMORY_LIMIT")
            .unwrap();
        let field = limit
            .value_from
            .as_ref()
            .unwrap()
            .resource_field_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (field.container_name.as_deref(), field.resource.as_str()),
            (Some("web"), "limits.memory")
        );
        let security = sidecar.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        let hook = spec.containers[0]
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap();
        let get = hook.http_get.as_ref().unwrap();
        assert_eq!(
            (get.path.as_deref(), &get.port),
            (Some("/drain"), &IntOrString::Int(9102))
        );
        assert_eq!(get.http_headers.as_ref().unwrap()[0].value, "t0ken");
        assert_eq!(
            env(sidecar, "SIDEWATCH_INJECTED_DRAIN_TOKEN").as_deref(),
            Some("t0ken")
        );
        assert_eq!(
            spec.readiness_gates.as_ref().unwrap()[0].condition_type,
            "sidewatch.io/healthy"
        );
    }

    #[test]
    fn injection_is_idempotent_and_opt_in() {
        let p = pod(json!({"sidewatch.io/inject": "true"}), web());
        let once = injected(&p, Scope::Annotated);
        assert_eq!(
            mutate(&once, &Settings::default(), Scope::Annotated, "x").unwrap(),
            Outcome::Untouched
        );
        let plain = pod(json!({}), web());
        assert_eq!(
            mutate(&plain, &Settings::default(), Scope::Annotated, "x").unwrap(),
            Outcome::Untouched
        );
        let opted_out = pod(json!({"sidewatch.io/inject": "false"}), web());
        assert_eq!(
            mutate(&opted_out, &Settings::default(), Scope::Namespace, "x").unwrap(),
            Outcome::Untouched
        );
        assert!(matches!(
            mutate(&plain, &Settings::default(), Scope::Namespace, "x"),
            Ok(Outcome::Patch(_))
        ));
    }

    #[test]
    fn an_existing_pre_stop_hook_is_kept_and_noted() {
        let mut app = web();
        app["lifecycle"] = json!({"preStop": {"exec": {"command": ["sleep", "10"]}}});
        let out = injected(
            &pod(json!({"sidewatch.io/inject": "true"}), app),
            Scope::Annotated,
        );
        let hook = out.spec.as_ref().unwrap().containers[0]
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap();
        assert!(hook.exec.is_some() && hook.http_get.is_none());
        assert!(out
            .metadata
            .annotations
            .unwrap()
            .contains_key("sidewatch.io/prestop"));
    }

    #[test]
    fn the_target_falls_back_to_the_first_port_and_drain_fits_the_grace_period() {
        let app = json!({"name": "db", "image": "example/db", "ports": [{"containerPort": 5432}]});
        let mut p = pod(
            json!({"sidewatch.io/inject": "true", "sidewatch.io/mode": "plain"}),
            app,
        );
        p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(8);
        let out = injected(&p, Scope::Annotated);
        let spec = out.spec.unwrap();
        let sidecar = spec
            .containers
            .iter()
            .find(|c| c.name == "sidewatch")
            .unwrap();
        assert_eq!(
            env(sidecar, "SIDEWATCH_TARGET").as_deref(),
            Some("tcp://127.0.0.1:5432")
        );
        assert_eq!(env(sidecar, "SIDEWATCH_DRAIN_MAX").as_deref(), Some("3s"));
        assert_eq!(env(sidecar, "SIDEWATCH_DRAIN_DELAY").as_deref(), Some("3s"));
    }

    #[test]
    fn memory_modes_bring_what_they_need() {
        let cgroup = injected(
            &pod(
                json!({"sidewatch.io/inject": "true", "sidewatch.io/memory": "cgroup"}),
                web(),
            ),
            Scope::Annotated,
        );
        let spec = cgroup.spec.unwrap();
        let sidecar = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(
            env(sidecar, "SIDEWATCH_MEMORY_SOURCE").as_deref(),
            Some("cgroup")
        );
        let mount = &sidecar.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            ("/sys/fs/cgroup", Some(true))
        );
        let volume = &spec.volumes.as_ref().unwrap()[0];
        assert_eq!(volume.host_path.as_ref().unwrap().path, "/sys/fs/cgroup");
        assert_eq!(spec.share_process_namespace, None);

        let proc = injected(
            &pod(
                json!({"sidewatch.io/inject": "true", "sidewatch.io/process-match": "java"}),
                web(),
            ),
            Scope::Annotated,
        );
        let spec = proc.spec.unwrap();
        let sidecar = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(
            env(sidecar, "SIDEWATCH_MEMORY_SOURCE").as_deref(),
            Some("proc")
        );
        assert_eq!(
            env(sidecar, "SIDEWATCH_PROCESS_MATCH").as_deref(),
            Some("java")
        );
        assert_eq!(spec.share_process_namespace, Some(true));
        assert!(spec.volumes.is_none());
    }

    #[test]
    fn a_pod_with_nothing_to_watch_is_explained() {
        let app = json!({"name": "batch", "image": "example/batch"});
        let err = mutate(
            &pod(json!({"sidewatch.io/inject": "true"}), app),
            &Settings::default(),
            Scope::Annotated,
            "x",
        )
        .unwrap_err();
        assert!(err.contains("sidewatch.io/target"), "{err}");
    }
}
