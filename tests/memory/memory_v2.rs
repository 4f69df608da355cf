//! cgroup v2 on a fixture tree (tests/fixtures/cgroup-v2, laid out as Linux 6.x writes the files):
//! thresholds and hysteresis, `max` limits, PSI, the OOM trend, OOM kills delivered by rewriting
//! `memory.events` (the inotify path: polling is set to an hour), garbled, missing and unreadable
//! files, and the whole directory removed and made again under the running watcher.

#[allow(unused_imports)]
use crate::common;
use common::{Within, COMMAND_WITHIN};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{eventually, healthy, tempdir, Sidewatch, Upstream};

const WITHIN: Duration = Duration::from_secs(10);
const MIB: u64 = 1 << 20;

fn copy_fixtures(to: &Path) {
    std::fs::create_dir(to).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroup-v2");
    for entry in std::fs::read_dir(fixtures).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

struct Tree {
    /// The temp directory that holds the tree; none for a staged one, renamed into a tree's.
    _dir: Option<tempdir::Dir>,
    path: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("app.scope");
        copy_fixtures(&path);
        Tree {
            _dir: Some(dir),
            path,
        }
    }

    /// Rewrites a file in place (truncate and write, as the kernel's seq files appear to change).
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path.join(name), text).unwrap();
    }

    /// memory.current for a working set of `mib` (the fixture's inactive_file is 8 MiB).
    fn working_set(&self, mib: u64) {
        self.write("memory.current", &format!("{}\n", (mib + 8) * MIB));
    }

    /// Removes the directory, as the kernel does when the container's cgroup goes.
    fn remove(&self) {
        std::fs::remove_dir_all(&self.path).unwrap();
    }

    /// A new cgroup directory with the fixture's files, built beside the old one; `put` renames
    /// it into place, whole at once, as the kernel makes a cgroup's files with it.
    fn staged(&self, working_set_mib: u64, oom_kills: u64) -> Tree {
        let staging = Tree {
            _dir: None,
            path: self.path.with_extension("staging"),
        };
        copy_fixtures(&staging.path);
        staging.working_set(working_set_mib);
        staging.oom_kills(oom_kills);
        staging
    }

    fn put(&self, staged: Tree) {
        std::fs::rename(&staged.path, &self.path).unwrap();
    }

    /// The counters rewritten in one write, without a truncate first: the kernel never shows an
    /// empty `memory.events`, which would read as counters back at 0 (a new baseline) if the
    /// truncate's notification were handled before the write. They only grow here, so the text
    /// never gets shorter.
    fn oom_kills(&self, n: u64) {
        use std::io::Write;
        let text = format!("low 0\nhigh 0\nmax {n}\noom {n}\noom_kill {n}\noom_group_kill 0\n");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.path.join("memory.events"))
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }
}

/// Memory sampled every 50 ms and no OOM prediction: the thresholds alone decide.
const THRESHOLDS_ONLY: [(&str, &str); 2] = [
    ("SIDEWATCH_MEMORY_INTERVAL", "50ms"),
    ("SIDEWATCH_MEMORY_PREDICT_OOM_WITHIN", "null"),
];

/// Polling at an hour: only notifications see OOM kills, each one a second of not ready.
const NOTIFIED_ONLY: [(&str, &str); 2] = [
    ("SIDEWATCH_MEMORY_INTERVAL", "1h"),
    ("SIDEWATCH_MEMORY_OOM_COOLDOWN", "1s"),
];

/// A healthy app and sidewatch watching `tree`, once ready. Keep the app as long as sidewatch.
async fn watch(tree: &Tree, env: &[(&str, &str)]) -> (Sidewatch, Upstream) {
    let up = Upstream::start(healthy()).await;
    let url = up.url();
    let cgroup = tree.path.to_str().unwrap().to_owned();
    let sw = Sidewatch::start(
        &["--target", &url, "--interval", "100ms", "--cgroup", &cgroup],
        env,
    );
    sw.wait_ready(WITHIN).await;
    (sw, up)
}

