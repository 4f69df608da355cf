//! The own Pod as the kubelet reports it, turned into signals: app container restarts and OOM
//! kills (with a cooldown), CrashLoopBackOff, and deletion. Pure: time comes in with each call.
//!
//! The wall clock is only read to compare with the kubelet's timestamps (`finishedAt`), once, when
//! a termination is seen; the cooldown then runs on the monotonic clock, so a jump of the wall
//! clock neither stretches it (back an hour: an hour unready) nor cuts it short.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, ResourceRequirements};

use super::gate::Stored;
use crate::container::{strip_scheme, AppContainer};
use crate::engine::Observation;
use crate::reason::Reason;

/// A restart the kubelet reported, for `sidewatch_container_restarts_total`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restart {
    pub container: String,
    pub reason: RestartReason,
    pub count: u64,
}

/// What one look at the Pod says.
#[derive(Clone, Debug, PartialEq)]
pub struct PodUpdate {
    pub app: Observation,
    pub terminating: bool,
    pub restarts: Vec<Restart>,
    pub has_gate: bool,
    /// The gate's condition as the pod has it: after a restart of sidewatch, the truth its
    /// `lastTransitionTime` is kept from.
    pub gate: Option<Stored>,
    /// Every container of the pod but sidewatch's own, whose restarts are counted.
    pub containers: Vec<String>,
    /// The app container's runtime ID and memory limit, for the memory watcher.
    pub app_container: AppContainer,
}

/// The `reason` label of `sidewatch_container_restarts_total`: the container's last
/// termination reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartReason {
    OomKilled,
    Error,
    Completed,
    Other,
}

impl RestartReason {
    pub const ALL: [RestartReason; 4] = [
        RestartReason::OomKilled,
        RestartReason::Error,
        RestartReason::Completed,
        RestartReason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::OomKilled => "oom_killed",
            RestartReason::Error => "error",
            RestartReason::Completed => "completed",
            RestartReason::Other => "other",
        }
    }
}

/// The moment of an observation on both clocks.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// To compare with the kubelet's timestamps.
    pub wall: SystemTime,
    /// For everything that lasts.
    pub mono: Instant,
}

impl Now {
    pub fn read() -> Self {
        Now {
            wall: SystemTime::now(),
            mono: super::limit::now(),
        }
    }
}

pub struct Tracker {
    app_container: Option<String>,
    own_container: String,
    gate: String,
    cooldown: Duration,
    seen: HashMap<String, i32>,
    hold: Option<(Instant, Reason, String)>,
    crash_loop: bool,
}

impl Tracker {
    pub fn new(
        app_container: Option<String>,
        own_container: String,
        gate: String,
        cooldown: Duration,
    ) -> Self {
        Self {
            app_container,
            own_container,
            gate,
            cooldown,
            seen: HashMap::new(),
            hold: None,
            crash_loop: false,
        }
    }

    /// When the current restart cooldown ends, so the watcher can wake for it.
    pub fn hold_until(&self) -> Option<Instant> {
        self.hold.as_ref().map(|(until, _, _)| *until)
    }

