//! The `memory` section.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::assess::Thresholds;
use crate::units::{duration, serde_via_str, Bytes, Fraction};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemorySource {
    Auto,
    Cgroup,
    /// The app container's own cgroup, through its mount namespace (`/proc/<pid>/root`).
    AppRoot,
    Proc,
    /// The node agent's stream of this pod's memory (`sidewatch node` on the pod's node).
    Node,
    None,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    pub source: MemorySource,
    /// `auto`, or a cgroup directory (which implies `source: cgroup`).
    pub cgroup: CgroupSetting,
    /// The app's memory limit for `source: proc` (bytes, or a quantity like `512Mi`).
    pub limit: Option<Bytes>,
    #[serde(with = "duration")]
    pub interval: Duration,
    /// The interval while the working set is far from the limit and still (`pace.rs`).
    #[serde(with = "duration")]
    pub idle_interval: Duration,
    pub unready_above: Fraction,
    pub ready_below: Fraction,
    pub pressure_full_avg10_above: Option<f64>,
    pub pressure_some_avg10_above: Option<f64>,
    #[serde(with = "duration::option")]
    pub predict_oom_within: Option<Duration>,
    #[serde(with = "duration")]
    pub oom_cooldown: Duration,
    /// Where the node agent is, for `source: node`.
    pub node: NodeConfig,
}

/// The `memory.node` section: the node agent and the token the sidecar shows it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub agent: NodeAgent,
    /// The projected service account token whose audience is the agent's; read anew at each
    /// connection, as the kubelet rotates it.
    pub token_file: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            agent: NodeAgent::Auto,
            token_file: PathBuf::from("/var/run/secrets/sidewatch.io/node/token"),
        }
    }
}

/// `memory.node.agent`: `auto` (`http://$HOST_IP:9465`, the node's address from the downward
/// API) or `http://HOST:PORT`. Plain HTTP on purpose: the agent is on the same node, and the
/// token proves who asks (TLS would need a certificate per node for no secret on the wire but
/// the token, whose audience is the agent's alone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeAgent {
    Auto,
    /// The authority, `HOST:PORT` (an IPv6 host in brackets).
    Http(String),
}

impl FromStr for NodeAgent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(NodeAgent::Auto);
        }
        let bad = |why: &str| format!("bad node agent {s:?}: {why}; want auto or http://HOST:PORT");
        let uri: http::Uri = s.parse().map_err(|e| bad(&format!("{e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("the scheme is not http"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("it has a path"));
        }
        let Some(authority) = uri.authority() else {
            return Err(bad("no host"));
        };
        if authority.as_str().contains('@') {
            return Err(bad(
                "user info is not taken; the token is read from memory.node.token_file",
            ));
        }
        let port = authority.port_u16().unwrap_or(super::wire::PORT);
        Ok(NodeAgent::Http(format!("{}:{port}", authority.host())))
    }
}

impl std::fmt::Display for NodeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeAgent::Auto => f.write_str("auto"),
            NodeAgent::Http(authority) => write!(f, "http://{authority}"),
        }
    }
}

serde_via_str!(NodeAgent);

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            source: MemorySource::Auto,
            cgroup: CgroupSetting::Auto,
            limit: None,
            interval: Duration::from_millis(250),
            idle_interval: Duration::from_secs(2),
            unready_above: Fraction(0.92),
            ready_below: Fraction(0.85),
            pressure_full_avg10_above: Some(20.0),
            pressure_some_avg10_above: None,
            predict_oom_within: Some(Duration::from_secs(30)),
            oom_cooldown: Duration::from_secs(15),
            node: NodeConfig::default(),
        }
    }
}

impl MemoryConfig {
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            unready_above: self.unready_above.0,
            ready_below: self.ready_below.0,
            pressure_full_above: self.pressure_full_avg10_above,
            pressure_some_above: self.pressure_some_avg10_above,
            predict_within: self.predict_oom_within,
            oom_cooldown: self.oom_cooldown,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.ready_below.0 >= self.unready_above.0 {
            return Err(format!(
                "memory.ready_below ({}) must be below memory.unready_above ({})",
                self.ready_below.0, self.unready_above.0
            ));
        }
        if self.interval.is_zero() {
            return Err("memory.interval must be above zero".into());
        }
        for (name, v) in [
            ("pressure_full_avg10_above", self.pressure_full_avg10_above),
            ("pressure_some_avg10_above", self.pressure_some_avg10_above),
        ] {
            if v.is_some_and(|v| !(0.0..=100.0).contains(&v)) {
                return Err(format!("memory.{name} is a percentage: 0 to 100"));
            }
        }
        Ok(())
    }
}

/// `memory.cgroup` and `--cgroup`: `auto`, a directory, or `none` (no memory signals, as
/// `memory.source: none`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupSetting {
    Auto,
    Path(PathBuf),
    None,
}

impl FromStr for CgroupSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(CgroupSetting::Auto),
            "none" => Ok(CgroupSetting::None),
            p if p.starts_with('/') => Ok(CgroupSetting::Path(PathBuf::from(p))),
            _ => Err(format!(
                "bad cgroup {s:?}: want auto, none or an absolute directory"
            )),
        }
    }
}

impl std::fmt::Display for CgroupSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CgroupSetting::Auto => f.write_str("auto"),
            CgroupSetting::None => f.write_str("none"),
            CgroupSetting::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

serde_via_str!(CgroupSetting);
