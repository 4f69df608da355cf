//! The cgroup directory being watched: its identity, and the notifications armed on it.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::cgroup::CgroupDir;
use super::events;

/// The notifications armed on the watched cgroup directory, and which directory that was.
#[derive(Default)]
pub(super) struct Armed {
    /// The directory the notifications were armed on; `None` while there is none.
    pub(super) dir: Option<DirId>,
    /// The v1 limit the usage threshold was computed from.
    pub(super) limit: Option<u64>,
    pub(super) tasks: Vec<JoinHandle<()>>,
    /// The v1 usage threshold, apart: it follows the limit.
    pub(super) threshold: Option<JoinHandle<()>>,
    /// The watch on the parent directory: it outlives the cgroup, to see it come back.
    pub(super) parent: Option<JoinHandle<()>>,
    /// A cgroup was watched before: any later one is new.
    pub(super) seen: bool,
    /// The parent's watch failed and that was logged (once: it is retried at every look).
    pub(super) parent_failed: bool,
}

impl Armed {
    /// The directory went away, and its notifications with it.
    pub(super) fn gone(&mut self) {
        for task in self.tasks.drain(..).chain(self.threshold.take()) {
            task.abort();
        }
        self.dir = None;
        self.limit = None;
    }

    /// Everything off: the target moved elsewhere.
    pub(super) fn disarm(&mut self) {
        self.gone();
        if let Some(parent) = self.parent.take() {
            parent.abort();
        }
    }

    /// Arms the parent's watch unless it is already; true when it is armed now.
    pub(super) fn watch_parent(&mut self, dir: &CgroupDir, wake: &mpsc::Sender<()>) -> bool {
        if self.parent.is_none() {
            match events::parent(&dir.path, wake.clone()) {
                Ok(task) => self.parent = Some(task),
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
