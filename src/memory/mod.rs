//! The memory watcher: samples the app's memory (a cgroup, or its processes' RSS) every
//! `memory.interval` and at once on kernel events, and turns each sample into the signals
//! `memory:usage`, `memory:pressure`, `memory:trend` and `memory:oom`.

pub mod assess;
pub mod cgroup;
pub mod events;
pub mod read;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{CgroupSetting, MemoryConfig, MemorySource};
use crate::engine::Observation;
use crate::kubernetes::Notice;
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::process;
use crate::watcher::Input;
use assess::{Assessment, Assessor, Thresholds};
use cgroup::{CgroupDir, Version};
use read::{ReadError, Sample};

pub const USAGE: &str = "memory:usage";
pub const PRESSURE: &str = "memory:pressure";
pub const TREND: &str = "memory:trend";
pub const OOM: &str = "memory:oom";
pub const SIGNALS: [&str; 4] = [USAGE, PRESSURE, TREND, OOM];

/// How the watcher finds the memory to read.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// A cgroup directory fixed at start-up (`--cgroup PATH`, or the pod's cgroup).
    Cgroup(CgroupDir),
    /// Follow the process matched by `process.match`: its cgroup when reachable (and allowed),
    /// else the RSS of it and its children (when allowed).
    Process {
        pattern: String,
        cgroup: bool,
        proc: bool,
    },
}

/// Chooses the memory source at start-up, or says why there is none. An impossible explicit
/// choice (a path that is no memory cgroup, `proc` without `process.match`) is an error.
pub fn plan(
    memory: &MemoryConfig,
    pattern: Option<&str>,
) -> Result<(Option<Plan>, String), String> {
    let limit = memory.limit.map(|b| b.0);
    match (memory.source, &memory.cgroup, pattern) {
        (MemorySource::None, _, _) => Ok((None, "memory.source is none".into())),
        (MemorySource::Proc, CgroupSetting::Path(_), _) => {
            Err("memory.source is proc but memory.cgroup names a directory: choose one".into())
        }
        (MemorySource::Auto | MemorySource::Cgroup, CgroupSetting::Path(path), _) => {
            let dir = cgroup::explicit(path)?;
            let why = format!("{} {} given by memory.cgroup", dir.version, dir.path.display());
            Ok((Some(Plan::Cgroup(dir)), why))
        }
        (source, CgroupSetting::Auto, Some(pattern)) => {
            let cgroup = source != MemorySource::Proc;
            let proc = source != MemorySource::Cgroup;
            let why = match (cgroup, proc) {
                (true, true) => "the cgroup of the process matching process.match when reachable, else its RSS",
                (true, false) => "the cgroup of the process matching process.match",
                _ => "the RSS of the process matching process.match (shared process namespace)",
            };
            let mut why = format!("{why} ({pattern:?})");
            if proc && limit.is_none() {
                why.push_str("; without memory.limit the RSS source has no limit to compare with");
            }
            Ok((Some(Plan::Process { pattern: pattern.to_owned(), cgroup, proc }), why))
        }
        (MemorySource::Proc, CgroupSetting::Auto, None) => {
            Err("memory.source is proc, which needs process.match to find the app".into())
        }
        (source, CgroupSetting::Auto, None) => match cgroup::of_own_pod() {
            Some(dir) => {
                let why = format!("{} {} (the pod's cgroup, parent of sidewatch's own)", dir.version, dir.path.display());
                Ok((Some(Plan::Cgroup(dir)), why))
            }
            None if source == MemorySource::Cgroup => Err(
                "memory.source is cgroup but no pod cgroup is visible: set memory.cgroup (--cgroup) or process.match".into(),
            ),
            None => Ok((None, "no pod cgroup is visible and process.match is not set".into())),
        },
    }
}

pub struct MemoryWatcher {
    pub plan: Plan,
    pub config: MemoryConfig,
    pub inputs: mpsc::Sender<Input>,
    pub metrics: Metrics,
    /// Where OOM kills go to become Kubernetes Events (the kubelet posts none for them).
    pub notices: Option<mpsc::Sender<Notice>>,
}

/// Where the current samples come from; re-resolved when the app process changes.
#[derive(Clone, Debug, PartialEq)]
enum Target {
    Cgroup(CgroupDir),
    Processes { main: i32 },
    Nothing,
}

impl MemoryWatcher {
    fn thresholds(&self) -> Thresholds {
        let c = &self.config;
        Thresholds {
            unready_above: c.unready_above.0,
            ready_below: c.ready_below.0,
            pressure_full_above: c.pressure_full_avg10_above,
            pressure_some_above: c.pressure_some_avg10_above,
            predict_within: c.predict_oom_within,
            oom_cooldown: c.oom_cooldown,
        }
    }

