//! `sidewatch demo`: a sample app (an HTTP port and a gRPC health service) that goes through the
//! usual causes of 502s, watched by a real sidewatch on a real port, printing each readiness
//! change and a summary.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::app::{self, StartError};
use crate::config::{
    Check, Config, DrainConfig, GrpcAddress, GrpcCheck, HttpCheck, KubernetesConfig, MemoryConfig,
    MemorySource, ProbeConfig, Probes, ProcessConfig, Switch,
};
use crate::engine::Verdict;
use crate::reason::Reason;

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

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let (app_addr, grpc_addr, mode) = start_app().await.context("cannot start the demo app")?;
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
        listen: args.listen,
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
        kubernetes: KubernetesConfig {
            enabled: Switch::Off,
            ..KubernetesConfig::default()
        },
    };
    let running = match app::start(config.clone()).await {
        Err(StartError::Listen { .. }) => {
            config.listen.set_port(0);
            app::start(config).await?
        }
        other => other?,
    };
    let admin = running.local_addr;
    println!(
        "sidewatch demo: sample app on http://{app_addr}/healthz and grpc://{grpc_addr}, sidewatch on http://{admin}"
    );
    println!("  (curl http://{admin}/readyz or /metrics from another terminal while it runs)\n");

    let t0 = Instant::now();
    let stamp = |at: Instant| format!("[{:>5.1}s]", at.duration_since(t0).as_secs_f64());
    let mut verdict = running.verdict.clone();
    let mut last = labels(&verdict.borrow_and_update().verdict);
    let mut results = Vec::new();
    for phase in &PHASES {
        let begun = Instant::now();
        mode.send_replace(phase.mode);
        println!("{} app is now {}", stamp(begun), phase.title);
        // A phase lasts `--phase`, longer while its behaviour is not seen yet (a loaded machine
        // probes late), up to `PHASE_LIMIT`.
        let deadline = begun + args.phase;
        let give_up = begun + args.phase.max(PHASE_LIMIT);
        let mut detected = None;
        loop {
            let current = verdict.borrow_and_update().verdict.clone();
            let now_labels = labels(&current);
            if now_labels != last {
                println!(
                    "{}   sidewatch: {}",
                    stamp(Instant::now()),
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

    let drain_started = Instant::now();
    println!(
        "{} drain (what SIGTERM or the preStop hook starts)",
        stamp(drain_started)
    );
    let drain = running.drain.start("the demo");
    let mut verdict_rx = running.verdict.clone();
    let _ = verdict_rx.wait_for(|p| !p.verdict.ready).await;
    println!(
        "{}   sidewatch: {}",
        stamp(Instant::now()),
        describe(&verdict_rx.borrow().verdict)
    );
    let end = drain.await;
    println!(
        "{}   drain ended after {:.1}s",
        stamp(Instant::now()),
        end.duration_seconds
    );

    println!(
        "\nsummary: {:<40} {:<18} {:<18} detected after",
        "app behaviour", "expected", "seen"
    );
    let mut missed = 0;
    for (phase, detected) in &results {
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

/// Starts the sample app on free loopback ports (HTTP, gRPC); the returned sender switches its
/// behaviour.
async fn start_app() -> std::io::Result<(SocketAddr, SocketAddr, watch::Sender<Mode>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let grpc_addr = grpc.local_addr()?;
    let (mode_tx, mode_rx) = watch::channel(Mode::Healthy);
    tokio::spawn(serve_grpc(grpc, mode_rx.clone()));
    tokio::spawn(serve_app(addr, listener, mode_rx));
    Ok((addr, grpc_addr, mode_tx))
}

/// The standard gRPC health service (tonic-health's), served over HTTP/2 by hyper.
async fn serve_grpc(listener: TcpListener, mut mode: watch::Receiver<Mode>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    use tonic_health::ServingStatus;

    let (reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        loop {
            let status = match *mode.borrow_and_update() {
                Mode::NotServing => ServingStatus::NotServing,
                _ => ServingStatus::Serving,
            };
            reporter.set_service_status("", status).await;
            if mode.changed().await.is_err() {
                return;
            }
        }
    });
    while let Ok((stream, _)) = listener.accept().await {
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn serve_app(addr: SocketAddr, listener: TcpListener, mut mode: watch::Receiver<Mode>) {
    let mut listener = Some(listener);
    loop {
        let current = *mode.borrow_and_update();
        if current == Mode::Crashed {
            // Closing the listener is what a crashed process looks like: connections are refused.
            listener = None;
            if mode.changed().await.is_err() {
                return;
            }
            continue;
        }
        let Some(l) = &listener else {
            match TcpListener::bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(e) => {
                    eprintln!("demo app: cannot listen on {addr} again: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            continue;
        };
        tokio::select! {
            accepted = l.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(answer(stream, current));
                }
            }
            changed = mode.changed() => if changed.is_err() { return },
        }
    }
}

async fn answer(mut stream: TcpStream, mode: Mode) {
    let mut buf = [0u8; 4096];
    let mut read = 0;
    while read < buf.len() && !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf[read..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => read += n,
        }
    }
    let reply: &[u8] = match mode {
        Mode::Healthy | Mode::NotServing => {
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
        }
        Mode::Unavailable => {
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        }
        Mode::Garbage => b"\x00\x13\x37 garbage, this is not HTTP\r\n\r\n",
        Mode::Hang => {
            // Hold the connection until the client gives up, as a wedged app does.
            let _ = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await;
            return;
        }
        Mode::Crashed => return,
    };
    let _ = stream.write_all(reply).await;
    let _ = stream.shutdown().await;
}