    pub fn observe(&mut self, pod: &Pod, now: Now) -> PodUpdate {
        let app = self.app_name(pod);
        let status = pod.status.as_ref();
        let statuses = status.into_iter().flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        });
        let mut restarts = Vec::new();
        let mut containers = Vec::new();
        let mut app_container = AppContainer {
            id: None,
            limit: app.as_deref().and_then(|name| memory_limit(pod, name)),
        };
        self.crash_loop = false;
        for s in statuses {
            if s.name == self.own_container {
                continue; // sidewatch's own restarts are not the app's health
            }
            containers.push(s.name.clone());
            let is_app = app.as_deref() == Some(s.name.as_str());
            let previous = self.seen.insert(s.name.clone(), s.restart_count);
            let (term_reason, finished) = last_termination(s);
            match previous {
                Some(before) if s.restart_count > before => {
                    let reason = label(term_reason.as_deref());
                    restarts.push(Restart {
                        container: s.name.clone(),
                        reason,
                        count: s.restart_count.saturating_sub(before).unsigned_abs().into(),
                    });
                    if is_app {
                        // The later of the termination and the moment the rise was seen.
                        let since = finished.map_or(now.wall, |f| f.max(now.wall));
                        self.hold_app(since, now, term_reason.as_deref());
                    }
                }
                // At start-up a termination is a signal only while its cooldown still runs.
                None if is_app => {
                    if let Some(f) = finished.filter(|f| *f + self.cooldown > now.wall) {
                        self.hold_app(f, now, term_reason.as_deref());
                    }
                }
                _ => {}
            }
            if is_app {
                app_container.id = s
                    .container_id
                    .as_deref()
                    .and_then(strip_scheme)
                    .map(str::to_owned);
                let waiting = s.state.as_ref().and_then(|st| st.waiting.as_ref());
                self.crash_loop =
                    waiting.and_then(|w| w.reason.as_deref()) == Some("CrashLoopBackOff");
            }
        }
        let has_gate = pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .is_some_and(|gates| gates.iter().any(|g| g.condition_type == self.gate));
        PodUpdate {
            app: self.app_observation(now.mono),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            restarts,
            has_gate,
            gate: Stored::find(pod, &self.gate),
            containers,
            app_container,
        }
    }

    /// The app container's signal now: in CrashLoopBackOff, or inside a restart cooldown.
    pub fn app_observation(&mut self, now: Instant) -> Observation {
        if self.crash_loop {
            return Observation::Failure {
                reason: Reason::ContainerRestarted,
                message: "the app container is in CrashLoopBackOff".into(),
            };
        }
        match &self.hold {
            Some((until, reason, message)) if now < *until => Observation::Failure {
                reason: *reason,
                message: message.clone(),
            },
            _ => {
                self.hold = None;
                Observation::Success
            }
        }
    }

    /// Holds the app unready until `cooldown` after `since` (wall clock, as the kubelet's
    /// timestamps are), turned into a monotonic deadline now. Never longer than `cooldown` from
    /// now: a `finishedAt` ahead of our clock is skew, not a termination in the future.
    fn hold_app(&mut self, since: SystemTime, now: Now, term_reason: Option<&str>) {
        let left = (since + self.cooldown)
            .duration_since(now.wall)
            .unwrap_or_default()
            .min(self.cooldown);
        let until = now.mono + left;
        let (reason, what) = match term_reason {
            Some("OOMKilled") => (Reason::OomKilled, "was OOM-killed".to_owned()),
            Some(other) => (Reason::ContainerRestarted, format!("restarted ({other})")),
            None => (Reason::ContainerRestarted, "restarted".to_owned()),
        };
        let message = format!(
            "the app container {what}; ready again {} after it",
            humantime::format_duration(self.cooldown)
        );
        if self.hold.as_ref().is_none_or(|(u, _, _)| until > *u) {
            self.hold = Some((until, reason, message));
        }
    }

    fn app_name(&self, pod: &Pod) -> Option<String> {
        if let Some(name) = &self.app_container {
            return Some(name.clone());
        }
        pod.spec
            .as_ref()?
            .containers
            .iter()
            .map(|c| &c.name)
            .find(|n| **n != self.own_container)
            .cloned()
    }
}

/// The container's `resources.limits.memory`, else the pod-level `spec.resources.limits.memory`
/// (Kubernetes 1.34+). A quantity this parser cannot read counts as none: the log says so.
fn memory_limit(pod: &Pod, container: &str) -> Option<u64> {
    let spec = pod.spec.as_ref()?;
    let own = spec.containers.iter().find(|c| c.name == container);
    let limit = |r: Option<&ResourceRequirements>| r?.limits.as_ref()?.get("memory").cloned();
    let quantity =
        limit(own.and_then(|c| c.resources.as_ref())).or_else(|| limit(spec.resources.as_ref()))?;
    quantity
        .0
        .parse::<crate::units::Bytes>()
        .inspect_err(|e| tracing::info!(container, error = %e, "kubernetes: the app container's memory limit is unreadable; set memory.limit"))
        .ok()
        .map(|b| b.0)
}

fn last_termination(s: &ContainerStatus) -> (Option<String>, Option<SystemTime>) {
    let Some(t) = s.last_state.as_ref().and_then(|l| l.terminated.as_ref()) else {
        return (None, None);
    };
    (
        t.reason.clone(),
        t.finished_at.as_ref().map(|f| SystemTime::from(f.0)),
    )
}

fn label(reason: Option<&str>) -> RestartReason {
    match reason {
        Some("OOMKilled") => RestartReason::OomKilled,
        Some("Error") => RestartReason::Error,
        Some("Completed") => RestartReason::Completed,
        _ => RestartReason::Other,
    }
}

#[cfg(test)]
mod tests;
