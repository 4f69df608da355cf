//! The Kubernetes API: watch the own Pod (restarts, OOMKilled, CrashLoopBackOff, deletion), patch
//! the readiness-gate condition on every readiness change, and post Events. Losing the API server
//! never stops the local signals: errors are counted, logged once per change and retried.

pub mod config;
pub mod gate;
mod limit;
mod op;
pub mod pod;
mod publish;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Api, Client, Resource};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::container::AppContainer;
use crate::engine::bus::{Input, Notice, Published};
use crate::engine::{Kube, Observation, Signal};
use crate::liveness::Tasks;
use crate::metrics::{self, Registry};
use crate::reason::Reason;
use crate::units::Switch;
use crate::util::sleep_until;
use config::KubernetesConfig;
pub use op::Op;
use pod::Tracker;
use publish::Publisher;

/// After a failed watch or list, sidewatch waits this long before listing again, doubling up to
/// `WATCH_RETRY_MAX`, each wait jittered so that the pods of a cluster do not all come back to a
/// recovering API server at once.
const WATCH_RETRY_MIN: Duration = Duration::from_millis(500);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(10);
/// The client's read timeout: above the watcher's own idle timeout (290 s + 5 s), so a quiet watch
/// never trips it, and a list that never answers is given up after it instead of never.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// The pod sidewatch runs in, and a client for its API server: from `connect`, or built from
/// any `Client` (the in-process tests hand one that serves the fake API server without a socket).
pub struct Identity {
    pub client: Client,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// `kubernetes.enabled: true` that cannot be met.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "kubernetes.enabled is true but POD_NAME and POD_NAMESPACE (downward API) are not both set"
    )]
    NoIdentity,
    #[error("kubernetes.enabled is true but no config was found: {0}")]
    NoConfig(kube::config::InferConfigError),
    #[error("kubernetes: the look for a config ended: {0}")]
    Infer(tokio::task::JoinError),
    #[error("kubernetes client: {0}")]
    Client(kube::Error),
}

/// Decides whether to talk to the API server, and says why. `enabled: true` that cannot be met
/// is an error; `auto` quietly stays local.
pub async fn connect(config: &KubernetesConfig) -> Result<Option<Identity>, ConnectError> {
    if config.enabled == Switch::Off {
        tracing::info!("kubernetes: off (kubernetes.enabled is false)");
        return Ok(None);
    }
    let required = config.enabled == Switch::On;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (Some(pod), Some(namespace)) = (env("POD_NAME"), env("POD_NAMESPACE")) else {
        if required {
            return Err(ConnectError::NoIdentity);
        }
        tracing::info!(
            why = "POD_NAME and POD_NAMESPACE (downward API) are not both set",
            "kubernetes: off"
        );
        return Ok(None);
    };
    crate::tls::install_crypto_provider();
    // kube reads the kubeconfig and the service-account files with blocking calls: on the
    // blocking pool, so that a stalled file system holds no worker (the sidecar has one, which
    // also hears the signals).
    let handle = tokio::runtime::Handle::current();
    let inferred = tokio::task::spawn_blocking(move || handle.block_on(kube::Config::infer()))
        .await
        .map_err(ConnectError::Infer)?;
    let client = match inferred {
        Ok(mut c) => {
            c.read_timeout = Some(READ_TIMEOUT);
            // From each request on, not from when its pooled connection went idle.
            c.reset_reader_on_write = true;
            Client::try_from(c).map_err(ConnectError::Client)?
        }
        Err(e) if !required => {
            tracing::info!(error = %e, "kubernetes: off: no in-cluster config and no kubeconfig");
            return Ok(None);
        }
        Err(e) => return Err(ConnectError::NoConfig(e)),
    };
    let container = env("CONTAINER_NAME").unwrap_or_else(|| "sidewatch".into());
    tracing::info!(%namespace, %pod, %container, "kubernetes: on, watching the own pod");
    Ok(Some(Identity {
        client,
        namespace,
        pod,
        container,
    }))
}

/// The Kubernetes part's metrics, only when it runs.
#[derive(Clone)]
pub struct KubeMetrics {
    restarts: prometheus::IntCounterVec,
    pub(crate) errors: prometheus::IntCounterVec,
    pub(crate) events_dropped: prometheus::IntCounter,
}

