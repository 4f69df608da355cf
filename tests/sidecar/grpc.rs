//! gRPC health probes against a server that is not ours (grpcio with grpcio-health-checking's
//! health servicer, in Python): SERVING, NOT_SERVING, a named and an unknown service, TLS with
//! and without the CA and unverified, a Unix socket; and against what is not a gRPC server: a
//! plain HTTP/1 server (Python's http.server), a port that never answers, a closed port; and an
//! HTTP/2 server (`h2`'s) whose status carries details that are not base64.

#[allow(unused_imports)]
use crate::{common, pki};
use common::{Within, COMMAND_WITHIN};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::{eventually, skip_or_fail, tempdir, which, write_config, Sidewatch};

const WITHIN: Duration = Duration::from_secs(15);
const SERVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/grpc_health_server.py"
);

/// The Python gRPC health server, killed on drop.
struct GrpcServer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    port: u16,
}

impl GrpcServer {
    /// `None` (after `skip_or_fail`) without python3 and grpcio.
    fn start(address: &str, tls: Option<&tempdir::Dir>) -> Option<GrpcServer> {
        let has_grpc = which("python3").is_some()
            && Command::new("python3")
                .args(["-c", "import grpc_health.v1.health"])
                .status_within(COMMAND_WITHIN)
                .is_ok_and(|s| s.success());
        if !has_grpc {
            skip_or_fail(
                "python3 with grpcio and grpcio-health-checking (scripts/install-test-tools)",
            );
            return None;
        }
        let mut cmd = Command::new("python3");
        cmd.arg(SERVER).arg(address);
        if let Some(dir) = tls {
            cmd.arg(dir.path().join("leaf.pem"))
                .arg(dir.path().join("leaf.key"));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the gRPC server");
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let port = read_line(&mut stdout)
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .expect("the server's port");
        Some(GrpcServer {
            child,
            stdin,
            stdout,
            port,
        })
    }

    /// Sets a service's status (`-`: the server's) and waits for the server to take it.
    fn set(&mut self, service: &str, status: &str) {
        writeln!(self.stdin, "set {service} {status}").expect("command the gRPC server");
        assert_eq!(read_line(&mut self.stdout).trim(), "ok");
    }
}

/// One line from the child, failing the test if it ends or says nothing for a long while: a
/// reader thread, so a stuck child cannot hang the test.
fn read_line(stdout: &mut BufReader<ChildStdout>) -> String {
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut line = String::new();
            stdout.read_line(&mut line).map(|_| line)
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !reader.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the gRPC server said nothing for 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        reader
            .join()
            .expect("reader thread")
            .expect("read from the gRPC server")
    })
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(config: &str) -> (tempdir::Dir, Sidewatch) {
    let (dir, path) = write_config(config);
    let sw = Sidewatch::start(&["--config", path.to_str().unwrap()], &[]);
    (dir, sw)
}

/// A probe entry of a config, checked every 100 ms, unready at the first failure.
fn probe(name: &str, grpc: &str) -> String {
    format!("  - name: {name}\n    grpc: {grpc}\n    interval: 100ms\n    timeout: 1s\n    failure_threshold: 1\n")
}

fn failures(probe: &str, reason: &str) -> String {
    format!("sidewatch_probe_failures_total{{probe=\"{probe}\",reason=\"{reason}\"}}")
}

