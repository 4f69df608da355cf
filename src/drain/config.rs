//! The `drain` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::DrainReadiness;
use crate::traffic::TrafficSource;
use crate::units::duration;

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// At least this long not ready before the drain may end, so load balancers see the change.
    #[serde(with = "duration")]
    pub delay: Duration,
    /// Then end once the app port has had no new connection and no bytes in for this long.
    #[serde(with = "duration")]
    pub quiet: Duration,
    /// End at the latest here (keep it under terminationGracePeriodSeconds).
    #[serde(with = "duration")]
    pub max: Duration,
    /// After a drain at SIGTERM, keep serving at most this long until a scrape of `/metrics`
    /// has seen its outcome, so that the outcome reaches Prometheus.
    #[serde(with = "duration")]
    pub linger: Duration,
    /// The pod's terminationGracePeriodSeconds: sidewatch exits 1 s before the kubelet's
    /// SIGKILL would come, counted from the drain's start, whatever `linger` says.
    #[serde(with = "duration")]
    pub grace_period: Duration,
    /// Name of an env var holding a token that lets non-loopback callers drain.
    pub token_env: Option<String>,
    /// The app port whose traffic is watched; default: the first critical probe's port.
    pub port: Option<u16>,
    /// How the port's sockets are seen: auto (sock_diag, else /proc), sock_diag or proc.
    pub traffic_source: TrafficSource,
    /// Count the namespace's TCP PassiveOpens (minus sidewatch's own) as arrivals, to catch
    /// connections that open and close between two polls.
    pub passive_opens: bool,
    /// `fail`: not ready from the drain's start; `serve_while_terminating`: ready while
    /// Kubernetes terminates the pod, for terminating-but-serving endpoints.
    pub readiness: DrainReadiness,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            delay: Duration::from_secs(5),
            quiet: Duration::from_secs(1),
            max: Duration::from_secs(25),
            linger: Duration::from_secs(15),
            grace_period: Duration::from_secs(30),
            token_env: None,
            port: None,
            readiness: DrainReadiness::Fail,
            traffic_source: TrafficSource::Auto,
            passive_opens: true,
        }
    }
}

impl DrainConfig {
    /// The drain token from the variable `token_env` names; a named but unset or empty variable
    /// is an error (its name), since it would leave the preStop hook locked out.
    pub fn token(&self) -> Result<Option<Vec<u8>>, String> {
        let Some(var) = &self.token_env else {
            return Ok(None);
        };
        match std::env::var(var) {
            Ok(token) if !token.is_empty() => Ok(Some(token.into_bytes())),
            _ => Err(var.clone()),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.max < self.delay {
            return Err(format!(
                "drain.max ({}) must not be below drain.delay ({})",
                humantime::format_duration(self.max),
                humantime::format_duration(self.delay)
            ));
        }
        if self.quiet.is_zero() {
            return Err("drain.quiet must be above zero".into());
        }
        if self.max > self.grace_period {
            return Err(format!(
                "drain.max ({}) must not exceed drain.grace_period ({}): the kubelet kills the pod \
                 at terminationGracePeriodSeconds; set drain.grace_period to it",
                humantime::format_duration(self.max),
                humantime::format_duration(self.grace_period)
            ));
        }
        Ok(())
    }
}
