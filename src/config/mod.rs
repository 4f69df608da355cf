//! Configuration: the YAML file, `SIDEWATCH_<SECTION>_<KEY>` environment overrides and command-line
//! flags, merged (flag > env > file > default) and validated before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::traffic::TrafficSource;

/// Every duration of the configuration: humantime text (`250ms`, `1m30s`), at most a day. Longer
/// means nothing to a watchdog, and far longer would overflow the arithmetic of instants.
pub mod duration {
    use std::time::Duration;

    use serde::{de::Error, Deserializer, Serializer};

    pub const MAX: Duration = Duration::from_secs(24 * 60 * 60);

    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text)
            .map_err(|e| format!("{text:?} is not a duration like 250ms or 1m30s: {e}"))
            .and_then(bounded)
    }

    fn bounded(d: Duration) -> Result<Duration, String> {
        if d > MAX {
            return Err(format!(
                "{} is longer than the most allowed, 24h",
                humantime::format_duration(d)
            ));
        }
        Ok(d)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(d, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let d: Duration = humantime_serde::deserialize(d)?;
        bounded(d).map_err(D::Error::custom)
    }

    pub mod option {
        use std::time::Duration;

        use serde::{de::Error, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            humantime_serde::option::serialize(d, s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let d: Option<Duration> = humantime_serde::option::deserialize(d)?;
            d.map(super::bounded).transpose().map_err(D::Error::custom)
        }
    }
}

/// Serde through `FromStr`/`Display`, so a bad value fails at its own line and column.
macro_rules! serde_via_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Scalar { Int(u64), Bool(bool), Float(f64), Str(String) }
                let s = match Scalar::deserialize(d)? {
                    Scalar::Int(i) => i.to_string(),
                    Scalar::Bool(b) => b.to_string(),
                    Scalar::Float(f) => f.to_string(),
                    Scalar::Str(s) => s,
                };
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serde_via_str!(CgroupSetting, Bytes, Switch);

mod probe;
pub use probe::*;

/// The environment variables that belong to command-line flags (clap reads them), not to config keys.
pub const FLAG_ENV: &[&str] = &[
    "SIDEWATCH_CONFIG",
    "SIDEWATCH_TARGET",
    "SIDEWATCH_LISTEN",
    "SIDEWATCH_INTERVAL",
    "SIDEWATCH_TIMEOUT",
    "SIDEWATCH_FAILURE_THRESHOLD",
    "SIDEWATCH_SUCCESS_THRESHOLD",
    "SIDEWATCH_LOG_FORMAT",
    "SIDEWATCH_CGROUP",
    "SIDEWATCH_TLS_CERT",
    "SIDEWATCH_TLS_KEY",
    "SIDEWATCH_IMAGE",
    "SIDEWATCH_PLAIN_SIDECAR",
    // Read by the test suite, not by sidewatch; children inherit it.
    "SIDEWATCH_REQUIRE_ALL",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: field `{field}`: {message}\n{snippet}")]
    File {
        path: PathBuf,
        line: usize,
        column: usize,
        field: String,
        message: String,
        snippet: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    pub probes: Probes,
    pub memory: MemoryConfig,
    pub process: ProcessConfig,
    pub kubernetes: KubernetesConfig,
    pub drain: DrainConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9102)),
            probes: Probes::default(),
            memory: MemoryConfig::default(),
            process: ProcessConfig::default(),
            kubernetes: KubernetesConfig::default(),
            drain: DrainConfig::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// auto: on when POD_NAME and POD_NAMESPACE are set and a cluster config is found.
    pub enabled: Switch,
    /// The pod condition patched on every readiness change, when the pod spec lists it as a gate.
    pub readiness_gate: String,
    /// Post Kubernetes Events for readiness changes and OOM kills.
    pub events: bool,
    /// Not ready this long after an app container restart.
    #[serde(with = "duration")]
    pub restart_cooldown: Duration,
    /// The app container; default: the first container that is not sidewatch.
    pub app_container: Option<String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            enabled: Switch::Auto,
            readiness_gate: "sidewatch.io/healthy".into(),
            events: true,
            restart_cooldown: Duration::from_secs(15),
            app_container: None,
        }
    }
}

/// `auto`, `true` or `false`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    Auto,
    On,
    Off,
}

impl FromStr for Switch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Switch::Auto),
            "true" => Ok(Switch::On),
            "false" => Ok(Switch::Off),
            _ => Err(format!("bad switch {s:?}: want auto, true or false")),
        }
    }
}

