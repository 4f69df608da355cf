//! The node agent's metrics: open streams, requests by outcome, lines sent.

use crate::metrics::{self, Registry};

/// How a request to the agent ended, the `outcome` label of `sidewatch_node_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Unauthenticated,
    Forbidden,
    NotFound,
    Unavailable,
    RefusedBusy,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Unauthenticated,
        Outcome::Forbidden,
        Outcome::NotFound,
        Outcome::Unavailable,
        Outcome::RefusedBusy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Forbidden => "forbidden",
            Outcome::NotFound => "not_found",
            Outcome::Unavailable => "unavailable",
            Outcome::RefusedBusy => "refused_busy",
        }
    }
}

#[derive(Clone)]
pub struct NodeMetrics {
    pub streams: prometheus::IntGauge,
    requests: prometheus::IntCounterVec,
    pub lines: prometheus::IntCounter,
}

impl NodeMetrics {
    pub fn new(registry: &Registry) -> Self {
        let requests = registry.register(metrics::counter_vec(
            "sidewatch_node_requests_total",
            "Memory stream requests by outcome. unauthenticated: a token not valid for the agent's \
             audience (a sidecar without the projected token); forbidden: a token asking for \
             another pod or a pod on another node; unavailable: the API server could not be asked \
             (check the agent's RBAC and the API server); refused_busy: the stream caps were hit.",
            &["outcome"],
        ));
        for outcome in Outcome::ALL {
            requests.with_label_values(&[outcome.label()]);
        }
        NodeMetrics {
            streams: registry.register(metrics::gauge(
                "sidewatch_node_streams",
                "Memory streams open to sidecars now (one per injected pod using source node).",
            )),
            requests,
            lines: registry.register(metrics::counter(
                "sidewatch_node_lines_total",
                "Lines (samples and unreadable looks) written to every stream so far.",
            )),
        }
    }

    pub fn request(&self, outcome: Outcome) {
        self.requests.with_label_values(&[outcome.label()]).inc();
    }
}
