//! The sidecar's admin HTTP server, one listener (`--listen`): what it answers, and the
//! admin port's connection policy; the accept loop itself is `crate::http_server`'s.
//!
//! - `GET /`        the status page
//! - `GET /readyz`  200 `{"ready":true,"reasons":[]}` or 503 with the reasons (the sidecar's readinessProbe)
//! - `GET /livez`   200 while every watcher task runs, 503 naming the dead ones
//! - `GET /metrics` Prometheus text format 0.0.4
//! - `GET|POST /drain` starts or joins the drain, answers 200 when it has ended; from loopback, with
//!   the `X-Sidewatch-Drain-Token` header, or once the pod is terminating; 403 otherwise
//!
//! At the connection cap an idle connection is evicted (`http_server::Evict`), so that the
//! kubelet's probe always gets in. Probes and the engine run on their own runtime, so nothing
//! here waits on a probe.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::drain::{Access, Drain};
use crate::engine::bus::Published;
use crate::http_server::{self, Evict, Limit, Options};
use crate::liveness::Liveness;
use crate::metrics::{self, Registry};

/// Open admin connections kept at most (fewer under a low descriptor limit, see `connection_cap`).
/// The kubelet and Prometheus need a handful; the cap bounds what hostile clients can hold.
const MAX_CONNECTIONS: usize = 256;

pub struct Admin {
    pub verdict: watch::Receiver<Arc<Published>>,
    /// Everything `/metrics` serves.
    pub registry: Registry,
    pub metrics: AdminMetrics,
    pub drain: Drain,
    pub access: Access,
    pub liveness: Liveness,
    /// Connections this server accepted: the drain subtracts them from the namespace's PassiveOpens.
    pub accepted: Arc<AtomicU64>,
    /// When the latest `/metrics` scrape began: the exit path waits for one after the drain.
    pub scraped: watch::Sender<Option<Instant>>,
}

/// The admin port's own metrics: what clients hold of it.
#[derive(Clone)]
pub struct AdminMetrics {
    connections: prometheus::IntGauge,
    evictions: prometheus::IntCounter,
}

impl AdminMetrics {
    pub fn new(registry: &Registry) -> Self {
        AdminMetrics {
            connections: registry.register(metrics::gauge(
                "sidewatch_admin_connections",
                "Open connections to sidewatch's own port (probes, scrapes, held drains).",
            )),
            evictions: registry.register(metrics::counter(
                "sidewatch_admin_evictions_total",
                "Idle or slow connections to sidewatch's own port closed to admit new ones at the connection cap: \
                 a rise means a client holds many connections open (a leak or an attack).",
            )),
        }
    }
}

const TOKEN_HEADER: &str = "x-sidewatch-drain-token";

/// Serves until `shutdown`, then stops accepting, lets every connection finish the request it is
/// in (a scrape's answer is written whole, within the grace of `Options::small`) and returns once all are closed.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    let limit = Limit::Evict(Evict::new(
        connection_cap(),
        admin.metrics.connections.clone(),
        admin.metrics.evictions.clone(),
    ));
    let options = Options {
        accepted: Some(admin.accepted.clone()),
        ..Options::small("admin", limit)
    };
    http_server::serve(listener, options, shutdown, move |peer| {
        let admin = admin.clone();
        service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(handle(&admin, peer, req).await) }
        })
    })
    .await;
}

/// The connection cap: `MAX_CONNECTIONS`, or a quarter of the descriptor limit when that is lower,
/// so that accepting never fails for want of a descriptor while the cap holds.
fn connection_cap() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let quarter = limit.map_or(usize::MAX, |n| usize::try_from(n / 4).unwrap_or(usize::MAX));
    MAX_CONNECTIONS.min(quarter).max(1)
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
            let terminating = admin.verdict.borrow().verdict.terminating();
            if !admin.access.allows(peer.ip(), token, terminating) {
                tracing::warn!(%peer, token = token.is_some(), "drain refused");
                return text(
                    StatusCode::FORBIDDEN,
                    "drain is accepted from loopback, with the drain token, or once the pod is terminating\n",
                );
            }
            let end = admin.drain.start(&format!("/drain from {peer}")).await;
            json(StatusCode::OK, serde_json::to_vec(&end).unwrap_or_default())
        }
        path @ ("/readyz" | "/livez" | "/metrics" | "/") => {
            if method != Method::GET && method != Method::HEAD {
                return not_allowed("GET, HEAD");
            }
            match path {
                "/readyz" | "/" => {
                    let published = admin.verdict.borrow().clone();
                    let status = if published.verdict.ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    let verbose = req.uri().query().is_some_and(|q| {
                        q.split('&').any(|p| p.split('=').next() == Some("verbose"))
                    });
                    if path == "/" {
                        let page = crate::page::render(&published, std::time::SystemTime::now());
                        with_type(status, page.into(), "text/html; charset=utf-8")
                    } else if verbose {
                        json(status, published.verbose())
                    } else {
                        json(status, published.body.clone())
                    }
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
                    // Before encoding: a scrape that began after the drain's end sees its outcome.
                    admin.scraped.send_replace(Some(Instant::now()));
                    let mut resp = Response::new(Full::new(Bytes::from(admin.registry.encode())));
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
            "not found: try /, /readyz, /livez, /metrics, /drain\n",
        ),
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
