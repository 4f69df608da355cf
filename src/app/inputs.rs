//! The engine's inputs, each declared once: its feature, its signals with their thresholds and
//! the reasons each can give, and how it starts. `start` registers them in a loop, so the
//! verdict's metrics (`sidewatch_not_ready_reason`, `sidewatch_features`) are derived from what
//! runs, not from a list kept beside it.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::container::{AppContainer, Discovery};
use crate::engine::bus::{Input, Notice, Published};
use crate::engine::task::EngineMetrics;
use crate::engine::{Engine, Kube, Memory, Signal, SignalSpec};
use crate::kubernetes::{Identity, KubeMetrics, KubeWatcher};
use crate::liveness::Tasks;
use crate::memory::{self, MemoryMetrics, MemoryWatcher};
use crate::metrics::{Feature, Registry};
use crate::overload::{OverloadMetrics, OverloadWatcher};
use crate::probe::{ProbeMetrics, ProbeSetupError, ProbeWatcher, Prober};
use crate::process::{self, ProcessWatcher};
use crate::reason::Reason;
use crate::traffic::{ListenWatch, OwnSockets, TrafficSource, TrafficWatcher};

use super::StartError;

/// One signal as its input declares it.
pub(crate) struct Declared {
    pub signal: Signal,
    pub spec: SignalSpec,
    /// Every reason it can fail with: each is a series of `sidewatch_not_ready_reason` from the
    /// start, so that an alert's `increase()` sees the first.
    pub reasons: &'static [Reason],
}

/// An input of the engine: a feature of `sidewatch_features`, its signals, and its start.
pub(crate) struct Part {
    pub feature: Feature,
    pub signals: Vec<Declared>,
    start: Box<dyn FnOnce(&Wiring<'_>) + Send>,
}

/// What a part is given to start with, once the engine and the drain run.
pub(crate) struct Wiring<'a> {
    pub registry: &'a Registry,
    pub inputs: &'a mpsc::Sender<Input>,
    pub tasks: &'a Tasks,
    pub shutdown: &'a CancellationToken,
    /// Cancelled when a drain starts: the probes stop then, and sidewatch leaves the app alone.
    pub draining: &'a CancellationToken,
    pub verdict: &'a watch::Receiver<Arc<Published>>,
    /// The drain's traffic watch's own sockets, and its port: a probe of that port counts its
    /// connections out of the app's.
    pub own: &'a Arc<OwnSockets>,
    pub watched_port: Option<u16>,
    /// The overload judge's state, which the agent endpoint reads.
    pub overloaded: &'a watch::Sender<bool>,
}

impl Part {
    pub(crate) fn start(self, wiring: &Wiring<'_>) {
        (self.start)(wiring)
    }
}

// Memory, process, overload and pod signals flip on one observation: the kernel's and the API
// server's numbers are not noisy the way a network check is, and their own thresholds,
// cooldowns and hysteresis (the overload judge's) hold them.
const SINGLE: SignalSpec = SignalSpec {
    failure_threshold: 1,
    success_threshold: 1,
    critical: true,
};

fn single(signal: Signal, reasons: &'static [Reason]) -> Declared {
    Declared {
        signal,
        spec: SINGLE,
        reasons,
    }
}

/// The parts `config` turns on, given the memory source chosen and the pod's identity (when
/// the pod watch runs). Also hands back the channel of Events' notices when the pod watch posts
/// them, for the drain.
pub(crate) fn declare(
    config: &Config,
    memory_plan: Option<memory::Plan>,
    identity: Option<Identity>,
) -> Result<(Vec<Part>, Option<mpsc::Sender<Notice>>), ProbeSetupError> {
    let mut parts = Vec::new();
    if !config.probes.0.is_empty() {
        parts.push(probes(config)?);
    }
    // The pod watch passes the app container's ID and limit to the memory watcher, and the
    // memory watcher its OOM kills to the pod watch's Events.
    let (app_tx, app_rx) = watch::channel(AppContainer::default());
    let (notices_tx, notices_rx) = mpsc::channel(16);
    let kube = identity.is_some();
    if let Some(plan) = memory_plan {
        let app = kube.then_some(app_rx);
        parts.push(memory(config, plan, app, kube.then(|| notices_tx.clone())));
    }
    parts.extend(process(config));
    parts.extend(overload(config));
    let Some(identity) = identity else {
        return Ok((parts, None));
    };
    parts.push(pod_watch(config, identity, app_tx, notices_rx));
    Ok((parts, Some(notices_tx)))
}

fn memory(
    config: &Config,
    plan: memory::Plan,
    app: Option<watch::Receiver<AppContainer>>,
    notices: Option<mpsc::Sender<Notice>>,
) -> Part {
    let discovery = Discovery::new(app);
    let memory_config = config.memory.clone();
    let reasons = |m| match m {
        Memory::Usage => &[Reason::MemoryHigh][..],
        Memory::Pressure => &[Reason::MemoryPressure],
        Memory::Trend => &[Reason::OomPredicted],
        Memory::Oom => &[Reason::OomKilled],
    };
    Part {
        feature: Feature::Memory,
        signals: Memory::ALL
            .iter()
            .map(|&m| single(Signal::Memory(m), reasons(m)))
            .collect(),
        start: Box::new(move |w| {
            let watcher = MemoryWatcher {
                discovery,
                plan,
                config: memory_config,
                inputs: w.inputs.clone(),
                metrics: MemoryMetrics::new(w.registry),
                notices,
                tasks: w.tasks.scope(w.shutdown),
            };
            w.tasks.spawn("memory", w.shutdown, watcher.run());
        }),
    }
}