    pub async fn run(self, liveness: Liveness) {
        let _guard = liveness.register("memory");
        let mut assessor = Assessor::new(self.thresholds());
        let (wake_tx, mut wake_rx) = mpsc::channel(16);
        let mut armed: Vec<JoinHandle<()>> = Vec::new();
        let mut target = Target::Nothing;
        let mut last_error: Option<String> = None;
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let cooldown_end = assessor.oom_until();
            tokio::select! {
                _ = ticker.tick() => {}
                Some(()) = wake_rx.recv() => {}
                _ = sleep_until(cooldown_end), if cooldown_end.is_some() => {}
            }
            let next = self.resolve(&target);
            if next != target {
                for handle in armed.drain(..) {
                    handle.abort();
                }
                if let Target::Cgroup(dir) = &next {
                    let threshold = self.usage_threshold(dir);
                    let (names, handles) = events::arm(dir, threshold, &wake_tx);
                    armed = handles;
                    let psi = match dir.version {
                        Version::V1 => "off: cgroup v1 has no per-cgroup PSI",
                        Version::V2 => "on",
                    };
                    tracing::info!(dir = %dir.path.display(), version = %dir.version, events = ?names, psi, interval = ?self.config.interval, "memory: watching cgroup");
                } else if let Target::Processes { main } = &next {
                    tracing::info!(pid = main, limit = ?self.config.limit.map(|b| b.0), "memory: watching the RSS of the app's processes");
                }
                target = next;
            }
            let sample = match &target {
                Target::Cgroup(dir) => match dir.version {
                    Version::V1 => read::sample_v1(&dir.path),
                    Version::V2 => read::sample_v2(&dir.path),
                },
                Target::Processes { main } => {
                    read::sample_proc(&process::family(*main), self.config.limit.map(|b| b.0))
                }
                Target::Nothing => Ok(Sample {
                    at: std::time::Instant::now(),
                    working_set: 0,
                    limit: None,
                    under_oom: false,
                    oom_kills: None,
                    pressure: None,
                }),
            };
            let ok = match sample {
                Ok(sample) => {
                    if last_error.take().is_some() {
                        tracing::info!("memory: readable again");
                    }
                    let assessment = assessor.assess(&sample);
                    self.publish(&sample, &assessment);
                    self.send_all(assessment).await
                }
                Err(e) => self.read_failed(e, &mut last_error, &mut target).await,
            };
            if !ok {
                return;
            }
        }
    }

    fn resolve(&self, current: &Target) -> Target {
        let (pattern, cgroup, proc) = match &self.plan {
            Plan::Cgroup(dir) => return Target::Cgroup(dir.clone()),
            Plan::Process {
                pattern,
                cgroup,
                proc,
            } => (pattern, *cgroup, *proc),
        };
        let alive = |pid: i32| std::path::Path::new(&format!("/proc/{pid}")).exists();
        match current {
            Target::Processes { main } if alive(*main) => return current.clone(),
            Target::Cgroup(dir) if dir.path.is_dir() => return current.clone(),
            _ => {}
        }
        let Some(app) = process::find(pattern) else {
            return Target::Nothing;
        };
        if cgroup {
            if let Some(dir) = cgroup::of_process(app.pid) {
                return Target::Cgroup(dir);
            }
        }
        if proc {
            return Target::Processes { main: app.pid };
        }
        Target::Nothing
    }

    /// v1 can signal when usage crosses a threshold: arm it where the working set would turn us
    /// unready if there were no page cache, so a fast climb wakes us between ticks.
    fn usage_threshold(&self, dir: &CgroupDir) -> Option<u64> {
        let path = dir.path.join("memory.limit_in_bytes");
        let limit = read::parse_limit(&read::read_file(&path).ok()?, &path).ok()??;
        Some((limit as f64 * self.config.unready_above.0) as u64)
    }

    fn publish(&self, s: &Sample, a: &Assessment) {
        let m = &self.metrics;
        m.memory_usage.set(s.working_set as i64);
        m.memory_limit.set(s.limit.unwrap_or(0) as i64);
        if let Some(p) = s.pressure {
            m.memory_pressure
                .with_label_values(&["some"])
                .set(p.some_avg10);
            m.memory_pressure
                .with_label_values(&["full"])
                .set(p.full_avg10);
        }
        m.predicted_oom
            .set(a.predicted_oom.unwrap_or(f64::INFINITY));
        if a.new_oom_kills > 0 {
            m.oom_kills.inc_by(a.new_oom_kills);
            tracing::warn!(kills = a.new_oom_kills, working_set = s.working_set, limit = ?s.limit, "OOM kill in the app's cgroup");
            if let Some(notices) = &self.notices {
                let message = match s.limit {
                    Some(limit) => format!("memory limit {limit} bytes"),
                    None => "no memory limit".to_owned(),
                };
                // A full queue means Events are backed up anyway; the metric has the count.
                let _ = notices.try_send(Notice::OomKill {
                    kills: a.new_oom_kills,
                    message,
                });
            }
        }
    }

    async fn send_all(&self, a: Assessment) -> bool {
        let observations = [
            (USAGE, a.usage),
            (PRESSURE, a.pressure.unwrap_or(Observation::Success)),
            (TREND, a.trend),
            (OOM, a.oom.unwrap_or(Observation::Success)),
        ];
        for (signal, observation) in observations {
            let input = Input::Observe {
                signal: signal.to_owned(),
                observation,
            };
            if self.inputs.send(input).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Unreadable memory is no verdict on the app: counted, logged once per kind of failure, and
    /// the memory signals do not veto. A vanished cgroup (container restart) is looked up again.
    async fn read_failed(
        &self,
        e: ReadError,
        last: &mut Option<String>,
        target: &mut Target,
    ) -> bool {
        self.metrics
            .memory_read_errors
            .with_label_values(&[e.kind()])
            .inc();
        let text = e.to_string();
        if last.as_deref() != Some(text.as_str()) {
            tracing::warn!(error = %text, "memory: cannot read; memory signals do not veto until it can");
            *last = Some(text);
        }
        if matches!(e, ReadError::Missing { .. }) && matches!(self.plan, Plan::Process { .. }) {
            *target = Target::Nothing;
        }
        self.send_all(Assessment {
            usage: Observation::Success,
            pressure: None,
            trend: Observation::Success,
            predicted_oom: None,
            oom: None,
            new_oom_kills: 0,
        })
        .await
    }
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
