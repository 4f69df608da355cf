//! The memory source `node` assembled from the packaging, in real containers: the chart rendered
//! by real helm with `node.enabled=true`; its DaemonSet's args and env run by the real binary (as
//! the DaemonSet's user, with no capabilities, its `/host/sys/fs/cgroup` a read-only bind mount of
//! the host's `/sys/fs/cgroup` in a mount namespace of its own, on the host's network as
//! hostNetwork puts it); an app pod admitted by the real webhook with the chart's webhook args and
//! run with podman and runc (`tests/common/pod.rs`): the sidecar reaches the agent at
//! `status.hostIP` (the host's end of the pod's veth) with the projected token for the agent's
//! audience, and the agent finds the app container's cgroup where the kubelet's cgroupfs driver
//! puts a pod under cgroup v1 (`kubepods/burstable/pod<uid>/libpod-<id>`, podman's name) by the
//! container ID the pod runner reports in the pod's status. Needs root, podman, helm and the
//! images (`scripts/image --testapp`).

#[allow(unused_imports)]
use crate::{common, fake_api, kubelet, netns, pki, pod, webhook};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{chart, eventually, skip_or_fail, Sidewatch};
use fake_api::FakeApi;
use pod::{ApiAccess, PodNet, Podman, RunningPod, APP_IMAGE, SIDEWATCH_IMAGE};
use serde_json::{json, Value};
use webhook::{apply, Webhook};

const WITHIN: Duration = Duration::from_secs(30);
/// What the harness sets itself when it starts the webhook (its own addresses, certificate and
/// image); the chart's other webhook args are passed as rendered.
const HARNESS_SETS: [&str; 5] = [
    "--listen=",
    "--metrics-listen=",
    "--tls-cert=",
    "--tls-key=",
    "--image=",
];

/// The node agent's part of the chart and the webhook's args, as helm renders them with the
/// node agent on.
struct Rendered {
    /// The DaemonSet's pod, and its one container.
    agent_pod: Value,
    agent: Value,
    webhook_args: Vec<String>,
}

fn render() -> Option<Rendered> {
    let yaml = chart::render(&["--set", "node.enabled=true"])?;
    let docs = chart::documents(&yaml);
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).cloned();
    let daemonset = kind("DaemonSet").expect("node.enabled renders a DaemonSet");
    let agent_pod = json!({"metadata": {"name": "sw-node-x1", "namespace": "sidewatch"},
        "spec": daemonset["spec"]["template"]["spec"]});
    let agent = agent_pod["spec"]["containers"][0].clone();
    let deployment = kind("Deployment").expect("the chart renders the webhook's Deployment");
    let webhook_args = strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"])
        .into_iter()
        .skip(1) // the subcommand
        .filter(|a| !HARNESS_SETS.iter().any(|p| a.starts_with(p)))
        .collect();
    Some(Rendered {
        agent_pod,
        agent,
        webhook_args,
    })
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// The app's pod as a Deployment creates it, at Pod Security "restricted", with a 64 MiB limit.
fn app_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-", "namespace": "shop", "labels": {"app": "web"},
            "annotations": {"sidewatch.io/inject": "true"}},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "web", "image": APP_IMAGE,
                "ports": [{"name": "http", "containerPort": 8080}, {"name": "control", "containerPort": 8081}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                "resources": {"limits": {"memory": "64Mi"}},
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]}}}]}})
}

/// Directories made on the host for a mount point, removed (deepest first) on drop.
struct MountPoint {
    path: PathBuf,
    made: Vec<PathBuf>,
}

