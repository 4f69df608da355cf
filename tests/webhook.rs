//! The admission webhook over real TLS on loopback: real AdmissionReview JSON in, the returned
//! JSON Patch applied to real pod specs (the example app of `deploy/`), the result checked against
//! the Kubernetes schemas; idempotence and malformed input; the hardening: TLS versions, certificate
//! rotation on disk, size limits, slow clients and the connection cap.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{eventually, output_text, run_tool, skip_or_fail, tempdir, which, Sidewatch};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::SupportedProtocolVersion;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The webhook's own limits, as `src/webhook.rs` sets them.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Every slow client must be gone within this: the webhook's timeouts are 10 s, plus slack for a
/// loaded machine.
const CUT_OFF: Duration = Duration::from_secs(14);

/// A throw-away CA that signs certificates for 127.0.0.1.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// One certificate and its key, as PEM files hold them.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        Pki { ca }
    }

    fn leaf(&self) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &self.ca)
            .unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

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

struct Webhook {
    sw: Sidewatch,
    client: reqwest::Client,
    ca: CertificateDer<'static>,
    _dir: Option<tempdir::Dir>,
}

impl Webhook {
    fn start() -> Webhook {
        Self::start_with(&[])
    }

    /// Starts the webhook with a fresh certificate and `extra` arguments.
    fn start_with(extra: &[&str]) -> Webhook {
        let pki = Pki::new();
        let leaf = pki.leaf();
        let dir = tempdir::Dir::new();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_path, &leaf.cert_pem).unwrap();
        std::fs::write(&key_path, &leaf.key_pem).unwrap();
        let mut hook = Self::launch(&pki, &cert_path, &key_path, extra);
        hook._dir = Some(dir);
        hook
    }

    fn launch(pki: &Pki, cert: &std::path::Path, key: &std::path::Path, extra: &[&str]) -> Webhook {
        let mut args = vec![
            "webhook",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--image",
            "registry.example/sidewatch:0.1.0",
        ];
        args.extend_from_slice(extra);
        let sw = Sidewatch::launch(None, &args, &[]);
        sidewatch::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([reqwest::Certificate::from_pem(pki.ca.pem().as_bytes()).unwrap()])
            .build()
            .unwrap();
        Webhook {
            sw,
            client,
            ca: pki.ca.der().clone(),
            _dir: None,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.sw.addr
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> (u16, String) {
        self.post_as(path, "application/json", body).await
    }

    async fn post_as(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, String) {
        let url = format!("https://127.0.0.1:{}{path}", self.addr().port());
        let resp = self
            .client
            .post(url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("webhook request");
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let url = format!("https://127.0.0.1:{}{path}", self.addr().port());
        let resp = self.client.get(url).send().await.expect("webhook request");
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Waits for `/healthz` and checks the process is still the one started.
    async fn assert_alive(&mut self) {
        eventually("healthz", Duration::from_secs(5), || async {
            (self.get("/healthz").await.0 == 200).then_some(())
        })
        .await;
        assert!(
            self.sw.child.try_wait().unwrap().is_none(),
            "the webhook exited"
        );
    }

    /// One TLS handshake that trusts the test CA and speaks only `versions`.
    async fn handshake(
        &self,
        versions: &[&'static SupportedProtocolVersion],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(self.addr()).await?;
        let name = ServerName::IpAddress(self.addr().ip().into());
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }

    async fn tls(&self) -> TlsStream<TcpStream> {
        self.handshake(rustls::DEFAULT_VERSIONS)
            .await
            .expect("TLS handshake")
    }

    /// The leaf certificate a new handshake is served.
    async fn served(&self) -> CertificateDer<'static> {
        let tls = self.tls().await;
        tls.get_ref().1.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    }

    async fn wait_served(&self, leaf: &Leaf, what: &str) {
        eventually(what, Duration::from_secs(10), || async {
            (self.served().await == leaf.der).then_some(())
        })
        .await
    }

    fn log_count(&self, text: &str) -> usize {
        self.sw.logs().iter().filter(|l| l.contains(text)).count()
    }

    /// Sends a CREATE review of `pod` and returns the response part.
    async fn review(&self, path: &str, pod: &Value) -> Value {
        let (status, body) = self
            .post(path, serde_json::to_vec(&create_review(pod)).unwrap())
            .await;
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(
            answer["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        assert_eq!(answer["response"]["allowed"], true);
        answer["response"].clone()
    }
}

/// The AdmissionReview the API server sends for the creation of `pod`.
fn create_review(pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod, "oldObject": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
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

fn apply(pod: &Value, response: &Value) -> Value {
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    // Go's []byte: base64 in a string, or (as kube-rs writes it, and Go reads it) an array of bytes.
    let bytes: Vec<u8> = match &response["patch"] {
        Value::String(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        Value::Array(items) => items.iter().map(|b| b.as_u64().unwrap() as u8).collect(),
        other => panic!("no patch in {other}"),
    };
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &patch).unwrap();
    doc
}

/// Validates a pod against the 1.29 and 1.35 schemas with kubernetes-validate.
fn validate(pod: &Value) {
    // The API server names the pod from generateName; the validator wants a name.
    let mut pod = pod.clone();
    pod["metadata"]["name"] = "web-x7k2p".into();
    let dir = tempdir::Dir::new();
    let file = dir.path().join("pod.json");
    std::fs::write(&file, serde_json::to_vec(&pod).unwrap()).unwrap();
    let Some(reports) = common::kubernetes_validate(&file) else {
        return;
    };
    for (version, passed, report) in reports {
        assert!(passed && report.contains("passed"), "{version}: {report}");
    }
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
    app.remove("ports");
    app.remove("readinessProbe");
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
        ("deep object", deep_object, "recursion limit"),
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
        .output()
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
    let target = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SIDEWATCH_TARGET")
        .unwrap();
    assert_eq!(target["value"], "https://127.0.0.1:9443/healthz");
    validate(&injected);
}
