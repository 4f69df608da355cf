//! The injector's policy as a pure function of the pod's raw JSON and the webhook's settings: the
//! JSON Patch that adds sidewatch, or the reason it is left out. It never re-serializes the pod
//! through typed structs (which would drop or move what the model does not know): it reads the
//! raw JSON and answers with "add" operations only (see `patch`). One step per function:
//! opt-in, annotations, app container, target, admin port, memory, sidecar, app hook, pod.

mod annotations;
mod patch;
mod sidecar;
mod target;
pub mod view;

use serde_json::{json, Value};

use annotations::{Memory, Options, TargetSetting};
pub use annotations::{INJECTED, INJECTION};
use patch::Edits;
pub use sidecar::{ADMIN_PORT, CONTAINER, GATE};
use target::Derived;

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

/// What `mutate` decided. Every case may carry warnings for the person who created the pod.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Not opted in, or injected already: the pod is left as it is.
    Untouched,
    /// Opted in but not injectable (a bad annotation, nothing to watch): admitted as it is, with
    /// this reason as a warning; a missing sidecar must not stop a deployment.
    Refused(String),
    Patch {
        patch: json_patch::Patch,
        warnings: Vec<String>,
    },
}

/// Adds sidewatch to `pod` (an object of the review) when its annotations and `scope` ask for it.
/// `token` is the per-pod drain token the sidecar and the app's preStop hook share.
pub fn mutate(pod: &Value, settings: &Settings, scope: Scope, token: &str) -> Outcome {
    let annotations = pod["metadata"]["annotations"].as_object();
    let asked = annotations
        .and_then(|a| a.get(&format!("{}inject", annotations::PREFIX)))
        .and_then(Value::as_str);
    let wanted = match (scope, asked) {
        (Scope::Annotated, Some("true")) => true,
        (Scope::Annotated, _) => false,
        (Scope::Namespace, Some("false")) => false,
        (Scope::Namespace, _) => true,
    };
    if !wanted || annotations.is_some_and(|a| a.get(INJECTED).is_some()) {
        return Outcome::Untouched;
    }
    match plan(pod, settings, token) {
        Ok(Plan { edits, warnings }) => Outcome::Patch {
            patch: edits.into_patch(),
            warnings,
        },
        Err(why) => Outcome::Refused(why),
    }
}

struct Plan<'a> {
    edits: Edits<'a>,
    warnings: Vec<String>,
}

