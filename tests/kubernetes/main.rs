//! One test binary for the Kubernetes surface: the fake API server, the webhook, the chart and manifests (one binary per area: the shared parts build once).

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/fake_api.rs"]
mod fake_api;
#[path = "../common/kubelet.rs"]
mod kubelet;
#[path = "../common/netns.rs"]
mod netns;
#[path = "../common/pki.rs"]
mod pki;
#[path = "../common/pod_security.rs"]
mod pod_security;
#[path = "../common/webhook.rs"]
mod webhook;

mod chart;
mod e2e;
mod injection;
mod kube;
mod manifests;
mod policy;
mod webhook_server;
