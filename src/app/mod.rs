//! Start-up: bind, spawn the watch runtime (probes and engine) and the admin server. The one
//! shutdown path around it (signals first, drain, linger, bounded stop) is `run.rs`.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::container::{AppContainer, Discovery};
use crate::drain::{Access, Drain, DrainMetrics};
use crate::engine::bus::Published;
use crate::engine::task::{self, EngineMetrics};
use crate::engine::{Engine, Kube, Memory, Signal, SignalSpec};
use crate::kubernetes::{self, KubeMetrics, KubeWatcher};
use crate::liveness::{Liveness, Tasks};
use crate::memory::{self, MemoryMetrics, MemoryWatcher};
use crate::metrics::Registry;
use crate::overload::{OverloadMetrics, OverloadWatcher};
use crate::probe::{ProbeMetrics, ProbeSetupError, ProbeWatcher, Prober};
use crate::process::{self, ProcessWatcher};
use crate::reason::Reason;
use crate::server::{self, Admin, AdminMetrics};
use crate::traffic::{ListenWatch, OwnSockets, TrafficSource, TrafficWatcher};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("nothing to watch: give --target URL, or a config file with probes, memory or process.match")]
    NothingToWatch,
    #[error("memory: {0}")]
    Memory(#[from] memory::PlanError),
    #[error("drain: drain.traffic_source {traffic:?} on port {port}: {error}")]
    Traffic {
        traffic: TrafficSource,
        port: u16,
        error: std::io::Error,
    },
    #[error("drain: drain.token_env names {0}, which is unset or empty")]
    NoDrainToken(String),
    #[error("kubernetes: {0}")]
    Kubernetes(#[from] kubernetes::ConnectError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Probe(#[from] ProbeSetupError),
    #[error("cannot start the watch runtime: {0}")]
    Runtime(std::io::Error),
}

/// Starts everything; must be called inside a tokio runtime, which then serves the admin port.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let (memory_plan, memory_why) = memory::plan(
        &config.memory,
        config.process.pattern.as_deref(),
        config.kubernetes.app_container.as_deref(),
    )?;
    match &memory_plan {
        Some(_) => tracing::info!(source = %memory_why, "memory: source chosen"),
        None => tracing::info!(why = %memory_why, "memory: no source, memory signals off"),
    }
    if config.probes.0.is_empty() && memory_plan.is_none() && config.process.pattern.is_none() {
        return Err(StartError::NothingToWatch);
    }
    let listener = crate::net::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;

    let registry = Registry::new();
    let probe_metrics = ProbeMetrics::new(&registry, &config.probes.0);
    let mut reasons: Vec<Reason> = config
        .probes
        .0
        .iter()
        .flat_map(|p| p.check.reasons().iter().copied())
        .collect();
    let mut engine = Engine::with_drain_readiness(config.drain.readiness);
    let now = SystemTime::now();
    let mut probers = Vec::new();
    for probe in &config.probes.0 {
        let spec = SignalSpec {
            failure_threshold: probe.failure_threshold,
            success_threshold: probe.success_threshold,
            critical: probe.critical,
        };
        engine.register(probe.signal(), spec, now);
        probers.push((probe.clone(), Prober::new(probe)?));
    }
    // Memory and process signals flip on one observation: the kernel's numbers are not noisy the
    // way a network check is, and their own thresholds and cooldowns carry the hysteresis.
    let single = SignalSpec {
        failure_threshold: 1,
        success_threshold: 1,
        critical: true,
    };
    match &memory_plan {
        Some(_) => {
            for signal in Memory::ALL {
                engine.register(Signal::Memory(signal), single, now);
            }
            reasons.extend(memory::REASONS);
        }
        None => engine.not_watched("memory", memory_why.clone()),
    }
    if config.process.pattern.is_some() {
        engine.register(Signal::Process, single, now);
        reasons.push(Reason::ProcessExited);
    }
    // The judge holds and turns back with hysteresis itself.
    if config.overload.signal {
        engine.register(Signal::Overload, single, now);
        reasons.push(Reason::Overloaded);
    }
    let identity = kubernetes::connect(&config.kubernetes).await?;
    if identity.is_some() {
        for signal in Kube::ALL {
            engine.register(Signal::Kube(signal), single, now);
        }
        reasons.extend(kubernetes::REASONS);
    }
    let accepted = Arc::new(AtomicU64::new(0));
    let own = Arc::new(OwnSockets::default());
    let traffic = traffic_watcher(&config, accepted.clone(), own.clone())?;
    let watched_port = traffic.as_ref().map(TrafficWatcher::port);
    let traffic_on = traffic.is_some();
    let access = Access {
        token: config.drain.token().map_err(StartError::NoDrainToken)?,
    };

    // Nothing fails from here: every input, the engine and the outputs are started.
    let (publish, verdict) = watch::channel(Published::new(&engine, Arc::from([])));
    let (inputs_tx, inputs_rx) = mpsc::channel(256);
    let liveness = Liveness::default();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let runtime = spawn_watch_runtime(shutdown.clone(), tracker.clone())?;
    let tasks = Tasks::new(runtime, liveness.clone(), tracker);
    let (notices_tx, notices_rx) = mpsc::channel(16);
    let engine_metrics = EngineMetrics::new(&registry, &reasons);
    let engine_task =
        task::run_engine(engine, inputs_rx, publish, engine_metrics, shutdown.clone());
    tasks.spawn("engine", &shutdown, engine_task);
    let drain = Drain::spawn(
        config.drain.clone(),
        traffic,
        inputs_tx.clone(),
        DrainMetrics::new(&registry, traffic_on),
        identity.is_some().then(|| notices_tx.clone()),
        &tasks,
        &shutdown,
    );
    // Probes stop when a drain starts: sidewatch then leaves the app alone.
    for (config, prober) in probers {
        let name = config.signal().to_string();
        let on_watched_port = watched_port.is_some() && config.port() == watched_port;
        let watcher = ProbeWatcher {
            config,
            prober,
            metrics: probe_metrics.clone(),
            inputs: inputs_tx.clone(),
            own: on_watched_port.then(|| own.clone()),
        };
        tasks.spawn(name, drain.draining(), watcher.run());
    }
    let (app_tx, app_rx) = watch::channel(AppContainer::default());
    if let Some(plan) = memory_plan {
        let watcher = MemoryWatcher {
            discovery: Discovery::new(identity.is_some().then_some(app_rx)),
            plan,
            config: config.memory.clone(),
            inputs: inputs_tx.clone(),
            metrics: MemoryMetrics::new(&registry),
            notices: identity.is_some().then(|| notices_tx.clone()),
            tasks: tasks.scope(&shutdown),
        };
        tasks.spawn("memory", &shutdown, watcher.run());
    }
    if let Some(port) = config.app_port() {
        let watcher = OverloadWatcher {
            watch: ListenWatch::new(port),
            config: config.overload.clone(),
            metrics: OverloadMetrics::new(&registry),
            inputs: config.overload.signal.then(|| inputs_tx.clone()),
        };
        tasks.spawn("overload", &shutdown, watcher.run());
    }
    if let Some(identity) = identity {
        let watcher = KubeWatcher {
            identity,
            config: config.kubernetes.clone(),
            inputs: inputs_tx.clone(),
            metrics: KubeMetrics::new(&registry),
            verdict: verdict.clone(),
            notices: notices_rx,
            app: app_tx,
        };
        watcher.spawn(&tasks, &shutdown);
    }
    if let Some(pattern) = config.process.pattern.clone() {
        let watcher = ProcessWatcher {
            pattern,
            poll: config.memory.interval,
            inputs: inputs_tx.clone(),
            exits: process::exits_metric(&registry),
        };
        tasks.spawn(Signal::Process.to_string(), &shutdown, watcher.run());
    }

    let admin = Arc::new(Admin {
        verdict: verdict.clone(),
        metrics: AdminMetrics::new(&registry),
        registry,
        drain: drain.clone(),
        access,
        liveness,
        accepted,
        scraped: watch::Sender::new(None),
    });
    let scraped = admin.scraped.subscribe();
    let server = tokio::spawn(server::serve(listener, admin, shutdown.clone()));
    Ok(Running {
        local_addr,
        verdict,
        drain,
        scraped,
        shutdown,
        tasks,
        server,
    })
}

/// The app port's traffic watch for the drain, on `drain.port` or the first critical probe's port.
fn traffic_watcher(
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

mod run;

use run::spawn_watch_runtime;
pub use run::{run, Running};

#[cfg(test)]
mod tests;
