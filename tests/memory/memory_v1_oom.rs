//! Real cgroup v1 and real OOM kills: a 64 MiB cgroup, a process that allocates until the kernel
//! kills it (slowly, then fast), and sidewatch watching the cgroup, also when the cgroup is
//! removed and made again under it. Needs root and the v1 memory controller at
//! /sys/fs/cgroup/memory.

#[allow(unused_imports)]
use crate::common;
use std::time::{Duration, Instant};

use common::cgroup::Cgroup;
use common::{eventually, healthy, skip_or_fail, Hog, Sidewatch, Upstream};

const LIMIT: u64 = 64 << 20;

/// The app and sidewatch watching a new 64 MiB cgroup. Fields drop in order: sidewatch is gone
/// before its cgroup is removed.
struct Setup {
    sw: Sidewatch,
    _up: Upstream,
    cgroup: Cgroup,
}

/// `None` (after `skip_or_fail`) without root, the v1 memory controller or python3.
async fn setup(name: &str, env: &[(&str, &str)]) -> Option<Setup> {
    let cgroup = Cgroup::create(name, LIMIT)?;
    if common::which("python3").is_none() {
        skip_or_fail("python3 is needed to allocate memory in a child process");
        return None;
    }
    let up = Upstream::start(healthy()).await;
    let url = up.url();
    let dir = cgroup.path().to_str().unwrap().to_owned();
    let sw = Sidewatch::start(
        &["--target", &url, "--interval", "200ms", "--cgroup", &dir],
        env,
    );
    sw.wait_ready(Duration::from_secs(10)).await;
    Some(Setup {
        sw,
        _up: up,
        cgroup,
    })
}

/// Runs a hog (`step_mib` every `delay_ms`) in the cgroup until the kernel OOM-kills it; returns
/// when it was let go and when it was seen dead.
async fn oom_kill_in(
    cgroup: &Cgroup,
    step_mib: u64,
    delay_ms: u64,
    label: &str,
) -> (Instant, Instant) {
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
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "{label}: the hog should die by SIGKILL (OOM), got {status:?}"
    );
    (started, killed)
}

