//! HTTPS probes against a real rustls server with a certificate from a throw-away CA.

#[allow(unused_imports)]
use crate::{common, pki};
use common::{Within, COMMAND_WITHIN};
use std::time::Duration;

use common::{write_config, Sidewatch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WITHIN: Duration = Duration::from_secs(10);

/// An HTTPS server answering 200 on loopback; returns its address and the CA's PEM.
async fn https_upstream() -> (std::net::SocketAddr, String) {
    let pki = pki::Pki::new();
    let acceptor = pki.leaf_for(&["localhost", "127.0.0.1"]).acceptor(&[]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, pki.ca_pem())
}

fn https_config(addr: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "probes:\n  - name: app\n    http: {{url: \"https://127.0.0.1:{}/healthz\"{extra}}}\n    interval: 50ms\n    failure_threshold: 1\n",
        addr.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_when_the_certificate_is_not_trusted() {
    let (addr, _) = https_upstream().await;
    let (_dir, path) = write_config(&https_config(addr, ""));
    let sw = Sidewatch::start(&["--config", path.to_str().unwrap()], &[]);
    let body = sw.wait_reason("tls", WITHIN).await;
    let message = body["reasons"][0]["message"].as_str().unwrap_or_default();
    assert!(message.to_lowercase().contains("certificate"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_with_the_ca_in_ca_file() {
    let (addr, ca_pem) = https_upstream().await;
    let dir = common::tempdir::Dir::new();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let extra = format!(", ca_file: \"{}\"", ca_path.display());
    let (_dir, path) = write_config(&https_config(addr, &extra));
    let sw = Sidewatch::start(&["--config", path.to_str().unwrap()], &[]);
    sw.wait_ready(WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_with_insecure_skip_verify() {
    let (addr, _) = https_upstream().await;
    let (_dir, path) = write_config(&https_config(addr, ", insecure_skip_verify: true"));
    let sw = Sidewatch::start(&["--config", path.to_str().unwrap()], &[]);
    sw.wait_ready(WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_when_https_meets_a_plain_http_port() {
    // A plain HTTP server answers the ClientHello with an HTTP error, as most do.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = tcp
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let (_dir, path) = write_config(&https_config(addr, ", insecure_skip_verify: true"));
    let sw = Sidewatch::start(&["--config", path.to_str().unwrap()], &[]);
    sw.wait_reason("tls", WITHIN).await;
}

#[test]
fn a_missing_ca_file_is_a_start_up_error() {
    let (_dir, path) = write_config(
        "probes:\n  - name: app\n    http: {url: \"https://127.0.0.1:1/\", ca_file: /nonexistent/ca.pem}\n",
    );
    let out = common::sidewatch_command()
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--config",
            path.to_str().unwrap(),
        ])
        .output_within(COMMAND_WITHIN)
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");
}
