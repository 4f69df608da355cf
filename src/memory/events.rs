//! Kernel notifications that make the memory watcher sample at once instead of at its next tick:
//! inotify on v2 `memory.events`, eventfd through v1 `cgroup.event_control` (OOM and a usage
//! threshold), and a PSI trigger on v2 `memory.pressure`; and inotify on the cgroup's parent,
//! which sees the cgroup removed and made again (a container restart) while the watches on its
//! own files go quiet. Each one that cannot be armed is logged, and polling covers for it.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;

use futures_util::StreamExt;
use tokio::io::Interest;
use tokio::sync::mpsc;

use super::cgroup::{self, CgroupDir, Version};
use crate::liveness::{Ended, Scope};

/// A notification's loop, spawned by the watcher in the scope of the cgroup it is armed on.
pub type Notifier = Pin<Box<dyn Future<Output = Ended> + Send>>;

/// A PSI trigger: wake when tasks stall on memory for 150 ms within 2 s. Unprivileged writers may
/// only use windows in multiples of 2 s. The decision is still made on `avg10`.
const PSI_TRIGGER: &[u8] = b"some 150000 2000000\0";

/// v1 signals OOM when the cgroup enters it, before the killer has picked a victim and counted
/// the kill: sample again shortly after (milliseconds from one look to the next).
const OOM_FOLLOW_UP: &[u64] = &[2, 2, 4, 8, 16, 32, 64, 128];

/// The name of the v1 usage threshold's notification, as start-up logs it.
pub const USAGE_THRESHOLD: &str = "eventfd memory.usage_in_bytes threshold";

/// Arms every notification the cgroup allows but the v1 usage threshold (see `usage_threshold`);
/// each sends `()` on `wake`, as a task of `scope` (stopped when the cgroup changes). Returns the
/// names of those armed.
pub fn arm(dir: &CgroupDir, wake: &mpsc::Sender<()>, scope: &Scope) -> Vec<String> {
    let mut names = Vec::new();
    for (name, task) in notifiers(dir, wake) {
        scope.spawn(format!("memory: {name}"), task);
        names.push(name);
    }
    names
}

/// As `arm`, the tasks left to the caller to spawn (the node agent's streams, under names that
/// tell the pod).
pub fn notifiers(dir: &CgroupDir, wake: &mpsc::Sender<()>) -> Vec<(String, Notifier)> {
    let mut armed = Vec::new();
    let mut arm_one = |name: &str, result: std::io::Result<Notifier>| match result {
        Ok(task) => armed.push((name.to_owned(), task)),
        Err(e) => {
            tracing::info!(event = name, error = %e, "kernel notification unavailable; polling covers it")
        }
    };
    match dir.version {
        Version::V2 => {
            arm_one(
                "inotify memory.events",
                inotify(&dir.path.join("memory.events"), wake.clone()),
            );
            // A pod-level memory.high or memory.max is met at the pod's cgroup: its own events
            // (high, max, oom) are told there, not in the container's file.
            for (ancestor, scope) in &dir.ancestors {
                arm_one(
                    &format!("inotify memory.events.local ({})", scope.describe()),
                    inotify(&ancestor.join("memory.events.local"), wake.clone()),
                );
            }
            if cgroup::on_cgroup2_fs(&dir.path) {
                arm_one(
                    "PSI trigger memory.pressure",
                    psi_trigger(&dir.path.join("memory.pressure"), wake.clone()),
                );
            }
        }
        Version::V1 => {
            if let Some(file) = dir
                .psi
                .as_deref()
                .filter(|f| f.parent().is_some_and(cgroup::on_cgroup2_fs))
            {
                arm_one(
                    "PSI trigger memory.pressure (v2 hierarchy)",
                    psi_trigger(file, wake.clone()),
                );
            }
            arm_one(
                "eventfd memory.oom_control",
                eventfd(
                    &dir.path,
                    "memory.oom_control",
                    None,
                    OOM_FOLLOW_UP,
                    wake.clone(),
                ),
            );
        }
    }
    armed
}

/// v1: wakes when usage crosses `bytes`, either way. Armed apart from the rest, since it follows
/// the limit, which can change under a running cgroup (a resize in place).
pub fn usage_threshold(
    dir: &Path,
    bytes: u64,
    wake: mpsc::Sender<()>,
) -> std::io::Result<Notifier> {
    eventfd(dir, "memory.usage_in_bytes", Some(bytes), &[], wake)
}

