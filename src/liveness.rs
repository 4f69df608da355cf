//! The long-running tasks and their liveness, for `/livez`. Every task is spawned one way
//! ([`Tasks::spawn`]): on the watch runtime, under a liveness guard, until the token it is given
//! is cancelled (the one shutdown path cancels them all), tracked so that exit can wait for them.
//! A task that ends before it was told to stop, or panics, is dead.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Spawns and tracks the tasks; cloned into whatever starts one.
#[derive(Clone)]
pub struct Tasks {
    runtime: Handle,
    liveness: Liveness,
    tracker: TaskTracker,
}

impl Tasks {
    /// Tasks on `runtime`, tracked by `tracker` (which the runtime's thread waits on at exit).
    pub fn new(runtime: Handle, liveness: Liveness, tracker: TaskTracker) -> Self {
        Tasks {
            runtime,
            liveness,
            tracker,
        }
    }

    /// Runs `task` until `stop` is cancelled, when it is dropped at its next await: tasks hold
    /// nothing that needs more than that to end. Returning earlier, or panicking, is dying.
    pub fn spawn(
        &self,
        name: impl Into<String>,
        stop: &CancellationToken,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let guard = self.liveness.register(name);
        let stop = stop.clone();
        self.tracker.spawn_on(
            async move {
                // Told to stop, whether it noticed first or a part it feeds went away first.
                let _ = stop.run_until_cancelled(task).await;
                if stop.is_cancelled() {
                    guard.finish();
                }
            },
            &self.runtime,
        );
    }

    /// Waits for every task to have ended, `within` at most; false when some had not.
    pub async fn ended(&self, within: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(within, self.tracker.wait())
            .await
            .is_ok()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    Finished,
    Died,
}

#[derive(Clone, Default)]
pub struct Liveness(Arc<Mutex<BTreeMap<String, State>>>);

/// Held by a running task; dropping it without `finish` (a panic, an early return) marks the task dead.
pub struct Guard {
    liveness: Liveness,
    name: String,
    finished: bool,
}

impl Liveness {
    pub fn register(&self, name: impl Into<String>) -> Guard {
        let name = name.into();
        self.set(&name, State::Running);
        Guard {
            liveness: self.clone(),
            name,
            finished: false,
        }
    }

    /// The names of the tasks that died; empty when all is well.
    pub fn dead(&self) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .filter(|(_, s)| **s == State::Died)
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn set(&self, name: &str, state: State) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert(name.to_owned(), state);
    }
}

impl Guard {
    /// The task ended on purpose (a drain stopped it).
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let state = if self.finished {
            State::Finished
        } else {
            State::Died
        };
        self.liveness.set(&self.name, state);
        if state == State::Died {
            tracing::error!(task = %self.name, "watcher task died; /livez now fails");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_guard_is_dead_and_a_finished_one_is_not() {
        let l = Liveness::default();
        let a = l.register("a");
        let b = l.register("b");
        assert!(l.dead().is_empty());
        b.finish();
        drop(a);
        assert_eq!(l.dead(), ["a"]);
    }
}
