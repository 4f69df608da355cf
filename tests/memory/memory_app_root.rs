//! The app-root memory source, and PSI for real. An "app" process in a mount namespace of its own
//! with a cgroup v2 fixture tree bind-mounted at its `/sys/fs/cgroup`, as a container with a cgroup
//! namespace sees its own cgroup there: sidewatch reads it through `/proc/<pid>/root`, thresholds
//! sampled, PSI polled (a fixture cannot take a trigger), OOM kills through inotify on that path.
//! (The same source on real cgroup v1, in real containers: tests/pods/containers.rs.) Then a PSI
//! trigger armed on a real cgroup2 file system: on these hybrid machines a process's v1 memory
//! cgroup has no PSI, its v2 cgroup has, and a real stall (page cache thrashing under a v1 limit)
//! fires the trigger while polling is set to an hour.

#[allow(unused_imports)]
use crate::common;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::cgroup::Stall;
use common::{eventually, healthy, skip_or_fail, tempdir, which, Sidewatch, Upstream};

const WITHIN: Duration = Duration::from_secs(15);
const MIB: u64 = 1 << 20;

/// A process in a mount namespace of its own, the fixture tree at its `/sys/fs/cgroup`.
struct App {
    child: Child,
    marker: String,
    tree: PathBuf,
    _dir: tempdir::Dir,
}