impl std::fmt::Display for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Switch::Auto => "auto",
            Switch::On => "true",
            Switch::Off => "false",
        })
    }
}

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
    fn validate(&self) -> Result<(), String> {
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

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// A substring of the app's main process command line (needs a shared process namespace).
    #[serde(rename = "match")]
    pub pattern: Option<String>,
}

/// `memory.cgroup`: `auto` or a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupSetting {
    Auto,
    Path(PathBuf),
}

impl FromStr for CgroupSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(CgroupSetting::Auto),
            p if p.starts_with('/') => Ok(CgroupSetting::Path(PathBuf::from(p))),
            _ => Err(format!(
                "bad cgroup {s:?}: want auto or an absolute directory"
            )),
        }
    }
}

impl std::fmt::Display for CgroupSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CgroupSetting::Auto => f.write_str("auto"),
            CgroupSetting::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `--cgroup PATH|auto|none`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupFlag {
    None,
    Setting(CgroupSetting),
}

impl FromStr for CgroupFlag {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(CgroupFlag::None),
            _ => s.parse().map(CgroupFlag::Setting),
        }
    }
}

/// A byte count: a number, or a Kubernetes quantity (`64Mi`, `1Gi`, `500M`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl FromStr for Bytes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad size {s:?}: want bytes or a quantity like 512Mi");
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let factor: u64 = match unit {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            "k" | "K" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(factor)
            .filter(|b| *b > 0)
            .map(Bytes)
            .ok_or_else(bad)
    }
}

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A share of the limit, above 0 and at most 1.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Fraction(pub f64);

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if v > 0.0 && v <= 1.0 {
            Ok(Fraction(v))
        } else {
            Err(serde::de::Error::custom(format!(
                "{v} is not a share of the limit: want a number above 0 and at most 1, e.g. 0.9"
            )))
        }
    }
}

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
            traffic_source: TrafficSource::Auto,
            passive_opens: true,
        }
    }
}

impl DrainConfig {
    fn validate(&self) -> Result<(), String> {
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

/// Command-line settings that override the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub target: Option<Target>,
    pub listen: Option<SocketAddr>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub failure_threshold: Option<u32>,
    pub success_threshold: Option<u32>,
    pub cgroup: Option<CgroupFlag>,
}

/// Reads, merges and validates the configuration. `env` is the process environment (a parameter
/// so tests need not touch the real one).
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let mut config = match file {
        Some(path) => parse_file(path)?,
        None => Config::default(),
    };
    config = apply_env(config, env)?;
    apply_overrides(&mut config, overrides)?;
    config.memory.validate().map_err(ConfigError::Invalid)?;
    config.drain.validate().map_err(ConfigError::Invalid)?;
    Ok(config)
}

fn parse_file(path: &Path) -> Result<Config, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let bytes = read_bounded(path, MAX_CONFIG_FILE).map_err(read_error)?;
    let text = String::from_utf8(bytes)
        .map_err(|e| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    parse_str(&text, path)
}

/// A config is a few KiB; a file far larger is a mistake (the wrong path, a log file).
const MAX_CONFIG_FILE: u64 = 1024 * 1024;

/// Reads a whole file the user named, refusing one larger than `max` bytes.
pub(crate) fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} KiB", max / 1024),
        ));
    }
    Ok(bytes)
}

pub fn parse_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let mut field = String::new();
    let parsed: Result<Option<Config>, _> = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            field = e.path().to_string();
            e.into_inner()
        })
    });
    match parsed {
        // An empty file is a file of defaults.
        Ok(config) => Ok(config.unwrap_or_default()),
        Err(e) => {
            let (line, column) = e
                .location()
                .map(|l| (l.line() as usize, l.column() as usize))
                .unwrap_or((0, 0));
            let message = e.without_snippet().to_string();
            // The crate prefixes "error: line L column C: "; we say the location ourselves.
            let message = message
                .split_once(": ")
                .filter(|(head, _)| head.starts_with("error"))
                .map(|(_, rest)| rest.split_once(": ").map_or(rest, |(_, m)| m))
                .unwrap_or(&message)
                .to_owned();
            let source_name = path.display().to_string();
            let snippet = e.render_with_options(serde_saphyr::render_options! {
                source_name: Some(&source_name),
            });
            let snippet = snippet.lines().skip(1).collect::<Vec<_>>().join("\n");
            Err(ConfigError::File {
                path: path.to_owned(),
                line,
                column,
                field: if field.is_empty() || field == "." {
                    "(top level)".into()
                } else {
                    field
                },
                message,
                snippet,
            })
        }
    }
}

