//! Hostile clients of sidewatch's own port: slowloris, floods, oversized requests, idle
//! keep-alives. Through all of it the kubelet's probe of `/readyz` (a fresh connection, default
//! timeout 1 s) keeps answering, and memory stays bounded.

#[allow(unused_imports)]
use crate::common;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{healthy, skip_or_fail, which, Sidewatch, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

const WITHIN: Duration = Duration::from_secs(10);
const KUBELET_TIMEOUT: Duration = Duration::from_secs(1);
/// What a burst of hostile clients may add to sidewatch's resident memory.
const RSS_GROWTH_KIB: u64 = 16 * 1024;

/// One probe as the kubelet makes it: a fresh connection and the whole answer within its timeout.
/// Returns how long it took and the status line, or why it failed.
async fn kubelet_probe(addr: SocketAddr) -> (Duration, String) {
    let start = Instant::now();
    let answer = tokio::time::timeout(KUBELET_TIMEOUT, async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: sidewatch\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    })
    .await;
    let status = match answer {
        Ok(Ok(buf)) => String::from_utf8_lossy(&buf)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned(),
        Ok(Err(e)) => format!("failed: {e}"),
        Err(_) => format!("no answer within {KUBELET_TIMEOUT:?}"),
    };
    (start.elapsed(), status)
}

/// The kubelet's default failureThreshold: that many failed probes in a row turn the pod unready.
const KUBELET_FAILURE_THRESHOLD: usize = 3;

/// `n` probes in a row, judged as the kubelet judges them: a slow answer on a loaded machine is
/// one failure, and only `KUBELET_FAILURE_THRESHOLD` in a row would lock the kubelet out.
/// Returns the slowest and how many failed.
async fn kubelet_probes(addr: SocketAddr, n: usize) -> (Duration, usize) {
    let (mut worst, mut failed, mut in_a_row) = (Duration::ZERO, 0, 0);
    for _ in 0..n {
        let (took, status) = kubelet_probe(addr).await;
        worst = worst.max(took);
        if status == "HTTP/1.1 200 OK" {
            in_a_row = 0;
        } else {
            failed += 1;
            in_a_row += 1;
            assert!(
                in_a_row < KUBELET_FAILURE_THRESHOLD,
                "{in_a_row} kubelet probes failed in a row, the last: {status}"
            );
        }
    }
    (worst, failed)
}

/// The attacks run one at a time: a flood in one test must not be the load another measures.
static ATTACKS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One series of `/metrics`, over a fresh connection: a pooled one may have been closed to make
/// room, as every idle connection may be under attack.
async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let answer = send_raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: sidewatch\r\nConnection: close\r\n\r\n",
    )
    .await;
    common::sample(&answer, series).unwrap_or_else(|| panic!("no {series} in {answer}"))
}

async fn wait_metric_at_least(addr: SocketAddr, series: &str, min: f64) {
    common::eventually(&format!("{series} >= {min}"), WITHIN, || async {
        (metric(addr, series).await >= min).then_some(())
    })
    .await;
}

fn rss_kib(sw: &Sidewatch) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", sw.child.id())).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Waits until sidewatch is ready; its resident memory then, before any hostile client.
async fn ready_rss(sw: &Sidewatch) -> u64 {
    sw.wait_ready(WITHIN).await;
    rss_kib(sw)
}

/// Asserts what the hostile clients added to the resident memory, and returns it.
fn assert_rss_bounded(sw: &Sidewatch, before: u64) -> u64 {
    let grown = rss_kib(sw).saturating_sub(before);
    assert!(grown < RSS_GROWTH_KIB, "RSS grew by {grown} KiB");
    grown
}

/// Client tasks that stop when dropped.
struct Attack {
    tasks: Vec<JoinHandle<()>>,
    /// Connections the attackers opened.
    connects: Arc<AtomicUsize>,
}

