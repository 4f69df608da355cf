//! What travels between the parts: inputs to the engine task, the verdict it publishes, and
//! notices for the outputs (Events). Every part depends on this, and this on the engine alone.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use super::history::Transition;
use super::{Engine, NotWatched, Observation, Signal, SignalView, Verdict};

pub enum Input {
    Observe {
        signal: Signal,
        observation: Observation,
    },
    Drain {
        message: String,
    },
    /// A part cannot see now (`why`), or sees again (`None`): `Engine::blind`.
    Blind {
        part: &'static str,
        why: Option<String>,
    },
}

/// A verdict as the HTTP server serves it: reading it never waits on the engine. With every
/// signal as it stands and the last transitions, for `/readyz?verbose` and the status page.
#[derive(Debug)]
pub struct Published {
    pub verdict: Verdict,
    pub body: Bytes,
    pub signals: Vec<SignalView>,
    pub not_watched: Vec<NotWatched>,
    pub history: Arc<[Transition]>,
}

impl Published {
    pub fn new(engine: &Engine, history: Arc<[Transition]>) -> Arc<Self> {
        let verdict = engine.verdict();
        let body = serde_json::to_vec(verdict).unwrap_or_else(|_| b"{\"ready\":false}".to_vec());
        Arc::new(Published {
            verdict: verdict.clone(),
            body: Bytes::from(body),
            signals: engine.signals(),
            not_watched: engine.parts_not_watched().to_vec(),
            history,
        })
    }

    /// `/readyz?verbose`: the verdict, every signal, the last transitions (newest first).
    pub fn verbose(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Verbose<'a> {
            #[serde(flatten)]
            verdict: &'a Verdict,
            signals: &'a [SignalView],
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            not_watched: &'a [NotWatched],
            history: &'a [Transition],
        }
        let verbose = Verbose {
            verdict: &self.verdict,
            signals: &self.signals,
            not_watched: &self.not_watched,
            history: &self.history,
        };
        serde_json::to_vec(&verbose).unwrap_or_default()
    }
}

/// How a drain ended, for its caller, the metrics, the Event and the exit path.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DrainEnd {
    pub outcome: &'static str,
    pub duration_seconds: f64,
    pub new_connections: u64,
    pub bytes_in: u64,
    #[serde(skip)]
    pub began: Instant,
    #[serde(skip)]
    pub ended: Instant,
}

/// Notices from other parts that deserve an Event: the cgroup watcher's OOM kills, the drain's end.
#[derive(Debug)]
pub enum Notice {
    /// What the kernel killed and at which limit, in words.
    OomKill { message: String },
    /// A drain ended; `posted` is dropped once its Event is posted or given up, which the exit
    /// path waits for.
    Drained {
        end: DrainEnd,
        posted: tokio::sync::oneshot::Sender<()>,
    },
}
