//! Probes of the app (HTTP/1.1 and HTTP/2, gRPC health, TCP connect, over TCP or a Unix
//! socket), each failure classified into one reason, and the task that runs one on its interval.

mod classify;
pub mod config;
mod grpc;
mod http;
mod tcp;
mod tls;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::engine::bus::Input;
use crate::engine::Observation;
use crate::metrics::{self, Registry};
use crate::reason::Reason;
use crate::traffic::OwnSockets;
use config::{Check, ProbeConfig};

const MAX_MESSAGE: usize = 240;
/// A CA bundle; the system's whole one is about 200 KiB.
const MAX_CA_FILE: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProbeSetupError {
    #[error("probe {probe}: cannot read ca_file {path}: {source}")]
    CaFile {
        probe: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("probe {probe}: ca_file {path} holds no usable PEM certificate{detail}")]
    CaPem {
        probe: String,
        path: PathBuf,
        detail: String,
    },
    #[error("probe {probe}: cannot set up TLS: {source}")]
    Tls {
        probe: String,
        source: rustls::Error,
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
            message = format!("{}…", crate::util::clip(&message, MAX_MESSAGE));
        }
        Failure { reason, message }
    }
}

/// One probe's client, built once at start-up; every check opens a fresh connection, as the
/// kubelet does, since a pooled one would hide an app that no longer accepts.
pub enum Prober {
    Http(Box<http::HttpProber>),
    Grpc(grpc::GrpcProber),
    Tcp(tcp::TcpProber),
}

impl Prober {
    pub fn new(probe: &ProbeConfig) -> Result<Self, ProbeSetupError> {
        Ok(match &probe.check {
            Check::Http(check) => {
                Prober::Http(Box::new(http::HttpProber::new(&probe.name, check)?))
            }
            Check::Grpc(check) => Prober::Grpc(grpc::GrpcProber::new(&probe.name, check)?),
            Check::Tcp(check) => Prober::Tcp(tcp::TcpProber::new(check)),
        })
    }

    /// One check, bounded by `timeout` as a whole (connect, handshake, response and body). With
    /// `own`, its TCP connection is marked as sidewatch's for the traffic watch.
    pub async fn check(
        &self,
        timeout: Duration,
        own: Option<&Arc<OwnSockets>>,
    ) -> Result<(), Failure> {
        let attempt = async {
            match self {
                Prober::Http(p) => p.check(own).await,
                Prober::Grpc(p) => p.check(own).await,
                Prober::Tcp(p) => p.check(own).await,
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

/// The certificates of a probe's `ca_file`.
fn read_ca_file(
    probe: &str,
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ProbeSetupError> {
    use rustls::pki_types::pem::PemObject;
    let pem =
        crate::util::read_bounded(path, MAX_CA_FILE).map_err(|source| ProbeSetupError::CaFile {
            probe: probe.to_owned(),
            path: path.to_owned(),
            source,
        })?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ProbeSetupError::CaPem {
            probe: probe.to_owned(),
            path: path.to_owned(),
            detail: format!(": {e}"),
        })?;
    if certs.is_empty() {
        return Err(ProbeSetupError::CaPem {
            probe: probe.to_owned(),
            path: path.to_owned(),
            detail: String::new(),
        });
    }
    Ok(certs)
}

/// The probes' metrics, every probe's series and every reason its kind can fail with there from
/// the start.
#[derive(Clone)]
pub struct ProbeMetrics {
    up: prometheus::IntGaugeVec,
    duration: prometheus::HistogramVec,
    failures: prometheus::IntCounterVec,
}

impl ProbeMetrics {
    pub fn new(registry: &Registry, probes: &[ProbeConfig]) -> Self {
        let up = registry.register(metrics::gauge_vec(
            "sidewatch_probe_up",
            "1 when the probe's last check succeeded. When 0, see sidewatch_probe_failures_total for why.",
            &["probe"],
        ));
        let duration = registry.register(metrics::histogram_vec(
            "sidewatch_probe_duration_seconds",
            "Time of each check, connect to last byte. Growth toward the timeout predicts timeouts.",
            &["probe"],
            &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
        ));
        let failures = registry.register(metrics::counter_vec(
            "sidewatch_probe_failures_total",
            "Failed checks by reason: refused = app not listening, reset = accepted then dropped, \
             invalid_response = not HTTP (or not gRPC), http_5xx = app error, timeout = no answer in time, \
             tls = certificate or handshake, not_serving / unknown_service = the gRPC health service's answer.",
            &["probe", "reason"],
        ));
        for probe in probes {
            up.with_label_values(&[&probe.name]);
            duration.with_label_values(&[&probe.name]);
            for reason in probe.check.reasons() {
                failures.with_label_values(&[&probe.name, reason.as_str()]);
            }
        }
        ProbeMetrics {
            up,
            duration,
            failures,
        }
    }
}

/// Runs one probe on its interval, feeding the engine and the metrics (until a drain starts:
/// then sidewatch leaves the app alone, its verdict is fixed anyway).
pub struct ProbeWatcher {
    pub config: ProbeConfig,
    pub prober: Prober,
    pub metrics: ProbeMetrics,
    pub inputs: mpsc::Sender<Input>,
    /// Set when the probe's connections go to the port the drain watches, which would otherwise
    /// see them as app traffic.
    pub own: Option<Arc<OwnSockets>>,
}

impl ProbeWatcher {
    pub async fn run(self) {
        let signal = self.config.signal();
        let name = self.config.name.as_str();
        let up = self.metrics.up.with_label_values(&[name]);
        let duration = self.metrics.duration.with_label_values(&[name]);
        // The first check at once; the next on the grid the other looks share.
        let mut ticker = crate::beat::interval(self.config.interval);
        loop {
            ticker.tick().await;
            let start = Instant::now();
            let result = self
                .prober
                .check(self.config.timeout, self.own.as_ref())
                .await;
            duration.observe(start.elapsed().as_secs_f64());
            let observation = match result {
                Ok(()) => {
                    up.set(1);
                    Observation::Success
                }
                Err(Failure { reason, message }) => {
                    up.set(0);
                    self.metrics
                        .failures
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
                return; // the engine is gone
            }
        }
    }
}
