//! The node source's alerts in a real Prometheus (as tests/metrics/prometheus.rs does for the rest), with
//! the chart's rules loaded and every `for:` shortened: real node agents (`sidewatch node`) over
//! real v1 memory cgroups laid out as the kubelet lays them out, the fake API server answering
//! their TokenReviews and GETs of pods, and real sidecars (`sidewatch run`, memory source `node`)
//! streaming through them. Scraped as the chart's PodMonitors label them: the agents as job
//! `sidewatch-node` in the release's namespace, the sidecars as job `sidewatch` in the app's.
//!
//! - `agent-busy-refusing` (`--max-streams 1`) streams pod A's memory to `node-ok`, refuses
//!   `node-liar` (pod A's token, asking for pod B: 403) and turns `node-busy` (pod B) away at
//!   its cap (429): SidewatchNodeAgentRefusingSidecars and SidewatchNodeAgentAtCapacity on it,
//!   SidewatchMemorySignalsBlind on the two sidecars.
//! - `agent-cut-off`, whose API server is down, cannot check `node-unchecked`'s token (503):
//!   SidewatchNodeAgentCannotCheckTokens on it, SidewatchMemorySignalsBlind on the sidecar.
//! - `agent-healthy` streams pod B's memory to `node-b-ok`: neither raises anything, nor does
//!   `node-ok`, while the others fire.

#[allow(unused_imports)]
use crate::{common, fake_api, prom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cgroup::Cgroup;
use common::{eventually, healthy, policy, tempdir, Sidewatch, Upstream};
use fake_api::FakeApi;
use prom::{has, short_rules, Job, Prometheus};
use serde_json::{json, Value};
use sidewatch::memory::wire::AUDIENCE;

const WITHIN: Duration = Duration::from_secs(120);
const NODE: &str = "node-a";
const UID_A: &str = "0a0a0a0a-2222-4222-8333-444444444444";
const UID_B: &str = "0b0b0b0b-2222-4222-8333-444444444444";
const ID_A: &str = "aaaa0002";
const ID_B: &str = "bbbb0002";

/// Directories made inside a cgroup, removed deepest first on drop (before the cgroup itself:
/// declare it after, and one sharing a prefix with another after that one).
struct Nested(Vec<PathBuf>);

impl Nested {
    fn make(root: &Path, relative: &str, limit: u64) -> Nested {
        let mut made = Vec::new();
        let mut path = root.to_owned();
        for part in relative.split('/') {
            path.push(part);
            if !path.exists() {
                std::fs::create_dir(&path)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
                made.push(path.clone());
            }
        }
        std::fs::write(path.join("memory.limit_in_bytes"), limit.to_string()).unwrap();
        Nested(made)
    }
}

impl Drop for Nested {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A pod on this node with its app container `app` running as `containerd://<id>`.
fn pod(name: &str, uid: &str, id: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": uid},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "example/app"}]},
        "status": {"phase": "Running",
            "containerStatuses": [{"name": "app", "image": "a", "imageID": "", "ready": true,
                "restartCount": 0, "containerID": format!("containerd://{id}"), "state": {"running": {}}}]}
    })
}

/// The fake API server with pods A and B on this node and each one's token for the agents.
async fn api() -> FakeApi {
    let api = FakeApi::start(pod("web-a", UID_A, ID_A)).await;
    api.add_pod(pod("web-b", UID_B, ID_B));
    for (token, name, uid) in [("token-a", "web-a", UID_A), ("token-b", "web-b", UID_B)] {
        api.set_token(
            token,
            &[AUDIENCE],
            policy::pod_token("shop", "default", name, uid),
        );
    }
    api
}

fn agent(root: &Path, kubeconfig: &Path, max_streams: &str) -> Sidewatch {
    let args = [
        "node",
        "--listen",
        "127.0.0.1:0",
        "--cgroup-root",
        root.to_str().unwrap(),
        "--node-name",
        NODE,
        "--max-streams",
        max_streams,
    ];
    Sidewatch::launch(None, &args, &[("KUBECONFIG", kubeconfig.to_str().unwrap())])
}

