//! One sidecar's stream: a task that looks at its pod's cgroup every interval and at once when
//! the kernel tells of an event, and writes each look as a `wire::Line` into a bounded channel
//! that the response body drains. When the container's cgroup goes (a restart), it says so,
//! then asks the API server for the pod's new container ID, with backoff, and goes on there.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kube::Client;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::auth::{self, Caller, Refusal};
use super::locate::Root;
use super::metrics::NodeMetrics;
use crate::liveness::Scope;
use crate::memory::cgroup::{CgroupDir, Version};
use crate::memory::read::{Files, ReadError};
use crate::memory::wire::Line;
use crate::memory::{events, sample};

/// Lines buffered for a reader that is behind: a few seconds at the default interval.
pub const BUFFERED_LINES: usize = 16;
/// A reader that takes none of its lines for this long is gone in all but name: the stream ends
/// (its memory must not grow, and its slot is another sidecar's).
const STALLED_FOR: Duration = Duration::from_secs(10);
const RELOCATE_MIN: Duration = Duration::from_millis(100);
const RELOCATE_MAX: Duration = Duration::from_secs(5);

/// Everything a stream needs to find its cgroup again after a restart.
pub struct Stream {
    pub root: Root,
    pub client: Client,
    pub caller: Caller,
    pub container: Option<String>,
    pub node: String,
    pub interval: Duration,
    pub metrics: NodeMetrics,
    /// The agent's tasks, where each directory's notifications run.
    pub scope: Scope,
}

/// The kernel notifications of one cgroup directory: stopped when dropped (they end normally),
/// so that no task outlives its stream or its directory. One that dies while armed fails
/// `/livez`, as the sidecar's memory watcher's do.
struct Armed(Option<Scope>);

impl Drop for Armed {
    fn drop(&mut self) {
        if let Some(scope) = &self.0 {
            scope.stop();
        }
    }
}

enum Flow {
    Go,
    Stop,
}

impl Stream {
    /// Streams `dir` until the client goes, the agent stops, or the pod is no longer the token's.
    pub async fn run(
        self,
        mut dir: CgroupDir,
        tx: mpsc::Sender<Bytes>,
        shutdown: CancellationToken,
    ) {
        let (wake_tx, mut wake_rx) = mpsc::channel(16);
        let mut armed = self.arm(&dir, &wake_tx);
        let mut files = Files::default();
        let mut stalled: Option<Instant> = None;
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                _ = ticker.tick() => {}
                Some(()) = wake_rx.recv() => {}
            }
            if !present(&dir.path) {
                // Its notifications died with it.
                drop(armed);
                let gone = ReadError::Gone {
                    path: dir.path.clone(),
                };
                if let Flow::Stop = self.send(&tx, &Line::from_read(&Err(gone)), &mut stalled) {
                    return;
                }
                let Some(next) = self.relocate(&dir, &tx, &shutdown, &mut stalled).await else {
                    return;
                };
                tracing::info!(pod = %self.caller.pod, namespace = %self.caller.namespace, dir = %next.path.display(), "node: the container's cgroup is back under a new ID");
                dir = next;
                files = Files::default();
                armed = self.arm(&dir, &wake_tx);
                ticker.reset_immediately();
                continue;
            }
            let read = match dir.version {
                Version::V1 => {
                    sample::sample_v1(&mut files, &dir.path, &dir.ancestors, dir.psi.as_deref())
                }
                Version::V2 => sample::sample_v2(&mut files, &dir.path, &dir.ancestors),
            };
            if let Flow::Stop = self.send(&tx, &Line::from_read(&read), &mut stalled) {
                return;
            }
        }
    }

    /// Arms the kernel's notifications where the mount lets them be (those that need a write
    /// cannot be on a read-only one: the interval covers, as start-up said once).
    fn arm(&self, dir: &CgroupDir, wake: &mpsc::Sender<()>) -> Armed {
        if self.root.read_only && dir.version == Version::V1 {
            // Every v1 notification is a write to cgroup.event_control.
            return Armed(None);
        }
        let scope = self.scope.child();
        let pod = format!("{}/{}", self.caller.namespace, self.caller.pod);
        let mut names = Vec::new();
        for (name, task) in events::notifiers(dir, wake) {
            scope.spawn(format!("node: stream of {pod}: {name}"), task);
            names.push(name);
        }
        tracing::debug!(dir = %dir.path.display(), events = ?names, "node: stream armed");
        Armed(Some(scope))
    }

    /// One line to the reader. A full channel drops the line (the counters in the next one are
    /// cumulative), and ends the stream once it has been full for `STALLED_FOR`.
    fn send(&self, tx: &mpsc::Sender<Bytes>, line: &Line, stalled: &mut Option<Instant>) -> Flow {
        match tx.try_send(Bytes::from(line.encode())) {
            Ok(()) => {
                *stalled = None;
                self.metrics.lines.inc();
                Flow::Go
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                let since = *stalled.get_or_insert_with(Instant::now);
                if since.elapsed() >= STALLED_FOR {
                    tracing::info!(pod = %self.caller.pod, namespace = %self.caller.namespace, "node: the reader takes no lines: stream ended");
                    return Flow::Stop;
                }
                Flow::Go
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Flow::Stop,
        }
    }

    /// The container's new cgroup, from the pod's status, tried again with backoff; the old
    /// directory's `gone` line again at every interval meanwhile. `None` to end the stream: the
    /// client or the agent went, or the pod is no longer the token's or this node's.
    async fn relocate(
        &self,
        old: &CgroupDir,
        tx: &mpsc::Sender<Bytes>,
        shutdown: &CancellationToken,
        stalled: &mut Option<Instant>,
    ) -> Option<CgroupDir> {
        use backon::BackoffBuilder;
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(RELOCATE_MIN)
            .with_max_delay(RELOCATE_MAX)
            .with_jitter()
            .without_max_times()
            .build();
        let mut ticker =
            tokio::time::interval_at((Instant::now() + self.interval).into(), self.interval);
        let mut retry_at = Instant::now() + backoff.next().unwrap_or(RELOCATE_MAX);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tx.closed() => return None,
                _ = ticker.tick() => {
                    let gone = ReadError::Gone { path: old.path.clone() };
                    if let Flow::Stop = self.send(tx, &Line::from_read(&Err(gone)), stalled) {
                        return None;
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(retry_at.into()) => {}
            }
            let asked = (self.caller.namespace.as_str(), self.caller.pod.as_str());
            let container = self.container.as_deref();
            match auth::target(&self.client, &self.caller, asked, container, &self.node).await {
                // Else the status still names the old container, or the new one's cgroup is
                // not made yet.
                Ok(target) => {
                    if let Ok(dir) = self
                        .root
                        .locate(&target.uid, target.container_id.as_deref())
                    {
                        return Some(dir);
                    }
                }
                Err(Refusal::Forbidden(why)) => {
                    tracing::info!(pod = %self.caller.pod, namespace = %self.caller.namespace, %why, "node: stream ended");
                    return None;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "node: the pod's new container is not known yet")
                }
            }
            retry_at = Instant::now() + backoff.next().unwrap_or(RELOCATE_MAX);
        }
    }
}

/// The directory is there. A stat error other than "not found" is left to the reads to tell.
fn present(path: &Path) -> bool {
    !matches!(std::fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}
