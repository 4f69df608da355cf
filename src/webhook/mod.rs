//! The mutating admission webhook, `sidewatch webhook`, TLS 1.2 and 1.3 only, on `--listen`:
//!
//! - `POST /mutate`           pods annotated `sidewatch.io/inject: "true"` get sidewatch
//! - `POST /mutate-namespace` every pod of a namespace labelled `sidewatch.io/inject=enabled`
//!   (through the webhook configuration's namespaceSelector) unless annotated `"false"`
//! - `GET /healthz`            liveness
//! - `GET /readyz`             readiness: 503 from the first SIGTERM on (`stop`)
//!
//! and `GET /metrics` (and `/healthz`) in plain HTTP on `--metrics-listen` (`metrics`). Each
//! admission is one log line (`admission`: uid, namespace, name or generateName, outcome,
//! reason), for audit.
//!
//! Every policy outcome, a pod that cannot be injected included, is an AdmissionReview answer; a
//! request that is not a review gets a 4xx with the reason. The certificate and key are re-read
//! when they change on disk. The policy itself is `inject::mutate`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderMap, HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::http_server::{self, Limit, Options};
use crate::liveness::{Liveness, Tasks};

mod certs;
pub mod inject;
pub(crate) mod metrics;
mod review;
mod stop;

use certs::Certs;
pub use certs::TlsError;
use inject::{Scope, Settings};
use metrics::{Admitted, Failure, WebhookMetrics};
pub use review::{review, Decision, ReviewError};
pub use stop::StopError;

/// Kubernetes objects are at most 1.5 MiB; a review wraps one (twice for updates).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// How much of a body over `MAX_BODY` is read (and dropped) to answer 413 cleanly.
const DISCARD_MAX: usize = 4 * MAX_BODY;
// The API server gives up on a webhook after its timeoutSeconds (at most 30 s, the chart's default
// 5 s): a client slower than these is not the API server, and must not hold a connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Also how long a kept-alive connection may sit idle: hyper times the wait for the next request.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Then a connection is asked to close after its current request (within `STOP_GRACE`), so that
/// one whose client stopped reading answers (the header timeout does not run while hyper waits to
/// write) frees its slot.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
/// Headers are small; hyper's default buffer of 400 KB per connection is not needed.
const MAX_BUF: usize = 64 * 1024;

#[derive(Debug, clap::Args)]
pub struct WebhookArgs {
    /// Address to serve HTTPS on.
    #[arg(long, env = "SIDEWATCH_LISTEN", default_value = "[::]:9443")]
    pub listen: SocketAddr,
    /// Address to serve `/metrics` on, in plain HTTP.
    #[arg(long, env = "SIDEWATCH_METRICS_LISTEN", default_value = "[::]:9102")]
    pub metrics_listen: SocketAddr,
    /// PEM certificate chain for the webhook's Service name; re-read when it changes.
    #[arg(long, env = "SIDEWATCH_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key of that certificate; re-read when it changes.
    #[arg(long, env = "SIDEWATCH_TLS_KEY")]
    pub tls_key: PathBuf,
    /// How often the certificate and key files are checked for a new pair.
    #[arg(long, env = "SIDEWATCH_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = nonzero_duration)]
    pub tls_reload_interval: Duration,
    /// Connections served at once; more wait in the listen backlog until one closes.
    #[arg(long, env = "SIDEWATCH_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Image of the injected sidecar.
    #[arg(long, env = "SIDEWATCH_IMAGE", default_value = "sidewatch:0.1.0")]
    pub image: String,
    /// Inject a plain container instead of a native sidecar (Kubernetes before 1.29).
    #[arg(long, env = "SIDEWATCH_PLAIN_SIDECAR")]
    pub plain_sidecar: bool,
    /// The memory source of the pods that do not annotate `sidewatch.io/memory` (docs/memory.md).
    #[arg(
        long,
        env = "SIDEWATCH_MEMORY_SOURCE",
        value_enum,
        default_value = "auto"
    )]
    pub memory_source: inject::Memory,
    /// A node agent (`sidewatch node`) runs on every node: `--memory-source auto` is then the
    /// node source for every pod (full memory signals at Pod Security "restricted").
    #[arg(long, env = "SIDEWATCH_NODE_AGENT")]
    pub node_agent: bool,
    /// Whether the injector may set `shareProcessNamespace: true` for the memory sources that
    /// need it (app-root, proc); `false` leaves those out unless the pod shares by itself.
    #[arg(long, env = "SIDEWATCH_SHARE_PROCESS_NAMESPACE", default_value_t = true, action = clap::ArgAction::Set)]
    pub share_process_namespace: bool,
    /// On SIGTERM, how long `/readyz` fails while reviews are still accepted, so that the
    /// endpoints drop this pod first; then it stops accepting, answers what is in flight, exits.
    #[arg(long, env = "SIDEWATCH_SHUTDOWN_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,
}

