//! Liveness of the watcher tasks, for `/livez`: a task that ends without saying so is dead.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

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
