//! The injector's policy as a pure function of the pod's raw JSON and the webhook's settings: the
//! JSON Patch that adds sidewatch, or the reason it is left out. It never re-serializes the pod
//! through typed structs (which would drop or move what the model does not know): it reads the
//! raw JSON and answers with "add" operations only (see `patch`). One step per function:
//! opt-in, annotations, app container, target, agent and admin ports, memory, sidecar, app hook,
//! pod.

mod annotations;
mod memory;
mod node_token;
mod outcome;
mod patch;
mod ports;
mod refusal;
mod shape;
mod sidecar;
mod target;
mod token;
pub(crate) mod view;

use serde_json::{json, Value};

pub use annotations::Memory;
use annotations::{Options, TargetSetting};
pub use annotations::{INJECTED, INJECTION};
pub use outcome::{Outcome, Scope, Skip};
use patch::Edits;
use ports::{
    choose_admin_port, choose_agent_port, first_tcp_port, has_port_named, ports_in_use,
    probes_port, target_port, unix_socket, volume_holding,
};
pub use refusal::{Kind as RefusalKind, Refusal};
pub use sidecar::{ADMIN_PORT, AGENT_PORT, AGENT_PORT_NAME, CONTAINER, GATE};
use target::Derived;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub image: String,
    /// A native sidecar (init container with `restartPolicy: Always`) unless false.
    pub native: bool,
    /// The sidecar's numeric user (the image's `nonroot` user by default).
    pub uid: i64,
    /// The memory source of the pods that do not annotate one (`--memory-source`).
    pub memory: Memory,
    /// A node agent runs on every node (`--node-agent`): `auto` is the node source.
    pub node_agent: bool,
    /// The injector may set `shareProcessNamespace: true` (`--share-process-namespace`).
    pub share_process_namespace: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            image: "sidewatch:0.1.0".into(),
            native: true,
            uid: 65532,
            memory: Memory::Auto,
            node_agent: false,
            share_process_namespace: true,
        }
    }
}

/// Adds sidewatch to `pod` (an object of the review) when its annotations and `scope` ask for it.
/// `token` is the per-pod drain token the sidecar and the app's preStop hook share.
pub fn mutate(pod: &Value, settings: &Settings, scope: Scope, token: &str) -> Outcome {
    let annotations = pod["metadata"]["annotations"].as_object();
    let asked = annotations
        .and_then(|a| a.get(&format!("{}inject", annotations::PREFIX)))
        .and_then(Value::as_str);
    let skip = match (scope, asked) {
        (Scope::Annotated, Some("true")) => None,
        (Scope::Annotated, _) => Some(Skip::NotOptedIn),
        (Scope::Namespace, Some("false")) => Some(Skip::OptedOut),
        (Scope::Namespace, _) => None,
    };
    if let Some(skip) = skip {
        return Outcome::Untouched(skip);
    }
    if annotations.is_some_and(|a| a.get(INJECTED).is_some()) {
        return Outcome::Untouched(Skip::Injected);
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

/// What the injection says: `notes` go in the pod's annotation, `warnings` to whoever created it.
#[derive(Default)]
struct Said {
    notes: Vec<String>,
    warnings: Vec<String>,
}

fn plan<'a>(pod: &'a Value, settings: &Settings, token: &str) -> Result<Plan<'a>, Refusal> {
    let spec = &pod["spec"];
    let containers = shape::containers(spec)?;
    let options = Options::parse(pod["metadata"]["annotations"].as_object())
        .map_err(Refusal::of(RefusalKind::Annotation))?;
    let native = options.plain.map_or(settings.native, |plain| !plain);
    shape::refuse_dead_ends(spec, &options, native)?;
    let app_index = shape::app_container(containers, &options)?;
    let app = &containers[app_index];
    let app_name = app["name"].as_str().unwrap_or_default();

    let mut said = Said::default();
    let (target_env, target_port, socket) = choose_target(&options, app, &mut said)?;
    let agent_port = choose_agent_port(&options, spec, &mut said)?;
    let mut used = ports_in_use(shape::all(spec));
    used.extend(agent_port.map(|(port, _)| port));
    let admin_port = choose_admin_port(&options, &used, &mut said)?;
    // The drain watches where clients connect: the app's first TCP port, else the probed one.
    let drain_port = first_tcp_port(app).or(target_port);
    said.notes.push(match drain_port {
        Some(port) => format!("drain watches port {port}"),
        None => "drain: no TCP port to watch, it ends after its delay".into(),
    });

    let mut edits = Edits::new(pod);
    let memory = memory::memory(
        &options,
        settings,
        spec,
        app,
        &mut edits,
        &mut said.notes,
        &mut said.warnings,
    )
    .map_err(Refusal::of(RefusalKind::Memory))?;
    let (kubernetes, gate) = api_access(spec, &options, &mut said);
    let plan = sidecar::Sidecar {
        settings,
        native,
        app: app_name,
        target: target_env,
        drain_port,
        admin_port,
        admin_port_named: !shape::all(spec).any(|c| has_port_named(c, CONTAINER)),
        agent_port,
        grace: spec["terminationGracePeriodSeconds"].as_i64().unwrap_or(30),
        token,
        kubernetes,
        memory_unready_above: options.memory_unready_above.as_deref(),
        drain_readiness: options.drain_readiness.as_deref(),
        overload_signal: options.overload_signal,
        memory,
        app_memory_limit: !app["resources"]["limits"]["memory"].is_null(),
    };
    let container = equip(
        plan.container(),
        &options,
        spec,
        socket,
        &mut edits,
        &mut said,
    )?;
    if native {
        edits.prepend(&["spec", "initContainers"], container);
    } else {
        edits.append(&["spec", "containers"], container);
    }
    hook_app(
        &mut edits, app_index, app_name, admin_port, token, &mut said,
    );
    if gate {
        add_gate(&mut edits, spec, &mut said);
    }
    Ok(mark(edits, pod, said))
}

