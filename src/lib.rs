//! sidewatch: a Kubernetes sidecar that watches the app beside it and takes the pod out of
//! rotation before clients see 502s. See README.md and DESIGN.md for the contract.
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod drain;
pub mod engine;
pub mod liveness;
pub mod logging;
pub mod metrics;
pub mod probe;
pub mod reason;
pub mod server;
pub mod tls;
pub mod watcher;