impl App {
    fn start() -> Option<App> {
        if which("unshare").is_none() {
            skip_or_fail("unshare (util-linux) is needed for a mount namespace");
            return None;
        }
        let dir = tempdir::Dir::new();
        let tree = dir.path().join("cgroup");
        std::fs::create_dir(&tree).unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroup-v2");
        for entry in std::fs::read_dir(fixtures).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), tree.join(entry.file_name())).unwrap();
        }
        // A sleep with an argument no other process has: what process.match finds it by.
        let marker = format!("0.00{}", std::process::id());
        let script = format!(
            "mount --bind {} /sys/fs/cgroup && exec sleep 1000 {marker}",
            tree.display()
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn unshare");
        let app = App {
            child,
            marker,
            tree,
            _dir: dir,
        };
        // The watcher looks for it at start-up (the first tick is at once): it must be there.
        wait_process(&app.marker);
        Some(app)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.tree.join(name), text).unwrap();
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until a process whose command line has `marker` runs.
fn wait_process(marker: &str) {
    let deadline = std::time::Instant::now() + WITHIN;
    while sidewatch::process::find(marker).is_none() {
        assert!(std::time::Instant::now() < deadline, "no process {marker}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

async fn watch(app: &App, env: &[(&str, &str)]) -> (Sidewatch, Upstream) {
    let up = Upstream::start(healthy()).await;
    let mut all = vec![
        ("SIDEWATCH_MEMORY_SOURCE", "app-root"),
        ("SIDEWATCH_PROCESS_MATCH", app.marker.as_str()),
        ("SIDEWATCH_MEMORY_PREDICT_OOM_WITHIN", "null"),
    ];
    all.extend_from_slice(env);
    let sw = Sidewatch::start(&["--target", &up.url(), "--interval", "100ms"], &all);
    sw.wait_log("/root/sys/fs/cgroup version=cgroup v2").await;
    sw.wait_ready(WITHIN).await;
    (sw, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_own_v2_cgroup_is_read_through_its_mount_namespace() {
    let Some(app) = App::start() else {
        return;
    };
    let (sw, _up) = watch(&app, &[("SIDEWATCH_MEMORY_INTERVAL", "50ms")]).await;
    // The fixture's limit (memory.max, 100 MiB) through the app's root, not this machine's v1.
    eventually("the app's limit", WITHIN, || async {
        (sw.metric("sidewatch_memory_limit_bytes").await == Some((100 * MIB) as f64)).then_some(())
    })
    .await;
    // 95 MiB of working set (the fixture's inactive_file is 8 MiB) is above 92%.
    app.write("memory.current", &format!("{}\n", 103 * MIB));
    sw.wait_reason("memory_high", WITHIN).await;
    app.write("memory.current", &format!("{}\n", 50 * MIB));
    sw.wait_ready(WITHIN).await;
    // PSI from the app's memory.pressure, polled: a fixture is no cgroup2 file system to arm.
    app.write(
        "memory.pressure",
        "some avg10=40.00 avg60=10.00 avg300=2.00 total=100\nfull avg10=35.00 avg60=9.00 avg300=1.00 total=90\n",
    );
    sw.wait_reason("memory_pressure", WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kills_reach_sidewatch_through_inotify_on_the_apps_root() {
    let Some(app) = App::start() else {
        return;
    };
    // Polling at an hour: only the inotify watch on memory.events can tell.
    let (sw, _up) = watch(
        &app,
        &[
            ("SIDEWATCH_MEMORY_INTERVAL", "1h"),
            ("SIDEWATCH_MEMORY_OOM_COOLDOWN", "1s"),
        ],
    )
    .await;
    sw.wait_log("inotify memory.events").await;
    // Written in place, as the kernel updates a seq file.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(app.tree.join("memory.events"))
        .unwrap();
    file.write_all(b"low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\noom_group_kill 0\n")
        .unwrap();
    sw.wait_reason("oom_killed", WITHIN).await;
    assert_eq!(sw.metric("sidewatch_oom_kills_total").await, Some(1.0));
}

const V1_ROOT: &str = "/sys/fs/cgroup/memory";
const V2_ROOT: &str = "/sys/fs/cgroup/unified";

/// A v1 memory cgroup with a limit, a child of it without one (so no usage threshold and no
/// OOM can wake sidewatch: only PSI), and a v2 cgroup; removed on drop.
struct Hybrid {
    v1: PathBuf,
    v2: PathBuf,
}

impl Hybrid {
    fn create() -> Option<Hybrid> {
        let is_cgroup2 = sidewatch::memory::cgroup::on_cgroup2_fs(Path::new(V2_ROOT));
        if !Path::new(V1_ROOT).join("memory.limit_in_bytes").exists() || !is_cgroup2 {
            skip_or_fail("needs the v1 memory controller and a cgroup2 mount at /sys/fs/cgroup/unified (hybrid)");
            return None;
        }
        let name = format!("sw-psi-{}", std::process::id());
        let v1 = Path::new(V1_ROOT).join(&name);
        let v2 = Path::new(V2_ROOT).join(&name);
        std::fs::create_dir_all(v1.join("app")).expect("a v1 cgroup (root needed)");
        std::fs::create_dir_all(&v2).expect("a v2 cgroup (root needed)");
        std::fs::write(v1.join("memory.limit_in_bytes"), (64 * MIB).to_string()).unwrap();
        Some(Hybrid { v1, v2 })
    }
}

impl Drop for Hybrid {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.v1.join("app"));
        let _ = std::fs::remove_dir(&self.v1);
        let _ = std::fs::remove_dir(&self.v2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psi_trigger_on_the_v2_hierarchy_fires_under_a_real_stall() {
    let Some(cgroups) = Hybrid::create() else {
        return;
    };
    if which("python3").is_none() {
        return skip_or_fail("python3 is needed to make a memory stall");
    }
    let marker = format!("sidewatch-psi-stall-{}", std::process::id());
    let mut stall = Stall::spawn(&[&cgroups.v1.join("app"), &cgroups.v2], 40, &marker);
    wait_process(&marker);
    // In its cgroups before sidewatch looks (polling at an hour, it looks once): `sh`, whose
    // command line already names the marker, joins the v1 cgroup, then the v2 one, then becomes
    // python.
    let deadline = std::time::Instant::now() + WITHIN;
    while std::fs::read_to_string(cgroups.v2.join("cgroup.procs"))
        .is_ok_and(|p| p.trim().is_empty())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the stall never joined its cgroups"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let sw = Sidewatch::start(
        &["--cgroup", "auto"],
        &[
            ("SIDEWATCH_PROCESS_MATCH", marker.as_str()),
            ("SIDEWATCH_MEMORY_SOURCE", "cgroup"),
            // Polling at an hour: only a notification wakes the watcher. With no limit on the
            // app's own cgroup (its parent has it) no usage threshold is armed, and no OOM comes.
            ("SIDEWATCH_MEMORY_INTERVAL", "1h"),
            ("SIDEWATCH_MEMORY_PREDICT_OOM_WITHIN", "null"),
            ("SIDEWATCH_MEMORY_PRESSURE_FULL_AVG10_ABOVE", "null"),
            ("SIDEWATCH_MEMORY_PRESSURE_SOME_AVG10_ABOVE", "2"),
        ],
    );
    sw.wait_log("PSI trigger memory.pressure (v2 hierarchy)")
        .await;
    let logs = sw.logs().join("\n");
    assert!(logs.contains("on, from the v2 hierarchy"), "{logs}");
    assert!(
        !logs.contains("memory.usage_in_bytes threshold\""),
        "a usage threshold was armed: {logs}"
    );
    stall.go();
    let body = sw
        .wait_reason("memory_pressure", Duration::from_secs(60))
        .await;
    let message = body["reasons"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    drop(stall);
    assert!(message.contains("some"), "{message}");
    assert!(
        sw.metric("sidewatch_memory_pressure_avg10{kind=\"some\"}")
            .await
            .unwrap_or(0.0)
            > 2.0
    );
}
