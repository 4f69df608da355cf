//! `sidewatch run`'s lifecycle around `start`: the signal handlers first, then the start (a
//! signal during it ends the process: nothing serves yet), then on SIGTERM or SIGINT the drain,
//! the linger for its outcome's scrape, and a bounded stop; a second signal aborts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{start, StartError};
use crate::config::{Config, DrainConfig};
use crate::drain::Drain;
use crate::engine::bus::{DrainEnd, Published};
use crate::lifecycle::{self, Signals, Started};
use crate::liveness::{Scope, Tasks};

/// A started sidewatch: what `run` and the demo observe and drive.
pub struct Running {
    pub local_addr: SocketAddr,
    pub verdict: watch::Receiver<Arc<Published>>,
    pub drain: Drain,
    pub(super) scraped: watch::Receiver<Option<Instant>>,
    /// The one shutdown path: cancelling it stops every task, the admin server among them.
    pub(super) shutdown: CancellationToken,
    pub(super) tasks: Tasks,
}

/// Starts the watch runtime (probes, watchers, engine, drain) on a thread of its own, until
/// `shutdown` and its tasks' end: a flood on the admin port must not delay a probe. Returns its
/// handle.
pub(super) fn spawn_watch_runtime(
    shutdown: CancellationToken,
    tasks: TaskTracker,
) -> Result<tokio::runtime::Handle, StartError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("sidewatch-watch".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(crate::lifecycle::BLOCKING_THREADS)
                // Its blocking calls' threads, told apart from the serving runtime's.
                .thread_name("sidewatch-block")
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

/// `sidewatch run`: serve until SIGTERM or SIGINT, drain, linger until the outcome is scraped,
/// exit 0. A second signal aborts.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let probes: Vec<String> = config.probes.0.iter().map(|p| p.name.clone()).collect();
    let drain = config.drain.clone();
    let mut running = match lifecycle::start_unless_signalled(&mut signals, start(config)).await? {
        Started::Up(running) => running,
        Started::Stopped => return Ok(()),
    };
    tracing::info!(listen = %running.local_addr, ?probes, version = env!("CARGO_PKG_VERSION"), "sidewatch started");
    let by = signals.next().await;
    let end = signals
        .unless_again(running.drain.start(by))
        .await
        .map_err(|again| anyhow::anyhow!("{again} during the drain: exiting at once"))?;
    match signals.unless_again(running.linger(&end, &drain)).await {
        Ok(seen) => {
            tracing::info!(
                outcome = end.outcome,
                seconds = end.duration_seconds,
                scraped = seen,
                "exiting after drain"
            );
        }
        Err(again) => tracing::info!("{again} while lingering: exiting"),
    }
    running.stop().await;
    Ok(())
}

/// The longest the tasks are given, all together, to end at exit: the watch runtime's end at
/// their next await, the admin server's connections within its grace (1 s) of the stop.
const STOP_WITHIN: Duration = Duration::from_secs(2);

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
    /// way answered whole), all waited for `STOP_WITHIN` at most.
    pub async fn stop(self) {
        self.shutdown.cancel();
        if !self.tasks.ended(STOP_WITHIN).await {
            tracing::debug!("tasks or admin connections still running at exit");
        }
    }

    /// Tasks on the caller's runtime in this sidewatch's lifecycle (the demo's sample app):
    /// stopped by `stop` and waited for with the rest; one that dies fails `/livez`.
    pub fn scope_here(&self) -> Scope {
        let here = self.tasks.on(tokio::runtime::Handle::current());
        here.scope(&self.shutdown)
    }
}
