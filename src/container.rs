//! The app container as the pod watch reports it (its runtime ID, its memory limit), and its
//! processes in a shared process namespace, told apart by the cgroup that names that ID.

use std::sync::Mutex;

use tokio::sync::{mpsc, watch};

use crate::liveness::{Ended, Scope};
use crate::process::{self, AppProcess, OtherContainer};

/// What the pod's status and spec say of the app container; `Default` until they have been read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppContainer {
    /// `containerID` without its scheme (`containerd://`, `cri-o://`, `docker://`); new at each
    /// restart, `None` while the kubelet has not reported one.
    pub id: Option<String>,
    /// The container's `resources.limits.memory`, else the pod-level one (Kubernetes 1.34+).
    pub limit: Option<u64>,
}

/// The runtime's ID in a `containerID` (`containerd://ID`): `None` when empty or malformed.
pub fn strip_scheme(container_id: &str) -> Option<&str> {
    let id = container_id
        .split_once("://")
        .map_or(container_id, |(_, id)| id);
    let valid = !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric());
    valid.then_some(id)
}

/// True when a `/proc/<pid>/cgroup` text puts the process in the container `id`: a path component
/// that is the ID itself (cgroupfs drivers: `…/pod<uid>/ID`), or ends in `-ID` or `:ID` once a
/// `.scope` is dropped (`cri-containerd-ID.scope`, `crio-ID.scope`, `docker-ID.scope`,
/// `libpod-ID.scope`, v1 systemd `…slice:cri-containerd:ID`). Whole components only: a prefix of
/// the ID, or an ID that is a prefix of another, is not a match.
pub fn names_container(cgroup: &str, id: &str) -> bool {
    cgroup
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .map(|c| c.strip_suffix(".scope").unwrap_or(c))
        .any(|c| {
            c.strip_suffix(id)
                .is_some_and(|rest| rest.is_empty() || rest.ends_with(['-', ':']))
        })
}

/// The processes of the container `id` visible here, oldest first (the container's main process,
/// then the rest: all of its trees, not only the main one's descendants). Zombies and kernel
/// threads hold no memory and are left out; so is sidewatch.
pub fn processes(id: &str) -> Vec<AppProcess> {
    let own = std::process::id() as i32;
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let mut found: Vec<(u64, AppProcess)> = all
        .flatten()
        .filter(|p| p.pid != own)
        .filter_map(|p| {
            let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", p.pid)).ok()?;
            if !names_container(&cgroup, id) {
                return None;
            }
            let (stat, cmdline) = (p.stat().ok()?, p.cmdline().ok()?);
            if cmdline.is_empty() || matches!(stat.state, 'Z' | 'X') {
                return None;
            }
            let command = cmdline.join(" ");
            Some((
                stat.starttime,
                AppProcess {
                    pid: p.pid,
                    command,
                },
            ))
        })
        .collect();
    found.sort_by_key(|(start, p)| (*start, p.pid));
    found.into_iter().map(|(_, p)| p).collect()
}

/// A process that has not exited: a zombie's `/proc/<pid>` stays until its parent reaps it,
/// and a pidfd wakes the watcher before that.
pub fn alive(pid: i32) -> bool {
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .is_ok_and(|s| !matches!(s.state, 'Z' | 'X'))
}

/// How the memory watcher finds the app's process without `process.match`: by the app
/// container's ID from the pod watch, else (kubernetes off, or no ID reported yet) as the one
/// other container's oldest process. Why it finds none is logged once per reason.
pub struct Discovery {
    app: Option<watch::Receiver<AppContainer>>,
    said: Mutex<Option<String>>,
}

/// The app's main process, and the container ID it was found by.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    pub main: AppProcess,
    pub container: Option<String>,
}

impl Discovery {
    pub fn new(app: Option<watch::Receiver<AppContainer>>) -> Self {
        Discovery {
            app,
            said: Mutex::new(None),
        }
    }

    /// The app container as last reported (all `None` without the pod watch).
    pub fn app(&self) -> AppContainer {
        self.app
            .as_ref()
            .map(|rx| rx.borrow().clone())
            .unwrap_or_default()
    }

    /// Wakes the watcher at every change of the app container (a restart brings a new ID), so
    /// the target follows at once rather than at the next tick.
    /// It ends normally when the pod watch or the watcher is gone: their own ends tell.
    pub fn forward_changes(&self, tasks: &Scope, wake: mpsc::Sender<()>) {
        let Some(mut rx) = self.app.clone() else {
            return;
        };
        tasks.spawn("memory: the app container's changes", async move {
            while rx.changed().await.is_ok() {
                if wake.send(()).await.is_err() {
                    break;
                }
            }
            Ended::Normally
        });
    }

