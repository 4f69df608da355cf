//! The wall clock jumping under a running sidewatch: the real binary runs under libfaketime
//! (LD_PRELOAD, the wall clock read from a file the test rewrites, the monotonic clock left
//! alone). Each test checks that every jump reached the binary (a reason's `since`, or its `Date`
//! header for a jump forward), so none can pass because the clock never moved. Needs the Debian
//! package `libfaketime`.

#[allow(unused_imports)]
use crate::{common, fake_api};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use common::{eventually, healthy, skip_or_fail, tempdir, Behaviour, Sidewatch, Upstream};
use fake_api::FakeApi;

const WITHIN: Duration = Duration::from_secs(10);
const HOUR: f64 = 3600.0;
const DAY: f64 = 86_400.0;

fn libfaketime() -> Option<PathBuf> {
    let found = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    if found.is_none() {
        skip_or_fail("libfaketime is not installed (Debian package libfaketime)");
    }
    found
}

/// The wall clock of the processes started with `env()`: an offset in a file libfaketime reads
/// at every call.
struct FakeClock {
    dir: tempdir::Dir,
    /// The file libfaketime reads.
    stamp: PathBuf,
    lib: PathBuf,
}

impl FakeClock {
    fn new(lib: PathBuf) -> FakeClock {
        let dir = tempdir::Dir::new();
        let stamp = dir.path().join("faketime");
        let clock = FakeClock { dir, stamp, lib };
        clock.set("+0");
        clock
    }

    /// Moves the wall clock to real time plus `offset` (`-1h`, `+1d`), whole at once: a reader
    /// never sees a half-written file.
    fn set(&self, offset: &str) {
        let next = self.dir.path().join("faketime.next");
        std::fs::write(&next, format!("{offset}\n")).unwrap();
        std::fs::rename(&next, &self.stamp).unwrap();
    }

