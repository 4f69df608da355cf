//! `sidewatch node`, the node agent, as a real process: real cgroup v1 directories laid out as
//! the kubelet lays them out (`kubepods/burstable/pod<uid>/<container id>`) under a tree of the
//! host's memory hierarchy, the fake API server answering TokenReviews and GETs of the pods, and
//! sidecars played by HTTP clients reading the stream. Needs root and the v1 memory controller
//! at /sys/fs/cgroup/memory.

#[allow(unused_imports)]
use crate::{common, fake_api};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{eventually, policy, skip_or_fail, Hog, Sidewatch};
use fake_api::FakeApi;
use serde_json::{json, Value};
use sidewatch::memory::wire::{Line, WireSample, AUDIENCE};

const V1_ROOT: &str = "/sys/fs/cgroup/memory";
const NODE: &str = "node-a";
const UID_A: &str = "0a0a0a0a-1111-4222-8333-444444444444";
const UID_B: &str = "0b0b0b0b-1111-4222-8333-444444444444";
const UID_C: &str = "0c0c0c0c-1111-4222-8333-444444444444";
const ID_A: &str = "aaaa0001";
const ID_B: &str = "bbbb0001";

/// A tree of real v1 memory cgroups, removed deepest first (their processes killed) on drop.
struct Tree {
    root: PathBuf,
    made: Vec<PathBuf>,
}

impl Tree {
    /// `None` (after `skip_or_fail`) without root or the v1 memory controller.
    fn new(name: &str) -> Option<Tree> {
        let base = Path::new(V1_ROOT);
        if !base.join("memory.limit_in_bytes").exists() {
            skip_or_fail("no cgroup v1 memory controller at /sys/fs/cgroup/memory");
            return None;
        }
        let root = base.join(format!("sidewatch-node-{name}-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&root) {
            skip_or_fail(&format!(
                "cannot create {} (root needed): {e}",
                root.display()
            ));
            return None;
        }
        Some(Tree {
            made: vec![root.clone()],
            root,
        })
    }

    /// Makes `relative` (and what is missing above it) with `limit` on the last directory.
    fn make(&mut self, relative: &str, limit: Option<u64>) -> PathBuf {
        let mut path = self.root.clone();
        for part in relative.split('/') {
            path.push(part);
            if !path.exists() {
                std::fs::create_dir(&path).unwrap();
                self.made.push(path.clone());
            }
        }
        if let Some(limit) = limit {
            std::fs::write(path.join("memory.limit_in_bytes"), limit.to_string()).unwrap();
            let _ = std::fs::write(path.join("memory.swappiness"), "0");
        }
        path
    }

    /// Kills what runs in `relative` and removes it, as a runtime does at a container's end.
    fn remove(&mut self, relative: &str) {
        let path = self.root.join(relative);
        remove(&path);
        self.made.retain(|p| *p != path);
    }
}

fn remove(path: &Path) {
    if let Ok(procs) = std::fs::read_to_string(path.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while path.exists() && std::fs::remove_dir(path).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5)); // a poll, not a spin
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for path in self.made.iter().rev() {
            remove(path);
        }
    }
}

/// A pod on `node` with its app container `app` running as `containerd://<id>`.
fn pod(name: &str, uid: &str, node: &str, id: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": uid},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "example/app"}]},
        "status": {"phase": "Running",
            "containerStatuses": [{"name": "app", "image": "a", "imageID": "", "ready": true,
                "restartCount": 0, "containerID": format!("containerd://{id}"), "state": {"running": {}}}]}
    })
}

/// The agent, the fake API server with pods A and B on this node and C on another, a token of
/// each for the agent's audience, and A's and B's cgroups (A: 64 MiB in a 128 MiB pod; B: 96 MiB).
struct Setup {
    agent: Sidewatch,
    /// The tree as the agent sees it, when that is a read-only bind mount.
    _mount: Option<ReadOnly>,
    api: FakeApi,
    tree: Tree,
    _dir: common::tempdir::Dir,
}

