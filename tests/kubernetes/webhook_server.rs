//! The admission webhook over real TLS on loopback: real AdmissionReview JSON in, the returned
//! JSON Patch applied to real pod specs (the example app of `deploy/`), the result checked against
//! the Kubernetes schemas; idempotence and malformed input; the hardening: TLS versions, certificate
//! rotation on disk, size limits, slow clients and the connection cap.

#[allow(unused_imports)]
use crate::{common, pki, webhook};
use common::{Within, COMMAND_WITHIN};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{eventually, output_text, run_tool, skip_or_fail, tempdir, which};
use pki::{Leaf, Pki};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use webhook::{apply, create_review, validate, Webhook};

/// The webhook's own limits, as `src/webhook.rs` sets them.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Every slow client must be gone within this: the webhook's timeouts are 10 s, plus slack for a
/// loaded machine.
const CUT_OFF: Duration = Duration::from_secs(14);

/// A directory laid out as the kubelet lays out a Secret volume: the files in a generation
/// directory, `..data` a symlink to it, `tls.crt` and `tls.key` symlinks through `..data`. An
/// update writes a new generation and swaps `..data` in one rename.
struct SecretVolume {
    dir: tempdir::Dir,
    generation: usize,
}

impl SecretVolume {
    fn new(leaf: &Leaf) -> SecretVolume {
        let mut volume = SecretVolume {
            dir: tempdir::Dir::new(),
            generation: 0,
        };
        volume.publish(leaf);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.dir.path().join(name))
                .unwrap();
        }
        volume
    }

    fn publish(&mut self, leaf: &Leaf) {
        let old = self.dir.path().join(format!("..gen{}", self.generation));
        self.generation += 1;
        let name = format!("..gen{}", self.generation);
        let new = self.dir.path().join(&name);
        std::fs::create_dir(&new).unwrap();
        std::fs::write(new.join("tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(new.join("tls.key"), &leaf.key_pem).unwrap();
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
        let _ = std::fs::remove_dir_all(old);
    }

    /// Replaces one file of the current generation in place (by rename, so that no poll sees it
    /// half-written unless the test means it to), as a writer that updates files one at a time.
    fn replace(&self, name: &str, text: &str) {
        let data = self.dir.path().join("..data");
        let tmp = data.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, data.join(name)).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Writes `head`, then one byte of `drip` a second (none when `drip` is empty), while reading
/// until the server closes; returns how long the server took and what it sent.
async fn trickle<S>(stream: S, head: &[u8], drip: &'static [u8]) -> (Duration, Vec<u8>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let start = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(stream);
    wr.write_all(head).await.unwrap();
    wr.flush().await.unwrap();
    let writer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        for byte in drip.iter().cycle() {
            tick.tick().await;
            if wr.write_all(&[*byte]).await.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
        // Nothing to drip: hold the connection open, silent.
        std::future::pending::<()>().await
    });
    let got = read_until_closed(&mut rd, CUT_OFF + Duration::from_secs(10)).await;
    writer.abort();
    (start.elapsed(), got)
}

/// Everything the peer sends until it closes (or resets), or until `within` passes.
async fn read_until_closed(rd: &mut (impl AsyncRead + Unpin), within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = rd.read(&mut buf).await {
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    got
}

/// The pod the example Deployment of `deploy/` creates, without its hand-added sidecar.
fn example_pod(annotations: Value) -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/app.yaml")).unwrap();
    let deployment: Value = serde_saphyr::from_str(&text).unwrap();
    let mut spec = deployment["spec"]["template"]["spec"].clone();
    spec.as_object_mut().unwrap().remove("initContainers");
    spec["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("lifecycle");
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-", "namespace": "shop", "labels": {"app": "web"}, "annotations": annotations},
        "spec": spec})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotated_pod_is_injected_with_a_valid_patch_and_only_once() {
    let hook = Webhook::start();
    let pod =
        example_pod(json!({"sidewatch.io/inject": "true", "sidewatch.io/readiness-gate": "true"}));
    let response = hook.review("/mutate", &pod).await;
    let injected = apply(&pod, &response);
    let sidecar = &injected["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "sidewatch");
    assert_eq!(sidecar["image"], "registry.example/sidewatch:0.1.0");
    assert_eq!(sidecar["restartPolicy"], "Always");
    let token = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SIDEWATCH_INJECTED_DRAIN_TOKEN")
        .unwrap()["value"]
        .clone();
    let hook_header =
        &injected["spec"]["containers"][0]["lifecycle"]["preStop"]["httpGet"]["httpHeaders"][0];
    assert_eq!(hook_header["value"], token);
    assert_eq!(token.as_str().unwrap().len(), 32);
    validate(&injected);

    // Sent again (a retried admission), the injected pod is left alone.
    let again = hook.review("/mutate", &injected).await;
    assert!(again.get("patch").is_none(), "{again}");
}

/// One admission of each outcome, then `/metrics`: counted by outcome and reason, timed, the
/// certificate's expiry as the certificate says, each admission one audit line, and the
/// exposition as promtool reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_admission_is_counted_timed_and_logged_and_the_certificates_expiry_shown() {
    let pki = Pki::new();
    let leaf = pki.leaf();
    let dir = tempdir::Dir::new();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let hook = Webhook::launch(&pki, &cert, &key, &["--tls-reload-interval", "100ms"]);
    let before = hook.metrics().await;
    let series = |outcome: &str, reason: &str| {
        format!("sidewatch_webhook_admissions_total{{outcome=\"{outcome}\",reason=\"{reason}\"}}")
    };
    // Every series there at 0 from the start, for an alert's increase() to see the first.
    for (outcome, reason) in [
        ("injected", "annotated"),
        ("refused", "annotation"),
        ("error", "not_a_review"),
    ] {
        assert_eq!(
            common::sample(&before, &series(outcome, reason)),
            Some(0.0),
            "{before}"
        );
    }
    hook.review(
        "/mutate",
        &example_pod(json!({"sidewatch.io/inject": "true"})),
    )
    .await;
    hook.review("/mutate-namespace", &example_pod(json!({})))
        .await;
    hook.review("/mutate", &example_pod(json!({}))).await;
    let bad = json!({"sidewatch.io/inject": "true", "sidewatch.io/memory-unready-above": "lots"});
    let refused = hook.review("/mutate", &example_pod(bad)).await;
    assert!(refused.get("patch").is_none(), "{refused}");
    assert_eq!(
        hook.post("/mutate", b"{\"apiVersion\":".to_vec()).await.0,
        400
    );
    assert_eq!(
        hook.post_as("/mutate", "text/plain", b"x".to_vec()).await.0,
        415
    );

    let text = hook.metrics().await;
    for (outcome, reason, n) in [
        ("injected", "annotated", 1.0),
        ("injected", "namespace", 1.0),
        ("skipped", "not_opted_in", 1.0),
        ("refused", "annotation", 1.0),
        ("error", "not_a_review", 1.0),
        ("error", "content_type", 1.0),
        ("skipped", "already_injected", 0.0),
    ] {
        assert_eq!(
            common::sample(&text, &series(outcome, reason)),
            Some(n),
            "{outcome} {reason}: {text}"
        );
    }
    let timed = |outcome: &str| {
        common::sample(
            &text,
            &format!("sidewatch_webhook_admission_duration_seconds_count{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(timed("injected"), Some(2.0));
    assert_eq!(timed("error"), Some(2.0));
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf.der).unwrap();
    let not_after = parsed.validity().not_after.timestamp() as f64;
    assert_eq!(
        common::sample(&text, "sidewatch_webhook_certificate_not_after_seconds"),
        Some(not_after)
    );
    if let Some((clean, said)) = common::promtool_check_metrics(&text) {
        assert!(clean, "promtool check metrics: {said}");
    }
    // The audit trail: one line per admission, naming the pod by its generateName.
    let logs = hook.sw.logs();
    let audit: Vec<&String> = logs
        .iter()
        .filter(|l| l.contains("admission") && l.contains("outcome"))
        .collect();
    assert_eq!(audit.len(), 6, "{audit:#?}");
    let injected = audit.iter().find(|l| l.contains("injected")).unwrap();
    for field in [
        "namespace",
        "shop",
        "generate_name",
        "web-",
        "annotated",
        "705ab4f5-6393-11e8-b7cc-42010a800002",
    ] {
        assert!(injected.contains(field), "{field} missing from {injected}");
    }

    // A renewed certificate: its expiry replaces the old one's, and the reload is counted; a
    // bad pair is counted as a failure and changes nothing.
    let params = {
        let mut p =
            rcgen::CertificateParams::new(vec!["sidewatch.sidewatch.svc".to_owned()]).unwrap();
        p.not_after = rcgen::date_time_ymd(2031, 6, 1);
        p
    };
    let renewed = pki.leaf_with(params);
    std::fs::write(&key, &renewed.key_pem).unwrap();
    std::fs::write(&cert, &renewed.cert_pem).unwrap();
    let reloads = "sidewatch_webhook_certificate_reloads_total{result=\"success\"}";
    let text = eventually(
        "the renewed certificate's expiry",
        Duration::from_secs(10),
        || async {
            let text = hook.metrics().await;
            (common::sample(&text, reloads) >= Some(1.0)).then_some(text)
        },
    )
    .await;
    let (_, parsed) = x509_parser::parse_x509_certificate(&renewed.der).unwrap();
    let want = parsed.validity().not_after.timestamp() as f64;
    assert_eq!(
        common::sample(&text, "sidewatch_webhook_certificate_not_after_seconds"),
        Some(want)
    );
    std::fs::write(&cert, "not a certificate").unwrap();
    let failures = "sidewatch_webhook_certificate_reloads_total{result=\"failure\"}";
    let text = eventually(
        "the failed reload counted",
        Duration::from_secs(10),
        || async {
            let text = hook.metrics().await;
            (common::sample(&text, failures) >= Some(1.0)).then_some(text)
        },
    )
    .await;
    assert_eq!(
        common::sample(&text, "sidewatch_webhook_certificate_not_after_seconds"),
        Some(want)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_without_the_annotation_are_untouched_unless_their_namespace_opted_in() {
    let hook = Webhook::start();
    let pod = example_pod(json!({}));
    assert!(hook.review("/mutate", &pod).await.get("patch").is_none());
    let response = hook.review("/mutate-namespace", &pod).await;
    validate(&apply(&pod, &response));
    let opted_out = example_pod(json!({"sidewatch.io/inject": "false"}));
    assert!(hook
        .review("/mutate-namespace", &opted_out)
        .await
        .get("patch")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_cannot_be_injected_is_admitted_with_a_warning() {
    let hook = Webhook::start();
    let mut pod = example_pod(json!({"sidewatch.io/inject": "true"}));
    let app = pod["spec"]["containers"][0].as_object_mut().unwrap();
    for field in ["ports", "readinessProbe", "livenessProbe", "startupProbe"] {
        app.remove(field);
    }
    let response = hook.review("/mutate", &pod).await;
    assert!(response.get("patch").is_none());
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("sidewatch.io/target"),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_reviews_get_a_clear_4xx_and_the_webhook_lives_on() {
    let mut hook = Webhook::start();
    let valid = serde_json::to_vec(&create_review(&example_pod(json!({})))).unwrap();
    let mut wrong_version = create_review(&example_pod(json!({})));
    wrong_version["apiVersion"] = "admission.k8s.io/v1beta1".into();
    let mut wrong_kind = create_review(&example_pod(json!({})));
    wrong_kind["kind"] = "Pod".into();
    let deep_object = [
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"object":{"spec":"#
            .to_vec(),
        vec![b'['; 100_000],
    ]
    .concat();
    let non_utf8 = [
        &br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":""#[..],
        &[0xff, 0xfe, 0xc3, 0x28][..],
        &br#""}}"#[..],
    ]
    .concat();
    for (what, body, words) in [
        ("not JSON", b"not json".to_vec(), "not an AdmissionReview"),
        (
            "no request",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "request",
        ),
        (
            "truncated",
            valid[..valid.len() / 2].to_vec(),
            "not an AdmissionReview",
        ),
        (
            "v1beta1",
            serde_json::to_vec(&wrong_version).unwrap(),
            "admission.k8s.io/v1beta1",
        ),
        ("kind Pod", serde_json::to_vec(&wrong_kind).unwrap(), "Pod"),
        ("deep array", vec![b'['; 100_000], "not an AdmissionReview"),
        ("deep object", deep_object, "not an AdmissionReview"),
        ("not UTF-8", non_utf8, "not an AdmissionReview"),
        ("empty", Vec::new(), "not an AdmissionReview"),
    ] {
        let (status, text) = hook.post("/mutate", body).await;
        assert_eq!(status, 400, "{what}: {text}");
        assert!(text.contains(words), "{what}: want {words:?} in {text}");
    }

    let (status, text) = hook.post_as("/mutate", "text/plain", valid.clone()).await;
    assert_eq!(status, 415, "{text}");
    assert!(text.contains("application/json"), "{text}");
    let (status, text) = hook.get("/mutate").await;
    assert_eq!(status, 405, "{text}");
    let (status, _) = hook.post("/nowhere", valid.clone()).await;
    assert_eq!(status, 404);
    // A content type with parameters is still JSON.
    let (status, text) = hook
        .post_as("/mutate", "application/json; charset=utf-8", valid)
        .await;
    assert_eq!(status, 200, "{text}");
    hook.assert_alive().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_reviews_get_413_with_or_without_a_content_length() {
    let mut hook = Webhook::start();
    let (status, text) = hook.post("/mutate", vec![b' '; 5 << 20]).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains(&MAX_BODY.to_string()), "{text}");

    // Chunked, with no length to judge by in advance: cut off once past the cap.
    let tls = hook.tls().await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        let head = b"POST /mutate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        wr.write_all(head).await?;
        let chunk = [b"100000\r\n".as_slice(), &[b' '; 1 << 20], b"\r\n"].concat();
        for _ in 0..5 {
            wr.write_all(&chunk).await?;
        }
        wr.write_all(b"0\r\n\r\n").await?;
        wr.flush().await
    });
    let answer = read_until_closed(&mut rd, Duration::from_secs(20)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // The server stopped reading: the rest of the body may not get through.
    let _ = writer.await;

    // A declared gigabyte is refused before any of it is sent.
    let mut tls = hook.tls().await;
    tls.write_all(b"POST /mutate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut tls, Duration::from_secs(20)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Just at the cap is still read (and is a review that does not parse).
    let (status, text) = hook.post("/mutate", vec![b' '; MAX_BODY]).await;
    assert_eq!(status, 400, "{text}");
    hook.assert_alive().await;
}

/// Slowloris in three shapes, all at once: silent after connecting, headers a byte a second, a
/// body a byte a second. Each is dropped within the webhook's 10 s timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_within_the_timeouts() {
    let mut hook = Webhook::start();
    let silent = TcpStream::connect(hook.addr()).await.unwrap();
    let (slow_head, slow_body) = (hook.tls().await, hook.tls().await);
    let (silent, head, body) = tokio::join!(
        trickle(silent, b"", b""),
        trickle(
            slow_head,
            b"POST /mutate HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ",
            b"a"
        ),
        trickle(
            slow_body,
            b"POST /mutate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n",
            b" "
        ),
    );
    eprintln!(
        "cut off after: silent {:?}, slow headers {:?}, slow body {:?}",
        silent.0, head.0, body.0
    );
    assert!(
        silent.0 < CUT_OFF,
        "a silent connection lived {:?}",
        silent.0
    );
    assert!(head.0 < CUT_OFF, "slow headers lived {:?}", head.0);
    assert!(body.0 < CUT_OFF, "a slow body lived {:?}", body.0);
    let answer = String::from_utf8_lossy(&body.1);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    hook.assert_alive().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let hook = Webhook::start_with(&["--max-connections", "2"]);
    let first = TcpStream::connect(hook.addr()).await.unwrap();
    let _second = TcpStream::connect(hook.addr()).await.unwrap();
    // Both slots are held by silent clients: a third handshake is not even started. (The window
    // is the proof of absence; the handshake timeout would free the slots only after 10 s.)
    let third = tokio::time::timeout(Duration::from_secs(2), hook.tls()).await;
    assert!(third.is_err(), "a third connection was served");
    drop(first);
    eventually(
        "a handshake once a slot is free",
        Duration::from_secs(8),
        || async {
            tokio::time::timeout(
                Duration::from_secs(1),
                hook.handshake(rustls::DEFAULT_VERSIONS),
            )
            .await
            .ok()?
            .ok()
        },
    )
    .await;
}

/// TLS 1.0 and 1.1 are refused by the server (its alert reaches the client), while the same OpenSSL client (python3's ssl) and rustls get through with 1.2 and 1.3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls_1_2_and_1_3_are_spoken() {
    const CLIENT: &str = r#"
import socket, ssl, sys
host, port, version = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
# Security level 0 lets OpenSSL offer the old versions at all.
ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
ctx.minimum_version = getattr(ssl.TLSVersion, version)
ctx.maximum_version = getattr(ssl.TLSVersion, version)
try:
    with socket.create_connection((host, port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        print("connected", tls.version())
except (ssl.SSLError, OSError) as e:
    print("refused", e)
"#;
    let hook = Webhook::start();
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let tls = hook.handshake(&[version]).await.unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
    }
    let port = hook.addr().port().to_string();
    for (version, expect) in [
        ("TLSv1", "refused"),
        ("TLSv1_1", "refused"),
        ("TLSv1_2", "connected TLSv1.2"),
        ("TLSv1_3", "connected TLSv1.3"),
    ] {
        let Some(out) = run_tool("python3", &["-c", CLIENT, "127.0.0.1", &port, version]) else {
            return;
        };
        let text = output_text(&out);
        assert!(
            text.contains(expect),
            "{version}: want {expect:?} in {text}"
        );
        // The refusal is the server's alert (handshake_failure: a hello of before 1.2 has no
        // signature_algorithms, which rustls checks first; or protocol_version), not a client
        // that could not send the version at all.
        if expect == "refused" {
            assert!(text.contains("_ALERT_"), "{version}: {text}");
        }
    }
}

/// The kubelet's Secret volume update (a `..data` swap), then a writer that updates the key before
/// the certificate and leaves a truncated certificate on the way: only matching pairs are served,
/// each refused pair is logged once, and no handshake ever fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart_and_a_bad_pair_is_not() {
    const REFUSED: &str = "still serving the previous pair";
    const RELOADED: &str = "TLS certificate reloaded";
    let pki = Pki::new();
    let (a, b, c) = (pki.leaf(), pki.leaf(), pki.leaf());
    let mut volume = SecretVolume::new(&a);
    let mut hook = Webhook::launch(
        &pki,
        &volume.path("tls.crt"),
        &volume.path("tls.key"),
        &["--tls-reload-interval", "100ms"],
    );
    assert!(hook.served().await == a.der, "A at start");

    volume.publish(&b);
    hook.wait_served(&b, "certificate B after the ..data swap")
        .await;

    volume.replace("tls.key", &c.key_pem);
    hook.sw.wait_log("does not match").await;
    volume.replace("tls.crt", &c.cert_pem[..c.cert_pem.len() / 2]);
    eventually("a second refusal", Duration::from_secs(10), || {
        let n = hook.log_count(REFUSED);
        async move { (n >= 2).then_some(()) }
    })
    .await;
    // Ten polls or so with the bad pair in place: B is served all along, and no warning repeats.
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(1) {
        assert!(hook.served().await == b.der, "B while the pair is bad");
    }

    volume.replace("tls.crt", &c.cert_pem);
    hook.wait_served(&c, "certificate C once its pair is whole")
        .await;
    // C is served before its log line is read from the pipe, on a loaded machine well before.
    eventually(
        "the second reload's log line",
        Duration::from_secs(10),
        || {
            let n = hook.log_count(RELOADED);
            async move { (n >= 2).then_some(()) }
        },
    )
    .await;
    assert_eq!(hook.log_count(REFUSED), 2, "{:#?}", hook.sw.logs());
    assert_eq!(hook.log_count(RELOADED), 2, "{:#?}", hook.sw.logs());
    hook.assert_alive().await;
}

/// The chart's own webhook Deployment is a real pod spec of another shape (an HTTPS readiness
/// probe on a named port): injected through the namespace path, it still validates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_from_the_chart_is_injected_into_a_valid_spec() {
    let Some(helm) = which("helm") else {
        return skip_or_fail("helm is not installed (scripts/install-test-tools)");
    };
    let out = std::process::Command::new(helm)
        .args([
            "template",
            "sw",
            "charts/sidewatch",
            "-f",
            "tests/fixtures/chart-all-on.yaml",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output_within(COMMAND_WITHIN)
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(std::str::from_utf8(&out.stdout).unwrap()).unwrap();
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let template = &deployment["spec"]["template"];
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "sw-sidewatch-", "namespace": "sidewatch", "labels": template["metadata"]["labels"]},
        "spec": template["spec"]});
    let hook = Webhook::start();
    let response = hook.review("/mutate-namespace", &pod).await;
    let injected = apply(&pod, &response);
    let sidecar = &injected["spec"]["initContainers"][0];
    let probes = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SIDEWATCH_PROBES")
        .unwrap();
    let probes: Value = serde_json::from_str(probes["value"].as_str().unwrap()).unwrap();
    // HTTPS on a named port, not verified, as the kubelet probes it: the webhook's readiness,
    // which turns 503 at its stop.
    assert_eq!(probes[0]["http"]["url"], "https://${POD_IP}:9443/readyz");
    assert_eq!(probes[0]["http"]["insecure_skip_verify"], true);
    validate(&injected);
}

/// Only the creation of a Pod is mutated: an update of one (the API server forbids adding
/// containers to a pod that exists), a delete, a pod's subresource and any other kind are allowed
/// as they are, with no patch and no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_pod_creations_are_mutated_and_everything_else_is_allowed_unchanged() {
    let hook = Webhook::start();
    let pod = example_pod(json!({"sidewatch.io/inject": "true"}));
    let created = hook.review("/mutate-namespace", &pod).await;
    assert_eq!(created["patchType"], "JSONPatch");
    assert!(created["patch"].is_string(), "{created}");

    let mut update = create_review(&pod);
    update["request"]["operation"] = "UPDATE".into();
    update["request"]["oldObject"] = pod.clone();
    let mut ephemeral = create_review(&pod);
    ephemeral["request"]["subResource"] = "ephemeralcontainers".into();
    ephemeral["request"]["operation"] = "UPDATE".into();
    let mut deployment = create_review(&json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"sidewatch.io/inject": "true"}},
        "spec": {"template": pod["spec"].clone()}}));
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    deployment["request"]["resource"] =
        json!({"group": "apps", "version": "v1", "resource": "deployments"});
    let mut delete = create_review(&Value::Null);
    delete["request"]["operation"] = "DELETE".into();
    delete["request"]["oldObject"] = pod.clone();
    for (what, review) in [
        ("an update", update),
        ("an ephemeral container", ephemeral),
        ("a Deployment", deployment),
        ("a delete", delete),
    ] {
        let (status, body) = hook
            .post("/mutate-namespace", serde_json::to_vec(&review).unwrap())
            .await;
        assert_eq!(status, 200, "{what}: {body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        let response = &answer["response"];
        assert_eq!(response["allowed"], true, "{what}: {body}");
        assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert!(response.get("patch").is_none(), "{what}: {body}");
        assert!(response.get("warnings").is_none(), "{what}: {body}");
    }
}

/// What became of one review sent on a fresh connection.
#[derive(Debug)]
enum Sent {
    /// A valid AdmissionReview that injects, read whole at this instant.
    Answered(Instant),
    /// No connection or no handshake: the webhook had stopped accepting.
    Refused,
    /// Anything else: an error status, a partial or invalid answer, a connection closed mid-way.
    Bad(String),
}

/// A CREATE review of an annotated pod as raw HTTP/1.1, closing the connection after it.
fn review_request() -> Vec<u8> {
    let pod = example_pod(json!({"sidewatch.io/inject": "true"}));
    let body = serde_json::to_vec(&create_review(&pod)).unwrap();
    let mut request = format!(
        "POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

fn judge(got: &[u8]) -> Sent {
    let text = String::from_utf8_lossy(got);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Sent::Bad(format!("no whole answer: {text:?}"));
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Sent::Bad(head.to_owned());
    }
    match serde_json::from_str::<Value>(body) {
        Ok(v)
            if v["kind"] == "AdmissionReview"
                && v["response"]["allowed"] == true
                && v["response"]["patch"].is_string() =>
        {
            Sent::Answered(Instant::now())
        }
        _ => Sent::Bad(format!("not an injecting AdmissionReview: {body:?}")),
    }
}

/// One review on a fresh connection.
async fn review_once(hook: &Webhook, request: &[u8]) -> Sent {
    let handshake = hook.handshake(rustls::DEFAULT_VERSIONS);
    let Ok(Ok(mut tls)) = tokio::time::timeout(Duration::from_secs(5), handshake).await else {
        return Sent::Refused;
    };
    if let Err(e) = tls.write_all(request).await {
        return Sent::Bad(format!("write after the handshake: {e}"));
    }
    judge(&read_until_closed(&mut tls, Duration::from_secs(15)).await)
}

/// SIGTERM in the middle of a stream of reviews from four clients, three more reviews held half
/// sent across the stop: `/readyz` fails at once, reviews on new connections are still answered
/// for the delay, then new connections are refused, every review whose connection was accepted
/// is answered with a valid AdmissionReview (the held ones finished after the stop), and the
/// process exits 0 within 2 s of the last answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_it_fails_readiness_then_answers_every_review_in_flight_and_exits_0() {
    const DELAY: Duration = Duration::from_secs(2);
    let mut hook = Webhook::start_with(&["--shutdown-delay", "2s"]);
    hook.assert_alive().await;
    assert_eq!(hook.get("/readyz").await.0, 200);
    let request = review_request();
    let half = request.len() / 2;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut tls = hook.tls().await;
        tls.write_all(&request[..half]).await.unwrap();
        tls.flush().await.unwrap();
        held.push(tls);
    }
    let hook = std::sync::Arc::new(hook);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (hook, request) = (hook.clone(), request.clone());
            tokio::spawn(async move {
                let mut sent = Vec::new();
                loop {
                    let outcome = review_once(&hook, &request).await;
                    let refused = matches!(outcome, Sent::Refused);
                    sent.push((Instant::now(), outcome));
                    if refused || sent.len() > 10_000 {
                        return sent;
                    }
                }
            })
        })
        .collect();
    eventually(
        "reviews before the signal",
        Duration::from_secs(10),
        || async { (hook.log_count("admission") >= 8).then_some(()) },
    )
    .await;
    let signalled = Instant::now();
    hook.sw.signal(nix::sys::signal::Signal::SIGTERM);
    eventually("/readyz to fail", Duration::from_secs(1), || async {
        (hook.get("/readyz").await.0 == 503).then_some(())
    })
    .await;
    let not_ready = Instant::now();
    assert_eq!(hook.get("/healthz").await.0, 200, "liveness holds");
    eventually(
        "the stop of accepting",
        DELAY + Duration::from_secs(5),
        || async { (hook.log_count("stopped accepting") == 1).then_some(()) },
    )
    .await;
    let stopped = Instant::now();
    assert!(
        stopped - signalled >= DELAY,
        "stopped before the delay's end"
    );
    // Reviews begun before the stop end after it: each is answered.
    let mut answers = Vec::new();
    for mut tls in held {
        tls.write_all(&request[half..]).await.unwrap();
        tls.flush().await.unwrap();
        answers.push(judge(
            &read_until_closed(&mut tls, Duration::from_secs(15)).await,
        ));
    }
    let mut streams = Vec::new();
    for client in clients {
        streams.push(client.await.unwrap());
    }
    let mut hook = std::sync::Arc::into_inner(hook).unwrap();
    let status = hook.sw.wait_exit(Duration::from_secs(10)).await;
    let exited = Instant::now();
    assert!(status.success(), "{status:?}: {:#?}", hook.sw.logs());
    for answer in &answers {
        assert!(
            matches!(answer, Sent::Answered(_)),
            "a held review: {answer:?}"
        );
    }
    let mut answered_while_unready = 0;
    let mut last = Instant::now() - Duration::from_secs(3600);
    for (at, answer) in answers.iter().map(|a| (None, a)).chain(
        streams
            .iter()
            .flat_map(|s| s.iter().map(|(at, a)| (Some(*at), a))),
    ) {
        match answer {
            Sent::Answered(when) => {
                last = last.max(*when);
                answered_while_unready += usize::from(*when > not_ready && *when < stopped);
            }
            Sent::Refused => assert!(at.is_some_and(|at| at > signalled + DELAY), "refused early"),
            Sent::Bad(why) => panic!("a review got a bad answer: {why}"),
        }
    }
    for sent in &streams {
        // Refused only once, the last, after the stop; answered before.
        assert!(matches!(sent.last(), Some((_, Sent::Refused))), "{sent:?}");
        let refusals = sent
            .iter()
            .filter(|(_, a)| matches!(a, Sent::Refused))
            .count();
        assert_eq!(refusals, 1, "{sent:?}");
    }
    assert!(
        answered_while_unready > 0,
        "no review was answered during the delay"
    );
    assert!(
        exited - last < Duration::from_secs(2),
        "exited {:?} after the last answer",
        exited - last
    );
    let answered = streams
        .iter()
        .flatten()
        .filter(|(_, a)| matches!(a, Sent::Answered(_)))
        .count();
    eprintln!("{answered} streamed reviews answered ({answered_while_unready} while not ready), {} held; exit {:?} after the last answer, stop {:?} after the signal", answers.len(), exited - last, stopped - signalled);
}

/// A second SIGTERM during the delay: the webhook aborts at once, exit non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_the_delay_aborts_at_once() {
    let mut hook = Webhook::start_with(&["--shutdown-delay", "60s"]);
    hook.assert_alive().await;
    hook.sw.signal(nix::sys::signal::Signal::SIGTERM);
    eventually("/readyz to fail", Duration::from_secs(1), || async {
        (hook.get("/readyz").await.0 == 503).then_some(())
    })
    .await;
    let again = Instant::now();
    hook.sw.signal(nix::sys::signal::Signal::SIGTERM);
    let status = hook.sw.wait_exit(Duration::from_secs(5)).await;
    assert!(!status.success(), "{status:?}");
    assert_eq!(
        hook.log_count("again while stopping: aborted"),
        1,
        "{:#?}",
        hook.sw.logs()
    );
    assert_eq!(hook.log_count("stopped accepting"), 0);
    eprintln!("aborted {:?} after the second signal", again.elapsed());
}
