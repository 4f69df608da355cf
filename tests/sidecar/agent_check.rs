//! The agent-check endpoint against Debian's HAProxy (2.6): a backend whose server is a real app
//! (`Upstream`) checked by TCP and by sidewatch's agent every 100 ms, its state read through
//! HAProxy's runtime API (`show stat` on the stats socket). A fault takes the server DOWN within
//! sidewatch's own detection plus two agent intervals; recovery ramps the weight (slow start);
//! `/drain` puts it in DRAIN while a connection held through HAProxy finishes; overload (an app
//! port whose accept queue fills) lowers the weight. Every line sidewatch sends is one HAProxy
//! parsed: an unparsed line would leave the server as it was, and these states would not come.

#[allow(unused_imports)]
use crate::common;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, healthy, tempdir, Behaviour, Sidewatch, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UnixStream};

const WITHIN: Duration = Duration::from_secs(20);
/// `agent-inter` on the server line.
const AGENT_INTER: Duration = Duration::from_millis(100);

/// A real HAProxy in the foreground, killed on drop.
struct Haproxy {
    child: Child,
    socket: PathBuf,
    /// The frontend's address, in front of backend `be`.
    front: std::net::SocketAddr,
    _dir: tempdir::Dir,
}

impl Haproxy {
    /// `server s1 APP check agent-check agent-port AGENT agent-inter 100ms weight 100`, the
    /// check on `check_port` when given (the agent's: docs/endpoints.md says why).
    fn start(
        haproxy: PathBuf,
        app: std::net::SocketAddr,
        agent: u16,
        check_port: Option<u16>,
    ) -> Haproxy {
        let dir = tempdir::Dir::new();
        let socket = dir.path().join("admin.sock");
        let front = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        // Weight 100, not the default 1: a percentage of 1 rounds down to 0, which is a drain.
        let config = format!(
            "global\n  stats socket {} mode 600 level admin\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n\
             frontend fe\n  bind {front}\n  default_backend be\n\
             backend be\n  balance roundrobin\n  server s1 {app} check inter 100ms{} \
             agent-check agent-port {agent} agent-inter {}ms weight 100\n",
            socket.display(),
            check_port.map(|p| format!(" port {p}")).unwrap_or_default(),
            AGENT_INTER.as_millis(),
        );
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, config).unwrap();
        let child = Command::new(haproxy)
            .args(["-db", "-f"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        Haproxy {
            child,
            socket,
            front,
            _dir: dir,
        }
    }

    /// `show stat`'s row of `be/s1`, by column name; `None` while the socket is not up.
    async fn server(&self) -> Option<HashMap<String, String>> {
        let mut stream = UnixStream::connect(&self.socket).await.ok()?;
        stream.write_all(b"show stat\n").await.ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.ok()?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next()?.strip_prefix("# ")?.split(',').collect();
        let row = lines.find(|l| l.starts_with("be,s1,"))?;
        Some(
            header
                .iter()
                .zip(row.split(','))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The server's status (`UP`, `DOWN`, `DRAIN`…) and weight.
    async fn state(&self) -> Option<(String, u32)> {
        let row = self.server().await?;
        Some((row["status"].clone(), row["weight"].parse().ok()?))
    }

    async fn wait_state(&self, what: &str, want: impl Fn(&str, u32) -> bool) -> (String, u32) {
        eventually(what, WITHIN, || async {
            self.state().await.filter(|(s, w)| want(s, *w))
        })
        .await
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The haproxy binary; `None` (skipped, or a failure under SIDEWATCH_REQUIRE_ALL=1) without it.
fn haproxy() -> Option<PathBuf> {
    let found = common::which("haproxy");
    if found.is_none() {
        common::skip_or_fail("haproxy is not installed (scripts/install-test-tools)");
    }
    found
}

/// The agent port sidewatch logged (it binds `SIDEWATCH_AGENT_LISTEN=127.0.0.1:0`).
async fn agent_port(sw: &Sidewatch) -> u16 {
    sw.wait_log("answering HAProxy's agent checks").await;
    sw.logs()
        .iter()
        .find_map(|l| {
            l.split("agent=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .map(|a: std::net::SocketAddr| a.port())
        .expect("the agent's address in the log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_takes_the_server_down_ramps_it_back_and_drains_it_as_the_agent_says() {
    let Some(haproxy) = haproxy() else {
        return;
    };
    let app = Upstream::start(healthy()).await;
    let target = app.url();
    let sw = Sidewatch::start(
        &[
            "--target",
            &target,
            "--interval",
            "100ms",
            "--failure-threshold",
            "1",
            "--cgroup",
            "none",
        ],
        &[
            ("SIDEWATCH_AGENT_LISTEN", "127.0.0.1:0"),
            ("SIDEWATCH_AGENT_SLOW_START", "2s"),
            ("SIDEWATCH_DRAIN_DELAY", "3s"),
            // HAProxy's check of the app port every 100 ms is traffic to the drain: it ends at
            // max (docs/endpoints.md).
            ("SIDEWATCH_DRAIN_MAX", "5s"),
        ],
    );
    let agent = agent_port(&sw).await;
    let lb = Haproxy::start(haproxy, app.addr, agent, None);
    lb.wait_state("s1 UP at full weight", |s, w| s == "UP" && w == 100)
        .await;

    // A fault: the app answers 503. sidewatch's detection, then HAProxy's, measured from it.
    let fault = Instant::now();
    app.set(Behaviour::Status(503, "sick\n"));
    let mut unready = None;
    let down = loop {
        assert!(fault.elapsed() < WITHIN, "s1 not DOWN after {WITHIN:?}");
        if unready.is_none() && sw.readyz().await.0 == 503 {
            unready = Some(fault.elapsed());
        }
        if lb.state().await.is_some_and(|(s, _)| s.starts_with("DOWN")) {
            break fault.elapsed();
        }
    };
    // HAProxy may see it before this loop's next look at /readyz: then its detection bounds it.
    let unready = unready.unwrap_or(down);
    let row = lb.server().await.unwrap();
    eprintln!(
        "fault at 0: sidewatch unready at {} ms, HAProxy DOWN at {} ms ({}; agent said {:?})",
        unready.as_millis(),
        down.as_millis(),
        row["check_status"],
        row["last_agt"],
    );
    assert!(row["last_agt"].contains("http_5xx"), "{row:?}");
    // The agent's answers come every 100 ms; the poll itself looks every few ms.
    assert!(
        down <= unready + 2 * AGENT_INTER + Duration::from_millis(50),
        "DOWN {down:?} after sidewatch's {unready:?}"
    );

    // Recovery: up again at the slow start's floor, then at increasing weights to full.
    app.set(healthy());
    let mut weights: Vec<u32> = Vec::new();
    let recovery = Instant::now();
    while weights.last() != Some(&100) {
        assert!(
            recovery.elapsed() < WITHIN,
            "not back at full weight: {weights:?}"
        );
        match lb.state().await {
            Some((status, weight)) if status == "UP" && weights.last() != Some(&weight) => {
                weights.push(weight)
            }
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    eprintln!("weights seen during the slow start: {weights:?}");
    assert!(weights.windows(2).all(|w| w[0] < w[1]), "{weights:?}");
    assert!(weights.len() >= 4, "{weights:?}");
    assert!(weights[0] <= 30, "{weights:?}");

    // A connection held through HAProxy, established to s1 before the drain.
    let mut held = TcpStream::connect(lb.front).await.unwrap();
    eventually("the held connection at s1", WITHIN, || async {
        (lb.server().await?["scur"] == "1").then_some(())
    })
    .await;
    let drain = tokio::spawn({
        let url = sw.url("/drain");
        async move {
            let resp = common::client().get(url).send().await?;
            Ok::<_, reqwest::Error>((resp.status(), resp.text().await?))
        }
    });
    lb.wait_state("s1 in DRAIN", |s, _| s.starts_with("DRAIN"))
        .await;
    // A new connection is not sent to s1 (the only server: HAProxy closes it unanswered).
    let before = lb.server().await.unwrap()["stot"].clone();
    let mut new = TcpStream::connect(lb.front).await.unwrap();
    let _ = new.write_all(b"GET / HTTP/1.1\r\nhost: app\r\n\r\n").await;
    let mut refused = Vec::new();
    let _ = tokio::time::timeout(WITHIN, new.read_to_end(&mut refused)).await;
    assert!(
        refused.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&refused)
    );
    assert_eq!(lb.server().await.unwrap()["stot"], before);
    held.write_all(b"GET /work HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    held.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let (status, outcome) = drain.await.unwrap().unwrap();
    assert_eq!(status, 200, "{outcome}");
    eprintln!("drain: {outcome}");
    assert!(lb.state().await.unwrap().0.starts_with("DRAIN"));
    for answer in ["up", "weight", "down", "drain"] {
        let series = format!("sidewatch_agent_answers_total{{answer=\"{answer}\"}}");
        let n = sw.metric(&series).await.unwrap_or(0.0);
        assert!(n >= 1.0, "{series} = {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_lowers_the_weight_of_an_overloaded_server_and_restores_it() {
    let Some(haproxy) = haproxy() else {
        return;
    };
    let app = Upstream::start(healthy()).await;
    // The app port whose accept queue fills: a backlog of 1, nothing accepting yet.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let queue = socket.local_addr().unwrap();
    let listener = socket.listen(1).unwrap();
    let port = queue.port().to_string();
    let target = app.url();
    let sw = Sidewatch::start(
        &[
            "--target",
            &target,
            "--interval",
            "100ms",
            "--cgroup",
            "none",
        ],
        &[
            ("SIDEWATCH_AGENT_LISTEN", "127.0.0.1:0"),
            ("SIDEWATCH_AGENT_OVERLOAD_WEIGHT", "50%"),
            ("SIDEWATCH_DRAIN_PORT", port.as_str()),
            ("SIDEWATCH_OVERLOAD_HOLD", "1s"),
        ],
    );
    let agent = agent_port(&sw).await;
    // The check on the agent's port: sidewatch's own connections, never the app's traffic.
    let lb = Haproxy::start(haproxy, app.addr, agent, Some(agent));
    lb.wait_state("s1 UP at full weight", |s, w| s == "UP" && w == 100)
        .await;

    // Two connections fill a backlog of 1; the others' SYNs are dropped.
    let flood: Vec<_> = (0..6)
        .map(|_| tokio::spawn(TcpStream::connect(queue)))
        .collect();
    let (status, weight) = lb.wait_state("s1 at half weight", |_, w| w == 50).await;
    assert_eq!(status, "UP", "still in rotation, at less");
    assert_eq!(sw.readyz().await.0, 200, "overload.signal is off: ready");
    eprintln!("overloaded: s1 {status} at weight {weight}");

    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    for connect in flood {
        assert!(connect.await.unwrap().is_ok());
    }
    lb.wait_state("s1 at full weight again", |s, w| s == "UP" && w == 100)
        .await;
    let n = sw
        .metric("sidewatch_agent_answers_total{answer=\"weight\"}")
        .await;
    assert!(n.is_some_and(|n| n >= 1.0), "{n:?}");
    accepting.abort();
}

/// Clients that send `agent-send` bytes and never close hold a slot 1 s at most: twice the cap
/// of them all get their line, the ones past the cap once slots free up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_port_answers_every_client_and_none_holds_a_slot() {
    let app = Upstream::start(healthy()).await;
    let target = app.url();
    let sw = Sidewatch::start(
        &[
            "--target",
            &target,
            "--interval",
            "100ms",
            "--cgroup",
            "none",
        ],
        &[("SIDEWATCH_AGENT_LISTEN", "127.0.0.1:0")],
    );
    sw.wait_ready(WITHIN).await;
    let agent = agent_port(&sw).await;
    let clients: Vec<_> = (0..64)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(("127.0.0.1", agent)).await.unwrap();
                s.write_all(b"state\n").await.unwrap();
                let mut line = Vec::new();
                // Reads to the server's FIN, and holds its own side open.
                tokio::time::timeout(WITHIN, s.read_to_end(&mut line))
                    .await
                    .expect("an answer")
                    .unwrap();
                (String::from_utf8(line).unwrap(), s)
            })
        })
        .collect();
    let mut held = Vec::new();
    for client in clients {
        let (line, stream) = client.await.unwrap();
        assert_eq!(line, "up ready 100%\n");
        held.push(stream);
    }
    sw.wait_metric_at_least("sidewatch_agent_answers_total{answer=\"up\"}", 64.0)
        .await;
}
