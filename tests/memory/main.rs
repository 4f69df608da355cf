//! One test binary for memory sources against real cgroups and processes (one binary per area: the shared parts build once).

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/fake_agent.rs"]
mod fake_agent;

mod memory_app_root;
mod memory_node;
mod memory_proc;
mod memory_v1_oom;
mod memory_v2;
