//! Every parser of outside input, fed arbitrary and mutated input with a fixed case budget: it
//! answers or refuses, and never panics.

#[allow(unused_imports)]
use crate::common;
use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use procfs::net::{Snmp, TcpNetEntries};
use procfs::{ExplicitSystemInfo, FromBufRead, FromBufReadSI};
use proptest::prelude::*;
use sidewatch::config::{Bytes, Check, HostPort, HttpCheck, HttpUrl, ProbeConfig, StatusRange};
use sidewatch::memory::read::{keyed, parse_limit, parse_pressure, vm_rss};
use sidewatch::probe::{Failure, Prober};
use sidewatch::reason::Reason;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const VALID_CONFIG: &str = "listen: 127.0.0.1:9102\nprobes:\n  - name: app\n    http: {url: http://127.0.0.1:8080/healthz, expect_status: [\"200-399\"]}\n    interval: 250ms\nmemory: {unready_above: 0.9, ready_below: 0.8}\ndrain: {delay: 2s, max: 10s}\n";

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_text_never_panics(text in "\\PC{0,400}") {
        let _ = sidewatch::config::parse_str(&text, Path::new("fuzz.yaml"));
    }

    #[test]
    fn mutated_valid_configs_never_panic(at in 0usize..VALID_CONFIG.len(), junk in "[-:{}\\[\\]\"'#&*!|>%@`a-z0-9 \\n]{0,12}") {
        let mut text = VALID_CONFIG.to_owned();
        let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.insert_str(at, &junk);
        let _ = sidewatch::config::parse_str(&text, Path::new("fuzz.yaml"));
    }

    #[test]
    fn cgroup_and_proc_files_never_panic(text in "\\PC{0,200}", key in "[a-z_]{1,12}") {
        let p = Path::new("/fuzz");
        let _ = parse_limit(&text, p);
        let _ = keyed(&text, &key, p);
        let _ = parse_pressure(&text, p);
        let _ = vm_rss(&text, p);
    }

    #[test]
    fn psi_like_lines_never_panic(some in "[-0-9.e+a-z]{0,12}", full in "[-0-9.e+a-z]{0,12}") {
        let text = format!("some avg10={some} avg60=0.00 avg300=0.00 total=1\nfull avg10={full} avg60=0 avg300=0 total=2\n");
        if let Ok(p) = parse_pressure(&text, Path::new("/fuzz")) {
            prop_assert!(p.some_avg10.is_finite() && p.full_avg10.is_finite());
        }
    }

    #[test]
    fn admission_reviews_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let settings = sidewatch::webhook::inject::Settings::default();
        let _ = sidewatch::webhook::review(&body, sidewatch::webhook::inject::Scope::Namespace, &settings, "t");
    }

    #[test]
    fn reviews_of_odd_pods_never_panic(
        name in "[a-z]{0,8}",
        port in any::<i32>(),
        path in "\\PC{0,20}",
        grace in prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0i64), any::<i64>()],
    ) {
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"}, "operation": "CREATE",
                "userInfo": {}, "object": {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"annotations": {"sidewatch.io/inject": "true"}},
                    "spec": {"terminationGracePeriodSeconds": grace, "containers": [{"name": name,
                        "ports": [{"containerPort": port}],
                        "readinessProbe": {"httpGet": {"path": path, "port": port}}}]}}}
        });
        let settings = sidewatch::webhook::inject::Settings::default();
        let body = serde_json::to_vec(&review).unwrap();
        prop_assert!(sidewatch::webhook::review(&body, sidewatch::webhook::inject::Scope::Annotated, &settings, "t").is_ok());
    }

    #[test]
    fn durations_urls_and_addresses_never_panic(text in "\\PC{0,60}") {
        if let Ok(d) = sidewatch::config::duration::parse(&text) {
            prop_assert!(d <= sidewatch::config::duration::MAX);
        }
        let _ = text.parse::<HttpUrl>();
        let _ = text.parse::<HostPort>();
        let _ = text.parse::<StatusRange>();
        let _ = text.parse::<Bytes>();
    }

    #[test]
    fn every_duration_in_a_config_is_bounded(
        key in prop_oneof![
            Just("probes.0.interval"), Just("probes.0.timeout"), Just("memory.interval"),
            Just("memory.oom_cooldown"), Just("memory.predict_oom_within"), Just("drain.delay"),
            Just("drain.quiet"), Just("drain.max"), Just("kubernetes.restart_cooldown"),
        ],
        value in prop_oneof![
            "[0-9]{1,22}(ns|us|ms|s|m|h|d|w|M|y)",
            Just("18446744073709551615s".to_owned()),
            Just("584942417355y".to_owned()),
        ],
    ) {
        let text = config_with(key, &value);
        if let Ok(c) = sidewatch::config::parse_str(&text, Path::new("fuzz.yaml")) {
            let max = sidewatch::config::duration::MAX;
            prop_assert!(c.probes.0.iter().all(|p| p.interval <= max && p.timeout <= max));
            prop_assert!(c.drain.delay <= max && c.drain.quiet <= max && c.drain.max <= max);
            prop_assert!(c.memory.oom_cooldown <= max && c.memory.interval <= max);
            prop_assert!(c.kubernetes.restart_cooldown <= max);
        }
    }

    #[test]
    fn proc_net_tcp_and_snmp_never_panic(lines in proptest::collection::vec("\\PC{0,160}", 0..6)) {
        let text = lines.join("\n");
        let info = ExplicitSystemInfo { boot_time_secs: 0, ticks_per_second: 100, page_size: 4096, is_little_endian: true };
        let _ = TcpNetEntries::from_buf_read(Cursor::new(&text), &info);
        let _ = Snmp::from_buf_read(Cursor::new(&text));
    }

    #[test]
    fn mutated_proc_net_tcp_lines_never_panic(at in 0usize..TCP_LINE.len(), junk in "[0-9A-Fa-fg:x \\n-]{0,12}") {
        let mut line = TCP_LINE.to_owned();
        line.insert_str(at, &junk);
        let info = ExplicitSystemInfo { boot_time_secs: 0, ticks_per_second: 100, page_size: 4096, is_little_endian: true };
        let _ = TcpNetEntries::from_buf_read(Cursor::new(format!("{TCP_HEADER}\n{line}\n")), &info);
    }
}

