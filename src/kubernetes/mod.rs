//! The Kubernetes API: watch the own Pod (restarts, OOMKilled, CrashLoopBackOff, deletion), patch
//! the readiness-gate condition on every readiness change, and post Events. Losing the API server
//! never stops the local signals: errors are counted, logged once per change and retried.

pub mod pod;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use tokio::sync::{mpsc, watch};

use crate::config::{KubernetesConfig, Switch};
use crate::engine::{Observation, Verdict};
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::reason::Reason;
use crate::watcher::{Input, Published};
use pod::Tracker;

pub const APP: &str = "kube:app";
pub const POD: &str = "kube:pod";
pub const SIGNALS: [&str; 2] = [APP, POD];

/// At most this many Events in a burst, then one per `EVENT_REFILL`: a flapping app must not
/// flood the API server.
const EVENT_BURST: f64 = 5.0;
const EVENT_REFILL: Duration = Duration::from_secs(10);

/// The pod sidewatch runs in, and a client for its API server.
pub struct Identity {
    pub client: Client,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// Decides whether to talk to the API server, and says why. `enabled: true` that cannot be met
/// is an error; `auto` quietly stays local.
pub async fn connect(config: &KubernetesConfig) -> Result<Option<Identity>, String> {
    if config.enabled == Switch::Off {
        tracing::info!("kubernetes: off (kubernetes.enabled is false)");
        return Ok(None);
    }
    let required = config.enabled == Switch::On;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (Some(pod), Some(namespace)) = (env("POD_NAME"), env("POD_NAMESPACE")) else {
        let why = "POD_NAME and POD_NAMESPACE (downward API) are not both set";
        if required {
            return Err(format!("kubernetes.enabled is true but {why}"));
        }
        tracing::info!(why, "kubernetes: off");
        return Ok(None);
    };
    crate::tls::install_crypto_provider();
    let client = match kube::Config::infer().await {
        Ok(c) => Client::try_from(c).map_err(|e| format!("kubernetes client: {e}"))?,
        Err(e) if !required => {
            tracing::info!(error = %e, "kubernetes: off: no in-cluster config and no kubeconfig");
            return Ok(None);
        }
        Err(e) => {
            return Err(format!(
                "kubernetes.enabled is true but no config was found: {e}"
            ))
        }
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

/// What the pod watcher tells the publisher.
#[derive(Clone, Debug, PartialEq)]
struct PodInfo {
    has_gate: bool,
    reference: ObjectReference,
    /// Bumped at each (re)list, so the gate is asserted again after a reconnect.
    relists: u64,
}

/// Notices from other watchers that deserve an Event (the cgroup watcher's OOM kills).
#[derive(Debug)]
pub enum Notice {
    OomKill { kills: u64, message: String },
}

pub struct KubeWatcher {
    pub identity: Identity,
    pub config: KubernetesConfig,
    pub inputs: mpsc::Sender<Input>,
    pub metrics: Metrics,
    pub terminating: Arc<AtomicBool>,
    pub verdict: watch::Receiver<Arc<Published>>,
    pub notices: mpsc::Receiver<Notice>,
}

impl KubeWatcher {
    pub async fn run(self, liveness: Liveness) {
        let _guard = liveness.register("kubernetes");
        let KubeWatcher {
            identity,
            config,
            inputs,
            metrics,
            terminating,
            verdict,
            notices,
        } = self;
        let (info_tx, info_rx) = watch::channel(None);
        let publisher = Publisher {
            pods: Api::namespaced(identity.client.clone(), &identity.namespace),
            recorder: config.events.then(|| {
                Recorder::new(
                    identity.client.clone(),
                    Reporter {
                        controller: "sidewatch".into(),
                        instance: Some(identity.pod.clone()),
                    },
                )
            }),
            name: identity.pod.clone(),
            gate: config.readiness_gate.clone(),
            metrics: metrics.clone(),
            tokens: EVENT_BURST,
            refilled: Instant::now(),
            failing: Default::default(),
        };
        tokio::spawn(publisher.run(verdict, info_rx, notices));
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
            terminating,
            info: info_tx,
            relists: 0,
            failing: false,
        };
        pods.run().await;
    }
}

struct PodWatcher {
    api: Api<Pod>,
    name: String,
    tracker: Tracker,
    inputs: mpsc::Sender<Input>,
    metrics: Metrics,
    terminating: Arc<AtomicBool>,
    info: watch::Sender<Option<PodInfo>>,
    relists: u64,
    failing: bool,
}

impl PodWatcher {
    async fn run(mut self) {
        // Until the API server has answered, the Kubernetes signals do not veto readiness.
        for signal in SIGNALS {
            self.send(signal, Observation::Success).await;
        }
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut events = watcher::watcher(self.api.clone(), config)
            .default_backoff()
            .boxed();
        loop {
            let cooldown = self.tracker.hold_until();
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => self.on_event(event).await,
                    Some(Err(e)) => self.on_error(&e),
                    None => return,
                },
                _ = sleep_until_wall(cooldown), if cooldown.is_some() => {
                    let app = self.tracker.app_observation(SystemTime::now());
                    self.send(APP, app).await;
                }
            }
        }
    }

