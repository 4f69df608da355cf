//! Configuration: the YAML file, `SIDEWATCH_<SECTION>_<KEY>` environment overrides and command-line
//! flags, merged (flag > env > file > default) and validated before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod args;
pub use crate::agent::config::{AgentConfig, Weight};
pub use crate::drain::config::DrainConfig;
pub use crate::kubernetes::config::KubernetesConfig;
pub use crate::memory::config::{CgroupSetting, MemoryConfig, MemorySource};
pub use crate::overload::OverloadConfig;
pub use crate::process::ProcessConfig;
pub use crate::traffic::TrafficSource;
pub use crate::units::{duration, Bytes, Fraction, Switch};
pub use args::Overrides;

pub use crate::probe::config::*;

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
    /// A section's values are each well-formed but do not fit together (the message names them).
    #[error("{message}")]
    Invalid {
        section: &'static str,
        message: String,
    },
    /// The config's own tree did not round-trip through JSON: a bug of ours, not of the input.
    #[error("internal: {0}")]
    Internal(#[from] serde_json::Error),
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
    pub overload: OverloadConfig,
    pub agent: AgentConfig,
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
            overload: OverloadConfig::default(),
            agent: AgentConfig::default(),
        }
    }
}

impl Config {
    /// The app port whose traffic is watched: `drain.port`, or the first critical probe's port.
    pub fn app_port(&self) -> Option<u16> {
        self.drain.port.or_else(|| {
            self.probes
                .0
                .iter()
                .filter(|p| p.critical)
                .find_map(|p| p.port())
        })
    }
}

/// `load` with the file the flags name and the process's environment.
pub fn load_with(flags: &Overrides) -> Result<Config, ConfigError> {
    load(flags.config.as_deref(), std::env::vars(), flags)
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
    config = apply_env(config, env, Overrides::env_names())?;
    apply_overrides(&mut config, overrides)?;
    config.memory.validate().map_err(invalid("memory"))?;
    config.drain.validate().map_err(invalid("drain"))?;
    config
        .agent
        .validate(config.app_port())
        .map_err(invalid("agent"))?;
    if config.overload.signal && config.app_port().is_none() {
        return Err(ConfigError::Invalid {
            section: "overload",
            message: "overload.signal watches the app port: set drain.port, or give a critical \
                      probe a TCP port"
                .into(),
        });
    }
    Ok(config)
}

fn invalid(section: &'static str) -> impl FnOnce(String) -> ConfigError {
    move |message| ConfigError::Invalid { section, message }
}

fn parse_file(path: &Path) -> Result<Config, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let bytes = crate::util::read_bounded(path, MAX_CONFIG_FILE).map_err(read_error)?;
    let text = String::from_utf8(bytes)
        .map_err(|e| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    parse_str(&text, path)
}

/// A config is a few KiB; a file far larger is a mistake (the wrong path, a log file).
const MAX_CONFIG_FILE: u64 = 1024 * 1024;

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
    flag_env: &[String],
) -> Result<Config, ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("SIDEWATCH_") && !flag_env.contains(k))
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
    let base = serde_json::to_value(&config)?;
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
    Ok(serde_json::from_value(tree)?)
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
        .ok_or_else(|| env_error("internal: its path vanished from the tree".into()))?;
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
    if let Some(listen) = o.agent_listen {
        config.agent.listen = Some(listen);
    }
    if let Some(setting) = &o.cgroup {
        match setting {
            CgroupSetting::Path(_) => config.memory.source = MemorySource::Cgroup,
            CgroupSetting::None => config.memory.source = MemorySource::None,
            CgroupSetting::Auto => {}
        }
        config.memory.cgroup = setting.clone();
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
        p.validate().map_err(invalid("probes"))?;
    }
    Ok(())
}

/// The effective configuration as YAML, for `check-config`.
pub fn render(config: &Config) -> String {
    // JSON is valid YAML, and serde_json needs no extra dependency for serialising.
    serde_json::to_string_pretty(config).unwrap_or_else(|e| format!("unprintable config: {e}"))
}

#[cfg(test)]
mod tests;