/// A sidecar of `pod` (memory source `node`) that sends `token` to `agent`.
fn sidecar(agent: &Sidewatch, dir: &Path, app: &Upstream, pod: &str, token: &str) -> Sidewatch {
    let token_file = dir.join(format!("token-of-{pod}-{token}"));
    let node = common::node_source(&agent.url(""), &token_file, token);
    let url = app.url();
    let args = [
        "run",
        "--target",
        &url,
        "--interval",
        "200ms",
        "--listen",
        "127.0.0.1:0",
    ];
    let env = [
        ("POD_NAME", pod),
        ("POD_NAMESPACE", "shop"),
        ("SIDEWATCH_KUBERNETES_ENABLED", "false"),
        ("SIDEWATCH_KUBERNETES_APP_CONTAINER", "app"),
        ("SIDEWATCH_DRAIN_PASSIVE_OPENS", "false"),
        ("SIDEWATCH_MEMORY_SOURCE", "node"),
        ("SIDEWATCH_MEMORY_NODE", &node),
    ];
    Sidewatch::launch(None, &args, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_agents_alerts_and_a_blind_sidecars_fire_in_a_real_prometheus() {
    let Some(rules) = short_rules() else { return };
    if common::which("prometheus").is_none() {
        common::skip_or_fail("prometheus is not installed (scripts/install-test-tools)");
        return;
    }
    let Some(tree) = Cgroup::create("sidewatch-prom-node", 1 << 30) else {
        return;
    };
    let _a = Nested::make(
        tree.path(),
        &format!("kubepods/burstable/pod{UID_A}/{ID_A}"),
        64 << 20,
    );
    let _b = Nested::make(
        tree.path(),
        &format!("kubepods/burstable/pod{UID_B}/{ID_B}"),
        96 << 20,
    );
    let dir = tempdir::Dir::new();
    let up = api().await;
    let down = api().await;
    let (good, cut) = (dir.path().join("good"), dir.path().join("cut"));
    std::fs::create_dir_all(&good).unwrap();
    std::fs::create_dir_all(&cut).unwrap();
    let busy = agent(tree.path(), &up.kubeconfig(&good), "1");
    let healthy_agent = agent(tree.path(), &up.kubeconfig(&good), "256");
    let cut_off = agent(tree.path(), &down.kubeconfig(&cut), "256");
    down.set_down(true);
    let app = Upstream::start(healthy()).await;

    // node-ok holds busy's one stream before the others ask.
    let ok = sidecar(&busy, dir.path(), &app, "web-a", "token-a");
    busy.wait_metric_at_least("sidewatch_node_streams", 1.0)
        .await;
    let liar = sidecar(&busy, dir.path(), &app, "web-b", "token-a");
    let turned_away = sidecar(&busy, dir.path(), &app, "web-b", "token-b");
    let unchecked = sidecar(&cut_off, dir.path(), &app, "web-a", "token-a");
    let b_ok = sidecar(&healthy_agent, dir.path(), &app, "web-b", "token-b");

    let agents = [
        (busy.addr.to_string(), "agent-busy-refusing"),
        (cut_off.addr.to_string(), "agent-cut-off"),
        (healthy_agent.addr.to_string(), "agent-healthy"),
    ];
    let sidecars = [
        (ok.addr.to_string(), "node-ok"),
        (liar.addr.to_string(), "node-liar"),
        (turned_away.addr.to_string(), "node-busy"),
        (unchecked.addr.to_string(), "node-unchecked"),
        (b_ok.addr.to_string(), "node-b-ok"),
    ];
    let jobs = [
        Job {
            name: "sidewatch-node",
            namespace: "sidewatch",
            targets: &agents,
        },
        Job {
            name: "sidewatch",
            namespace: "shop",
            targets: &sidecars,
        },
    ];
    let Some(prometheus) = Prometheus::start_jobs(&jobs, &rules) else {
        return;
    };
    prometheus.wait_ready().await;
    let ready = Instant::now();

    let expected: [(&str, &[(&str, &str)]); 6] = [
        (
            "SidewatchNodeAgentRefusingSidecars",
            &[("namespace", "sidewatch"), ("pod", "agent-busy-refusing")],
        ),
        (
            "SidewatchNodeAgentAtCapacity",
            &[("namespace", "sidewatch"), ("pod", "agent-busy-refusing")],
        ),
        (
            "SidewatchNodeAgentCannotCheckTokens",
            &[("namespace", "sidewatch"), ("pod", "agent-cut-off")],
        ),
        (
            "SidewatchMemorySignalsBlind",
            &[("namespace", "shop"), ("pod", "node-liar")],
        ),
        (
            "SidewatchMemorySignalsBlind",
            &[("namespace", "shop"), ("pod", "node-busy")],
        ),
        (
            "SidewatchMemorySignalsBlind",
            &[("namespace", "shop"), ("pod", "node-unchecked")],
        ),
    ];
    let firing = eventually("every expected alert firing", WITHIN, || async {
        let firing = prometheus.firing().await;
        expected
            .iter()
            .all(|(name, labels)| has(&firing, name, labels))
            .then_some(firing)
    })
    .await;

    eprintln!(
        "every expected alert firing {:.1} s after Prometheus was ready",
        ready.elapsed().as_secs_f64()
    );

    // The healthy agent and the sidecars that stream raise nothing; each alert is there once.
    for quiet in ["agent-healthy", "node-ok", "node-b-ok"] {
        let theirs: Vec<_> = firing
            .iter()
            .filter(|a| a["labels"]["pod"] == quiet)
            .collect();
        assert!(theirs.is_empty(), "{quiet}: {theirs:#?}");
    }
    assert_eq!(firing.len(), expected.len(), "{firing:#?}");
    let capacity = firing
        .iter()
        .find(|a| a["labels"]["alertname"] == "SidewatchNodeAgentAtCapacity")
        .unwrap();
    assert_eq!(
        capacity["annotations"]["summary"],
        "the sidewatch node agent sidewatch/agent-busy-refusing turns streams away at its caps; streams open now: 1"
    );
    for alert in &firing {
        let url = alert["annotations"]["runbook_url"].as_str().unwrap_or("");
        let name = alert["labels"]["alertname"]
            .as_str()
            .unwrap()
            .to_lowercase();
        assert_eq!(url, format!("https://sidewatch.io/docs/runbooks#{name}"));
        assert_eq!(alert["labels"]["severity"], "warning", "{alert:#}");
    }

    // What the agents counted is what the alerts say, and the sidecars say why they are blind.
    assert!(outcome(&busy, "forbidden").await >= 1.0);
    assert!(outcome(&busy, "refused_busy").await >= 1.0);
    assert!(outcome(&cut_off, "unavailable").await >= 1.0);
    for (o, n) in [
        ("forbidden", 0.0),
        ("refused_busy", 0.0),
        ("unavailable", 0.0),
    ] {
        assert_eq!(outcome(&healthy_agent, o).await, n, "{o}");
    }
    assert_eq!(
        liar.metric("sidewatch_memory_read_errors_total{kind=\"node_refused\"}")
            .await
            .map(|v| v >= 1.0),
        Some(true)
    );
    assert_eq!(
        unchecked
            .metric("sidewatch_memory_read_errors_total{kind=\"node_away\"}")
            .await
            .map(|v| v >= 1.0),
        Some(true)
    );
    for sw in [&ok, &b_ok] {
        assert_eq!(sw.metric("sidewatch_memory_blind").await, Some(0.0));
    }
    drop(prometheus);
    drop((ok, liar, turned_away, unchecked, b_ok));
    drop((busy, cut_off, healthy_agent));
}

/// The agent's `sidewatch_node_requests_total` of `outcome`.
async fn outcome(agent: &Sidewatch, outcome: &str) -> f64 {
    let series = format!("sidewatch_node_requests_total{{outcome=\"{outcome}\"}}");
    agent
        .metric(&series)
        .await
        .expect("every outcome is exported from start-up")
}