/// Waits for the kill just done to show in `/readyz` as `oom_killed` and to be the `n`th counted,
/// then for ready again, still `n`: one count per kill, none at the cooldown's end. Returns the
/// `/readyz` body that showed the kill.
async fn wait_kill_counted(sw: &Sidewatch, n: f64) -> serde_json::Value {
    let body = sw.wait_reason("oom_killed", Duration::from_secs(5)).await;
    assert_eq!(sw.metric("sidewatch_oom_kills_total").await, Some(n));
    sw.wait_ready(Duration::from_secs(10)).await;
    assert_eq!(
        sw.metric("sidewatch_oom_kills_total").await,
        Some(n),
        "exactly one per kill"
    );
    body
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
    let readyz = sw.record_readyz(Duration::from_millis(10));
    let (started, killed) = oom_kill_in(cgroup, step_mib, delay_ms, label).await;
    let seen = readyz.stop();
    let first = seen
        .iter()
        .find(|a| {
            a.status == 503 && (a.body.contains("memory_high") || a.body.contains("oom_predicted"))
        })
        .unwrap_or_else(|| {
            panic!(
                "{label}: never not ready for memory before the kill; saw {:?}",
                seen.last()
            )
        });
    assert!(first.at < killed, "{label}: not ready only after the kill");
    let ahead = killed - first.at;
    eprintln!(
        "{label}: limit filled in {:.1}s; not ready {:.2}s before the kill ({})",
        (killed - started).as_secs_f64(),
        ahead.as_secs_f64(),
        if first.body.contains("oom_predicted") {
            "oom_predicted"
        } else {
            "memory_high"
        },
    );
    ahead
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_before_the_oom_killer_and_counts_every_kill() {
    let Some(s) = setup("sidewatch-oom", &[("SIDEWATCH_MEMORY_OOM_COOLDOWN", "2s")]).await else {
        return;
    };
    s.sw.wait_log("eventfd memory.oom_control").await;

    // Slow: 1 MiB every 300 ms fills 64 MiB in about 20 s.
    leak_until_killed(&s.sw, &s.cgroup, 1, 300, "slow leak").await;
    let body = wait_kill_counted(&s.sw, 1.0).await;
    assert_eq!(body["reasons"][0]["signal"], "memory:oom");

    // Fast: 4 MiB every 100 ms fills it in under 2 s.
    leak_until_killed(&s.sw, &s.cgroup, 4, 100, "fast leak").await;
    wait_kill_counted(&s.sw, 2.0).await;
}

/// A container restart: the cgroup is removed and made again at the same path. Polling is set to
/// an hour, so only kernel notifications can see anything: the removal (the eventfd fires on it,
/// the parent's inotify sees the rmdir), the new directory (the parent's inotify sees the mkdir),
/// and the new cgroup's OOM kill through a newly armed eventfd, counted although the old cgroup
/// had counted as many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cgroup_removed_and_made_again_has_its_oom_kills_counted() {
    let env = [
        ("SIDEWATCH_MEMORY_INTERVAL", "1h"),
        ("SIDEWATCH_MEMORY_OOM_COOLDOWN", "3s"),
    ];
    let Some(s) = setup("sidewatch-again", &env).await else {
        return;
    };
    s.sw.wait_log("inotify on the parent directory").await;

    oom_kill_in(&s.cgroup, 4, 50, "first cgroup").await;
    s.sw.wait_metric_at_least("sidewatch_oom_kills_total", 1.0)
        .await;
    s.sw.wait_ready(Duration::from_secs(10)).await;

    s.cgroup.remove();
    s.sw.wait_metric_at_least("sidewatch_memory_read_errors_total{kind=\"gone\"}", 1.0)
        .await;
    assert_eq!(s.sw.readyz().await.0, 200, "not knowing is no veto");

    s.cgroup.make_again();
    s.sw.wait_log("a new cgroup directory is here").await;
    oom_kill_in(&s.cgroup, 4, 50, "new cgroup").await;
    let body = wait_kill_counted(&s.sw, 2.0).await;
    assert_eq!(body["reasons"][0]["signal"], "memory:oom");
    // The old cgroup's notifications were let go as it went: an end, not a death.
    let (status, livez) = s.sw.get("/livez").await;
    assert_eq!(status, 200, "{livez}");
    assert!(
        !s.sw.logs().iter().any(|l| l.contains("task died")),
        "{:#?}",
        s.sw.logs()
    );
}

/// Far from the limit and still, the memory is looked at every `memory.idle_interval`, here an
/// hour: only the kernel can wake sidewatch. A leak still turns it not ready before the kill (the
/// v1 usage threshold at `unready_above` wakes it, and from that look on it samples at
/// `memory.interval`), the kill is counted (the OOM eventfd), and once the cooldown is over and
/// memory is still again, it is back to the idle pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_and_still_is_sampled_slowly_and_a_leak_still_wakes_it() {
    let env = [
        ("SIDEWATCH_MEMORY_IDLE_INTERVAL", "1h"),
        ("SIDEWATCH_MEMORY_OOM_COOLDOWN", "2s"),
    ];
    let Some(s) = setup("sidewatch-pace", &env).await else {
        return;
    };
    wait_pace(&s.sw, 3600.0).await;
    leak_until_killed(&s.sw, &s.cgroup, 2, 100, "leak at the idle pace").await;
    wait_kill_counted(&s.sw, 1.0).await;
    wait_pace(&s.sw, 3600.0).await;
}

async fn wait_pace(sw: &Sidewatch, seconds: f64) {
    let series = "sidewatch_memory_sample_interval_seconds";
    eventually(
        &format!("{series} {seconds}"),
        Duration::from_secs(10),
        || async { (sw.metric(series).await == Some(seconds)).then_some(()) },
    )
    .await;
}
