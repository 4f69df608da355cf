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
/// A request to the API server that has not answered in this long is given up and retried: a
/// hung connection must not hold the gate and the Events for ever (kube's client has no read
/// timeout of its own).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The gate's rate limit for anything but a turn to not ready (see `GateLimit`).
const GATE_BURST: f64 = 5.0;
const GATE_REFILL: Duration = Duration::from_secs(1);
/// A failed gate patch is retried after this, doubling up to `GATE_RETRY_MAX`: the gate must not
/// stay stale when the API server failed just that one patch.
const GATE_RETRY_MIN: Duration = Duration::from_millis(500);
const GATE_RETRY_MAX: Duration = Duration::from_secs(30);
/// After a failed watch or list, sidewatch waits this long before listing again, doubling up to
/// `WATCH_RETRY_MAX`, each wait jittered so that the pods of a cluster do not all come back to a
/// recovering API server at once.
const WATCH_RETRY_MIN: Duration = Duration::from_millis(500);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(10);
/// The client's read timeout: above the watcher's own idle timeout (290 s + 5 s), so a quiet watch
/// never trips it, and a list that never answers is given up after it instead of never.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

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
        Ok(mut c) => {
            c.read_timeout = Some(READ_TIMEOUT);
            // From each request on, not from when its pooled connection went idle.
            c.reset_reader_on_write = true;
            Client::try_from(c).map_err(|e| format!("kubernetes client: {e}"))?
        }
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
            limit: Bucket::new(EVENT_BURST, EVENT_REFILL, Instant::now()),
            held: None,
            last_posted: None,
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
        let api = self.api.clone();
        let start = move || watcher::watcher(api.clone(), config.clone()).boxed();
        let mut events = Some(start());
        let mut backoff = WATCH_RETRY_MIN;
        let mut retry_at: Option<Instant> = None;
        loop {
            let cooldown = self.tracker.hold_until();
            tokio::select! {
                event = next(&mut events), if events.is_some() => match event {
                    Some(Ok(event)) => {
                        if matches!(event, WatchEvent::InitDone) {
                            backoff = WATCH_RETRY_MIN;
                        }
                        self.on_event(event).await
                    }
                    Some(Err(e)) => {
                        // Start over with a list after a pause: the list says at once when the
                        // API server is back (kube's own resumption of a watch says nothing when
                        // the pod has not changed), and the gate is asserted again after it.
                        self.on_error(&e);
                        events = None;
                        retry_at = Some(Instant::now() + jitter(backoff));
                        backoff = (backoff * 2).min(WATCH_RETRY_MAX);
                    }
                    None => return,
                },
                _ = sleep_until(retry_at), if events.is_none() => {
                    retry_at = None;
                    events = Some(start());
                }
                _ = sleep_until(cooldown), if cooldown.is_some() => {
                    let app = self.tracker.app_observation(Instant::now());
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
        let update = self.tracker.observe(pod, pod::Now::read());
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
            tracing::warn!(error = %e, "kubernetes: cannot watch the pod; listing again with backoff, local signals still decide");
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

/// The gate's state between patches.
struct GateState {
    asserted: Option<GateKey>,
    limit: GateLimit,
    /// When to patch next: a retry after a failure, or a change the rate limit held back.
    at: Option<Instant>,
}

/// Patches the readiness gate and posts Events.
struct Publisher {
    pods: Api<Pod>,
    recorder: Option<Recorder>,
    name: String,
    gate: String,
    metrics: Metrics,
    limit: Bucket,
    /// The latest readiness Event the rate limit held back, and how many were: posted when a
    /// token frees, so the pod's Events end on its current state.
    held: Option<(Event, u64)>,
    /// The reason of the last readiness Event posted.
    last_posted: Option<String>,
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
        let mut gate = GateState {
            asserted: None,
            limit: GateLimit::new(Instant::now()),
            at: None,
        };
        loop {
            let token_at = self.held.as_ref().map(|_| self.limit.next_token());
            let mut transition = None;
            tokio::select! {
                changed = verdict.changed() => {
                    if changed.is_err() { return; }
                    let now_ready = verdict.borrow().verdict.ready;
                    if now_ready != ready {
                        ready = now_ready;
                        transition = Some(verdict.borrow().verdict.clone());
                    }
                }
                changed = info.changed() => if changed.is_err() { return },
                Some(notice) = notices.recv() => {
                    let reference = info.borrow().as_ref().map(|i| i.reference.clone());
                    if let Some(reference) = reference {
                        self.notice_event(notice, &reference).await;
                    }
                }
                _ = sleep_until(token_at), if token_at.is_some() => {
                    let reference = info.borrow().as_ref().map(|i| i.reference.clone());
                    if let Some(reference) = reference {
                        self.post_held(&reference).await;
                    }
                }
                _ = sleep_until(gate.at), if gate.at.is_some() => {}
            }
            let current = info.borrow().clone();
            // The gate first: it is what keeps requests away; the Event only tells people.
            if let Some(current) = &current {
                let v = verdict.borrow().verdict.clone();
                self.update_gate(&mut gate, &v, current).await;
            }
            if let Some(v) = transition {
                self.transition_event(&v, current.as_ref()).await;
            }
        }
    }

    /// The gate: on each change of readiness or of its reasons, after every relist, and again
    /// after a failed patch; within its rate limit.
    async fn update_gate(&mut self, gate: &mut GateState, v: &Verdict, current: &PodInfo) {
        let labels = v
            .reasons
            .iter()
            .map(|c| (c.signal.clone(), c.reason))
            .collect();
        let key = Some((v.ready, labels, current.relists));
        if !current.has_gate || gate.asserted == key {
            gate.at = None;
            return;
        }
        let turning_unready = !v.ready && gate.asserted.as_ref().is_none_or(|(r, _, _)| *r);
        if let Err(later) = gate.limit.may_patch(turning_unready, Instant::now()) {
            // The timer patches whatever the state is then.
            gate.at = Some(later);
            return;
        }
        gate.at = None;
        if self.patch_gate(v).await {
            gate.asserted = key;
            gate.limit.succeeded();
        } else {
            gate.limit.failed(Instant::now());
            gate.at = gate.limit.retry_at;
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
        let (params, patch) = (PatchParams::default(), Patch::Strategic(&patch));
        let result = bounded(self.pods.patch_status(&self.name, &params, &patch)).await;
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
        if self.recorder.is_none() {
            return;
        }
        if !self.limit.take(Instant::now()) {
            self.dropped(&event);
            let held = self.held.take().map_or(0, |(_, n)| n);
            self.held = Some((event, held + 1));
            return;
        }
        // The newest state supersedes any held back.
        self.held = None;
        self.last_posted = Some(event.reason.clone());
        self.post(event, &reference).await;
    }

    /// The latest readiness Event held back by the rate limit, once a token is free; nothing when
    /// the last one posted already says the same.
    async fn post_held(&mut self, reference: &ObjectReference) {
        if !self.limit.take(Instant::now()) {
            return;
        }
        let Some((mut event, n)) = self.held.take() else {
            return;
        };
        if self.last_posted.as_deref() == Some(event.reason.as_str()) {
            return;
        }
        let note = event.note.take().unwrap_or_default();
        event.note = Some(truncate(
            format!("{n} readiness change(s) not posted (rate limit); now: {note}"),
            1000,
        ));
        self.last_posted = Some(event.reason.clone());
        self.post(event, reference).await;
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
        if self.recorder.is_none() {
            return;
        }
        if !self.limit.take(Instant::now()) {
            self.dropped(&event);
            return;
        }
        self.post(event, reference).await;
    }

    fn dropped(&self, event: &Event) {
        self.metrics.events_dropped.inc();
        tracing::debug!(reason = %event.reason, "event dropped by the rate limit");
    }

    async fn post(&mut self, event: Event, reference: &ObjectReference) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        let result = bounded(recorder.publish(&event, reference)).await;
        self.outcome("create_event", result);
    }

    fn outcome(&mut self, op: &'static str, result: Result<(), RequestError>) -> bool {
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

#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("no answer within {}", humantime::format_duration(REQUEST_TIMEOUT))]
    TimedOut,
}

/// One request to the API server, given up after `REQUEST_TIMEOUT`.
async fn bounded<T>(
    request: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, RequestError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(RequestError::TimedOut),
    }
}

/// A token bucket: `burst` tokens, one more every `refill`. On the monotonic clock, so a jump of
/// the wall clock neither empties nor fills it.
#[derive(Debug)]
struct Bucket {
    burst: f64,
    refill: Duration,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(burst: f64, refill: Duration, now: Instant) -> Self {
        Self {
            burst,
            refill,
            tokens: burst,
            refilled: now,
        }
    }

    fn top_up(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = self.refilled.max(now);
        self.tokens = (self.tokens + elapsed / self.refill.as_secs_f64()).min(self.burst);
    }

    /// Takes a token when there is one.
    fn take(&mut self, now: Instant) -> bool {
        self.top_up(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// When the next token is there.
    fn next_token(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.refilled + self.refill.mul_f64(missing)
    }
}

/// When the readiness gate may be patched. A turn to not ready goes at once: that is what keeps
/// requests away from a failing app. Anything else (back to ready, other reasons, a relist)
/// waits for a token, so a flapping app moves the pod in and out of its endpoints a few times a
/// second at most, not at every probe. After a failed patch, backoff.
#[derive(Debug)]
struct GateLimit {
    bucket: Bucket,
    retry: Duration,
    retry_at: Option<Instant>,
}

impl GateLimit {
    fn new(now: Instant) -> Self {
        Self {
            bucket: Bucket::new(GATE_BURST, GATE_REFILL, now),
            retry: GATE_RETRY_MIN,
            retry_at: None,
        }
    }

    /// `Ok` to patch now, or when to try again.
    fn may_patch(&mut self, turning_unready: bool, now: Instant) -> Result<(), Instant> {
        if let Some(at) = self.retry_at.filter(|at| now < *at) {
            return Err(at);
        }
        if self.bucket.take(now) || turning_unready {
            return Ok(());
        }
        Err(self.bucket.next_token())
    }

    fn succeeded(&mut self) {
        self.retry = GATE_RETRY_MIN;
        self.retry_at = None;
    }

    fn failed(&mut self, now: Instant) {
        self.retry_at = Some(now + self.retry);
        self.retry = (self.retry * 2).min(GATE_RETRY_MAX);
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

async fn next<S: futures_util::Stream + Unpin>(stream: &mut Option<S>) -> Option<S::Item> {
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// Between half and all of `wait`.
fn jitter(wait: Duration) -> Duration {
    let mut byte = [0u8; 1];
    // No randomness at hand is no reason to fail: then the full wait.
    let r = match rustix::rand::getrandom(&mut byte, rustix::rand::GetRandomFlags::NONBLOCK) {
        Ok(1) => f64::from(byte[0]) / 255.0,
        _ => 1.0,
    };
    wait.mul_f64(0.5 + 0.5 * r)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_burst_then_one_per_refill_period() {
        let t0 = Instant::now();
        let mut l = Bucket::new(EVENT_BURST, EVENT_REFILL, t0);
        for i in 0..5 {
            assert!(l.take(t0), "event {i} of the burst");
        }
        assert!(!l.take(t0));
        assert_eq!(l.next_token(), t0 + EVENT_REFILL);
        assert!(!l.take(t0 + EVENT_REFILL / 2));
        assert_eq!(l.next_token(), t0 + EVENT_REFILL);
        assert!(l.take(t0 + EVENT_REFILL));
        assert!(!l.take(t0 + EVENT_REFILL));
        // A long quiet time refills the burst, no more.
        let later = t0 + EVENT_REFILL * 100;
        for _ in 0..5 {
            assert!(l.take(later));
        }
        assert!(!l.take(later));
    }

    #[test]
    fn the_gate_turns_unready_at_once_and_the_rest_waits_for_tokens() {
        let t0 = Instant::now();
        let mut g = GateLimit::new(t0);
        for _ in 0..5 {
            assert_eq!(g.may_patch(false, t0), Ok(()));
        }
        assert_eq!(g.may_patch(false, t0), Err(t0 + GATE_REFILL));
        assert_eq!(g.may_patch(true, t0), Ok(()), "not ready never waits");
        let later = t0 + GATE_REFILL;
        assert_eq!(g.may_patch(false, later), Ok(()));
        // A failure backs off, doubling, whatever the tokens say.
        g.failed(later);
        assert_eq!(g.may_patch(true, later), Err(later + GATE_RETRY_MIN));
        let again = later + GATE_RETRY_MIN;
        g.failed(again);
        assert_eq!(g.retry_at, Some(again + GATE_RETRY_MIN * 2));
        g.succeeded();
        assert_eq!(g.may_patch(true, again), Ok(()));
    }

    #[test]
    fn reasons_become_pascal_case() {
        assert_eq!(pascal("memory_high"), "MemoryHigh");
        assert_eq!(pascal("http_5xx"), "Http5xx");
        assert_eq!(pascal("refused"), "Refused");
    }
}