/// Wakes when the cgroup directory appears in, or leaves, its parent (mkdir, rmdir, rename). The
/// kernel's cgroup file systems report these on the parent, and nothing on the files inside.
pub fn parent(dir: &Path, wake: mpsc::Sender<()>) -> std::io::Result<Notifier> {
    use inotify::{Inotify, WatchMask};
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the cgroup directory has no parent",
        ));
    };
    let name = name.to_owned();
    let inotify = Inotify::init()?;
    let mask = WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ONLYDIR;
    inotify.watches().add(parent, mask)?;
    let mut events = inotify.into_event_stream([0u8; 1024])?;
    let watched = parent.to_owned();
    Ok(Box::pin(async move {
        while let Some(event) = events.next().await {
            let Ok(event) = event else { break };
            // Siblings come and go all day (other pods, other containers); a queue overflow
            // carries no name and may have hidden ours.
            if event.name.as_ref().is_some_and(|n| *n != name) {
                continue;
            }
            if wake.send(()).await.is_err() {
                return Ended::Normally; // the watcher is gone; its own end tells
            }
        }
        ended(&watched)
    }))
}

fn inotify(path: &Path, wake: mpsc::Sender<()>) -> std::io::Result<Notifier> {
    use inotify::{Inotify, WatchMask};
    let inotify = Inotify::init()?;
    inotify.watches().add(path, WatchMask::MODIFY)?;
    let mut events = inotify.into_event_stream([0u8; 1024])?;
    let watched = path.to_owned();
    Ok(Box::pin(async move {
        while let Some(event) = events.next().await {
            if event.is_err() {
                break;
            }
            if wake.send(()).await.is_err() {
                return Ended::Normally;
            }
        }
        ended(&watched)
    }))
}

/// v1 notifications: write "<eventfd> <target fd> [threshold]" to `cgroup.event_control`; the
/// kernel then signals the eventfd on OOM (or when usage crosses the threshold either way).
fn eventfd(
    dir: &Path,
    target: &str,
    threshold: Option<u64>,
    follow_up: &'static [u64],
    wake: mpsc::Sender<()>,
) -> std::io::Result<Notifier> {
    use rustix::event::{eventfd, EventfdFlags};
    let efd: OwnedFd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
    let target = File::open(dir.join(target))?;
    let line = match threshold {
        Some(t) => format!("{} {} {t}", efd.as_raw_fd(), target.as_raw_fd()),
        None => format!("{} {}", efd.as_raw_fd(), target.as_raw_fd()),
    };
    OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.event_control"))?
        .write_all(line.as_bytes())?;
    let efd = crate::sys::async_fd(efd, Interest::READABLE)?;
    let watched = dir.to_owned();
    Ok(Box::pin(async move {
        // The registration lives as long as the target file stays open.
        let _target = target;
        loop {
            let Ok(mut ready) = efd.readable().await else {
                break;
            };
            let mut count = [0u8; 8];
            match rustix::io::read(efd.get_ref().as_fd(), &mut count) {
                Ok(_) => {
                    if wake.send(()).await.is_err() {
                        return Ended::Normally;
                    }
                    for ms in follow_up {
                        tokio::time::sleep(std::time::Duration::from_millis(*ms)).await;
                        if wake.send(()).await.is_err() {
                            return Ended::Normally;
                        }
                    }
                }
                Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                Err(_) => break,
            }
        }
        ended(&watched)
    }))
}

fn psi_trigger(path: &Path, wake: mpsc::Sender<()>) -> std::io::Result<Notifier> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    file.write_all(PSI_TRIGGER)?;
    let fd = crate::sys::async_fd(file, Interest::PRIORITY)?;
    let watched = path.to_owned();
    Ok(Box::pin(async move {
        while let Ok(mut ready) = fd.ready(Interest::PRIORITY).await {
            ready.clear_ready();
            if wake.send(()).await.is_err() {
                return Ended::Normally;
            }
        }
        ended(&watched)
    }))
}

/// A notification that stopped by itself: normal when what it watched is gone (the cgroup was
/// removed: the watcher sees that and arms the next one), a death while it is still there.
fn ended(watched: &Path) -> Ended {
    if watched.exists() {
        Ended::Early
    } else {
        Ended::Normally
    }
}
