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
use crate::metrics::{self, Registry};
use crate::process;
use crate::reason::Reason;
use crate::watcher::Input;
use assess::{Assessment, Assessor, Thresholds};
use cgroup::{CgroupDir, Version};
use read::{ReadError, Sample};

pub const USAGE: &str = "memory:usage";
pub const PRESSURE: &str = "memory:pressure";
pub const TREND: &str = "memory:trend";
pub const OOM: &str = "memory:oom";
pub const SIGNALS: [&str; 4] = [USAGE, PRESSURE, TREND, OOM];
/// The reasons the memory signals give.
pub const REASONS: [Reason; 4] = [
    Reason::MemoryHigh,
    Reason::MemoryPressure,
    Reason::OomPredicted,
    Reason::OomKilled,
];

/// How the watcher finds the memory to read.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// A cgroup directory fixed at start-up (`--cgroup PATH`, or the pod's cgroup).
    Cgroup(CgroupDir),
    /// Follow the app's process (matched by `process.match`, or the one other container's in a
    /// shared process namespace), through the first way allowed that works: its cgroup as this
    /// container's mounts show it (a hostPath of the node's tree), its cgroup as its own
    /// container sees it (through `/proc/<pid>/root`), or the RSS of it and its children.
    Process {
        pattern: Option<String>,
        cgroup: bool,
        app_root: bool,
        proc: bool,
    },
}

/// Chooses the memory source at start-up, or says why there is none. An impossible explicit
/// choice (a path that is no memory cgroup, `proc` without `process.match`) is an error.
pub fn plan(
    memory: &MemoryConfig,
    pattern: Option<&str>,
) -> Result<(Option<Plan>, String), String> {
    use MemorySource::*;
    let limit = memory.limit.map(|b| b.0);
    let process = |pattern: Option<&str>, source: MemorySource| Plan::Process {
        pattern: pattern.map(str::to_owned),
        cgroup: matches!(source, Auto | Cgroup),
        app_root: matches!(source, Auto | AppRoot),
        proc: matches!(source, Auto | Proc),
    };
    match (memory.source, &memory.cgroup, pattern) {
        (None, _, _) => Ok((Option::None, "memory.source is none".into())),
        (Proc | AppRoot, CgroupSetting::Path(_), _) => Err(format!(
            "memory.source is {} but memory.cgroup names a directory: choose one",
            if memory.source == Proc { "proc" } else { "app-root" }
        )),
        (Auto | Cgroup, CgroupSetting::Path(path), _) => {
            let dir = cgroup::explicit(path)?;
            let why = format!("{} {} given by memory.cgroup", dir.version, dir.path.display());
            Ok((Some(Plan::Cgroup(dir)), why))
        }
        (source, CgroupSetting::Auto, Some(pattern)) => {
            let why = match source {
                Cgroup => "the cgroup of the process matching process.match",
                AppRoot => "the cgroup of the process matching process.match, through its container's root",
                Proc => "the RSS of the process matching process.match (shared process namespace)",
                _ => "the cgroup of the process matching process.match when reachable, through its container's root when not, else its RSS",
            };
            let mut why = format!("{why} ({pattern:?})");
            if matches!(source, Auto | Proc) && limit.is_none() {
                why.push_str("; without memory.limit the RSS source has no limit to compare with");
            }
            Ok((Some(process(Some(pattern), source)), why))
        }
        (Proc, CgroupSetting::Auto, Option::None) => {
            Err("memory.source is proc, which needs process.match to find the app".into())
        }
        (AppRoot, CgroupSetting::Auto, Option::None) => Ok((
            Some(process(Option::None, AppRoot)),
            "the cgroup of the other container's process, through its container's root \
             (shared process namespace)"
                .into(),
        )),
        (source, CgroupSetting::Auto, Option::None) => match cgroup::of_own_pod() {
            Some(dir) => {
                let why = format!("{} {} (the pod's cgroup, parent of sidewatch's own)", dir.version, dir.path.display());
                Ok((Some(Plan::Cgroup(dir)), why))
            }
            Option::None if source == Cgroup => Err(
                "memory.source is cgroup but no pod cgroup is visible: set memory.cgroup (--cgroup) or process.match".into(),
            ),
            Option::None if process::shared_namespace() => Ok((
                Some(process(Option::None, AppRoot)),
                "the cgroup of the other container's process, through its container's root \
                 (the pod shares its process namespace)"
                    .into(),
            )),
            Option::None => Ok((Option::None, "no pod cgroup is visible, the pod shares no process namespace and process.match is not set".into())),
        },
    }
}

