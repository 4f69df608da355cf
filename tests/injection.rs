//! The injector on pods of the shapes real workloads have (`tests/fixtures/pods`, see its
//! README), end to end: the real webhook's answer over TLS, the patch applied as the API server
//! applies it, every field of the pod kept whole and in order, the result valid for Kubernetes
//! 1.29 and 1.35, a second pass changing nothing, and the injected sidecar's args and environment
//! (downward API filled in as the kubelet fills it) run through the real binary: `check-config`
//! shows the target the kubelet probes, and `run` starts in a network namespace whose address is
//! the pod's IP and answers its own probes there.

mod common;
#[path = "common/kubelet.rs"]
mod kubelet;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/pki.rs"]
mod pki;
#[path = "common/webhook.rs"]
mod webhook;

use common::{Within, COMMAND_WITHIN};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{output_text, skip_or_fail, tempdir, which};
use kubelet::PodFacts;
use netns::Netns;
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
    schema_lacks: Value,
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
                schema_lacks: doc["schema_lacks"].clone(),
            }
        })
        .collect()
}

/// `want` is found in `got`: every member of an object with an equal (or containing) value,
/// every entry of a list in the same order (others may come between), scalars equal (a number
/// and its text count as equal: the config writes some numbers as strings). `null` in `want`
/// stands for "absent or null". Returns where they first differ.
fn contained(want: &Value, got: &Value, at: &str) -> Result<(), String> {
    match (want, got) {
        (Value::Null, _) => Ok(()),
        (Value::Object(w), Value::Object(g)) => {
            for (key, value) in w {
                let here = format!("{at}.{key}");
                match g.get(key) {
                    Some(v) => contained(value, v, &here)?,
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
                if !rest
                    .any(|(j, candidate)| contained(item, candidate, &format!("{at}[{j}]")).is_ok())
                {
                    return Err(format!("{here} is gone, changed or out of order: {item}"));
                }
            }
            Ok(())
        }
        (w, g) if scalar(w) == scalar(g) && scalar(w).is_some() => Ok(()),
        (w, g) => Err(format!("{at}: want {w}, got {g}")),
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
    name: String,
    pod: Value,
    schema_lacks: Value,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pod_ip: String,
    admin_port: u16,
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
    validate_all(&injected);
    run_all(&injected);
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
    contained(&f.pod, &pod, "pod").map_err(|e| format!("the patch lost a field: {e}"))?;

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
    Ok(Some(Injected {
        name: f.name.clone(),
        pod,
        schema_lacks: f.schema_lacks.clone(),
        args,
        env,
        pod_ip: f.pod_ip.clone(),
        admin_port,
    }))
}

fn patch_ops(response: &Value) -> Vec<Value> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap_or_default())
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_default()
}

/// Every injected pod through kubernetes-validate, once per version for all of them.
fn validate_all(injected: &[Injected]) {
    if which("kubernetes-validate").is_none() {
        return skip_or_fail("kubernetes-validate is not installed (scripts/install-test-tools)");
    }
    let dir = tempdir::Dir::new();
    for version in ["1.29", "1.35"] {
        let mut files = Vec::new();
        for i in injected {
            let mut pod = i.pod.clone();
            // The API server names the pod from generateName; the validator wants a name.
            if pod["metadata"]["name"].is_null() {
                pod["metadata"]["name"] = format!("{}-x7k2p", i.name).into();
            }
            for pattern in i.schema_lacks[version].as_array().into_iter().flatten() {
                let pattern: Vec<&str> = pattern.as_str().unwrap_or_default().split('.').collect();
                strip(&mut pod, &pattern);
            }
            let file = dir.path().join(format!("{version}-{}.json", i.name));
            std::fs::write(&file, serde_json::to_vec(&pod).unwrap()).unwrap();
            files.push(file.to_string_lossy().into_owned());
        }
        let mut args = vec!["--strict", "-k"];
        let full = format!("{version}.0");
        args.push(&full);
        args.extend(files.iter().map(String::as_str));
        let out = common::run_tool("kubernetes-validate", &args).expect("kubernetes-validate");
        let report = output_text(&out);
        assert!(out.status.success(), "{version}: {report}");
        let passed = report.lines().filter(|l| l.contains("passed")).count();
        assert_eq!(passed, files.len(), "{version}: {report}");
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
    let mut failures = Vec::new();
    for i in injected {
        if let Err(e) = run_one(&ns, &nsenter, i) {
            failures.push(format!("{}: {e}", i.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
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
    drop(cgroup);
    result
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
    for f in &chosen {
        let i = check_one(&hook, f)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", f.name))
            .expect("injected");
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
        let mut sidecar = Command::new(&nsenter)
            .arg(format!("--net=/run/netns/{}", ns.0))
            .arg("--")
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
    }
}
