//! The app's main process (`process.match`, with a shared process namespace): found by its command
//! line, its exit seen at once through a pidfd, its return seen by polling.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::sync::mpsc;

use crate::engine::bus::Input;
use crate::engine::{Observation, Signal};
use crate::metrics::{self, Registry};
use crate::reason::Reason;

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// A substring of the app's main process command line (needs a shared process namespace).
    #[serde(rename = "match")]
    pub pattern: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppProcess {
    pub pid: i32,
    pub command: String,
}

/// The oldest process whose command line contains `pattern`, other than sidewatch itself: with
/// workers forked from a master, the oldest is the master.
pub fn find(pattern: &str) -> Option<AppProcess> {
    let own = std::process::id() as i32;
    let mut best: Option<(u64, AppProcess)> = None;
    for process in procfs::process::all_processes().ok()?.flatten() {
        if process.pid == own {
            continue;
        }
        let Ok(cmdline) = process.cmdline() else {
            continue;
        };
        let command = cmdline.join(" ");
        if command.is_empty() || !command.contains(pattern) {
            continue;
        }
        let Ok(stat) = process.stat() else { continue };
        if best
            .as_ref()
            .is_none_or(|(start, _)| stat.starttime < *start)
        {
            best = Some((
                stat.starttime,
                AppProcess {
                    pid: process.pid,
                    command,
                },
            ));
        }
    }
    best.map(|(_, p)| p)
}

/// The app's main process in a pod that shares its process namespace, when no `process.match`
/// names it: the oldest process of the one container other than sidewatch's and the pod's pause
/// process (PID 1). Containers are told apart by their cgroup (`/proc/<pid>/cgroup`, readable by
/// all). None when no other container's process is visible, or more than one container's are:
/// which one is the app is then for the container ID (the pod watch) or `process.match` to say.
pub fn other_container() -> Result<AppProcess, OtherContainer> {
    let own = std::process::id() as i32;
    let cgroup_of = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok();
    let mine = cgroup_of(own).ok_or(OtherContainer::None)?;
    let pause = cgroup_of(1);
    let mut app: Option<(String, u64, AppProcess)> = None;
    let all = procfs::process::all_processes().map_err(|_| OtherContainer::None)?;
    for process in all.flatten() {
        if process.pid == own || process.pid == 1 {
            continue;
        }
        let Some(cgroup) = cgroup_of(process.pid) else {
            continue;
        };
        if cgroup == mine || Some(&cgroup) == pause.as_ref() {
            continue;
        }
        let (Ok(stat), Ok(cmdline)) = (process.stat(), process.cmdline()) else {
            continue;
        };
        if cmdline.is_empty() {
            continue; // a kernel thread, or a zombie
        }
        match &app {
            Some((seen, ..)) if *seen != cgroup => return Err(OtherContainer::Several),
            Some((_, start, _)) if *start <= stat.starttime => {}
            _ => {
                let command = cmdline.join(" ");
                app = Some((
                    cgroup,
                    stat.starttime,
                    AppProcess {
                        pid: process.pid,
                        command,
                    },
                ));
            }
        }
    }
    app.map(|(_, _, p)| p).ok_or(OtherContainer::None)
}

/// Why `other_container` found no app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtherContainer {
    None,
    Several,
}

/// True in a pod whose containers share one process namespace: PID 1 is the pod's pause process
/// (Kubernetes' `pause`, podman's `catatonit`), not sidewatch or its own container's init.
pub fn shared_namespace() -> bool {
    let own = std::process::id() as i32;
    let cmdline = std::fs::read("/proc/1/cmdline").unwrap_or_default();
    let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let name = first.rsplit(|b| *b == b'/').next().unwrap_or_default();
    own != 1 && matches!(name, b"pause" | b"catatonit")
}

