//! sidewatch: a Kubernetes sidecar that watches the app beside it and takes the pod out of
//! rotation before clients see 502s. See README.md and DESIGN.md for the contract.
#![deny(unsafe_code)] // allowed in `sys` alone

pub(crate) mod agent;
pub(crate) mod app;
pub(crate) mod beat;
pub mod cli;
pub mod config;
pub mod container;
pub(crate) mod demo;
pub(crate) mod drain;
pub mod engine;
pub(crate) mod http_server;
pub mod kubernetes;
pub(crate) mod lifecycle;
pub(crate) mod liveness;
pub(crate) mod logging;
pub mod memory;
pub mod metrics;
pub(crate) mod net;
pub(crate) mod node;
pub(crate) mod overload;
pub(crate) mod page;
pub mod probe;
pub mod process;
pub mod reason;
pub(crate) mod server;
#[allow(unsafe_code)]
mod sys;
pub mod tls;
pub(crate) mod traffic;
pub(crate) mod units;
pub(crate) mod util;
pub mod webhook;
