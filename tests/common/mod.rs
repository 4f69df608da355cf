//! Shared test parts: the real sidewatch binary as a child process, real upstream servers on
//! loopback, and polling with deadlines.
#![allow(dead_code)] // each test crate uses its own subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub const BIN: &str = env!("CARGO_BIN_EXE_sidewatch");

/// The binary the tests run: `BIN`, or another build named by `VMTEST_BIN` (the release binary
/// inside tests/vm_cgroup2.rs's VM, where the host's paths do not exist).
pub fn bin() -> PathBuf {
    std::env::var_os("VMTEST_BIN").map_or_else(|| PathBuf::from(BIN), PathBuf::from)
}

/// The sidewatch binary as a command, without the test suite's own variable (sidewatch refuses
/// a `SIDEWATCH_*` variable it does not know, as a misspelt setting).
pub fn sidewatch_command() -> Command {
    let mut cmd = Command::new(bin());
    cmd.env_remove("SIDEWATCH_REQUIRE_ALL");
    cmd
}

/// Under `SIDEWATCH_REQUIRE_ALL=1` (the CI test command) a missing tool or privilege fails the
/// test; by hand it skips with the reason printed.
pub fn skip_or_fail(why: &str) {
    if std::env::var("SIDEWATCH_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("SIDEWATCH_REQUIRE_ALL=1 and this test cannot run: {why}");
    }
    eprintln!("SKIPPED: {why}");
    // `scripts/test quick` counts the skips: one line each, appended (a line is one write).
    if let Some(log) = std::env::var_os("TEST_SKIPPED_LOG") {
        use std::io::Write;
        let line = format!("{}\n", why.replace('\n', " "));
        let file = std::fs::OpenOptions::new().append(true).open(log);
        if let Ok(mut file) = file {
            let _ = file.write_all(line.as_bytes());
        }
    }
}

/// Polls `check` until it returns `Some`, or panics naming `what` at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The longest any command a test runs may take: a hung tool fails the test, never the suite.
pub const COMMAND_WITHIN: Duration = Duration::from_secs(300);

/// `output` and `status` with a deadline: past it the command is killed and the test fails
/// naming it.
pub trait Within {
    fn output_within(&mut self, within: Duration) -> std::io::Result<std::process::Output>;
    fn status_within(&mut self, within: Duration) -> std::io::Result<ExitStatus>;
}

impl Within for Command {
    fn output_within(&mut self, within: Duration) -> std::io::Result<std::process::Output> {
        let child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        waited(self, child, within, Child::wait_with_output)
    }

    fn status_within(&mut self, within: Duration) -> std::io::Result<ExitStatus> {
        let child = self.spawn()?;
        waited(self, child, within, |mut c| c.wait())
    }
}

/// Waits on a thread of its own (no polling), and kills the child at the deadline.
fn waited<T: Send + 'static>(
    cmd: &Command,
    child: Child,
    within: Duration,
    wait: impl FnOnce(Child) -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(wait(child)));
    match rx.recv_timeout(within) {
        Ok(result) => result,
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("{cmd:?} still running after {within:?}: killed");
        }
    }
}

pub fn write_config(yaml: &str) -> (tempdir::Dir, PathBuf) {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("sidewatch.yaml");
    std::fs::write(&path, yaml).expect("write config");
    (dir, path)
}

pub mod cgroup;
pub mod chart;
pub mod policy;

/// Minimal temp directory that removes itself, so the tests need no extra crate.
pub mod tempdir {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct Dir(PathBuf);
    impl Dir {
        pub fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "sidewatch-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).expect("create temp dir");
            Dir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A child's output lines, read by a thread of their own as they come.
#[derive(Clone)]
pub struct LogLines(Arc<Mutex<Vec<String>>>);

impl LogLines {
    pub fn read(stream: impl std::io::Read + Send + 'static) -> LogLines {
        let lines = LogLines(Arc::new(Mutex::new(Vec::new())));
        let sink = lines.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        lines
    }

