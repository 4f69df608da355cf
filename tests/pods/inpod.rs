//! The `proc` memory source without `process.match`, in real containers (podman and runc, the
//! pod runner of `tests/common/pod.rs`): a pod sharing its process namespace with two app-like
//! containers (busybox, FROM scratch, one holding ~60 MiB, the other ~5 MiB) and the sidecar from
//! the image, the API server the fake one, its pod status naming each container by
//! `containerd://<podman id>`. The sidecar must watch the container the config names (by its ID
//! in the pod status, not as "the other container", which is ambiguous here), follow it to a new
//! ID when it is replaced, and see its main process die at once, with the memory interval at 5 s.
//!
//! The sidewatch image is `localhost/sidewatch:dev` (`scripts/image`), or the one named by
//! `TEST_SIDEWATCH_IMAGE`; the busybox image is built here from the host's static busybox.

#[allow(unused_imports)]
use crate::{common, fake_api, kubelet, netns, pki, pod};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, skip_or_fail};
use fake_api::FakeApi;
use pod::{ApiAccess, PodNet, Podman, RunningPod, SIDEWATCH_IMAGE};
use serde_json::{json, Value};

const BUSYBOX_IMAGE: &str = "localhost/sidewatch-busybox:dev";
const WITHIN: Duration = Duration::from_secs(30);
const INTERVAL: Duration = Duration::from_secs(5);
const MIB: f64 = (1 << 20) as f64;

/// A shell holding `mib` MiB in a variable (its RSS), with a `sleep` child: two processes.
fn holder(mib: u64) -> Vec<String> {
    let bytes = mib << 20;
    let script = format!(
        "x=$(/bin/busybox head -c {bytes} /dev/zero | /bin/busybox tr '\\0' a); \
         while :; do /bin/busybox sleep 3600; done"
    );
    ["/bin/busybox", "sh", "-c", &script]
        .map(str::to_owned)
        .to_vec()
}