fn config_with(key: &str, value: &str) -> String {
    let probe = "probes:\n  - name: app\n    tcp: {address: \"127.0.0.1:8080\"}\n";
    match key.split_once('.') {
        Some(("probes", rest)) => format!("{probe}    {}: {value}\n", &rest[2..]),
        Some((section, field)) => format!("{probe}{section}:\n  {field}: {value}\n"),
        None => unreachable!("keys are section.field"),
    }
}

const TCP_HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
const TCP_LINE: &str = "   0: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 20 4 30 10 -1";

// Upstream responses: a real server on loopback writes the bytes, split into separate writes so
// the client's parser meets them across reads; a probe of sidewatch reads them.

/// What a probe may answer to bytes from the app: never a connect-side reason.
const RESPONSE_REASONS: [Reason; 6] = [
    Reason::InvalidResponse,
    Reason::Reset,
    Reason::Http5xx,
    Reason::UnexpectedStatus,
    Reason::BodyMismatch,
    Reason::Timeout,
];
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// How the test upstream answers once it has read the request.
enum Answer {
    /// These writes, then close.
    Parts(Vec<Vec<u8>>),
    /// This head, then the filler forever.
    Endless(Vec<u8>, Vec<u8>),
}

async fn probe(answer: Answer, body_contains: Option<&str>) -> Result<(), Failure> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        if !common::read_request(&mut s).await {
            return Ok(());
        }
        match answer {
            Answer::Parts(parts) => {
                for part in parts {
                    s.write_all(&part).await?;
                    s.flush().await?;
                    tokio::task::yield_now().await;
                }
            }
            Answer::Endless(head, filler) => {
                s.write_all(&head).await?;
                loop {
                    s.write_all(&filler).await?;
                }
            }
        }
        Ok::<_, std::io::Error>(())
    });
    let url: HttpUrl = format!("http://{addr}/healthz").parse().expect("url");
    let mut check = HttpCheck::new(url);
    check.body_contains = body_contains.map(str::to_owned);
    let prober = Prober::new(&ProbeConfig::new("fuzz", Check::Http(check))).expect("prober");
    let result = prober.check(PROBE_TIMEOUT, None).await;
    server.abort();
    result
}