/// The sidecar's mounts (its own token, the app's socket), then its whole environment loaded as
/// the sidecar will load it: a refusal there is a bug of ours or a combination of annotations no
/// single check caught; either way no crash-looping sidecar.
fn equip(
    mut container: Value,
    options: &Options,
    spec: &Value,
    socket: Option<String>,
    edits: &mut Edits<'_>,
    said: &mut Said,
) -> Result<Value, Refusal> {
    if options.sidecar_token {
        let mount =
            token::for_sidecar_only(spec, edits).map_err(Refusal::of(RefusalKind::Annotation))?;
        add_mount(&mut container, mount);
        said.notes
            .push("token: a projected service-account token for the sidecar only".into());
    }
    if let Some(path) = socket {
        let holding = volume_holding(shape::all(spec), &path);
        mount_socket(&mut container, holding, &path, said);
    }
    let literal: Vec<(&str, &str)> = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    annotations::sidecar_accepts(&literal).map_err(|e| {
        Refusal::new(
            RefusalKind::Settings,
            format!("the sidecar would refuse its settings: {e}"),
        )
    })?;
    Ok(container)
}

type TargetChoice = ((&'static str, String), Option<u16>, Option<String>);

/// What the sidecar probes (the annotation, else what the kubelet probes), as its variable, the
/// probed TCP port, and the Unix socket it connects to, if any.
fn choose_target(options: &Options, app: &Value, said: &mut Said) -> Result<TargetChoice, Refusal> {
    Ok(match &options.target {
        Some(TargetSetting::Flag(text)) => {
            said.notes
                .push(format!("target {text} from sidewatch.io/target"));
            (("SIDEWATCH_TARGET", text.clone()), target_port(text), None)
        }
        Some(TargetSetting::Probe(probes)) => {
            said.notes
                .push("target from sidewatch.io/target".to_owned());
            let socket = unix_socket(probes);
            (
                ("SIDEWATCH_PROBES", probes.clone()),
                probes_port(probes),
                socket,
            )
        }
        None => {
            let Derived {
                probe,
                described,
                port,
                notes: degraded,
            } = target::derive(app).map_err(Refusal::of(RefusalKind::Target))?;
            said.notes.push(format!("target {described}"));
            said.warnings.extend(degraded);
            // A Value of strings and numbers: serializing it cannot fail.
            let probes = serde_json::to_string(&[probe]).unwrap_or_default();
            (("SIDEWATCH_PROBES", probes), port, None)
        }
    })
}

/// Whether the sidecar has credentials for the API server, and so whether it gets the gate.
fn api_access(spec: &Value, options: &Options, said: &mut Said) -> (bool, bool) {
    let token_mounted = options.sidecar_token || spec["automountServiceAccountToken"] != false;
    if options.readiness_gate && !token_mounted {
        said.warnings.push(
            "no readiness gate: automountServiceAccountToken is false, so the sidecar has no \
             credentials to ever set it (the pod would never be Ready)"
                .into(),
        );
    }
    if !token_mounted {
        said.notes
            .push("Kubernetes API off: no service-account token".into());
    }
    (token_mounted, options.readiness_gate && token_mounted)
}

/// The socket is a file of one of the pod's volumes: the sidecar sees it only there.
fn mount_socket(container: &mut Value, mount: Option<Value>, path: &str, said: &mut Said) {
    match mount {
        Some(mount) => {
            said.notes
                .push(format!("volume {} mounted for {path}", mount["name"]));
            add_mount(container, mount);
        }
        None => said.warnings.push(format!(
            "no volume of the pod holds {path}: the sidecar cannot reach the socket"
        )),
    }
}

fn add_mount(container: &mut Value, mount: Value) {
    match container["volumeMounts"].as_array_mut() {
        Some(mounts) => mounts.push(mount),
        None => container["volumeMounts"] = json!([mount]),
    }
}

/// The app's preStop hook calls `/drain`, unless it has one of its own (kept).
fn hook_app(
    edits: &mut Edits<'_>,
    app_index: usize,
    app_name: &str,
    admin_port: u16,
    token: &str,
    said: &mut Said,
) {
    let index = app_index.to_string();
    let app_path = ["spec", "containers", index.as_str()];
    let hook = json!({"httpGet": {"path": "/drain", "port": admin_port,
        "httpHeaders": [{"name": "X-Sidewatch-Drain-Token", "value": token}]}});
    if edits
        .get(&[&app_path[..], &["lifecycle", "preStop"]].concat())
        .is_some()
    {
        said.warnings.push(format!(
            "container {app_name:?} has a preStop hook of its own, kept: call sidewatch's /drain \
             from it to drain without guessing"
        ));
    } else {
        edits.set_new(&[&app_path[..], &["lifecycle"]].concat(), "preStop", hook);
        said.notes
            .push(format!("preStop of container {app_name:?} calls /drain"));
    }
}

fn add_gate(edits: &mut Edits<'_>, spec: &Value, said: &mut Said) {
    let has_gate = spec["readinessGates"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|g| g["conditionType"] == GATE);
    if !has_gate {
        edits.append(&["spec", "readinessGates"], json!({"conditionType": GATE}));
    }
    said.notes.push(format!("readiness gate {GATE}"));
}

/// The pod says it is injected (so a second pass changes nothing) and how, and carries the label
/// the chart's PodMonitor selects (selectors see labels only).
fn mark<'a>(mut edits: Edits<'a>, pod: &Value, mut said: Said) -> Plan<'a> {
    edits.set_new(&["metadata", "annotations"], INJECTED, "true".into());
    if !edits.set_new(&["metadata", "labels"], INJECTED, "true".into())
        && pod["metadata"]["labels"][INJECTED] != "true"
    {
        said.warnings.push(format!(
            "the pod's label {INJECTED} is kept as it is: the chart's PodMonitor selects \
             {INJECTED}=true and will not scrape this pod's sidewatch"
        ));
    }
    edits.set_new(
        &["metadata", "annotations"],
        INJECTION,
        said.notes.join("; ").into(),
    );
    Plan {
        edits,
        warnings: said.warnings,
    }
}

#[cfg(test)]
mod tests;