impl MountPoint {
    fn make(path: &Path) -> MountPoint {
        let mut made = Vec::new();
        let mut at = PathBuf::from("/");
        for part in path.components().skip(1) {
            at.push(part);
            if !at.exists() {
                std::fs::create_dir(&at).unwrap();
                made.push(at.clone());
            }
        }
        MountPoint {
            path: path.to_owned(),
            made,
        }
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The mounts a kubelet makes for the agent's container, done in a mount namespace of the
/// agent's own (gone with it): the node's tree bound at the mount path, every submount (v1's
/// hierarchies) read-only too, then the DaemonSet's user with no capabilities at all.
const AS_THE_DAEMONSET: &str = r#"set -e
at="$1"; uid="$2"; gid="$3"; shift 3
mount --rbind /sys/fs/cgroup "$at"
for m in $(findmnt -rn -o TARGET -R "$at"); do mount -o remount,bind,ro "$m"; done
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs "$@"
"#;

/// The agent as the DaemonSet runs it: its args and env as rendered (the downward API filled in
/// for node `facts.node`), KUBECONFIG standing for the in-cluster config.
struct Agent {
    rendered: Rendered,
    env: Vec<(String, String)>,
    mount: MountPoint,
    uid: String,
    gid: String,
}

impl Agent {
    fn new(rendered: Rendered, node: &str, kubeconfig: &Path) -> Option<Agent> {
        for tool in ["unshare", "setpriv", "findmnt", "mount"] {
            if common::which(tool).is_none() {
                skip_or_fail(&format!("{tool} (util-linux) is needed to run the agent"));
                return None;
            }
        }
        let mut facts = kubelet::PodFacts::of(&rendered.agent_pod, "10.0.0.1");
        facts.node = node.to_owned();
        let mut env = kubelet::resolve_env(&rendered.agent_pod, &rendered.agent, &facts)
            .expect("the DaemonSet's env");
        env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
        let mounts = rendered.agent["volumeMounts"].as_array().cloned();
        let cgroup = mounts
            .into_iter()
            .flatten()
            .find(|m| m["name"] == "cgroup")
            .expect("the DaemonSet mounts the node's cgroup tree");
        assert_eq!(cgroup["readOnly"], true);
        let mount = MountPoint::make(Path::new(cgroup["mountPath"].as_str().unwrap()));
        let sc = &rendered.agent["securityContext"];
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        let (uid, gid) = (sc["runAsUser"].to_string(), sc["runAsGroup"].to_string());
        Some(Agent {
            rendered,
            env,
            mount,
            uid,
            gid,
        })
    }

    /// The agent process runs as the DaemonSet's user with no capabilities, and sees the
    /// node's memory hierarchy read-only at the mount path.
    fn assert_confined(&self, sw: &Sidewatch) {
        let proc = PathBuf::from(format!("/proc/{}", sw.child.id()));
        let status = std::fs::read_to_string(proc.join("status")).unwrap();
        let field = |name: &str| {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace().nth(1).unwrap().to_owned()
        };
        assert_eq!(
            (field("Uid:"), field("Gid:")),
            (self.uid.clone(), self.gid.clone())
        );
        for caps in ["CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(field(caps), "0000000000000000", "{caps}");
        }
        let mounts = std::fs::read_to_string(proc.join("mountinfo")).unwrap();
        let memory = format!("{}/memory ", self.mount.path.display());
        let line = mounts.lines().find(|l| l.contains(&memory)).expect(&memory);
        let options = line.split_whitespace().nth(5).unwrap();
        assert!(options.split(',').any(|o| o == "ro"), "{line}");
    }

    fn args(&self) -> Vec<String> {
        strings(&self.rendered.agent["args"])
    }

    fn start(&self) -> Sidewatch {
        let at = self.mount.path.to_str().unwrap();
        let wrapper = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            AS_THE_DAEMONSET,
            "sidewatch-node",
            at,
            &self.uid,
            &self.gid,
        ];
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Sidewatch::launch_under(&wrapper, &args, &env)
    }
}

/// A kubeconfig for the fake API server over TLS, readable by the agent's user.
fn kubeconfig(dir: &Path, server: &str, ca_pem: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, ca_pem).unwrap();
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{server}\", certificate-authority: \"{}\"}}\nusers:\n- name: agent\n  user: {{token: agent-token}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: agent}}\ncurrent-context: fake\n",
        ca.display()
    );
    std::fs::write(&path, text).unwrap();
    for (p, mode) in [(dir, 0o755), (&ca, 0o644), (&path, 0o644)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    path
}

struct Node {
    pod: RunningPod,
    client: reqwest::Client,
}

