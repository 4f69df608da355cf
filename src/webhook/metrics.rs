//! The webhook's own metrics, and the plain-HTTP listener (`--metrics-listen`) that serves them
//! with `GET /metrics` and `GET /healthz`: admissions by outcome and reason, how long each took,
//! when the served certificate expires, and its reloads. Apart from the TLS port, so that
//! Prometheus scrapes it as it scrapes the sidecars, without the webhook's CA.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use prometheus::{Gauge, HistogramVec, IntCounterVec};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::inject::{RefusalKind, Scope, Skip};
use super::review::NOT_A_POD_CREATION;
use crate::http_server::{self, Limit, Options};
use crate::metrics::{self, Registry};

/// The `outcome` label of the admissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    Injected,
    Skipped,
    Refused,
    /// The request got no AdmissionReview answer (`Failure`).
    Error,
}

impl Admitted {
    pub const ALL: [Admitted; 4] = [
        Admitted::Injected,
        Admitted::Skipped,
        Admitted::Refused,
        Admitted::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Admitted::Injected => "injected",
            Admitted::Skipped => "skipped",
            Admitted::Refused => "refused",
            Admitted::Error => "error",
        }
    }

    /// Every `reason` this outcome can have, all registered at zero.
    pub fn reasons(self) -> Vec<&'static str> {
        match self {
            Admitted::Injected => Scope::ALL.iter().map(|s| s.label()).collect(),
            Admitted::Skipped => Skip::ALL
                .iter()
                .map(|s| s.label())
                .chain([NOT_A_POD_CREATION])
                .collect(),
            Admitted::Refused => RefusalKind::ALL.iter().map(|k| k.label()).collect(),
            Admitted::Error => Failure::ALL.iter().map(|f| f.as_str()).collect(),
        }
    }
}

/// Why a request to `/mutate*` got no AdmissionReview answer: the `reason` of `error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    NotAReview,
    ContentType,
    Method,
    TooLarge,
    BodyTimeout,
    BodyRead,
    Internal,
}

impl Failure {
    pub const ALL: [Failure; 7] = [
        Failure::NotAReview,
        Failure::ContentType,
        Failure::Method,
        Failure::TooLarge,
        Failure::BodyTimeout,
        Failure::BodyRead,
        Failure::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::NotAReview => "not_a_review",
            Failure::ContentType => "content_type",
            Failure::Method => "method",
            Failure::TooLarge => "too_large",
            Failure::BodyTimeout => "body_timeout",
            Failure::BodyRead => "body_read",
            Failure::Internal => "internal",
        }
    }
}

/// The `result` label of the certificate reloads, indexed by success.
const RELOAD_RESULTS: [&str; 2] = ["failure", "success"];
/// The API server gives up after the webhook's timeoutSeconds (the chart's 5 s, at most 30 s).
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];
/// Prometheus and a probe or two need a handful; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

#[derive(Clone)]
pub struct WebhookMetrics {
    pub registry: Registry,
    admissions: IntCounterVec,
    duration: HistogramVec,
    pub not_after: Gauge,
    reloads: IntCounterVec,
}

impl WebhookMetrics {
    pub fn new() -> WebhookMetrics {
        let registry = Registry::new();
        let admissions = registry.register(metrics::counter_vec(
            "sidewatch_webhook_admissions_total",
            "Admission requests by outcome (injected, skipped, refused, error) and reason.",
            &["outcome", "reason"],
        ));
        let duration = registry.register(metrics::histogram_vec(
            "sidewatch_webhook_admission_duration_seconds",
            "Time from a request's arrival to its answer, by outcome.",
            &["outcome"],
            &BUCKETS,
        ));
        for outcome in Admitted::ALL {
            duration.with_label_values(&[outcome.as_str()]);
            for reason in outcome.reasons() {
                admissions.with_label_values(&[outcome.as_str(), reason]);
            }
        }
        let not_after = registry.register(metrics::float_gauge(
            "sidewatch_webhook_certificate_not_after_seconds",
            "When the served certificate expires (its notAfter), in seconds since the epoch.",
        ));
        let reloads = registry.register(metrics::counter_vec(
            "sidewatch_webhook_certificate_reloads_total",
            "New certificate and key pairs found on disk: loaded (success) or refused (failure).",
            &["result"],
        ));
        for result in RELOAD_RESULTS {
            reloads.with_label_values(&[result]);
        }
        WebhookMetrics {
            registry,
            admissions,
            duration,
            not_after,
            reloads,
        }
    }

    pub fn admitted(&self, outcome: Admitted, reason: &str, took: Duration) {
        let outcome = outcome.as_str();
        self.admissions.with_label_values(&[outcome, reason]).inc();
        self.duration
            .with_label_values(&[outcome])
            .observe(took.as_secs_f64());
    }

    pub fn reloaded(&self, ok: bool) {
        self.reloads
            .with_label_values(&[RELOAD_RESULTS[usize::from(ok)]])
            .inc();
    }
}

impl std::fmt::Debug for WebhookMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookMetrics")
    }
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`; a scraper needs a handful of
/// connections, the cap bounds what others can hold.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<WebhookMetrics>,
    shutdown: CancellationToken,
) {
    let options = Options::small("webhook metrics", Limit::Backlog(MAX_CONNECTIONS));
    http_server::serve(listener, options, shutdown, move |_peer| {
        let metrics = metrics.clone();
        hyper::service::service_fn(move |req: Request<_>| {
            let metrics = metrics.clone();
            async move { Ok::<_, Infallible>(answer(&req, &metrics)) }
        })
    })
    .await;
}

fn answer<B>(req: &Request<B>, metrics: &WebhookMetrics) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            Bytes::from(metrics.registry.encode()),
            "text/plain; version=0.0.4",
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, Bytes::from_static(b"ok\n"), "text/plain"),
        _ => (
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"not found\n"),
            "text/plain",
        ),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS_DOC: &str = include_str!("../../docs/metrics.md");

    /// Every outcome and reason is there at zero before any admission, each once.
    #[test]
    fn every_label_is_registered_at_zero() {
        let text = String::from_utf8(WebhookMetrics::new().registry.encode()).unwrap();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("sidewatch_webhook_admissions_total{"))
            .collect();
        let mut expected = 0;
        for outcome in Admitted::ALL {
            for reason in outcome.reasons() {
                let line = format!(
                    "sidewatch_webhook_admissions_total{{outcome=\"{}\",reason=\"{reason}\"}} 0",
                    outcome.as_str()
                );
                assert!(series.contains(&line.as_str()), "{line} missing: {text}");
                expected += 1;
            }
        }
        assert_eq!(series.len(), expected, "a reason listed twice: {series:?}");
    }

    /// docs/metrics.md's webhook table lists exactly what the webhook registers.
    #[test]
    fn the_webhook_table_lists_exactly_its_metrics() {
        let text = String::from_utf8(WebhookMetrics::new().registry.encode()).unwrap();
        let registered: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            // The registry's own two, in the table of the sidecar's.
            .filter(|name| !["sidewatch_build_info", "sidewatch_features"].contains(name))
            .collect();
        let section = METRICS_DOC
            .split("\n## The webhook's metrics")
            .nth(1)
            .expect("a webhook section in docs/metrics.md");
        let section = section.split("\n## ").next().unwrap();
        let documented: std::collections::BTreeSet<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        assert_eq!(documented, registered);
    }
}
