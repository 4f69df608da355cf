//! The injector on pods of the shapes real workloads have (`tests/fixtures/pods`, see its
//! README), end to end: the real webhook's answer over TLS, the patch applied as the API server
//! applies it, every field of the pod kept whole and in order, the pod-level resources still
//! covering the containers, the result valid for every supported Kubernetes (`common::KUBERNETES`;
//! a field newer than a version's schema left out of that version's check, and shown to be
//! unknown to it), a second pass changing nothing, and the injected sidecar's args and environment
//! (downward API filled in as the kubelet fills it) run through the real binary: `check-config`
//! shows the target the kubelet probes, and `run` starts in a network namespace whose address is
//! the pod's IP (and, for a pod that shares its process namespace, in a PID namespace whose PID 1
//! is a pause process) and answers its own probes there. The chart's memory choices are counted
//! over the corpus, with each pod's Pod Security level (`common/pod_security.rs`) kept.

#[allow(unused_imports)]
use crate::{common, kubelet, netns, pki, pod_security, webhook};
use common::{Within, COMMAND_WITHIN};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{kube_minor, output_text, skip_or_fail, tempdir, which, KUBERNETES};
use kubelet::PodFacts;
use netns::Netns;
use pod_security::Level;
use serde_json::{json, Value};
use webhook::{apply, Webhook};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pods");
const POD_IP: &str = "10.244.1.7";

struct Fixture {
    name: String,
    scope: &'static str,
    pod_ip: String,
    pod: Value,
    expect: Value,
    schema_since: SchemaSince,
}

/// Fields of a fixture's pod that not every supported version's schema knows: each dotted path
/// (`*` for any list entry or key) with the first version whose schema has it, `None` for a field
/// no schema has (a vendor's).
type SchemaSince = Vec<(String, Option<(u32, u32)>)>;

fn schema_since(doc: &Value, fixture: &Path) -> SchemaSince {
    let oldest = kube_minor(KUBERNETES[0]);
    let newest = kube_minor(KUBERNETES[KUBERNETES.len() - 1]);
    let Some(fields) = doc["schema_since"].as_object() else {
        return Vec::new();
    };
    fields
        .iter()
        .map(|(path, since)| {
            let since = match since.as_str() {
                Some("never") => None,
                Some(version) => Some(kube_minor(version)),
                None => panic!("{}: schema_since.{path}: {since}", fixture.display()),
            };
            // A field every version knows is no exception; one past the newest is "never".
            if let Some(v) = since {
                assert!(
                    oldest < v && v <= newest,
                    "{}: schema_since.{path}: {v:?} is outside {oldest:?} < v <= {newest:?}",
                    fixture.display()
                );
            }
            (path.clone(), since)
        })
        .collect()
}

fn fixtures() -> Vec<Fixture> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(FIXTURES)
        .expect("the fixtures")
        .map(|e| e.expect("a fixture").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            let doc: Value =
                serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            Fixture {
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                scope: match doc["scope"].as_str() {
                    Some("namespace") => "/mutate-namespace",
                    _ => "/mutate",
                },
                pod_ip: doc["pod_ip"].as_str().unwrap_or(POD_IP).to_owned(),
                pod: doc["pod"].clone(),
                expect: doc["expect"].clone(),
                schema_since: schema_since(&doc, path),
            }
        })
        .collect()
}

/// `want` is found in `got`: every member of an object with an equal (or containing) value,
/// every entry of a list in the same order (others may come between), scalars equal (a number
/// and its text count as equal: the config writes some numbers as strings). `null` in `want`
/// stands for "absent or null". Returns where they first differ.
fn contained(want: &Value, got: &Value, at: &str) -> Result<(), String> {
    compare(want, got, at, Scalars::Loose)
}

/// As `contained`, with every scalar the same JSON value (`42` is not `"42"`): the pod's own
/// fields after the patch, which the webhook must neither drop nor rewrite.
fn kept(want: &Value, got: &Value, at: &str) -> Result<(), String> {
    compare(want, got, at, Scalars::Exact)
}

#[derive(Clone, Copy)]
enum Scalars {
    Loose,
    Exact,
}

fn compare(want: &Value, got: &Value, at: &str, scalars: Scalars) -> Result<(), String> {
    match (want, got) {
        (Value::Null, _) => Ok(()),
        (Value::Object(w), Value::Object(g)) => {
            for (key, value) in w {
                let here = format!("{at}.{key}");
                match g.get(key) {
                    Some(v) => compare(value, v, &here, scalars)?,
                    None if value.is_null() => {}
                    None => return Err(format!("{here} is gone")),
                }
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(g)) => {
            let mut rest = g.iter().enumerate();
            for (i, item) in w.iter().enumerate() {
                let here = format!("{at}[{i}]");
                if !rest.any(|(j, candidate)| {
                    compare(item, candidate, &format!("{at}[{j}]"), scalars).is_ok()
                }) {
                    return Err(format!("{here} is gone, changed or out of order: {item}"));
                }
            }
            Ok(())
        }
        (w, g) => {
            let same = match scalars {
                Scalars::Exact => w == g,
                Scalars::Loose => scalar(w).is_some() && scalar(w) == scalar(g),
            };
            if same {
                Ok(())
            } else {
                Err(format!("{at}: want {w}, got {g}"))
            }
        }
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Removes what `pattern` (dotted, `*` for any entry or key) points at.
fn strip(doc: &mut Value, pattern: &[&str]) {
    let Some((first, rest)) = pattern.split_first() else {
        return;
    };
    if rest.is_empty() {
        if let Some(map) = doc.as_object_mut() {
            map.remove(*first);
        }
        return;
    }
    match (doc, *first) {
        (Value::Array(items), "*") => items.iter_mut().for_each(|v| strip(v, rest)),
        (Value::Object(map), "*") => map.values_mut().for_each(|v| strip(v, rest)),
        (Value::Object(map), key) => {
            if let Some(v) = map.get_mut(key) {
                strip(v, rest)
            }
        }
        _ => {}
    }
}

/// The sidecar the patch added, and whether it is a native one.
fn sidecar(pod: &Value) -> (&Value, bool) {
    let find = |list: &str| {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "sidewatch")
    };
    match find("initContainers") {
        Some(c) => (c, true),
        None => (find("containers").expect("a sidewatch container"), false),
    }
}

fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w.as_str().map(str::to_owned))
        .collect()
}

fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

/// `sidewatch check-config` with the sidecar's args and nothing but its environment.
fn effective_config(args: &[String], env: &[(String, String)]) -> Result<Value, String> {
    assert_eq!(args.first().map(String::as_str), Some("run"), "{args:?}");
    let out = common::sidewatch_command()
        .arg("check-config")
        .args(&args[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output_within(COMMAND_WITHIN)
        .expect("run check-config");
    if !out.status.success() {
        return Err(output_text(&out));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", output_text(&out)))
}

/// What one fixture left to check once all are through: its injected pod for the schemas and
/// the sidecar to run.
struct Injected {
    /// The sidecar reads the app's memory (its effective `memory.source` is not `none`).
    memory: bool,
    name: String,
    pod: Value,
    schema_since: SchemaSince,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pod_ip: String,
    admin_port: u16,
    /// The pod shares its process namespace: its sidecar runs under a pause process as PID 1.
    shares: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_workloads_are_injected_whole_and_their_sidecars_start() {
    let fixtures = fixtures();
    assert!(fixtures.len() >= 40, "{} fixtures", fixtures.len());
    let hook = Webhook::start();
    let mut injected = Vec::new();
    let mut failures = Vec::new();
    for f in &fixtures {
        match check_one(&hook, f).await {
            Ok(Some(done)) => injected.push(done),
            Ok(None) => {}
            Err(e) => failures.push(format!("{}: {e}", f.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(injected.len() >= 30, "only {} injected", injected.len());
    let with_memory = injected.iter().filter(|i| i.memory).count();
    eprintln!(
        "{with_memory} of {} injected pods have memory signals; every other one was told why and how to turn them on",
        injected.len()
    );
    validate_all(&injected);
    run_all(&injected);
}

/// The chart's memory choices, as its Deployment hands them to the real webhook, over the whole
/// corpus: the defaults (sharing allowed, no agent), sharing refused, the node agent, and an
/// install-wide `cgroup` or `none`. With the agent every pod that does not annotate its own
/// source reads it, with the token and HOST_IP, at the Pod Security level it had; without it,
/// every pod has memory signals or a warning that says how to get them with this install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_memory_choices_reach_every_pod_it_injects() {
    let node_known = sidecar_loads(&[
        ("SIDEWATCH_MEMORY_SOURCE", "node"),
        ("HOST_IP", "10.0.0.1"),
        ("POD_NAME", "web-0"),
        ("POD_NAMESPACE", "shop"),
        ("SIDEWATCH_KUBERNETES_APP_CONTAINER", "web"),
    ]);
    let mut counts = Vec::new();
    for (name, set) in [
        ("defaults", ""),
        (
            "webhook.shareProcessNamespace=false",
            "webhook.shareProcessNamespace=false",
        ),
        ("node.enabled=true", "node.enabled=true"),
        ("webhook.memorySource=cgroup", "webhook.memorySource=cgroup"),
        ("webhook.memorySource=none", "webhook.memorySource=none"),
    ] {
        let agent = set == "node.enabled=true";
        if agent {
            if let Err(e) = &node_known {
                skip_or_fail(&format!(
                    "the sidecar does not load memory.source node yet (the sidecar's part of \
                     issue 25): {e}"
                ));
                continue;
            }
        }
        let helm: &[&str] = if set.is_empty() { &[] } else { &["--set", set] };
        let Some(yaml) = common::chart::render(helm) else {
            return;
        };
        let hook = Webhook::start_with(&webhook_memory_args(&yaml));
        let mut c = ChoiceCount::default();
        for f in fixtures() {
            // Each pod as it is, and made "restricted" where it can be (most of the corpus
            // states no securityContext): the injection must keep that level.
            let hardened = harden(&f.pod);
            let copies = [Some(&f.pod), (hardened != f.pod).then_some(&hardened)];
            for (copy, original) in copies.into_iter().flatten().enumerate() {
                let response = hook.review(f.scope, original).await;
                if response.get("patch").is_none() {
                    continue;
                }
                let pod = apply(original, &response);
                let (container, _) = sidecar(&pod);
                let source = env_value(container, "SIDEWATCH_MEMORY_SOURCE").unwrap_or_default();
                let annotated = original["metadata"]["annotations"]["sidewatch.io/memory"].as_str();
                let said = warnings(&response);
                let outcome =
                    check_choice(set, original, &pod, container, &source, annotated, &said);
                if let Err(e) = outcome {
                    let which = if copy == 0 { "" } else { " (hardened)" };
                    panic!("{name}: {}{which}: {e}\nwarnings: {said:?}", f.name);
                }
                if agent {
                    let facts = PodFacts::of(&pod, &f.pod_ip);
                    let env = kubelet::resolve_env(&pod, container, &facts).unwrap();
                    let config = effective_config(&args(container), &env)
                        .unwrap_or_else(|e| panic!("{}: check-config: {e}", f.name));
                    assert_eq!(config["memory"]["source"], source.as_str(), "{}", f.name);
                }
                c.add(copy == 0, original, &pod, source != "none");
            }
        }
        assert!(c.injected >= 30, "{name}: only {} injected", c.injected);
        counts.push(format!("{name}: {c}"));
    }
    eprintln!("{}", counts.join("\n"));
}

/// The webhook's memory arguments in the chart's Deployment.
fn webhook_memory_args(rendered: &str) -> Vec<&str> {
    let args: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("- "))
        .filter(|a| {
            a.starts_with("--memory-source=")
                || a.starts_with("--share-process-namespace=")
                || *a == "--node-agent"
        })
        .collect();
    assert!(args.len() >= 2, "the webhook's memory arguments: {args:?}");
    args
}

#[derive(Default)]
struct ChoiceCount {
    injected: usize,
    with_memory: usize,
    restricted_before: usize,
    restricted_after: usize,
}

impl ChoiceCount {
    /// `corpus`: the fixture as it is (counted for memory signals), not its hardened copy.
    fn add(&mut self, corpus: bool, before: &Value, after: &Value, memory: bool) {
        if corpus {
            self.injected += 1;
            self.with_memory += usize::from(memory);
        }
        if pod_security::level(before) == Level::Restricted {
            self.restricted_before += 1;
            if pod_security::level(after) == Level::Restricted {
                self.restricted_after += 1;
            }
        }
    }
}

impl std::fmt::Display for ChoiceCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} injected pods with memory signals; {}/{} pods at Pod Security restricted \
             still there once injected (the corpus, and its pods made restricted)",
            self.with_memory, self.injected, self.restricted_after, self.restricted_before
        )
    }
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
        .map(str::to_owned)
}

/// One injected pod against what the chart's choice (`set`) promises.
fn check_choice(
    set: &str,
    original: &Value,
    pod: &Value,
    container: &Value,
    source: &str,
    annotated: Option<&str>,
    said: &[String],
) -> Result<(), String> {
    let (before, after) = (pod_security::level(original), pod_security::level(pod));
    let warned = said
        .iter()
        .find(|w| w.contains("memory signals off for this pod"));
    // No memory signals is never silent, unless the pod asked for none.
    if source == "none" && annotated != Some("none") && warned.is_none() {
        return Err("no memory signals and no warning".into());
    }
    if source != "none" && warned.is_some() {
        return Err(format!(
            "memory source {source} and a warning that it is off"
        ));
    }
    if let Some(w) = warned {
        let ways: &[&str] = match set {
            "webhook.shareProcessNamespace=false" => &[
                "webhook.shareProcessNamespace: true",
                "set shareProcessNamespace: true in the pod spec",
                "node.enabled",
            ],
            "node.enabled=true" => &["sidewatch.io/memory: node"],
            _ => &["node.enabled", "sidewatch.io/memory: cgroup"],
        };
        if let Some(missing) = ways.iter().find(|way| !w.contains(*way)) {
            return Err(format!("the warning does not name {missing:?}: {w}"));
        }
    }
    let own_sharing = original["spec"]["shareProcessNamespace"].as_bool();
    if own_sharing.is_some()
        && pod["spec"]["shareProcessNamespace"] != original["spec"]["shareProcessNamespace"]
    {
        return Err("the pod's own shareProcessNamespace changed".into());
    }
    if annotated.is_some() {
        return Ok(());
    }
    let want = match set {
        "" => None,
        "webhook.shareProcessNamespace=false" => {
            if own_sharing != Some(true) && pod["spec"]["shareProcessNamespace"] == true {
                return Err("shareProcessNamespace set though the install refuses it".into());
            }
            None
        }
        "node.enabled=true" => Some("node"),
        "webhook.memorySource=cgroup" => Some("cgroup"),
        _ => Some("none"),
    };
    if let Some(want) = want {
        if source != want {
            return Err(format!("memory source {source}, want {want}"));
        }
    }
    match set {
        "node.enabled=true" => {
            let volume = pod["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| {
                    v["projected"]["sources"][0]["serviceAccountToken"]["audience"]
                        == "sidewatch.io/node"
                })
                .ok_or("no projected token for sidewatch.io/node")?;
            let token = &volume["projected"]["sources"][0]["serviceAccountToken"];
            if token["expirationSeconds"] != 600 || token["path"] != "token" {
                return Err(format!("the token: {token}"));
            }
            let mounted = container["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| {
                    m["name"] == volume["name"]
                        && m["mountPath"] == "/var/run/secrets/sidewatch.io/node"
                        && m["readOnly"] == true
                });
            let host_ip = container["env"].as_array().into_iter().flatten().any(|e| {
                e["name"] == "HOST_IP" && e["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
            });
            if !mounted || !host_ip {
                return Err(format!("token mounted: {mounted}, HOST_IP: {host_ip}"));
            }
            // Shared only for a process the pod names itself (`process_exited`).
            let named =
                original["metadata"]["annotations"]["sidewatch.io/process-match"].is_string();
            if own_sharing.is_none() && !named && !pod["spec"]["shareProcessNamespace"].is_null() {
                return Err("the node source shared the process namespace".into());
            }
            if after != before {
                return Err(format!("Pod Security {before:?} before, {after:?} after"));
            }
        }
        // A hostPath of the node's cgroup tree: privileged, as the chart's values say.
        "webhook.memorySource=cgroup" if after != Level::Privileged => {
            return Err(format!("Pod Security {after:?} with a hostPath"));
        }
        "webhook.memorySource=cgroup" => {}
        _ if after != before => {
            return Err(format!("Pod Security {before:?} before, {after:?} after"));
        }
        _ => {}
    }
    Ok(())
}

/// `pod` with what Pod Security "restricted" asks that it does not state (non-root, no
/// privilege escalation, no capabilities, the runtime's seccomp profile); a user it states, a
/// host namespace or a hostPath is kept, so such a pod stays below the level.
fn harden(pod: &Value) -> Value {
    let mut p = pod.clone();
    let spec = &mut p["spec"];
    for (key, value) in [
        ("runAsNonRoot", json!(true)),
        ("seccompProfile", json!({"type": "RuntimeDefault"})),
    ] {
        if spec["securityContext"][key].is_null() {
            spec["securityContext"][key] = value;
        }
    }
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            c["securityContext"]["allowPrivilegeEscalation"] = false.into();
            c["securityContext"]["capabilities"] = json!({"drop": ["ALL"]});
        }
    }
    p
}