impl Drop for Attack {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Hostile clients connect from 127.0.0.2, the probes from 127.0.0.1: in a pod the kubelet
/// probes from the node's address, and an attacker cannot take that.
const HOSTILE: [u8; 4] = [127, 0, 0, 2];

async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// `n` slowloris clients: each sends a request line and then endless headers a byte at a time,
/// and reconnects whenever sidewatch closes the connection.
fn slowloris(addr: SocketAddr, n: usize) -> Attack {
    let connects = Arc::new(AtomicUsize::new(0));
    let tasks = (0..n)
        .map(|_| {
            let connects = connects.clone();
            tokio::spawn(async move {
                loop {
                    let Ok(mut s) = connect_from(HOSTILE, addr).await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    connects.fetch_add(1, Ordering::Relaxed);
                    if s.write_all(b"GET /readyz HTTP/1.1\r\n").await.is_err() {
                        continue;
                    }
                    for byte in b"X-Slow: 1\r\n".iter().cycle() {
                        // The pace of the attack, not a wait for sidewatch.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if s.write_all(&[*byte]).await.is_err() {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    Attack { tasks, connects }
}

/// `Sidewatch::start` with the descriptor limit at `nofile`, as a hardened container may set it.
fn start_limited(up: &Upstream, nofile: u32, envs: &[(&str, &str)]) -> Option<Sidewatch> {
    if which("prlimit").is_none() {
        skip_or_fail("prlimit (util-linux) is not installed");
        return None;
    }
    let url = up.url();
    let limit = format!("--nofile={nofile}");
    let args = [
        "run",
        "--target",
        &url,
        "--interval",
        "100ms",
        "--listen",
        "127.0.0.1:0",
    ];
    Some(Sidewatch::launch_under(&["prlimit", &limit], &args, envs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_never_locks_out_the_kubelet_probe() {
    let _one_at_a_time = ATTACKS.lock().await;
    let up = Upstream::start(healthy()).await;
    // 500 slow clients against 256 descriptors: without a cap below the limit, accept() fails and
    // the probe waits in the backlog behind the attackers.
    let Some(sw) = start_limited(&up, 256, &[]) else {
        return;
    };
    let rss_before = ready_rss(&sw).await;

    let attack = slowloris(sw.addr, 500);
    wait_metric_at_least(sw.addr, "sidewatch_admin_evictions_total", 500.0).await;
    let (worst, failed) = kubelet_probes(sw.addr, 40).await;

    let open = metric(sw.addr, "sidewatch_admin_connections").await;
    // The cap is a quarter of the 256 descriptors; the scrape's own connection is one of them.
    assert!(open <= 64.0, "{open} admin connections open, cap 64");
    let grown = assert_rss_bounded(&sw, rss_before);
    eprintln!(
        "slowloris: {} attacker connections, slowest probe {worst:?}, {failed} of 40 failed, {open} open, RSS +{grown} KiB",
        attack.connects.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_and_idle_keep_alives_leave_readyz_fast() {
    let _one_at_a_time = ATTACKS.lock().await;
    let up = Upstream::start(healthy()).await;
    let url = up.url();
    let sw = Sidewatch::start(&["--target", &url, "--interval", "100ms"], &[]);
    let rss_before = ready_rss(&sw).await;

    // 300 keep-alive connections that made one request and went quiet: more than the cap of 256.
    let mut idle = Vec::new();
    for _ in 0..300 {
        let mut s = connect_from(HOSTILE, sw.addr).await.expect("connect");
        s.write_all(b"GET /livez HTTP/1.1\r\nHost: sidewatch\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        idle.push(s);
    }
    // Four clients scraping /metrics, the largest answer, as fast as they can.
    let scraped = Arc::new(AtomicUsize::new(0));
    let flood = Attack {
        tasks: (0..4)
            .map(|_| {
                let (scraped, url) = (scraped.clone(), sw.url("/metrics"));
                tokio::spawn(async move {
                    let client = common::client();
                    loop {
                        if let Ok(resp) = client.get(&url).send().await {
                            let _ = resp.bytes().await;
                            scraped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect(),
        connects: Arc::default(),
    };
    common::eventually("the flood to be under way", WITHIN, || async {
        (scraped.load(Ordering::Relaxed) >= 500).then_some(())
    })
    .await;

    let app_probes = up.requests.load(Ordering::SeqCst);
    let (worst, failed) = kubelet_probes(sw.addr, 40).await;
    // The app's probes kept running on their own runtime meanwhile.
    common::eventually("app probes during the flood", WITHIN, || async {
        (up.requests.load(Ordering::SeqCst) >= app_probes + 5).then_some(())
    })
    .await;
    let evicted = metric(sw.addr, "sidewatch_admin_evictions_total").await;
    assert!(
        evicted >= 44.0,
        "only {evicted} evictions with 304 connections over 256"
    );
    let grown = assert_rss_bounded(&sw, rss_before);
    eprintln!(
        "flood: {} scrapes, slowest probe {worst:?}, {failed} of 40 failed, {evicted} evictions, RSS +{grown} KiB",
        scraped.load(Ordering::Relaxed)
    );
    drop(flood);
}

/// Sends `request` (errors ignored: sidewatch may close mid-way) and returns what came back.
async fn send_raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WITHIN, s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "sidewatch kept an oversized request open");
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_and_forgotten() {
    let up = Upstream::start(healthy()).await;
    let url = up.url();
    let sw = Sidewatch::start(&["--target", &url, "--interval", "100ms"], &[]);
    let rss_before = ready_rss(&sw).await;

    let big_header = format!(
        "GET /readyz HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(1024 * 1024));
    let many_headers = format!("GET /readyz HTTP/1.1\r\n{}\r\n", "a: b\r\n".repeat(100_000));
    for (what, request) in [
        ("64 KiB header", big_header),
        ("1 MiB request target", long_target),
        ("100,000 headers", many_headers),
    ] {
        let answer = send_raw(sw.addr, request.as_bytes()).await;
        // 431, or a reset that overtook it while the request was still being written (the
        // answer is then lost with the connection); either way the next probe is answered.
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
            "{what}: {}",
            answer.lines().next().unwrap_or("")
        );
        assert_eq!(
            kubelet_probe(sw.addr).await.1,
            "HTTP/1.1 200 OK",
            "after {what}"
        );
    }

    // A body nobody asked for, announced as 1 GiB: answered, then the connection is closed
    // rather than read to its end.
    let mut s = TcpStream::connect(sw.addr).await.expect("connect");
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: s\r\nContent-Length: 1073741824\r\n\r\n")
        .await
        .expect("write");
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..128 {
        if s.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WITHIN, s.read_to_end(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "connection held open"
    );

    assert_eq!(kubelet_probe(sw.addr).await.1, "HTTP/1.1 200 OK");
    assert_rss_bounded(&sw, rss_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_drain_is_never_closed_to_make_room() {
    let up = Upstream::start(healthy()).await;
    let envs = [
        ("SIDEWATCH_DRAIN_DELAY", "5s"),
        ("SIDEWATCH_DRAIN_MAX", "20s"),
        ("SIDEWATCH_DRAIN_PASSIVE_OPENS", "false"),
    ];
    // Cap 16: the attack below is ten times that.
    let Some(sw) = start_limited(&up, 64, &envs) else {
        return;
    };
    sw.wait_ready(WITHIN).await;
    let drain_url = sw.url("/drain");
    let held = tokio::spawn(async move { common::client().post(drain_url).send().await });
    sw.wait_reason("draining", WITHIN).await;
    let _attack = slowloris(sw.addr, 160);
    wait_metric_at_least(sw.addr, "sidewatch_admin_evictions_total", 200.0).await;
    assert!(
        !held.is_finished(),
        "the drain ended before the attack filled the cap"
    );
    let resp = held
        .await
        .expect("drain task")
        .expect("the held /drain was cut off");
    assert_eq!(resp.status(), 200);
}