impl Node {
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://{}:9102{path}", self.pod.net.ip);
        let resp = self
            .client
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        Some((resp.status().as_u16(), resp.text().await.ok()?))
    }

    async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await?;
        common::sample(&text, series)
    }

    /// Waits until `series` is `want`, and says how long that took.
    async fn wait_metric(&self, series: &str, want: f64) -> Duration {
        let t0 = Instant::now();
        eventually(&format!("{series} = {want}"), WITHIN, || async {
            (self.metric(series).await? == want).then_some(())
        })
        .await;
        t0.elapsed()
    }

    async fn readyz(&self) -> Option<(u16, Value)> {
        let (status, body) = self.get("/readyz").await?;
        Some((status, serde_json::from_str(&body).ok()?))
    }

    async fn wait_ready(&self) {
        eventually("/readyz 200", Duration::from_secs(60), || async {
            (self.readyz().await?.0 == 200).then_some(())
        })
        .await;
    }

    /// Waits for `reason` at `/readyz` from a signal whose name starts with `signal`.
    async fn wait_reason(&self, reason: &str, signal: &str) -> Value {
        eventually(
            &format!("/readyz {reason} from {signal}"),
            WITHIN,
            || async {
                let (status, body) = self.readyz().await?;
                let has = body["reasons"].as_array()?.iter().any(|r| {
                    r["reason"] == reason
                        && r["signal"].as_str().is_some_and(|s| s.starts_with(signal))
                });
                (status == 503 && has).then_some(body)
            },
        )
        .await
    }

    async fn app(&self, mode: &str) {
        let url = format!("http://{}:8081/mode/{mode}", self.pod.net.ip);
        let resp = self
            .client
            .post(url)
            .send()
            .await
            .expect("the app's control");
        assert!(resp.status().is_success(), "mode {mode}: {}", resp.status());
    }
}

const NODE_SOURCE: &str = "sidewatch_memory_source{source=\"node\"}";
const BLIND: &str = "sidewatch_memory_blind";
const LIMIT: &str = "sidewatch_memory_limit_bytes";
const OOM_KILLS: &str = "sidewatch_oom_kills_total";

