//! The sidecar's threads do not depend on the node's CPU count: an injected sidecar has no CPU
//! limit, and a runtime sized by the CPUs it may use would start 64 workers on a 64-core node.
//! The same binary run with an affinity of every CPU and of one has the same threads.

use std::time::Duration;

use crate::common::{self, healthy, which, Sidewatch, Upstream};

/// Every feature a `--target` turns on: the probe, the overload watch's netlink look (on the
/// blocking pool) and the drain's traffic watch of the app port.
async fn threads_with_cpus(cpus: &str, app: &Upstream) -> (usize, usize) {
    let sw = Sidewatch::launch_under(
        &["taskset", "-c", cpus],
        &[
            "run",
            "--target",
            &app.url(),
            "--interval",
            "100ms",
            "--cgroup",
            "none",
        ],
        &[("SIDEWATCH_LISTEN", "127.0.0.1:0")],
    );
    sw.wait_ready(Duration::from_secs(10)).await;
    let probes = "sidewatch_probe_duration_seconds_count{probe=\"app\"}";
    // The serving runtime's threads by name (its workers; its blocking pool is idle here), and
    // all of them: the watch runtime's blocking threads come and go with the overload looks.
    let threads = || {
        let mut serving = 0;
        let mut all = 0;
        for task in std::fs::read_dir(format!("/proc/{}/task", sw.child.id()))
            .expect("the sidecar's threads")
            .flatten()
        {
            all += 1;
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            serving += usize::from(name.trim() == "sidewatch-serve");
        }
        (serving, all)
    };
    // Sampled once per probe over 20 probes: the most of each.
    let (mut serving, mut most) = (0, 0);
    let first = sw.metric(probes).await.unwrap_or(0.0);
    for n in 1..=20 {
        sw.wait_metric_at_least(probes, first + f64::from(n)).await;
        let (s, a) = threads();
        serving = serving.max(s);
        most = most.max(a);
    }
    (serving, most)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_threads_are_the_same_on_one_cpu_and_on_all() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        common::skip_or_fail("one CPU only: nothing to compare its threads with");
        return;
    }
    if which("taskset").is_none() {
        common::skip_or_fail("taskset (util-linux) is needed to set the affinity");
        return;
    }
    let app = Upstream::start(healthy()).await;
    let all = threads_with_cpus(&format!("0-{}", cpus - 1), &app).await;
    let one = threads_with_cpus("0", &app).await;
    eprintln!(
        "threads (serving, all) at most over 20 probes: {cpus} CPUs {all:?}, one CPU {one:?}"
    );
    assert_eq!(
        all.0, one.0,
        "the serving runtime's workers follow the CPU count"
    );
    assert!(
        all.1 <= 8 && one.1 <= 8,
        "more threads than the bound: {all:?} {one:?}"
    );
}
