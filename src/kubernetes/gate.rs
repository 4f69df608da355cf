//! The readiness-gate condition sidewatch keeps on its own pod: what it says for a verdict, and
//! its `lastTransitionTime`, which by Kubernetes' conventions is when the status last flipped
//! (what `kubectl describe` and every "not ready since …" read), not when it was last written.

use std::time::SystemTime;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use crate::engine::Verdict;
use crate::reason::Reason;
use crate::util::clip;

/// The gate's condition as the API server holds it: what the next patch's time is decided on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// `True`, `False`, or whatever another writer left (`Unknown`).
    pub status: String,
    /// Its `lastTransitionTime`, when it has one.
    pub since: Option<SystemTime>,
}

impl Stored {
    /// The condition of type `gate` on `pod`, if it is set.
    pub fn find(pod: &Pod, gate: &str) -> Option<Stored> {
        let conditions = pod.status.as_ref()?.conditions.as_ref()?;
        let c = conditions.iter().find(|c| c.type_ == gate)?;
        Some(Stored {
            status: c.status.clone(),
            since: c
                .last_transition_time
                .as_ref()
                .map(|t| SystemTime::from(t.0)),
        })
    }
}

/// What the gate says for one verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Condition {
    pub(super) status: &'static str,
    pub(super) reason: String,
    pub(super) message: String,
}

impl Condition {
    pub(super) fn of(v: &Verdict) -> Self {
        let (status, reason) = if v.ready {
            ("True", "AllSignalsHealthy".to_owned())
        } else {
            let first = v.reasons.first().map_or(Reason::Starting, |c| c.reason);
            ("False", pascal(first.as_str()))
        };
        Condition {
            status,
            reason,
            // At a character boundary: String::truncate would panic inside one.
            message: clip(&v.summary(), 1000).to_owned(),
        }
    }

    /// The `lastTransitionTime` to write over `stored`: its own while the status stays (a new
    /// reason or message, a relist, a restarted sidecar are no transition); `now` when the
    /// status flips, when the condition is new, or when it has no time to keep.
    pub(super) fn since(&self, stored: Option<&Stored>, now: SystemTime) -> SystemTime {
        stored
            .filter(|s| s.status == self.status)
            .and_then(|s| s.since)
            .unwrap_or(now)
    }

    /// A strategic-merge patch of `status.conditions` (merged by `type`); never a JSON merge
    /// patch, which would replace the kubelet's conditions. The time is always sent, kept or
    /// new, so the result does not depend on what the server kept of an earlier patch.
    pub(super) fn patch(&self, gate: &str, since: SystemTime) -> Value {
        json!({
            "status": {"conditions": [{
                "type": gate,
                "status": self.status,
                "reason": self.reason,
                "message": self.message,
                "lastTransitionTime": humantime::format_rfc3339_seconds(since).to_string(),
            }]}
        })
    }

    /// The condition as this patch leaves it, for when the server's answer does not say.
    pub(super) fn stored(&self, since: SystemTime) -> Stored {
        Stored {
            status: self.status.to_owned(),
            since: Some(since),
        }
    }
}

/// `memory_high` → `MemoryHigh`, as Kubernetes wants condition and event reasons.
pub(super) fn pascal(s: &str) -> String {
    s.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests;
