//! The command line's part of the configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{duration, CgroupSetting, Target};
use crate::logging::LogFormat;

/// `sidewatch run`'s (and `check-config`'s) flags, each also read from its variable: they override
/// the file and the environment's settings.
#[derive(Clone, Debug, Default, Args)]
pub struct Overrides {
    /// YAML config file; every key can also be set as SIDEWATCH_<SECTION>_<KEY>.
    #[arg(long, env = "SIDEWATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to probe: http://…, https://…, tcp://host:port or grpc://host:port[/service]
    /// (grpcs:// over TLS); adds or replaces the probe "app".
    #[arg(long, env = "SIDEWATCH_TARGET")]
    pub target: Option<Target>,
    /// Address of the admin server (/readyz, /metrics, /drain).
    #[arg(long, env = "SIDEWATCH_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address of HAProxy's agent-check endpoint (agent.listen; its variable is the config key's,
    /// SIDEWATCH_AGENT_LISTEN), e.g. [::]:9466. Off unless set.
    #[arg(long)]
    pub agent_listen: Option<SocketAddr>,
    /// Time between checks, for every probe (e.g. 250ms, 1s).
    #[arg(long, env = "SIDEWATCH_INTERVAL", value_parser = duration::parse)]
    pub interval: Option<Duration>,
    /// Time a check may take, for every probe.
    #[arg(long, env = "SIDEWATCH_TIMEOUT", value_parser = duration::parse)]
    pub timeout: Option<Duration>,
    /// Consecutive failures that make a probe unhealthy.
    #[arg(long, env = "SIDEWATCH_FAILURE_THRESHOLD", value_parser = clap::value_parser!(u32).range(1..))]
    pub failure_threshold: Option<u32>,
    /// Consecutive successes that make an unhealthy probe healthy again.
    #[arg(long, env = "SIDEWATCH_SUCCESS_THRESHOLD", value_parser = clap::value_parser!(u32).range(1..))]
    pub success_threshold: Option<u32>,
    /// The app's memory cgroup directory, `auto` to find it, or `none` for no memory signals.
    #[arg(long, env = "SIDEWATCH_CGROUP")]
    pub cgroup: Option<CgroupSetting>,
    /// Log format.
    #[arg(long, env = "SIDEWATCH_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Overrides {
    /// The variables these flags read (clap's `env`, from their definitions): not config keys.
    /// Built once: the webhook loads a sidecar's config at every admission.
    pub fn env_names() -> &'static [String] {
        static NAMES: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
            Overrides::augment_args(clap::Command::new("run"))
                .get_arguments()
                .filter_map(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
                .collect()
        });
        &NAMES
    }
}
