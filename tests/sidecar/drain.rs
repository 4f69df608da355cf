//! The traffic-aware drain, on real sockets in network namespaces of the test's own: an app with
//! keep-alive, clients that keep sending, and sidewatch watching the app port. Each test gets a
//! fresh namespace, so the namespace's TCP counters see only its own traffic. Needs root and `ip`.

#[allow(unused_imports)]
use crate::{common, netns};
use common::{Within, COMMAND_WITHIN};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, Sidewatch};
use netns::{in_netns, Netns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WITHIN: Duration = Duration::from_secs(10);

/// An HTTP/1.1 app with keep-alive on `addr`, answering `ok` to everything.
async fn app(addr: &str) -> SocketAddr {
    app_answering_after(addr, Duration::ZERO).await
}

/// The app, taking `delay` over each answer.
async fn app_answering_after(addr: &str, delay: Duration) -> SocketAddr {
    use http_body_util::Full;
    use hyper::service::service_fn;
    let listener = TcpListener::bind(addr).await.expect("bind app");
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_req| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(bytes::Bytes::from_static(
                        b"ok\n",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    local
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: app\r\n\r\n";
const REQUEST_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n";

/// Reads one whole `ok` response.
async fn read_response(stream: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.ends_with(b"ok\n") {
        let n = stream.read(&mut chunk).await.expect("read response");
        assert!(n > 0, "app closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[derive(Clone, Copy)]
enum Client {
    /// A new connection per request, every 20 ms, closed alternately by the app and the client.
    Short,
    /// One kept-alive connection, a request every 20 ms.
    KeepAlive,
}

/// Sends `kind` requests every 20 ms until `stop`; returns when each one ended.
async fn client(kind: Client, app: SocketAddr, stop: Arc<AtomicBool>) -> Vec<Instant> {
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut kept: Option<TcpStream> = None;
    let mut n = 0u64;
    let mut ended = Vec::new();
    loop {
        ticker.tick().await;
        if stop.load(Ordering::SeqCst) {
            return ended;
        }
        n += 1;
        match kind {
            Client::Short => {
                let mut s = TcpStream::connect(app).await.expect("connect");
                if n.is_multiple_of(2) {
                    // The app closes first: its side of the socket stays in TIME_WAIT.
                    s.write_all(REQUEST_CLOSE).await.unwrap();
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest).await;
                } else {
                    // We close first: the app's socket is gone by the next poll.
                    s.write_all(REQUEST).await.unwrap();
                    read_response(&mut s).await;
                }
            }
            Client::KeepAlive => {
                let s = match kept.as_mut() {
                    Some(s) => s,
                    None => kept.insert(TcpStream::connect(app).await.expect("connect")),
                };
                s.write_all(REQUEST).await.unwrap();
                read_response(s).await;
            }
        }
        ended.push(Instant::now());
    }
}

/// Idle keep-alive connections: one request each, then left open.
async fn idle_connections(app: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(app).await.unwrap();
        s.write_all(REQUEST).await.unwrap();
        read_response(&mut s).await;
        held.push(s);
    }
    held
}

fn start_sidewatch(ns: &str, app: SocketAddr, env: &[(&str, &str)]) -> Sidewatch {
    let target = format!("http://{app}/");
    let mut all = vec![
        ("SIDEWATCH_DRAIN_DELAY", "300ms"),
        ("SIDEWATCH_DRAIN_QUIET", "1s"),
    ];
    all.extend_from_slice(env);
    Sidewatch::start_in(
        Some(ns),
        "127.0.0.1:0",
        &[
            "--target",
            &target,
            "--interval",
            "100ms",
            "--cgroup",
            "none",
        ],
        &all,
    )
}

/// Drains while `kind` traffic flows for `flow`, then stops the client; returns the /drain
/// answer and how long after the last request before it it came. From the requests, not from the
/// stop: a test thread held off the CPU sends nothing meanwhile, and the drain's quiet rightly
/// counts from the last request it saw; one that returned while requests flowed is 20 ms or
/// less after one.
async fn drain_during(
    sw: &Sidewatch,
    app: SocketAddr,
    kind: Client,
    flow: Duration,
) -> (serde_json::Value, Duration) {
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn(client(kind, app, stop.clone()));
    let url = sw.url("/drain");
    let returned = Arc::new(Mutex::new(None));
    let done = returned.clone();
    let drain = tokio::spawn(async move {
        let body = common::client()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        *done.lock().unwrap() = Some(Instant::now());
        body
    });
    tokio::time::sleep(flow).await; // the traffic's duration, not synchronisation
    stop.store(true, Ordering::SeqCst);
    let ended = sender.await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&drain.await.unwrap()).unwrap();
    let at = returned.lock().unwrap().expect("returned");
    let last = ended.into_iter().filter(|t| *t <= at).max();
    (body, at.saturating_duration_since(last.unwrap_or(start)))
}

/// Ended by quiet, not by `drain.max` (how much later than `quiet` depends on the machine's load,
/// so no upper window), and not before `quiet` had passed since the last request.
fn assert_prompt(lag: Duration, body: &serde_json::Value) {
    assert_eq!(body["outcome"], "quiet", "{body}");
    // Quiet is judged on 100 ms polls, from the first one that saw the last request.
    assert!(
        lag >= Duration::from_millis(800),
        "/drain returned only {lag:?} after the last request before it"
    );
}

#[test]
fn short_connections_hold_the_drain_until_quiet() {
    let Some(ns) = Netns::create("short") else {
        return;
    };
    ns.run(|ns| async move {
        let app = app("127.0.0.1:0").await;
        let sw = start_sidewatch(&ns, app, &[]);
        sw.wait_ready(WITHIN).await;
        sw.wait_log("sock_diag (connections and tcp_info bytes in)")
            .await;
        let (body, lag) = drain_during(&sw, app, Client::Short, Duration::from_secs(2)).await;
        assert_prompt(lag, &body);
        assert!(body["new_connections"].as_u64().unwrap() >= 50, "{body}");
        assert_eq!(
            sw.metric("sidewatch_drains_total{outcome=\"quiet\"}").await,
            Some(1.0)
        );
    });
}

#[test]
fn keep_alive_traffic_holds_the_drain_and_idle_connections_do_not() {
    let Some(ns) = Netns::create("keep") else {
        return;
    };
    ns.run(|ns| async move {
        let app = app("127.0.0.1:0").await;
        let sw = start_sidewatch(&ns, app, &[]);
        sw.wait_ready(WITHIN).await;
        let _idle = idle_connections(app, 3).await;
        let (body, lag) =
            drain_during(&sw, app, Client::KeepAlive, Duration::from_millis(1500)).await;
        assert_prompt(lag, &body);
        assert!(body["bytes_in"].as_u64().unwrap() > 0, "{body}");
        // The idle ones are still open (the stopped client closed its own).
        assert_eq!(sw.metric("sidewatch_app_connections").await, Some(3.0));
    });
}

/// Between drains the app port's sockets are looked at once in `CONNECTIONS_SEEN_WITHIN` (10 s),
/// dumped only when a connection that is not sidewatch's own arrived: the probes of the app, each
/// a connection in the namespace, cause no dump, and neither count as the app's connections;
/// three foreign connections are counted, and their closing too.
#[test]
fn between_drains_the_sockets_are_dumped_only_for_foreign_connections() {
    let Some(ns) = Netns::create("dumps") else {
        return;
    };
    ns.run(|ns| async move {
        // Each answer takes longer than the probe interval, so the probes' own connection to the
        // port is open at nearly every look: the counts below hold only if it is left out.
        let app = app_answering_after("127.0.0.1:0", Duration::from_millis(200)).await;
        let sw = start_sidewatch(&ns, app, &[]);
        sw.wait_ready(WITHIN).await;
        const PROBES: &str = "sidewatch_probe_duration_seconds_count{probe=\"app\"}";
        let count = |series: &'static str| {
            let sw = &sw;
            async move { sw.metric(series).await.unwrap_or(0.0) }
        };
        let started = Instant::now();
        let (probes, dumps) = (
            count(PROBES).await,
            count("sidewatch_app_socket_dumps_total").await,
        );
        eventually("20 more probes", Duration::from_secs(30), || async {
            (count(PROBES).await >= probes + 20.0).then_some(())
        })
        .await;
        let idle_dumps = count("sidewatch_app_socket_dumps_total").await - dumps;
        // Without foreign connections nothing needs a dump; one in 10 s at most may still come
        // when a look falls between a scrape's arrival and sidewatch's accept counting it.
        let periodic = (started.elapsed().as_secs_f64() / 10.0).ceil();
        assert!(idle_dumps <= periodic, "{idle_dumps} dumps for 20 probes");
        assert_eq!(sw.metric("sidewatch_app_connections").await, Some(0.0));

        let held = idle_connections(app, 3).await;
        eventually(
            "the foreign connections counted",
            Duration::from_secs(25),
            || async { (sw.metric("sidewatch_app_connections").await == Some(3.0)).then_some(()) },
        )
        .await;
        drop(held);
        eventually("their closing counted", Duration::from_secs(25), || async {
            (sw.metric("sidewatch_app_connections").await == Some(0.0)).then_some(())
        })
        .await;
    });
}

#[test]
fn a_client_that_never_stops_ends_the_drain_at_max() {
    let Some(ns) = Netns::create("max") else {
        return;
    };
    ns.run(|ns| async move {
        let app = app("127.0.0.1:0").await;
        let sw = start_sidewatch(&ns, app, &[("SIDEWATCH_DRAIN_MAX", "2s")]);
        sw.wait_ready(WITHIN).await;
        let stop = Arc::new(AtomicBool::new(false));
        let sender = tokio::spawn(client(Client::Short, app, stop.clone()));
        let started = Instant::now();
        let body = common::client()
            .post(sw.url("/drain"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let took = started.elapsed();
        stop.store(true, Ordering::SeqCst);
        sender.await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["outcome"], "max", "{body}");
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert_eq!(
            sw.metric("sidewatch_drains_total{outcome=\"max\"}").await,
            Some(1.0)
        );
        assert_eq!(
            sw.metric("sidewatch_drain_duration_seconds_count").await,
            Some(1.0)
        );
    });
}

#[test]
fn ipv6_traffic_is_seen() {
    let Some(ns) = Netns::create("ipv6") else {
        return;
    };
    ns.run(|ns| async move {
        let app = app("[::1]:0").await;
        let sw = start_sidewatch(&ns, app, &[]);
        sw.wait_ready(WITHIN).await;
        let (body, lag) =
            drain_during(&sw, app, Client::KeepAlive, Duration::from_millis(1500)).await;
        assert_prompt(lag, &body);
        assert!(body["bytes_in"].as_u64().unwrap() > 0, "{body}");
    });
}

#[test]
fn the_proc_fallback_sees_short_connections() {
    let Some(ns) = Netns::create("proc") else {
        return;
    };
    ns.run(|ns| async move {
        let app = app("127.0.0.1:0").await;
        let sw = start_sidewatch(&ns, app, &[("SIDEWATCH_DRAIN_TRAFFIC_SOURCE", "proc")]);
        sw.wait_ready(WITHIN).await;
        sw.wait_log("/proc/net/tcp and tcp6 (connections only")
            .await;
        let (body, lag) = drain_during(&sw, app, Client::Short, Duration::from_secs(2)).await;
        assert_prompt(lag, &body);
        assert_eq!(body["bytes_in"], 0, "/proc has no byte counts");
    });
}

/// From a second namespace over a veth pair, as the kubelet's preStop hook comes from the node.
#[test]
fn callers_off_loopback_need_the_token() {
    let Some(pod) = Netns::create("pod") else {
        return;
    };
    let Some(node) = Netns::create("node") else {
        return;
    };
    let pod_ip = netns::link(&pod, &node, 7);
    let node_name = node.0.clone();
    pod.run(move |pod| async move {
        let app = app("127.0.0.1:0").await;
        let target = format!("http://{app}/");
        let sw = Sidewatch::start_in(
            Some(&pod),
            "0.0.0.0:0",
            &["--target", &target, "--cgroup", "none"],
            &[
                ("SIDEWATCH_DRAIN_TOKEN_ENV", "DRAIN_TOKEN"),
                ("DRAIN_TOKEN", "s3cret"),
                ("SIDEWATCH_DRAIN_DELAY", "200ms"),
            ],
        );
        sw.wait_ready(WITHIN).await;
        let drain_url = format!("http://{pod_ip}:{}/drain", sw.addr.port());
        let readyz_url = format!("http://{pod_ip}:{}/readyz", sw.addr.port());
        // The node side runs on its own thread; this runtime keeps serving the app meanwhile.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let node_side = in_netns(&node_name, move |_| async move {
            let c = common::client();
            let status = |r: reqwest::Response| r.status().as_u16();
            let refused = c.get(&drain_url).send().await.unwrap();
            assert_eq!(status(refused), 403, "no token");
            let wrong = c
                .get(&drain_url)
                .header("x-sidewatch-drain-token", "s3cre")
                .send()
                .await
                .unwrap();
            assert_eq!(status(wrong), 403, "wrong token");
            let post = c
                .post(&drain_url)
                .header("x-sidewatch-drain-token", "guess")
                .send()
                .await
                .unwrap();
            assert_eq!(status(post), 403, "wrong token, POST");
            let ready = c.get(&readyz_url).send().await.unwrap();
            assert_eq!(status(ready), 200, "a refused drain changes nothing");
            let allowed = c
                .get(&drain_url)
                .header("x-sidewatch-drain-token", "s3cret")
                .send()
                .await
                .unwrap();
            assert_eq!(status(allowed), 200, "right token");
            let _ = done_tx.send(());
        });
        let _ = done_rx.await;
        if let Err(panic) = node_side.join() {
            std::panic::resume_unwind(panic);
        }
        let (status, body) = sw.readyz().await;
        assert_eq!(
            (status, body["reasons"][0]["reason"].as_str()),
            (503, Some("draining"))
        );
        sw.wait_log("drain refused").await;
    });
}

#[test]
fn a_named_but_empty_token_variable_is_a_start_up_error() {
    let out = common::sidewatch_command()
        .args([
            "run",
            "--target",
            "tcp://127.0.0.1:1",
            "--listen",
            "127.0.0.1:0",
            "--cgroup",
            "none",
        ])
        .env("SIDEWATCH_DRAIN_TOKEN_ENV", "SIDEWATCH_TEST_NO_SUCH_VAR")
        .output_within(COMMAND_WITHIN)
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SIDEWATCH_TEST_NO_SUCH_VAR"), "{stderr}");
}

/// Makes `n` sockets that are not the app's: `n / 5` connections to another port held, both ends
/// in the namespace, and the rest opened and closed by the client (TIME_WAIT, for 60 s).
async fn unrelated(n: usize) -> (TcpListener, Vec<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pairs = n / 5;
    let mut held = Vec::new();
    for i in 0..(n - pairs) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        if i < pairs {
            held.push(stream);
            held.push(accepted);
        } else {
            // The client closes first: its end waits in TIME_WAIT.
            drop(stream);
            let mut accepted = accepted;
            let _ = accepted.read(&mut [0; 1]).await;
        }
    }
    (listener, held)
}

/// The kernel walks every socket of the node for a dump, but only the app port's come back, and
/// a drain under keep-alive traffic asks for the known sockets by their ids instead of dumping.
#[test]
fn among_20000_unrelated_sockets_only_the_apps_are_seen() {
    let Some(ns) = Netns::create("crowd") else {
        return;
    };
    ns.run(|ns| async move {
        // The descriptors of 8,000 held sockets: the soft limit raised to the hard one.
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )
        .unwrap();
        // No reuse of a TIME_WAIT port by a later connect (the namespace's own setting).
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "0").unwrap();
        let (_other, _held) = unrelated(20_000).await;
        let sockstat = std::fs::read_to_string("/proc/thread-self/net/sockstat").unwrap();
        let app = app("127.0.0.1:0").await;
        let sw = start_sidewatch(&ns, app, &[]);
        sw.wait_ready(WITHIN).await;
        let _idle = idle_connections(app, 3).await;
        eventually(
            "the app's three connections counted",
            Duration::from_secs(25),
            || async { (sw.metric("sidewatch_app_connections").await == Some(3.0)).then_some(()) },
        )
        .await;
        let dumps = sw.metric("sidewatch_app_socket_dumps_total").await.unwrap();
        let (body, lag) =
            drain_during(&sw, app, Client::KeepAlive, Duration::from_millis(1500)).await;
        assert_prompt(lag, &body);
        assert!(body["bytes_in"].as_u64().unwrap() > 0, "{body}");
        // The keep-alive client's arrival is learnt by one dump; its bytes, poll after poll, by
        // lookups of the known sockets; one more dump confirms the quiet that ends the drain, and
        // one may come when a look falls between a scrape's arrival and sidewatch's accept.
        let drain_dumps = sw.metric("sidewatch_app_socket_dumps_total").await.unwrap() - dumps;
        assert!(
            drain_dumps <= 3.0,
            "{drain_dumps} dumps in a drain of ~25 polls; {sockstat}"
        );
        assert_eq!(sw.metric("sidewatch_app_connections").await, Some(3.0));
        // `TCP: inuse N orphan N tw N …`: the held ones and the TIME_WAIT ones.
        let tcp: Vec<u64> = sockstat
            .lines()
            .find_map(|l| l.strip_prefix("TCP:"))
            .unwrap()
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert!(tcp[0] >= 8_000 && tcp[2] >= 12_000, "{sockstat}");
    });
}
