//! Logs through `tracing`: text for people, JSON lines for collectors. `RUST_LOG` filters.

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `RUST_LOG` takes a level and `target=level` pairs (`info,sidewatch=debug`). `Targets` rather
/// than `EnvFilter`: its parser needs no regex engine, which keeps start-up memory down.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .or_else(|| default_filter.parse().ok())
        .unwrap_or_default();
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // try_init: a second call (tests, the demo) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(layer.with_target(false).with_filter(filter))
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(
                layer
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_filter(filter),
            )
            .try_init(),
    };
}