fn nonzero_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be more than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

pub async fn run(args: WebhookArgs) -> anyhow::Result<()> {
    // Before anything starts: as PID 1, a signal that arrives without a handler is lost.
    let signals = stop::Signals::install()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let metrics = Arc::new(WebhookMetrics::new());
    let certs = Arc::new(Certs::load(
        args.tls_cert,
        args.tls_key,
        provider.clone(),
        metrics.clone(),
    )?);
    // The API server speaks TLS 1.2 and 1.3; nothing older is offered to anyone.
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Versions)?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    // Every task on the one tracked path: a dead one fails `/healthz`, and the stop waits for all.
    let shutdown = CancellationToken::new();
    let liveness = Liveness::default();
    let tasks = Tasks::here(&liveness);
    tasks.spawn(
        "certificate reload",
        &shutdown,
        certs.watch(args.tls_reload_interval),
    );
    let listener = crate::net::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let metrics_listener = crate::net::bind(args.metrics_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.metrics_listen))?;
    let metrics_addr = metrics_listener.local_addr()?;
    tasks.spawn_graceful(
        "metrics server",
        &shutdown,
        metrics::serve(metrics_listener, metrics.clone(), shutdown.clone()),
    );
    let settings = Arc::new(Settings {
        image: args.image,
        native: !args.plain_sidecar,
        memory: args.memory_source,
        node_agent: args.node_agent,
        share_process_namespace: args.share_process_namespace,
        ..Settings::default()
    });
    tracing::info!(listen = %listener.local_addr()?, metrics = %metrics_addr, image = %settings.image, native = settings.native, memory = ?settings.memory, node_agent = settings.node_agent, share_process_namespace = settings.share_process_namespace, "sidewatch started (webhook)");
    let options = Options {
        name: "webhook",
        limit: Limit::Backlog(args.max_connections as usize),
        header_read_timeout: HEADER_TIMEOUT,
        max_buf: MAX_BUF,
        tls: Some(http_server::Tls {
            acceptor,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }),
        max_age: Some(MAX_CONNECTION_AGE),
        grace: stop::STOP_GRACE,
        accepted: None,
    };
    let stopping = Arc::new(AtomicBool::new(false));
    let server = http_server::serve(listener, options, shutdown.clone(), {
        let stopping = stopping.clone();
        move |_peer| {
            let (settings, metrics, stopping, liveness) = (
                settings.clone(),
                metrics.clone(),
                stopping.clone(),
                liveness.clone(),
            );
            hyper::service::service_fn(move |req| {
                let (settings, metrics, stopping) =
                    (settings.clone(), metrics.clone(), stopping.clone());
                let alive = liveness.dead().is_empty();
                async move {
                    let stopping = stopping.load(Ordering::Acquire);
                    Ok::<_, std::convert::Infallible>(
                        handle(req, &settings, &metrics, stopping, alive).await,
                    )
                }
            })
        }
    });
    tasks.spawn_graceful("webhook server", &shutdown, server);
    stop::on_signal(signals, args.shutdown_delay, &stopping, &shutdown, &tasks).await?;
    Ok(())
}

async fn handle(
    req: Request<Incoming>,
    settings: &Settings,
    metrics: &WebhookMetrics,
    stopping: bool,
    alive: bool,
) -> Response<Full<Bytes>> {
    let scope = match req.uri().path() {
        "/healthz" | "/readyz" if !matches!(*req.method(), Method::GET | Method::HEAD) => {
            return not_allowed("GET, HEAD")
        }
        // Readiness fails from the first signal on, so that the endpoints drop this pod; liveness
        // does not, or the kubelet would kill it with reviews in flight.
        "/readyz" if stopping => return reply(StatusCode::SERVICE_UNAVAILABLE, "stopping\n"),
        // A dead task (the certificate reload) is cleared by a restart.
        "/healthz" if !alive => return reply(StatusCode::SERVICE_UNAVAILABLE, "dead\n"),
        "/healthz" | "/readyz" => return reply(StatusCode::OK, "ok\n"),
        "/mutate" => Scope::Annotated,
        "/mutate-namespace" => Scope::Namespace,
        _ => return reply(StatusCode::NOT_FOUND, "not found\n"),
    };
    let start = Instant::now();
    let (resp, decided) = admit(req, scope, settings).await;
    let took = start.elapsed();
    match decided {
        Ok(d) => {
            metrics.admitted(d.outcome, d.reason, took);
            // One line per admission, for audit: who asked about which pod, and what it got.
            tracing::info!(uid = %d.uid, namespace = %d.namespace, name = %d.name, generate_name = %d.generate_name, outcome = d.outcome.as_str(), reason = d.reason, took_ms = took.as_secs_f64() * 1e3, "admission");
        }
        Err(reason) => {
            metrics.admitted(Admitted::Error, reason.as_str(), took);
            tracing::info!(
                outcome = Admitted::Error.as_str(),
                reason = reason.as_str(),
                status = resp.status().as_u16(),
                took_ms = took.as_secs_f64() * 1e3,
                "admission"
            );
        }
    }
    resp
}

