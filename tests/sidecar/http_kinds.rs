//! HTTP probes of the shapes real workloads need: request headers with `Host` (checked by Python's
//! http.server, not by code of ours), a Unix domain socket, HTTP/2 by prior knowledge (h2c) and by
//! ALPN over TLS, against hyper's HTTP/2 server.

#[allow(unused_imports)]
use crate::{common, pki};
use common::{Within, COMMAND_WITHIN};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, skip_or_fail, tempdir, which, write_config, Sidewatch};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

const WITHIN: Duration = Duration::from_secs(15);

/// Answers 200 only to `GET /health?full=true` with `Host: $WANT_HOST` and `X-Probe: sidewatch`,
/// 400 to anything else; on a TCP port it picks, or on the Unix socket given.
const CHECKING_SERVER: &str = r#"
import http.server, os, socketserver, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        ok = (self.headers.get("Host") == os.environ["WANT_HOST"]
              and self.headers.get("X-Probe") == "sidewatch"
              and self.path == "/health?full=true")
        body = f"host {self.headers.get('Host')} path {self.path}".encode()
        self.send_response(200 if ok else 400)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
    def address_string(self):
        return "peer"
if len(sys.argv) > 1:
    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True
    server = Server(sys.argv[1], Handler)
    print("listening", sys.argv[1], flush=True)
else:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print("listening", server.server_address[1], flush=True)
server.serve_forever()
"#;

struct Python(Child);

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the checking server; returns it and what it printed after "listening ".
fn checking_server(want_host: &str, socket: Option<&std::path::Path>) -> Option<(Python, String)> {
    if which("python3").is_none() {
        skip_or_fail("python3 is needed for an HTTP server that is not ours");
        return None;
    }
    let mut cmd = Command::new("python3");
    cmd.args(["-c", CHECKING_SERVER]);
    if let Some(path) = socket {
        cmd.arg(path);
    }
    let mut child = cmd
        .env("WANT_HOST", want_host)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("the server's first line");
    let rest = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Some((Python(child), rest))
}

fn start(config: &str) -> (tempdir::Dir, Sidewatch) {
    let (dir, path) = write_config(config);
    let sw = Sidewatch::start(&["--config", path.to_str().unwrap()], &[]);
    (dir, sw)
}

fn probe(name: &str, http: &str) -> String {
    format!("  - name: {name}\n    http: {http}\n    interval: 100ms\n    timeout: 1s\n    failure_threshold: 1\n")
}

async fn reasons(sw: &Sidewatch) -> Vec<(String, String)> {
    let (_, body) = sw.readyz().await;
    let mut seen: Vec<(String, String)> = body["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["signal"].as_str().unwrap_or_default().to_owned(),
                r["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    seen.sort();
    seen
}

async fn wait_reasons(sw: &Sidewatch, want: &[(&str, &str)]) {
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(s, r)| (s.to_string(), r.to_string()))
        .collect();
    eventually(&format!("reasons {want:?}"), WITHIN, || async {
        (reasons(sw).await == want).then_some(())
    })
    .await
}

const HEADERS: &str = "[{name: Host, value: shop.example}, {name: X-Probe, value: sidewatch}]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_the_host_header_reach_the_app() {
    let Some((_server, port)) = checking_server("shop.example", None) else {
        return;
    };
    let url = format!("\"http://127.0.0.1:{port}/health?full=true\"");
    let config = format!(
        "probes:\n{}{}",
        probe("with", &format!("{{url: {url}, headers: {HEADERS}}}")),
        probe("without", &format!("{{url: {url}}}")),
    );
    let (_dir, sw) = start(&config);
    wait_reasons(&sw, &[("probe:without", "unexpected_status")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_app_on_a_unix_socket() {
    let dir = tempdir::Dir::new();
    let socket = dir.path().join("app.sock");
    let Some((server, _)) = checking_server("app.internal", Some(&socket)) else {
        return;
    };
    // The URL's host is the Host header: no name is looked up, no TCP port connected to.
    let http = format!(
        "{{url: \"http://app.internal/health?full=true\", unix_socket: {}, headers: [{{name: X-Probe, value: sidewatch}}]}}",
        socket.display()
    );
    let (_dir, sw) = start(&format!("probes:\n{}", probe("app", &http)));
    sw.wait_ready(WITHIN).await;
    drop(server);
    std::fs::remove_file(&socket).ok();
    sw.wait_reason("refused", WITHIN).await;
}

/// hyper's server speaking only HTTP/2 (prior knowledge, or through TLS when `tls` is given) or
/// only HTTP/1.1 over TLS; it records the version of every request it answers.
async fn hyper_server(
    tls: Option<tokio_rustls::TlsAcceptor>,
    http2: bool,
) -> (SocketAddr, Arc<Mutex<Vec<http::Version>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (tls, record) = (tls.clone(), record.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    record.lock().unwrap().push(req.version());
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from("ok"),
                        )))
                    }
                });
                match tls {
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(tcp).await else {
                            return;
                        };
                        serve(TokioIo::new(stream), service, http2).await;
                    }
                    None => serve(TokioIo::new(tcp), service, http2).await,
                }
            });
        }
    });
    (addr, seen)
}