/// A read-only bind mount of a directory, as the DaemonSet mounts the node's tree; unmounted on
/// drop.
struct ReadOnly(PathBuf);

impl ReadOnly {
    /// `None` (after `skip_or_fail`) where bind mounts cannot be made.
    fn of(dir: &Path, at: &Path) -> Option<ReadOnly> {
        std::fs::create_dir_all(at).unwrap();
        let (dir, at_s) = (dir.to_str().unwrap(), at.to_str().unwrap());
        let steps: [&[&str]; 2] = [&["--bind", dir, at_s], &["-o", "remount,bind,ro", at_s]];
        for (i, args) in steps.iter().enumerate() {
            let ok = common::run_tool("mount", args).is_some_and(|o| o.status.success());
            if !ok {
                if i == 1 {
                    let _ = common::run_tool("umount", &[at_s]);
                }
                skip_or_fail(&format!(
                    "cannot mount {args:?} (root and util-linux needed)"
                ));
                return None;
            }
        }
        Some(ReadOnly(at.to_owned()))
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = common::run_tool("umount", &[self.0.to_str().unwrap()]);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The fake API server with pods A and B on this node and C on another, and a token of each for
/// the agent's audience, and A's for the API server's.
async fn api() -> FakeApi {
    let api = FakeApi::start(pod("web-a", UID_A, NODE, ID_A)).await;
    api.add_pod(pod("web-b", UID_B, NODE, ID_B));
    api.add_pod(pod("web-c", UID_C, "node-b", "cccc0001"));
    for (token, pod, uid) in [
        ("token-a", "web-a", UID_A),
        ("token-b", "web-b", UID_B),
        ("token-c", "web-c", UID_C),
    ] {
        let user = policy::pod_token("shop", "default", pod, uid);
        api.set_token(token, &[AUDIENCE], user);
    }
    let api_audience = "https://kubernetes.default.svc";
    let a = policy::pod_token("shop", "default", "web-a", UID_A);
    api.set_token("token-a-for-the-api", &[api_audience], a);
    api
}

fn launch(root: &str, interval: &str, kubeconfig: &Path) -> Sidewatch {
    let args = [
        "node",
        "--listen",
        "127.0.0.1:0",
        "--cgroup-root",
        root,
        "--node-name",
        NODE,
        "--interval",
        interval,
    ];
    Sidewatch::launch(None, &args, &[("KUBECONFIG", kubeconfig.to_str().unwrap())])
}

async fn setup(name: &str, interval: &str) -> Option<Setup> {
    setup_with(name, interval, false).await
}

async fn setup_with(name: &str, interval: &str, read_only: bool) -> Option<Setup> {
    let mut tree = Tree::new(name)?;
    tree.make(&format!("kubepods/burstable/pod{UID_A}"), Some(128 << 20));
    tree.make(
        &format!("kubepods/burstable/pod{UID_A}/{ID_A}"),
        Some(64 << 20),
    );
    tree.make(
        &format!("kubepods/burstable/pod{UID_B}/{ID_B}"),
        Some(96 << 20),
    );
    let api = api().await;
    let dir = common::tempdir::Dir::new();
    let kubeconfig = api.kubeconfig(dir.path());
    let mount = match read_only {
        true => Some(ReadOnly::of(&tree.root, &dir.path().join("cgroup"))?),
        false => None,
    };
    let root = match &mount {
        Some(m) => m.0.to_str().unwrap().to_owned(),
        None => tree.root.to_str().unwrap().to_owned(),
    };
    let agent = launch(&root, interval, &kubeconfig);
    Some(Setup {
        agent,
        _mount: mount,
        api,
        tree,
        _dir: dir,
    })
}

/// A sidecar's stream, line by line.
struct Lines {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Lines {
    /// The next line and when it came; `None` when the stream ended.
    async fn next(&mut self, within: Duration) -> Option<(Line, Instant)> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = Line::decode(&line).unwrap_or_else(|e| panic!("garbled line: {e}"));
                return Some((line, Instant::now()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.resp.chunk())
                .await
                .unwrap_or_else(|_| panic!("no line within {within:?}"))
                .expect("the stream's body");
            self.buf.extend_from_slice(&chunk?);
        }
    }

    async fn sample(&mut self, within: Duration) -> WireSample {
        match self.next(within).await {
            Some((Line::Sample(s), _)) => s,
            other => panic!("want a sample, got {other:?}"),
        }
    }
}

/// Asks for `pod`'s (and its app container's, when `container`) memory with `token`.
async fn ask(
    agent: &Sidewatch,
    token: Option<&str>,
    pod: &str,
    container: bool,
) -> reqwest::Response {
    let mut url = agent.url(&format!("/v1/memory?namespace=shop&pod={pod}"));
    if container {
        url.push_str("&container=app");
    }
    let mut req = common::client().get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.expect("ask the agent")
}

async fn stream(agent: &Sidewatch, token: &str, pod: &str) -> Lines {
    let resp = ask(agent, Some(token), pod, true).await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    Lines {
        resp,
        buf: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pod_gets_its_own_memory_and_nothing_else() {
    let Some(s) = setup("own", "200ms").await else {
        return;
    };
    let mut a = stream(&s.agent, "token-a", "web-a").await;
    let mut b = stream(&s.agent, "token-b", "web-b").await;
    let (first_a, first_b) = (
        a.sample(Duration::from_secs(5)).await,
        b.sample(Duration::from_secs(5)).await,
    );
    assert_eq!(
        first_a.limit,
        Some(64 << 20),
        "A's container limit: {first_a:?}"
    );
    assert_eq!(
        first_b.limit,
        Some(96 << 20),
        "B's container limit: {first_b:?}"
    );
    // Lines keep coming at the interval.
    let again = a.sample(Duration::from_secs(2)).await;
    assert_eq!(again.limit, Some(64 << 20));
    // Without a container: the pod's own cgroup and its limit.
    let resp = ask(&s.agent, Some("token-a"), "web-a", false).await;
    let mut pod_a = Lines {
        resp,
        buf: Vec::new(),
    };
    assert_eq!(
        pod_a.sample(Duration::from_secs(5)).await.limit,
        Some(128 << 20)
    );
    drop(pod_a);

    let refusals = [
        (Some("token-a"), "web-b", 403, "another pod's token"),
        (Some("token-c"), "web-c", 403, "a pod on another node"),
        (Some("no-such-token"), "web-a", 401, "an unknown token"),
        (
            Some("token-a-for-the-api"),
            "web-a",
            401,
            "a token for the API server's audience",
        ),
        (None, "web-a", 401, "no token"),
    ];
    for (token, pod, want, what) in refusals {
        let resp = ask(&s.agent, token, pod, true).await;
        assert_eq!(
            resp.status().as_u16(),
            want,
            "{what}: {:?}",
            resp.text().await
        );
    }

    // The per-pod cap: A has one stream open; three more, then a refusal.
    let mut more = Vec::new();
    for _ in 0..3 {
        more.push(stream(&s.agent, "token-a", "web-a").await);
    }
    let busy = ask(&s.agent, Some("token-a"), "web-a", true).await;
    assert_eq!(busy.status(), 429);
    assert!(busy.headers().contains_key("retry-after"));
    assert_eq!(s.agent.metric("sidewatch_node_streams").await, Some(5.0));

    s.api.set_down(true);
    let resp = ask(&s.agent, Some("token-b"), "web-b", true).await;
    assert_eq!(resp.status(), 503, "API down: {:?}", resp.text().await);
    s.api.set_down(false);

    let metric = |outcome: &str| format!("sidewatch_node_requests_total{{outcome=\"{outcome}\"}}");
    for (outcome, want) in [
        ("ok", 6.0),
        ("forbidden", 2.0),
        ("unauthenticated", 3.0),
        ("unavailable", 1.0),
        ("refused_busy", 1.0),
        ("not_found", 0.0),
    ] {
        assert_eq!(
            s.agent.metric(&metric(outcome)).await,
            Some(want),
            "{outcome}"
        );
    }
    assert!(
        s.agent
            .metric("sidewatch_node_lines_total")
            .await
            .unwrap_or(0.0)
            >= 5.0
    );

    // Clients that go leave no stream behind.
    drop((a, more));
    let t0 = Instant::now();
    eventually("A's streams to close", Duration::from_secs(5), || async {
        (s.agent.metric("sidewatch_node_streams").await == Some(1.0)).then_some(())
    })
    .await;
    eprintln!(
        "4 streams closed {:.0} ms after their clients went",
        t0.elapsed().as_secs_f64() * 1e3
    );
    // A stream whose client went ended normally, its notifications with it: nothing died.
    assert_eq!(s.agent.get("/livez").await, (200, "ok\n".into()));

    // SIGTERM: B's stream ends cleanly and the agent exits 0, within its stop's bound.
    let mut agent = s.agent;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(5);
    while b.next(Duration::from_secs(5)).await.is_some() {
        assert!(Instant::now() < deadline, "B's stream did not end");
    }
    assert!(agent.wait_exit(Duration::from_secs(5)).await.success());
    let took = t0.elapsed();
    eprintln!("exited {:.0} ms after SIGTERM", took.as_secs_f64() * 1e3);
    assert!(
        took < Duration::from_secs(3),
        "the stop's bound is 2 s: {took:?}"
    );
}

/// Runs a hog in A's app container until the kernel kills it, reading A's stream; returns the
/// sample that counted the kill, and how long after the stream's first line it came.
async fn oom_kill_streamed(s: &Setup) -> Option<(WireSample, Duration)> {
    let mut hog = Hog::spawn(4, 50, 1024, "node-agent-oom")?;
    let mut a = stream(&s.agent, "token-a", "web-a").await;
    let (first, tick) = match a.next(Duration::from_secs(5)).await {
        Some((Line::Sample(first), at)) => (first, at),
        other => panic!("want a sample, got {other:?}"),
    };
    let before = first.oom.map_or(0, |o| o.kills);
    let app = format!("kubepods/burstable/pod{UID_A}/{ID_A}/cgroup.procs");
    std::fs::write(s.tree.root.join(app), hog.pid().to_string()).unwrap();
    hog.go();
    let (line, at) = loop {
        match a.next(Duration::from_secs(20)).await {
            Some((Line::Sample(x), at)) if x.oom.is_some_and(|o| o.kills > before) => {
                break (x, at)
            }
            Some(_) => {}
            None => panic!("the stream ended"),
        }
    };
    // The kill is the kernel's: the hog died by SIGKILL.
    let status = eventually("the hog's death", Duration::from_secs(5), || {
        let status = hog.child.try_wait().expect("try_wait");
        async move { status }
    })
    .await;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status:?}");
    eprintln!(
        "the kill's line came {:.0} ms after the stream's first line",
        (at - tick).as_secs_f64() * 1e3
    );
    assert_eq!(line.oom.map(|o| o.kills), Some(before + 1));
    assert_eq!(line.limit, Some(64 << 20));
    Some((line, at - tick))
}

/// Polling every 5 s, the OOM kill of A's app is in a line well before the next tick: only the
/// kernel's notification (v1: the eventfd on memory.oom_control) explains it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_arrives_at_once_not_at_the_next_tick() {
    let Some(s) = setup("oom", "5s").await else {
        return;
    };
    let Some((_, after)) = oom_kill_streamed(&s).await else {
        return;
    };
    assert!(
        after < Duration::from_millis(4500),
        "the kill waited for the 5 s tick"
    );
}

/// On a read-only mount the v1 eventfd cannot be armed (it is a write): the agent says so once
/// at start-up, and the kill arrives at the next tick instead, still counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_read_only_mount_the_kill_comes_at_the_interval() {
    let Some(s) = setup_with("ro", "3s", true).await else {
        return;
    };
    s.agent.wait_log("mounted read-only").await;
    let Some((_, after)) = oom_kill_streamed(&s).await else {
        return;
    };
    assert!(
        after >= Duration::from_millis(2900),
        "a kill before the tick: {after:?}"
    );
    let said = s
        .agent
        .logs()
        .iter()
        .filter(|l| l.contains("mounted read-only"))
        .count();
    assert_eq!(said, 1, "said once");
}

/// A container restart: the old cgroup removed, the pod's status naming a new container ID whose
/// cgroup the runtime makes: a `gone` line, then samples of the new cgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_container_is_followed_to_its_new_id() {
    let Some(mut s) = setup("restart", "200ms").await else {
        return;
    };
    let mut a = stream(&s.agent, "token-a", "web-a").await;
    assert_eq!(a.sample(Duration::from_secs(5)).await.limit, Some(64 << 20));
    s.tree
        .remove(&format!("kubepods/burstable/pod{UID_A}/{ID_A}"));
    let gone = loop {
        match a.next(Duration::from_secs(5)).await {
            Some((Line::Unreadable(e), _)) => break e,
            Some((Line::Sample(_), _)) => {}
            None => panic!("the stream ended"),
        }
    };
    assert_eq!(gone.kind, "gone", "{gone:?}");
    s.api.update_pod(|p| {
        p["status"]["containerStatuses"][0]["containerID"] = "containerd://aaaa0002".into();
        p["status"]["containerStatuses"][0]["restartCount"] = 1.into();
    });
    s.tree.make(
        &format!("kubepods/burstable/pod{UID_A}/aaaa0002"),
        Some(48 << 20),
    );
    let back = loop {
        match a.next(Duration::from_secs(10)).await {
            Some((Line::Sample(x), _)) => break x,
            Some((Line::Unreadable(e), _)) => assert_eq!(e.kind, "gone"),
            None => panic!("the stream ended"),
        }
    };
    assert_eq!(back.limit, Some(48 << 20), "the new container's cgroup");
    assert_eq!(s.agent.metric("sidewatch_node_streams").await, Some(1.0));
    // The old cgroup's notifications ended with it, normally: not a death.
    assert_eq!(s.agent.get("/livez").await, (200, "ok\n".into()));
}