    fn env(&self) -> [(&'static str, &str); 4] {
        [
            ("LD_PRELOAD", self.lib.to_str().unwrap()),
            ("FAKETIME_TIMESTAMP_FILE", self.stamp.to_str().unwrap()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ]
    }
}

/// Seconds from real time to sidewatch's wall clock, from its `Date` header (one-second
/// resolution). Only after jumps forward: hyper renders the header again once its wall clock
/// passes the next second it expects, so after a jump back it stays put for the jump's length.
async fn skew(sw: &Sidewatch) -> f64 {
    let resp = common::client().get(sw.url("/livez")).send().await.unwrap();
    let date = resp.headers()["date"].to_str().unwrap().to_owned();
    let theirs = http_date(&date);
    seconds_between(SystemTime::now(), theirs)
}

fn seconds_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// `Thu, 26 Nov 2026 15:58:51 GMT`, the HTTP date format.
fn http_date(text: &str) -> SystemTime {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months.iter().position(|m| *m == parts[2]).unwrap() + 1;
    let rfc3339 = format!("{}-{month:02}-{:0>2}T{}Z", parts[3], parts[1], parts[4]);
    humantime::parse_rfc3339(&rfc3339).unwrap()
}

async fn wait_skew(sw: &Sidewatch, want: f64) {
    eventually(
        &format!("sidewatch's clock at {want} s"),
        WITHIN,
        || async { ((skew(sw).await - want).abs() < 5.0).then_some(()) },
    )
    .await;
}

/// Seconds from real time to sidewatch's wall clock, from the `since` of a failure it sees now:
/// the app answers 503 until sidewatch says so, then 200 again.
async fn since_skew(s: &Setup) -> f64 {
    s.up.set(Behaviour::Status(503, ""));
    let body = s.sw.wait_reason("http_5xx", WITHIN).await;
    let since = humantime::parse_rfc3339(body["reasons"][0]["since"].as_str().unwrap()).unwrap();
    s.up.set(healthy());
    s.sw.wait_ready(WITHIN).await;
    seconds_between(SystemTime::now(), since)
}

fn near(skew: f64, want: f64) -> bool {
    (skew - want).abs() < 60.0
}

struct Setup {
    clock: FakeClock,
    api: FakeApi,
    up: Upstream,
    sw: Sidewatch,
    _dir: tempdir::Dir,
}

async fn setup(lib: PathBuf) -> Setup {
    let clock = FakeClock::new(lib);
    let api = FakeApi::start(fake_api::pod(false)).await;
    let up = Upstream::start(healthy()).await;
    let dir = tempdir::Dir::new();
    let kubeconfig = api.kubeconfig(dir.path());
    let mut env = clock.env().to_vec();
    env.extend([
        ("SIDEWATCH_KUBERNETES_RESTART_COOLDOWN", "3s"),
        ("SIDEWATCH_DRAIN_PASSIVE_OPENS", "false"),
    ]);
    let sw = Sidewatch::start_sidecar(&up.url(), "100ms", &kubeconfig, &env);
    sw.wait_ready(WITHIN).await;
    api.wait_watching().await;
    Setup {
        clock,
        api,
        up,
        sw,
        _dir: dir,
    }
}

/// Restarts the app container (`finishedAt` on the real clock, as the kubelet's) and returns how
/// long sidewatch held the pod unready for it, measured here on the monotonic clock. `during`
/// runs once the hold is seen.
async fn restart_hold(s: &Setup, count: i32, during: impl FnOnce()) -> Duration {
    let began = Instant::now();
    s.api
        .update_pod(|pod| fake_api::app_restarted(pod, count, 1, "Error", SystemTime::now()));
    s.sw.wait_reason("container_restarted", WITHIN).await;
    during();
    s.sw.wait_ready(Duration::from_secs(30)).await;
    began.elapsed()
}

/// The restart cooldown (3 s) lasts 3 s whatever the wall clock does: back an hour during it
/// (on the wall clock it would last an hour more), forward a day during it (it would end at
/// once), and with the kubelet's `finishedAt` an hour ahead of sidewatch's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_cooldowns_run_on_the_monotonic_clock() {
    let Some(lib) = libfaketime() else {
        return;
    };
    let s = setup(lib).await;
    wait_skew(&s.sw, 0.0).await;

    let back = restart_hold(&s, 1, || s.clock.set("-1h")).await;
    let behind = since_skew(&s).await;
    assert!(near(behind, -HOUR), "sidewatch's clock is {behind} s off");

    let skewed = restart_hold(&s, 2, || {}).await;
    let ahead = restart_hold(&s, 3, || s.clock.set("+1d")).await;
    wait_skew(&s.sw, DAY).await;
    eprintln!(
        "3 s cooldown held {:.1} s (clock back 1 h during it), {:.1} s (finishedAt 1 h ahead), \
         {:.1} s (clock forward 1 d during it)",
        back.as_secs_f64(),
        skewed.as_secs_f64(),
        ahead.as_secs_f64()
    );
    for (what, held) in [
        ("back an hour", back),
        ("skewed an hour", skewed),
        ("forward a day", ahead),
    ] {
        assert!(
            held >= Duration::from_millis(2900) && held < Duration::from_secs(8),
            "{what}: the 3 s cooldown held {held:?}"
        );
    }
}

/// Probes keep their interval across jumps of the wall clock (accepts counted at the app), the
/// verdict moves only when the app does, and the Events' rate limit does not refill when the
/// clock leaps a day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_rate_limits_ignore_wall_clock_jumps() {
    let Some(lib) = libfaketime() else {
        return;
    };
    let s = setup(lib).await;
    let to_not_ready = "sidewatch_ready_transitions_total{to=\"not_ready\"}";
    let transitions = s.sw.metric(to_not_ready).await.unwrap();
    let offsets = [("+0", 0.0), ("-1h", -HOUR), ("+1d", DAY), ("-1d", -DAY)];
    let mut rates = Vec::new();
    for (offset, want) in offsets {
        s.clock.set(offset);
        let skew = since_skew(&s).await;
        assert!(
            near(skew, want),
            "at {offset}, sidewatch's clock is {skew} s off"
        );
        // Probing goes on (a clock read for sleeping would stall it an hour), and never faster
        // than the interval (nor catching up a day): at most one probe per 100 ms since.
        let before = s.up.requests.load(Ordering::SeqCst);
        let from = Instant::now();
        eventually(&format!("5 probes at clock {offset}"), WITHIN, || async {
            (s.up.requests.load(Ordering::SeqCst) - before >= 5).then_some(())
        })
        .await;
        let n = s.up.requests.load(Ordering::SeqCst) - before;
        let most = (from.elapsed().as_millis() / 100) as usize + 2;
        rates.push((offset, n, from.elapsed()));
        assert!(
            n <= most,
            "{n} probes in {:?} at clock {offset}",
            from.elapsed()
        );
        assert_eq!(s.sw.readyz().await.0, 200, "at {offset}");
    }
    eprintln!("probes and time to 5 at each wall clock offset (interval 100 ms): {rates:?}");
    assert_eq!(
        s.sw.metric(to_not_ready).await.unwrap() - transitions,
        offsets.len() as f64,
        "one transition per 503, none from the clock"
    );

    // The Events' burst (5) is used up by now; leap a day: no token comes from the leap.
    s.sw.wait_metric_at_least("sidewatch_events_dropped_total", 1.0)
        .await;
    let posted = |api: &FakeApi| {
        api.requests()
            .iter()
            .filter(|r| r.path.contains("/events") && r.method != "GET")
            .count()
    };
    let (events, dropped) = (
        posted(&s.api),
        s.sw.metric("sidewatch_events_dropped_total").await.unwrap(),
    );
    s.clock.set("+1d");
    wait_skew(&s.sw, DAY).await;
    s.up.set(Behaviour::Status(503, ""));
    s.sw.wait_reason("http_5xx", WITHIN).await;
    s.sw.wait_metric_at_least("sidewatch_events_dropped_total", dropped + 1.0)
        .await;
    assert_eq!(
        posted(&s.api),
        events,
        "the leap refilled the Events' burst"
    );
}
