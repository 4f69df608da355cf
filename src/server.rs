//! The admin HTTP server, one listener (`--listen`), boring on purpose:
//!
//! - `GET /readyz`  200 `{"ready":true,"reasons":[]}` or 503 with the reasons (the sidecar's readinessProbe)
//! - `GET /livez`   200 while every watcher task runs, 503 naming the dead ones
//! - `GET /metrics` Prometheus text format 0.0.4
//! - `GET|POST /drain` starts or joins the drain, answers 200 when it has ended; from loopback, with
//!   the `X-Sidewatch-Drain-Token` header, or once the pod is terminating; 403 otherwise
//!
//! Probes and the engine run on their own runtime, so nothing here waits on a probe.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::drain::{Access, Drain};
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::watcher::Published;

/// Port scanners and slow clients must not hold connections open.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// hyper's smallest allowed read buffer is 8 KiB; our requests are one line and a few headers.
const MAX_BUF: usize = 16 * 1024;

pub struct Admin {
    pub verdict: watch::Receiver<Arc<Published>>,
    pub metrics: Metrics,
    pub drain: Drain,
    pub access: Access,
    pub liveness: Liveness,
    /// Connections this server accepted: the drain subtracts them from the namespace's PassiveOpens.
    pub accepted: Arc<AtomicU64>,
}

const TOKEN_HEADER: &str = "x-sidewatch-drain-token";

pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, mostly: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        admin.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(&admin, peer, req).await) }
            });
            let mut conn = http1::Builder::new();
            conn.timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_BUF);
            if let Err(e) = conn.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

type Body = Full<Bytes>;

async fn handle(admin: &Admin, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let method = req.method();
    match req.uri().path() {
        "/drain" => {
            if method != Method::GET && method != Method::POST {
                return not_allowed("GET, POST");
            }
            let token = req.headers().get(TOKEN_HEADER).map(|v| v.as_bytes());
            if !admin.access.allows(peer.ip(), token) {
                tracing::warn!(%peer, token = token.is_some(), "drain refused");
                return text(
                    StatusCode::FORBIDDEN,
                    "drain is accepted from loopback, with the drain token, or once the pod is terminating\n",
                );
            }
            let end = admin.drain.start(&format!("/drain from {peer}")).await;
            json(StatusCode::OK, serde_json::to_vec(&end).unwrap_or_default())
        }
        path @ ("/readyz" | "/livez" | "/metrics") => {
            if method != Method::GET && method != Method::HEAD {
                return not_allowed("GET, HEAD");
            }
            match path {
                "/readyz" => {
                    let published = admin.verdict.borrow().clone();
                    let status = if published.verdict.ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    json(status, published.body.clone())
                }
                "/livez" => {
                    let dead = admin.liveness.dead();
                    if dead.is_empty() {
                        text(StatusCode::OK, "ok\n")
                    } else {
                        let body = format!("dead: {}\n", dead.join(", "));
                        text(StatusCode::SERVICE_UNAVAILABLE, body)
                    }
                }
                _ => {
                    let mut resp = Response::new(Full::new(Bytes::from(admin.metrics.encode())));
                    resp.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    resp
                }
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /readyz, /livez, /metrics, /drain\n",
        ),
    }
}

/// Loopback in either family, including IPv4-mapped IPv6 (`::ffff:127.0.0.1`) from dual-stack sockets.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, body.into(), "text/plain; charset=utf-8")
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, body.into(), "application/json")
}

fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_recognised_in_every_form() {
        for ip in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.0.0.1",
            "192.168.1.1",
            "::ffff:10.0.0.1",
            "fe80::1",
            "0.0.0.0",
        ] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }
}
