//! The memory watcher: samples the app's memory (a cgroup, or its processes' RSS) every
//! `memory.interval` and at once on kernel events, and turns each sample into the signals
//! `memory:usage`, `memory:pressure`, `memory:trend` and `memory:oom`.

pub mod assess;
pub mod cgroup;
pub mod config;
pub mod events;
mod failed;
mod look;
pub mod node;
mod pace;
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
use crate::liveness::Scope;
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
    /// Where its notifications run, each cgroup's in a scope of its own (see `Armed`).
    pub tasks: Scope,
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
        armed.gone();
        let on = self.tasks.child();
        let mut names = events::arm(dir, wake, &on);
        armed.on = Some(on);
        if dir.version == Version::V1 {
            let limit = self.limit_v1(dir);
            if self.arm_threshold(dir, limit, armed, wake) {
                names.push(events::USAGE_THRESHOLD.to_owned());
            }
        }
        if armed.watch_parent(dir, wake, &self.tasks) {
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
            tracing::info!(dir = %dir.path.display(), version = %dir.version, events = ?names, psi, interval = ?self.config.interval, idle_interval = ?self.config.idle_interval, "memory: watching cgroup");
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
        let scope = task.map(|task| {
            let scope = self.tasks.child();
            scope.spawn(format!("memory: {}", events::USAGE_THRESHOLD), task);
            scope
        });
        let armed_now = scope.is_some();
        if let Some(old) = std::mem::replace(&mut armed.threshold, scope) {
            old.stop();
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
