//! Which process or cgroup the memory watcher reads now: re-resolved at every look, at once when
//! the app's main process exits (a pidfd) or the pod watch reports another app container.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{cgroup, MemoryWatcher, Plan, Target};
use crate::container::{self, Found};
use crate::liveness::Ended;
use crate::process;

impl MemoryWatcher {
    pub(super) fn resolve(&self, current: &Target) -> Target {
        let (pattern, cgroup, app_root, proc) = match &self.plan {
            Plan::Node(_) => return Target::Nothing,
            Plan::Cgroup(dir) => return Target::Cgroup(dir.clone()),
            Plan::Process {
                pattern,
                cgroup,
                app_root,
                proc,
            } => (pattern, *cgroup, *app_root, *proc),
        };
        let id = self.discovery.app().id;
        match current {
            // Another container ID is another container, whatever the old PID still holds.
            Target::Processes { main, container }
                if container::alive(*main) && (pattern.is_some() || *container == id) =>
            {
                return current.clone()
            }
            Target::Cgroup(dir) if dir.path.is_dir() => return current.clone(),
            _ => {}
        }
        let found = match pattern {
            Some(pattern) => process::find(pattern).map(|main| Found {
                main,
                container: None,
            }),
            None => self.discovery.find(),
        };
        let Some(Found { main, container }) = found else {
            return Target::Nothing;
        };
        if cgroup {
            if let Some(dir) = cgroup::of_process(main.pid) {
                return Target::Cgroup(dir);
            }
        }
        if app_root {
            if let Some(dir) = cgroup::in_root_of(main.pid) {
                return Target::Cgroup(dir);
            }
        }
        if proc {
            return Target::Processes {
                main: main.pid,
                container,
            };
        }
        Target::Nothing
    }

    /// The processes whose RSS is summed: the whole app container's when its ID is known (a
    /// container may hold several trees), else the main process and its descendants.
    pub(super) fn family(main: i32, container: Option<&str>) -> Vec<i32> {
        match container {
            Some(id) => container::processes(id).iter().map(|p| p.pid).collect(),
            None => process::family(main),
        }
    }

    /// The app's limit: `memory.limit` (the injector's downward-API env) when set, else the
    /// one the pod watch read from the pod spec.
    pub(super) fn limit(&self) -> Option<u64> {
        self.config
            .limit
            .map(|b| b.0)
            .or_else(|| self.discovery.app().limit)
    }
}

/// Wakes the watcher at the exit of the app's main process, so it looks for the app again at
/// once instead of at the next tick; the exit is logged. The exit is its normal end.
pub(super) async fn on_exit(main: i32, poll: Duration, wake: mpsc::Sender<()>) -> Ended {
    process::wait_for_exit(main, poll).await;
    tracing::warn!(
        pid = main,
        "memory: the app's main process exited; looking for the app again"
    );
    let _ = wake.send(()).await;
    Ended::Normally
}
