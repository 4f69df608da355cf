//! The memory source `node`: this pod's memory as a stream of lines from the node agent on its
//! node (`sidewatch node`, src/memory/wire.rs), judged here by the same `Assessor` as if read
//! here, so that the sidecar needs no host path and stays at Pod Security "restricted".
//!
//! While the agent is away (refused connection, an answer other than 200, the stream ended or
//! silent for 3 intervals and a second) memory is *blind*: said so by `/readyz?verbose`, the
//! status page and `sidewatch_memory_blind`, its signals vetoing nothing. Never healthy, and
//! never unready: an agent restart must not take every pod of the node out of rotation.

mod endpoint;
mod lines;

use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use endpoint::Away;
pub use endpoint::{Endpoint, NodeSetupError};
use lines::{Lines, Piece, MAX_LINE};

use super::assess::Assessor;
use super::wire::Line;
use super::{MemoryWatcher, Sent};
use crate::engine::bus::Input;
use crate::util::sleep_until;

/// Reconnecting after the agent went away: soon (it restarts in a second or two), then up to
/// every 5 s.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// After a 401 or 403 a person must act (or the kubelet rotate the token): asked less often.
const REFUSED_FIRST: Duration = Duration::from_secs(1);
const REFUSED_MAX: Duration = Duration::from_secs(30);

/// The part's name in the engine's list of parts not watched.
const PART: &str = "memory";

/// What the node loop carries from one connection to the next.
struct Session {
    assessor: Assessor,
    sent: Sent,
    /// The last read error logged, so each kind of failure is logged once.
    last_error: Option<String>,
    /// Why memory is blind now, as the engine was told.
    blind: Option<String>,
    /// The agent said the cgroup is gone (a container restart): the next sample is a new one's.
    gone: bool,
    gauge: prometheus::IntGauge,
}

/// The engine task is gone: nothing is left to report to.
struct Gone;

impl MemoryWatcher {
    pub(super) async fn run_node(self, endpoint: Endpoint) {
        self.metrics.source("node");
        // The agent samples at the interval the sidecar asks for, one pace.
        self.metrics.pace.set(self.config.interval.as_secs_f64());
        let mut s = Session {
            assessor: Assessor::new(self.config.thresholds()),
            sent: Sent::default(),
            last_error: None,
            blind: None,
            gone: false,
            gauge: self.metrics.node(),
        };
        tracing::info!(agent = %endpoint.describe(), "memory: reading this pod's memory from the node agent");
        let mut retry = backoff(false);
        let mut refused_before = false;
        loop {
            let (away, flowed) = match self.stream(&endpoint, &mut s).await {
                Ok(ended) => ended,
                Err(Gone) => return,
            };
            if flowed || away.refused != refused_before {
                retry = backoff(away.refused);
                refused_before = away.refused;
            }
            if self.agent_away(&endpoint, away, &mut s).await.is_err() {
                return;
            }
            let delay = retry.next().unwrap_or(RETRY_MAX);
            if self.pause(delay, &mut s).await.is_err() {
                return;
            }
        }
    }

