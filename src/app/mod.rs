//! Start-up and the one shutdown path: bind, spawn the watch runtime (probes and engine) and the
//! admin server, then on SIGTERM or SIGINT drain and exit; a second signal aborts.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, DrainConfig};
use crate::container::{AppContainer, Discovery};
use crate::drain::{Access, Drain, DrainMetrics};
use crate::engine::bus::{DrainEnd, Published};
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

/// A started sidewatch: what `run` and the demo observe and drive.
pub struct Running {
    pub local_addr: SocketAddr,
    pub verdict: watch::Receiver<Arc<Published>>,
    pub drain: Drain,
    scraped: watch::Receiver<Option<Instant>>,
    /// The one shutdown path: cancelling it stops every task and the admin server.
    shutdown: CancellationToken,
    tasks: Tasks,
    server: tokio::task::JoinHandle<()>,
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

/// Starts the watch runtime (probes, watchers, engine, drain) on a thread of its own, until
/// `shutdown` and its tasks' end: a flood on the admin port must not delay a probe. Returns its
/// handle.
fn spawn_watch_runtime(
    shutdown: CancellationToken,
    tasks: TaskTracker,
) -> Result<tokio::runtime::Handle, StartError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("sidewatch-watch".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(async {
                        shutdown.cancelled().await;
                        tasks.close();
                        let _ = tokio::time::timeout(STOP_WITHIN, tasks.wait()).await;
                    });
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .map_err(StartError::Runtime)?;
    rx.recv()
        .map_err(|_| StartError::Runtime(std::io::Error::other("the watch thread ended at start")))?
        .map_err(StartError::Runtime)
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

/// `sidewatch run`: hook SIGTERM and SIGINT before serving (once ready, a SIGTERM must drain, not
/// kill), serve, drain, linger until the outcome is scraped, exit 0. A second signal aborts.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let probes: Vec<String> = config.probes.0.iter().map(|p| p.name.clone()).collect();
    let drain = config.drain.clone();
    let mut signals = Signals::new()?;
    let mut running = start(config).await?;
    tracing::info!(listen = %running.local_addr, ?probes, version = env!("CARGO_PKG_VERSION"), "sidewatch started");
    let by = signals.next().await;
    let drained = running.drain.start(by);
    let end = tokio::select! {
        end = drained => end,
        by = signals.next() => anyhow::bail!("{by} during the drain: exiting at once"),
    };
    tokio::select! {
        seen = running.linger(&end, &drain) => {
            tracing::info!(outcome = end.outcome, seconds = end.duration_seconds, scraped = seen, "exiting after drain");
        }
        by = signals.next() => tracing::info!("{by} while lingering: exiting"),
    }
    running.stop().await;
    Ok(())
}

/// The longest the admin server is given to finish the requests it is in at exit.
const STOP_WITHIN: Duration = Duration::from_secs(1);

impl Running {
    /// Keeps serving after the drain until a `/metrics` scrape began after it ended (so that
    /// Prometheus has its outcome) and its Event is posted, for `drain.linger` at most and never
    /// past 1 s before the kubelet's SIGKILL (`drain.grace_period` from the drain's start).
    /// True when the outcome was scraped.
    async fn linger(&mut self, end: &DrainEnd, config: &DrainConfig) -> bool {
        let kill = end.began + config.grace_period.saturating_sub(Duration::from_secs(1));
        let deadline = (end.ended + config.linger).min(kill);
        let ended = end.ended;
        let scraped = self.scraped.wait_for(|at| at.is_some_and(|at| at > ended));
        let both = futures_util::future::join(scraped, self.drain.event_done());
        tokio::time::timeout_at(deadline.into(), both).await.is_ok()
    }

    /// The one way out: every task told to stop, the admin server closed (the requests under
    /// way answered whole), both waited for `STOP_WITHIN` at most.
    pub async fn stop(self) {
        self.shutdown.cancel();
        if !self.tasks.ended(STOP_WITHIN).await {
            tracing::debug!("tasks still running at exit");
        }
        if tokio::time::timeout(STOP_WITHIN, self.server)
            .await
            .is_err()
        {
            tracing::debug!("admin connections still open at exit");
        }
    }
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests;
