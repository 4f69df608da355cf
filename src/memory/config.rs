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
    pub unready_above: Fraction,
    pub ready_below: Fraction,
    pub pressure_full_avg10_above: Option<f64>,
    pub pressure_some_avg10_above: Option<f64>,
    #[serde(with = "duration::option")]
    pub predict_oom_within: Option<Duration>,
    #[serde(with = "duration")]
    pub oom_cooldown: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            source: MemorySource::Auto,
            cgroup: CgroupSetting::Auto,
            limit: None,
            interval: Duration::from_millis(250),
            unready_above: Fraction(0.92),
            ready_below: Fraction(0.85),
            pressure_full_avg10_above: Some(20.0),
            pressure_some_avg10_above: None,
            predict_oom_within: Some(Duration::from_secs(30)),
            oom_cooldown: Duration::from_secs(15),
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