impl KubeMetrics {
    pub fn new(registry: &Registry) -> Self {
        let restarts = registry.register(metrics::counter_vec(
            "sidewatch_container_restarts_total",
            "Container restarts the kubelet reported, by container of the pod and last termination \
             reason (oom_killed: raise the memory limit). Every container's series is there from the first look at the pod.",
            &["app_container", "reason"],
        ));
        let errors = registry.register(metrics::counter_vec(
            "sidewatch_kube_errors_total",
            "Failed Kubernetes API requests by operation; local signals keep deciding. Check RBAC (403) and API server reachability; \
             patch_status failing means the readiness gate is not being set.",
            &["op"],
        ));
        for op in Op::ALL {
            errors.with_label_values(&[op.as_str()]);
        }
        let events_dropped = registry.register(metrics::counter(
            "sidewatch_events_dropped_total",
            "Kubernetes Events not posted because of the rate limit: the app is flapping, read the logs.",
        ));
        KubeMetrics {
            restarts,
            errors,
            events_dropped,
        }
    }

    /// Every container's restart series at zero, so that an alert's `increase()` sees its first.
    pub(crate) fn containers(&self, names: &[String]) {
        for name in names {
            for reason in pod::RestartReason::ALL {
                self.restarts.with_label_values(&[name, reason.as_str()]);
            }
        }
    }
}

/// What the pod watcher tells the publisher.
#[derive(Clone, Debug, PartialEq)]
struct PodInfo {
    has_gate: bool,
    /// The gate's condition as the watch last saw it.
    gate: Option<gate::Stored>,
    reference: ObjectReference,
    /// Bumped at each (re)list, so the gate is asserted again after a reconnect.
    relists: u64,
}

pub struct KubeWatcher {
    pub identity: Identity,
    pub config: KubernetesConfig,
    pub inputs: mpsc::Sender<Input>,
    pub metrics: KubeMetrics,
    pub verdict: watch::Receiver<Arc<Published>>,
    pub notices: mpsc::Receiver<Notice>,
    /// Where the app container's ID and limit go (the memory watcher's discovery).
    pub app: watch::Sender<AppContainer>,
}

impl KubeWatcher {
    /// Two tasks until `stop`: the own pod's watch (an input), and the publisher of the gate and
    /// the Events (an output), which the watch tells what the pod is.
    pub fn spawn(self, tasks: &Tasks, stop: &CancellationToken) {
        for (name, task) in self.tasks() {
            tasks.spawn(name, stop, task);
        }
    }

    /// The two tasks `spawn` runs, named, for a caller that runs them itself (the paused-time
    /// tests, on their own runtime); each returns only when its channels close.
    pub fn tasks(self) -> [(&'static str, BoxFuture<'static, ()>); 2] {
        let KubeWatcher {
            identity,
            config,
            inputs,
            metrics,
            verdict,
            notices,
            app,
        } = self;
        let (info_tx, info_rx) = watch::channel(None);
        let publisher = Publisher::new(&identity, &config, metrics.clone());
        let publisher = publisher.run(verdict, info_rx, notices).boxed();
        let tracker = Tracker::new(
            config.app_container.clone(),
            identity.container.clone(),
            config.readiness_gate.clone(),
            config.restart_cooldown,
        );
        let pods = PodWatcher {
            api: Api::namespaced(identity.client, &identity.namespace),
            name: identity.pod,
            tracker,
            inputs,
            metrics,
            terminating: false,
            info: info_tx,
            relists: 0,
            failing: false,
            app,
        };
        [
            ("kubernetes publisher", publisher),
            ("kubernetes", pods.run().boxed()),
        ]
    }
}

struct PodWatcher {
    api: Api<Pod>,
    name: String,
    tracker: Tracker,
    inputs: mpsc::Sender<Input>,
    metrics: KubeMetrics,
    /// Seen terminating (said once in the log; the engine has it as the pod signal).
    terminating: bool,
    info: watch::Sender<Option<PodInfo>>,
    relists: u64,
    failing: bool,
    app: watch::Sender<AppContainer>,
}

