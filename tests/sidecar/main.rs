//! One test binary for the sidecar's binary from outside: its port, probes, drain, CLI, clock, page (one binary per area: the shared parts build once).

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/fake_api.rs"]
mod fake_api;
#[path = "../common/netns.rs"]
mod netns;
#[path = "../common/pki.rs"]
mod pki;

mod admin;
mod agent_check;
mod cli;
mod clock;
mod drain;
mod flapping;
mod grpc;
mod http_kinds;
mod lifecycle;
mod overload;
mod page;
mod parsers;
mod probes;
mod threads;
mod tls;