/// Applies `SIDEWATCH_<SECTION>_<KEY>` (and `SIDEWATCH_<KEY>` for top-level keys). An unknown
/// `SIDEWATCH_*` variable is an error: a misspelt setting must not be silently ignored.
fn apply_env(
    config: Config,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("SIDEWATCH_") && !FLAG_ENV.contains(&k.as_str()))
        .collect();
    // The variable `drain.token_env` names holds the token, not a setting (the injector names it
    // SIDEWATCH_INJECTED_DRAIN_TOKEN).
    let token_env = vars
        .iter()
        .find(|(k, _)| k == "SIDEWATCH_DRAIN_TOKEN_ENV")
        .map(|(_, v)| v.clone())
        .or_else(|| config.drain.token_env.clone());
    vars.retain(|(k, _)| Some(k) != token_env.as_ref());
    if vars.is_empty() {
        return Ok(config);
    }
    vars.sort();
    let base = serde_json::to_value(&config)
        .map_err(|e| ConfigError::Invalid(format!("internal: {e}")))?;
    // All at once, one deserialisation: the sidecar's env has a dozen variables, and the webhook
    // loads every injected pod's before answering.
    let mut tree = base.clone();
    for (var, raw) in &vars {
        set_var(&mut tree, var, raw)?;
    }
    if let Ok(config) = serde_json::from_value(tree) {
        return Ok(config);
    }
    // One refused: again one at a time, to name it and its field. A value read as a YAML number
    // or bool where the setting is text (`process.match: "8080"`) is taken as the text it is.
    let mut tree = base;
    for (var, raw) in &vars {
        let before = tree.clone();
        let path = set_var(&mut tree, var, raw)?;
        let mut attempt = serde_path_to_error::deserialize::<_, Config>(tree.clone());
        if attempt.is_err() {
            let mut as_text = before;
            if let Some(slot) = path
                .iter()
                .try_fold(&mut as_text, |node, key| node.get_mut(key))
            {
                *slot = serde_json::Value::String(raw.clone());
                if serde_json::from_value::<Config>(as_text.clone()).is_ok() {
                    tree = as_text;
                    attempt = Ok(Config::default());
                }
            }
        }
        if let Err(e) = attempt {
            let field = e.path().to_string();
            let message = e.into_inner().to_string();
            let message = if path.len() == 1 && field != "." && field != path[0] {
                format!("field `{field}`: {message}")
            } else {
                format!("{raw:?}: {message}")
            };
            return Err(ConfigError::Env {
                var: var.clone(),
                message,
            });
        }
    }
    serde_json::from_value(tree).map_err(|e| ConfigError::Invalid(format!("internal: {e}")))
}

/// Puts one variable's value where its name points in the config's tree; returns that path.
fn set_var(tree: &mut serde_json::Value, var: &str, raw: &str) -> Result<Vec<String>, ConfigError> {
    let env_error = |message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    let path = env_path(tree, var).ok_or_else(|| {
        env_error(format!(
            "unknown setting; known: {}",
            env_names(tree).join(", ")
        ))
    })?;
    let value: serde_json::Value = if raw.trim().is_empty() {
        serde_json::Value::Null
    } else if tree[&path[0]].is_array() {
        // A list (`SIDEWATCH_PROBES`): YAML or JSON text, which must parse.
        serde_saphyr::from_str(raw).map_err(|e| env_error(format!("not YAML: {e}")))?
    } else {
        // A YAML scalar, so `0.9` is a number, `true` a bool and `5s` a string, as in the file.
        serde_saphyr::from_str(raw).unwrap_or(serde_json::Value::String(raw.to_owned()))
    };
    let slot = path
        .iter()
        .try_fold(tree, |node, key| node.get_mut(key))
        .ok_or_else(|| ConfigError::Invalid("internal: env path vanished".into()))?;
    *slot = value;
    Ok(path)
}

fn env_path(tree: &serde_json::Value, var: &str) -> Option<Vec<String>> {
    let rest = var.strip_prefix("SIDEWATCH_")?.to_ascii_lowercase();
    let top = tree.as_object()?;
    for (key, value) in top {
        match value.as_object() {
            Some(section) => {
                if let Some(sub) = rest.strip_prefix(&format!("{key}_")) {
                    if section.contains_key(sub) {
                        return Some(vec![key.clone(), sub.to_owned()]);
                    }
                }
            }
            None if *key == rest => return Some(vec![key.clone()]),
            None => {}
        }
    }
    None
}