fn plan<'a>(pod: &'a Value, settings: &Settings, token: &str) -> Result<Plan<'a>, String> {
    let spec = &pod["spec"];
    let containers = spec["containers"]
        .as_array()
        .filter(|c| !c.is_empty())
        .ok_or("the pod has no containers")?;
    let all = || {
        containers
            .iter()
            .chain(spec["initContainers"].as_array().into_iter().flatten())
    };
    if all().any(|c| c["name"] == CONTAINER) {
        return Err(format!(
            "a container named {CONTAINER:?} is there already (added by hand?): left as it is"
        ));
    }
    let options = Options::parse(pod["metadata"]["annotations"].as_object())?;
    let native = options.plain.map_or(settings.native, |plain| !plain);
    if !native
        && spec["restartPolicy"]
            .as_str()
            .is_some_and(|p| p != "Always")
    {
        return Err(format!(
            "restartPolicy {}: a plain sidecar container would keep the pod from ever \
             completing; use the native sidecar (Kubernetes 1.29+)",
            spec["restartPolicy"]
        ));
    }
    if spec["hostNetwork"] == true && !options.host_network {
        return Err(
            "hostNetwork pod: the sidecar's admin port would be a port of the node; annotate \
             sidewatch.io/host-network: \"true\" (and sidewatch.io/admin-port) to inject anyway"
                .into(),
        );
    }
    let app_index = match &options.app_container {
        Some(name) => containers
            .iter()
            .position(|c| c["name"] == name.as_str())
            .ok_or_else(|| {
                format!("sidewatch.io/app-container names {name:?}, which the pod does not have")
            })?,
        None => 0,
    };
    let app = &containers[app_index];
    let app_name = app["name"].as_str().unwrap_or_default();

    let mut notes = Vec::new();
    let mut warnings = Vec::new();
    let mut socket = None;
    let (target_env, target_port) = match &options.target {
        Some(TargetSetting::Flag(text)) => {
            notes.push(format!("target {text} from sidewatch.io/target"));
            (("SIDEWATCH_TARGET", text.clone()), target_port(text))
        }
        Some(TargetSetting::Probe(probes)) => {
            notes.push("target from sidewatch.io/target".to_owned());
            socket = unix_socket(probes);
            (("SIDEWATCH_PROBES", probes.clone()), probes_port(probes))
        }
        None => {
            let Derived {
                probe,
                described,
                port,
                notes: degraded,
            } = target::derive(app)?;
            notes.push(format!("target {described}"));
            warnings.extend(degraded);
            let probes = serde_json::to_string(&[probe]).map_err(|e| e.to_string())?;
            (("SIDEWATCH_PROBES", probes), port)
        }
    };

    let used = ports_in_use(all());
    let admin_port = match options.admin_port {
        Some(port) if used.contains(&port) => {
            return Err(format!(
                "sidewatch.io/admin-port {port} is a port of the pod already"
            ))
        }
        Some(port) => port,
        None if !used.contains(&ADMIN_PORT) => ADMIN_PORT,
        None => {
            let free = (ADMIN_PORT + 1..=u16::MAX)
                .find(|p| !used.contains(p))
                .ok_or("no free port for the sidecar")?;
            warnings.push(format!(
                "admin port {free}: {ADMIN_PORT} is a port of the pod already"
            ));
            free
        }
    };
    notes.push(format!("admin port {admin_port}"));

    // The drain watches where clients connect: the app's first TCP port, else the probed one.
    let drain_port = first_tcp_port(app).or(target_port);
    match drain_port {
        Some(port) => notes.push(format!("drain watches port {port}")),
        None => notes.push("drain: no TCP port to watch, it ends after its delay".into()),
    }

    let mut edits = Edits::new(pod);
    let memory = memory(&options, spec, app, &mut edits, &mut notes, &mut warnings)?;

    let token_mounted = spec["automountServiceAccountToken"] != false;
    let gate = options.readiness_gate && token_mounted;
    if options.readiness_gate && !token_mounted {
        warnings.push(
            "no readiness gate: automountServiceAccountToken is false, so the sidecar has no \
             credentials to ever set it (the pod would never be Ready)"
                .into(),
        );
    }
    if !token_mounted {
        notes.push("Kubernetes API off: no service-account token".into());
    }

    let grace = spec["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
    let plan = sidecar::Sidecar {
        settings,
        native,
        app: app_name,
        target: target_env,
        drain_port,
        admin_port,
        admin_port_named: !all().any(|c| has_port_named(c, CONTAINER)),
        grace,
        token,
        kubernetes: token_mounted,
        memory_unready_above: options.memory_unready_above.as_deref(),
        memory,
        app_memory_limit: !app["resources"]["limits"]["memory"].is_null(),
    };
    let mut container = plan.container();
    if let Some(path) = socket {
        // The socket is a file of one of the pod's volumes: the sidecar sees it only there.
        match volume_holding(all(), &path) {
            Some(mount) => {
                notes.push(format!("volume {} mounted for {path}", mount["name"]));
                match container["volumeMounts"].as_array_mut() {
                    Some(mounts) => mounts.push(mount),
                    None => container["volumeMounts"] = json!([mount]),
                }
            }
            None => warnings.push(format!(
                "no volume of the pod holds {path}: the sidecar cannot reach the socket"
            )),
        }
    }
    // The whole environment, loaded as the sidecar will load it: a refusal here is a bug of ours
    // or a combination of annotations no single check caught; either way no crash-looping sidecar.
    let literal: Vec<(&str, &str)> = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    annotations::sidecar_accepts(&literal)
        .map_err(|e| format!("the sidecar would refuse its settings: {e}"))?;
    if native {
        edits.prepend(&["spec", "initContainers"], container);
    } else {
        edits.append(&["spec", "containers"], container);
    }

    let index = app_index.to_string();
    let app_path = ["spec", "containers", index.as_str()];
    let hook = json!({"httpGet": {"path": "/drain", "port": admin_port,
        "httpHeaders": [{"name": "X-Sidewatch-Drain-Token", "value": token}]}});
    if edits
        .get(&[&app_path[..], &["lifecycle", "preStop"]].concat())
        .is_some()
    {
        warnings.push(format!(
            "container {app_name:?} has a preStop hook of its own, kept: call sidewatch's /drain \
             from it to drain without guessing"
        ));
    } else {
        edits.set_new(&[&app_path[..], &["lifecycle"]].concat(), "preStop", hook);
        notes.push(format!("preStop of container {app_name:?} calls /drain"));
    }
    if gate {
        let has_gate = spec["readinessGates"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|g| g["conditionType"] == GATE);
        if !has_gate {
            edits.append(&["spec", "readinessGates"], json!({"conditionType": GATE}));
        }
        notes.push(format!("readiness gate {GATE}"));
    }
    edits.set_new(&["metadata", "annotations"], INJECTED, "true".into());
    // The label is what the chart's PodMonitor selects (selectors see labels only).
    if !edits.set_new(&["metadata", "labels"], INJECTED, "true".into())
        && pod["metadata"]["labels"][INJECTED] != "true"
    {
        warnings.push(format!(
            "the pod's label {INJECTED} is kept as it is: the chart's PodMonitor selects \
             {INJECTED}=true and will not scrape this pod's sidewatch"
        ));
    }
    edits.set_new(
        &["metadata", "annotations"],
        INJECTION,
        notes.join("; ").into(),
    );
    Ok(Plan { edits, warnings })
}

