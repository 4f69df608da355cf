//! One test binary for real containers (podman, runc) and the node agent (one binary per area: the shared parts build once).

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
#[path = "../common/pod.rs"]
mod pod;
#[path = "../common/webhook.rs"]
mod webhook;

mod containers;
mod inpod;
mod node_agent;
mod node_containers;
