//! The lifecycle every command shares (`run`, `webhook`, `node`, `demo`): the signal handlers
//! are installed first thing, then the command starts, then it stops within a bound. A second
//! signal while stopping aborts (exit non-zero). The tasks themselves are spawned and watched by
//! [`crate::liveness::Tasks`].
//!
//! Handlers first because a signal that arrives before its handler is installed is lost when the
//! process is PID 1 of its container (the kernel drops what PID 1 does not handle) and kills it
//! otherwise: either way not the stop the command promised.

use std::future::Future;

/// Threads each runtime may start for blocking calls (file reads, the overload watch's netlink
/// dump, the drain's socket look): few are ever under way at once, and the count must not grow
/// with the node (tokio's default allows 512).
pub const BLOCKING_THREADS: usize = 2;

use tokio::signal::unix::{signal, Signal, SignalKind};

#[derive(Debug, thiserror::Error)]
#[error("cannot install the signal handlers: {0}")]
pub struct SignalsError(std::io::Error);

/// SIGTERM and SIGINT, handled from the moment this is installed.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn install() -> Result<Self, SignalsError> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(SignalsError)?,
            int: signal(SignalKind::interrupt()).map_err(SignalsError)?,
        })
    }

    /// The next signal's name.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }

    /// Runs `work` (a stop under way) unless a signal comes first: then `Err` with its name, and
    /// the caller aborts.
    pub async fn unless_again<T>(
        &mut self,
        work: impl Future<Output = T>,
    ) -> Result<T, &'static str> {
        tokio::select! {
            done = work => Ok(done),
            again = self.next() => Err(again),
        }
    }
}

/// What a command's start-up came to: started, or stopped by a signal before it was.
pub enum Started<T> {
    Up(T),
    /// By a signal (its log line says which), or a start that was cancelled.
    Stopped,
}

/// Starts with `start` unless a signal comes first. Nothing serves before `start` returns, so
/// there is nothing to drain: the start is dropped where it waits and the command ends (exit 0).
/// It runs as a task of its own so that a start stuck in a blocking call (a kubeconfig on a
/// stalled network file system) cannot hold up the signal; the runtime's bounded shutdown
/// (`cli`) leaves such a call behind.
pub async fn start_unless_signalled<T, E>(
    signals: &mut Signals,
    start: impl Future<Output = Result<T, E>> + Send + 'static,
) -> Result<Started<T>, E>
where
    T: Send + 'static,
    E: Send + 'static,
{
    let starting = tokio::spawn(start);
    let abort = starting.abort_handle();
    match signals.unless_again(starting).await {
        Ok(Ok(started)) => started.map(Started::Up),
        // Only this function aborts the start, after it stopped waiting: a join error is a panic.
        Ok(Err(e)) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Ok(Started::Stopped),
        },
        Err(by) => {
            abort.abort();
            tracing::info!("{by} during start-up: nothing serves yet, exiting without a drain");
            Ok(Started::Stopped)
        }
    }
}