/// The memory source the sidecar gets, with what it needs added to the pod, and why.
fn memory(
    options: &Options,
    spec: &Value,
    app: &Value,
    edits: &mut Edits<'_>,
    notes: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<sidecar::MemoryPlan, String> {
    let pattern = options.process_match.clone();
    let refused_sharing = spec["shareProcessNamespace"] == false;
    if pattern.is_some() && refused_sharing {
        return Err(
            "sidewatch.io/process-match needs a shared process namespace, and the pod sets \
             shareProcessNamespace: false"
                .into(),
        );
    }
    let asked = options.memory.unwrap_or(Memory::Auto);
    // Entering the app's root takes the app's own user and group, and no capability: the sidecar
    // runs as them (never as root: Pod Security "restricted" forbids it, and so does sidewatch).
    let ids = app_ids(spec, app);
    let app_root = match (ids, refused_sharing) {
        (_, true) => Err("the pod sets shareProcessNamespace: false".to_owned()),
        (Some((0, _)), _) => Err("the app runs as root, which the sidecar must not".to_owned()),
        (Some(ids), _) => Ok(ids),
        (None, _) => Err(
            "the pod spec does not state the app's runAsUser and runAsGroup, which the sidecar \
             must share to read its cgroup"
                .to_owned(),
        ),
    };
    let (chosen, run_as) = match (asked, app_root) {
        (Memory::Auto | Memory::AppRoot, Ok(ids)) => (Memory::AppRoot, Some(ids)),
        (Memory::Auto, Err(why)) if pattern.is_some() => {
            notes.push(format!("not the app's cgroup: {why}"));
            (Memory::Proc, None)
        }
        (Memory::Auto, Err(why)) => {
            notes.push(format!("memory signals off: {why}"));
            (Memory::None, None)
        }
        (Memory::AppRoot, Err(why)) => {
            let fallback = if pattern.is_some() {
                Memory::Proc
            } else {
                Memory::None
            };
            warnings.push(format!(
                "sidewatch.io/memory app-root: {why}; memory {}",
                if fallback == Memory::Proc {
                    "from the app's processes instead"
                } else {
                    "signals off"
                }
            ));
            (fallback, None)
        }
        (other, _) => (other, None),
    };
    if pattern.is_some() || chosen == Memory::AppRoot {
        edits.set_new(&["spec"], "shareProcessNamespace", true.into());
    }
    let volume = match chosen {
        Memory::Cgroup => {
            let name = free_name(spec["volumes"].as_array(), "sidewatch-cgroup");
            if name != "sidewatch-cgroup" {
                warnings.push(format!(
                    "volume {name}: sidewatch-cgroup is a volume of the pod already"
                ));
            }
            edits.append(
                &["spec", "volumes"],
                json!({"name": name, "hostPath": {"path": "/sys/fs/cgroup", "type": "Directory"}}),
            );
            notes.push("memory from the node's cgroup tree (hostPath, read-only)".into());
            Some(name)
        }
        Memory::AppRoot => {
            if let Some((uid, gid)) = run_as {
                notes.push(format!(
                    "memory from the app container's own cgroup, through its root; the sidecar \
                     runs as its user {uid} and group {gid}, the process namespace shared"
                ));
            }
            None
        }
        Memory::Proc => {
            notes.push("memory from the app's processes (/proc)".into());
            None
        }
        Memory::None | Memory::Auto => {
            if asked == Memory::None {
                notes.push("memory signals off (sidewatch.io/memory)".into());
            }
            None
        }
    };
    Ok(sidecar::MemoryPlan {
        source: chosen,
        pattern,
        volume,
        run_as,
    })
}

/// The user and group the app container runs as, when the pod spec states both (the
/// container's securityContext, else the pod's): an image's own USER is not visible here.
fn app_ids(spec: &Value, app: &Value) -> Option<(i64, i64)> {
    let id = |key: &str| {
        app["securityContext"][key]
            .as_i64()
            .or_else(|| spec["securityContext"][key].as_i64())
    };
    Some((id("runAsUser")?, id("runAsGroup")?))
}

/// Every port a container of the pod declares or probes (a probe may use a port it does not
/// declare): the sidecar's own must be none of them.
fn ports_in_use<'a>(containers: impl Iterator<Item = &'a Value>) -> Vec<u16> {
    let mut ports = Vec::new();
    let as_port = |v: &Value| v.as_u64().and_then(|p| u16::try_from(p).ok());
    for c in containers {
        for p in c["ports"].as_array().into_iter().flatten() {
            ports.extend(as_port(&p["containerPort"]));
            ports.extend(as_port(&p["hostPort"]));
        }
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            for handler in ["httpGet", "tcpSocket", "grpc"] {
                ports.extend(as_port(&c[probe][handler]["port"]));
            }
        }
    }
    ports
}

