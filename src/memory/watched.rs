//! The cgroup directory being watched: its identity, and the notifications armed on it.

use tokio::sync::mpsc;

use super::cgroup::CgroupDir;
use super::events;
use crate::liveness::Scope;

/// The notifications armed on the watched cgroup directory, and which directory that was. Each
/// group runs in a scope of its own, let go (a normal end, not a death) when what it watches
/// changes; a notification that ends by itself while its directory is still there is dead.
#[derive(Default)]
pub(super) struct Armed {
    /// The directory the notifications were armed on; `None` while there is none.
    pub(super) dir: Option<DirId>,
    /// The v1 limit the usage threshold was computed from.
    pub(super) limit: Option<u64>,
    /// The cgroup's notifications, or the wait for the app's main process's exit.
    pub(super) on: Option<Scope>,
    /// The v1 usage threshold, apart: it follows the limit.
    pub(super) threshold: Option<Scope>,
    /// The watch on the parent directory: it outlives the cgroup, to see it come back.
    pub(super) parent: Option<Scope>,
    /// A cgroup was watched before: any later one is new.
    pub(super) seen: bool,
    /// The parent's watch failed and that was logged (once: it is retried at every look).
    pub(super) parent_failed: bool,
}

impl Armed {
    /// The directory went away, and its notifications with it.
    pub(super) fn gone(&mut self) {
        for scope in self.on.take().into_iter().chain(self.threshold.take()) {
            scope.stop();
        }
        self.dir = None;
        self.limit = None;
    }

    /// Everything off: the target moved elsewhere.
    pub(super) fn disarm(&mut self) {
        self.gone();
        if let Some(parent) = self.parent.take() {
            parent.stop();
        }
    }

    /// Arms the parent's watch, in a child of `tasks`, unless it is already; true when it is
    /// armed now.
    pub(super) fn watch_parent(
        &mut self,
        dir: &CgroupDir,
        wake: &mpsc::Sender<()>,
        tasks: &Scope,
    ) -> bool {
        if self.parent.is_none() {
            match events::parent(&dir.path, wake.clone()) {
                Ok(task) => {
                    let scope = tasks.child();
                    scope.spawn("memory: inotify on the cgroup's parent directory", task);
                    self.parent = Some(scope);
                }
                Err(e) if !self.parent_failed => {
                    self.parent_failed = true;
                    tracing::info!(dir = %dir.path.display(), error = %e, "cannot watch the cgroup's parent; polling sees the cgroup go and come back")
                }
                Err(_) => {}
            }
        }
        self.parent.is_some()
    }
}

/// A directory's identity: a cgroup made again at the same path is another directory.
pub(super) type DirId = (u64, u64);

pub(super) enum Presence {
    Here(DirId),
    Gone,
    /// Cannot tell (a stat error other than not found): the reads will say what is wrong.
    Unknown,
}

pub(super) fn dir_id(path: &std::path::Path) -> Presence {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Presence::Here((m.dev(), m.ino())),
        Ok(_) => Presence::Gone,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Presence::Gone,
        Err(_) => Presence::Unknown,
    }
}