/// A cgroup v2 directory of regular files, as `memory.*` files read.
fn v2_files(dir: &Path, current: u64, max: &str, oom_kills: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    write("memory.current", format!("{current}\n"));
    write("memory.max", format!("{max}\n"));
    write("memory.high", "max\n".into());
    write("memory.stat", "anon 1\ninactive_file 0\n".into());
    write(
        "memory.events",
        format!("low 0\nhigh 0\nmax 0\noom {oom_kills}\noom_kill {oom_kills}\noom_group_kill {oom_kills}\n"),
    );
    write(
        "memory.events.local",
        "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n".into(),
    );
}

/// A cgroup v2 node with the systemd driver (a tree of regular files: the names are what this
/// tests): A's container is found by its `cri-containerd-<id>.scope`, the pod-level limit on its
/// `kubepods-burstable-pod<uid with _>.slice` binds, and a change of `memory.events` (inotify)
/// is streamed at once though polling is at 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_systemd_tree_gives_the_pod_level_limit_and_memory_events_at_once() {
    let dir = common::tempdir::Dir::new();
    let root = dir.path().join("cgroup");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    let pod = root.join(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        UID_A.replace('-', "_")
    ));
    let app = pod.join(format!("cri-containerd-{ID_A}.scope"));
    v2_files(&pod, 200 << 20, &(256u64 << 20).to_string(), 0);
    v2_files(&app, 150 << 20, "max", 0);
    let api = api().await;
    let agent = launch(root.to_str().unwrap(), "5s", &api.kubeconfig(dir.path()));
    let mut a = stream(&agent, "token-a", "web-a").await;
    let (first, tick) = match a.next(Duration::from_secs(5)).await {
        Some((Line::Sample(s), at)) => (s, at),
        other => panic!("want a sample, got {other:?}"),
    };
    assert_eq!(first.limit, Some(256 << 20), "{first:?}");
    let bound = first.bound.expect("bound");
    assert_eq!((bound.level, bound.scope.as_str()), (1, "pod"));
    assert_eq!(
        first.working_set,
        200 << 20,
        "the pod's usage against its limit"
    );
    v2_files(&app, 150 << 20, "max", 1);
    // A rewrite is a truncation and a write: a look may come between them.
    let (kill, at) = loop {
        match a.next(Duration::from_secs(10)).await {
            Some((Line::Sample(s), at)) if s.oom.is_some_and(|o| o.kills > 0) => break (s, at),
            Some(_) => {}
            None => panic!("the stream ended"),
        }
    };
    eprintln!(
        "memory.events' change streamed {:.0} ms after the first line (polling at 5 s)",
        (at - tick).as_secs_f64() * 1e3
    );
    assert_eq!(kill.oom.map(|o| o.kills), Some(1));
    assert!(at - tick < Duration::from_secs(4), "it waited for the tick");
}