impl PodWatcher {
    async fn run(mut self) {
        // Until the API server has answered, the Kubernetes signals do not veto readiness.
        for signal in Kube::ALL {
            self.send(signal, Observation::Success).await;
        }
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let api = self.api.clone();
        let start = move || watcher::watcher(api.clone(), config.clone()).boxed();
        let mut events = Some(start());
        let mut backoff = watch_backoff();
        let mut retry_at: Option<Instant> = None;
        loop {
            let cooldown = self.tracker.hold_until();
            tokio::select! {
                event = next(&mut events), if events.is_some() => match event {
                    Some(Ok(event)) => {
                        if matches!(event, WatchEvent::InitDone) {
                            backoff = watch_backoff();
                        }
                        self.on_event(event).await
                    }
                    Some(Err(e)) => {
                        // Start over with a list after a pause: the list says at once when the
                        // API server is back (kube's own resumption of a watch says nothing when
                        // the pod has not changed), and the gate is asserted again after it.
                        self.on_error(&e);
                        events = None;
                        let wait = backoff.next().unwrap_or(WATCH_RETRY_MAX);
                        retry_at = Some(limit::now() + wait);
                    }
                    None => return,
                },
                _ = sleep_until(retry_at), if events.is_none() => {
                    retry_at = None;
                    events = Some(start());
                }
                _ = sleep_until(cooldown), if cooldown.is_some() => {
                    let app = self.tracker.app_observation(limit::now());
                    self.send(Kube::App, app).await;
                }
            }
        }
    }

    async fn on_event(&mut self, event: WatchEvent<Pod>) {
        // `Init` opens every relist before its request is made: only what the API server sent
        // says it is back, or each retry of one outage would log the outage again.
        if self.failing && !matches!(event, WatchEvent::Init) {
            self.failing = false;
            tracing::info!("kubernetes: watching the pod again");
        }
        match event {
            WatchEvent::Apply(pod) | WatchEvent::InitApply(pod) => self.on_pod(&pod).await,
            WatchEvent::InitDone => {
                self.relists += 1;
                self.info.send_modify(|info| {
                    if let Some(info) = info {
                        info.relists = self.relists;
                    }
                });
            }
            WatchEvent::Init | WatchEvent::Delete(_) => {}
        }
    }

    async fn on_pod(&mut self, pod: &Pod) {
        let update = self.tracker.observe(pod, pod::Now::read());
        self.metrics.containers(&update.containers);
        for r in &update.restarts {
            self.metrics
                .restarts
                .with_label_values(&[&r.container, r.reason.as_str()])
                .inc_by(r.count);
            tracing::warn!(container = %r.container, reason = r.reason.as_str(), count = r.count, "container restarted");
        }
        self.send(Kube::App, update.app).await;
        self.app.send_if_modified(|app| {
            let changed = *app != update.app_container;
            if changed {
                tracing::info!(id = ?update.app_container.id, limit = ?update.app_container.limit, "kubernetes: the app container");
            }
            *app = update.app_container.clone();
            changed
        });
        if update.terminating {
            if !std::mem::replace(&mut self.terminating, true) {
                tracing::info!("kubernetes: the pod is terminating; /drain is open to the kubelet");
            }
            let message = "the pod has a deletionTimestamp".to_owned();
            let failure = Observation::Failure {
                reason: Reason::Terminating,
                message,
            };
            self.send(Kube::Pod, failure).await;
        }
        let info = PodInfo {
            has_gate: update.has_gate,
            gate: update.gate,
            reference: pod.object_ref(&()),
            relists: self.relists,
        };
        self.info.send_if_modified(|current| {
            let changed = current.as_ref() != Some(&info);
            *current = Some(info);
            changed
        });
    }

    fn on_error(&mut self, e: &watcher::Error) {
        self.metrics
            .errors
            .with_label_values(&[Op::Watch.as_str()])
            .inc();
        if !self.failing {
            self.failing = true;
            tracing::warn!(error = %e, "kubernetes: cannot watch the pod; listing again with backoff, local signals still decide");
        }
    }

    async fn send(&self, signal: Kube, observation: Observation) {
        let input = Input::Observe {
            signal: Signal::Kube(signal),
            observation,
        };
        let _ = self.inputs.send(input).await;
    }
}

async fn next<S: futures_util::Stream + Unpin>(stream: &mut Option<S>) -> Option<S::Item> {
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// The waits between relists after failures: doubling from `WATCH_RETRY_MIN` to
/// `WATCH_RETRY_MAX`, each with a random part, for ever.
fn watch_backoff() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(WATCH_RETRY_MIN)
        .with_max_delay(WATCH_RETRY_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}
