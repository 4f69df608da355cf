//! The memory watcher: samples the app's memory (a cgroup, or its processes' RSS) every
//! `memory.interval` and at once on kernel events, and turns each sample into the signals
//! `memory:usage`, `memory:pressure`, `memory:trend` and `memory:oom`.

pub mod assess;
pub mod cgroup;
pub mod config;
pub mod events;
mod failed;
pub mod node;
mod plan;
pub mod read;
mod resolve;
pub mod sample;
mod series;
mod watched;
pub mod wire;

pub use plan::{plan, Plan, PlanError};
pub use series::MemoryMetrics;
use series::PREDICTION_HORIZON;
use watched::{dir_id, Armed, DirId, Presence};

use tokio::sync::mpsc;

use crate::engine::bus::{Input, Notice};
use crate::engine::{Memory, Observation, Signal};
use crate::util::sleep_until;
use assess::{Assessment, Assessor};
use cgroup::{CgroupDir, Version};
use config::MemoryConfig;
use read::ReadError;
use sample::Sample;

pub struct MemoryWatcher {
    pub plan: Plan,
    pub config: MemoryConfig,
    pub inputs: mpsc::Sender<Input>,
    pub metrics: MemoryMetrics,
    /// Where OOM kills go to become Kubernetes Events (the kubelet posts none for them).
    pub notices: Option<mpsc::Sender<Notice>>,
    /// The app container's ID and limit from the pod watch, to find its processes.
    pub discovery: crate::container::Discovery,
}

/// Where the current samples come from; re-resolved when the app process changes.
#[derive(Clone, Debug, PartialEq)]
enum Target {
    Cgroup(CgroupDir),
    Processes {
        main: i32,
        container: Option<String>,
    },
    Nothing,
}