/// A prediction further out than this is no prediction: flat memory with a tiny slope would
/// give 10^7 s one sample and +Inf the next.
const PREDICTION_HORIZON: f64 = 24.0 * 60.0 * 60.0;

/// The `source` label values of `sidewatch_memory_source`.
const SOURCES: [&str; 4] = ["cgroup", "app-root", "proc", "none"];

/// The memory watcher's metrics, only when it runs; PSI's only where the cgroup has PSI.
#[derive(Clone)]
pub struct MemoryMetrics {
    registry: Registry,
    usage: prometheus::IntGauge,
    limit: prometheus::IntGauge,
    predicted: prometheus::Gauge,
    oom_kills: prometheus::IntCounter,
    read_errors: prometheus::IntCounterVec,
    source: prometheus::IntGaugeVec,
    pressure: std::sync::Arc<std::sync::Mutex<Option<prometheus::GaugeVec>>>,
}

impl MemoryMetrics {
    pub fn new(registry: &Registry) -> Self {
        registry.feature("memory");
        let read_errors = registry.register(metrics::counter_vec(
            "sidewatch_memory_read_errors_total",
            "Failed reads of the app's memory files, by kind (gone = the cgroup directory was removed, as at a container restart; missing, garbled, io); \
             while they fail, memory signals do not veto readiness.",
            &["kind"],
        ));
        for kind in ["gone", "missing", "garbled", "io"] {
            read_errors.with_label_values(&[kind]);
        }
        let source = registry.register(metrics::gauge_vec(
            "sidewatch_memory_source",
            "1 for where the app's memory is read now: cgroup (a host path of the node's tree), app-root (the app container's own cgroup through its root), proc (its processes' RSS) or none (the app not found yet).",
            &["source"],
        ));
        for s in SOURCES {
            source.with_label_values(&[s]);
        }
        MemoryMetrics {
            registry: registry.clone(),
            usage: registry.register(metrics::gauge(
                "sidewatch_memory_usage_bytes",
                "The app's working set (usage minus inactive file cache, as the kubelet counts it). Compare with sidewatch_memory_limit_bytes.",
            )),
            limit: registry.register(metrics::gauge(
                "sidewatch_memory_limit_bytes",
                "The app's memory limit; 0 when there is none. Near the usage, raise the limit or fix the leak.",
            )),
            predicted: registry.register(metrics::float_gauge(
                "sidewatch_memory_predicted_oom_seconds",
                "Seconds until the memory limit at the current trend; +Inf when memory is not growing toward a limit within a day.",
            )),
            oom_kills: registry.register(metrics::counter(
                "sidewatch_oom_kills_total",
                "Processes the kernel OOM killer killed in the app's cgroup, workers included. Any rise means requests were dropped: raise the limit.",
            )),
            read_errors,
            source,
            pressure: Default::default(),
        }
    }

    fn source(&self, now: &str) {
        for s in SOURCES {
            self.source.with_label_values(&[s]).set(i64::from(s == now));
        }
    }

    /// PSI's gauges exist while the watched cgroup has PSI: 0 then means no stall, not "no PSI".
    pub(crate) fn pressure(&self, psi: Option<read::Pressure>) {
        let mut gauges = self.pressure.lock().unwrap_or_else(|e| e.into_inner());
        match (psi, gauges.as_ref()) {
            (Some(p), _) => {
                let g = gauges.get_or_insert_with(|| {
                    self.registry.register(metrics::float_gauge_vec(
                        "sidewatch_memory_pressure_avg10",
                        "Percent of the last 10 s the app's tasks stalled on memory (PSI); full = all tasks stalled.",
                        &["kind"],
                    ))
                });
                g.with_label_values(&["some"]).set(p.some_avg10);
                g.with_label_values(&["full"]).set(p.full_avg10);
            }
            (None, Some(g)) => {
                self.registry.unregister(g);
                *gauges = None;
            }
            (None, None) => {}
        }
    }
}