/// A sidecar (`sidewatch run`) of pod `pod` whose memory comes from the agent with `token`, or,
/// when `cgroup` is given, from that cgroup directly, as the comparison.
async fn sidecar(
    s: &Setup,
    dir: &Path,
    pod: &str,
    token: &str,
    cgroup: Option<&Path>,
) -> (Sidewatch, common::Upstream) {
    let up = common::Upstream::start(common::healthy()).await;
    let url = up.url();
    let mut args = vec![
        "run",
        "--target",
        &url,
        "--interval",
        "200ms",
        "--listen",
        "127.0.0.1:0",
    ];
    let token_file = dir.join(format!("token-of-{pod}-{token}"));
    let node = common::node_source(&s.agent.url(""), &token_file, token);
    let path = cgroup.map(|c| c.to_str().unwrap().to_owned());
    let mut env = vec![
        ("POD_NAME", pod),
        ("POD_NAMESPACE", "shop"),
        ("SIDEWATCH_KUBERNETES_ENABLED", "false"),
        ("SIDEWATCH_KUBERNETES_APP_CONTAINER", "app"),
        ("SIDEWATCH_MEMORY_OOM_COOLDOWN", "3s"),
    ];
    match &path {
        Some(path) => args.extend(["--cgroup", path]),
        None => env.extend([
            ("SIDEWATCH_MEMORY_SOURCE", "node"),
            ("SIDEWATCH_MEMORY_NODE", &node),
        ]),
    }
    let sw = Sidewatch::launch(None, &args, &env);
    (sw, up)
}