    /// The first line containing `text`, polling until `within` has passed.
    pub fn wait_for(&self, text: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.0.lock().unwrap().iter().find(|l| l.contains(text)) {
                return Some(line.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A running sidewatch process. Killed on drop.
pub struct Sidewatch {
    pub child: Child,
    pub addr: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
    client: reqwest::Client,
}

impl Sidewatch {
    /// Starts `sidewatch run ARGS --listen 127.0.0.1:0` and waits for its start-up log line.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Sidewatch {
        Self::start_in(None, "127.0.0.1:0", args, envs)
    }

    /// Starts sidewatch as the sidecar of pod web-1 in namespace shop (`fake_api::pod`), reaching
    /// the API server through `kubeconfig`: probing `target` every `interval`, not ready at the
    /// first failed check, no cgroup. `envs` come after the pod's own, so they may override them.
    pub fn start_sidecar(
        target: &str,
        interval: &str,
        kubeconfig: &Path,
        envs: &[(&str, &str)],
    ) -> Sidewatch {
        let mut all = vec![
            (
                "KUBECONFIG",
                kubeconfig.to_str().expect("kubeconfig path is UTF-8"),
            ),
            ("POD_NAME", "web-1"),
            ("POD_NAMESPACE", "shop"),
        ];
        all.extend_from_slice(envs);
        Self::start(
            &[
                "--target",
                target,
                "--interval",
                interval,
                "--failure-threshold",
                "1",
                "--cgroup",
                "none",
            ],
            &all,
        )
    }

    /// Starts sidewatch inside network namespace `netns` (through `ip netns exec`) when given.
    pub fn start_in(
        netns: Option<&str>,
        listen: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Sidewatch {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--listen", listen]);
        Self::launch(netns, &all, envs)
    }

    /// Starts `sidewatch ARGS` (any subcommand that logs "sidewatch started … listen=ADDR").
    pub fn launch(netns: Option<&str>, args: &[&str], envs: &[(&str, &str)]) -> Sidewatch {
        match netns {
            Some(ns) => Self::launch_under(&["ip", "netns", "exec", ns], args, envs),
            None => Self::launch_under(&[], args, envs),
        }
    }

    /// As `launch`, with the binary run by `wrapper` (e.g. `["prlimit", "--nofile=64"]`).
    pub fn launch_under(wrapper: &[&str], args: &[&str], envs: &[(&str, &str)]) -> Sidewatch {
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.args(args)
            .env_remove("SIDEWATCH_REQUIRE_ALL")
            .env("RUST_LOG", "info")
            .env_remove("SIDEWATCH_LOG_FORMAT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let client = client();
        let mut child = cmd.spawn().expect("spawn sidewatch");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Kept before the address is told: the start-up line is in `logs` once it is.
                let addr = listen_addr(&line);
                sink.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("sidewatch did not start; logs: {:#?}", logs.lock().unwrap());
            }
        };
        Sidewatch {
            child,
            addr,
            logs,
            client,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("admin request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("admin body"))
    }

    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        let (status, body) = self.get("/readyz").await;
        (status, serde_json::from_str(&body).expect("readyz is JSON"))
    }

    /// Records every `/readyz` answer from now on, asking again `every` after each one, until the
    /// log is stopped or dropped.
    pub fn record_readyz(&self, every: Duration) -> ReadyzLog {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let url = self.url("/readyz");
        let client = self.client.clone();
        let task = tokio::spawn(async move {
            loop {
                let answer = match client.get(&url).send().await {
                    Ok(resp) => Answer {
                        at: Instant::now(),
                        status: resp.status().as_u16(),
                        body: resp.text().await.unwrap_or_default(),
                    },
                    Err(_) => Answer {
                        at: Instant::now(),
                        status: 0,
                        body: String::new(),
                    },
                };
                sink.lock().unwrap().push(answer);
                tokio::time::sleep(every).await;
            }
        });
        ReadyzLog { seen, task }
    }

    /// Waits until `/readyz` says not ready with `reason` among its reasons; returns the body.
    pub async fn wait_reason(&self, reason: &str, within: Duration) -> serde_json::Value {
        eventually(&format!("/readyz reason {reason}"), within, || async {
            let (status, body) = self.readyz().await;
            let has = body["reasons"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|r| r["reason"] == reason));
            (status == 503 && has).then_some(body)
        })
        .await
    }

    pub async fn wait_ready(&self, within: Duration) {
        eventually("/readyz 200", within, || async {
            (self.readyz().await.0 == 200).then_some(())
        })
        .await
    }

    /// The value of one series in `/metrics`, e.g. `sidewatch_ready` or `x{a="b"}`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await;
        sample(&text, series)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal sidewatch");
    }

    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        eventually("sidewatch to exit", within, || {
            let status = self.child.try_wait().expect("try_wait");
            async move { status }
        })
        .await
    }

    /// Waits until the series in `/metrics` reaches at least `min`.
    pub async fn wait_metric_at_least(&self, series: &str, min: f64) {
        eventually(
            &format!("{series} >= {min}"),
            Duration::from_secs(10),
            || async { (self.metric(series).await.unwrap_or(0.0) >= min).then_some(()) },
        )
        .await
    }

    /// Waits until a log line contains `text`: lines reach `logs` through a reader thread.
    pub async fn wait_log(&self, text: &str) {
        eventually(
            &format!("a log line with {text:?}"),
            Duration::from_secs(10),
            || {
                let found = self.logs().iter().any(|l| l.contains(text));
                async move { found.then_some(()) }
            },
        )
        .await
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for Sidewatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `/readyz` answer seen by `Sidewatch::record_readyz`.
#[derive(Clone, Debug)]
pub struct Answer {
    /// When it had arrived.
    pub at: Instant,
    /// 0 when the request failed: no answer at all.
    pub status: u16,
    pub body: String,
}

/// `/readyz` answers being recorded in the background.
pub struct ReadyzLog {
    seen: Arc<Mutex<Vec<Answer>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyzLog {
    /// Stops recording; every answer so far, in order.
    pub fn stop(self) -> Vec<Answer> {
        self.task.abort();
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for ReadyzLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn listen_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("sidewatch started") {
        return None;
    }
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
        return json["listen"].as_str()?.parse().ok();
    }
    let rest = line.split("listen=").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// What a test upstream does with each connection.
#[derive(Clone, Debug, PartialEq)]
pub enum Behaviour {
    /// Answers with this status and body.
    Status(u16, &'static str),
    /// Writes these bytes, then closes.
    Raw(&'static [u8]),
    /// Accepts, reads the request, closes without a byte (FIN).
    Close,
    /// Accepts, reads the request, resets (RST through SO_LINGER 0).
    Reset,
    /// Accepts and never answers.
    Hang,
}

/// A real HTTP/1.1 upstream on loopback whose behaviour a test switches, with a request counter.
pub struct Upstream {
    pub addr: SocketAddr,
    behaviour: watch::Sender<Behaviour>,
    pub requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(initial: Behaviour) -> Upstream {
        Self::start_on("127.0.0.1:0", initial).await
    }

    pub async fn start_on(addr: &str, initial: Behaviour) -> Upstream {
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        Self::serve(listener, initial, None)
    }

    /// Serves the behaviours of `script` in order, one per request, then the last one forever.
    pub async fn scripted(script: Vec<Behaviour>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let first = script[0].clone();
        Self::serve(listener, first, Some(script))
    }

    fn serve(
        listener: TcpListener,
        initial: Behaviour,
        script: Option<Vec<Behaviour>>,
    ) -> Upstream {
        let addr = listener.local_addr().expect("upstream addr");
        let (behaviour, rx) = watch::channel(initial);
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let b = match &script {
                    Some(s) => s[n.min(s.len() - 1)].clone(),
                    None => rx.borrow().clone(),
                };
                tokio::spawn(answer(stream, b));
            }
        });
        Upstream {
            addr,
            behaviour,
            requests,
            task,
        }
    }

    pub fn set(&self, b: Behaviour) {
        self.behaviour.send_replace(b);
    }

    /// What `set` changes, for a task that switches the behaviour on its own.
    pub fn handle(&self) -> watch::Sender<Behaviour> {
        self.behaviour.clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}/healthz", self.addr)
    }

    /// Closes the listening socket, so connections are refused.
    pub fn stop(self) -> SocketAddr {
        self.task.abort();
        self.addr
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request head (up to 8 KiB); false when the client went away or sent more.
pub async fn read_request(stream: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 8192];
    let mut read = 0;
    while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf[read..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => read += n,
        }
        if read == buf.len() {
            return false;
        }
    }
    true
}

/// Answers one connection as `b` says, once its request has come.
pub async fn answer(mut stream: TcpStream, b: Behaviour) {
    if !read_request(&mut stream).await {
        return;
    }
    match b {
        Behaviour::Status(code, body) => {
            let head = format!(
                "HTTP/1.1 {code} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        Behaviour::Raw(bytes) => {
            let _ = stream.write_all(bytes).await;
            let _ = stream.shutdown().await;
        }
        Behaviour::Close => {
            let _ = stream.shutdown().await;
        }
        Behaviour::Reset => {
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        Behaviour::Hang => {
            let mut buf = [0u8; 64];
            let _ = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf)).await;
        }
    }
}

/// `promtool check metrics` of an exposition: whether it passed without a word, and what it
/// said. `None` when promtool is missing (skipped, or a failure under SIDEWATCH_REQUIRE_ALL=1).
pub fn promtool_check_metrics(exposition: &str) -> Option<(bool, String)> {
    use std::io::Write;
    let Some(promtool) = which("promtool") else {
        skip_or_fail("promtool is not installed (scripts/install-test-tools)");
        return None;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool's output");
    let said = output_text(&out);
    Some((out.status.success() && said.trim().is_empty(), said))
}

/// The value of one series, e.g. `sidewatch_ready` or `x{a="b"}`, in a text exposition.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub fn healthy() -> Behaviour {
    Behaviour::Status(200, "ok\n")
}

/// A plain HTTP client for talking to sidewatch's admin port.
pub fn client() -> reqwest::Client {
    sidewatch::tls::install_crypto_provider();
    // Idle connections are dropped here well before the admin server's 5 s header timeout closes
    // them there: a request sent on a connection the server is closing meets a reset.
    reqwest::Client::builder()
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .expect("test client")
}

/// The Kubernetes versions sidewatch supports, oldest first (DESIGN.md, README "Installing"): the
/// chart, `deploy/` and every injected pod of the corpus are validated for each. The chart's
/// `kubeVersion` starts at the first (tests/kubernetes/chart.rs).
pub const KUBERNETES: [&str; 5] = ["1.33.0", "1.34.0", "1.35.0", "1.36.0", "1.37.0"];

/// A version's major and minor numbers (`"1.34.0"` or `"1.34"`), to order versions by.
pub fn kube_minor(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor),
        _ => panic!("{version:?} is not a Kubernetes version"),
    }
}

/// `kubernetes-validate --strict` of `file` against every Kubernetes we support: per version,
/// whether it passed and its report. `None` when the tool is missing (skipped, or a failure under
/// `SIDEWATCH_REQUIRE_ALL=1`).
pub fn kubernetes_validate(file: &std::path::Path) -> Option<Vec<(&'static str, bool, String)>> {
    kubernetes_validate_for(&[file], &KUBERNETES)
}

/// As `kubernetes_validate`, for these files (one run of the tool a version for all of them) and
/// these Kubernetes versions. Passed means every object of every file passed.
pub fn kubernetes_validate_for(
    files: &[&std::path::Path],
    versions: &[&'static str],
) -> Option<Vec<(&'static str, bool, String)>> {
    let files: Vec<&str> = files
        .iter()
        .map(|f| f.to_str().expect("UTF-8 temp path"))
        .collect();
    let mut reports = Vec::new();
    for &version in versions {
        let mut args = vec!["--strict", "-k", version];
        args.extend(&files);
        let out = run_tool("kubernetes-validate", &args)?;
        reports.push((version, out.status.success(), output_text(&out)));
    }
    Some(reports)
}

/// Runs a tool from PATH in the repository, or skips (fails under SIDEWATCH_REQUIRE_ALL=1)
/// without it.
pub fn run_tool(name: &str, args: &[&str]) -> Option<std::process::Output> {
    let Some(path) = which(name) else {
        skip_or_fail(&format!(
            "{name} is not installed (scripts/install-test-tools)"
        ));
        return None;
    };
    let out = Command::new(path)
        .args(args)
        // A tool's sidewatch children (bench/soak.py runs some) must not inherit it.
        .env_remove("SIDEWATCH_REQUIRE_ALL")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output_within(COMMAND_WITHIN)
        .expect("run tool");
    Some(out)
}

/// A tool's stdout and stderr, for assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Finds a tool on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}

/// A process that allocates (and touches) `step_mib` MiB every `delay_ms` once it reads a line on
/// stdin, up to `max_mib`, then holds. Its command line ends with `marker`.
pub struct Hog {
    pub child: Child,
}

const HOG: &str = r#"
import sys, time
step, delay, cap = int(sys.argv[1]) << 20, float(sys.argv[2]) / 1000, int(sys.argv[3]) << 20
sys.stdin.readline()
held, total = [], 0
while True:
    if total < cap:
        held.append(b"x" * step)
        total += step
    time.sleep(delay)
"#;

impl Hog {
    /// `None` (after `skip_or_fail`) when python3 is missing.
    pub fn spawn(step_mib: u64, delay_ms: u64, max_mib: u64, marker: &str) -> Option<Hog> {
        if which("python3").is_none() {
            skip_or_fail("python3 is needed to allocate memory in a child process");
            return None;
        }
        let child = Command::new("python3")
            .args([
                "-c",
                HOG,
                &step_mib.to_string(),
                &delay_ms.to_string(),
                &max_mib.to_string(),
                marker,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn python3");
        Some(Hog { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn go(&mut self) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("hog stdin");
        stdin.write_all(b"go\n").expect("start hog");
        stdin.flush().expect("start hog");
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `SIDEWATCH_MEMORY_NODE` for a sidecar whose memory comes from the node agent at `agent` (its
/// URL), with `token` written to `token_file` as the kubelet writes the projected token.
pub fn node_source(agent: &str, token_file: &Path, token: &str) -> String {
    std::fs::write(token_file, token).expect("write the token file");
    format!(
        "{{agent: \"{}\", token_file: \"{}\"}}",
        agent.trim_end_matches('/'),
        token_file.display()
    )
}