    /// One connection, read until it ends; why it did, and whether a line flowed on it.
    async fn stream(&self, e: &Endpoint, s: &mut Session) -> Result<(Away, bool), Gone> {
        let token = match e.token() {
            Ok(token) => token,
            Err(away) => return Ok((away, false)),
        };
        let silence = e.interval * 3 + Duration::from_secs(1);
        let silent = || {
            Away::new(format!(
                "sent no line for {}",
                humantime::format_duration(silence)
            ))
        };
        let (mut body, _driver) = match tokio::time::timeout(silence, e.open(&token)).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(away)) => return Ok((away, false)),
            Err(_) => {
                let why = format!(
                    "did not answer within {}",
                    humantime::format_duration(silence)
                );
                return Ok((Away::new(why), false));
            }
        };
        let mut lines = Lines::default();
        let mut pieces = Vec::new();
        let mut flowed = false;
        let mut deadline = Instant::now() + silence;
        loop {
            let frame = match tokio::time::timeout_at(deadline.into(), body.frame()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(Some(Err(err))) => {
                    return Ok((Away::new(format!("broke the stream: {err}")), flowed))
                }
                Ok(None) => return Ok((Away::new("ended the stream".into()), flowed)),
                Err(_) => return Ok((silent(), flowed)),
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            lines.push(&data, &mut pieces);
            for piece in pieces.drain(..) {
                deadline = Instant::now() + silence;
                flowed |= self.line(piece, s).await?;
            }
        }
    }

    /// One line of the stream; true when it was the agent's (a sample or an unreadable look).
    async fn line(&self, piece: Piece, s: &mut Session) -> Result<bool, Gone> {
        let bytes = match piece {
            Piece::TooLong => {
                let why = format!("the node agent sent a line longer than {MAX_LINE} bytes");
                return self.garbled(why, s).await.map(|()| false);
            }
            Piece::Line(bytes) if bytes.trim_ascii().is_empty() => return Ok(false),
            Piece::Line(bytes) => bytes,
        };
        let line = match Line::decode(&bytes) {
            Ok(line) => line,
            Err(e) => {
                let text = String::from_utf8_lossy(&bytes);
                let why = format!(
                    "the node agent sent a line that is no sample: {e}: {:?}",
                    crate::util::clip(&text, 120)
                );
                return self.garbled(why, s).await.map(|()| false);
            }
        };
        match line {
            Line::Sample(wire) => match wire.into_sample(Instant::now()) {
                Ok(sample) => {
                    if s.last_error.take().is_some() {
                        tracing::info!("memory: readable again");
                    }
                    if std::mem::take(&mut s.gone) {
                        // Its counters start at zero: every kill it counts is new.
                        s.assessor.new_cgroup();
                        tracing::info!("memory: the node agent reads a new cgroup (a container restart?): watching it from zero");
                    }
                    let assessment = s.assessor.assess(&sample);
                    self.publish(&sample, &assessment);
                    ok(self.send_all(assessment, &mut s.sent).await)?;
                    // Only now: a signal that never had a sample would veto as starting.
                    self.see_again(s).await?;
                }
                Err(e) => {
                    let why = format!("the node agent sent a sample this sidecar cannot read: {e}");
                    self.garbled(why, s).await?;
                }
            },
            Line::Unreadable(e) => {
                self.see_again(s).await?;
                s.gone |= e.kind == "gone";
                let kind = match e.kind.as_str() {
                    "gone" => "gone",
                    "missing" => "missing",
                    "garbled" => "garbled",
                    // A kind a later agent knows and this sidecar does not.
                    _ => "io",
                };
                let text = format!(
                    "the node agent cannot read this pod's memory: {}",
                    e.message
                );
                ok(self
                    .cannot_read(kind, text, &mut s.last_error, &mut s.sent, &mut s.assessor)
                    .await)?;
            }
        }
        Ok(true)
    }

    async fn garbled(&self, why: String, s: &mut Session) -> Result<(), Gone> {
        let sent = &mut s.sent;
        ok(self
            .cannot_read("garbled", why, &mut s.last_error, sent, &mut s.assessor)
            .await)
    }

    /// The stream flows: memory is no longer blind.
    async fn see_again(&self, s: &mut Session) -> Result<(), Gone> {
        if s.blind.take().is_none() {
            return Ok(());
        }
        tracing::info!("memory: the node agent's stream is back");
        s.gauge.set(0);
        let input = Input::Blind {
            part: PART,
            why: None,
        };
        self.inputs.send(input).await.map_err(|_| Gone)
    }

    /// Counts, logs once per reason, and turns memory blind; what the assessor still has to say
    /// (a cooling OOM kill, a burst settling) goes out as if the memory could not be read.
    async fn agent_away(&self, e: &Endpoint, away: Away, s: &mut Session) -> Result<(), Gone> {
        self.metrics
            .read_errors
            .with_label_values(&[away.kind])
            .inc();
        let why = format!("the node agent at {} {}", e.url(), away.why);
        if s.blind.as_deref() != Some(why.as_str()) {
            if away.refused {
                tracing::error!(
                    token_file = %e.token_file.display(),
                    "memory: blind, because {why}. Likely causes: the token's audience is not {} (the projected volume sidewatch-node-token), HOST_IP is not this pod's node, or POD_NAME and POD_NAMESPACE are not the token's pod",
                    super::wire::AUDIENCE
                );
            } else {
                tracing::warn!("memory: blind, because {why}; memory signals veto nothing until the stream is back");
            }
            s.gauge.set(1);
            s.blind = Some(why.clone());
            let input = Input::Blind {
                part: PART,
                why: Some(why),
            };
            self.inputs.send(input).await.map_err(|_| Gone)?;
        }
        self.unseen(s).await
    }

    /// Waits before the next connection, still letting an OOM cooldown end and a burst settle.
    async fn pause(&self, delay: Duration, s: &mut Session) -> Result<(), Gone> {
        let until = Instant::now() + delay;
        loop {
            let wake_at = s.assessor.wake_at().filter(|at| *at < until);
            tokio::select! {
                _ = sleep_until(Some(until)) => return Ok(()),
                _ = sleep_until(wake_at), if wake_at.is_some() => self.unseen(s).await?,
            }
        }
    }

    async fn unseen(&self, s: &mut Session) -> Result<(), Gone> {
        let assessment = s.assessor.unreadable(Instant::now());
        self.count_ooms(&assessment, None, None);
        ok(self.send_all(assessment, &mut s.sent).await)
    }
}

fn ok(engine_there: bool) -> Result<(), Gone> {
    engine_there.then_some(()).ok_or(Gone)
}

/// The waits between connections: doubling from the first to the cap, with jitter (a node's
/// sidecars all lose the agent at once), for ever.
fn backoff(refused: bool) -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    let (first, max) = if refused {
        (REFUSED_FIRST, REFUSED_MAX)
    } else {
        (RETRY_FIRST, RETRY_MAX)
    };
    backon::ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}
