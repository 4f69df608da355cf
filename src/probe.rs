//! Probes of the app's port (HTTP, HTTPS, TCP connect), each failure classified into one reason.

use std::error::Error as StdError;
use std::io;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::{Check, HttpCheck, ProbeConfig, StatusRange, TcpCheck};
use crate::drain::Drain;
use crate::engine::Observation;
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::reason::Reason;
use crate::watcher::Input;

/// The most of a response body read: enough for `body_contains` on any health page, and a bound
/// on what a misbehaving app can make us buffer.
const MAX_BODY: usize = 64 * 1024;
const MAX_MESSAGE: usize = 240;
/// A CA bundle; the system's whole one is about 200 KiB.
const MAX_CA_FILE: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProbeSetupError {
    #[error("probe {probe}: cannot read ca_file {path}: {source}")]
    CaFile {
        probe: String,
        path: String,
        source: io::Error,
    },
    #[error("probe {probe}: ca_file {path} holds no usable PEM certificate: {source}")]
    CaPem {
        probe: String,
        path: String,
        source: reqwest::Error,
    },
    #[error("probe {probe}: cannot build the HTTP client: {source}")]
    Client {
        probe: String,
        source: reqwest::Error,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

impl Failure {
    fn new(reason: Reason, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        Failure { reason, message }
    }
}

pub enum Prober {
    Http {
        client: reqwest::Client,
        check: HttpCheck,
    },
    Tcp(TcpCheck),
}

impl Prober {
    pub fn new(probe: &ProbeConfig) -> Result<Self, ProbeSetupError> {
        match &probe.check {
            Check::Tcp(tcp) => Ok(Prober::Tcp(tcp.clone())),
            Check::Http(http) => {
                crate::tls::install_crypto_provider();
                // A fresh connection per check, like the kubelet: a pooled one would hide an app
                // that no longer accepts. No proxy, no redirects, no retries: we test the port.
                let mut builder = reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .no_proxy()
                    .redirect(reqwest::redirect::Policy::none())
                    .retry(reqwest::retry::never())
                    .http1_only()
                    .tcp_nodelay(true)
                    .user_agent(concat!("sidewatch/", env!("CARGO_PKG_VERSION")));
                if let Some(path) = &http.ca_file {
                    let err_path = path.display().to_string();
                    let pem = crate::config::read_bounded(path, MAX_CA_FILE).map_err(|source| {
                        ProbeSetupError::CaFile {
                            probe: probe.name.clone(),
                            path: err_path.clone(),
                            source,
                        }
                    })?;
                    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                        ProbeSetupError::CaPem {
                            probe: probe.name.clone(),
                            path: err_path,
                            source,
                        }
                    })?;
                    builder = builder.tls_certs_only(certs);
                }
                if http.url.0.scheme() == "http" {
                    // No TLS on this probe: skip loading the system's root certificates.
                    builder = builder.tls_certs_only(Vec::new());
                }
                if http.insecure_skip_verify {
                    builder = builder.tls_danger_accept_invalid_certs(true);
                }
                let client = builder.build().map_err(|source| ProbeSetupError::Client {
                    probe: probe.name.clone(),
                    source,
                })?;
                Ok(Prober::Http {
                    client,
                    check: http.clone(),
                })
            }
        }
    }

    /// One check, bounded by `timeout` as a whole (connect, handshake, response and body).
    pub async fn check(&self, timeout: Duration) -> Result<(), Failure> {
        let attempt = async {
            match self {
                Prober::Tcp(tcp) => check_tcp(tcp).await,
                Prober::Http { client, check } => check_http(client, check).await,
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Failure::new(
                Reason::Timeout,
                format!("no answer within {}", humantime::format_duration(timeout)),
            )),
        }
    }
}

async fn check_tcp(tcp: &TcpCheck) -> Result<(), Failure> {
    let host = (tcp.address.host.as_str(), tcp.address.port);
    let addrs: Vec<_> = tokio::net::lookup_host(host)
        .await
        .map_err(|e| Failure::new(Reason::Dns, format!("{}: {e}", tcp.address)))?
        .collect();
    let mut last = None;
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                last = Some(classify_io(&e).map_or_else(
                    || Failure::new(Reason::Refused, format!("{addr}: {e}")),
                    |reason| Failure::new(reason, format!("{addr}: {e}")),
                ))
            }
        }
    }
    Err(last.unwrap_or_else(|| Failure::new(Reason::Dns, format!("{}: no address", tcp.address))))
}