/// `pid` and every process below it (workers), for summing their memory.
pub fn family(pid: i32) -> Vec<i32> {
    let Ok(all) = procfs::process::all_processes() else {
        return vec![pid];
    };
    let parents: Vec<(i32, i32)> = all
        .flatten()
        .filter_map(|p| p.stat().ok().map(|s| (s.pid, s.ppid)))
        .collect();
    let mut family = vec![pid];
    let mut i = 0;
    while i < family.len() {
        let parent = family[i];
        family.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    family
}

/// `sidewatch_process_exits_total`, with `process.match` only.
pub fn exits_metric(registry: &Registry) -> prometheus::IntCounter {
    registry.register(metrics::counter(
        "sidewatch_process_exits_total",
        "Exits of the app's main process (process.match). A rise means the app crashed or restarted.",
    ))
}

pub struct ProcessWatcher {
    pub pattern: String,
    pub poll: Duration,
    pub inputs: mpsc::Sender<Input>,
    pub exits: prometheus::IntCounter,
}

impl ProcessWatcher {
    pub async fn run(self) {
        let mut last: Option<AppProcess> = None;
        let mut ticker = tokio::time::interval(self.poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(app) = find(&self.pattern) else {
                let message = match &last {
                    Some(p) => format!(
                        "pid {} ({}) exited; no process matches {:?}",
                        p.pid, p.command, self.pattern
                    ),
                    None => format!("no process matches {:?}", self.pattern),
                };
                if !self.exited(message).await {
                    return;
                }
                continue;
            };
            if last.as_ref().is_some_and(|l| l.pid != app.pid) {
                tracing::info!(pid = app.pid, command = %app.command, "app process is back");
            } else if last.is_none() {
                tracing::info!(pid = app.pid, command = %app.command, pattern = %self.pattern, "watching the app process");
            }
            if !self.send(Observation::Success).await {
                return;
            }
            wait_for_exit(app.pid, self.poll).await;
            self.exits.inc();
            tracing::warn!(pid = app.pid, command = %app.command, "app process exited");
            if !self
                .exited(format!("pid {} ({}) exited", app.pid, app.command))
                .await
            {
                return;
            }
            last = Some(app);
        }
    }

    async fn exited(&self, message: String) -> bool {
        let reason = Reason::ProcessExited;
        self.send(Observation::Failure { reason, message }).await
    }

    async fn send(&self, observation: Observation) -> bool {
        let input = Input::Observe {
            signal: Signal::Process,
            observation,
        };
        self.inputs.send(input).await.is_ok()
    }
}

/// Resolves when `pid` exits: at once through a pidfd, else by polling `/proc/<pid>`.
pub(crate) async fn wait_for_exit(pid: i32, poll: Duration) {
    let pidfd = rustix::process::Pid::from_raw(pid)
        .ok_or(rustix::io::Errno::INVAL)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()))
        .map_err(std::io::Error::from)
        .and_then(|fd| crate::sys::async_fd(fd, Interest::READABLE));
    match pidfd {
        // A pidfd turns readable when the process exits.
        Ok(fd) => {
            let _ = fd.readable().await;
        }
        Err(e) => {
            tracing::debug!(pid, error = %e, "no pidfd; polling /proc for the exit");
            let path = format!("/proc/{pid}");
            while std::path::Path::new(&path).exists() {
                tokio::time::sleep(poll).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_child_by_its_command_line_and_its_family() {
        let marker = format!("sidewatch-find-test-{}", std::process::id());
        let mut child = std::process::Command::new("sh")
            .args(["-c", &format!("sleep 30 & wait # {marker}")])
            .spawn()
            .unwrap();
        // Until the child has exec'd, its command line is still ours.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let found = loop {
            if let Some(found) = find(&marker) {
                break found;
            }
            assert!(std::time::Instant::now() < deadline, "child never found");
            std::thread::sleep(Duration::from_millis(5)); // a poll with a deadline, not a spin
        };
        assert_eq!(found.pid, child.id() as i32);
        assert!(found.command.contains(&marker));
        // The shell's sleep child is part of the family once it has forked.
        while family(found.pid).len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "sleep child never appeared"
            );
            std::thread::sleep(Duration::from_millis(5)); // a poll with a deadline, not a spin
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // The shell's child may not have exec'd `sleep` yet, and still carries the marker.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while find(&marker).is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the marker never went away"
            );
            std::thread::sleep(Duration::from_millis(5)); // a poll with a deadline, not a spin
        }
    }
}
