//! The command line (`run`, `check-config`, `demo`, `webhook`, `node`, `version`) and its dispatch:
//! each command's logging and runtime, and its exit status. A configuration error exits 2 before
//! anything starts, any other failure 1, so a pod's `kubectl describe` tells the one from the other.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Overrides};
use crate::logging::{self, LogFormat};
use crate::memory::node::Endpoint;

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
    Demo(crate::demo::DemoArgs),
    /// Serve the mutating admission webhook that injects sidewatch into pods.
    Webhook(crate::webhook::WebhookArgs),
    /// The node agent (a DaemonSet): serves each pod's sidecar its pod's memory from the node's
    /// cgroup tree (memory source `node`).
    Node(crate::node::NodeArgs),
    /// Print the version.
    Version,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: Overrides,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("sidewatch {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig(args) => match config::load_with(&args.config) {
            Ok(config) => {
                // What only the environment completes, checked as `run` will at start-up.
                if config.memory.source == config::MemorySource::Node {
                    let app = config.kubernetes.app_container.as_deref();
                    match Endpoint::new(&config.memory, app, |k| std::env::var(k).ok()) {
                        Ok(e) => eprintln!("memory: the node agent's stream, {}", e.describe()),
                        Err(e) => {
                            eprintln!("sidewatch: config error: memory: {e}");
                            return ExitCode::from(2);
                        }
                    }
                }
                println!("{}", config::render(&config));
                ExitCode::SUCCESS
            }
            Err(e) => config_failed(&e),
        },
        Command::Run(args) => {
            logging::init(args.config.log_format, "info");
            let config = match config::load_with(&args.config) {
                Ok(config) => config,
                Err(e) => return config_failed(&e),
            };
            block_on(1, crate::app::run(config))
        }
        Command::Webhook(args) => {
            logging::init(LogFormat::Text, "info");
            block_on(2, crate::webhook::run(args))
        }
        Command::Node(args) => {
            logging::init(LogFormat::Text, "info");
            block_on(2, async move { Ok(crate::node::run(args).await?) })
        }
        Command::Demo(args) => {
            logging::init(LogFormat::Text, "warn");
            block_on(1, crate::demo::run(args))
        }
    }
}

fn config_failed(e: &config::ConfigError) -> ExitCode {
    eprintln!("sidewatch: config error: {e}");
    ExitCode::from(2)
}

/// Runs a command on `workers` threads, whatever the node's CPU count: an injected sidecar has
/// no CPU limit, and tokio's default (a worker per CPU) would start 64 on a 64-core node. The
/// sidecar's one worker serves its ports (the probes have a thread of their own); the webhook's
/// and the node agent's two keep a TLS handshake or a stream from holding up the rest.
fn block_on(
    workers: usize,
    fut: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(workers)
        .max_blocking_threads(crate::lifecycle::BLOCKING_THREADS)
        .thread_name("sidewatch-serve")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidewatch: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ended = runtime.block_on(fut);
    // Bounded: a call still blocked (a start stopped by a signal) is left to the process's end.
    runtime.shutdown_timeout(std::time::Duration::from_millis(250));
    match ended {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidewatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flag's variable set in the environment is the flag's, never an unknown setting.
    #[test]
    fn every_flag_variable_is_left_to_its_flag() {
        let names = Overrides::env_names();
        for name in [
            "SIDEWATCH_TARGET",
            "SIDEWATCH_CGROUP",
            "SIDEWATCH_LOG_FORMAT",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
        }
        let env = names.iter().map(|n| (n.clone(), "x".to_owned()));
        config::load(None, env, &Overrides::default()).unwrap();
        let stray = [("SIDEWATCH_TARGETT".to_owned(), "x".to_owned())];
        assert!(config::load(None, stray, &Overrides::default()).is_err());
    }
}