async fn wait_metric(sw: &Sidewatch, series: &str, value: f64) {
    eventually(&format!("{series} = {value}"), WITHIN, || async {
        (sw.metric(series).await == Some(value)).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn working_set_thresholds_have_hysteresis() {
    let tree = Tree::new();
    let (sw, _app) = watch(&tree, &THRESHOLDS_ONLY).await;
    wait_metric(&sw, "sidewatch_memory_limit_bytes", (100 * MIB) as f64).await;
    wait_metric(&sw, "sidewatch_memory_usage_bytes", (52 * MIB) as f64).await;

    tree.working_set(94);
    let body = sw.wait_reason("memory_high", WITHIN).await;
    assert_eq!(body["reasons"][0]["signal"], "memory:usage");
    let message = body["reasons"][0]["message"].as_str().unwrap();
    assert!(message.contains("94%"), "{message}");

    // Between ready_below (85%) and unready_above (92%): still not ready.
    tree.working_set(88);
    wait_metric(&sw, "sidewatch_memory_usage_bytes", (88 * MIB) as f64).await;
    assert_eq!(sw.readyz().await.0, 503);

    tree.working_set(80);
    sw.wait_ready(WITHIN).await;
    tree.working_set(90);
    wait_metric(&sw, "sidewatch_memory_usage_bytes", (90 * MIB) as f64).await;
    assert_eq!(
        sw.readyz().await.0,
        200,
        "between the thresholds from below: stays ready"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_high_below_max_is_the_limit_that_counts() {
    let tree = Tree::new();
    tree.write("memory.high", "94371840\n"); // 90 MiB, as MemoryQoS sets 0.9 × 100 MiB
    let (sw, _app) = watch(&tree, &THRESHOLDS_ONLY).await;
    wait_metric(&sw, "sidewatch_memory_limit_bytes", (90 * MIB) as f64).await;
    tree.working_set(85); // 94% of memory.high, 85% of memory.max
    sw.wait_reason("memory_high", WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_limit_means_no_memory_threshold() {
    let tree = Tree::new();
    tree.write("memory.max", "max\n");
    let (sw, _app) = watch(&tree, &[("SIDEWATCH_MEMORY_INTERVAL", "50ms")]).await;
    tree.working_set(50_000);
    wait_metric(&sw, "sidewatch_memory_usage_bytes", (50_000 * MIB) as f64).await;
    assert_eq!(sw.metric("sidewatch_memory_limit_bytes").await, Some(0.0));
    assert_eq!(sw.readyz().await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rising_trend_predicts_the_oom_before_the_threshold() {
    let tree = Tree::new();
    let (sw, _app) = watch(
        &tree,
        &[
            ("SIDEWATCH_MEMORY_INTERVAL", "50ms"),
            ("SIDEWATCH_MEMORY_PREDICT_OOM_WITHIN", "1h"),
        ],
    )
    .await;
    assert_eq!(
        sw.metric("sidewatch_memory_predicted_oom_seconds").await,
        Some(f64::INFINITY)
    );
    // Each step is written once sidewatch has sampled the previous one.
    for mib in [60, 64, 68, 72] {
        tree.working_set(mib);
        wait_metric(&sw, "sidewatch_memory_usage_bytes", (mib * MIB) as f64).await;
    }
    let body = sw.wait_reason("oom_predicted", WITHIN).await;
    assert_eq!(body["reasons"][0]["signal"], "memory:trend");
    let eta = sw
        .metric("sidewatch_memory_predicted_oom_seconds")
        .await
        .unwrap();
    assert!(eta.is_finite() && eta > 0.0, "eta {eta}");
    // Flat memory ends the prediction.
    eventually("the trend to flatten", Duration::from_secs(30), || async {
        (sw.readyz().await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kills_arrive_through_inotify_and_cool_down() {
    let tree = Tree::new();
    tree.oom_kills(2); // kills before sidewatch started are history
    let (sw, _app) = watch(&tree, &NOTIFIED_ONLY).await;
    assert_eq!(sw.metric("sidewatch_oom_kills_total").await, Some(0.0));

    tree.oom_kills(3);
    let body = sw.wait_reason("oom_killed", WITHIN).await;
    assert_eq!(body["reasons"][0]["signal"], "memory:oom");
    assert_eq!(sw.metric("sidewatch_oom_kills_total").await, Some(1.0));
    sw.wait_ready(WITHIN).await;

    // Two kills at once, one process each (oom_group_kill stays 0): the first is counted at
    // once, the second when the counters have settled.
    tree.oom_kills(5);
    sw.wait_reason("oom_killed", WITHIN).await;
    wait_metric(&sw, "sidewatch_oom_kills_total", 3.0).await;
    wait_metric(&sw, "sidewatch_oom_killed_processes_total", 3.0).await;
    assert_eq!(
        sw.metric("sidewatch_oom_group_kills_total").await,
        Some(0.0)
    );
    // The memory counters' exposition, the new ones among them, as Prometheus's own checker
    // reads it.
    let (_, text) = sw.get("/metrics").await;
    for name in [
        "sidewatch_oom_group_kills_total",
        "sidewatch_oom_killed_processes_total",
        "sidewatch_memory_high_events_total",
    ] {
        assert!(text.contains(&format!("\n{name} ")), "{name} missing");
    }
    if let Some((clean, report)) = common::promtool_check_metrics(&text) {
        assert!(clean, "promtool failed or warned: {report}");
    }
    sw.wait_ready(WITHIN).await;
    sw.wait_log("inotify memory.events").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psi_full_above_the_threshold_is_memory_pressure() {
    let tree = Tree::new();
    let (sw, _app) = watch(&tree, &[("SIDEWATCH_MEMORY_INTERVAL", "50ms")]).await;
    tree.write(
        "memory.pressure",
        "some avg10=61.20 avg60=20.00 avg300=5.00 total=9000000\nfull avg10=35.50 avg60=10.00 avg300=2.00 total=4000000\n",
    );
    let body = sw.wait_reason("memory_pressure", WITHIN).await;
    assert!(body["reasons"][0]["message"]
        .as_str()
        .unwrap()
        .contains("full avg10 35.5%"));
    assert_eq!(
        sw.metric("sidewatch_memory_pressure_avg10{kind=\"full\"}")
            .await,
        Some(35.5)
    );
    tree.write(
        "memory.pressure",
        "some avg10=61.20 avg60=20.00 avg300=5.00 total=9000000\nfull avg10=3.00 avg60=10.00 avg300=2.00 total=4000000\n",
    );
    sw.wait_ready(WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_and_missing_files_are_counted_and_never_veto() {
    let tree = Tree::new();
    let (sw, _app) = watch(&tree, &[("SIDEWATCH_MEMORY_INTERVAL", "50ms")]).await;
    tree.working_set(95);
    sw.wait_reason("memory_high", WITHIN).await;

    tree.write("memory.current", "\u{0}\u{1}garbage\n");
    eventually("a garbled read counted", WITHIN, || async {
        let n = sw
            .metric("sidewatch_memory_read_errors_total{kind=\"garbled\"}")
            .await;
        (n.unwrap_or(0.0) >= 1.0).then_some(())
    })
    .await;
    sw.wait_ready(WITHIN).await;

    tree.working_set(10);
    std::fs::remove_file(tree.path.join("memory.stat")).unwrap();
    eventually("a missing read counted", WITHIN, || async {
        let n = sw
            .metric("sidewatch_memory_read_errors_total{kind=\"missing\"}")
            .await;
        (n.unwrap_or(0.0) >= 1.0).then_some(())
    })
    .await;
    assert_eq!(sw.readyz().await.0, 200);
    assert_eq!(sw.get("/livez").await.0, 200);
    sw.wait_log("memory.stat is missing").await;
}

/// The kernel changes `memory.events` in one step; a truncate and a write would wake sidewatch
/// twice, the first time on an empty file.
fn events_in_place(tree: &Tree, oom_kills: u8) {
    use std::io::Write;
    assert!(oom_kills < 10, "same length as the fixture's 0");
    let text = format!(
        "low 0\nhigh 0\nmax {oom_kills}\noom {oom_kills}\noom_kill {oom_kills}\noom_group_kill 0\n"
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(tree.path.join("memory.events"))
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// The kill frees memory: in one sample `memory_high` ends and `oom_killed` begins. The verdict
/// goes from one reason to the other without a moment of "ready" between them (which would be a
/// counted transition, a gate patch and an Event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_that_ends_memory_high_is_no_moment_of_ready() {
    let tree = Tree::new();
    let env = [
        ("SIDEWATCH_MEMORY_INTERVAL", "1h"),
        ("SIDEWATCH_MEMORY_OOM_COOLDOWN", "30s"),
        ("SIDEWATCH_MEMORY_PREDICT_OOM_WITHIN", "null"),
    ];
    let (sw, _app) = watch(&tree, &env).await;
    tree.working_set(95);
    events_in_place(&tree, 0);
    sw.wait_reason("memory_high", WITHIN).await;
    let to_ready = "sidewatch_ready_transitions_total{to=\"ready\"}";
    let before = sw.metric(to_ready).await;

    tree.working_set(10);
    events_in_place(&tree, 1);
    sw.wait_reason("oom_killed", WITHIN).await;
    // The kill's notification and the next sample of the working set may come as two looks:
    // memory_high ends at the latest with the look after the kill.
    eventually("oom_killed alone", WITHIN, || async {
        let (_, body) = sw.readyz().await;
        (body["reasons"].as_array()?.len() == 1).then_some(())
    })
    .await;
    assert_eq!(
        sw.metric(to_ready).await,
        before,
        "a moment of ready between the reasons"
    );
}

async fn read_errors(sw: &Sidewatch, kind: &str) -> f64 {
    let series = format!("sidewatch_memory_read_errors_total{{kind=\"{kind}\"}}");
    sw.metric(&series).await.unwrap_or(0.0)
}

/// A container restart removes its cgroup and the runtime makes a new one at the same path. With
/// polling at an hour, only notifications can see it: the parent directory's watch sees it go
/// (classified `gone`, no veto) and come back, the new `memory.events` is watched, and its first
/// kill counts although the old cgroup had counted more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cgroup_removed_and_made_again_is_watched_again() {
    let tree = Tree::new();
    tree.oom_kills(2);
    let (sw, _app) = watch(&tree, &NOTIFIED_ONLY).await;
    tree.oom_kills(3);
    sw.wait_reason("oom_killed", WITHIN).await;
    assert_eq!(sw.metric("sidewatch_oom_kills_total").await, Some(1.0));
    sw.wait_ready(WITHIN).await;

    tree.remove();
    eventually("the cgroup counted gone", WITHIN, || async {
        (read_errors(&sw, "gone").await >= 1.0).then_some(())
    })
    .await;
    sw.wait_log("is gone").await;
    assert_eq!(sw.readyz().await.0, 200, "not knowing is no veto");
    assert_eq!(sw.get("/livez").await.0, 200);

    tree.put(tree.staged(40, 0));
    wait_metric(&sw, "sidewatch_memory_usage_bytes", (40 * MIB) as f64).await;
    sw.wait_log("a new cgroup directory is here").await;
    tree.oom_kills(1);
    let body = sw.wait_reason("oom_killed", WITHIN).await;
    assert_eq!(body["reasons"][0]["signal"], "memory:oom");
    assert_eq!(sw.metric("sidewatch_oom_kills_total").await, Some(2.0));
    sw.wait_ready(WITHIN).await;
    // Removed and made again once more, at once, with two kills already: still watched.
    let again = tree.staged(45, 2);
    tree.remove();
    tree.put(again);
    wait_metric(&sw, "sidewatch_oom_kills_total", 4.0).await;
    assert_eq!(
        sw.metric("sidewatch_memory_usage_bytes").await,
        Some((45 * MIB) as f64)
    );
}

/// As root, chmod does not stop a read: a file turns unreadable by becoming a directory (EISDIR),
/// by going, or by holding garbage. Each is counted by kind and logged, none vetoes, and once the
/// file reads again the memory signals decide again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_turn_unreadable_are_classified_and_recover() {
    let tree = Tree::new();
    let (sw, _app) = watch(&tree, &THRESHOLDS_ONLY).await;
    let current = tree.path.join("memory.current");
    type Break = fn(&Path);
    let ways: [(&str, Break, &str); 3] = [
        (
            "io",
            |p| {
                std::fs::remove_file(p).unwrap();
                std::fs::create_dir(p).unwrap();
            },
            "Is a directory",
        ),
        (
            "missing",
            |p| std::fs::remove_file(p).unwrap(),
            "is missing",
        ),
        (
            "garbled",
            |p| std::fs::write(p, "\u{0}\u{1}garbage\n").unwrap(),
            "is garbled",
        ),
    ];
    for (i, (kind, break_it, logged)) in ways.into_iter().enumerate() {
        let before = read_errors(&sw, kind).await;
        tree.working_set(95);
        sw.wait_reason("memory_high", WITHIN).await;
        break_it(&current);
        eventually(&format!("a {kind} read counted"), WITHIN, || async {
            (read_errors(&sw, kind).await > before).then_some(())
        })
        .await;
        sw.wait_log(logged).await;
        sw.wait_ready(WITHIN).await;
        if current.is_dir() {
            std::fs::remove_dir(&current).unwrap();
        }
        tree.working_set(60 + i as u64);
        wait_metric(
            &sw,
            "sidewatch_memory_usage_bytes",
            ((60 + i as u64) * MIB) as f64,
        )
        .await;
    }
    eventually("three recoveries logged", WITHIN, || {
        let logs = sw.logs();
        let n = logs.iter().filter(|l| l.contains("memory: readable again"));
        let found = n.count() >= 3;
        async move { found.then_some(()) }
    })
    .await;

    tree.remove();
    eventually("a gone read counted", WITHIN, || async {
        (read_errors(&sw, "gone").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(sw.readyz().await.0, 200);
    tree.put(tree.staged(94, 0));
    let body = sw.wait_reason("memory_high", WITHIN).await;
    assert_eq!(body["reasons"][0]["signal"], "memory:usage");
}

#[test]
fn a_directory_without_memory_files_is_refused_at_start() {
    let dir = tempdir::Dir::new();
    let out = common::sidewatch_command()
        .args([
            "run",
            "--target",
            "tcp://127.0.0.1:1",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--cgroup", dir.path().to_str().unwrap()])
        .output_within(COMMAND_WITHIN)
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a memory cgroup"), "{stderr}");
}