/// Whether the sidecar's config loader takes these variables (its `check-config`).
fn sidecar_loads(env: &[(&str, &str)]) -> Result<(), String> {
    let out = common::sidewatch_command()
        .args(["check-config", "--target", "tcp://127.0.0.1:9"])
        .env_clear()
        .envs(env.iter().copied())
        .output_within(COMMAND_WITHIN)
        .expect("run check-config");
    if out.status.success() {
        Ok(())
    } else {
        Err(output_text(&out))
    }
}

async fn check_one(hook: &Webhook, f: &Fixture) -> Result<Option<Injected>, String> {
    let response = hook.review(f.scope, &f.pod).await;
    let said = warnings(&response);
    let outcome = f.expect["outcome"].as_str().unwrap_or("injected");
    let want_warnings: Vec<&str> = f.expect["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if f.expect["warnings"].as_array().is_some_and(Vec::is_empty) && !said.is_empty() {
        return Err(format!("warnings where none were expected: {said:?}"));
    }
    for want in &want_warnings {
        if !said.iter().any(|w| w.contains(want)) {
            return Err(format!("no warning with {want:?} in {said:?}"));
        }
    }
    match outcome {
        "refused" | "untouched" => {
            if response.get("patch").is_some() {
                return Err(format!("a patch for a pod that is {outcome}: {response}"));
            }
            if outcome == "refused" && said.is_empty() {
                return Err("refused without a warning".into());
            }
            return Ok(None);
        }
        _ => {}
    }
    if response.get("patch").is_none() {
        return Err(format!("no patch: {response}"));
    }
    let patch_ops = patch_ops(&response);
    if let Some(op) = patch_ops.iter().find(|op| op["op"] != "add") {
        return Err(format!("a patch operation that is not an add: {op}"));
    }
    let pod = apply(&f.pod, &response);
    kept(&f.pod, &pod, "pod").map_err(|e| format!("the patch lost or changed a field: {e}"))?;
    fits_pod_resources(&pod).map_err(|e| format!("the pod-level resources: {e}"))?;

    let again = hook.review(f.scope, &pod).await;
    if again.get("patch").is_some() || !warnings(&again).is_empty() {
        return Err(format!("a second pass changed something: {again}"));
    }

    let (container, native) = sidecar(&pod);
    let plain = f.expect["plain"] == true;
    if native == plain {
        return Err(format!("native sidecar: {native}, expected plain: {plain}"));
    }
    let admin_port = f.expect["admin_port"].as_u64().unwrap_or(9102) as u16;
    let ports = (
        &container["ports"][0]["containerPort"],
        &container["readinessProbe"]["httpGet"]["port"],
    );
    if ports != (&json!(admin_port), &json!(admin_port)) {
        return Err(format!("sidecar ports {ports:?}, want {admin_port}"));
    }
    let app_name = f.pod["metadata"]["annotations"]["sidewatch.io/app-container"]
        .as_str()
        .or(f.pod["spec"]["containers"][0]["name"].as_str())
        .unwrap_or_default();
    let app = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == app_name)
        .ok_or("the app container is gone")?;
    let own_hook = !f.pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == app_name)
        .map(|c| c["lifecycle"]["preStop"].is_null())
        .unwrap_or(true);
    let pre_stop = &app["lifecycle"]["preStop"]["httpGet"];
    if !own_hook && (pre_stop["path"] != "/drain" || pre_stop["port"] != admin_port) {
        return Err(format!("the app's preStop is not the drain: {pre_stop}"));
    }
    let gate = pod["spec"]["readinessGates"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|g| g["conditionType"] == "sidewatch.io/healthy");
    if gate != (f.expect["gate"] == true) {
        return Err(format!("readiness gate: {gate}"));
    }
    contained(&f.expect["sidecar"], container, "sidecar")
        .map_err(|e| format!("the sidecar container: {e}"))?;
    let spec = &f.expect["spec"];
    if let Some(want) = spec.as_object() {
        // `null` here means the pod must not have it (the subset check takes null for "any").
        for (key, value) in want {
            if value.is_null() && !pod["spec"][key].is_null() {
                return Err(format!("spec.{key} is {}, want absent", pod["spec"][key]));
            }
        }
        contained(spec, &pod["spec"], "spec").map_err(|e| format!("the pod: {e}"))?;
    }
    if pod["metadata"]["annotations"]["sidewatch.io/injection"].is_null() {
        return Err("no sidewatch.io/injection annotation".into());
    }

    let facts = PodFacts::of(&pod, &f.pod_ip);
    let env = kubelet::resolve_env(&pod, container, &facts)?;
    let args = args(container);
    let config = effective_config(&args, &env).map_err(|e| format!("check-config: {e}"))?;
    contained(&f.expect["probe"], &config["probes"][0], "probe")
        .map_err(|e| format!("the target is not what the kubelet probes: {e}\n{config:#}"))?;
    let mut want_config = f.expect["config"].clone();
    if want_config.is_null() {
        want_config = json!({});
    }
    want_config["listen"] = want_config["listen"]
        .as_str()
        .map_or_else(|| format!("[::]:{admin_port}"), str::to_owned)
        .into();
    contained(&want_config, &config, "config").map_err(|e| format!("{e}\n{config:#}"))?;
    // No memory signals is never silent: whoever created the pod is told why, and how to turn
    // them on, unless they asked for none.
    let memory = config["memory"]["source"] != "none";
    let asked_none = f.pod["metadata"]["annotations"]["sidewatch.io/memory"] == "none";
    if !memory
        && !asked_none
        && !said
            .iter()
            .any(|w| w.contains("memory signals off for this pod"))
    {
        return Err(format!(
            "memory signals off without a warning that says how to turn them on: {said:?}"
        ));
    }
    Ok(Some(Injected {
        memory,
        name: f.name.clone(),
        schema_since: f.schema_since.clone(),
        args,
        env,
        pod_ip: f.pod_ip.clone(),
        admin_port,
        shares: pod["spec"]["shareProcessNamespace"] == true,
        pod,
    }))
}

