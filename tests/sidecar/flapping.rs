//! An app whose health flaps many times a second, probed every 10 ms: the verdict obeys the
//! thresholds (its transitions within what the rules allow for the sequence of answers the app
//! gave), every transition is counted, and the logs and the Kubernetes Events are rate-limited while the latest state
//! stays visible in both.

#[allow(unused_imports)]
use crate::{common, fake_api};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, tempdir, Behaviour, Sidewatch};
use fake_api::FakeApi;
use tokio::net::{TcpListener, TcpStream};

const WITHIN: Duration = Duration::from_secs(10);
/// Lengths of the phases the app flaps through, in turn up and down: 20–50 ms each.
const PHASES_MS: [u64; 6] = [20, 35, 50, 25, 40, 30];
/// The log limit of `src/watcher.rs`: lines in a burst per window.
const LOG_BURST: usize = 10;

/// Up or down at `at`, flapping from `start` for `length`, down first; up outside.
fn up_at(start: Instant, length: Duration, at: Instant) -> bool {
    let Some(elapsed) = at.checked_duration_since(start) else {
        return true;
    };
    if elapsed >= length {
        return true;
    }
    let cycle: u64 = PHASES_MS.iter().sum();
    let mut t = (elapsed.as_millis() as u64) % cycle;
    for (i, ms) in PHASES_MS.iter().enumerate() {
        if t < *ms {
            return i % 2 == 1;
        }
        t -= ms;
    }
    true
}

/// How many down phases a flap of `length` has.
fn downs(length: Duration) -> usize {
    let mut t = 0;
    let mut n = 0;
    for (i, ms) in PHASES_MS.iter().cycle().enumerate() {
        if t >= length.as_millis() as u64 {
            break;
        }
        n += usize::from(i % 2 == 0);
        t += ms;
    }
    n
}

/// An app that answers 200 when up and 503 when down, and records what it answered to each
/// connection in order: sidewatch probes one check at a time, so this is the sequence of its
/// observations.
struct FlappingApp {
    addr: SocketAddr,
    served: Arc<Mutex<Vec<bool>>>,
    flap: Arc<Mutex<Option<(Instant, Duration)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FlappingApp {
    async fn start() -> FlappingApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(Mutex::new(Vec::new()));
        let flap = Arc::new(Mutex::new(None::<(Instant, Duration)>));
        let (log, schedule) = (served.clone(), flap.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let now = Instant::now();
                let up = schedule
                    .lock()
                    .unwrap()
                    .is_none_or(|(start, length)| up_at(start, length, now));
                log.lock().unwrap().push(up);
                tokio::spawn(answer(stream, if up { 200 } else { 503 }));
            }
        });
        FlappingApp {
            addr,
            served,
            flap,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/healthz", self.addr)
    }

    fn flap_for(&self, length: Duration) {
        *self.flap.lock().unwrap() = Some((Instant::now(), length));
    }

    fn served(&self) -> Vec<bool> {
        self.served.lock().unwrap().clone()
    }
}

impl Drop for FlappingApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(stream: TcpStream, status: u16) {
    common::answer(stream, Behaviour::Status(status, "ok\n")).await
}

/// What docs/verdict.md allows a probe's checks to cause, as bounds rather than a replay of the
/// engine: every transition to not ready needs a run of at least `failure_threshold` failures of
/// its own (the return to ready between two transitions breaks the run), and every such run must
/// be one when it follows the first success or `success_threshold` successes in a row (the
/// signal is up then, whatever came before). Failures before the first success (starting) count
/// for nothing. (at least, at most) transitions to not ready.
fn allowed(checks: &[bool], failure_threshold: u32, success_threshold: u32) -> (u64, u64) {
    let mut runs: Vec<(bool, u32)> = Vec::new();
    for &ok in checks.iter().skip_while(|ok| !**ok) {
        match runs.last_mut() {
            Some((last, n)) if *last == ok => *n += 1,
            _ => runs.push((ok, 1)),
        }
    }
    let (mut at_least, mut at_most) = (0, 0);
    for (i, &(ok, n)) in runs.iter().enumerate() {
        if ok || n < failure_threshold {
            continue;
        }
        at_most += 1;
        // runs[i - 1] is the success run before this one; runs[0] is the first.
        if i == 1 || runs[i - 1].1 >= success_threshold {
            at_least += 1;
        }
    }
    (at_least, at_most)
}

async fn transitions(sw: &Sidewatch) -> (f64, f64) {
    let to = |t: &str| format!("sidewatch_ready_transitions_total{{to=\"{t}\"}}");
    (
        sw.metric(&to("ready")).await.unwrap_or(0.0),
        sw.metric(&to("not_ready")).await.unwrap_or(0.0),
    )
}