fn assert_classified(result: &Result<(), Failure>) -> Result<(), TestCaseError> {
    if let Err(f) = result {
        prop_assert!(
            RESPONSE_REASONS.contains(&f.reason),
            "reason {:?}: {}",
            f.reason,
            f.message
        );
        prop_assert!(
            f.message.len() <= 243,
            "message of {} bytes",
            f.message.len()
        );
    }
    Ok(())
}

/// Cuts `bytes` at the given points (taken modulo its length).
fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut parts = Vec::new();
    let mut from = 0;
    for cut in at.into_iter().chain([bytes.len()]) {
        parts.push(bytes[from..cut].to_vec());
        from = cut;
    }
    parts
}

const VALID_RESPONSE: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nstatus ok";

fn response_config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(response_config())]

    #[test]
    fn arbitrary_upstream_bytes_are_classified(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        cuts in proptest::collection::vec(any::<usize>(), 0..4),
        needle in proptest::option::of(Just("ok")),
    ) {
        let result = runtime().block_on(probe(Answer::Parts(split(&bytes, &cuts)), needle));
        assert_classified(&result)?;
    }

    #[test]
    fn mutated_responses_are_classified(
        at in 0usize..VALID_RESPONSE.len(),
        junk in proptest::collection::vec(any::<u8>(), 0..16),
        cuts in proptest::collection::vec(any::<usize>(), 0..4),
        needle in proptest::option::of(Just("status ok")),
    ) {
        let mut bytes = VALID_RESPONSE.as_bytes().to_vec();
        bytes.splice(at..at, junk);
        let result = runtime().block_on(probe(Answer::Parts(split(&bytes, &cuts)), needle));
        assert_classified(&result)?;
    }

    #[test]
    fn a_valid_response_split_anywhere_is_healthy(cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let answer = Answer::Parts(split(VALID_RESPONSE.as_bytes(), &cuts));
        prop_assert_eq!(runtime().block_on(probe(answer, Some("status ok"))), Ok(()));
    }
}

/// Runs one probe and asserts its reason, and that it came well before the probe's timeout: a
/// bounded read ends the check, not the clock.
fn assert_fails_fast(answer: Answer, needle: Option<&str>, want: Reason) {
    let started = Instant::now();
    let result = runtime().block_on(probe(answer, needle));
    let took = started.elapsed();
    match result {
        Err(f) => assert_eq!(f.reason, want, "{}", f.message),
        Ok(()) => panic!("a probe passed; want {want}"),
    }
    assert!(
        took < PROBE_TIMEOUT,
        "took {took:?}: ended by the timeout, not by a limit"
    );
}

#[test]
fn huge_headers_are_an_invalid_response() {
    let head = format!(
        "HTTP/1.1 200 OK\r\n{}\r\n",
        "X-Pad: aaaaaaaaaaaaaaaa\r\n".repeat(40_000)
    );
    assert_fails_fast(
        Answer::Parts(vec![head.into_bytes()]),
        None,
        Reason::InvalidResponse,
    );
}

#[test]
fn endless_headers_are_an_invalid_response() {
    let head = b"HTTP/1.1 200 OK\r\n".to_vec();
    assert_fails_fast(
        Answer::Endless(head, b"X-Pad: a\r\n".to_vec()),
        None,
        Reason::InvalidResponse,
    );
}

#[test]
fn too_many_headers_are_an_invalid_response() {
    let head = format!("HTTP/1.1 200 OK\r\n{}\r\n", "X: y\r\n".repeat(500));
    assert_fails_fast(
        Answer::Parts(vec![head.into_bytes()]),
        None,
        Reason::InvalidResponse,
    );
}

#[test]
fn an_endless_body_without_the_needle_is_an_invalid_response() {
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let chunk = [b"400\r\n".as_slice(), &[b'a'; 0x400], b"\r\n"].concat();
    assert_fails_fast(
        Answer::Endless(head, chunk),
        Some("status ok"),
        Reason::InvalidResponse,
    );
}

#[test]
fn an_endless_body_with_the_needle_early_is_healthy() {
    let head = b"HTTP/1.1 200 OK\r\n\r\nstatus ok ".to_vec();
    let result = runtime().block_on(probe(
        Answer::Endless(head, b"padding ".to_vec()),
        Some("status ok"),
    ));
    assert_eq!(result, Ok(()));
}
