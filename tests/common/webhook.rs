//! The webhook as a child process over real TLS, and what the API server does with its answers:
#![allow(dead_code)] // each test crate uses its own subset
//! send a review, apply the patch, validate the pod against the Kubernetes schemas.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::SupportedProtocolVersion;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::common::{self, eventually, tempdir, Sidewatch};
use super::pki::{Leaf, Pki};

pub struct Webhook {
    pub sw: Sidewatch,
    /// Where it serves `/metrics`, from its start-up line.
    pub metrics_addr: SocketAddr,
    client: reqwest::Client,
    ca: CertificateDer<'static>,
    _dir: Option<tempdir::Dir>,
}

impl Webhook {
    pub fn start() -> Webhook {
        Self::start_with(&[])
    }

    /// Starts the webhook with a fresh certificate and `extra` arguments.
    pub fn start_with(extra: &[&str]) -> Webhook {
        Self::start_image("registry.example/sidewatch:0.1.0", extra)
    }

    /// Starts the webhook injecting `image`, with a fresh certificate and `extra` arguments.
    pub fn start_image(image: &str, extra: &[&str]) -> Webhook {
        let pki = Pki::new();
        let leaf = pki.leaf();
        let dir = tempdir::Dir::new();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_path, &leaf.cert_pem).unwrap();
        std::fs::write(&key_path, &leaf.key_pem).unwrap();
        let mut hook = Self::launch_image(&pki, &cert_path, &key_path, image, extra);
        hook._dir = Some(dir);
        hook
    }

    pub fn launch(
        pki: &Pki,
        cert: &std::path::Path,
        key: &std::path::Path,
        extra: &[&str],
    ) -> Webhook {
        Self::launch_image(pki, cert, key, "registry.example/sidewatch:0.1.0", extra)
    }

    fn launch_image(
        pki: &Pki,
        cert: &std::path::Path,
        key: &std::path::Path,
        image: &str,
        extra: &[&str],
    ) -> Webhook {
        let mut args = vec![
            "webhook",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--image",
            image,
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
            metrics_addr: metrics_addr(&sw),
            sw,
            client,
            ca: pki.ca.der().clone(),
            _dir: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.sw.addr
    }

    pub async fn post(&self, path: &str, body: Vec<u8>) -> (u16, String) {
        self.post_as(path, "application/json", body).await
    }

    pub async fn post_as(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, String) {
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

    /// The webhook's `/metrics`, in plain HTTP.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics_addr);
        let resp = common::client().get(url).send().await.expect("metrics");
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let url = format!("https://127.0.0.1:{}{path}", self.addr().port());
        let resp = self.client.get(url).send().await.expect("webhook request");
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Waits for `/healthz` and checks the process is still the one started.
    pub async fn assert_alive(&mut self) {
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
    pub async fn handshake(
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

    pub async fn tls(&self) -> TlsStream<TcpStream> {
        self.handshake(rustls::DEFAULT_VERSIONS)
            .await
            .expect("TLS handshake")
    }

    /// The leaf certificate a new handshake is served.
    pub async fn served(&self) -> CertificateDer<'static> {
        let tls = self.tls().await;
        tls.get_ref().1.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    }

    pub async fn wait_served(&self, leaf: &Leaf, what: &str) {
        eventually(what, Duration::from_secs(10), || async {
            (self.served().await == leaf.der).then_some(())
        })
        .await
    }

    pub fn log_count(&self, text: &str) -> usize {
        self.sw.logs().iter().filter(|l| l.contains(text)).count()
    }

    /// Sends a CREATE review of `pod` and returns the response part.
    pub async fn review(&self, path: &str, pod: &Value) -> Value {
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

/// Where the webhook serves `/metrics`, from its start-up line.
fn metrics_addr(sw: &Sidewatch) -> SocketAddr {
    let logs = sw.logs();
    let line = logs
        .iter()
        .find(|l| l.contains("sidewatch started"))
        .expect("the start-up line");
    let field = match serde_json::from_str::<Value>(line) {
        Ok(json) => json["metrics"].as_str().map(str::to_owned),
        Err(_) => line
            .split("metrics=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_owned),
    };
    field
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in {line}"))
}

/// The AdmissionReview the API server sends for the creation of `pod`.
pub fn create_review(pod: &Value) -> Value {
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

pub fn apply(pod: &Value, response: &Value) -> Value {
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    // Go's []byte, as the API documents it: base64 in a string.
    let Value::String(b64) = &response["patch"] else {
        panic!("the patch is not a base64 string: {response}");
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64 patch");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &patch).unwrap();
    doc
}

/// Validates a pod against the schemas of every supported Kubernetes with kubernetes-validate.
pub fn validate(pod: &Value) {
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
