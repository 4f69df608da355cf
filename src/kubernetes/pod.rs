//! The own Pod as the kubelet reports it, turned into signals: app container restarts and OOM
//! kills (with a cooldown), CrashLoopBackOff, and deletion. Pure: time comes in with each call.
//!
//! The wall clock is only read to compare with the kubelet's timestamps (`finishedAt`), once, when
//! a termination is seen; the cooldown then runs on the monotonic clock, so a jump of the wall
//! clock neither stretches it (back an hour: an hour unready) nor cuts it short.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::engine::Observation;
use crate::reason::Reason;

/// A restart the kubelet reported, for `sidewatch_container_restarts_total`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restart {
    pub container: String,
    /// A fixed label value: `oom_killed`, `error`, `completed` or `other`.
    pub reason: &'static str,
    pub count: u64,
}

/// What one look at the Pod says.
#[derive(Clone, Debug, PartialEq)]
pub struct PodUpdate {
    pub app: Observation,
    pub terminating: bool,
    pub restarts: Vec<Restart>,
    pub has_gate: bool,
    /// Every container of the pod but sidewatch's own, whose restarts are counted.
    pub containers: Vec<String>,
}

/// The `reason` label values of `sidewatch_container_restarts_total`.
pub const RESTART_REASONS: [&str; 4] = ["oom_killed", "error", "completed", "other"];

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
            mono: Instant::now(),
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
            containers,
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

fn last_termination(s: &ContainerStatus) -> (Option<String>, Option<SystemTime>) {
    let Some(t) = s.last_state.as_ref().and_then(|l| l.terminated.as_ref()) else {
        return (None, None);
    };
    (
        t.reason.clone(),
        t.finished_at.as_ref().map(|f| SystemTime::from(f.0)),
    )
}