fn first_tcp_port(container: &Value) -> Option<u16> {
    container["ports"]
        .as_array()?
        .iter()
        .filter(|p| p["protocol"].as_str().unwrap_or("TCP") == "TCP")
        .find_map(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
}

fn has_port_named(container: &Value, name: &str) -> bool {
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["name"] == name)
}

/// The TCP port of a `--target`, for the drain.
fn target_port(text: &str) -> Option<u16> {
    let seen = text.replace(target::POD_IP, "127.0.0.1");
    let probe =
        crate::config::ProbeConfig::new("app", seen.parse::<crate::config::Target>().ok()?.0);
    probe.port()
}

/// The TCP port of a probe given as config (`SIDEWATCH_PROBES` with one probe), for the drain.
fn probes_port(probes: &str) -> Option<u16> {
    let probe: Value = serde_json::from_str::<Value>(probes).ok()?[0].take();
    let seen = serde_json::to_string(&probe)
        .ok()?
        .replace(target::POD_IP, "127.0.0.1");
    serde_json::from_str::<crate::config::ProbeConfig>(&seen)
        .ok()?
        .port()
}

/// The Unix socket a probe given as config connects to.
fn unix_socket(probes: &str) -> Option<String> {
    let probes: Value = serde_json::from_str(probes).ok()?;
    let probe = &probes[0];
    probe["http"]["unix_socket"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            let address = probe["grpc"]["address"].as_str()?.strip_prefix("unix:")?;
            Some(address.strip_prefix("//").unwrap_or(address).to_owned())
        })
}

/// A read-only mount, for the sidecar, of the volume a container of the pod has `path` in.
fn volume_holding<'a>(containers: impl Iterator<Item = &'a Value>, path: &str) -> Option<Value> {
    containers
        .flat_map(|c| c["volumeMounts"].as_array().into_iter().flatten())
        .filter_map(|m| Some((m["name"].as_str()?, m["mountPath"].as_str()?)))
        .filter(|(_, dir)| {
            let dir = dir.trim_end_matches('/');
            path.strip_prefix(dir)
                .is_some_and(|rest| rest.starts_with('/'))
        })
        .max_by_key(|(_, dir)| dir.len())
        .map(|(name, dir)| json!({"name": name, "mountPath": dir, "readOnly": true}))
}

/// `base`, or `base-2`, `base-3`… whichever no entry of `list` is named.
fn free_name(list: Option<&Vec<Value>>, base: &str) -> String {
    let taken = |name: &str| list.into_iter().flatten().any(|v| v["name"] == name);
    std::iter::once(base.to_owned())
        .chain((2..).map(|n| format!("{base}-{n}")))
        .find(|name| !taken(name))
        .unwrap_or_else(|| base.to_owned())
}

#[cfg(test)]
mod tests;