/// The answer to a request on a mutating path, and what was decided, or the `error` reason.
async fn admit(
    req: Request<Incoming>,
    scope: Scope,
    settings: &Settings,
) -> (Response<Full<Bytes>>, Result<Decision, Failure>) {
    if req.method() != Method::POST {
        return (not_allowed("POST"), Err(Failure::Method));
    }
    if !is_json(req.headers()) {
        let message = "an AdmissionReview is sent as content-type application/json\n";
        let resp = closing(reply(StatusCode::UNSUPPORTED_MEDIA_TYPE, message));
        return (resp, Err(Failure::ContentType));
    }
    let too_large = || {
        tracing::warn!(max = MAX_BODY, "admission review over the size limit");
        let message = format!("the review is larger than {MAX_BODY} bytes\n");
        let resp = closing(reply(StatusCode::PAYLOAD_TOO_LARGE, message));
        (resp, Err(Failure::TooLarge))
    };
    // Far over the cap: refused at once (the client, still sending, may see a reset instead).
    if req.body().size_hint().lower() > DISCARD_MAX as u64 {
        return too_large();
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, read_body(req.into_body())).await {
        Ok(Ok(Some(body))) => body,
        Ok(Ok(None)) => return too_large(),
        Ok(Err(e)) => {
            let message = format!("cannot read the review: {e}\n");
            let resp = closing(reply(StatusCode::BAD_REQUEST, message));
            return (resp, Err(Failure::BodyRead));
        }
        Err(_) => {
            tracing::debug!("admission review body too slow");
            let message = format!("the review did not arrive within {BODY_TIMEOUT:?}\n");
            let resp = closing(reply(StatusCode::REQUEST_TIMEOUT, message));
            return (resp, Err(Failure::BodyTimeout));
        }
    };
    let Some(token) = drain_token() else {
        let message = "no randomness for a drain token\n";
        return (
            reply(StatusCode::INTERNAL_SERVER_ERROR, message),
            Err(Failure::Internal),
        );
    };
    match review(&body, scope, settings, &token) {
        Ok((answer, decision)) => {
            let mut resp = reply(StatusCode::OK, answer);
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            (resp, Ok(decision))
        }
        Err(ReviewError::Answer(e)) => {
            tracing::error!(error = %e, "cannot serialise an admission answer");
            let message = "cannot serialise the answer\n";
            (
                reply(StatusCode::INTERNAL_SERVER_ERROR, message),
                Err(Failure::Internal),
            )
        }
        Err(why) => {
            tracing::warn!(error = %why, "malformed admission review");
            (
                reply(StatusCode::BAD_REQUEST, format!("{why}\n")),
                Err(Failure::NotAReview),
            )
        }
    }
}

/// The body, or `None` past `MAX_BODY`. Past it the rest is read and dropped, up to `DISCARD_MAX`
/// in all, so that a client still sending reads the 413 rather than a reset connection.
async fn read_body(mut body: Incoming) -> Result<Option<Bytes>, hyper::Error> {
    let mut kept = BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        total = total.saturating_add(data.len());
        if total > DISCARD_MAX {
            return Ok(None);
        }
        if total <= MAX_BODY {
            kept.extend_from_slice(&data);
        }
    }
    Ok((total <= MAX_BODY).then(|| kept.freeze()))
}

/// `application/json`, with or without parameters such as a charset.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// A fresh per-pod token shared by the sidecar and the app's preStop hook.
fn drain_token() -> Option<String> {
    let mut bytes = [0u8; 16];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A plain-text answer.
fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut resp = reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

/// For answers given before the body was read: the rest of it is not worth reading.
fn closing(mut resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}
