//! One test binary for the sidecar under attack and over time (one binary per area: the shared parts build once).

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/pki.rs"]
mod pki;

mod hostile;
mod soak;
