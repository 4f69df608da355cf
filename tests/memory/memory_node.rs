//! The memory source `node`: the real `sidewatch run` against a fake node agent that speaks the
//! wire format (tests/common/fake_agent.rs): its samples make the verdict as a cgroup's would,
//! an agent away leaves memory blind but the pod ready, and refusals, rotated tokens and
//! garbage are each handled and counted.

#[allow(unused_imports)]
use crate::{common, fake_agent};
use std::time::{Duration, Instant};

use common::{eventually, tempdir, Sidewatch, Within};
use fake_agent::{sample, FakeAgent};
use serde_json::Value;
use sidewatch::memory::read::ReadError;
use sidewatch::memory::wire::Line;

const WITHIN: Duration = Duration::from_secs(15);
const POD: [&str; 3] = ["shop", "web-1", "app"];

struct Setup {
    agent: FakeAgent,
    sw: Sidewatch,
    token_file: std::path::PathBuf,
    _dir: tempdir::Dir,
}

impl Setup {
    async fn start() -> Setup {
        let dir = tempdir::Dir::new();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "token-1\n").unwrap();
        let agent = FakeAgent::start(token_file.clone(), POD, sample(50, 100, 0)).await;
        let config = dir.path().join("sidewatch.yaml");
        std::fs::write(
            &config,
            format!(
                "memory:\n  source: node\n  interval: 250ms\n  oom_cooldown: 2s\n  predict_oom_within: null\n  \
                 node:\n    agent: {}\n    token_file: {}\nkubernetes:\n  enabled: false\n  app_container: app\n",
                agent.url(),
                token_file.display()
            ),
        )
        .unwrap();
        let sw = Sidewatch::start(
            &["--config", config.to_str().unwrap()],
            &[("POD_NAMESPACE", POD[0]), ("POD_NAME", POD[1])],
        );
        Setup {
            agent,
            sw,
            token_file,
            _dir: dir,
        }
    }

    async fn metric(&self, series: &str) -> f64 {
        self.sw.metric(series).await.unwrap_or(f64::NAN)
    }

    async fn wait_metric(&self, series: &str, value: f64) {
        eventually(&format!("{series} == {value}"), WITHIN, || async {
            (self.metric(series).await == value).then_some(())
        })
        .await
    }

    async fn verbose(&self) -> (u16, Value) {
        let (status, body) = self.sw.get("/readyz?verbose").await;
        (status, serde_json::from_str(&body).unwrap())
    }

    /// Waits until memory is blind for a reason that contains `why`; returns the reason.
    async fn wait_blind(&self, why: &str) -> String {
        eventually(&format!("memory blind because {why}"), WITHIN, || async {
            let (_, body) = self.verbose().await;
            let part = body["not_watched"]
                .as_array()?
                .iter()
                .find(|n| n["part"] == "memory")?
                .clone();
            assert_eq!(part["blind"], true, "{part}");
            let said = part["why"].as_str()?.to_owned();
            said.contains(why).then_some(said)
        })
        .await
    }
}

fn gone_line() -> Vec<u8> {
    let gone = ReadError::Gone {
        path: "/sys/fs/cgroup/kubepods/pod1/app".into(),
    };
    Line::from_read(&Err(gone)).encode()
}

