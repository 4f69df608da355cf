//! A Pod run for real, the way a kubelet would run it, with podman and runc: one podman pod per
//! Pod (a network namespace that a veth joins to the host, which stands for the node; the process
//! namespace shared when the spec says so), every container with its command, args and
//! environment (the downward API filled in, and `KUBERNETES_SERVICE_*` as the kubelet adds them),
//! its securityContext, its memory limit and its volumes (emptyDir, hostPath, the
//! service-account token); init containers run to completion and native sidecars started first;
//! a small kubelet loop that probes readiness, restarts exited containers and reports their
//! status to the API server; and the termination: preStop hooks, SIGTERM, the grace period, in
//! the kubelet's order. Images must be local (`scripts/image --testapp`): nothing is pulled.
#![allow(dead_code)] // each test crate uses its own subset

use crate::common::{Within, COMMAND_WITHIN};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use super::common::{skip_or_fail, tempdir, which};
use super::fake_api::FakeApi;
use super::kubelet::{self, PodFacts};
use super::netns;

pub const SIDEWATCH_IMAGE: &str = "localhost/sidewatch:dev";
pub const APP_IMAGE: &str = "localhost/sidewatch-testapp:dev";
const CONF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/containers.conf"
);
/// Every podman call ends within this, or the test fails: a wedged runtime must not hang it.
const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);
const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// podman, with this repository's containers.conf; `None` (after `skip_or_fail`) without it,
/// without root, or without the images.
#[derive(Clone)]
pub struct Podman {
    bin: PathBuf,
}

impl Podman {
    pub fn get() -> Option<Podman> {
        let Some(bin) = which("podman") else {
            skip_or_fail("podman is not installed (scripts/install-test-tools)");
            return None;
        };
        if !rustix::process::geteuid().is_root() {
            skip_or_fail("running pods with podman needs root");
            return None;
        }
        let podman = Podman { bin };
        for image in [SIDEWATCH_IMAGE, APP_IMAGE] {
            let exists = podman.run(&["image", "exists", image]);
            if !exists.status.success() {
                skip_or_fail(&format!(
                    "image {image} is missing: run scripts/image --testapp"
                ));
                return None;
            }
        }
        Some(podman)
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        // conmon, which podman starts in its own working directory, marks an OOM kill by
        // creating a file `oom` there: not in the repository.
        cmd.env("CONTAINERS_CONF", CONF)
            .current_dir(std::env::temp_dir());
        cmd
    }