fn env_names(tree: &serde_json::Value) -> Vec<String> {
    let mut names = Vec::new();
    for (key, value) in tree.as_object().into_iter().flatten() {
        match value.as_object() {
            Some(section) => names.extend(
                section
                    .keys()
                    .map(|k| format!("SIDEWATCH_{key}_{k}").to_ascii_uppercase()),
            ),
            None => names.push(format!("SIDEWATCH_{key}").to_ascii_uppercase()),
        }
    }
    names
}

fn apply_overrides(config: &mut Config, o: &Overrides) -> Result<(), ConfigError> {
    if let Some(listen) = o.listen {
        config.listen = listen;
    }
    match &o.cgroup {
        Some(CgroupFlag::None) => config.memory.source = MemorySource::None,
        Some(CgroupFlag::Setting(setting)) => {
            if matches!(setting, CgroupSetting::Path(_)) {
                config.memory.source = MemorySource::Cgroup;
            }
            config.memory.cgroup = setting.clone();
        }
        None => {}
    }
    if let Some(Target(check)) = &o.target {
        let probes = &mut config.probes.0;
        match probes.iter_mut().find(|p| p.name == "app") {
            Some(app) => app.check = check.clone(),
            None => probes.push(ProbeConfig::new("app", check.clone())),
        }
    }
    for p in &mut config.probes.0 {
        p.interval = o.interval.unwrap_or(p.interval);
        p.timeout = o.timeout.unwrap_or(p.timeout);
        p.failure_threshold = o.failure_threshold.unwrap_or(p.failure_threshold);
        p.success_threshold = o.success_threshold.unwrap_or(p.success_threshold);
        p.validate().map_err(ConfigError::Invalid)?;
    }
    Ok(())
}

