//! `sidewatch demo`: a sample app (an HTTP port and a gRPC health service) that goes through the
//! usual causes of 502s, watched by a real sidewatch on a real port, printing each readiness
//! change and a summary.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tokio::sync::watch;

use crate::app::{self, Running, StartError};
use crate::config::{
    Check, Config, DrainConfig, GrpcAddress, GrpcCheck, HttpCheck, KubernetesConfig, MemoryConfig,
    MemorySource, ProbeConfig, Probes, ProcessConfig, Switch,
};
use crate::engine::Verdict;
use crate::lifecycle::Signals;
use crate::reason::Reason;

mod sample;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Healthy,
    Crashed,
    Garbage,
    Unavailable,
    Hang,
    /// The HTTP port is fine; the gRPC health service answers NOT_SERVING.
    NotServing,
}

struct Phase {
    mode: Mode,
    title: &'static str,
    /// The reason sidewatch should give; `None` means ready.
    expect: Option<Reason>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address of sidewatch's admin server during the demo (a free port is taken if it is busy).
    #[arg(long, default_value = "127.0.0.1:9102")]
    pub listen: SocketAddr,
    /// How long each phase of the demo lasts.
    #[arg(long, default_value = "3s", value_parser = crate::units::duration::parse)]
    pub phase: Duration,
}

/// The longest a phase waits for its behaviour to be seen.
const PHASE_LIMIT: Duration = Duration::from_secs(10);

const PHASES: [Phase; 7] = [
    Phase {
        mode: Mode::Healthy,
        title: "healthy: answers 200",
        expect: None,
    },
    Phase {
        mode: Mode::Crashed,
        title: "crashed: nothing listens on the port",
        expect: Some(Reason::Refused),
    },
    Phase {
        mode: Mode::Garbage,
        title: "answers garbage bytes, not HTTP",
        expect: Some(Reason::InvalidResponse),
    },
    Phase {
        mode: Mode::Unavailable,
        title: "answers 503 Service Unavailable",
        expect: Some(Reason::Http5xx),
    },
    Phase {
        mode: Mode::Hang,
        title: "hangs: accepts, never answers",
        expect: Some(Reason::Timeout),
    },
    Phase {
        mode: Mode::NotServing,
        title: "says NOT_SERVING on gRPC health",
        expect: Some(Reason::NotServing),
    },
    Phase {
        mode: Mode::Healthy,
        title: "healthy again",
        expect: None,
    },
];

/// `sidewatch demo`. SIGINT (Ctrl-C) or SIGTERM ends it at once, exit 0: the demo has nothing to
/// hand over. Its sidewatch and sample app stop as `run` stops (one token, one bound); a second
/// signal meanwhile aborts.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let started = match signals.unless_again(start(args.listen)).await {
        Ok(started) => started?,
        Err(by) => {
            println!("\n{by}: demo stopped");
            return Ok(());
        }
    };
    let shown = signals.unless_again(show(&started, args.phase)).await;
    let (running, _mode) = started;
    signals
        .unless_again(running.stop())
        .await
        .map_err(|again| anyhow::anyhow!("{again} while stopping: aborted"))?;
    match shown {
        Ok(summary) => summary,
        Err(by) => {
            println!("\n{by}: demo stopped");
            Ok(())
        }
    }
}

/// The sample app and a sidewatch watching it; the app served in the sidewatch's lifecycle.
async fn start(listen: SocketAddr) -> anyhow::Result<(Running, watch::Sender<Mode>)> {
    let app = sample::App::bind()
        .await
        .context("cannot start the demo app")?;
    let (app_addr, grpc_addr) = (app.http, app.grpc);
    let running = start_sidewatch(listen, app_addr, grpc_addr).await?;
    let mode = app.serve(&running.scope_here());
    let admin = running.local_addr;
    println!(
        "sidewatch demo: sample app on http://{app_addr}/healthz and grpc://{grpc_addr}, sidewatch on http://{admin}"
    );
    println!("  (curl http://{admin}/readyz or /metrics from another terminal while it runs)\n");
    Ok((running, mode))
}

/// The demo's steps once started: each phase, a drain, the summary.
async fn show(
    (running, mode): &(Running, watch::Sender<Mode>),
    phase: Duration,
) -> anyhow::Result<()> {
    let clock = Clock(Instant::now());
    let results = run_phases(running, mode, phase, &clock).await;
    drain(running, &clock).await;
    summarise(&results)
}