async fn check_http(client: &reqwest::Client, check: &HttpCheck) -> Result<(), Failure> {
    let mut response = client
        .get(check.url.0.clone())
        .send()
        .await
        .map_err(|e| classify(&e))?;
    let status = response.status().as_u16();
    if (500..=599).contains(&status) && !accepts(&check.expect_status, status) {
        return Err(Failure::new(Reason::Http5xx, format!("HTTP {status}")));
    }
    if !accepts(&check.expect_status, status) {
        let want: Vec<String> = check.expect_status.iter().map(|r| r.to_string()).collect();
        return Err(Failure::new(
            Reason::UnexpectedStatus,
            format!("HTTP {status}, want {}", want.join(",")),
        ));
    }
    let Some(needle) = &check.body_contains else {
        return Ok(());
    };
    // Read until the needle shows, the body ends, or MAX_BODY: a health page larger than that is
    // not one, and an endless body must not hold the check until its timeout.
    let needle = needle.as_bytes();
    let mut body = Vec::new();
    loop {
        if contains(&body, needle) {
            return Ok(());
        }
        if body.len() >= MAX_BODY {
            return Err(Failure::new(
                Reason::InvalidResponse,
                format!(
                    "HTTP {status}, body over {} KiB without {:?}",
                    MAX_BODY / 1024,
                    String::from_utf8_lossy(needle)
                ),
            ));
        }
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_BODY + needle.len() - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => break,
            Err(e) => return Err(classify(&e)),
        }
    }
    Err(Failure::new(
        Reason::BodyMismatch,
        format!(
            "HTTP {status}, body lacks {:?}",
            String::from_utf8_lossy(needle)
        ),
    ))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn accepts(ranges: &[StatusRange], status: u16) -> bool {
    ranges.iter().any(|r| r.contains(status))
}

/// Maps a reqwest error to a reason by walking its source chain down to the io, TLS or HTTP
/// parse error that caused it.
pub fn classify(err: &reqwest::Error) -> Failure {
    let mut reason = None;
    let mut chain: Vec<String> = Vec::new();
    let mut next: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !chain.iter().any(|seen| seen.contains(&text)) {
            chain.push(text);
        }
        if reason.is_none() {
            reason = classify_one(e);
        }
        // io::Error::source() skips the error it wraps (tokio-rustls wraps TLS errors, and
        // connectors wrap those again): descend into it explicitly.
        next = match e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    let reason = reason.unwrap_or(if err.is_connect() {
        Reason::Refused
    } else {
        Reason::InvalidResponse
    });
    // The innermost errors say the most; the outer ones repeat the URL.
    let message = chain
        .iter()
        .rev()
        .take(2)
        .rev()
        .cloned()
        .collect::<Vec<_>>();
    Failure::new(reason, message.join(": "))
}

fn classify_one(e: &(dyn StdError + 'static)) -> Option<Reason> {
    if let Some(io) = e.downcast_ref::<io::Error>() {
        return classify_io(io);
    }
    if e.is::<rustls::Error>() {
        return Some(Reason::Tls);
    }
    if let Some(h) = e.downcast_ref::<hyper::Error>() {
        if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
            return Some(Reason::InvalidResponse);
        }
        if h.is_incomplete_message() {
            return Some(Reason::Reset);
        }
    }
    // hyper-util's connector says "dns error" for a failed name lookup and exposes no type for it.
    if e.to_string().starts_with("dns error") {
        return Some(Reason::Dns);
    }
    None
}

fn classify_io(e: &io::Error) -> Option<Reason> {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => Some(Reason::Refused),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected => {
            Some(Reason::Reset)
        }
        TimedOut => Some(Reason::Timeout),
        _ => None,
    }
}

/// Runs one probe on its interval, feeding the engine and the metrics, until a drain starts.
pub struct ProbeWatcher {
    pub config: ProbeConfig,
    pub prober: Prober,
    pub metrics: Metrics,
    pub inputs: mpsc::Sender<Input>,
    pub drain: Drain,
}

impl ProbeWatcher {
    pub async fn run(self, liveness: Liveness) {
        let guard = liveness.register(self.config.signal());
        let signal = self.config.signal();
        let name = self.config.name.as_str();
        let up = self.metrics.probe_up.with_label_values(&[name]);
        let duration = self.metrics.probe_duration.with_label_values(&[name]);
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut draining = self.drain.started();
        loop {
            tokio::select! {
                // While draining sidewatch leaves the app alone: its verdict is fixed anyway.
                _ = draining.wait_for(Option::is_some) => break,
                _ = ticker.tick() => {}
            }
            let start = Instant::now();
            let result = self.prober.check(self.config.timeout).await;
            duration.observe(start.elapsed().as_secs_f64());
            let observation = match result {
                Ok(()) => {
                    up.set(1);
                    Observation::Success
                }
                Err(Failure { reason, message }) => {
                    up.set(0);
                    self.metrics
                        .probe_failures
                        .with_label_values(&[name, reason.as_str()])
                        .inc();
                    tracing::debug!(probe = name, %reason, %message, "check failed");
                    Observation::Failure { reason, message }
                }
            };
            let input = Input::Observe {
                signal: signal.clone(),
                observation,
            };
            if self.inputs.send(input).await.is_err() {
                return; // the engine is gone; the guard reports us dead
            }
        }
        guard.finish();
    }
}