/// The reasons `/readyz` gives, as (signal, reason) pairs.
async fn reasons(sw: &Sidewatch) -> Vec<(String, String)> {
    let (_, body) = sw.readyz().await;
    body["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["signal"].as_str().unwrap_or_default().to_owned(),
                r["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn wait_reasons(sw: &Sidewatch, want: &[(&str, &str)]) {
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(s, r)| (s.to_string(), r.to_string()))
        .collect();
    eventually(&format!("reasons {want:?}"), WITHIN, || async {
        let mut seen = reasons(sw).await;
        seen.sort();
        (seen == want).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_service_turns_the_pod_unready_and_ready_again() {
    let Some(mut server) = GrpcServer::start("127.0.0.1:0", None) else {
        return;
    };
    let target = format!("grpc://127.0.0.1:{}", server.port);
    let sw = Sidewatch::start(
        &[
            "--target",
            &target,
            "--interval",
            "100ms",
            "--failure-threshold",
            "1",
        ],
        &[],
    );
    sw.wait_ready(WITHIN).await;
    server.set("-", "NOT_SERVING");
    let body = sw.wait_reason("not_serving", WITHIN).await;
    let message = body["reasons"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("NOT_SERVING"), "{message}");
    server.set("-", "SERVING");
    sw.wait_ready(WITHIN).await;
    // UNKNOWN is not SERVING either, for the kubelet as for us.
    server.set("-", "UNKNOWN");
    sw.wait_reason("not_serving", WITHIN).await;
    assert!(sw.metric(&failures("app", "not_serving")).await.unwrap() >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_service_is_asked_about_and_an_unknown_one_is_said_so() {
    let Some(mut server) = GrpcServer::start("127.0.0.1:0", None) else {
        return;
    };
    server.set("shop.Cart", "SERVING");
    let address = format!("\"127.0.0.1:{}\"", server.port);
    let config = format!(
        "probes:\n{}{}",
        probe(
            "cart",
            &format!("{{address: {address}, service: shop.Cart}}")
        ),
        probe(
            "missing",
            &format!("{{address: {address}, service: no.Such}}")
        ),
    );
    let (_dir, sw) = start(&config);
    wait_reasons(&sw, &[("probe:missing", "unknown_service")]).await;
    server.set("shop.Cart", "NOT_SERVING");
    wait_reasons(
        &sw,
        &[
            ("probe:cart", "not_serving"),
            ("probe:missing", "unknown_service"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_against_the_ca_file_or_not_at_all_when_asked() {
    let dir = tempdir::Dir::new();
    let pki = pki::Pki::new();
    let leaf = pki.leaf();
    std::fs::write(dir.path().join("leaf.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("leaf.key"), &leaf.key_pem).unwrap();
    std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
    let Some(server) = GrpcServer::start("127.0.0.1:0", Some(&dir)) else {
        return;
    };
    let address = format!("\"127.0.0.1:{}\"", server.port);
    let ca = dir.path().join("ca.pem");
    let config = format!(
        "probes:\n{}{}{}{}",
        probe(
            "trusted",
            &format!(
                "{{address: {address}, tls: true, ca_file: {}}}",
                ca.display()
            )
        ),
        probe("roots", &format!("{{address: {address}, tls: true}}")),
        probe(
            "unverified",
            &format!("{{address: {address}, tls: true, insecure_skip_verify: true}}")
        ),
        probe("plain", &format!("{{address: {address}}}")),
    );
    let (_dir, sw) = start(&config);
    // The system's roots do not know the test CA; a plaintext client on a TLS port is not
    // answered in HTTP/2.
    wait_reasons(&sw, &[("probe:plain", "reset"), ("probe:roots", "tls")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_server_on_a_unix_socket() {
    let dir = tempdir::Dir::new();
    let socket = dir.path().join("app.sock");
    let Some(mut server) = GrpcServer::start(&format!("unix:{}", socket.display()), None) else {
        return;
    };
    let config = format!(
        "probes:\n{}",
        probe(
            "app",
            &format!("{{address: \"unix://{}\"}}", socket.display())
        )
    );
    let (_config_dir, sw) = start(&config);
    sw.wait_ready(WITHIN).await;
    server.set("-", "NOT_SERVING");
    sw.wait_reason("not_serving", WITHIN).await;
    drop(server);
    std::fs::remove_file(&socket).ok();
    sw.wait_reason("refused", WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_a_grpc_server_is_classified() {
    if which("python3").is_none() {
        return skip_or_fail("python3 is needed for a plain HTTP/1 server");
    }
    // Python's own HTTP/1.0 server, on a port it picks and tells.
    let mut http = Command::new("python3")
        .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn http.server");
    let mut out = BufReader::new(http.stdout.take().unwrap());
    let line = read_line(&mut out);
    let http_port: u16 = line
        .split(" port ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    // Listening, never accepting: connects complete in the backlog, nothing ever answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = format!(
        "probes:\n{}{}{}",
        probe("http1", &format!("{{address: \"127.0.0.1:{http_port}\"}}")),
        probe(
            "silent",
            &format!("{{address: \"{}\"}}", silent.local_addr().unwrap())
        ),
        probe(
            "closed",
            &format!("{{address: \"127.0.0.1:{closed_port}\"}}")
        ),
    );
    let (_dir, sw) = start(&config);
    wait_reasons(
        &sw,
        &[
            ("probe:closed", "refused"),
            ("probe:http1", "invalid_response"),
            ("probe:silent", "timeout"),
        ],
    )
    .await;
    let _ = http.kill();
    let _ = http.wait();
}

/// An HTTP/2 server (`h2`'s own) that answers every call with a trailers-only UNAVAILABLE whose
/// `grpc-status-details-bin` is not base64: what tonic's status parser panics on.
async fn bad_details_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(tcp).await else {
                    return;
                };
                // Accepting also drives the connection, which sends the answer.
                while let Some(Ok((_call, mut respond))) = connection.accept().await {
                    let answer = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "14")
                        .header("grpc-message", "down%20for%20maintenance")
                        .header("grpc-status-details-bin", "!!not base64!!")
                        .body(())
                        .unwrap();
                    let _ = respond.send_response(answer, true);
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_whose_details_are_not_base64_is_read_and_the_probe_goes_on() {
    let addr = bad_details_server().await;
    let (_dir, sw) = start(&format!(
        "probes:\n{}",
        probe("app", &format!("{{address: \"{addr}\"}}"))
    ));
    let body = sw.wait_reason("unexpected_status", WITHIN).await;
    let message = body["reasons"][0]["message"].as_str().unwrap_or_default();
    assert_eq!(message, "gRPC Unavailable: down for maintenance", "{body}");
    // Check after check: a probe that had panicked would have stopped counting, and `/livez`
    // would say so.
    let series = failures("app", "unexpected_status");
    let seen = sw.metric(&series).await.unwrap_or(0.0);
    assert!(seen >= 1.0, "{series} = {seen}");
    sw.wait_metric_at_least(&series, seen + 3.0).await;
    assert_eq!(sw.readyz().await.0, 503);
    assert_eq!(sw.get("/livez").await.0, 200);
}
