//! `sidewatch node`: the node agent, one per node (a DaemonSet), serving each injected pod's
//! sidecar its own pod's memory as read from the node's cgroup tree (memory source `node`;
//! `memory::wire` is the protocol). One listener, plain HTTP, meant for a pod's traffic to its
//! own node's IP:
//!
//! - `GET /v1/memory?namespace=NS&pod=NAME[&container=APP][&interval=DUR]` with
//!   `Authorization: Bearer <projected token for sidewatch.io/node>`: 200 and a stream of
//!   `application/x-ndjson` lines; 400 for a malformed request, 401 for a token not valid for
//!   the audience, 403 for another pod's or another node's, 404 for no such container or cgroup
//!   yet, 429 at the stream caps, 503 when the API server cannot be asked now
//! - `GET /livez` 200 while every task lives (503 `dead: …` once one died: a stream's task or
//!   its kernel notifications panicked or ended while still needed), `GET /readyz` 200 while
//!   serving
//! - `GET /metrics` Prometheus text format 0.0.4
//!
//! See docs/node-agent.md.

mod auth;
mod handle;
mod locate;
mod metrics;
mod serve;
mod stream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::liveness::{Liveness, Tasks};

pub use locate::{Root, RootError};
pub use metrics::NodeMetrics;

/// A stream's interval is kept within these whatever a client asks: faster would make the agent
/// a load on the node, slower would hide a climb from the sidecar's trend.
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);
pub const MAX_INTERVAL: Duration = Duration::from_secs(10);
/// Streams of one pod at most: its sidecar needs one, and a restarting one briefly two.
pub const PER_POD: usize = 4;
/// API calls that take longer than this are answered 503: the sidecar retries.
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest the streams and the server's connections are given, together, to end at exit: the
/// streams end at once, a connection's request within the server's grace (1 s).
const STOP_WITHIN: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Address to serve the streams, /livez, /readyz and /metrics on.
    #[arg(long, env = "SIDEWATCH_NODE_LISTEN", default_value = "[::]:9465")]
    pub listen: SocketAddr,
    /// The node's cgroup tree (v2, or v1 with the memory hierarchy at memory/), mounted read-only
    /// into the agent's container; or a v1 memory hierarchy itself.
    #[arg(
        long,
        env = "SIDEWATCH_NODE_CGROUP_ROOT",
        default_value = "/sys/fs/cgroup"
    )]
    pub cgroup_root: PathBuf,
    /// The node this agent serves (downward API spec.nodeName): pods elsewhere are refused.
    #[arg(long, env = "NODE_NAME", value_parser = nonempty)]
    pub node_name: String,
    /// How often a stream looks when its client does not ask (kernel events come at once).
    #[arg(long, env = "SIDEWATCH_NODE_INTERVAL", default_value = "250ms", value_parser = interval)]
    pub interval: Duration,
    /// Streams open at once, all pods together; the node's pod capacity is a good value.
    #[arg(long, env = "SIDEWATCH_NODE_MAX_STREAMS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: u32,
}

/// An empty name (a downward-API variable left unset) would refuse every pod, silently.
fn nonempty(text: &str) -> Result<String, String> {
    match text.trim() {
        "" => Err("must not be empty".into()),
        name => Ok(name.to_owned()),
    }
}

fn interval(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
        return Err(format!(
            "must be within {MIN_INTERVAL:?} and {MAX_INTERVAL:?}"
        ));
    }
    Ok(d)
}

/// What every request's handler shares.
pub(crate) struct Agent {
    pub root: Root,
    pub client: Client,
    pub node: String,
    pub interval: Duration,
    pub metrics: NodeMetrics,
    pub registry: crate::metrics::Registry,
    pub slots: serve::Slots,
    pub shutdown: CancellationToken,
    /// The server, each stream and its notifications: spawned here, stopped by `shutdown`.
    pub tasks: Tasks,
    /// Whether one of `tasks` died, for `/livez`.
    pub liveness: Liveness,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Root(#[from] RootError),
    #[error("no Kubernetes client config (in-cluster or KUBECONFIG): {0}")]
    Config(kube::config::InferConfigError),
    #[error("kubernetes client: {0}")]
    Client(kube::Error),
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    Signals(#[from] crate::lifecycle::SignalsError),
    #[error("{0} again while stopping: aborted")]
    Aborted(&'static str),
}

/// Serves until SIGTERM or SIGINT: then stops accepting, ends every stream and returns.
pub async fn run(args: NodeArgs) -> Result<(), StartError> {
    // Handlers first: a signal during start-up must not kill PID 1 unhandled.
    let mut signals = crate::lifecycle::Signals::install()?;
    let root = Root::detect(&args.cgroup_root)?;
    if root.read_only {
        tracing::info!(root = %root.memory.display(), version = %root.version,
            "node: the cgroup tree is mounted read-only: v1 OOM eventfds and PSI triggers cannot be armed; streams see those at their interval");
    }
    crate::tls::install_crypto_provider();
    let mut config = kube::Config::infer().await.map_err(StartError::Config)?;
    config.connect_timeout = Some(API_TIMEOUT);
    config.read_timeout = Some(API_TIMEOUT);
    let client = Client::try_from(config).map_err(StartError::Client)?;
    let listener = crate::net::bind(args.listen)
        .await
        .map_err(|error| StartError::Listen {
            addr: args.listen,
            error,
        })?;
    let registry = crate::metrics::Registry::new();
    let metrics = NodeMetrics::new(&registry);
    let shutdown = CancellationToken::new();
    let liveness = Liveness::default();
    let tasks = Tasks::here(&liveness);
    let agent = std::sync::Arc::new(Agent {
        root,
        client,
        node: args.node_name,
        interval: args.interval,
        metrics: metrics.clone(),
        registry,
        slots: serve::Slots::new(args.max_streams as usize, PER_POD, metrics.streams),
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
        liveness,
    });
    let listen = listener.local_addr().map_err(|error| StartError::Listen {
        addr: args.listen,
        error,
    })?;
    tracing::info!(listen = %listen, node = %agent.node, root = %agent.root.memory.display(), version = %agent.root.version, interval = ?agent.interval, "sidewatch started (node agent)");
    let server = serve::serve(listener, agent.clone(), args.max_streams as usize);
    tasks.spawn_graceful("node server", &shutdown, server);
    let by = signals.next().await;
    tracing::info!("{by}: ending every stream and exiting");
    shutdown.cancel();
    let ended = signals
        .unless_again(tasks.ended(STOP_WITHIN))
        .await
        .map_err(StartError::Aborted)?;
    if !ended {
        tracing::debug!("streams or connections still open at exit");
    }
    Ok(())
}
