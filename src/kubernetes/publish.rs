//! What sidewatch tells the API server: the readiness-gate condition on the pod's status, and
//! Events for readiness changes and OOM kills, each rate-limited and bounded in time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Api;
use tokio::sync::{mpsc, watch};

use super::config::KubernetesConfig;
use super::gate::{pascal, Condition, Stored};
use super::limit::{now, Bucket, GateLimit};
use super::{Identity, PodInfo};
use super::{KubeMetrics, Op};
use crate::engine::bus::{DrainEnd, Notice, Published};
use crate::engine::{Signal, Verdict};
use crate::reason::Reason;
use crate::util::{clip, sleep_until};

/// At most this many Events in a burst, then one per `EVENT_REFILL`: a flapping app must not
/// flood the API server.
const EVENT_BURST: f64 = 5.0;
const EVENT_REFILL: Duration = Duration::from_secs(10);
/// A request to the API server that has not answered in this long is given up and retried: the
/// gate keeps requests away from a failing app, so a hung connection must not hold it (nor the
/// Events) for minutes. The client's own read timeout (`READ_TIMEOUT`, 300 s) is sized for the
/// pod watch that shares the client, and it bounds each wait for bytes, not a whole request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the gate last said: readiness, the reasons' labels, and the relist it followed.
type GateKey = (bool, Vec<(Signal, Reason)>, u64);

/// The gate's state between patches.
struct GateState {
    asserted: Option<GateKey>,
    /// The condition as the last patch left it (the server's answer): newer than the watch's
    /// view until the watch sees that patch. None before the first and after a failed one (it
    /// may have landed), when the watch's view is the truth.
    stored: Option<Stored>,
    limit: GateLimit,
    /// When to patch next: a retry after a failure, or a change the rate limit held back.
    at: Option<Instant>,
}

/// Patches the readiness gate and posts Events.
pub(super) struct Publisher {
    pods: Api<Pod>,
    recorder: Option<Recorder>,
    name: String,
    gate: String,
    metrics: KubeMetrics,
    limit: Bucket,
    /// The latest readiness Event the rate limit held back, and how many were: posted when a
    /// token frees, so the pod's Events end on its current state.
    held: Option<(Event, u64)>,
    /// The reason of the last readiness Event posted.
    last_posted: Option<String>,
    /// Per operation: failing since the last success (logged once per change).
    failing: HashMap<Op, bool>,
}

impl Publisher {
    pub(super) fn new(
        identity: &Identity,
        config: &KubernetesConfig,
        metrics: KubeMetrics,
    ) -> Self {
        Publisher {
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
            metrics,
            limit: Bucket::new(EVENT_BURST, EVENT_REFILL, now()),
            held: None,
            last_posted: None,
            failing: HashMap::new(),
        }
    }

    pub(super) async fn run(
        mut self,
        mut verdict: watch::Receiver<Arc<Published>>,
        mut info: watch::Receiver<Option<PodInfo>>,
        mut notices: mpsc::Receiver<Notice>,
    ) {
        let mut ready = verdict.borrow().verdict.ready;
        let mut gate = GateState {
            asserted: None,
            stored: None,
            limit: GateLimit::new(now()),
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
        if let Err(later) = gate.limit.may_patch(turning_unready, now()) {
            // The timer patches whatever the state is then.
            gate.at = Some(later);
            return;
        }
        gate.at = None;
        let stored = gate.stored.take().or_else(|| current.gate.clone());
        if let Some(stored) = self.patch_gate(v, stored.as_ref()).await {
            gate.asserted = key;
            gate.stored = Some(stored);
            gate.limit.succeeded();
        } else {
            gate.limit.failed(now());
            gate.at = gate.limit.retry_at;
        }
    }

    /// Patches the condition over `stored` (its time kept unless the status flips); the
    /// condition as the server then has it, or None when the patch failed.
    async fn patch_gate(&mut self, v: &Verdict, stored: Option<&Stored>) -> Option<Stored> {
        let condition = Condition::of(v);
        let since = condition.since(stored, SystemTime::now());
        let patch = condition.patch(&self.gate, since);
        let (params, patch) = (PatchParams::default(), Patch::Strategic(&patch));
        let result = bounded(self.pods.patch_status(&self.name, &params, &patch)).await;
        let found = result
            .as_ref()
            .ok()
            .and_then(|p| Stored::find(p, &self.gate));
        self.outcome(Op::PatchStatus, result.map(|_| ()))
            .then(|| found.unwrap_or_else(|| condition.stored(since)))
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
            note: Some(clip(&v.summary(), 1000).to_owned()),
            action: "Readiness".into(),
            secondary: None,
        };
        if self.recorder.is_none() {
            return;
        }
        if !self.limit.take(now()) {
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
        if !self.limit.take(now()) {
            return;
        }
        let Some((mut event, n)) = self.held.take() else {
            return;
        };
        if self.last_posted.as_deref() == Some(event.reason.as_str()) {
            return;
        }
        let note = event.note.take().unwrap_or_default();
        event.note = Some(
            clip(
                &format!("{n} readiness change(s) not posted (rate limit); now: {note}"),
                1000,
            )
            .to_owned(),
        );
        self.last_posted = Some(event.reason.clone());
        self.post(event, reference).await;
    }

    async fn notice_event(&mut self, notice: Notice, reference: &ObjectReference) {
        if self.recorder.is_none() {
            return;
        }
        match notice {
            Notice::OomKill { message } => {
                let event = Event {
                    type_: EventType::Warning,
                    reason: "OOMKilled".into(),
                    note: Some(
                        clip(&format!("OOM in the app's cgroup: {message}"), 1000).to_owned(),
                    ),
                    action: "OOMKill".into(),
                    secondary: None,
                };
                if !self.limit.take(now()) {
                    self.dropped(&event);
                    return;
                }
                self.post(event, reference).await;
            }
            // Once in a pod's life, and the only record of how its shutdown went once the pod is
            // gone: past the rate limit.
            Notice::Drained { end, posted } => {
                self.post(drained_event(&end), reference).await;
                drop(posted);
            }
        }
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
        self.outcome(Op::CreateEvent, result);
    }

    fn outcome(&mut self, op: Op, result: Result<(), RequestError>) -> bool {
        let was_failing = self.failing.get(&op).copied().unwrap_or(false);
        match result {
            Ok(()) => {
                if was_failing {
                    tracing::info!(op = op.as_str(), "kubernetes: works again");
                }
                self.failing.insert(op, false);
                true
            }
            Err(e) => {
                self.metrics.errors.with_label_values(&[op.as_str()]).inc();
                if !was_failing {
                    tracing::warn!(op = op.as_str(), error = %e, "kubernetes: request failed; local signals still decide");
                }
                self.failing.insert(op, true);
                false
            }
        }
    }
}

/// The Event of a drain's end: Normal when traffic stopped, Warning when `drain.max` cut it.
fn drained_event(end: &DrainEnd) -> Event {
    let (type_, reason, how) = match end.outcome {
        "quiet" => (EventType::Normal, "Drained", "traffic stopped"),
        _ => (
            EventType::Warning,
            "DrainEndedAtMax",
            "traffic never stopped, drain.max reached: clients still sent to a pod out of rotation",
        ),
    };
    Event {
        type_,
        reason: reason.into(),
        note: Some(format!(
            "drain ended after {:.1} s, {how}; {} new connection(s), {} byte(s) in during it",
            end.duration_seconds, end.new_connections, end.bytes_in
        )),
        action: "Drain".into(),
        secondary: None,
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

#[cfg(test)]
mod tests;
