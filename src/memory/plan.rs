//! Which memory source to read, chosen once at start-up.

use super::cgroup::{self, CgroupDir};
use super::config::{CgroupSetting, MemoryConfig, MemorySource};
use crate::process;

/// An explicit memory setting that cannot be met: sidewatch refuses to start rather than run
/// without the signals it was asked for.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("memory.source is {0} but memory.cgroup names a directory: choose one")]
    SourceAndCgroup(&'static str),
    #[error("{} is not a memory cgroup: it has neither memory.current (v2) nor memory.usage_in_bytes (v1)", .0.display())]
    NotACgroup(std::path::PathBuf),
    #[error("memory.source is proc without process.match, which finds the app container's processes in a shared process namespace, but this pod shares none (PID 1 is not the pod's pause process): set shareProcessNamespace: true, or process.match")]
    ProcWithoutSharedNamespace,
    #[error("memory.source is cgroup but no pod cgroup is visible: set memory.cgroup (--cgroup) or process.match")]
    NoPodCgroup,
    #[error(transparent)]
    Node(#[from] super::node::NodeSetupError),
}

/// How the watcher finds the memory to read.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// A cgroup directory fixed at start-up (`--cgroup PATH`, or the pod's cgroup).
    Cgroup(CgroupDir),
    /// Follow the app's process (matched by `process.match`, or in a shared process namespace
    /// the app container's by its ID from the pod watch, or the one other container's), through the first way allowed that works: its cgroup as this
    /// container's mounts show it (a hostPath of the node's tree), its cgroup as its own
    /// container sees it (through `/proc/<pid>/root`), or the RSS of it and its children.
    Process {
        pattern: Option<String>,
        cgroup: bool,
        app_root: bool,
        proc: bool,
    },
    /// The node agent's stream of this pod's memory.
    Node(Box<super::node::Endpoint>),
}

/// Chooses the memory source at start-up, or says why there is none. An impossible explicit
/// choice (a path that is no memory cgroup, `proc` without `process.match` nor a shared process
/// namespace) is an error. `app_container` (`kubernetes.app_container`) is what the node source
/// asks its agent for.
pub fn plan(
    memory: &MemoryConfig,
    pattern: Option<&str>,
    app_container: Option<&str>,
) -> Result<(Option<Plan>, String), PlanError> {
    use MemorySource::*;
    let limit = memory.limit.map(|b| b.0);
    let process = |pattern: Option<&str>, source: MemorySource| Plan::Process {
        pattern: pattern.map(str::to_owned),
        cgroup: matches!(source, Auto | Cgroup),
        app_root: matches!(source, Auto | AppRoot),
        proc: matches!(source, Auto | Proc),
    };
    match (memory.source, &memory.cgroup, pattern) {
        (None, _, _) => Ok((Option::None, "memory.source is none".into())),
        (_, CgroupSetting::None, _) => Ok((Option::None, "memory.cgroup is none".into())),
        (Node, CgroupSetting::Path(_), _) => Err(PlanError::SourceAndCgroup("node")),
        (Node, CgroupSetting::Auto, _) => {
            let endpoint = super::node::Endpoint::new(memory, app_container, |k| {
                std::env::var(k).ok()
            })?;
            let why = format!("the node agent's stream, {}", endpoint.describe());
            Ok((Some(Plan::Node(Box::new(endpoint))), why))
        }
        (Proc | AppRoot, CgroupSetting::Path(_), _) => Err(PlanError::SourceAndCgroup(
            if memory.source == Proc { "proc" } else { "app-root" },
        )),
        (Auto | Cgroup, CgroupSetting::Path(path), _) => {
            let dir =
                cgroup::explicit(path).ok_or_else(|| PlanError::NotACgroup(path.clone()))?;
            let why = format!("{} {} given by memory.cgroup", dir.version, dir.path.display());
            Ok((Some(Plan::Cgroup(dir)), why))
        }
        (source, CgroupSetting::Auto, Some(pattern)) => {
            let why = match source {
                Cgroup => "the cgroup of the process matching process.match",
                AppRoot => "the cgroup of the process matching process.match, through its container's root",
                Proc => "the RSS of the process matching process.match (shared process namespace)",
                _ => "the cgroup of the process matching process.match when reachable, through its container's root when not, else its RSS",
            };
            let mut why = format!("{why} ({pattern:?})");
            if matches!(source, Auto | Proc) && limit.is_none() {
                why.push_str("; without memory.limit the RSS source compares with the limit in the pod spec, when the pod watch is on");
            }
            Ok((Some(process(Some(pattern), source)), why))
        }
        (Proc, CgroupSetting::Auto, Option::None) if process::shared_namespace() => Ok((
            Some(process(Option::None, Proc)),
            "the RSS of the app container's processes, found by its container ID from the pod \
             status, or as the only other container's (shared process namespace)"
                .into(),
        )),
        (Proc, CgroupSetting::Auto, Option::None) => Err(PlanError::ProcWithoutSharedNamespace),
        (AppRoot, CgroupSetting::Auto, Option::None) => Ok((
            Some(process(Option::None, AppRoot)),
            "the cgroup of the other container's process, through its container's root \
             (shared process namespace)"
                .into(),
        )),
        (source, CgroupSetting::Auto, Option::None) => match cgroup::of_own_pod() {
            Some(dir) => {
                let why = format!("{} {} (the pod's cgroup, parent of sidewatch's own)", dir.version, dir.path.display());
                Ok((Some(Plan::Cgroup(dir)), why))
            }
            Option::None if source == Cgroup => Err(PlanError::NoPodCgroup),
            Option::None if process::shared_namespace() => Ok((
                Some(process(Option::None, AppRoot)),
                "the cgroup of the other container's process, through its container's root \
                 (the pod shares its process namespace)"
                    .into(),
            )),
            Option::None => Ok((Option::None, "no pod cgroup is visible, the pod shares no process namespace and process.match is not set".into())),
        },
    }
}