/// The memory reason of the first not-ready answer before `killed`, and how long before it.
fn lead(answers: &[common::Answer], killed: Instant) -> Option<(f64, String)> {
    let first = answers.iter().find(|a| {
        a.at < killed
            && a.status == 503
            && (a.body.contains("memory_high") || a.body.contains("oom_predicted"))
    })?;
    Some(((killed - first.at).as_secs_f64(), first.body.clone()))
}

/// From the kill to the first recorded `/readyz` that names it, in ms.
fn kill_seen(answers: &[common::Answer], killed: Instant) -> f64 {
    let seen = answers
        .iter()
        .find(|a| a.status == 503 && a.body.contains("oom_killed"))
        .map(|a| a.at)
        .expect("/readyz never said oom_killed");
    if seen >= killed {
        (seen - killed).as_secs_f64() * 1e3
    } else {
        -((killed - seen).as_secs_f64() * 1e3)
    }
}

/// Two pods' real sidecars through the real agent, beside a third reading pod A's cgroup itself:
/// each sees only its own pod's limit; a sidecar that says it is another pod is refused and
/// blind, never unready; a steady leak in A's app is predicted and its OOM kill counted through
/// the agent as through the cgroup, B untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_through_the_agent_see_what_the_cgroup_shows() {
    let Some(s) = setup("sidecars", "250ms").await else {
        return;
    };
    let dir = common::tempdir::Dir::new();
    let app = s
        .tree
        .root
        .join(format!("kubepods/burstable/pod{UID_A}/{ID_A}"));
    let (a, _up_a) = sidecar(&s, dir.path(), "web-a", "token-a", None).await;
    let (b, _up_b) = sidecar(&s, dir.path(), "web-b", "token-b", None).await;
    let (direct, _up_d) = sidecar(&s, dir.path(), "web-a", "token-a", Some(&app)).await;
    // A sidecar with A's token that says it is B: the agent refuses it.
    let (liar, _up_l) = sidecar(&s, dir.path(), "web-b", "token-a", None).await;
    let within = Duration::from_secs(20);
    for (sw, limit) in [(&a, 64u64 << 20), (&b, 96 << 20), (&direct, 64 << 20)] {
        sw.wait_ready(within).await;
        eventually("the app's limit", within, || async {
            (sw.metric("sidewatch_memory_limit_bytes").await == Some(limit as f64)).then_some(())
        })
        .await;
    }
    assert_eq!(
        a.metric("sidewatch_memory_source{source=\"node\"}").await,
        Some(1.0)
    );
    liar.wait_ready(within).await;
    liar.wait_metric_at_least(
        "sidewatch_memory_read_errors_total{kind=\"node_refused\"}",
        1.0,
    )
    .await;
    assert_eq!(liar.metric("sidewatch_memory_blind").await, Some(1.0));
    assert_eq!(liar.metric("sidewatch_memory_limit_bytes").await, Some(0.0));
    assert_eq!(liar.readyz().await.0, 200, "blind is not unready");

    // The leak of tests/memory/memory_v1_oom.rs' slow one: 1 MiB every 300 ms into 64 MiB.
    let Some(mut hog) = Hog::spawn(1, 300, 1024, "node-agent-sidecars") else {
        return;
    };
    std::fs::write(app.join("cgroup.procs"), hog.pid().to_string()).unwrap();
    let (rec_a, rec_d, rec_b) = (
        a.record_readyz(Duration::from_millis(5)),
        direct.record_readyz(Duration::from_millis(5)),
        b.record_readyz(Duration::from_millis(20)),
    );
    hog.go();
    let status = eventually("the kernel's kill", Duration::from_secs(60), || {
        let status = hog.child.try_wait().expect("try_wait");
        async move { status }
    })
    .await;
    let killed = Instant::now();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status:?}");
    for sw in [&a, &direct] {
        sw.wait_reason("oom_killed", within).await;
        eventually("the kill counted once", within, || async {
            (sw.metric("sidewatch_oom_kills_total").await == Some(1.0)).then_some(())
        })
        .await;
    }
    let (answers_a, answers_d, answers_b) = (rec_a.stop(), rec_d.stop(), rec_b.stop());
    let (lead_a, why_a) = lead(&answers_a, killed).expect("A (node) not ready before the kill");
    let (lead_d, _) = lead(&answers_d, killed).expect("A (cgroup) not ready before the kill");
    let (seen_a, seen_d) = (kill_seen(&answers_a, killed), kill_seen(&answers_d, killed));
    // The kill's moment is when the test saw the hog dead, after the kernel's count: both
    // figures may be negative; their difference is what the agent's way costs.
    eprintln!(
        "through the agent: not ready {lead_a:.2} s before the kill, oom_killed at {seen_a:.0} ms; \
         reading the cgroup: {lead_d:.2} s, {seen_d:.0} ms; the agent's way {:.0} ms later",
        seen_a - seen_d
    );
    assert!(
        seen_a - seen_d < 1000.0,
        "the kill came {:.0} ms later through the agent",
        seen_a - seen_d
    );
    assert!(
        why_a.contains("64.0 MiB"),
        "the reason names A's limit: {why_a}"
    );
    // The agent's line and the sidecar's tick each add at most one memory interval (250 ms).
    assert!(
        lead_a >= lead_d - 0.75,
        "the prediction through the agent came {:.2} s later than from the cgroup",
        lead_d - lead_a
    );
    // B saw none of it: ready throughout, nothing counted.
    assert!(answers_b.iter().all(|x| x.status == 200), "B stayed ready");
    assert_eq!(b.metric("sidewatch_oom_kills_total").await, Some(0.0));
}