async fn serve<I, S>(io: I, service: S, http2: bool)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<Full<Bytes>>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    if http2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_by_prior_knowledge_and_by_alpn() {
    let pki = pki::Pki::new();
    let leaf = pki.leaf();
    let (h2c, h2c_seen) = hyper_server(None, true).await;
    let (h2, h2_seen) = hyper_server(Some(leaf.acceptor(&["h2"])), true).await;
    let (h1, h1_seen) = hyper_server(Some(leaf.acceptor(&["http/1.1"])), false).await;
    let url = |scheme: &str, addr: SocketAddr| format!("\"{scheme}://{addr}/healthz\"");
    let tls = ", insecure_skip_verify: true";
    let config = format!(
        "probes:\n{}{}{}{}{}",
        probe(
            "h2c",
            &format!("{{url: {}, http_version: 2}}", url("http", h2c))
        ),
        probe("h1-on-h2c", &format!("{{url: {}}}", url("http", h2c))),
        probe(
            "h2",
            &format!("{{url: {}, http_version: 2{tls}}}", url("https", h2))
        ),
        probe(
            "auto-h2",
            &format!("{{url: {}, http_version: auto{tls}}}", url("https", h2))
        ),
        probe(
            "auto-h1",
            &format!("{{url: {}, http_version: auto{tls}}}", url("https", h1))
        ),
    );
    let (_dir, sw) = start(&config);
    // HTTP/1.1 to a server that speaks only HTTP/2: its bytes are not an HTTP/1 answer.
    wait_reasons(&sw, &[("probe:h1-on-h2c", "invalid_response")]).await;
    let versions = |seen: &Arc<Mutex<Vec<http::Version>>>| seen.lock().unwrap().clone();
    assert!(versions(&h2c_seen)
        .iter()
        .all(|v| *v == http::Version::HTTP_2));
    // Both probes of the ALPN h2 server spoke HTTP/2; the HTTP/1.1-only one was spoken to in 1.1.
    assert!(versions(&h2_seen).len() >= 2);
    assert!(versions(&h2_seen)
        .iter()
        .all(|v| *v == http::Version::HTTP_2));
    assert!(!versions(&h1_seen).is_empty());
    assert!(versions(&h1_seen)
        .iter()
        .all(|v| *v == http::Version::HTTP_11));
}

#[test]
fn http_version_auto_is_refused_without_tls() {
    let (_dir, path) = write_config(&format!(
        "probes:\n{}",
        probe("app", "{url: \"http://127.0.0.1:1/\", http_version: auto}")
    ));
    let out = common::sidewatch_command()
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output_within(COMMAND_WITHIN)
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("auto") && text.contains("https://"), "{text}");
}
