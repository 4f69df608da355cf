//! The command line (`run`, `check-config`, `demo`, `version`) and its dispatch.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, CgroupFlag, Overrides, Target};
use crate::logging::{self, LogFormat};

/// Watches the app beside it and takes the pod out of rotation before clients see 502s.
#[derive(Debug, Parser)]
#[command(name = "sidewatch", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch the app and serve /readyz, /livez, /metrics and /drain.
    Run(RunArgs),
    /// Validate the configuration (file, environment, flags), print it, and exit. Takes what
    /// `run` takes, so that a container's args and env can be checked as they are.
    CheckConfig(RunArgs),
    /// Run a built-in sample app through crash, garbage, 503 and hang, with sidewatch watching it.
    Demo(DemoArgs),
    /// Serve the mutating admission webhook that injects sidewatch into pods.
    Webhook(crate::webhook::WebhookArgs),
    /// Print the version.
    Version,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Log format.
    #[arg(long, env = "SIDEWATCH_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
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
    /// Time between checks, for every probe (e.g. 250ms, 1s).
    #[arg(long, env = "SIDEWATCH_INTERVAL", value_parser = crate::config::duration::parse)]
    pub interval: Option<Duration>,
    /// Time a check may take, for every probe.
    #[arg(long, env = "SIDEWATCH_TIMEOUT", value_parser = crate::config::duration::parse)]
    pub timeout: Option<Duration>,
    /// Consecutive failures that make a probe unhealthy.
    #[arg(long, env = "SIDEWATCH_FAILURE_THRESHOLD", value_parser = clap::value_parser!(u32).range(1..))]
    pub failure_threshold: Option<u32>,
    /// Consecutive successes that make an unhealthy probe healthy again.
    #[arg(long, env = "SIDEWATCH_SUCCESS_THRESHOLD", value_parser = clap::value_parser!(u32).range(1..))]
    pub success_threshold: Option<u32>,
    /// The app's memory cgroup directory, `auto` to find it, or `none` for no memory signals.
    #[arg(long, env = "SIDEWATCH_CGROUP")]
    pub cgroup: Option<CgroupFlag>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address of sidewatch's admin server during the demo (a free port is taken if it is busy).
    #[arg(long, default_value = "127.0.0.1:9102")]
    pub listen: SocketAddr,
    /// How long each phase of the demo lasts.
    #[arg(long, default_value = "3s", value_parser = crate::config::duration::parse)]
    pub phase: Duration,
}

impl ConfigArgs {
    fn load(&self) -> Result<config::Config, config::ConfigError> {
        let overrides = Overrides {
            target: self.target.clone(),
            listen: self.listen,
            interval: self.interval,
            timeout: self.timeout,
            failure_threshold: self.failure_threshold,
            success_threshold: self.success_threshold,
            cgroup: self.cgroup.clone(),
        };
        config::load(self.config.as_deref(), std::env::vars(), &overrides)
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("sidewatch {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig(args) => match args.config.load() {
            Ok(config) => {
                println!("{}", config::render(&config));
                ExitCode::SUCCESS
            }
            Err(e) => config_failed(&e),
        },
        Command::Run(args) => {
            logging::init(args.log_format, "info");
            let config = match args.config.load() {
                Ok(config) => config,
                Err(e) => return config_failed(&e),
            };
            block_on(crate::app::run(config))
        }
        Command::Webhook(args) => {
            logging::init(LogFormat::Text, "info");
            block_on(crate::webhook::run(args))
        }
        Command::Demo(args) => {
            logging::init(LogFormat::Text, "warn");
            block_on(crate::demo::run(args))
        }
    }
}

fn config_failed(e: &config::ConfigError) -> ExitCode {
    eprintln!("sidewatch: config error: {e}");
    ExitCode::from(2)
}

fn block_on(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sidewatch-serve")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidewatch: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidewatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}
