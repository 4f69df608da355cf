//! sidewatch: a Kubernetes sidecar that watches the app beside it and takes the pod out of
//! rotation before clients see 502s. See README.md and DESIGN.md for the contract.
#![deny(unsafe_code)] // allowed in `sys` alone

pub mod app;
pub mod cli;
pub mod config;
pub mod container;
pub mod demo;
pub mod drain;
pub mod engine;
pub mod http_server;
pub mod kubernetes;
pub mod lifecycle;
pub mod liveness;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod node;
pub mod overload;
pub mod page;
pub mod probe;
pub mod process;
pub mod reason;
pub mod server;
#[allow(unsafe_code)]
mod sys;
pub mod tls;
pub mod traffic;
pub mod units;
pub mod util;
pub mod webhook;
