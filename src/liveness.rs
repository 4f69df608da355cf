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

    /// Tasks of a command with one runtime (the webhook, the node agent): spawned on the
    /// current one, tracked together, their deaths in `liveness`.
    pub fn here(liveness: &Liveness) -> Self {
        Tasks::new(Handle::current(), liveness.clone(), TaskTracker::new())
    }

    /// The same tasks (one liveness, one tracker), spawned on `runtime` instead: the admin
    /// server stays off the watch runtime (a flood on its port must not delay a probe) and the
    /// demo's sample app with it, yet both are watched and waited for with the rest.
    pub fn on(&self, runtime: Handle) -> Tasks {
        Tasks {
            runtime,
            ..self.clone()
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
        self.spawn_part(name, stop, async move {
            task.await;
            Ended::Early
        });
    }

    /// As `spawn`, for a task that can tell a normal end of its own (`Ended::Normally`: what it
    /// watched went away) from dying (`Ended::Early`, or a panic).
    pub fn spawn_part(
        &self,
        name: impl Into<String>,
        stop: &CancellationToken,
        task: impl Future<Output = Ended> + Send + 'static,
    ) {
        let guard = self.liveness.register(name);
        let stop = stop.clone();
        self.tracker.spawn_on(
            async move {
                let ended = stop.run_until_cancelled(task).await;
                // Told to stop, whether it noticed first or a part it feeds went away first.
                if ended == Some(Ended::Normally) || stop.is_cancelled() {
                    guard.finish();
                }
            },
            &self.runtime,
        );
    }

    /// Runs `task`, which sees `stop` itself and ends after finishing what it holds (a server
    /// answers the requests in flight): it is awaited whole. Ending before `stop`, or
    /// panicking, is dying.
    pub fn spawn_graceful(
        &self,
        name: impl Into<String>,
        stop: &CancellationToken,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let guard = self.liveness.register(name);
        let stop = stop.clone();
        self.tracker.spawn_on(
            async move {
                task.await;
                if stop.is_cancelled() {
                    guard.finish();
                }
            },
            &self.runtime,
        );
    }

    /// Tasks that stop with `stop` (or before, when it is cancelled alone).
    pub fn scope(&self, stop: &CancellationToken) -> Scope {
        Scope {
            tasks: self.clone(),
            stop: stop.clone(),
        }
    }

    /// Waits for every task to have ended, `within` at most; false when some had not.
    pub async fn ended(&self, within: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(within, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// How a part ended on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// What it watched went away (a cgroup removed, a process exited): not a death.
    Normally,
    /// While it was still needed: a death, as a panic is.
    Early,
}

/// The tasks of one part of a watcher (the notifications armed on one cgroup, say): all stopped
/// at once when the part is let go, or with the watcher. A part let go is not dead.
#[derive(Clone)]
pub struct Scope {
    tasks: Tasks,
    stop: CancellationToken,
}

impl Scope {
    /// A scope inside this one: stopped with it, or alone by `stop`.
    pub fn child(&self) -> Scope {
        Scope {
            tasks: self.tasks.clone(),
            stop: self.stop.child_token(),
        }
    }

    pub fn spawn(
        &self,
        name: impl Into<String>,
        task: impl Future<Output = Ended> + Send + 'static,
    ) {
        self.tasks.spawn_part(name, &self.stop, task);
    }

    /// Stops every task of the scope: they end normally.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// The tasks running and those that died, by a key of their own: a part armed again (a
/// container restart) is another task under the same name. Finished ones are forgotten, so that
/// parts coming and going for days leave nothing behind.
#[derive(Clone, Default)]
pub struct Liveness(Arc<Mutex<Known>>);

#[derive(Default)]
struct Known {
    next: u64,
    tasks: BTreeMap<u64, (String, bool)>,
}

/// Held by a running task; dropping it without `finish` (a panic, an early return) marks the task dead.
pub struct Guard {
    liveness: Liveness,
    key: u64,
    finished: bool,
}

impl Liveness {
    pub fn register(&self, name: impl Into<String>) -> Guard {
        let mut known = self.lock();
        let key = known.next;
        known.next += 1;
        known.tasks.insert(key, (name.into(), false));
        Guard {
            liveness: self.clone(),
            key,
            finished: false,
        }
    }

    /// The names of the tasks that died; empty when all is well.
    pub fn dead(&self) -> Vec<String> {
        let known = self.lock();
        let mut dead: Vec<String> = known
            .tasks
            .values()
            .filter(|(_, died)| *died)
            .map(|(n, _)| n.clone())
            .collect();
        dead.sort();
        dead.dedup();
        dead
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
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
        let mut known = self.liveness.lock();
        if self.finished {
            known.tasks.remove(&self.key);
            return;
        }
        let Some((name, died)) = known.tasks.get_mut(&self.key) else {
            return;
        };
        *died = true;
        tracing::error!(task = %name, "watcher task died; /livez now fails");
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

    /// The notifier semantics: a part let go or ending normally is not dead; one that ends early
    /// or panics while its watcher still needs it is, and stays so after the part is armed again.
    #[tokio::test]
    async fn a_part_let_go_or_ended_normally_lives_and_one_ended_early_or_panicking_is_dead() {
        let liveness = Liveness::default();
        let tracker = TaskTracker::new();
        let tasks = Tasks::new(Handle::current(), liveness.clone(), tracker.clone());
        let shutdown = CancellationToken::new();
        let watcher = tasks.scope(&shutdown);
        let attachment = watcher.child();
        attachment.spawn("let go", std::future::pending());
        attachment.spawn("went away", async { Ended::Normally });
        tokio::task::yield_now().await;
        attachment.stop();
        let again = watcher.child();
        again.spawn("early", async { Ended::Early });
        again.spawn("panics", async { panic!("a notifier's bug") });
        again.spawn("running", std::future::pending());
        // All but "running" end; polled, as the tracker has no wait for "all but one".
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while tracker.len() > 1 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(ended.is_ok(), "{} tasks still running", tracker.len());
        assert_eq!(liveness.dead(), ["early", "panics"]);
        // Armed again after a restart: the death stays (the kubelet restarts the sidecar).
        let third = watcher.child();
        third.spawn("early", std::future::pending());
        assert_eq!(liveness.dead(), ["early", "panics"]);
        shutdown.cancel();
        assert!(tasks.ended(Duration::from_secs(5)).await);
        assert_eq!(liveness.dead(), ["early", "panics"]);
    }
}