fn label(reason: Option<&str>) -> &'static str {
    match reason {
        Some("OOMKilled") => "oom_killed",
        Some("Error") => "error",
        Some("Completed") => "completed",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_694_400 + secs)
    }

    /// The monotonic clock `secs` into a test.
    fn m(secs: u64) -> Instant {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now) + Duration::from_secs(secs)
    }

    /// Both clocks `secs` into a test, agreeing.
    fn at(secs: u64) -> Now {
        Now {
            wall: t(secs),
            mono: m(secs),
        }
    }

    fn rfc3339(at: SystemTime) -> String {
        humantime::format_rfc3339_seconds(at).to_string()
    }

    /// A pod with an app container and sidewatch as a native sidecar.
    fn pod(
        app_restarts: i32,
        last: Option<(&str, SystemTime)>,
        waiting: Option<&str>,
        deleting: bool,
    ) -> Pod {
        let last_state = last.map(|(reason, at)| {
            serde_json::json!({"terminated": {"exitCode": 137, "reason": reason, "finishedAt": rfc3339(at)}})
        });
        let state = match waiting {
            Some(w) => serde_json::json!({"waiting": {"reason": w}}),
            None => serde_json::json!({"running": {}}),
        };
        let mut metadata = serde_json::json!({"name": "web-1", "namespace": "shop"});
        if deleting {
            metadata["deletionTimestamp"] = rfc3339(t(0)).into();
        }
        serde_json::from_value(serde_json::json!({
            "metadata": metadata,
            "spec": {
                "initContainers": [{"name": "sidewatch", "restartPolicy": "Always"}],
                "containers": [{"name": "app"}, {"name": "logger"}],
                "readinessGates": [{"conditionType": "sidewatch.io/healthy"}]
            },
            "status": {
                "initContainerStatuses": [{"name": "sidewatch", "restartCount": 9, "ready": true, "image": "s", "imageID": "", "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": rfc3339(t(0))}}}],
                "containerStatuses": [
                    {"name": "app", "restartCount": app_restarts, "ready": true, "image": "a", "imageID": "", "state": state, "lastState": last_state},
                    {"name": "logger", "restartCount": 0, "ready": true, "image": "l", "imageID": ""}
                ]
            }
        }))
        .unwrap()
    }

    fn tracker() -> Tracker {
        Tracker::new(
            None,
            "sidewatch".into(),
            "sidewatch.io/healthy".into(),
            Duration::from_secs(15),
        )
    }

    fn reason(o: &Observation) -> Option<Reason> {
        match o {
            Observation::Success => None,
            Observation::Failure { reason, .. } => Some(*reason),
        }
    }

    #[test]
    fn an_oom_kill_seen_rising_holds_for_the_cooldown() {
        let mut tr = tracker();
        let first = tr.observe(&pod(0, None, None, false), at(100));
        assert_eq!(
            (first.app, first.restarts.len(), first.has_gate),
            (Observation::Success, 0, true)
        );
        let u = tr.observe(&pod(1, Some(("OOMKilled", t(99))), None, false), at(101));
        assert_eq!(reason(&u.app), Some(Reason::OomKilled));
        assert_eq!(
            u.restarts,
            [Restart {
                container: "app".into(),
                reason: "oom_killed",
                count: 1
            }]
        );
        assert_eq!(tr.hold_until(), Some(m(116)), "from when the rise was seen");
        assert_eq!(reason(&tr.app_observation(m(115))), Some(Reason::OomKilled));
        assert_eq!(tr.app_observation(m(116)), Observation::Success);
    }

    #[test]
    fn old_terminations_at_start_up_are_history_and_recent_ones_are_not() {
        let mut tr = tracker();
        let u = tr.observe(&pod(3, Some(("Error", t(0))), None, false), at(3600));
        assert_eq!((u.app, u.restarts.len()), (Observation::Success, 0));
        let mut tr = tracker();
        let u = tr.observe(&pod(3, Some(("Error", t(3590))), None, false), at(3600));
        assert_eq!(reason(&u.app), Some(Reason::ContainerRestarted));
        assert_eq!(tr.hold_until(), Some(m(3605)));
    }

    #[test]
    fn a_wall_clock_jump_neither_stretches_nor_cuts_the_cooldown() {
        let mut tr = tracker();
        tr.observe(&pod(0, None, None, false), at(100));
        tr.observe(&pod(1, Some(("Error", t(100))), None, false), at(100));
        // Back an hour: the wall clock says the cooldown has an hour and 15 s to go. It has 15 s.
        let back = Now {
            wall: t(101) - Duration::from_secs(3600),
            mono: m(101),
        };
        let u = tr.observe(&pod(1, Some(("Error", t(100))), None, false), back);
        assert_eq!(reason(&u.app), Some(Reason::ContainerRestarted));
        assert_eq!(tr.hold_until(), Some(m(115)));
        assert_eq!(tr.app_observation(m(115)), Observation::Success);
        // Forward a day during another cooldown: it still lasts its 15 s.
        tr.observe(&pod(2, Some(("Error", t(200))), None, false), at(200));
        let ahead = Now {
            wall: t(201 + 86_400),
            mono: m(201),
        };
        let u = tr.observe(&pod(2, Some(("Error", t(200))), None, false), ahead);
        assert_eq!(reason(&u.app), Some(Reason::ContainerRestarted));
        assert_eq!(tr.hold_until(), Some(m(215)));
    }

    #[test]
    fn a_termination_ahead_of_our_clock_holds_the_cooldown_and_no_more() {
        let mut tr = tracker();
        tr.observe(&pod(0, None, None, false), at(100));
        // The kubelet's clock is an hour ahead of ours.
        tr.observe(&pod(1, Some(("OOMKilled", t(3700))), None, false), at(101));
        assert_eq!(tr.hold_until(), Some(m(116)));
        let mut tr = tracker();
        let u = tr.observe(&pod(1, Some(("OOMKilled", t(3700))), None, false), at(101));
        assert_eq!(reason(&u.app), Some(Reason::OomKilled), "at start-up too");
        assert_eq!(tr.hold_until(), Some(m(116)));
    }

    #[test]
    fn crash_loop_back_off_is_unready_while_it_lasts() {
        let mut tr = tracker();
        tr.observe(&pod(2, None, None, false), at(0));
        let u = tr.observe(&pod(2, None, Some("CrashLoopBackOff"), false), at(1));
        assert_eq!(reason(&u.app), Some(Reason::ContainerRestarted));
        let u = tr.observe(&pod(2, None, None, false), at(2));
        assert_eq!(u.app, Observation::Success);
    }

    #[test]
    fn sidewatch_own_restarts_and_other_containers_do_not_hold_the_app() {
        let mut tr = tracker();
        tr.observe(&pod(0, None, None, false), at(0));
        let mut p = pod(0, None, None, false);
        let status = p.status.as_mut().unwrap();
        status.init_container_statuses.as_mut().unwrap()[0].restart_count = 10;
        status.container_statuses.as_mut().unwrap()[1].restart_count = 1;
        let u = tr.observe(&p, at(1));
        assert_eq!(u.app, Observation::Success);
        assert_eq!(
            u.restarts,
            [Restart {
                container: "logger".into(),
                reason: "other",
                count: 1
            }]
        );
    }

    #[test]
    fn deletion_and_a_missing_gate_are_reported() {
        let mut tr = Tracker::new(
            None,
            "sidewatch".into(),
            "example.com/other".into(),
            Duration::from_secs(15),
        );
        let u = tr.observe(&pod(0, None, None, true), at(0));
        assert!(u.terminating);
        assert!(!u.has_gate);
    }
}
