//! One test binary for the repository itself: docs and layout (one binary per area: the shared parts build once).

#[path = "../common/mod.rs"]
mod common;

mod docs;
mod layout;