    /// Runs podman with `args` to completion (within `PODMAN_TIMEOUT`).
    pub fn run(&self, args: &[&str]) -> Output {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn podman");
        let deadline = Instant::now() + PODMAN_TIMEOUT;
        loop {
            if child.try_wait().expect("wait for podman").is_some() {
                return child.wait_with_output().expect("podman output");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("podman {args:?} took more than {PODMAN_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// As `run`, failing the test unless podman succeeds; returns its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// Where the pod's network is, and how the node reaches it.
#[derive(Clone, Debug)]
pub struct PodNet {
    /// The pod's IP (the pod end of the veth).
    pub ip: String,
    /// The node's end of the veth, in the test's own network namespace.
    pub host_ip: String,
    subnet: u8,
}

impl PodNet {
    /// A subnet of 10.232.0.0/16 of its own for each pod of this test process.
    pub fn next() -> PodNet {
        static N: AtomicUsize = AtomicUsize::new(0);
        let subnet = (std::process::id() as usize * 7 + N.fetch_add(1, Ordering::SeqCst)) % 250 + 1;
        PodNet {
            ip: format!("10.232.{subnet}.2"),
            host_ip: format!("10.232.{subnet}.1"),
            subnet: subnet as u8,
        }
    }
}

/// The API server the pod's containers reach in-cluster.
pub struct ApiAccess {
    pub api: FakeApi,
    pub ca_pem: String,
    /// The runner reports each container's ID in the pod status once it runs, as the kubelet
    /// does; off for a test that plays that part itself, to see the time before.
    pub report_ids: bool,
}

/// One container as the runner started it.
#[derive(Clone, Debug)]
pub struct Started {
    pub name: String,
    pub podman: String,
    pub native_sidecar: bool,
    pub init: bool,
    spec: Value,
}

/// What the kubelet loop saw and did.
#[derive(Debug, Default)]
pub struct KubeletLog {
    /// Readiness of the sidecar (its readinessProbe), at each change.
    pub ready: Vec<(Instant, bool)>,
    /// Restarts done: container, exit code, OOMKilled.
    pub restarts: Vec<(String, i64, bool)>,
}

pub struct RunningPod {
    pub podman: Podman,
    pub name: String,
    pub net: PodNet,
    pub pod: Value,
    pub facts: PodFacts,
    pub containers: Vec<Started>,
    pub kubelet: Arc<Mutex<KubeletLog>>,
    ns: String,
    veth: String,
    dir: tempdir::Dir,
    stop: Arc<AtomicBool>,
    loop_thread: Option<std::thread::JoinHandle<()>>,
    /// Set while the runner terminates the pod: exited containers are not restarted then.
    terminating: Arc<AtomicBool>,
}

impl RunningPod {
    /// Runs `pod` (as the API server would store it, after admission). `api`: the API server the
    /// containers get a token and `KUBERNETES_SERVICE_*` for, and whose copy of the pod the
    /// kubelet loop keeps up to date.
    pub fn start(
        podman: &Podman,
        pod: &Value,
        net: PodNet,
        api: Option<Arc<ApiAccess>>,
    ) -> RunningPod {
        let mut facts = PodFacts::of(pod, &net.ip);
        // The node as the pod reaches it (`status.hostIP`): the host's end of the veth.
        facts.host_ip = net.host_ip.clone();
        let name = format!("sw-{}-{}", std::process::id(), net.subnet);
        let spec = &pod["spec"];
        let dir = tempdir::Dir::new();
        let share_pid = spec["shareProcessNamespace"] == true;
        let share = if share_pid {
            "net,ipc,uts,pid"
        } else {
            "net,ipc,uts"
        };
        podman.ok(&[
            "pod",
            "create",
            "--name",
            &name,
            "--network",
            "none",
            "--share",
            share,
        ]);
        podman.ok(&["pod", "start", &name]);
        let infra = podman.ok(&["pod", "inspect", &name, "--format", "{{.InfraContainerID}}"]);
        let infra_pid = podman.ok(&["inspect", &infra, "--format", "{{.State.Pid}}"]);
        let ns = format!("{name}-ns");
        let veth = format!("swv{}h{}", std::process::id() % 10_000, net.subnet);
        let peer = format!("swv{}p{}", std::process::id() % 10_000, net.subnet);
        for args in [
            vec!["netns", "attach", ns.as_str(), infra_pid.as_str()],
            vec![
                "link",
                "add",
                veth.as_str(),
                "type",
                "veth",
                "peer",
                "name",
                peer.as_str(),
            ],
            vec!["link", "set", peer.as_str(), "netns", ns.as_str()],
        ] {
            assert!(netns::ip(&args), "ip {args:?}");
        }
        let host_cidr = format!("{}/24", net.host_ip);
        let pod_cidr = format!("{}/24", net.ip);
        for args in [
            vec!["addr", "add", host_cidr.as_str(), "dev", veth.as_str()],
            vec!["link", "set", veth.as_str(), "up"],
            vec![
                "-n",
                ns.as_str(),
                "addr",
                "add",
                pod_cidr.as_str(),
                "dev",
                peer.as_str(),
            ],
            vec!["-n", ns.as_str(), "link", "set", peer.as_str(), "up"],
        ] {
            assert!(netns::ip(&args), "ip {args:?}");
        }
        let mut running = RunningPod {
            podman: podman.clone(),
            name,
            net,
            pod: pod.clone(),
            facts,
            containers: Vec::new(),
            kubelet: Arc::new(Mutex::new(KubeletLog::default())),
            ns,
            veth,
            dir,
            stop: Arc::new(AtomicBool::new(false)),
            loop_thread: None,
            terminating: Arc::new(AtomicBool::new(false)),
        };
        let volumes = running.volumes(api.as_deref());
        let list = |key: &str| spec[key].as_array().cloned().unwrap_or_default();
        for c in list("initContainers") {
            let native = c["restartPolicy"] == "Always";
            let started = running.run_container(&c, &volumes, api.as_deref(), true, native);
            if !native {
                let code = podman.ok(&["wait", &started.podman]);
                assert_eq!(code, "0", "init container {} failed", started.name);
            }
            running.report_id(&started, api.as_deref());
            running.containers.push(started);
        }
        for c in list("containers") {
            let started = running.run_container(&c, &volumes, api.as_deref(), false, false);
            running.report_id(&started, api.as_deref());
            running.containers.push(started);
        }
        running.spawn_kubelet(api);
        running
    }

    /// The kubelet's report of a container's runtime ID in the pod's status, which a node agent
    /// finds its cgroup by. The prefix is the one a containerd node reports; the agent ignores it.
    fn report_id(&self, c: &Started, api: Option<&ApiAccess>) {
        let Some(api) = api.filter(|a| a.report_ids) else {
            return;
        };
        let list = if c.init {
            "initContainerStatuses"
        } else {
            "containerStatuses"
        };
        api.api.update_pod(|pod| {
            if let Some(status) = pod["status"][list]
                .as_array_mut()
                .and_then(|l| l.iter_mut().find(|s| s["name"] == c.name.as_str()))
            {
                status["containerID"] = format!("containerd://{}", c.podman).into();
            }
        });
    }

    /// The pod's cgroup as the kubelet names it with the cgroupfs driver under cgroup v1, for
    /// the burstable QoS class (`kubepods/burstable/pod<uid>`); podman puts each container's in
    /// it as `libpod-<id>`, and its conmon's as `conmon`.
    pub fn cgroup_parent(&self) -> String {
        format!("/kubepods/burstable/pod{}", self.facts.uid)
    }

    /// The host directories of the pod's volumes (emptyDir made here, hostPath as it is), and the
    /// service-account token directory unless the pod turns it off.
    fn volumes(&self, api: Option<&ApiAccess>) -> HashMap<String, PathBuf> {
        let mut out = HashMap::new();
        for v in self.pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or_default().to_owned();
            let path = match v["hostPath"]["path"].as_str() {
                Some(host) => PathBuf::from(host),
                None if v["projected"].is_object() => self.projected(&name, &v["projected"], api),
                None => {
                    let dir = self.dir.path().join(format!("vol-{name}"));
                    std::fs::create_dir_all(&dir).unwrap();
                    // An emptyDir any of the pod's users may write, as with fsGroup.
                    set_mode(&dir, 0o777);
                    dir
                }
            };
            out.insert(name, path);
        }
        if let Some(api) = api {
            if self.pod["spec"]["automountServiceAccountToken"] != false {
                let dir = self.dir.path().join("serviceaccount");
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("token"), "a-projected-token").unwrap();
                std::fs::write(dir.join("ca.crt"), &api.ca_pem).unwrap();
                std::fs::write(dir.join("namespace"), &self.facts.namespace).unwrap();
                for f in ["token", "ca.crt", "namespace"] {
                    set_mode(&dir.join(f), 0o644);
                }
                set_mode(&dir, 0o755);
                out.insert("kube-api-access".into(), dir);
            }
        }
        out
    }

    /// A projected volume as the kubelet fills it: a service-account token, the cluster's CA
    /// from the `kube-root-ca.crt` ConfigMap, the namespace from the downward API.
    fn projected(&self, name: &str, projected: &Value, api: Option<&ApiAccess>) -> PathBuf {
        let dir = self.dir.path().join(format!("vol-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |path: &str, text: &str| {
            std::fs::write(dir.join(path), text).unwrap();
            set_mode(&dir.join(path), 0o644);
        };
        for source in projected["sources"].as_array().into_iter().flatten() {
            if let Some(path) = source["serviceAccountToken"]["path"].as_str() {
                match (source["serviceAccountToken"]["audience"].as_str(), api) {
                    (Some(audience), Some(api)) => write(path, &self.bound_token(audience, api)),
                    _ => write(path, "a-projected-token"),
                }
            }
            if source["configMap"]["name"] == "kube-root-ca.crt" {
                for item in source["configMap"]["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if let (Some(path), Some(api)) = (item["path"].as_str(), api) {
                        write(path, &api.ca_pem);
                    }
                }
            }
            for item in source["downwardAPI"]["items"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if item["fieldRef"]["fieldPath"] == "metadata.namespace" {
                    write(
                        item["path"].as_str().unwrap_or("namespace"),
                        &self.facts.namespace,
                    );
                }
            }
        }
        set_mode(&dir, 0o755);
        dir
    }

    /// A token for `audience` bound to this pod, as the API server issues one for a projected
    /// volume, and known to the (fake) API server's TokenReview from then on.
    fn bound_token(&self, audience: &str, api: &ApiAccess) -> String {
        let sa = self.pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default");
        let f = &self.facts;
        let token = format!("bound-{audience}-{}-{}", f.name, f.uid).replace('/', "_");
        let user = super::common::policy::pod_token(&f.namespace, sa, &f.name, &f.uid);
        api.api.set_token(&token, &[audience], user);
        token
    }

    /// Where the container `name` has something mounted.
    pub fn mounts(&self, name: &str) -> Vec<String> {
        let text = self.podman.ok(&[
            "inspect",
            "--format",
            "{{range .Mounts}}{{.Destination}}\n{{end}}",
            &self.container(name).podman,
        ]);
        text.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn run_container(
        &self,
        c: &Value,
        volumes: &HashMap<String, PathBuf>,
        api: Option<&ApiAccess>,
        init: bool,
        native_sidecar: bool,
    ) -> Started {
        let name = c["name"].as_str().expect("a container name").to_owned();
        let podman_name = format!("{}-{name}", self.name);
        let mut args: Vec<String> = [
            "run",
            "--detach",
            "--pull",
            "never",
            "--pod",
            &self.name,
            "--name",
            &podman_name,
        ]
        .map(str::to_owned)
        .to_vec();
        args.push(format!("--cgroup-parent={}", self.cgroup_parent()));
        let pod_sc = &self.pod["spec"]["securityContext"];
        let sc = &c["securityContext"];
        let pick = |key: &str| {
            if sc[key].is_null() {
                pod_sc[key].clone()
            } else {
                sc[key].clone()
            }
        };
        if let Some(uid) = pick("runAsUser").as_i64() {
            let gid = pick("runAsGroup").as_i64().unwrap_or(0);
            args.push(format!("--user={uid}:{gid}"));
        }
        if sc["readOnlyRootFilesystem"] == true {
            // No tmpfs on /tmp and /run: a Kubernetes container gets none either.
            args.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
        }
        for cap in sc["capabilities"]["drop"].as_array().into_iter().flatten() {
            args.push(format!("--cap-drop={}", cap.as_str().unwrap_or_default()));
        }
        for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            args.push(format!("--cap-add={}", cap.as_str().unwrap_or_default()));
        }
        if sc["allowPrivilegeEscalation"] == false {
            args.push("--security-opt=no-new-privileges".into());
        }
        if pick("seccompProfile")["type"] == "Unconfined" {
            args.push("--security-opt=seccomp=unconfined".into());
        }
        // RuntimeDefault (and unset, which the restricted level forbids): podman's default profile.
        if let Some(limit) = c["resources"]["limits"]["memory"].as_str() {
            let bytes = kubelet::quantity(limit).expect("a memory quantity") as u64;
            args.push(format!("--memory={bytes}"));
            // No swap, as on a Kubernetes node.
            args.push(format!("--memory-swap={bytes}"));
        }
        let env = kubelet::resolve_env(&self.pod, c, &self.facts).expect("the container's env");
        for (k, v) in &env {
            args.push(format!("--env={k}={v}"));
        }
        if let Some(api) = api {
            // The API server listens on every address of the node; the pod reaches it on the
            // node's end of its veth, which its certificate names.
            args.push(format!(
                "--env=KUBERNETES_SERVICE_HOST={}",
                self.net.host_ip
            ));
            args.push(format!(
                "--env=KUBERNETES_SERVICE_PORT={}",
                api.api.addr.port()
            ));
        }
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let vol = m["name"].as_str().unwrap_or_default();
            let host = volumes
                .get(vol)
                .unwrap_or_else(|| panic!("volume {vol} of container {name} is not in the pod"));
            let ro = if m["readOnly"] == true { ":ro" } else { "" };
            args.push(format!(
                "--volume={}:{}{ro}",
                host.display(),
                m["mountPath"].as_str().unwrap_or_default()
            ));
        }
        if let Some(token) = volumes.get("kube-api-access") {
            args.push(format!("--volume={}:{TOKEN_DIR}:ro", token.display()));
        }
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        let command = strings(&c["command"]);
        if !command.is_empty() {
            args.push(format!(
                "--entrypoint={}",
                serde_json::to_string(&command).unwrap()
            ));
        }
        args.push(c["image"].as_str().expect("an image").to_owned());
        args.extend(strings(&c["args"]));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = self.podman.ok(&refs);
        Started {
            name,
            podman: id,
            native_sidecar,
            init,
            spec: c.clone(),
        }
    }

    /// The kubelet's loop: every 200 ms, the sidecar's readinessProbe, and every container that
    /// exited restarted (restartPolicy Always) with its termination reported to the API server.
    fn spawn_kubelet(&mut self, api: Option<Arc<ApiAccess>>) {
        let podman = self.podman.clone();
        let containers = self.containers.clone();
        let log = self.kubelet.clone();
        let stop = self.stop.clone();
        let terminating = self.terminating.clone();
        let probe = self
            .containers
            .iter()
            .find(|c| !c.spec["readinessProbe"]["httpGet"].is_null() && c.name == "sidewatch")
            .map(|c| {
                let get = &c.spec["readinessProbe"]["httpGet"];
                format!(
                    "http://{}:{}{}",
                    self.net.ip,
                    get["port"],
                    get["path"].as_str().unwrap_or("/")
                )
            });
        let restart_always = self.pod["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or("Always")
            == "Always";
        let mut counts: HashMap<String, i64> = HashMap::new();
        let mut pids: HashMap<String, u32> = HashMap::new();
        let mut exited_at: HashMap<String, Instant> = HashMap::new();
        let handle = std::thread::spawn(move || {
            let runtime = runtime();
            let client = super::common::client();
            while !stop.load(Ordering::SeqCst) {
                if let Some(url) = &probe {
                    let answer = runtime.block_on(async {
                        client.get(url).timeout(Duration::from_secs(1)).send().await
                    });
                    let ok = answer.is_ok_and(|r| r.status().as_u16() < 400);
                    let mut log = log.lock().unwrap();
                    if log.ready.last().is_none_or(|(_, was)| *was != ok) {
                        log.ready.push((Instant::now(), ok));
                    }
                }
                if !terminating.load(Ordering::SeqCst) {
                    for c in containers.iter().filter(|c| !c.init || c.native_sidecar) {
                        let state = podman.run(&[
                            "inspect",
                            &c.podman,
                            "--format",
                            "{{.State.Status}} {{.State.ExitCode}} {{.State.OOMKilled}} {{.State.Pid}}",
                        ]);
                        let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
                        let words: Vec<&str> = state.split_whitespace().collect();
                        match words.first() {
                            Some(&"running") => {
                                if let Some(pid) = words.get(3).and_then(|p| p.parse().ok()) {
                                    pids.insert(c.name.clone(), pid);
                                }
                                exited_at.remove(&c.name);
                                continue;
                            }
                            Some(&"exited") if restart_always || c.native_sidecar => {}
                            _ => continue,
                        }
                        // The kubelet notices an exit at its next relist (about a second) and
                        // then restarts: a gap a probe sees.
                        let since = *exited_at.entry(c.name.clone()).or_insert_with(Instant::now);
                        if since.elapsed() < Duration::from_secs(2) {
                            continue;
                        }
                        let code: i64 = words.get(1).and_then(|w| w.parse().ok()).unwrap_or(-1);
                        let oom = words.get(2) == Some(&"true")
                            || (code == 137
                                && pids
                                    .get(&c.name)
                                    .is_some_and(|pid| oom_killed(*pid, &c.podman)));
                        let _ = podman.run(&["start", &c.podman]);
                        exited_at.remove(&c.name);
                        let count = counts.entry(c.name.clone()).or_insert(0);
                        *count += 1;
                        log.lock()
                            .unwrap()
                            .restarts
                            .push((c.name.clone(), code, oom));
                        if let Some(api) = &api {
                            report_restart(&api.api, c, *count, code, oom);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        self.loop_thread = Some(handle);
    }

    /// The container named `name` of the pod.
    pub fn container(&self, name: &str) -> &Started {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    pub fn logs(&self, name: &str) -> String {
        let out = self.podman.run(&["logs", &self.container(name).podman]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The PID, on the host, of a container's main process (0 when it is not running).
    pub fn pid(&self, name: &str) -> u32 {
        let pid = self.podman.ok(&[
            "inspect",
            &self.container(name).podman,
            "--format",
            "{{.State.Pid}}",
        ]);
        pid.parse().unwrap_or(0)
    }

    /// Deletes the pod as the kubelet does: each app container's preStop hook (an httpGet sent
    /// from the node), then SIGTERM, then SIGKILL at the end of the grace period; the native
    /// sidecars the same once every app container has exited. Returns each container's exit
    /// code and how long after the deletion it exited, in the order they exited.
    pub fn terminate(&mut self) -> Vec<(String, i64, Duration)> {
        self.terminating.store(true, Ordering::SeqCst);
        let deleted = Instant::now();
        let grace = Duration::from_secs(
            self.pod["spec"]["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(30),
        );
        let apps: Vec<Started> = self
            .containers
            .iter()
            .filter(|c| !c.init)
            .cloned()
            .collect();
        let sidecars: Vec<Started> = self
            .containers
            .iter()
            .filter(|c| c.native_sidecar)
            .rev()
            .cloned()
            .collect();
        let mut exits = Vec::new();
        for group in [apps, sidecars] {
            let handles: Vec<_> = group
                .into_iter()
                .map(|c| {
                    let podman = self.podman.clone();
                    let ip = self.net.ip.clone();
                    std::thread::spawn(move || {
                        let left = grace.saturating_sub(deleted.elapsed());
                        run_pre_stop(&c.spec, &ip, left);
                        let left = grace.saturating_sub(deleted.elapsed()).as_secs().max(1);
                        // SIGTERM, then SIGKILL after what is left of the grace period.
                        podman.ok(&["stop", "--time", &left.to_string(), &c.podman]);
                        let code =
                            podman.ok(&["inspect", &c.podman, "--format", "{{.State.ExitCode}}"]);
                        (
                            c.name.clone(),
                            code.parse().unwrap_or(-1),
                            deleted.elapsed(),
                        )
                    })
                })
                .collect();
            for h in handles {
                exits.push(h.join().expect("a terminating container's thread"));
            }
        }
        exits.sort_by_key(|(_, _, at)| *at);
        exits
    }
}

/// Whether the kernel's OOM killer killed `pid`, the main process of container `id`, by the
/// kernel's log: podman with runc on cgroup v1 does not tell (its State.OOMKilled stays false),
/// while a kubelet's runtime would.
fn oom_killed(pid: u32, id: &str) -> bool {
    let Ok(out) = Command::new("dmesg").output_within(COMMAND_WITHIN) else {
        return false;
    };
    let log = String::from_utf8_lossy(&out.stdout);
    log.lines()
        .any(|l| l.contains("oom-kill:") && l.contains(id) && l.contains(&format!("pid={pid},")))
}

/// The preStop hook, as the kubelet runs an httpGet one: from the node, to the pod's IP unless it
/// names a host, bounded by the grace period.
fn run_pre_stop(spec: &Value, pod_ip: &str, within: Duration) {
    let get = &spec["lifecycle"]["preStop"]["httpGet"];
    if get.is_null() {
        return;
    }
    let host = get["host"].as_str().unwrap_or(pod_ip);
    let url = format!(
        "http://{host}:{}{}",
        get["port"],
        get["path"].as_str().unwrap_or("/")
    );
    let mut request = super::common::client()
        .get(&url)
        .timeout(within.max(Duration::from_secs(1)));
    for h in get["httpHeaders"].as_array().into_iter().flatten() {
        request = request.header(
            h["name"].as_str().unwrap_or_default(),
            h["value"].as_str().unwrap_or_default(),
        );
    }
    let _ = runtime().block_on(async { request.send().await });
}

/// A runtime for a thread of the runner's own (the kubelet loop, a container's termination).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The kubelet's report of a restart: the container's count and its last termination.
fn report_restart(api: &FakeApi, c: &Started, count: i64, code: i64, oom: bool) {
    let reason = if oom {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let finished = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let list = if c.native_sidecar {
        "initContainerStatuses"
    } else {
        "containerStatuses"
    };
    let name = c.name.clone();
    api.update_pod(|pod| {
        if let Some(status) = pod["status"][list]
            .as_array_mut()
            .and_then(|l| l.iter_mut().find(|s| s["name"] == name))
        {
            status["restartCount"] = count.into();
            status["lastState"] = json!({"terminated": {"exitCode": code, "reason": reason,
                "finishedAt": finished}});
            status["state"] = json!({"running": {"startedAt": finished}});
        }
    });
}

/// The pod as the API server stores it once the kubelet runs it: named, with a uid, and a
/// status listing every container running.
pub fn api_object(pod: &Value, facts: &PodFacts) -> Value {
    let mut pod = pod.clone();
    pod["metadata"]["name"] = facts.name.clone().into();
    pod["metadata"]["namespace"] = facts.namespace.clone().into();
    pod["metadata"]["uid"] = facts.uid.clone().into();
    // Scheduled: a node agent serves only the pods of its own node.
    pod["spec"]["nodeName"] = facts.node.clone().into();
    let statuses = |key: &str| -> Value {
        pod["spec"][key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": true,
                    "restartCount": 0, "state": {"running": {"startedAt": "2026-12-01T00:00:00Z"}}})
            })
            .collect::<Vec<_>>()
            .into()
    };
    pod["status"] = json!({"phase": "Running", "podIP": facts.ip, "hostIP": facts.host_ip,
        "conditions": [{"type": "Ready", "status": "True"}],
        "initContainerStatuses": statuses("initContainers"),
        "containerStatuses": statuses("containers")});
    pod
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.loop_thread.take() {
            let _ = t.join();
        }
        let _ = self
            .podman
            .run(&["pod", "rm", "--force", "--time", "0", &self.name]);
        // The host's end takes the pod's with it.
        netns::ip(&["link", "del", &self.veth]);
        netns::ip(&["netns", "del", &self.ns]);
        remove_cgroup_parent(&self.cgroup_parent());
    }
}

/// The pod's cgroup (and the kubelet's above it) in every v1 hierarchy, once empty: podman
/// removes its containers' but leaves conmon's and the parents. Another pod of this test
/// process may still use them (the same uid): then rmdir fails and they stay for it.
fn remove_cgroup_parent(parent: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let relative = parent.trim_start_matches('/');
    for h in hierarchies.flatten() {
        let mut dirs = vec![h.path().join(relative).join("conmon")];
        let mut dir = h.path().join(relative);
        while dir != h.path() {
            dirs.push(dir.clone());
            dir.pop();
        }
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}
