//! One test binary for metrics and alert rules in a real Prometheus (one binary per area: the shared parts build once).

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/fake_api.rs"]
mod fake_api;
#[path = "../common/pki.rs"]
mod pki;
#[path = "../common/prometheus.rs"]
mod prom;
#[path = "../common/webhook.rs"]
mod webhook;

mod alerts;
mod prometheus;
mod prometheus_node;
