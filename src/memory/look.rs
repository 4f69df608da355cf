//! The memory watcher's loop, step by step: wait for a tick or a kernel wake-up, take the last
//! look at a cgroup that is leaving, follow the app to where it is now, follow its cgroup
//! directory (gone, or made again), then sample and send.

use std::time::Instant;

use tokio::sync::mpsc;

use super::assess::Assessor;
use super::cgroup::{CgroupDir, Version};
use super::pace::Pace;
use super::read::{self, ReadError};
use super::watched::{dir_id, Armed, Presence};
use super::{resolve, MemoryWatcher, Plan, Sent, Target};
use crate::util::sleep_until;

/// What the loop carries from one look to the next.
struct Watching {
    assessor: Assessor,
    /// Every notification's way to wake the loop.
    wake: mpsc::Sender<()>,
    armed: Armed,
    target: Target,
    /// The first target was reported (logged, `sidewatch_memory_source`).
    reported: bool,
    last_error: Option<String>,
    sent: Sent,
    /// The open files of the current target: a new target's are not its.
    files: read::Files,
    pace: Pace,
    /// The wait before the next look, as the last one judged.
    next: std::time::Duration,
}

/// Whether the loop goes on: it ends when the engine is gone, which only happens at exit.
type Go = bool;

impl MemoryWatcher {
    pub async fn run(self) {
        if let Plan::Node(endpoint) = &self.plan {
            let endpoint = (**endpoint).clone();
            return self.run_node(endpoint).await;
        }
        let (wake, mut woken) = mpsc::channel(16);
        self.discovery.forward_changes(&self.tasks, wake.clone());
        let mut w = Watching {
            assessor: Assessor::new(self.config.thresholds()),
            wake,
            armed: Armed::default(),
            target: Target::Nothing,
            reported: false,
            last_error: None,
            sent: Sent::default(),
            files: read::Files::default(),
            pace: Pace::new(
                self.config.interval,
                self.config.idle_interval,
                self.config.ready_below.0,
                self.config.predict_oom_within,
            ),
            next: self.config.interval,
        };
        // The first look at once, as a wake-up's.
        let mut due = Instant::now();
        loop {
            // The assessor asks for an early look while an OOM kill settles.
            let wake_at = w.assessor.wake_at();
            tokio::select! {
                _ = sleep_until(Some(due)) => {}
                Some(()) = woken.recv() => {}
                _ = sleep_until(wake_at), if wake_at.is_some() => {}
            }
            w.next = self.config.interval;
            if !self.look(&mut w).await {
                return;
            }
            self.metrics.pace.set(w.next.as_secs_f64());
            due = crate::beat::after(w.next);
        }
    }

    /// One look, in the order the steps need: the last look reads files only the old target
    /// holds; the cgroup is followed before it is read, so a sample is never of a directory whose
    /// notifications are not armed.
    async fn look(&self, w: &mut Watching) -> Go {
        let leaving = self
            .last_look(&w.target, &mut w.files, &mut w.assessor, &mut w.sent)
            .await;
        if !leaving {
            return false;
        }
        self.follow_app(w);
        if let Target::Cgroup(dir) = w.target.clone() {
            match self.follow_cgroup(&dir, w) {
                Presence::Gone => return self.cgroup_gone(dir, w).await,
                Presence::Here(_) | Presence::Unknown => {}
            }
        }
        self.sample_and_send(w).await
    }

    /// The app may be elsewhere now (a restart, another container ID): the old target's
    /// notifications and files are let go, and the new one is told and counted.
    fn follow_app(&self, w: &mut Watching) {
        let next = self.resolve(&w.target);
        if next == w.target && w.reported {
            return;
        }
        w.armed.disarm();
        w.files = read::Files::default();
        if let Target::Processes { main, container } = &next {
            tracing::info!(
                pid = main,
                container,
                limit = self.limit(),
                "memory: watching the RSS of the app's processes"
            );
            let on = self.tasks.child();
            let exit = resolve::on_exit(*main, self.config.interval, w.wake.clone());
            on.spawn("memory: the app's main process", exit);
            w.armed.on = Some(on);
        }
        self.metrics.source(match &next {
            Target::Cgroup(dir) if dir.path.starts_with("/proc") => "app-root",
            Target::Cgroup(_) => "cgroup",
            Target::Processes { .. } => "proc",
            Target::Nothing => "none",
        });
        w.reported = true;
        w.target = next;
    }

    /// Arms the notifications on the cgroup directory when it is one not seen yet (the first,
    /// or one made again at the same path). Says whether it is there.
    fn follow_cgroup(&self, dir: &CgroupDir, w: &mut Watching) -> Presence {
        let presence = dir_id(&dir.path);
        if let Presence::Here(id) = presence {
            if w.armed.dir != Some(id) {
                // The files of the directory that was are not this one's.
                w.files = read::Files::default();
                self.arm(dir, id, &mut w.armed, &mut w.assessor, &w.wake);
            }
        }
        presence
    }

    /// Its notifications died with it (a removed PSI file may even poll ready for ever): they
    /// are let go, and the parent's watch and the ticker see it come back.
    async fn cgroup_gone(&self, dir: CgroupDir, w: &mut Watching) -> Go {
        w.armed.gone();
        w.armed.watch_parent(&dir, &w.wake, &self.tasks);
        let gone = ReadError::Gone { path: dir.path };
        self.read_failed(
            gone,
            &mut w.last_error,
            &mut w.target,
            &mut w.sent,
            &mut w.assessor,
        )
        .await
    }

    async fn sample_and_send(&self, w: &mut Watching) -> Go {
        let sample = match self.read_sample(&mut w.files, &w.target) {
            Ok(sample) => sample,
            Err(e) => {
                return self
                    .read_failed(
                        e,
                        &mut w.last_error,
                        &mut w.target,
                        &mut w.sent,
                        &mut w.assessor,
                    )
                    .await
            }
        };
        if w.last_error.take().is_some() {
            tracing::info!("memory: readable again");
        }
        if let Target::Cgroup(dir) = &w.target {
            if dir.version == Version::V1 && w.armed.limit != sample.limit {
                // A resize in place, or a limit set just after mkdir: the threshold is a share
                // of the limit.
                tracing::info!(limit = ?sample.limit, "memory: the cgroup's limit changed; the usage threshold follows");
                self.arm_threshold(dir, sample.limit, &mut w.armed, &w.wake);
            }
        }
        let assessment = w.assessor.assess(&sample);
        self.publish(&sample, &assessment);
        w.next = match w.target {
            Target::Nothing => w.pace.unread(),
            _ => w.pace.after(&sample, &assessment),
        };
        self.send_all(assessment, &mut w.sent).await
    }
}
