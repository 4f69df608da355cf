//! The pod watch and the publisher of one sidecar (`KubeWatcher::tasks`), run on the test's
//! paused runtime against the fake API server in process: what goes in (the pod as the kubelet
//! writes it, the verdicts and notices of the engine), what comes out (the requests the fake
//! saw, the pod signals, the app container, the metrics).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::Value;
use sidewatch::container::AppContainer;
use sidewatch::engine::bus::{Input, Notice, Published};
use sidewatch::engine::{Cause, Kube, Observation, Signal, Verdict};
use sidewatch::kubernetes::config::KubernetesConfig;
use sidewatch::kubernetes::{Identity, KubeMetrics, KubeWatcher};
use sidewatch::metrics::Registry;
use sidewatch::reason::Reason;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::fake_api::{FakeApi, Recorded};

/// Longer than any wait a scenario expects (virtual time: it costs nothing to be generous).
pub const WITHIN: Duration = Duration::from_secs(600);

/// What one request was, as the scenarios assert on order and counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    List,
    Watch,
    /// PATCH of pods/status: the readiness gate.
    Gate,
    /// POST of an Event.
    Event,
    /// PATCH of an Event: kube's recorder counts a repeat in the first one's `series`.
    EventRepeat,
    Other,
}

impl Op {
    pub fn of(r: &Recorded) -> Op {
        let pods = r.path.ends_with("/pods");
        match r.method.as_str() {
            "GET" if pods && r.query.contains("watch=true") => Op::Watch,
            "GET" if pods => Op::List,
            "PATCH" if r.path.ends_with("/status") => Op::Gate,
            "POST" if r.path.ends_with("/events") => Op::Event,
            "PATCH" if r.path.contains("/events/") => Op::EventRepeat,
            _ => Op::Other,
        }
    }
}

pub struct Harness {
    pub api: FakeApi,
    pub inputs: mpsc::Receiver<Input>,
    pub verdict: watch::Sender<Arc<Published>>,
    pub notices: mpsc::Sender<Notice>,
    pub app: watch::Receiver<AppContainer>,
    registry: Registry,
    tasks: Vec<JoinHandle<()>>,
}

impl Harness {
    /// The two tasks, for the pod `pod` (named web-1 in shop), starting from `verdict`.
    pub fn start(pod: Value, config: KubernetesConfig, verdict: Verdict) -> Harness {
        let api = FakeApi::in_process(pod);
        let registry = Registry::new();
        let (inputs_tx, inputs) = mpsc::channel(1024);
        let (verdict_tx, verdict_rx) = watch::channel(published(verdict));
        let (notices_tx, notices_rx) = mpsc::channel(16);
        let (app_tx, app) = watch::channel(AppContainer::default());
        let identity = Identity {
            client: api.client(),
            namespace: "shop".into(),
            pod: "web-1".into(),
            container: "sidewatch".into(),
        };
        let watcher = KubeWatcher {
            identity,
            config,
            inputs: inputs_tx,
            metrics: KubeMetrics::new(&registry),
            verdict: verdict_rx,
            notices: notices_rx,
            app: app_tx,
        };
        let tasks = watcher
            .tasks()
            .into_iter()
            .map(|(_, task)| tokio::spawn(task))
            .collect();
        Harness {
            api,
            inputs,
            verdict: verdict_tx,
            notices: notices_tx,
            app,
            registry,
            tasks,
        }
    }

    /// The engine's verdict changes to `v`.
    pub fn set_verdict(&self, v: Verdict) {
        self.verdict.send_replace(published(v));
    }

    /// The ops of the requests so far, in order.
    pub fn ops(&self) -> Vec<Op> {
        self.api.requests().iter().map(Op::of).collect()
    }

    /// The requests of `op` so far.
    pub fn of(&self, op: Op) -> Vec<Recorded> {
        let all = self.api.requests();
        all.into_iter().filter(|r| Op::of(r) == op).collect()
    }

    /// Waits until `n` requests of `op` have been made; they are returned.
    pub async fn wait_for(&self, op: Op, n: usize) -> Vec<Recorded> {
        self.wait_for_any(&[op], n).await
    }

    /// Waits until `n` requests of any of `ops` have been made; they are returned.
    pub async fn wait_for_any(&self, ops: &[Op], n: usize) -> Vec<Recorded> {
        let what = format!("{n} request(s) of {ops:?}");
        self.api
            .wait_requests(&what, WITHIN, |all| {
                let found: Vec<Recorded> = all
                    .iter()
                    .filter(|r| ops.contains(&Op::of(r)))
                    .cloned()
                    .collect();
                (found.len() >= n).then_some(found)
            })
            .await
    }

    /// The next pod signal the watch sent the engine.
    pub async fn next_signal(&mut self) -> (Kube, Observation) {
        let input = tokio::time::timeout(WITHIN, self.inputs.recv())
            .await
            .expect("a pod signal within the wait")
            .expect("the pod watch is running");
        match input {
            Input::Observe {
                signal: Signal::Kube(kube),
                observation,
            } => (kube, observation),
            _ => panic!("the pod watch sent something else than a pod signal"),
        }
    }

    /// The pod signals sent so far and not read yet.
    pub fn signals_so_far(&mut self) -> Vec<(Kube, Observation)> {
        let mut out = Vec::new();
        while let Ok(input) = self.inputs.try_recv() {
            if let Input::Observe {
                signal: Signal::Kube(kube),
                observation,
            } = input
            {
                out.push((kube, observation));
            }
        }
        out
    }

    /// Lets virtual time run for `d`. Auto-advance moves the clock only once every task is idle,
    /// so this is also a barrier: whatever the tasks can do by then is done.
    pub async fn run_for(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// A counter or gauge's value in the registry, by its series as the exposition writes it
    /// (`sidewatch_kube_errors_total{op="watch"}`); 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let text = String::from_utf8(self.registry.encode()).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A verdict as the engine publishes it.
pub fn published(verdict: Verdict) -> Arc<Published> {
    Arc::new(Published {
        verdict,
        body: Bytes::new(),
        signals: Vec::new(),
        not_watched: Vec::new(),
        history: Arc::from(Vec::new()),
    })
}

pub fn ready() -> Verdict {
    Verdict {
        ready: true,
        draining: false,
        reasons: Vec::new(),
        warnings: Vec::new(),
    }
}

/// Not ready for the `http` probe's `reason`.
pub fn unready(reason: Reason) -> Verdict {
    Verdict {
        ready: false,
        draining: false,
        reasons: vec![Cause {
            signal: Signal::Probe("http".into()),
            reason,
            message: "GET / answered 503".into(),
            since: SystemTime::now(),
        }],
        warnings: Vec::new(),
    }
}

/// The gate's condition a status patch sent: (status, reason, lastTransitionTime).
pub fn gate_of(patch: &Recorded) -> (String, String, String) {
    let c = &patch.body["status"]["conditions"][0];
    let field = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    (
        field("status"),
        field("reason"),
        field("lastTransitionTime"),
    )
}

/// The gaps between consecutive requests, in virtual time.
pub fn gaps(requests: &[Recorded]) -> Vec<Duration> {
    requests
        .windows(2)
        .map(|w| w[1].instant.duration_since(w[0].instant))
        .collect()
}

/// `d` is `want` give or take the timer's millisecond.
pub fn about(d: Duration, want: Duration) -> bool {
    d.abs_diff(want) <= Duration::from_millis(5)
}
