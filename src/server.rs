//! The admin HTTP server, one listener (`--listen`), boring on purpose:
//!
//! - `GET /readyz`  200 `{"ready":true,"reasons":[]}` or 503 with the reasons (the sidecar's readinessProbe)
//! - `GET /livez`   200 while every watcher task runs, 503 naming the dead ones
//! - `GET /metrics` Prometheus text format 0.0.4
//! - `GET|POST /drain` starts or joins the drain, answers 200 when it has ended; from loopback, with
//!   the `X-Sidewatch-Drain-Token` header, or once the pod is terminating; 403 otherwise
//!
//! Probes and the engine run on their own runtime, so nothing here waits on a probe.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::drain::{Access, Drain};
use crate::engine::bus::Published;
use crate::liveness::Liveness;
use crate::metrics::{self, Registry};

/// Port scanners and slow clients must not hold connections open.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// hyper's smallest allowed read buffer is 8 KiB; our requests are one line and a few headers.
const MAX_BUF: usize = 16 * 1024;
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
/// in (a scrape's answer is written whole) and returns once all are closed.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    let connections = Connections::new(connection_cap());
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
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
        let (slot, evicted) = connections.admit(peer.ip(), &admin.metrics);
        let admin = admin.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let busy = slot.busy.clone();
            let service = service_fn(move |req| {
                let admin = admin.clone();
                let busy = Busy::enter(&busy);
                async move {
                    let resp = handle(&admin, peer, req).await;
                    drop(busy);
                    Ok::<_, Infallible>(resp)
                }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_BUF);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = evicted => {
                    tracing::debug!(%peer, "admin connection closed to make room");
                    Ok(())
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// The connection cap: `MAX_CONNECTIONS`, or a quarter of the descriptor limit when that is lower,
/// so that accepting never fails for want of a descriptor while the cap holds.
fn connection_cap() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let quarter = limit.map_or(usize::MAX, |n| usize::try_from(n / 4).unwrap_or(usize::MAX));
    MAX_CONNECTIONS.min(quarter).max(1)
}

/// The open admin connections, oldest first. At the cap, admitting a connection closes one that is
/// not inside a request (so idle, or still sending its headers), taken from the client address
/// that holds the most connections, its oldest first: one client that opens many connections
/// loses its own, and the kubelet's probe from the node's address always gets in. A connection
/// inside a request, a held `/drain` above all, is never closed.
#[derive(Clone)]
struct Connections {
    cap: usize,
    open: Arc<Mutex<Open>>,
}

#[derive(Default)]
struct Open {
    next: u64,
    slots: BTreeMap<u64, Entry>,
}

struct Entry {
    peer: IpAddr,
    busy: Arc<AtomicBool>,
    /// Dropping it closes the connection.
    _evict: oneshot::Sender<()>,
}

/// A connection's place in `Connections`; dropped when the connection ends.
struct Slot {
    id: u64,
    busy: Arc<AtomicBool>,
    connections: Connections,
    open_gauge: prometheus::IntGauge,
}

impl Connections {
    fn new(cap: usize) -> Self {
        Connections {
            cap,
            open: Arc::default(),
        }
    }

    /// Registers a new connection, closing another (`Open::victim`) if the cap is reached. The
    /// receiver completes when this connection is closed in turn.
    fn admit(&self, peer: IpAddr, metrics: &AdminMetrics) -> (Slot, oneshot::Receiver<()>) {
        let (evict, evicted) = oneshot::channel();
        let busy = Arc::new(AtomicBool::new(false));
        let mut open = self.lock();
        if open.slots.len() >= self.cap {
            if let Some(id) = open.victim() {
                open.slots.remove(&id);
                metrics.evictions.inc();
            }
        }
        let id = open.next;
        open.next += 1;
        open.slots.insert(
            id,
            Entry {
                peer,
                busy: busy.clone(),
                _evict: evict,
            },
        );
        metrics.connections.set(open.slots.len() as i64);
        let slot = Slot {
            id,
            busy,
            connections: self.clone(),
            open_gauge: metrics.connections.clone(),
        };
        (slot, evicted)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // The map stays consistent even if a holder panicked: every update is a single insert or remove.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Open {
    /// The connection to close: not inside a request, of the address with the most connections,
    /// the oldest of those.
    fn victim(&self) -> Option<u64> {
        let mut per_peer: HashMap<IpAddr, usize> = HashMap::new();
        for entry in self.slots.values() {
            *per_peer.entry(entry.peer).or_default() += 1;
        }
        let idle = self
            .slots
            .iter()
            .filter(|(_, e)| !e.busy.load(Ordering::Acquire));
        // max_by_key keeps the last of equals; reversed, that is the oldest.
        idle.rev()
            .max_by_key(|(_, e)| per_peer.get(&e.peer).copied().unwrap_or(0))
            .map(|(id, _)| *id)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.connections.lock();
        open.slots.remove(&self.id);
        self.open_gauge.set(open.slots.len() as i64);
    }
}

/// Marks a connection busy while one of its requests is being answered.
struct Busy(Arc<AtomicBool>);

impl Busy {
    fn enter(flag: &Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Release);
        Busy(flag.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_victim_is_the_oldest_idle_connection_of_the_busiest_client() {
        let c = Connections::new(4);
        let m = AdminMetrics::new(&Registry::new());
        let (node, attacker) = ("10.0.0.1".parse().unwrap(), "10.1.2.3".parse().unwrap());
        let (_kubelet, _) = c.admit(node, &m);
        let (held, _) = c.admit(attacker, &m);
        let busy = Busy::enter(&held.busy);
        let (next, _) = c.admit(attacker, &m);
        let (_newest, _) = c.admit(attacker, &m);
        assert_eq!(c.lock().victim(), Some(next.id));
        drop(busy);
        assert_eq!(c.lock().victim(), Some(held.id));
        // At the cap, admitting closes the victim and keeps the count.
        let (_admitted, _) = c.admit(node, &m);
        assert_eq!(m.evictions.get(), 1);
        assert_eq!(c.lock().slots.len(), 4);
        assert!(!c.lock().slots.contains_key(&held.id));
    }
}
