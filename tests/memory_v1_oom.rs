//! Real cgroup v1 and real OOM kills: a 64 MiB cgroup, a process that allocates until the kernel
//! kills it (slowly, then fast), and sidewatch watching the cgroup, also when the cgroup is
//! removed and made again under it. Needs root and the v1 memory controller at
//! /sys/fs/cgroup/memory.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, healthy, skip_or_fail, Hog, Sidewatch, Upstream};

const V1_ROOT: &str = "/sys/fs/cgroup/memory";
const LIMIT: u64 = 64 << 20;

/// A child memory cgroup, removed (its processes killed first) even when the test fails.
struct Cgroup(PathBuf);

impl Cgroup {
    fn create(name: &str) -> Option<Cgroup> {
        let root = PathBuf::from(V1_ROOT);
        if !root.join("memory.limit_in_bytes").exists() {
            skip_or_fail("no cgroup v1 memory controller at /sys/fs/cgroup/memory");
            return None;
        }
        let path = root.join(format!("{name}-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&path) {
            skip_or_fail(&format!(
                "cannot create {} (root needed): {e}",
                path.display()
            ));
            return None;
        }
        let cgroup = Cgroup(path);
        cgroup.limit();
        Some(cgroup)
    }

    fn limit(&self) {
        self.write("memory.limit_in_bytes", &LIMIT.to_string());
        // No swap to escape to: the limit is the limit.
        let _ = std::fs::write(self.0.join("memory.swappiness"), "0");
    }

    /// Kills what runs in it and removes it, as a container runtime does at a restart.
    fn remove(&self) {
        self.kill_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = std::fs::remove_dir(&self.0) {
            assert!(Instant::now() < deadline, "rmdir {}: {e}", self.0.display());
            std::thread::yield_now();
        }
    }

    /// A new cgroup at the same path, with the same limit, as the runtime makes for the new
    /// container.
    fn make_again(&self) {
        std::fs::create_dir(&self.0).unwrap();
        self.limit();
    }

    fn kill_all(&self) {
        if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    fn write(&self, file: &str, value: &str) {
        std::fs::write(self.0.join(file), value)
            .unwrap_or_else(|e| panic!("write {file} in {}: {e}", self.0.display()));
    }

    fn add(&self, pid: u32) {
        self.write("cgroup.procs", &pid.to_string());
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::yield_now();
        }
    }
}

/// `/readyz` answers: when, status, body.
type Seen = Arc<Mutex<Vec<(Instant, u16, String)>>>;

/// Records every `/readyz` answer with its time until stopped.
fn record(sw: &Sidewatch) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let url = sw.url("/readyz");
    let client = common::client();
    let task = tokio::spawn(async move {
        loop {
            if let Ok(resp) = client.get(&url).send().await {
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                sink.lock().unwrap().push((Instant::now(), status, body));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (seen, task)
}

/// Runs one hog to its OOM kill; returns how long before the kill sidewatch went not ready for a
/// memory reason.
async fn leak_until_killed(
    sw: &Sidewatch,
    cgroup: &Cgroup,
    step_mib: u64,
    delay_ms: u64,
    label: &str,
) -> Duration {
    let (seen, recorder) = record(sw);
    let Some(mut hog) = Hog::spawn(step_mib, delay_ms, 1024, label) else {
        panic!("python3 vanished between checks");
    };
    cgroup.add(hog.pid());
    let started = Instant::now();
    hog.go();
    let status = eventually("the OOM kill", Duration::from_secs(60), || {
        let status = hog.child.try_wait().expect("try_wait");
        async move { status }
    })
    .await;
    let killed = Instant::now();
    recorder.abort();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "{label}: the hog should die by SIGKILL (OOM), got {status:?}"
    );
    let seen = seen.lock().unwrap();
    let first = seen
        .iter()
        .find(|(_, status, body)| {
            *status == 503 && (body.contains("memory_high") || body.contains("oom_predicted"))
        })
        .unwrap_or_else(|| {
            panic!(
                "{label}: never not ready for memory before the kill; saw {:?}",
                seen.last()
            )
        });
    assert!(first.0 < killed, "{label}: not ready only after the kill");
    let ahead = killed - first.0;
    eprintln!(
        "{label}: limit filled in {:.1}s; not ready {:.2}s before the kill ({})",
        (killed - started).as_secs_f64(),
        ahead.as_secs_f64(),
        if first.2.contains("oom_predicted") {
            "oom_predicted"
        } else {
            "memory_high"
        },
    );
    ahead
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_before_the_oom_killer_and_counts_every_kill() {
    let Some(cgroup) = Cgroup::create("sidewatch-oom") else {
        return;
    };
    if common::which("python3").is_none() {
        skip_or_fail("python3 is needed to allocate memory in a child process");
        return;
    }
    let up = Upstream::start(healthy()).await;
    let url = up.url();
    let dir = cgroup.0.to_str().unwrap().to_owned();
    let sw = Sidewatch::start(
        &["--target", &url, "--interval", "200ms", "--cgroup", &dir],
        &[("SIDEWATCH_MEMORY_OOM_COOLDOWN", "2s")],
    );
    sw.wait_ready(Duration::from_secs(10)).await;
    sw.wait_log("eventfd memory.oom_control").await;

    // Slow: 1 MiB every 300 ms fills 64 MiB in about 20 s.
    leak_until_killed(&sw, &cgroup, 1, 300, "slow leak").await;
    let body = sw.wait_reason("oom_killed", Duration::from_secs(5)).await;
    assert_eq!(body["reasons"][0]["signal"], "memory:oom");
    assert_eq!(sw.metric("sidewatch_oom_kills_total").await, Some(1.0));
    sw.wait_ready(Duration::from_secs(10)).await;

    // Fast: 4 MiB every 100 ms fills it in under 2 s.
    leak_until_killed(&sw, &cgroup, 4, 100, "fast leak").await;
    sw.wait_reason("oom_killed", Duration::from_secs(5)).await;
    assert_eq!(sw.metric("sidewatch_oom_kills_total").await, Some(2.0));
    sw.wait_ready(Duration::from_secs(10)).await;
    assert_eq!(
        sw.metric("sidewatch_oom_kills_total").await,
        Some(2.0),
        "exactly one per kill"
    );
}

/// Runs a fast hog in the cgroup until the kernel OOM-kills it.
async fn oom_kill_in(cgroup: &Cgroup, label: &str) {
    let Some(mut hog) = Hog::spawn(4, 50, 1024, label) else {
        panic!("python3 vanished between checks");
    };
    cgroup.add(hog.pid());
    hog.go();
    let status = eventually("the OOM kill", Duration::from_secs(60), || {
        let status = hog.child.try_wait().expect("try_wait");
        async move { status }
    })
    .await;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{label}: {status:?}");
}

/// A container restart: the cgroup is removed and made again at the same path. Polling is set to
/// an hour, so only kernel notifications can see anything: the removal (the eventfd fires on it,
/// the parent's inotify sees the rmdir), the new directory (the parent's inotify sees the mkdir),
/// and the new cgroup's OOM kill through a newly armed eventfd, counted although the old cgroup
/// had counted as many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cgroup_removed_and_made_again_has_its_oom_kills_counted() {
    let Some(cgroup) = Cgroup::create("sidewatch-again") else {
        return;
    };
    if common::which("python3").is_none() {
        skip_or_fail("python3 is needed to allocate memory in a child process");
        return;
    }
    let up = Upstream::start(healthy()).await;
    let url = up.url();
    let dir = cgroup.0.to_str().unwrap().to_owned();
    let sw = Sidewatch::start(
        &["--target", &url, "--interval", "200ms", "--cgroup", &dir],
        &[
            ("SIDEWATCH_MEMORY_INTERVAL", "1h"),
            ("SIDEWATCH_MEMORY_OOM_COOLDOWN", "3s"),
        ],
    );
    sw.wait_ready(Duration::from_secs(10)).await;
    sw.wait_log("inotify on the parent directory").await;

    oom_kill_in(&cgroup, "first cgroup").await;
    sw.wait_metric_at_least("sidewatch_oom_kills_total", 1.0)
        .await;
    sw.wait_ready(Duration::from_secs(10)).await;

    cgroup.remove();
    sw.wait_metric_at_least("sidewatch_memory_read_errors_total{kind=\"gone\"}", 1.0)
        .await;
    assert_eq!(sw.readyz().await.0, 200, "not knowing is no veto");

    cgroup.make_again();
    sw.wait_log("a new cgroup directory is here").await;
    oom_kill_in(&cgroup, "new cgroup").await;
    let body = sw.wait_reason("oom_killed", Duration::from_secs(5)).await;
    assert_eq!(body["reasons"][0]["signal"], "memory:oom");
    assert_eq!(sw.metric("sidewatch_oom_kills_total").await, Some(2.0));
    sw.wait_ready(Duration::from_secs(10)).await;
    assert_eq!(
        sw.metric("sidewatch_oom_kills_total").await,
        Some(2.0),
        "exactly one per kill"
    );
}