impl MemoryWatcher {
    pub async fn run(self) {
        if let Plan::Node(endpoint) = &self.plan {
            let endpoint = (**endpoint).clone();
            return self.run_node(endpoint).await;
        }
        let mut assessor = Assessor::new(self.config.thresholds());
        let (wake_tx, mut wake_rx) = mpsc::channel(16);
        self.discovery.forward_changes(wake_tx.clone());
        let mut armed = Armed::default();
        let mut target = Target::Nothing;
        let mut reported = false;
        let mut last_error: Option<String> = None;
        let mut sent = Sent::default();
        let mut files = read::Files::default();
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake_at = assessor.wake_at();
            tokio::select! {
                _ = ticker.tick() => {}
                Some(()) = wake_rx.recv() => {}
                _ = sleep_until(wake_at), if wake_at.is_some() => {}
            }
            if !self
                .last_look(&target, &mut files, &mut assessor, &mut sent)
                .await
            {
                return;
            }
            let next = self.resolve(&target);
            if next != target || !reported {
                armed.disarm();
                files = read::Files::default();
                if let Target::Processes { main, container } = &next {
                    tracing::info!(
                        pid = main,
                        container,
                        limit = self.limit(),
                        "memory: watching the RSS of the app's processes"
                    );
                    let poll = self.config.interval;
                    armed
                        .tasks
                        .push(resolve::on_exit(*main, poll, wake_tx.clone()));
                }
                self.metrics.source(match &next {
                    Target::Cgroup(dir) if dir.path.starts_with("/proc") => "app-root",
                    Target::Cgroup(_) => "cgroup",
                    Target::Processes { .. } => "proc",
                    Target::Nothing => "none",
                });
                reported = true;
                target = next;
            }
            if let Target::Cgroup(dir) = target.clone() {
                let fresh = match dir_id(&dir.path) {
                    Presence::Gone => {
                        // Its notifications died with it (a removed PSI file may even poll ready
                        // for ever); the parent's watch and the ticker see it come back.
                        armed.gone();
                        armed.watch_parent(&dir, &wake_tx);
                        let gone = ReadError::Gone { path: dir.path };
                        if !self
                            .read_failed(
                                gone,
                                &mut last_error,
                                &mut target,
                                &mut sent,
                                &mut assessor,
                            )
                            .await
                        {
                            return;
                        }
                        continue;
                    }
                    Presence::Here(id) => (armed.dir != Some(id)).then_some(id),
                    Presence::Unknown => None,
                };
                if let Some(id) = fresh {
                    // The files of the directory that was are not this one's.
                    files = read::Files::default();
                    self.arm(&dir, id, &mut armed, &mut assessor, &wake_tx);
                }
            }
            let ok = match self.read_sample(&mut files, &target) {
                Ok(sample) => {
                    if last_error.take().is_some() {
                        tracing::info!("memory: readable again");
                    }
                    if let Target::Cgroup(dir) = &target {
                        if dir.version == Version::V1 && armed.limit != sample.limit {
                            // A resize in place, or a limit set just after mkdir: the threshold
                            // is a share of the limit.
                            tracing::info!(limit = ?sample.limit, "memory: the cgroup's limit changed; the usage threshold follows");
                            self.arm_threshold(dir, sample.limit, &mut armed, &wake_tx);
                        }
                    }
                    let assessment = assessor.assess(&sample);
                    self.publish(&sample, &assessment);
                    self.send_all(assessment, &mut sent).await
                }
                Err(e) => {
                    self.read_failed(e, &mut last_error, &mut target, &mut sent, &mut assessor)
                        .await
                }
            };
            if !ok {
                return;
            }
        }
    }

    fn read_sample(&self, files: &mut read::Files, target: &Target) -> Result<Sample, ReadError> {
        match target {
            Target::Cgroup(dir) => match dir.version {
                Version::V1 => {
                    sample::sample_v1(files, &dir.path, &dir.ancestors, dir.psi.as_deref())
                }
                Version::V2 => sample::sample_v2(files, &dir.path, &dir.ancestors),
            },
            Target::Processes { main, container } => {
                let family = Self::family(*main, container.as_deref());
                sample::sample_proc(&family, self.limit())
            }
            Target::Nothing => Ok(Sample::empty(std::time::Instant::now())),
        }
    }

    /// Seen through `/proc/<pid>/root`, the app's cgroup leaves view with its last process: at
    /// an OOM kill of a one-process container, before the kill can be read by path. The files
    /// still open tell what happened last. False when the engine is gone.
    async fn last_look(
        &self,
        target: &Target,
        files: &mut read::Files,
        assessor: &mut Assessor,
        sent: &mut Sent,
    ) -> bool {
        // Only a path through another process's root can vanish while its cgroup lives (a
        // removed cgroup's open files fail to read too): no extra look at other paths.
        let Target::Cgroup(dir) = target else {
            return true;
        };
        if !dir.path.starts_with("/proc") || !files.holds_any() {
            return true;
        }
        if !matches!(dir_id(&dir.path), Presence::Gone) {
            return true;
        }
        let Ok(sample) = self.read_sample(files, target) else {
            return true;
        };
        let assessment = assessor.assess(&sample);
        self.publish(&sample, &assessment);
        self.send_all(assessment, sent).await
    }

    /// Arms the kernel notifications on the cgroup directory `id`, a new one unless it is the
    /// first the watcher sees.
    fn arm(
        &self,
        dir: &CgroupDir,
        id: DirId,
        armed: &mut Armed,
        assessor: &mut Assessor,
        wake: &mpsc::Sender<()>,
    ) {
        let (mut names, tasks) = events::arm(dir, wake);
        armed.gone();
        armed.tasks = tasks;
        if dir.version == Version::V1 {
            let limit = self.limit_v1(dir);
            if self.arm_threshold(dir, limit, armed, wake) {
                names.push(events::USAGE_THRESHOLD.to_owned());
            }
        }
        if armed.watch_parent(dir, wake) {
            names.push("inotify on the parent directory".to_owned());
        }
        if armed.seen {
            assessor.new_cgroup();
            tracing::info!(dir = %dir.path.display(), events = ?names, "memory: a new cgroup directory is here (a container restart?): watching it from zero");
        } else {
            let psi = match (dir.version, &dir.psi) {
                (Version::V1, None) => "off: cgroup v1 has no per-cgroup PSI".to_owned(),
                (Version::V1, Some(file)) => {
                    format!("on, from the v2 hierarchy: {}", file.display())
                }
                (Version::V2, _) => "on".to_owned(),
            };
            tracing::info!(dir = %dir.path.display(), version = %dir.version, events = ?names, psi, interval = ?self.config.interval, "memory: watching cgroup");
        }
        armed.seen = true;
        armed.dir = Some(id);
    }

    /// v1 can signal when usage crosses a threshold: armed where the working set would turn us
    /// unready if there were no page cache, so a fast climb wakes us between ticks. The new one
    /// is armed before the old one goes. True when one is armed.
    fn arm_threshold(
        &self,
        dir: &CgroupDir,
        limit: Option<u64>,
        armed: &mut Armed,
        wake: &mpsc::Sender<()>,
    ) -> bool {
        armed.limit = limit;
        let task = limit.and_then(|limit| {
            let bytes = (limit as f64 * self.config.unready_above.0) as u64;
            events::usage_threshold(&dir.path, bytes, wake.clone())
                .inspect_err(|e| tracing::info!(event = events::USAGE_THRESHOLD, error = %e, "kernel notification unavailable; polling covers it"))
                .ok()
        });
        let armed_now = task.is_some();
        if let Some(old) = std::mem::replace(&mut armed.threshold, task) {
            old.abort();
        }
        armed_now
    }

    fn limit_v1(&self, dir: &CgroupDir) -> Option<u64> {
        let path = dir.path.join("memory.limit_in_bytes");
        read::parse_limit(&read::read_file(&path).ok()?, &path).ok()?
    }

    fn publish(&self, s: &Sample, a: &Assessment) {
        let m = &self.metrics;
        m.usage.set(s.working_set as i64);
        m.limit.set(s.limit.unwrap_or(0) as i64);
        m.pressure(s.pressure);
        let predicted = a.predicted_oom.filter(|p| *p <= PREDICTION_HORIZON);
        m.predicted.set(predicted.unwrap_or(f64::INFINITY));
        m.high_events.inc_by(a.new_high_events);
        self.count_ooms(a, s.limit, s.bound);
    }

    fn count_ooms(&self, a: &Assessment, limit: Option<u64>, bound: Option<sample::Bound>) {
        let m = &self.metrics;
        m.oom_kills.inc_by(a.new_oom_kills);
        let Some(settled) = a.settled else { return };
        m.oom_group_kills.inc_by(settled.group_kills);
        m.oom_killed_processes.inc_by(settled.processes);
        let message = settled.describe(limit, bound);
        tracing::warn!(
            kills = settled.kills,
            group_kills = settled.group_kills,
            processes = settled.processes,
            "{message}"
        );
        if let Some(notices) = &self.notices {
            // A full queue means Events are backed up anyway; the metrics have the counts.
            let _ = notices.try_send(Notice::OomKill { message });
        }
    }

    /// Sends the signals whose observation differs from the one sent last: they flip on one
    /// observation, so a repeat changes nothing but costs the engine a look, four times a second.
    async fn send_all(&self, a: Assessment, sent: &mut Sent) -> bool {
        let mut observations = [
            (Memory::Usage, a.usage),
            (Memory::Pressure, a.pressure.unwrap_or(Observation::Success)),
            (Memory::Trend, a.trend),
            (Memory::Oom, a.oom.unwrap_or(Observation::Success)),
        ];
        // Failures first: when one signal recovers in the sample that another fails (memory_high
        // ends as the OOM kill frees memory), the engine never sees a moment with neither, which
        // would be a false "ready" between two reasons (a transition, a gate patch, an Event).
        observations.sort_by_key(|(_, o)| matches!(o, Observation::Success));
        for (signal, observation) in observations {
            let last = &mut sent[signal as usize];
            if last.as_ref() == Some(&observation) {
                continue;
            }
            *last = Some(observation.clone());
            let input = Input::Observe {
                signal: Signal::Memory(signal),
                observation,
            };
            if self.inputs.send(input).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// The last observation sent per memory signal, by `Memory as usize`.
type Sent = [Option<Observation>; 4];
