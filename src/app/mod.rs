//! Start-up: bind, spawn the watch runtime (probes and engine) and the admin server. The one
//! shutdown path around it (signals first, drain, linger, bounded stop) is `run.rs`.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::{Agent, AgentMetrics};
use crate::config::Config;
use crate::drain::{Access, Drain, DrainMetrics};
use crate::engine::bus::Published;
use crate::engine::task;
use crate::engine::Engine;
use crate::kubernetes;
use crate::liveness::{Liveness, Tasks};
use crate::memory;
use crate::metrics::{Feature, Registry};
use crate::probe::ProbeSetupError;
use crate::server::{self, Admin, AdminMetrics};
use crate::traffic::{OwnSockets, TrafficSource, TrafficWatcher};

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
    let (memory_plan, memory_why) = plan_memory(&config)?;
    let listener = bind(config.listen).await?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;

    let identity = kubernetes::connect(&config.kubernetes).await?;
    let (parts, notices) = inputs::declare(&config, memory_plan, identity)?;
    let registry = Registry::new();
    let mut engine = Engine::with_drain_readiness(config.drain.readiness);
    if !parts.iter().any(|p| p.feature == Feature::Memory) {
        engine.not_watched("memory", memory_why);
    }
    let engine_metrics = inputs::register(&parts, &registry, &mut engine, SystemTime::now());
    let accepted = Arc::new(AtomicU64::new(0));
    let own = Arc::new(OwnSockets::default());
    let traffic = inputs::traffic_watcher(&config, accepted.clone(), own.clone())?;
    let watched_port = traffic.as_ref().map(TrafficWatcher::port);
    let traffic_on = traffic.is_some();
    let agent_listener = match config.agent.listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
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
    let engine_task =
        task::run_engine(engine, inputs_rx, publish, engine_metrics, shutdown.clone());
    tasks.spawn("engine", &shutdown, engine_task);
    let drain = Drain::spawn(
        config.drain.clone(),
        traffic,
        inputs_tx.clone(),
        DrainMetrics::new(&registry, traffic_on),
        notices,
        &tasks,
        &shutdown,
    );
    let (overloaded, overloaded_rx) = watch::channel(false);
    let wiring = inputs::Wiring {
        registry: &registry,
        inputs: &inputs_tx,
        tasks: &tasks,
        shutdown: &shutdown,
        draining: drain.draining(),
        verdict: &verdict,
        own: &own,
        watched_port,
        overloaded: &overloaded,
    };
    for part in parts {
        part.start(&wiring);
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
    let here = tasks.on(tokio::runtime::Handle::current());
    let agent = agent_listener.map(|listener| {
        let agent = Agent {
            config: config.agent.clone(),
            verdict: verdict.clone(),
            overloaded: overloaded_rx,
            metrics: AgentMetrics::new(&admin.registry),
            accepted: admin.accepted.clone(),
        };
        (agent, listener)
    });
    let scraped = serve_outputs(&here, &shutdown, admin, listener, agent);
    Ok(Running {
        local_addr,
        verdict,
        drain,
        scraped,
        shutdown,
        tasks,
    })
}

/// The memory source, or why there is none; an error when nothing at all would be watched.
fn plan_memory(config: &Config) -> Result<(Option<memory::Plan>, String), StartError> {
    let (plan, why) = memory::plan(
        &config.memory,
        config.process.pattern.as_deref(),
        config.kubernetes.app_container.as_deref(),
    )?;
    match &plan {
        Some(_) => tracing::info!(source = %why, "memory: source chosen"),
        None => tracing::info!(why = %why, "memory: no source, memory signals off"),
    }
    if config.probes.0.is_empty() && plan.is_none() && config.process.pattern.is_none() {
        return Err(StartError::NothingToWatch);
    }
    Ok((plan, why))
}

/// The ports sidewatch answers on, on the caller's runtime, off the watch one: a flood on them
/// must not delay a probe. If the admin server dies, /livez cannot answer at all: the kubelet's
/// probe fails on the refused connection, which is the restart /livez would have asked for.
/// Hands back when `/metrics` was last scraped, for the linger after a drain.
fn serve_outputs(
    here: &Tasks,
    shutdown: &CancellationToken,
    admin: Arc<Admin>,
    listener: TcpListener,
    agent: Option<(Agent, TcpListener)>,
) -> watch::Receiver<Option<Instant>> {
    if let Some((agent, listener)) = agent {
        here.spawn("agent", shutdown, agent.serve(listener, shutdown.clone()));
    }
    let scraped = admin.scraped.subscribe();
    let server = server::serve(listener, admin, shutdown.clone());
    here.spawn_graceful("admin server", shutdown, server);
    scraped
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    crate::net::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })
}

mod run;

use run::spawn_watch_runtime;
pub use run::{run, Running};

mod inputs;
#[cfg(test)]
mod tests;