fn patch_ops(response: &Value) -> Vec<Value> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap_or_default())
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_default()
}

/// A resource quantity (`500m`, `1`, `256Mi`, `1G`) in thousandths of its unit (millicores,
/// millibytes), read as the kubelet's model reads it; `None` when absent.
fn quantity(q: &Value) -> Option<i128> {
    let text = match q {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("a quantity: {other}"),
    };
    let number = kubelet::quantity(&text).unwrap_or_else(|e| panic!("{e}"));
    Some((number * 1000.0).round() as i128)
}

/// With pod-level resources (`spec.resources`, beta and on by default since 1.34), the API
/// server admits the pod only if they still cover its containers, the sidecar among them: the
/// pod's requests at least the containers' aggregate (regular and restartable init containers
/// summed; each other init container with the sidecars started before it), and no container's
/// limit above the pod's (the API server checks the regular containers; the sidecar's too here).
/// A container's request defaults to its limit.
fn fits_pod_resources(pod: &Value) -> Result<(), String> {
    let spec = &pod["spec"];
    if spec["resources"].is_null() {
        return Ok(());
    }
    let list = |key: &str| spec[key].as_array().cloned().unwrap_or_default();
    let (containers, inits) = (list("containers"), list("initContainers"));
    for resource in ["cpu", "memory"] {
        let request = |c: &Value| {
            let r = &c["resources"];
            quantity(&r["requests"][resource])
                .or(quantity(&r["limits"][resource]))
                .unwrap_or(0)
        };
        if let Some(pod_request) = quantity(&spec["resources"]["requests"][resource]) {
            let mut sum: i128 = containers.iter().map(request).sum();
            let (mut sidecars, mut init_peak) = (0, 0);
            for c in &inits {
                if c["restartPolicy"] == "Always" {
                    sum += request(c);
                    sidecars += request(c);
                    init_peak = init_peak.max(sidecars);
                } else {
                    init_peak = init_peak.max(sidecars + request(c));
                }
            }
            let aggregate = sum.max(init_peak);
            if aggregate > pod_request {
                return Err(format!(
                    "the containers request {} {resource}, more than the pod's {}",
                    aggregate as f64 / 1000.0,
                    pod_request as f64 / 1000.0
                ));
            }
        }
        if let Some(pod_limit) = quantity(&spec["resources"]["limits"][resource]) {
            for c in inits.iter().chain(&containers) {
                if let Some(limit) = quantity(&c["resources"]["limits"][resource]) {
                    if limit > pod_limit {
                        return Err(format!(
                            "{}'s {resource} limit is above the pod's: {}",
                            c["name"], spec["resources"]["limits"]
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Every injected pod through kubernetes-validate, one run a version for all of them. A field
/// newer than a version's schema (`schema_since`) is left out of that version's copy, and a copy
/// keeping that field alone of them must fail on it: the exception is as narrow as the schemas.
fn validate_all(injected: &[Injected]) {
    if which("kubernetes-validate").is_none() {
        return skip_or_fail("kubernetes-validate is not installed (scripts/install-test-tools)");
    }
    let dir = tempdir::Dir::new();
    for version in KUBERNETES {
        let minor = kube_minor(version);
        let mut valid = Vec::new();
        let mut lacking = Vec::new();
        for i in injected {
            let mut pod = i.pod.clone();
            // The API server names the pod from generateName; the validator wants a name.
            if pod["metadata"]["name"].is_null() {
                pod["metadata"]["name"] = format!("{}-x7k2p", i.name).into();
            }
            let unknown: Vec<Vec<&str>> = i
                .schema_since
                .iter()
                .filter(|(_, since)| since.is_none_or(|since| minor < since))
                .map(|(path, _)| path.split('.').collect())
                .collect();
            let write = |pod: &Value, suffix: &str| {
                let file = dir
                    .path()
                    .join(format!("{version}-{}{suffix}.json", i.name));
                std::fs::write(&file, serde_json::to_vec(pod).unwrap()).unwrap();
                file
            };
            let mut known = pod.clone();
            unknown.iter().for_each(|path| strip(&mut known, path));
            valid.push(write(&known, ""));
            for (n, path) in unknown.iter().enumerate() {
                let mut one = pod.clone();
                for other in unknown.iter().filter(|other| *other != path) {
                    strip(&mut one, other);
                }
                let field = path[path.len() - 1].to_owned();
                lacking.push((write(&one, &format!("-lacks-{n}")), path.join("."), field));
            }
        }
        let files: Vec<&Path> = valid
            .iter()
            .chain(lacking.iter().map(|(file, _, _)| file))
            .map(PathBuf::as_path)
            .collect();
        let reports =
            common::kubernetes_validate_for(&files, &[version]).expect("kubernetes-validate");
        let (_, _, report) = &reports[0];
        let of = |file: &Path| -> Vec<&str> {
            let file = format!("{} ", file.display());
            report.lines().filter(|l| l.contains(&file)).collect()
        };
        for file in &valid {
            let lines = of(file);
            assert!(
                lines.len() == 1 && lines[0].contains(" passed for resource "),
                "{version}: {}",
                lines.join("\n")
            );
        }
        for (file, path, field) in &lacking {
            let lines = of(file);
            assert!(
                lines.len() == 1 && lines[0].contains(&format!("'{field}' was unexpected")),
                "{version}: schema_since says its schema lacks {path}, which it does not: {}",
                lines.join("\n")
            );
        }
    }
}

/// Each injected sidecar started by the real binary, with its args and environment, in a network
/// namespace that has the pod's IP: it must come up on its port there and answer `/livez`.
fn run_all(injected: &[Injected]) {
    let Some(ns) = Netns::create("inject") else {
        return;
    };
    let mut ips: Vec<&str> = injected.iter().map(|i| i.pod_ip.as_str()).collect();
    ips.sort();
    ips.dedup();
    add_addresses(&ns, &ips);
    // nsenter joins the network namespace alone; `ip netns exec` would also mount a sysfs of
    // its own over /sys, hiding the cgroup file systems.
    let Some(nsenter) = which("nsenter") else {
        return skip_or_fail(
            "nsenter (util-linux) is needed to run a sidecar in a network namespace",
        );
    };
    // `proc` without process.match finds the app container's processes by its ID (the in-pod
    // part of issue 25): a sidecar built without it refuses to start so.
    let proc_by_id = proc_by_container_runs();
    if let Err(e) = &proc_by_id {
        skip_or_fail(&format!(
            "the sidecar does not start with memory.source proc and no process.match; its pods \
             are not run: {e}"
        ));
    }
    let mut failures = Vec::new();
    for i in injected {
        let by_id = i
            .env
            .iter()
            .any(|(k, v)| k == "SIDEWATCH_MEMORY_SOURCE" && v == "proc")
            && !i.env.iter().any(|(k, _)| k == "SIDEWATCH_PROCESS_MATCH");
        if by_id && proc_by_id.is_err() {
            continue;
        }
        if let Err(e) = run_one(&ns, &nsenter, i) {
            failures.push(format!("{}: {e}", i.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The sidecar's environment asks for the proc source by container ID (no process.match).
fn by_container_id(env: &[(String, String)]) -> bool {
    env.iter()
        .any(|(k, v)| k == "SIDEWATCH_MEMORY_SOURCE" && v == "proc")
        && !env.iter().any(|(k, _)| k == "SIDEWATCH_PROCESS_MATCH")
}

/// The command that runs the rest in a PID namespace of its own whose PID 1 is a pause process
/// (podman's catatonit), as in a pod that shares its process namespace, where the kubelet's
/// pause container is PID 1; when it ends, so does everything in that namespace.
fn pause_pid_1() -> Result<Vec<String>, String> {
    let (Some(unshare), Some(pause)) = (which("unshare"), which("catatonit")) else {
        return Err(
            "unshare (util-linux) and catatonit are needed for a pod's PID namespace".into(),
        );
    };
    Ok([
        unshare.to_string_lossy().as_ref(),
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        pause.to_string_lossy().as_ref(),
        "--",
    ]
    .map(str::to_owned)
    .to_vec())
}

/// Whether `sidewatch run` starts with `memory.source: proc` and no `process.match`, in a
/// shared process namespace.
fn proc_by_container_runs() -> Result<(), String> {
    let wrapper = pause_pid_1()?;
    let mut child = Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .arg(common::BIN)
        .args([
            "run",
            "--target",
            "tcp://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_clear()
        .env("SIDEWATCH_MEMORY_SOURCE", "proc")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sidewatch");
    let logs = common::LogLines::read(child.stderr.take().expect("piped stderr"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let result = loop {
        if logs.all().iter().any(|l| l.contains("sidewatch started")) {
            break Ok(());
        }
        if child.try_wait().ok().flatten().is_some() || std::time::Instant::now() > deadline {
            break Err(logs.all().join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The pod's IPs, on the namespace's loopback: addresses of the pod's own, as eth0's are.
fn add_addresses(ns: &Netns, ips: &[&str]) {
    for ip in ips {
        let cidr = if ip.contains(':') {
            format!("{ip}/128")
        } else {
            format!("{ip}/32")
        };
        let mut args = vec![
            "-n",
            ns.0.as_str(),
            "addr",
            "add",
            cidr.as_str(),
            "dev",
            "lo",
        ];
        if ip.contains(':') {
            // No duplicate-address detection: the address is usable at once.
            args.push("nodad");
        }
        assert!(netns::ip(&args), "ip {args:?}");
    }
}

/// A pod's cgroups as the kubelet lays them out on a cgroup v1 node (`kubepods/pod<uid>/<id>`),
/// in the real memory hierarchy: the cgroup memory source finds the pod's from its own.
struct PodCgroup(PathBuf);

impl PodCgroup {
    fn create(name: &str) -> Option<PodCgroup> {
        let root = Path::new("/sys/fs/cgroup/memory");
        if !root.join("memory.limit_in_bytes").exists() {
            skip_or_fail(
                "the cgroup memory source needs the v1 memory controller at /sys/fs/cgroup/memory",
            );
            return None;
        }
        let pod = root.join(format!("kubepods-test-{}/pod{name}", std::process::id()));
        std::fs::create_dir_all(pod.join("sidewatch")).expect("a pod cgroup (root needed)");
        Some(PodCgroup(pod))
    }

    fn procs(&self) -> PathBuf {
        self.0.join("sidewatch/cgroup.procs")
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.0.join("sidewatch"));
        let _ = std::fs::remove_dir(&self.0);
        if let Some(kubepods) = self.0.parent() {
            let _ = std::fs::remove_dir(kubepods);
        }
    }
}

fn run_one(ns: &Netns, nsenter: &Path, i: &Injected) -> Result<(), String> {
    let cgroup_source = i
        .env
        .iter()
        .any(|(k, v)| k == "SIDEWATCH_MEMORY_SOURCE" && v == "cgroup");
    let cgroup = if cgroup_source {
        match PodCgroup::create(&i.name) {
            Some(c) => Some(c),
            None => return Ok(()),
        }
    } else {
        None
    };
    let mut command = match &cgroup {
        // Into the sidecar's container cgroup first, then the sidecar itself.
        Some(c) => {
            let mut sh = Command::new("/bin/sh");
            sh.args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
                .arg(c.procs())
                .arg(nsenter);
            sh
        }
        None => Command::new(nsenter),
    };
    let mut child = command
        .arg(format!("--net=/run/netns/{}", ns.0))
        .arg("--")
        .args(if i.shares { pause_pid_1()? } else { Vec::new() })
        .arg(common::BIN)
        .args(&i.args)
        .env_clear()
        .envs(i.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let logs = common::LogLines::read(child.stderr.take().expect("piped stderr"));
    let started = logs.wait_for("sidewatch started", Duration::from_secs(20));
    let result = match started {
        None => Err(format!(
            "did not start; exit {:?}; logs:\n{}",
            child.try_wait().ok().flatten(),
            logs.all().join("\n")
        )),
        Some(_) => {
            let host = if i.pod_ip.contains(':') {
                format!("[{}]", i.pod_ip)
            } else {
                i.pod_ip.clone()
            };
            let url = format!("http://{host}:{}/livez", i.admin_port);
            let status = in_netns_get(&ns.0, &url);
            match status {
                Ok(200) => Ok(()),
                other => Err(format!(
                    "{url}: {other:?}; logs:\n{}",
                    logs.all().join("\n")
                )),
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    if i.shares {
        gone(&ns.0, &i.pod_ip, i.admin_port);
    }
    drop(cgroup);
    result
}

/// Waits until nothing answers on the admin port any more: killing the PID namespace's parent
/// ends its PID 1, whose death ends the sidecar a moment later; the next pod needs the port.
fn gone(ns: &str, pod_ip: &str, port: u16) {
    let host = if pod_ip.contains(':') {
        format!("[{pod_ip}]")
    } else {
        pod_ip.to_owned()
    };
    let url = format!("http://{host}:{port}/livez");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while in_netns_get(ns, &url).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "{url}: still answering 10 s after its pod's PID 1 was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A GET from inside the namespace, as the kubelet's probe comes to the pod's IP.
fn in_netns_get(ns: &str, url: &str) -> Result<u16, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let url = url.to_owned();
    netns::in_netns(ns, move |_| async move {
        let client = common::client();
        let answer = client
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string());
        let _ = tx.send(answer);
    })
    .join()
    .map_err(|_| "the probe thread panicked".to_owned())?;
    rx.recv().map_err(|e| e.to_string())?
}

/// The app a fixture's pod stands for, as a Python process in the namespace (so that what it
/// accepts is decided by code not ours): its command line, and the reason `/readyz` must give
/// once it is gone.
fn stand_in(name: &str, certs: &Path) -> Vec<String> {
    const TARGET: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/probe_target.py"
    );
    const GRPC: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/grpc_health_server.py"
    );
    let http = |address: &str, port: &str, path: &str, host: &str| {
        ["python3", TARGET, address, port, path, host]
            .map(str::to_owned)
            .to_vec()
    };
    match name {
        "03-grpc-with-service" => ["python3", GRPC, "10.244.1.7:7070"]
            .map(str::to_owned)
            .to_vec(),
        "07-liveness-only-with-query" => http(
            "10.244.1.7",
            "8080",
            "/healthz?full=true",
            "10.244.1.7:8080",
        ),
        "21-dns-udp-first-undeclared-probe-port" => {
            http("10.244.1.7", "8181", "/ready", "10.244.1.7:8181")
        }
        "26-https-no-slash-host-header" => {
            let host = "kcm.openshift-kube-controller-manager.svc";
            let mut cmd = http("10.244.1.7", "10257", "/healthz", host);
            cmd.push(certs.join("kcm.pem").to_string_lossy().into_owned());
            cmd.push(certs.join("kcm.key").to_string_lossy().into_owned());
            cmd
        }
        "45-ipv6-pod" => http(
            "fd00:10:244::7",
            "8080",
            "/healthz",
            "[fd00:10:244::7]:8080",
        ),
        _ => Vec::new(),
    }
}

/// For a few shapes, the injected sidecar against an app that accepts exactly what the kubelet
/// sends (path, query, Host header, HTTPS with a certificate for another name, gRPC with a
/// service name, IPv6): ready while it runs, unready once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_sidecars_pass_where_the_kubelet_passes() {
    if which("python3").is_none() {
        return skip_or_fail("python3 is needed for the app stand-ins");
    }
    let Some(nsenter) = which("nsenter") else {
        return skip_or_fail("nsenter (util-linux) is needed to run in a network namespace");
    };
    let certs = tempdir::Dir::new();
    let leaf = pki::Pki::new().leaf_for(&["kcm.openshift-kube-controller-manager.svc"]);
    std::fs::write(certs.path().join("kcm.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(certs.path().join("kcm.key"), &leaf.key_pem).unwrap();
    let hook = Webhook::start();
    let chosen: Vec<Fixture> = fixtures()
        .into_iter()
        .filter(|f| !stand_in(&f.name, certs.path()).is_empty())
        .collect();
    assert_eq!(chosen.len(), 5);
    let Some(ns) = Netns::create("standin") else {
        return;
    };
    add_addresses(&ns, &["10.244.1.7", "fd00:10:244::7"]);
    // The gRPC fixture's stand-in is grpcio's own health server.
    let has_grpc = Command::new("python3")
        .args(["-c", "import grpc_health.v1.health"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_grpc {
        skip_or_fail("python3 with grpcio and grpcio-health-checking (scripts/install-test-tools)");
        return;
    }
    let proc_by_id = proc_by_container_runs();
    if let Err(e) = &proc_by_id {
        skip_or_fail(&format!(
            "the sidecar does not start with memory.source proc and no process.match; its pods \
             are not run: {e}"
        ));
    }
    for f in &chosen {
        let i = check_one(&hook, f)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", f.name))
            .expect("injected");
        if proc_by_id.is_err() && by_container_id(&i.env) {
            continue;
        }
        let app = stand_in(&f.name, certs.path());
        let mut server = Command::new(&nsenter)
            .arg(format!("--net=/run/netns/{}", ns.0))
            .arg("--")
            .args(&app)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the stand-in");
        let out = common::LogLines::read(server.stdout.take().unwrap());
        assert!(
            out.wait_for("listening", Duration::from_secs(30)).is_some(),
            "{}: the stand-in did not start",
            f.name
        );
        if f.name.contains("grpc") {
            use std::io::Write;
            let stdin = server.stdin.as_mut().unwrap();
            writeln!(stdin, "set hipstershop.CartService SERVING").unwrap();
            assert!(out.wait_for("ok", Duration::from_secs(30)).is_some());
        }
        let pid_1 = if i.shares {
            pause_pid_1().unwrap_or_else(|e| panic!("{}: {e}", f.name))
        } else {
            Vec::new()
        };
        let mut sidecar = Command::new(&nsenter)
            .arg(format!("--net=/run/netns/{}", ns.0))
            .arg("--")
            .args(pid_1)
            .arg(common::BIN)
            .args(&i.args)
            .env_clear()
            .envs(i.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = common::LogLines::read(sidecar.stderr.take().unwrap());
        let host = if i.pod_ip.contains(':') {
            format!("[{}]", i.pod_ip)
        } else {
            i.pod_ip.clone()
        };
        let readyz = format!("http://{host}:{}/readyz", i.admin_port);
        let wait = |want: u16| {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                if in_netns_get(&ns.0, &readyz) == Ok(want) {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{}: /readyz never {want}; logs:\n{}",
                    f.name,
                    logs.all().join("\n")
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        wait(200);
        let _ = server.kill();
        let _ = server.wait();
        wait(503);
        let _ = sidecar.kill();
        let _ = sidecar.wait();
        if i.shares {
            gone(&ns.0, &i.pod_ip, i.admin_port);
        }
    }
}
