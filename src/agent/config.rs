//! The `agent` section: HAProxy's agent-check endpoint, off unless `listen` is set.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{duration, serde_via_str};

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Where HAProxy's agent checks connect (`agent-port`); `null`: no agent endpoint.
    pub listen: Option<SocketAddr>,
    /// Answer this weight, rather than full, while the app port is judged overloaded; `null`:
    /// overload does not change the answer.
    pub overload_weight: Option<Weight>,
    /// After becoming ready, ramp the weight from `SLOW_START_FLOOR` to 100% over this long;
    /// `null`: full weight at once.
    #[serde(with = "duration::option")]
    pub slow_start: Option<Duration>,
}

impl AgentConfig {
    /// `app_port`: the port the overload judge watches, if any.
    pub(crate) fn validate(&self, app_port: Option<u16>) -> Result<(), String> {
        if self.listen.is_none() {
            return Ok(());
        }
        if self.slow_start.is_some_and(|d| d.is_zero()) {
            return Err("agent.slow_start must be above zero (or null for none)".into());
        }
        if self.overload_weight.is_some() && app_port.is_none() {
            return Err(
                "agent.overload_weight needs the overload judge, which watches the app port: set \
                 drain.port, or give a critical probe a TCP port"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A share of the server's configured weight in HAProxy, 1% to 100%: `"50%"` (or `50`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Weight(pub u8);

impl Weight {
    pub const FULL: Weight = Weight(100);
}

impl FromStr for Weight {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let digits = s.trim().strip_suffix('%').unwrap_or(s.trim());
        match digits.parse::<u8>() {
            Ok(n) if (1..=100).contains(&n) => Ok(Weight(n)),
            // 0% is HAProxy's drain: say so rather than take the pod out quietly.
            _ => Err(format!(
                "bad weight {s:?}: want a percentage from 1% to 100%, e.g. 50%"
            )),
        }
    }
}

impl std::fmt::Display for Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%", self.0)
    }
}

serde_via_str!(Weight);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_percentages_from_one_to_a_hundred() {
        assert_eq!("50%".parse(), Ok(Weight(50)));
        assert_eq!("7".parse(), Ok(Weight(7)));
        assert_eq!(Weight(50).to_string(), "50%");
        for bad in ["0%", "101%", "-5%", "half", "50 %%", ""] {
            assert!(bad.parse::<Weight>().is_err(), "{bad}");
        }
    }
}
