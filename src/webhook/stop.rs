//! The webhook's stop. As PID 1 of its image a signal without a handler is dropped, so the
//! handlers are installed before anything else starts. On SIGTERM or SIGINT: `/readyz` answers
//! 503 at once, the webhook keeps accepting for `--shutdown-delay` (the endpoints drop it in that
//! time, and the API servers stop sending it reviews), then stops accepting, answers every review
//! in flight (each within `STOP_GRACE`) and the process exits 0. A second signal aborts at once
//! (exit 1).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub(super) use crate::lifecycle::Signals;
use crate::liveness::Tasks;

/// How long a connection may take, once asked to close, to answer the review it is in. The API
/// server gives up on a webhook after its timeoutSeconds (the chart's 5 s, at most 30 s), and a
/// review's body must arrive within 10 s anyway.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(10);
/// Every connection ends within `STOP_GRACE` of the stop; this is the bound on the whole, with a
/// TLS handshake under way at the stop (10 s) on top.
const STOP_WITHIN: Duration = Duration::from_secs(21);

#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("{0} again while stopping: aborted")]
    Aborted(&'static str),
}

/// Waits for a signal, then stops as the module says. `stopping` fails `/readyz`; cancelling
/// `shutdown` stops the servers accepting (and the other `tasks`).
pub(super) async fn on_signal(
    mut signals: Signals,
    delay: Duration,
    stopping: &AtomicBool,
    shutdown: &CancellationToken,
    tasks: &Tasks,
) -> Result<(), StopError> {
    let by = signals.next().await;
    stopping.store(true, Ordering::Release);
    tracing::info!(delay = ?delay, "{by}: readiness failed, still accepting until the delay's end");
    signals
        .unless_again(tokio::time::sleep(delay))
        .await
        .map_err(StopError::Aborted)?;
    shutdown.cancel();
    tracing::info!("stopped accepting: answering the reviews in flight");
    let ended = signals
        .unless_again(tasks.ended(STOP_WITHIN))
        .await
        .map_err(StopError::Aborted)?;
    if !ended {
        tracing::warn!(within = ?STOP_WITHIN, "connections still open at exit");
    }
    tracing::info!("every review answered: exiting");
    Ok(())
}