/// The effective configuration as YAML, for `check-config`.
pub fn render(config: &Config) -> String {
    // JSON is valid YAML, and serde_json needs no extra dependency for serialising.
    serde_json::to_string_pretty(config).unwrap_or_else(|e| format!("unprintable config: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_str(text, Path::new("/etc/sidewatch.yaml"))
    }

    fn file_error(text: &str) -> (usize, usize, String, String) {
        match parse(text) {
            Err(ConfigError::File {
                line,
                column,
                field,
                message,
                ..
            }) => (line, column, field, message),
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    const GOOD: &str = "\
listen: 127.0.0.1:9200
probes:
  - name: app
    http: { url: http://127.0.0.1:8080/healthz, expect_status: [200, \"300-302\"] }
    interval: 250ms
  - name: db
    tcp: { address: \"[::1]:5432\" }
    critical: false
drain:
  delay: 2s
";

    #[test]
    fn a_full_file_parses_with_defaults_filled_in() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9200".parse().unwrap());
        let app = &c.probes.0[0];
        assert_eq!(app.interval, Duration::from_millis(250));
        assert_eq!(app.timeout, Duration::from_millis(500));
        assert_eq!(app.failure_threshold, 2);
        let Check::Http(http) = &app.check else {
            panic!("http expected")
        };
        assert_eq!(
            http.expect_status,
            [StatusRange(200, 200), StatusRange(300, 302)]
        );
        let Check::Tcp(tcp) = &c.probes.0[1].check else {
            panic!("tcp expected")
        };
        assert_eq!(tcp.address.host, "::1");
        assert!(!c.probes.0[1].critical);
        assert_eq!(c.drain.delay, Duration::from_secs(2));
    }

    #[test]
    fn the_rendered_config_parses_back_to_itself() {
        let c = parse(GOOD).unwrap();
        assert_eq!(parse(&render(&c)).unwrap(), c);
    }

    #[test]
    fn an_empty_file_means_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_names_line_column_and_field() {
        let (line, column, field, message) = file_error("drain:\n  delay: 1s\n  maxx: 3s\n");
        assert_eq!((line, column), (3, 3));
        assert_eq!(field, "drain.maxx");
        assert!(message.contains("unknown field `maxx`"), "{message}");
    }

    #[test]
    fn wrong_type_and_bad_duration_point_at_the_value() {
        let (line, column, field, _) = file_error(
            "probes:\n  - name: app\n    tcp: {address: \"a:1\"}\n    failure_threshold: lots\n",
        );
        assert_eq!(
            (line, column, field.as_str()),
            (4, 24, "probes[0].failure_threshold")
        );
        let (line, _, field, message) = file_error(
            "probes:\n  - name: app\n    tcp: {address: \"a:1\"}\n    interval: 5 parsecs\n",
        );
        assert_eq!((line, field.as_str()), (4, "probes[0].interval"));
        assert!(
            message.contains("parsecs") || message.contains("unit"),
            "{message}"
        );
    }

    #[test]
    fn a_huge_config_file_is_refused_unread() {
        let path = std::env::temp_dir().join(format!("sidewatch-huge-{}.yaml", std::process::id()));
        std::fs::write(&path, "#".repeat(2 * 1024 * 1024)).unwrap();
        let err = load(Some(&path), [], &Overrides::default()).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(err.to_string().contains("larger than 1024 KiB"), "{err}");
    }

    #[test]
    fn a_duration_over_a_day_is_refused_at_its_field() {
        let (line, _, field, message) = file_error("drain:\n  delay: 1s\n  max: 100y\n");
        assert_eq!((line, field.as_str()), (3, "drain.max"));
        assert!(
            message.contains("at most") || message.contains("24h"),
            "{message}"
        );
        let (_, _, field, _) = file_error("memory:\n  predict_oom_within: 18446744073709551615s\n");
        assert_eq!(field, "memory.predict_oom_within");
        assert_eq!(duration::parse("24h"), Ok(duration::MAX));
    }

    #[test]
    fn bad_url_and_missing_check_are_refused_with_their_probe() {
        let (line, _, field, message) =
            file_error("probes:\n  - name: app\n    http: {url: \"ftp://x/\"}\n");
        assert_eq!((line, field.as_str()), (3, "probes[0].http.url"));
        assert!(message.contains("ftp://x/"), "{message}");
        let (_, _, field, message) = file_error("probes:\n  - name: app\n");
        assert_eq!(field, "probes[0]");
        assert!(message.contains("exactly one of"), "{message}");
        let (_, _, _, message) = file_error(
            "probes:\n  - {name: a, tcp: {address: \"h:1\"}}\n  - {name: a, tcp: {address: \"h:2\"}}\n",
        );
        assert!(message.contains("used twice"), "{message}");
    }

    #[test]
    fn bad_status_ranges_are_refused() {
        for bad in ["\"399-200\"", "99", "\"2xx\""] {
            let text = format!(
                "probes:\n  - name: app\n    http: {{url: \"http://h/\", expect_status: [{bad}]}}\n"
            );
            let (_, _, field, _) = file_error(&text);
            assert!(
                field.starts_with("probes[0].http.expect_status"),
                "{bad}: {field}"
            );
        }
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let c = parse(GOOD).unwrap();
        let c = apply_env(
            c,
            env(&[
                ("SIDEWATCH_DRAIN_DELAY", "7s"),
                ("SIDEWATCH_TARGET", "ignored: a flag"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.drain.delay, Duration::from_secs(7));
        let mut c = c;
        apply_overrides(
            &mut c,
            &Overrides {
                target: Some("tcp://127.0.0.1:9".parse().unwrap()),
                interval: Some(Duration::from_millis(100)),
                ..Overrides::default()
            },
        )
        .unwrap();
        let app = &c.probes.0[0];
        assert_eq!(app.name, "app");
        assert!(matches!(&app.check, Check::Tcp(t) if t.address.port == 9));
        assert!(c
            .probes
            .0
            .iter()
            .all(|p| p.interval == Duration::from_millis(100)));
    }

    #[test]
    fn text_that_looks_like_a_number_is_text_where_the_setting_is_text() {
        let c = apply_env(
            Config::default(),
            env(&[
                ("SIDEWATCH_PROCESS_MATCH", "8080"),
                ("SIDEWATCH_DRAIN_DELAY", "2s"),
            ]),
        )
        .unwrap();
        assert_eq!(c.process.pattern.as_deref(), Some("8080"));
        assert_eq!(c.drain.delay, Duration::from_secs(2));
        // And a number where a number belongs stays one.
        let c = apply_env(Config::default(), env(&[("SIDEWATCH_DRAIN_PORT", "8080")])).unwrap();
        assert_eq!(c.drain.port, Some(8080));
    }

    #[test]
    fn bad_or_unknown_env_is_named() {
        let err = apply_env(Config::default(), env(&[("SIDEWATCH_DRAIN_DELAY", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("environment variable SIDEWATCH_DRAIN_DELAY"),
            "{err}"
        );
        let err = apply_env(Config::default(), env(&[("SIDEWATCH_DRAIN_DELAYY", "1s")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown setting") && err.contains("SIDEWATCH_DRAIN_DELAY"),
            "{err}"
        );
    }
}