/// The chart's agent and the injector's pod together: the sidecar reads the app container's
/// memory through the agent (its limit, not blind), sees the app OOM-killed at its limit once,
/// goes blind but stays ready while the agent is down, and sees again once the agent is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_agent_serves_the_injected_pod_its_memory_in_real_containers() {
    if !Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        skip_or_fail("no cgroup v1 memory controller at /sys/fs/cgroup/memory");
        return;
    }
    let Some(podman) = Podman::get() else { return };
    let Some(rendered) = render() else { return };
    let hook = Webhook::start_image(SIDEWATCH_IMAGE, &{
        let a: Vec<&str> = rendered.webhook_args.iter().map(String::as_str).collect();
        a
    });
    assert!(
        rendered.webhook_args.iter().any(|a| a == "--node-agent"),
        "{:?}",
        rendered.webhook_args
    );
    let response = hook.review("/mutate", &app_pod()).await;
    assert!(response["warnings"].is_null(), "{response}");
    let injected = apply(&app_pod(), &response);
    let net = PodNet::next();
    let mut facts = kubelet::PodFacts::of(&injected, &net.ip);
    facts.host_ip = net.host_ip.clone();
    let pki = pki::Pki::new();
    let tls = pki.leaf_for(&[&net.host_ip]).acceptor(&[]);
    let object = pod::api_object(&injected, &facts);
    let api = FakeApi::start_tls("0.0.0.0:0".parse().unwrap(), object, tls).await;
    let dir = common::tempdir::Dir::new();
    let server = format!("https://{}:{}", net.host_ip, api.addr.port());
    let config = kubeconfig(dir.path(), &server, &pki.ca_pem());
    let Some(agent) = Agent::new(rendered, &facts.node, &config) else {
        return;
    };
    let mut running = Some(agent.start());
    let api = Arc::new(ApiAccess {
        api,
        ca_pem: pki.ca_pem(),
        report_ids: true,
    });
    let pod = tokio::task::block_in_place(|| {
        RunningPod::start(&podman, &injected, net.clone(), Some(api.clone()))
    });
    let node = Node {
        pod,
        client: common::client(),
    };
    node.wait_ready().await;
    node.wait_metric(NODE_SOURCE, 1.0).await;
    node.wait_metric(LIMIT, (64u64 << 20) as f64).await;
    assert_eq!(node.metric(BLIND).await, Some(0.0));
    let logs = node.pod.logs("sidewatch");
    assert!(logs.contains(&net.host_ip), "{logs}");
    agent.assert_confined(running.as_ref().unwrap());
    let agent_logs = running.as_ref().unwrap().logs.lock().unwrap().join("\n");
    assert!(
        agent_logs.contains("/host/sys/fs/cgroup/memory"),
        "{agent_logs}"
    );

    // The agent stopped (its DaemonSet's pod deleted, say): blind, and still ready.
    drop(running.take());
    let blind_after = node.wait_metric(BLIND, 1.0).await;
    assert_eq!(node.readyz().await.map(|r| r.0), Some(200));
    // Back with the same args: seen again.
    running = Some(agent.start());
    let seen_after = node.wait_metric(BLIND, 0.0).await;
    node.wait_metric(LIMIT, (64u64 << 20) as f64).await;
    eprintln!(
        "blind {blind_after:?} after the agent stopped; seen {seen_after:?} after it started"
    );

    // A worker of the app past the container's limit: the kernel kills it, the app's main
    // process lives on (the kubelet sees nothing), and the agent's stream tells the sidecar.
    node.app("worker-leak/8").await;
    let t0 = Instant::now();
    let body = node.wait_reason("oom_killed", "memory").await;
    eprintln!(
        "a worker's OOM kill at /readyz {:?} after its leak began",
        t0.elapsed()
    );
    assert_eq!(node.metric(OOM_KILLS).await, Some(1.0), "{body}");
    assert!(node.pod.kubelet.lock().unwrap().restarts.is_empty());

    // The app container itself past its limit: killed whole, its cgroup removed by the runtime
    // at once and made again at the restart. The agent finds the new one; the kill is the
    // kubelet's to tell (the agent's read-only v1 mount arms no OOM notification and the
    // cgroup is gone before its next look: docs/node-agent.md).
    node.app("leak/8").await;
    let t0 = Instant::now();
    eventually(
        "the kubelet's restart of the OOM-killed app",
        WITHIN,
        || async {
            let log = node.pod.kubelet.lock().unwrap();
            let oom = log.restarts.iter().any(|(n, _, oom)| n == "web" && *oom);
            oom.then_some(())
        },
    )
    .await;
    node.wait_reason("oom_killed", "kube").await;
    eprintln!(
        "the app's OOM kill at /readyz {:?} after its leak began",
        t0.elapsed()
    );
    // The agent may have caught the kill before the runtime removed the cgroup (a race it
    // mostly loses with 250 ms looks): counted then, once.
    let kills = node.metric(OOM_KILLS).await.unwrap_or(0.0);
    assert!(kills == 1.0 || kills == 2.0, "{kills}");
    // The stream follows the container into its new cgroup: a worker killed there is seen.
    eventually("the restarted app's control port", WITHIN, || async {
        let url = format!("http://{}:8081/mode/worker-leak/8", node.pod.net.ip);
        let resp = node.client.post(url).send().await.ok()?;
        resp.status().is_success().then_some(())
    })
    .await;
    let t0 = Instant::now();
    node.wait_metric(OOM_KILLS, kills + 1.0).await;
    eprintln!(
        "the container's own kill counted {}; a worker's in the new cgroup seen {:?} after its leak began",
        kills - 1.0,
        t0.elapsed()
    );
    assert_eq!(node.metric(BLIND).await, Some(0.0));
    let agent = running.as_ref().unwrap();
    let (_, text) = agent.get("/metrics").await;
    let ok = "sidewatch_node_requests_total{outcome=\"ok\"}";
    // The restarted agent's counters: the sidecar's one stream, which followed the container
    // through its restart, and nothing refused (the token, the pod's node, its container ID).
    assert_eq!(common::sample(&text, ok), Some(1.0), "{text}");
    assert_eq!(common::sample(&text, "sidewatch_node_streams"), Some(1.0));
    for refused in ["unauthenticated", "forbidden", "not_found"] {
        let series = format!("sidewatch_node_requests_total{{outcome=\"{refused}\"}}");
        assert_eq!(common::sample(&text, &series), Some(0.0), "{text}");
    }
    drop(running);
}