/// The demo's sidewatch: both probes every 200 ms, no memory, process or Kubernetes part. Takes
/// a free port when `listen` is busy (another demo, a real sidewatch).
async fn start_sidewatch(
    listen: SocketAddr,
    app_addr: SocketAddr,
    grpc_addr: SocketAddr,
) -> anyhow::Result<Running> {
    let url = format!("http://{app_addr}/healthz")
        .parse()
        .map_err(anyhow::Error::msg)?;
    let http = ProbeConfig::new("app", Check::Http(HttpCheck::new(url)));
    let grpc = GrpcCheck::new(GrpcAddress::Tcp(
        grpc_addr.to_string().parse().map_err(anyhow::Error::msg)?,
    ));
    let mut probes = vec![http, ProbeConfig::new("rpc", Check::Grpc(grpc))];
    for probe in &mut probes {
        probe.interval = Duration::from_millis(200);
        probe.timeout = Duration::from_millis(300);
    }
    let mut config = Config {
        listen,
        probes: Probes(probes),
        // The demo may run on a busy machine: only the demo app's own sockets count as traffic.
        drain: DrainConfig {
            delay: Duration::from_secs(1),
            max: Duration::from_secs(5),
            passive_opens: false,
            ..DrainConfig::default()
        },
        memory: MemoryConfig {
            source: MemorySource::None,
            ..MemoryConfig::default()
        },
        process: ProcessConfig::default(),
        overload: Default::default(),
        agent: Default::default(),
        kubernetes: KubernetesConfig {
            enabled: Switch::Off,
            ..KubernetesConfig::default()
        },
    };
    Ok(match app::start(config.clone()).await {
        Err(StartError::Listen { .. }) => {
            config.listen.set_port(0);
            app::start(config).await?
        }
        other => other?,
    })
}

/// Seconds since the demo began, as each printed line starts.
struct Clock(Instant);

impl Clock {
    fn stamp(&self, at: Instant) -> String {
        format!("[{:>5.1}s]", at.duration_since(self.0).as_secs_f64())
    }
}

/// Switches the app through every phase, printing each change of verdict; returns how long each
/// phase's behaviour took to be seen (`None`: never).
async fn run_phases(
    running: &Running,
    mode: &watch::Sender<Mode>,
    length: Duration,
    clock: &Clock,
) -> Vec<(&'static Phase, Option<Duration>)> {
    let mut verdict = running.verdict.clone();
    let mut last = labels(&verdict.borrow_and_update().verdict);
    let mut results = Vec::new();
    for phase in &PHASES {
        let begun = Instant::now();
        mode.send_replace(phase.mode);
        println!("{} app is now {}", clock.stamp(begun), phase.title);
        // A phase lasts `--phase`, longer while its behaviour is not seen yet (a loaded machine
        // probes late), up to `PHASE_LIMIT`.
        let deadline = begun + length;
        let give_up = begun + length.max(PHASE_LIMIT);
        let mut detected = None;
        loop {
            let current = verdict.borrow_and_update().verdict.clone();
            let now_labels = labels(&current);
            if now_labels != last {
                println!(
                    "{}   sidewatch: {}",
                    clock.stamp(Instant::now()),
                    describe(&current)
                );
                last = now_labels;
            }
            if detected.is_none() && shows(&current, phase.expect) {
                detected = Some(begun.elapsed());
            }
            let until = if detected.is_some() {
                deadline
            } else {
                give_up
            };
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => break,
                changed = verdict.changed() => if changed.is_err() { break },
            }
        }
        results.push((phase, detected));
    }
    results
}

/// Starts a drain as SIGTERM would, and waits for its end.
async fn drain(running: &Running, clock: &Clock) {
    println!(
        "{} drain (what SIGTERM or the preStop hook starts)",
        clock.stamp(Instant::now())
    );
    let drain = running.drain.start("the demo");
    let mut verdict_rx = running.verdict.clone();
    let _ = verdict_rx.wait_for(|p| !p.verdict.ready).await;
    println!(
        "{}   sidewatch: {}",
        clock.stamp(Instant::now()),
        describe(&verdict_rx.borrow().verdict)
    );
    let end = drain.await;
    println!(
        "{}   drain ended after {:.1}s",
        clock.stamp(Instant::now()),
        end.duration_seconds
    );
}

/// Prints the table of phases; an error when a behaviour was not classified as expected.
fn summarise(results: &[(&'static Phase, Option<Duration>)]) -> anyhow::Result<()> {
    println!(
        "\nsummary: {:<40} {:<18} {:<18} detected after",
        "app behaviour", "expected", "seen"
    );
    let mut missed = 0;
    for (phase, detected) in results {
        let expected = phase.expect.map_or("ready", Reason::as_str);
        let (seen, after) = match detected {
            Some(d) => (expected, format!("{:.2}s", d.as_secs_f64())),
            None => {
                missed += 1;
                ("NOT SEEN", "-".to_owned())
            }
        };
        println!(
            "         {:<40} {expected:<18} {seen:<18} {after}",
            phase.title
        );
    }
    println!(
        "\n{} of {} behaviours classified as expected. Try it on your app: sidewatch run --target http://127.0.0.1:8080/healthz",
        results.len() - missed,
        results.len()
    );
    anyhow::ensure!(
        missed == 0,
        "{missed} behaviours were not classified as expected"
    );
    Ok(())
}

fn labels(v: &Verdict) -> (bool, Vec<Reason>) {
    (v.ready, v.reasons.iter().map(|c| c.reason).collect())
}

fn shows(v: &Verdict, expect: Option<Reason>) -> bool {
    match expect {
        None => v.ready,
        Some(r) => !v.ready && v.reasons.iter().any(|c| c.reason == r),
    }
}

fn describe(v: &Verdict) -> String {
    if v.ready {
        return "READY".to_owned();
    }
    let reasons: Vec<String> = v
        .reasons
        .iter()
        .map(|c| format!("{} ({})", c.reason, c.message))
        .collect();
    format!("NOT READY: {}", reasons.join("; "))
}
