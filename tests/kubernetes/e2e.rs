//! The end-to-end 502 benchmark (`bench/e2e/run`) in its short form, so the harness cannot rot:
//! real HAProxy in front of three real backends, each in a real cgroup v1 memory cgroup with its
//! own sidewatch (this build's binary), real traffic, a real OOM kill and a rolling restart, one
//! round each with the kubelet's 1 s probe of the app port reaching HAProxy a second later
//! (`k8s-tuned+1s`: the harness's own endpoints path, through HAProxy's runtime API) and with
//! HAProxy asking sidewatch's agent-check port every 100 ms (`sidewatch-agent`). Needs root, cgroup v1, haproxy, python3 and
//! matplotlib (scripts/install-test-tools). The full benchmark is in BENCHMARKS.md.

#[allow(unused_imports)]
use crate::common;
use common::{Within, COMMAND_WITHIN};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{skip_or_fail, tempdir, which, BIN};
use serde_json::Value;

const V1_ROOT: &str = "/sys/fs/cgroup/memory";
const WITHIN: Duration = Duration::from_secs(300);

/// Whatever the harness leaves behind in the cgroup tree: its cgroups are named
/// `swe2e-<harness pid>-...`. Removed (processes killed first) on drop, after the assertions
/// have looked.
struct Leftovers(String);

impl Leftovers {
    fn cgroups(&self) -> Vec<PathBuf> {
        std::fs::read_dir(V1_ROOT)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&self.0))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Processes whose command line names the harness's tag (apps, sidewatches).
    fn processes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains(&self.0) {
                    out.push(cmd);
                }
            }
        }
        out
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for cg in self.cgroups() {
            if let Ok(procs) = std::fs::read_to_string(cg.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(&cg).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn can_run() -> bool {
    // The harness makes its own cgroups: one made (and dropped) here says it can.
    if common::cgroup::Cgroup::create("swe2e-probe", 64 << 20).is_none() {
        return false;
    }
    for tool in ["haproxy", "python3"] {
        if which(tool).is_none() {
            skip_or_fail(&format!(
                "{tool} is not installed (scripts/install-test-tools)"
            ));
            return false;
        }
    }
    let matplotlib = Command::new("python3")
        .args(["-c", "import matplotlib"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status_within(COMMAND_WITHIN);
    if !matplotlib.is_ok_and(|s| s.success()) {
        skip_or_fail("python3 has no matplotlib (scripts/install-test-tools)");
        return false;
    }
    true
}

fn summary<'a>(results: &'a Value, fault: &str, mode: &str) -> &'a Value {
    results["summary"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["fault"] == fault && r["mode"] == mode)
        })
        .unwrap_or_else(|| panic!("no summary row for {fault}/{mode}: {results}"))
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {v}"))
}

#[test]
fn the_agent_check_gives_clients_fewer_errors_than_a_tuned_kubelet_probe() {
    if !can_run() {
        return;
    }
    let dir = tempdir::Dir::new();
    let out = dir.path().join("out");
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/e2e/run");
    let started = Instant::now();
    let mut child = Command::new("python3")
        // The harness's sidewatch children would inherit it, and refuse a variable they do not know.
        .env_remove("SIDEWATCH_REQUIRE_ALL")
        .arg(&harness)
        .args(["--short", "--bin", BIN])
        .arg("--out")
        .arg(&out)
        .arg("--work")
        .arg(dir.path())
        .arg("--json")
        .arg(out.join("results.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bench/e2e/run");
    let leftovers = Leftovers(format!("swe2e-{}-", child.id()));
    // The harness's children die with it (PR_SET_PDEATHSIG); its output is read after exit,
    // which is fine for the few kilobytes it prints.
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the harness") {
            break status;
        }
        if started.elapsed() > WITHIN {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bench/e2e/run --short ran longer than {WITHIN:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = child.wait_with_output().expect("harness output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{text}");
    eprintln!("bench/e2e/run --short took {:?}", started.elapsed());
    assert!(status.success(), "bench/e2e/run --short failed: {text}");

    // Nothing left behind, though every trial stopped backends mid-fault.
    assert!(
        leftovers.cgroups().is_empty(),
        "cgroups left behind: {:?}",
        leftovers.cgroups()
    );
    assert!(
        leftovers.processes().is_empty(),
        "processes left behind: {:?}",
        leftovers.processes()
    );

    let json = std::fs::read_to_string(out.join("results.json")).expect("results.json");
    let results: Value = serde_json::from_str(&json).expect("results.json is JSON");
    let trials = results["trials"].as_array().expect("trials");
    assert_eq!(trials.len(), 4, "2 faults x 2 modes x 1 round: {json}");
    for t in trials {
        // Steady traffic all along (200 req/s for 10 s and more per trial), and no error before
        // the fault: what is counted is the fault's doing.
        assert!(num(t, "requests") > 1000.0, "too little traffic: {t}");
        assert_eq!(
            num(t, "errors_before_fault"),
            0.0,
            "errors before the fault: {t}"
        );
    }

    let (tuned_mode, agent_mode) = ("k8s-tuned+1s", "sidewatch-agent");
    let mut tuned_total = 0.0;
    let mut agent_total = 0.0;
    for fault in ["leak", "rolling"] {
        let tuned = num(summary(&results, fault, tuned_mode), "errors");
        let agent = num(summary(&results, fault, agent_mode), "errors");
        assert!(
            agent <= tuned,
            "{fault}: {agent_mode} had more client errors ({agent}) than {tuned_mode} ({tuned})"
        );
        tuned_total += tuned;
        agent_total += agent;
    }
    assert!(
        agent_total < tuned_total,
        "{agent_mode} {agent_total} client errors, {tuned_mode} {tuned_total}: not fewer"
    );
    // The leak ends in a real OOM kill, and sidewatch's agent takes the backend out before it.
    let lead = num(
        summary(&results, "leak", agent_mode),
        "removed_before_kill_s",
    );
    assert!(lead > 0.0, "{agent_mode} left {lead} s before the OOM kill");
    let kill = trials
        .iter()
        .find(|t| t["fault"] == "leak" && t["mode"] == tuned_mode)
        .map(|t| num(t, "oom_kill_s"))
        .expect("leak trial");
    assert!(kill > 0.0, "no OOM kill in the leak trial");

    // The report: a row per fault and mode, the targets, and the plot.
    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    for row in [
        "| leak | k8s-tuned+1s |",
        "| leak | sidewatch-agent |",
        "| rolling | k8s-tuned+1s |",
        "| rolling | sidewatch-agent |",
    ] {
        assert!(md.contains(row), "results.md lacks {row}: {md}");
    }
    assert!(
        md.contains("Targets:"),
        "results.md lacks the targets: {md}"
    );
    let png = std::fs::read(out.join("errors.png")).expect("errors.png");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "errors.png is not a plot ({} bytes)",
        png.len()
    );
}