    pub fn find(&self) -> Option<Found> {
        let id = self.app().id;
        let found = match &id {
            Some(id) => processes(id)
                .into_iter()
                .next()
                .ok_or_else(|| format!("no process of the app container {id} is visible (yet)")),
            None => process::other_container().map_err(|e| match e {
                OtherContainer::Several if self.app.is_some() => {
                    "several other containers' processes are visible and the pod status names \
                     no app container ID yet"
                        .to_owned()
                }
                OtherContainer::Several => {
                    "several other containers' processes are visible and, without the pod watch \
                     (kubernetes off), none says which is the app: set process.match"
                        .to_owned()
                }
                OtherContainer::None => "no other container's process is visible".to_owned(),
            }),
        };
        match found {
            Ok(main) => {
                self.say(None);
                Some(Found {
                    main,
                    container: id,
                })
            }
            Err(why) => {
                self.say(Some(why));
                None
            }
        }
    }

    fn say(&self, why: Option<String>) {
        let Ok(mut said) = self.said.lock() else {
            return;
        };
        if *said != why {
            if let Some(why) = &why {
                tracing::info!(why = %why, "memory: no app process to watch");
            }
            *said = why;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f9a0c1e2b3d4c5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6";

    #[test]
    fn container_ids_lose_their_scheme() {
        assert_eq!(strip_scheme(&format!("containerd://{ID}")), Some(ID));
        assert_eq!(strip_scheme(&format!("cri-o://{ID}")), Some(ID));
        assert_eq!(strip_scheme(&format!("docker://{ID}")), Some(ID));
        assert_eq!(strip_scheme(ID), Some(ID));
        assert_eq!(strip_scheme("containerd://"), None);
        assert_eq!(strip_scheme(""), None);
        assert_eq!(strip_scheme("containerd://../etc"), None);
    }

    #[test]
    fn every_runtime_and_driver_layout_names_the_container() {
        let layouts = [
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podab12.slice/cri-containerd-{ID}.scope"),
            format!("0::/kubepods.slice/kubepods-podab12.slice/crio-{ID}.scope"),
            format!("0::/system.slice/docker-{ID}.scope"),
            format!("0::/machine.slice/libpod-{ID}.scope/container"),
            format!("0::/kubepods/burstable/podab12/{ID}"),
            // v1: several hierarchies, and the systemd driver's colon form.
            format!("12:memory:/kubepods/besteffort/podab12/{ID}\n1:name=systemd:/kubepods/besteffort/podab12/{ID}"),
            format!("4:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podab12.slice:cri-containerd:{ID}"),
            // Relative to the reader's own cgroup namespace.
            format!("0::/../cri-containerd-{ID}.scope"),
        ];
        for text in &layouts {
            assert!(names_container(text, ID), "{text}");
        }
    }

    #[test]
    fn only_whole_components_match() {
        let other = format!("0::/kubepods/burstable/podab12/x{ID}");
        assert!(!names_container(&other, ID));
        let longer = format!("0::/kubepods/burstable/podab12/{ID}0");
        assert!(!names_container(&longer, ID));
        let prefix = format!("0::/kubepods/burstable/podab12/{}", &ID[..12]);
        assert!(!names_container(&prefix, ID));
        assert!(!names_container("0::/", ID));
        assert!(!names_container("garbage without colons", ID));
    }

    #[test]
    fn a_containers_processes_are_found_by_its_cgroup_oldest_first_and_zombies_left_out() {
        let v1 = std::path::Path::new("/sys/fs/cgroup/memory");
        if !rustix::process::geteuid().is_root() || !v1.join("memory.limit_in_bytes").exists() {
            eprintln!("SKIPPED: needs root and the cgroup v1 memory controller");
            return;
        }
        let id = format!("{:064x}", u128::from(std::process::id()) << 64 | 0x5eed);
        let parent = v1.join(format!("sidewatch-unit-{}", std::process::id()));
        let dir = parent.join(format!("libpod-{id}.scope"));
        std::fs::create_dir_all(&dir).unwrap();
        let spawn = || {
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap()
        };
        let (mut first, mut second, mut outside) = (spawn(), spawn(), spawn());
        for child in [&first, &second] {
            std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        }
        let pids = |id: &str| processes(id).iter().map(|p| p.pid).collect::<Vec<_>>();
        let (a, b) = (first.id() as i32, second.id() as i32);
        // Started in that order, within one clock tick maybe: the PID breaks the tie.
        assert_eq!(pids(&id), [a, b]);
        assert!(pids(&id[..32]).is_empty(), "a part of the ID names nothing");
        first.kill().unwrap();
        // Not reaped yet: a zombie, which holds no memory and is no main process.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while alive(a) {
            assert!(
                std::time::Instant::now() < deadline,
                "the kill never landed"
            );
            std::thread::sleep(std::time::Duration::from_millis(5)); // a poll with a deadline
        }
        assert!(std::path::Path::new(&format!("/proc/{a}")).exists());
        assert_eq!(pids(&id), [b]);
        for child in [&mut first, &mut second, &mut outside] {
            let _ = child.kill();
            let _ = child.wait();
        }
        std::fs::remove_dir(&dir).unwrap();
        std::fs::remove_dir(&parent).unwrap();
    }
}