    async fn on_event(&mut self, event: WatchEvent<Pod>) {
        if self.failing {
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
        let update = self.tracker.observe(pod, SystemTime::now());
        for r in &update.restarts {
            self.metrics
                .container_restarts
                .with_label_values(&[&r.container, r.reason])
                .inc_by(r.count);
            tracing::warn!(container = %r.container, reason = r.reason, count = r.count, "container restarted");
        }
        self.send(APP, update.app).await;
        if update.terminating {
            if !self.terminating.swap(true, Ordering::Relaxed) {
                tracing::info!("kubernetes: the pod is terminating; /drain is open to the kubelet");
            }
            let message = "the pod has a deletionTimestamp".to_owned();
            let failure = Observation::Failure {
                reason: Reason::Terminating,
                message,
            };
            self.send(POD, failure).await;
        }
        let info = PodInfo {
            has_gate: update.has_gate,
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
        self.metrics.kube_errors.with_label_values(&["watch"]).inc();
        if !self.failing {
            self.failing = true;
            tracing::warn!(error = %e, "kubernetes: cannot watch the pod; retrying with backoff, local signals still decide");
        }
    }

    async fn send(&self, signal: &str, observation: Observation) {
        let input = Input::Observe {
            signal: signal.to_owned(),
            observation,
        };
        let _ = self.inputs.send(input).await;
    }
}

/// What the gate last said: readiness, the reasons' labels, and the relist it followed.
type GateKey = (bool, Vec<(String, Reason)>, u64);

/// Patches the readiness gate and posts Events.
struct Publisher {
    pods: Api<Pod>,
    recorder: Option<Recorder>,
    name: String,
    gate: String,
    metrics: Metrics,
    tokens: f64,
    refilled: Instant,
    /// Per operation: failing since the last success (logged once per change).
    failing: std::collections::HashMap<&'static str, bool>,
}

impl Publisher {
    async fn run(
        mut self,
        mut verdict: watch::Receiver<Arc<Published>>,
        mut info: watch::Receiver<Option<PodInfo>>,
        mut notices: mpsc::Receiver<Notice>,
    ) {
        let mut ready = verdict.borrow().verdict.ready;
        let mut asserted: Option<GateKey> = None;
        loop {
            tokio::select! {
                changed = verdict.changed() => {
                    if changed.is_err() { return; }
                    let now_ready = verdict.borrow().verdict.ready;
                    if now_ready != ready {
                        ready = now_ready;
                        let v = verdict.borrow().verdict.clone();
                        let current = info.borrow().clone();
                        self.transition_event(&v, current.as_ref()).await;
                    }
                }
                changed = info.changed() => if changed.is_err() { return },
                Some(notice) = notices.recv() => {
                    let reference = info.borrow().as_ref().map(|i| i.reference.clone());
                    if let Some(reference) = reference {
                        self.notice_event(notice, &reference).await;
                    }
                }
            }
            // The gate: on each change of readiness or of its reasons, and after every relist.
            let Some(current) = info.borrow().clone() else {
                continue;
            };
            let v = verdict.borrow().verdict.clone();
            let labels = v
                .reasons
                .iter()
                .map(|c| (c.signal.clone(), c.reason))
                .collect();
            let key = Some((v.ready, labels, current.relists));
            if current.has_gate && asserted != key && self.patch_gate(&v).await {
                asserted = key;
            }
        }
    }

    /// A strategic-merge patch of `status.conditions` (merged by `type`); never a JSON merge
    /// patch, which would replace the kubelet's conditions.
    async fn patch_gate(&mut self, v: &Verdict) -> bool {
        let (status, reason) = if v.ready {
            ("True", "AllSignalsHealthy".to_owned())
        } else {
            let first = v.reasons.first().map_or(Reason::Starting, |c| c.reason);
            ("False", pascal(first.as_str()))
        };
        let mut message = crate::watcher::summary(v);
        message.truncate(1000);
        let patch = serde_json::json!({
            "status": {"conditions": [{
                "type": self.gate,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            }]}
        });
        let result = self
            .pods
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await;
        self.outcome("patch_status", result.map(|_| ()))
    }

    async fn transition_event(&mut self, v: &Verdict, info: Option<&PodInfo>) {
        let Some(reference) = info.map(|i| i.reference.clone()) else {
            return;
        };
        let (type_, reason) = if v.ready {
            (EventType::Normal, "Ready".to_owned())
        } else {
            let first = v.reasons.first().map_or(Reason::Starting, |c| c.reason);
            (
                EventType::Warning,
                format!("NotReady{}", pascal(first.as_str())),
            )
        };
        let event = Event {
            type_,
            reason,
            note: Some(truncate(crate::watcher::summary(v), 1000)),
            action: "Readiness".into(),
            secondary: None,
        };
        self.publish(event, &reference).await;
    }

    async fn notice_event(&mut self, notice: Notice, reference: &ObjectReference) {
        let Notice::OomKill { kills, message } = notice;
        let event = Event {
            type_: EventType::Warning,
            reason: "OOMKilled".into(),
            note: Some(truncate(
                format!("{kills} process(es) OOM-killed in the app's cgroup: {message}"),
                1000,
            )),
            action: "OOMKill".into(),
            secondary: None,
        };
        self.publish(event, reference).await;
    }

    async fn publish(&mut self, event: Event, reference: &ObjectReference) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        let elapsed = self.refilled.elapsed().as_secs_f64();
        self.refilled = Instant::now();
        self.tokens = (self.tokens + elapsed / EVENT_REFILL.as_secs_f64()).min(EVENT_BURST);
        if self.tokens < 1.0 {
            self.metrics.events_dropped.inc();
            tracing::debug!(reason = %event.reason, "event dropped by the rate limit");
            return;
        }
        self.tokens -= 1.0;
        let result = recorder.publish(&event, reference).await;
        self.outcome("create_event", result);
    }

    fn outcome(&mut self, op: &'static str, result: Result<(), kube::Error>) -> bool {
        let was_failing = self.failing.get(op).copied().unwrap_or(false);
        match result {
            Ok(()) => {
                if was_failing {
                    tracing::info!(op, "kubernetes: works again");
                }
                self.failing.insert(op, false);
                true
            }
            Err(e) => {
                self.metrics.kube_errors.with_label_values(&[op]).inc();
                if !was_failing {
                    tracing::warn!(op, error = %e, "kubernetes: request failed; local signals still decide");
                }
                self.failing.insert(op, true);
                false
            }
        }
    }
}

/// `memory_high` → `MemoryHigh`, as Kubernetes wants condition and event reasons.
fn pascal(s: &str) -> String {
    s.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
        })
        .collect()
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

async fn sleep_until_wall(at: Option<SystemTime>) {
    let wait = at
        .and_then(|at| at.duration_since(SystemTime::now()).ok())
        .unwrap_or_default();
    tokio::time::sleep(wait).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn reasons_become_pascal_case() {
        assert_eq!(super::pascal("memory_high"), "MemoryHigh");
        assert_eq!(super::pascal("http_5xx"), "Http5xx");
        assert_eq!(super::pascal("refused"), "Refused");
    }
}