fn process(config: &Config) -> Option<Part> {
    let pattern = config.process.pattern.clone()?;
    let poll = config.memory.interval;
    Some(Part {
        feature: Feature::Process,
        signals: vec![single(Signal::Process, &[Reason::ProcessExited])],
        start: Box::new(move |w| {
            let watcher = ProcessWatcher {
                pattern,
                poll,
                inputs: w.inputs.clone(),
                exits: process::exits_metric(w.registry),
            };
            w.tasks
                .spawn(Signal::Process.to_string(), w.shutdown, watcher.run());
        }),
    })
}

/// The accept queue is watched (and its metrics exported) wherever there is an app port; it is
/// a signal only with `overload.signal`.
fn overload(config: &Config) -> Option<Part> {
    let port = config.app_port()?;
    let overload = config.overload.clone();
    Some(Part {
        feature: Feature::Overload,
        signals: overload
            .signal
            .then(|| single(Signal::Overload, &[Reason::Overloaded]))
            .into_iter()
            .collect(),
        start: Box::new(move |w| {
            let watcher = OverloadWatcher {
                watch: ListenWatch::new(port),
                inputs: overload.signal.then(|| w.inputs.clone()),
                config: overload,
                metrics: OverloadMetrics::new(w.registry),
                judged: w.overloaded.clone(),
            };
            w.tasks.spawn("overload", w.shutdown, watcher.run());
        }),
    })
}

fn pod_watch(
    config: &Config,
    identity: Identity,
    app: watch::Sender<AppContainer>,
    notices: mpsc::Receiver<Notice>,
) -> Part {
    let kube_config = config.kubernetes.clone();
    Part {
        feature: Feature::Kubernetes,
        signals: vec![
            // An app container's restart, OOMKilled ones apart, with memory watched or not.
            single(
                Signal::Kube(Kube::App),
                &[Reason::ContainerRestarted, Reason::OomKilled],
            ),
            single(Signal::Kube(Kube::Pod), &[Reason::Terminating]),
        ],
        start: Box::new(move |w| {
            let watcher = KubeWatcher {
                identity,
                config: kube_config,
                inputs: w.inputs.clone(),
                metrics: KubeMetrics::new(w.registry),
                verdict: w.verdict.clone(),
                notices,
                app,
            };
            watcher.spawn(w.tasks, w.shutdown);
        }),
    }
}

/// The probes, each with its own thresholds and the reasons of its kind.
fn probes(config: &Config) -> Result<Part, ProbeSetupError> {
    let mut signals = Vec::new();
    let mut probers = Vec::new();
    for probe in &config.probes.0 {
        signals.push(Declared {
            signal: probe.signal(),
            spec: SignalSpec {
                failure_threshold: probe.failure_threshold,
                success_threshold: probe.success_threshold,
                critical: probe.critical,
            },
            reasons: probe.check.reasons(),
        });
        probers.push((probe.clone(), Prober::new(probe)?));
    }
    let configs = config.probes.0.clone();
    Ok(Part {
        feature: Feature::Probes,
        signals,
        start: Box::new(move |w| {
            let metrics = ProbeMetrics::new(w.registry, &configs);
            for (config, prober) in probers {
                let name = config.signal().to_string();
                let on_watched_port = w.watched_port.is_some() && config.port() == w.watched_port;
                let watcher = ProbeWatcher {
                    config,
                    prober,
                    metrics: metrics.clone(),
                    inputs: w.inputs.clone(),
                    own: on_watched_port.then(|| w.own.clone()),
                };
                w.tasks.spawn(name, w.draining, watcher.run());
            }
        }),
    })
}

/// Registers every part's signals with the engine and its feature, and the verdict's metrics
/// with a series for each reason the parts can give.
pub(crate) fn register(
    parts: &[Part],
    registry: &Registry,
    engine: &mut Engine,
    now: SystemTime,
) -> EngineMetrics {
    let mut reasons = Vec::new();
    for part in parts {
        registry.feature(part.feature);
        for declared in &part.signals {
            engine.register(declared.signal.clone(), declared.spec, now);
            reasons.extend_from_slice(declared.reasons);
        }
    }
    EngineMetrics::new(registry, &reasons)
}
/// The app port's traffic watch for the drain, on `drain.port` or the first critical probe's port.
pub(crate) fn traffic_watcher(
    config: &Config,
    accepted: Arc<AtomicU64>,
    own: Arc<OwnSockets>,
) -> Result<Option<TrafficWatcher>, StartError> {
    let d = &config.drain;
    let Some(port) = config.app_port() else {
        tracing::info!("drain: no app port (drain.port, or a critical probe's port): a drain ends after drain.delay");
        return Ok(None);
    };
    match TrafficWatcher::new(port, d.traffic_source, d.passive_opens, accepted, own) {
        Ok(watcher) => {
            tracing::info!(port, source = %watcher.describe(), "drain: watching the app port's traffic");
            Ok(Some(watcher))
        }
        Err(e) if d.traffic_source == TrafficSource::Auto => {
            tracing::warn!(port, error = %e, "drain: cannot watch the app port: a drain ends after drain.delay");
            Ok(None)
        }
        Err(error) => Err(StartError::Traffic {
            traffic: d.traffic_source,
            port,
            error,
        }),
    }
}