/// Waits until the app has answered `n` more checks, all of them up: every earlier check's
/// observation has reached the engine by then.
async fn settle(app: &FlappingApp, n: usize) {
    let seen = app.served().len();
    eventually("the app to be checked while up", WITHIN, || {
        let served = app.served();
        let done = served.len() >= seen + n && served[served.len() - n..].iter().all(|up| *up);
        async move { done.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verdict_obeys_the_thresholds_and_every_transition_is_counted() {
    // Thresholds that forbid nearly every flap (no down phase lasts 8 checks), some, and none.
    for (failure_threshold, success_threshold) in [(8u32, 2u32), (3, 2), (1, 1)] {
        let app = FlappingApp::start().await;
        let url = app.url();
        let (ft, st) = (failure_threshold.to_string(), success_threshold.to_string());
        let sw = Sidewatch::start(
            &[
                "--target",
                &url,
                "--interval",
                "10ms",
                "--failure-threshold",
                &ft,
                "--success-threshold",
                &st,
                "--cgroup",
                "none",
            ],
            &[],
        );
        sw.wait_ready(WITHIN).await;
        let length = Duration::from_secs(3);
        let began = Instant::now();
        app.flap_for(length);
        eventually("the flapping to end", WITHIN, || async {
            (began.elapsed() > length).then_some(())
        })
        .await;
        sw.wait_ready(WITHIN).await;
        settle(&app, 5).await;
        let (to_ready, to_not_ready) = transitions(&sw).await;
        // Checks after the last settled one are up and change nothing once ready.
        let checks = app.served();
        let (at_least, at_most) = allowed(&checks, failure_threshold, success_threshold);
        let (to_ready, to_not_ready) = (to_ready as u64, to_not_ready as u64);
        let flaps = downs(length) as u64;
        eprintln!(
            "thresholds {failure_threshold}/{success_threshold}: {} checks, {flaps} down phases, \
             {to_not_ready} transitions to not ready (allowed {at_least}..={at_most})",
            checks.len()
        );
        assert!(
            (at_least..=at_most).contains(&to_not_ready),
            "thresholds {failure_threshold}/{success_threshold}: {to_not_ready} transitions to not \
             ready, the rules allow {at_least}..={at_most}"
        );
        // Ready at the start (the first success) and again at the end.
        assert_eq!(to_ready, to_not_ready + 1, "every way down came back up");
        match failure_threshold {
            1 => {
                assert_eq!(at_least, at_most, "threshold 1/1: every failure run is one");
                assert!(to_not_ready >= flaps / 2, "the app hardly flapped");
            }
            3 => assert!(to_not_ready < flaps, "no flap held back"),
            _ => assert!(to_not_ready <= flaps / 10, "hysteresis did not hold"),
        }
        assert_eq!(sw.get("/livez").await.0, 200);
    }
}

/// The app's port flaps: its listening socket closes (connections refused) and opens again every
/// 20–50 ms for 4 s; then the app answers 503. Thresholds 1/1, so nearly every flap is a
/// transition. The metrics count them all; the log has at most a burst of lines per window and
/// then one line with what it did not log and the state at the window's end (not ready, 5xx); the
/// Events stop after their burst, and once a token frees the pod's last Event says what the state
/// is (`NotReadyHttp5xx`, a reason no Event of the burst had); the gate is patched a few times a
/// second at most, not at every flap, and ends False, then True once the app is healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_port_is_counted_and_its_logs_and_events_are_rate_limited() {
    let api = FakeApi::start(fake_api::pod(true)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Short enough that no token refills while it lasts (one per 10 s).
    let length = Duration::from_secs(4);
    let flap = Arc::new(Mutex::new(Flap {
        start: None,
        length,
        after: 503,
    }));
    let flapper = tokio::spawn(flap_port(listener, flap.clone(), accepted.clone()));
    let dir = tempdir::Dir::new();
    let kubeconfig = api.kubeconfig(dir.path());
    let sw = Sidewatch::start_sidecar(
        &format!("http://{addr}/healthz"),
        "10ms",
        &kubeconfig,
        &[("SIDEWATCH_DRAIN_PASSIVE_OPENS", "false")],
    );
    sw.wait_ready(WITHIN).await;
    api.wait_gate("True", WITHIN).await;
    let events_before = event_requests(&api).len();
    let patches_before = api.gate_patches().len();
    let began = Instant::now();
    flap.lock().unwrap().start = Some(began);

    eventually("the flapping to end", Duration::from_secs(20), || async {
        (began.elapsed() > length).then_some(())
    })
    .await;
    sw.wait_reason("http_5xx", WITHIN).await;
    let (to_ready, to_not_ready) = transitions(&sw).await;
    let total = (to_ready + to_not_ready) as u64;
    assert!(
        to_not_ready >= (downs(length) / 4) as f64,
        "{to_not_ready} transitions to not ready for {} down phases",
        downs(length)
    );

    // The log: a burst, then a summary that accounts for the rest and shows the state at the end.
    let summary = eventually(
        "the summary of what was not logged",
        Duration::from_secs(20),
        || {
            let logs = sw.logs();
            let logged = sw_lines(&sw, "readiness changed") as u64;
            async move {
                let lines: Vec<String> = logs
                    .into_iter()
                    .filter(|l| l.contains("readiness flapping"))
                    .collect();
                let counted: u64 = lines.iter().map(|l| field(l, "transitions")).sum();
                (logged + counted >= total).then_some(lines)
            }
        },
    )
    .await;
    let logged = sw_lines(&sw, "readiness changed");
    assert!(
        logged <= 2 * LOG_BURST,
        "{logged} transition lines for {total} transitions"
    );
    let not_logged: u64 = summary.iter().map(|l| field(l, "transitions")).sum();
    eprintln!(
        "{total} transitions: {logged} logged, {not_logged} in {} summary line(s); last: {}",
        summary.len(),
        summary.last().unwrap()
    );
    assert_eq!(
        logged as u64 + not_logged,
        total,
        "every transition is logged or counted in a summary"
    );
    let last = summary.last().unwrap();
    assert!(
        last.contains("ready=false") && last.contains("http_5xx"),
        "the latest state is visible: {last}"
    );

    // Events: the burst (Ready and NotReadyRefused), then the latest state once a token is free.
    let trailing = eventually(
        "a last Event saying NotReadyHttp5xx",
        Duration::from_secs(25),
        || async {
            let events = event_requests(&api);
            let last = events.last()?;
            (last.body["reason"] == "NotReadyHttp5xx").then(|| last.body["note"].to_string())
        },
    )
    .await;
    let posted = event_requests(&api).len() - events_before;
    let refills = began.elapsed().as_secs() / 10;
    let dropped = sw.metric("sidewatch_events_dropped_total").await.unwrap();
    eprintln!(
        "events: {posted} posted (burst 5, {refills} refill(s)), {dropped} dropped; the last note: {trailing}"
    );
    assert!(
        posted as u64 <= 5 + refills + 1,
        "{posted} Events for {total} transitions"
    );
    assert!(
        dropped >= (total as usize - posted) as f64 - 1.0,
        "{dropped}"
    );
    assert!(
        trailing.contains("not posted (rate limit)"),
        "the last Event is the held-back latest state: {trailing}"
    );

    api.wait_gate("False", WITHIN).await;
    let patches = api.gate_patches().len() - patches_before;
    let seconds = began.elapsed().as_secs();
    eprintln!(
        "gate patches: {patches} in {seconds}s; the app accepted {} connections",
        accepted.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(
        patches as u64 <= 5 + 2 * (seconds + 1),
        "{patches} gate patches for {total} transitions"
    );
    assert_eq!(sw.get("/livez").await.0, 200);

    flap.lock().unwrap().after = 200;
    sw.wait_ready(WITHIN).await;
    api.wait_gate("True", WITHIN).await;
    flapper.abort();
}

/// What the app does: answers 200 before `start`, flaps for `length`, then answers `after`.
struct Flap {
    start: Option<Instant>,
    length: Duration,
    after: u16,
}

impl Flap {
    /// The status to answer with, or `None` for a closed port.
    fn status(&self, at: Instant) -> Option<u16> {
        match self.start {
            Some(start) if at >= start + self.length => Some(self.after),
            Some(start) => up_at(start, self.length, at).then_some(200),
            None => Some(200),
        }
    }
}

/// Serves `listener`'s port as `flap` says; closes the listening socket while it says closed
/// (connections refused), and opens it again.
async fn flap_port(
    listener: TcpListener,
    flap: Arc<Mutex<Flap>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
) {
    let addr = listener.local_addr().unwrap();
    let mut listener = Some(listener);
    loop {
        let status = flap.lock().unwrap().status(Instant::now());
        match (&listener, status) {
            (Some(l), Some(status)) => {
                let accept = tokio::time::timeout(Duration::from_millis(2), l.accept()).await;
                if let Ok(Ok((stream, _))) = accept {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::spawn(answer(stream, status));
                }
            }
            (Some(_), None) => listener = None,
            (None, Some(_)) => listener = TcpListener::bind(addr).await.ok(),
            // The app's own timing, not a wait for something: the port stays closed this long.
            (None, None) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

fn sw_lines(sw: &Sidewatch, text: &str) -> usize {
    sw.logs().iter().filter(|l| l.contains(text)).count()
}

/// The value of `key=N` in a text log line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or(0)
}

fn event_requests(api: &FakeApi) -> Vec<fake_api::Recorded> {
    api.requests()
        .into_iter()
        .filter(|r| r.path.contains("/events") && (r.method == "POST" || r.method == "PATCH"))
        .filter(|r| r.body["action"] == "Readiness")
        .collect()
}
