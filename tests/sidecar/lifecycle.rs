//! The lifecycle every command shares: signal handlers before anything starts, so a signal during
//! start-up ends the process at once (exit 0, nothing to drain) instead of being lost; the demo
//! ends at once on Ctrl-C.

#[allow(unused_imports)]
use crate::common;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, LogLines};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const WITHIN: Duration = Duration::from_secs(5);
/// How long a start may take to reach its kubeconfig: as long as `Sidewatch::start` allows a
/// whole start (a debug build on a loaded 2-core machine).
const STARTING_WITHIN: Duration = Duration::from_secs(20);

/// The start is held where it reads its kubeconfig: a FIFO that is opened but never written (as
/// a stalled network file system would hold it). SIGTERM then ends it within `WITHIN`, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_start_up_exits_zero_at_once() {
    let dir = common::tempdir::Dir::new();
    let fifo = dir.path().join("kubeconfig");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        common::skip_or_fail("mkfifo is not available");
        return;
    }
    let mut child = common::sidewatch_command()
        .args(["run", "--target", "http://127.0.0.1:9/", "--cgroup", "none"])
        .args(["--listen", "127.0.0.1:0"])
        .env("KUBECONFIG", &fifo)
        .env("POD_NAME", "web-1")
        .env("POD_NAMESPACE", "shop")
        .env("RUST_LOG", "info")
        .env_remove("SIDEWATCH_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sidewatch");
    let logs = LogLines::read(child.stderr.take().expect("piped stderr"));
    // A writer can open the FIFO without blocking only once its reader has: then sidewatch waits
    // in its start, for bytes that never come while `_writer` is held.
    let _writer = eventually("sidewatch to open its kubeconfig", STARTING_WITHIN, || {
        // A start that ended instead (a refused setting, a crash) says why here, not as a timeout.
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "sidewatch ended before reading its kubeconfig: {status:?}; logs {:#?}",
                logs.all()
            );
        }
        let opened = OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&fifo)
            .ok();
        async move { opened }
    })
    .await;
    let sent = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal sidewatch");
    let status = eventually("sidewatch to exit", WITHIN, || {
        let status = child.try_wait().expect("try_wait");
        async move { status }
    })
    .await;
    let took = sent.elapsed();
    let all = logs.all();
    assert!(status.success(), "exit status {status:?}; logs {all:#?}");
    assert!(
        logs.wait_for("SIGTERM during start-up", WITHIN).is_some(),
        "no log line says why; logs {all:#?}"
    );
    assert!(
        !all.iter().any(|l| l.contains("sidewatch started")),
        "{all:#?}"
    );
    eprintln!("exited {took:?} after SIGTERM during start-up");
}

/// Ctrl-C in the middle of the demo ends it at once, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_ends_at_once_on_sigint() {
    let mut child = common::sidewatch_command()
        .args(["demo", "--listen", "127.0.0.1:0", "--phase", "5s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the demo");
    let out = LogLines::read(child.stdout.take().expect("piped stdout"));
    assert!(
        out.wait_for("app is now", WITHIN).is_some(),
        "the demo did not begin: {:#?}",
        out.all()
    );
    let sent = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("signal the demo");
    let status = eventually("the demo to exit", WITHIN, || {
        let status = child.try_wait().expect("try_wait");
        async move { status }
    })
    .await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        out.wait_for("SIGINT: demo stopped", WITHIN).is_some(),
        "{:#?}",
        out.all()
    );
    eprintln!("the demo exited {:?} after SIGINT", sent.elapsed());
}