const NODE_AWAY: &str = "sidewatch_memory_read_errors_total{kind=\"node_away\"}";
const NODE_REFUSED: &str = "sidewatch_memory_read_errors_total{kind=\"node_refused\"}";
const GARBLED: &str = "sidewatch_memory_read_errors_total{kind=\"garbled\"}";
const BLIND: &str = "sidewatch_memory_blind";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_samples_make_the_verdict_and_an_oom_kill_counts_once() {
    let s = Setup::start().await;
    s.sw.wait_ready(WITHIN).await;
    let first = s.agent.wait_request(1).await;
    assert_eq!(first.path, "/v1/memory");
    assert_eq!(
        first.query,
        "namespace=shop&pod=web-1&container=app&interval=250ms"
    );
    assert_eq!(first.authorization, "Bearer token-1");
    assert_eq!(first.status, 200);
    assert_eq!(
        s.metric("sidewatch_memory_source{source=\"node\"}").await,
        1.0
    );
    assert_eq!(s.metric(BLIND).await, 0.0);
    assert_eq!(s.metric(NODE_AWAY).await, 0.0);
    assert_eq!(s.metric(NODE_REFUSED).await, 0.0);
    s.wait_metric("sidewatch_memory_limit_bytes", (100u64 << 20) as f64)
        .await;

    let high = Instant::now();
    s.agent.set_line(sample(95, 100, 0));
    let body = s.sw.wait_reason("memory_high", WITHIN).await;
    eprintln!(
        "memory_high {:?} after the agent's line changed",
        high.elapsed()
    );
    let high = &body["reasons"][0];
    assert_eq!(high["signal"], "memory:usage");
    let message = high["message"].as_str().unwrap();
    assert!(
        message.contains("of the 100.0 MiB limit (the pod's memory.max"),
        "{message}"
    );
    s.agent.set_line(sample(80, 100, 0));
    s.sw.wait_ready(WITHIN).await;

    // One group kill: unready at once, counted once, though every line since shows it.
    s.agent.set_line(sample(60, 100, 1));
    s.sw.wait_reason("oom_killed", WITHIN).await;
    s.wait_metric("sidewatch_oom_group_kills_total", 1.0).await;
    assert_eq!(s.metric("sidewatch_oom_kills_total").await, 1.0);
    s.sw.wait_ready(WITHIN).await; // the 2 s cooldown
    assert_eq!(s.metric("sidewatch_oom_kills_total").await, 1.0);
    s.agent.set_line(sample(60, 100, 2));
    s.sw.wait_reason("oom_killed", WITHIN).await;
    s.wait_metric("sidewatch_oom_group_kills_total", 2.0).await;
    assert_eq!(s.metric("sidewatch_oom_kills_total").await, 2.0);
    // The container restarts: the agent finds its cgroup gone, then reads the new one, whose
    // counters start from zero. Its first kill is a kill, though the count is below the old one.
    s.agent.set_line(sample(60, 100, 1));
    s.sw.wait_ready(WITHIN).await;
    s.agent.send_once(gone_line());
    s.sw.wait_metric_at_least("sidewatch_memory_read_errors_total{kind=\"gone\"}", 1.0)
        .await;
    s.wait_metric("sidewatch_oom_group_kills_total", 3.0).await;
    assert_eq!(s.metric("sidewatch_oom_kills_total").await, 3.0);
    s.sw.wait_log("the node agent reads a new cgroup").await;
    // All of it on one stream.
    assert_eq!(s.agent.seen().len(), 1, "{:?}", s.agent.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_away_is_blind_never_unready_and_its_return_is_seen() {
    let s = Setup::start().await;
    s.sw.wait_ready(WITHIN).await;
    let answers = s.sw.record_readyz(Duration::from_millis(20));

    let stopped = Instant::now();
    s.agent.stop();
    let why = s
        .wait_blind(&format!("the node agent at {}", s.agent.url()))
        .await;
    s.wait_metric(BLIND, 1.0).await;
    eprintln!("blind {:?} after the agent stopped", stopped.elapsed());
    s.sw.wait_metric_at_least(NODE_AWAY, 2.0).await; // the cut stream, then refused connections
    let (status, body) = s.verbose().await;
    assert_eq!(status, 200, "{body}");
    for signal in body["signals"].as_array().unwrap() {
        assert_eq!(signal["state"], "blind", "{signal}");
    }
    assert!(
        why.contains("cannot be reached") || why.contains("stream"),
        "{why}"
    );
    let refused = format!(
        "memory: blind, because the node agent at {} cannot be reached: Connection refused",
        s.agent.url()
    );
    eventually("the status page to say memory is blind", WITHIN, || async {
        s.sw.get("/").await.1.contains(&refused).then_some(())
    })
    .await;

    let restarted = Instant::now();
    s.agent.restart().await;
    s.wait_metric(BLIND, 0.0).await;
    eprintln!(
        "seeing again {:?} after the agent came back",
        restarted.elapsed()
    );
    let (_, body) = s.verbose().await;
    assert!(body.get("not_watched").is_none(), "{body}");
    let answers = answers.stop();
    assert!(answers.len() > 10, "{}", answers.len());
    assert!(
        answers.iter().all(|a| a.status == 200),
        "not ready while the agent was away: {:?}",
        answers.iter().find(|a| a.status != 200)
    );
    // The stream is read and judged again.
    s.agent.set_line(sample(95, 100, 0));
    s.sw.wait_reason("memory_high", WITHIN).await;
    s.agent.set_line(sample(50, 100, 0));
    s.sw.wait_ready(WITHIN).await;

    // A stream open but silent for 3 intervals and a second is away too.
    let hushed = Instant::now();
    s.agent.silent(true);
    s.wait_blind("sent no line for 1s 750ms").await;
    eprintln!("blind {:?} after the agent fell silent", hushed.elapsed());
    assert_eq!(s.sw.readyz().await.0, 200);
    s.agent.silent(false);
    s.wait_metric(BLIND, 0.0).await;

    // A rotated token is read at the next connection.
    let before = s.agent.seen().len();
    std::fs::write(&s.token_file, "token-2\n").unwrap();
    s.agent.cut_streams();
    let next = s.agent.wait_request(before + 1).await;
    assert_eq!(next.authorization, "Bearer token-2");
    assert_eq!(next.status, 200);
    s.wait_metric(BLIND, 0.0).await;
    s.sw.wait_ready(WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_garbage_are_counted_and_never_crash_it() {
    let mut s = Setup::start().await;
    s.sw.wait_ready(WITHIN).await;

    s.agent.answer(Some(403));
    s.agent.cut_streams();
    let why = s.wait_blind("403 Forbidden").await;
    assert!(why.contains("pod shop/web-1"), "{why}");
    assert!(
        why.contains("fake agent: 403"),
        "the agent's own words: {why}"
    );
    s.sw.wait_metric_at_least(NODE_REFUSED, 1.0).await;
    s.sw.wait_log("Likely causes").await;
    assert_eq!(s.sw.readyz().await.0, 200);
    s.agent.answer(Some(401));
    let why = s.wait_blind("401 Unauthorized").await;
    assert!(why.contains("audience sidewatch.io/node"), "{why}");
    s.sw.wait_metric_at_least(NODE_REFUSED, 2.0).await;
    s.agent.answer(None);
    s.wait_metric(BLIND, 0.0).await;

    let garbled = s.metric(GARBLED).await;
    let mut endless = vec![b'x'; 200_000];
    endless.push(b'\n');
    let unknown_scope = br#"{"sample":{"working_set":1,"limit":2,"bound":{"level":0,"scope":"node","file":"memory.max"},"oom":null,"high_events":null,"pressure":null}}"#;
    for bytes in [
        b"not json\n".to_vec(),
        endless,
        [unknown_scope.as_slice(), b"\n"].concat(),
        b"\xff\xfe\x00{\n".to_vec(),
    ] {
        s.agent.send_once(bytes);
    }
    s.sw.wait_metric_at_least(GARBLED, garbled + 4.0).await;
    assert!(s.sw.child.try_wait().unwrap().is_none(), "sidewatch exited");
    assert_eq!(s.sw.readyz().await.0, 200);
    assert_eq!(s.metric(BLIND).await, 0.0, "garbage is no absence");
    // The lines after the garbage are read.
    s.agent.set_line(sample(95, 100, 0));
    s.sw.wait_reason("memory_high", WITHIN).await;
}

#[test]
fn a_node_source_without_its_environment_does_not_start_and_says_what_is_missing() {
    let run = |cmd: &str, envs: &[(&str, &str)]| {
        let mut c = common::sidewatch_command();
        c.arg(cmd)
            .env_remove("HOST_IP")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env("SIDEWATCH_MEMORY_SOURCE", "node")
            .env("SIDEWATCH_KUBERNETES_ENABLED", "false")
            .env("SIDEWATCH_KUBERNETES_APP_CONTAINER", "app")
            .env("SIDEWATCH_LISTEN", "127.0.0.1:0");
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output_within(Duration::from_secs(20)).unwrap()
    };
    let pod = [("POD_NAME", "web-1"), ("POD_NAMESPACE", "shop")];
    for cmd in ["check-config", "run"] {
        let out = run(cmd, &pod);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd}: {stderr}");
        assert!(
            stderr.contains("HOST_IP is not set") && stderr.contains("memory.node.agent"),
            "{cmd}: {stderr}"
        );
    }
    let out = run("check-config", &[("HOST_IP", "10.0.0.7")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("POD_NAME and POD_NAMESPACE"), "{stderr}");
    let out = run("check-config", &[pod[0], pod[1], ("HOST_IP", "fd00::7")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("http://[fd00::7]:9465 for container app of pod shop/web-1"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"source\": \"node\""), "{stdout}");
}