pub struct MemoryWatcher {
    pub plan: Plan,
    pub config: MemoryConfig,
    pub inputs: mpsc::Sender<Input>,
    pub metrics: MemoryMetrics,
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
        let mut armed = Armed::default();
        let mut target = Target::Nothing;
        let mut reported = false;
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
            if next != target || !reported {
                armed.disarm();
                if let Target::Processes { main } = &next {
                    tracing::info!(pid = main, limit = ?self.config.limit.map(|b| b.0), "memory: watching the RSS of the app's processes");
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
                        if !self.read_failed(gone, &mut last_error, &mut target).await {
                            return;
                        }
                        continue;
                    }
                    Presence::Here(id) => (armed.dir != Some(id)).then_some(id),
                    Presence::Unknown => None,
                };
                if let Some(id) = fresh {
                    self.arm(&dir, id, &mut armed, &mut assessor, &wake_tx);
                }
            }
            let sample = match &target {
                Target::Cgroup(dir) => match dir.version {
                    Version::V1 => read::sample_v1(&dir.path, dir.psi.as_deref()),
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
                    self.send_all(assessment).await
                }
                Err(e) => self.read_failed(e, &mut last_error, &mut target).await,
            };
            if !ok {
                return;
            }
        }
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

    fn resolve(&self, current: &Target) -> Target {
        let (pattern, cgroup, app_root, proc) = match &self.plan {
            Plan::Cgroup(dir) => return Target::Cgroup(dir.clone()),
            Plan::Process {
                pattern,
                cgroup,
                app_root,
                proc,
            } => (pattern, *cgroup, *app_root, *proc),
        };
        let alive = |pid: i32| std::path::Path::new(&format!("/proc/{pid}")).exists();
        match current {
            Target::Processes { main } if alive(*main) => return current.clone(),
            Target::Cgroup(dir) if dir.path.is_dir() => return current.clone(),
            _ => {}
        }
        let app = match pattern {
            Some(pattern) => process::find(pattern),
            None => process::other_container(),
        };
        let Some(app) = app else {
            return Target::Nothing;
        };
        if cgroup {
            if let Some(dir) = cgroup::of_process(app.pid) {
                return Target::Cgroup(dir);
            }
        }
        if app_root {
            if let Some(dir) = cgroup::in_root_of(app.pid) {
                return Target::Cgroup(dir);
            }
        }
        if proc {
            return Target::Processes { main: app.pid };
        }
        Target::Nothing
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
        let mut observations = [
            (USAGE, a.usage),
            (PRESSURE, a.pressure.unwrap_or(Observation::Success)),
            (TREND, a.trend),
            (OOM, a.oom.unwrap_or(Observation::Success)),
        ];
        // Failures first: when one signal recovers in the sample that another fails (memory_high
        // ends as the OOM kill frees memory), the engine never sees a moment with neither, which
        // would be a false "ready" between two reasons (a transition, a gate patch, an Event).
        observations.sort_by_key(|(_, o)| matches!(o, Observation::Success));
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
            .read_errors
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

/// The notifications armed on the watched cgroup directory, and which directory that was.
#[derive(Default)]
struct Armed {
    /// The directory the notifications were armed on; `None` while there is none.
    dir: Option<DirId>,
    /// The v1 limit the usage threshold was computed from.
    limit: Option<u64>,
    tasks: Vec<JoinHandle<()>>,
    /// The v1 usage threshold, apart: it follows the limit.
    threshold: Option<JoinHandle<()>>,
    /// The watch on the parent directory: it outlives the cgroup, to see it come back.
    parent: Option<JoinHandle<()>>,
    /// A cgroup was watched before: any later one is new.
    seen: bool,
    /// The parent's watch failed and that was logged (once: it is retried at every look).
    parent_failed: bool,
}

impl Armed {
    /// The directory went away, and its notifications with it.
    fn gone(&mut self) {
        for task in self.tasks.drain(..).chain(self.threshold.take()) {
            task.abort();
        }
        self.dir = None;
        self.limit = None;
    }

    /// Everything off: the target moved elsewhere.
    fn disarm(&mut self) {
        self.gone();
        if let Some(parent) = self.parent.take() {
            parent.abort();
        }
    }

    /// Arms the parent's watch unless it is already; true when it is armed now.
    fn watch_parent(&mut self, dir: &CgroupDir, wake: &mpsc::Sender<()>) -> bool {
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
type DirId = (u64, u64);

enum Presence {
    Here(DirId),
    Gone,
    /// Cannot tell (a stat error other than not found): the reads will say what is wrong.
    Unknown,
}

fn dir_id(path: &std::path::Path) -> Presence {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Presence::Here((m.dev(), m.ino())),
        Ok(_) => Presence::Gone,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Presence::Gone,
        Err(_) => Presence::Unknown,
    }
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