/// An image of the host's static busybox alone, FROM scratch; `None` when there is none.
fn busybox_image(podman: &Podman) -> Option<()> {
    if podman
        .run(&["image", "exists", BUSYBOX_IMAGE])
        .status
        .success()
    {
        return Some(());
    }
    let Some(busybox) = common::which("busybox") else {
        skip_or_fail("no busybox on this host to build the app containers' image from");
        return None;
    };
    let dir = common::tempdir::Dir::new();
    std::fs::copy(busybox, dir.path().join("busybox")).unwrap();
    std::fs::write(
        dir.path().join("Containerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\n",
    )
    .unwrap();
    let context = dir.path().to_str().unwrap();
    podman.ok(&["build", "--quiet", "-t", BUSYBOX_IMAGE, context]);
    Some(())
}

/// Two app-like containers, the small one first ("the first container that is not sidewatch"
/// would be wrong), and sidewatch with `memory.source: proc`, `kubernetes.app_container: big`
/// and `env` besides.
fn the_pod(image: &str, env: &[Value]) -> Value {
    let app = |name: &str, mib: u64| {
        json!({"name": name, "image": BUSYBOX_IMAGE, "command": holder(mib),
            "resources": {"limits": {"memory": "128Mi"}}})
    };
    let mut all = vec![
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
        json!({"name": "CONTAINER_NAME", "value": "sidewatch"}),
        json!({"name": "SIDEWATCH_KUBERNETES_APP_CONTAINER", "value": "big"}),
        json!({"name": "SIDEWATCH_MEMORY_SOURCE", "value": "proc"}),
    ];
    all.extend_from_slice(env);
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "inpod-1", "namespace": "shop"},
        "spec": {
            "shareProcessNamespace": true,
            "terminationGracePeriodSeconds": 2,
            "containers": [app("small", 5), app("big", 60),
                {"name": "sidewatch", "image": image, "env": all,
                 "readinessProbe": {"httpGet": {"path": "/readyz", "port": 9102}},
                 "securityContext": {"runAsUser": 65532, "runAsGroup": 65532,
                    "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]}}}]}})
}

fn image() -> String {
    std::env::var("TEST_SIDEWATCH_IMAGE").unwrap_or_else(|_| SIDEWATCH_IMAGE.into())
}

/// Names the container `name` in the pod status by `id`, as the kubelet does once it runs.
fn report_id(api: &FakeApi, name: &str, id: &str, restarts: i64) {
    let name = name.to_owned();
    let id = format!("containerd://{id}");
    api.update_pod(move |pod| {
        for s in pod["status"]["containerStatuses"].as_array_mut().unwrap() {
            if s["name"] == name {
                s["containerID"] = id.clone().into();
                s["restartCount"] = restarts.into();
            }
        }
    });
}

struct Pod {
    pod: RunningPod,
    client: reqwest::Client,
}

impl Pod {
    async fn metric(&self, series: &str) -> Option<f64> {
        let url = format!("http://{}:9102/metrics", self.pod.net.ip);
        let resp = self.client.get(url).send().await.ok()?;
        common::sample(&resp.text().await.ok()?, series)
    }

    async fn usage(&self) -> Option<f64> {
        self.metric("sidewatch_memory_usage_bytes").await
    }

    async fn wait_usage(&self, what: &str, range: std::ops::Range<f64>) -> f64 {
        let found = eventually(what, WITHIN, || async {
            self.usage().await.filter(|u| range.contains(&(u / MIB)))
        })
        .await;
        found / MIB
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_named_app_container_is_watched_by_its_id_and_followed_to_its_next() {
    let Some(podman) = Podman::get() else { return };
    if busybox_image(&podman).is_none() {
        return;
    }
    let spec = the_pod(
        &image(),
        &[
            json!({"name": "SIDEWATCH_KUBERNETES_ENABLED", "value": "true"}),
            json!({"name": "SIDEWATCH_MEMORY_INTERVAL", "value": "5s"}),
        ],
    );
    let net = PodNet::next();
    let facts = kubelet::PodFacts::of(&spec, &net.ip);
    let pki = pki::Pki::new();
    let tls = pki.leaf_for(&[&net.host_ip]).acceptor(&[]);
    let object = pod::api_object(&spec, &facts);
    let api = FakeApi::start_tls("0.0.0.0:0".parse().unwrap(), object, tls).await;
    let api = Arc::new(ApiAccess {
        api,
        ca_pem: pki.ca_pem(),
        // The test reports the IDs itself, to see the time before the kubelet has.
        report_ids: false,
    });
    let running =
        tokio::task::block_in_place(|| RunningPod::start(&podman, &spec, net, Some(api.clone())));
    let p = Pod {
        pod: running,
        client: common::client(),
    };

    // Before the status names an ID, two other containers: nothing to watch, said once.
    eventually("the sidecar's /metrics", WITHIN, || async {
        p.metric(r#"sidewatch_memory_source{source="none"}"#)
            .await
            .filter(|v| *v == 1.0)
    })
    .await;
    eventually("the log saying why nothing is watched", WITHIN, || async {
        let logs = p.pod.logs("sidewatch");
        logs.contains("several other containers").then_some(())
    })
    .await;

    for name in ["small", "big"] {
        let id = p.pod.container(name).podman.clone();
        report_id(&api.api, name, &id, 0);
    }
    let big = p
        .wait_usage("the big container's RSS (~60 MiB)", 55.0..100.0)
        .await;
    let proc = r#"sidewatch_memory_source{source="proc"}"#;
    assert_eq!(p.metric(proc).await, Some(1.0));
    // The limit from the pod spec, through the pod watch: no SIDEWATCH_MEMORY_LIMIT is set.
    let limit = p.metric("sidewatch_memory_limit_bytes").await;
    assert_eq!(limit, Some((128u64 << 20) as f64));
    eprintln!("watching the big container: {big:.1} MiB");

    // The kubelet replaces the container (a new ID) while the old one still runs: the sidecar
    // follows the ID, not the memory.
    let next_name = format!("{}-big2", p.pod.name);
    let mut args = vec![
        "run",
        "--detach",
        "--pull",
        "never",
        "--pod",
        &p.pod.name,
        "--name",
        &next_name,
        "--entrypoint",
        "/bin/busybox",
        BUSYBOX_IMAGE,
    ];
    let command = holder(30);
    args.extend(command[1..].iter().map(String::as_str));
    let next = p.pod.podman.ok(&args);
    report_id(&api.api, "big", &next, 1);
    let followed = p
        .wait_usage("the next big container's RSS (~30 MiB)", 25.0..50.0)
        .await;
    eprintln!("followed to the next container: {followed:.1} MiB");
    p.pod.podman.ok(&[
        "rm",
        "--force",
        "--time",
        "0",
        &p.pod.container("big").podman,
    ]);

    // Its main process killed: seen through the pidfd, before the next 5 s tick.
    let pid = p
        .pod
        .podman
        .ok(&["inspect", &next, "--format", "{{.State.Pid}}"]);
    let pid: i32 = pid.parse().unwrap();
    let killed = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let seen = p
        .wait_usage("the usage after the main process's kill", 0.0..10.0)
        .await;
    let after = killed.elapsed();
    eprintln!(
        "the kill seen after {after:?} ({seen:.1} MiB left), the interval being {INTERVAL:?}"
    );
    assert!(
        after < INTERVAL,
        "seen after {after:?}: at a tick, not at once"
    );
    let logs = p.pod.logs("sidewatch");
    assert!(
        logs.contains("main process exited"),
        "no exit in the log:\n{logs}"
    );
    let watching = format!("container=\"{next}\"");
    assert!(
        logs.contains(&watching),
        "the next container never named:\n{logs}"
    );

    // An OOM kill is the pod watch's to report for this source (RSS sees no kills): still so.
    api.api.update_pod(|pod| {
        let big = &mut pod["status"]["containerStatuses"][1];
        big["restartCount"] = 2.into();
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        big["lastState"] =
            json!({"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": now}});
    });
    let url = format!("http://{}:9102/readyz", p.pod.net.ip);
    eventually("/readyz saying oom_killed", WITHIN, || async {
        let body = p.client.get(&url).send().await.ok()?.text().await.ok()?;
        body.contains("\"oom_killed\"").then_some(())
    })
    .await;
    p.pod.podman.ok(&["rm", "--force", "--time", "0", &next]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_pod_watch_only_a_lone_other_container_is_the_app() {
    let Some(podman) = Podman::get() else { return };
    if busybox_image(&podman).is_none() {
        return;
    }
    let limit = json!({"name": "SIDEWATCH_MEMORY_LIMIT", "valueFrom":
        {"resourceFieldRef": {"containerName": "big", "resource": "limits.memory"}}});
    let spec = the_pod(
        &image(),
        &[
            json!({"name": "SIDEWATCH_KUBERNETES_ENABLED", "value": "false"}),
            json!({"name": "SIDEWATCH_MEMORY_INTERVAL", "value": "250ms"}),
            limit,
        ],
    );
    let running =
        tokio::task::block_in_place(|| RunningPod::start(&podman, &spec, PodNet::next(), None));
    let p = Pod {
        pod: running,
        client: common::client(),
    };
    // Two other containers and no pod watch to say which is the app: none, and why, once.
    eventually("the sidecar's /metrics", WITHIN, || async {
        p.metric(r#"sidewatch_memory_source{source="none"}"#)
            .await
            .filter(|v| *v == 1.0)
    })
    .await;
    eventually("the log saying why nothing is watched", WITHIN, || async {
        let logs = p.pod.logs("sidewatch");
        logs.contains("without the pod watch").then_some(())
    })
    .await;
    // The small one gone, the big one is the only other container: it is the app.
    p.pod.podman.ok(&[
        "rm",
        "--force",
        "--time",
        "0",
        &p.pod.container("small").podman,
    ]);
    let big = p
        .wait_usage("the big container's RSS (~60 MiB)", 55.0..100.0)
        .await;
    eprintln!("watching the lone other container: {big:.1} MiB");
    let proc = r#"sidewatch_memory_source{source="proc"}"#;
    assert_eq!(p.metric(proc).await, Some(1.0));
    let limit = p.metric("sidewatch_memory_limit_bytes").await;
    assert_eq!(
        limit,
        Some((128u64 << 20) as f64),
        "the downward API's limit"
    );
}
