//! The admission webhook over real TLS on loopback: real AdmissionReview JSON in, the returned
//! JSON Patch applied to real pod specs (the example app of `deploy/`), the result checked against
//! the Kubernetes schemas; idempotence and malformed input.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{eventually, skip_or_fail, tempdir, which, Sidewatch};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::{json, Value};

struct Webhook {
    sw: Sidewatch,
    client: reqwest::Client,
    _dir: tempdir::Dir,
}

impl Webhook {
    fn start() -> Webhook {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let dir = tempdir::Dir::new();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let sw = Sidewatch::launch(
            None,
            &[
                "webhook",
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                cert_path.to_str().unwrap(),
                "--tls-key",
                key_path.to_str().unwrap(),
                "--image",
                "registry.example/sidewatch:0.1.0",
            ],
            &[],
        );
        sidewatch::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
            .build()
            .unwrap();
        Webhook {
            sw,
            client,
            _dir: dir,
        }
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> (u16, String) {
        let url = format!("https://127.0.0.1:{}{path}", self.sw.addr.port());
        let resp = self
            .client
            .post(url)
            .body(body)
            .send()
            .await
            .expect("webhook request");
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Sends a CREATE review of `pod` and returns the response part.
    async fn review(&self, path: &str, pod: &Value) -> Value {
        let review = json!({
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
        });
        let (status, body) = self.post(path, serde_json::to_vec(&review).unwrap()).await;
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
    if which("kubernetes-validate").is_none() {
        return skip_or_fail("kubernetes-validate is not installed (scripts/install-test-tools)");
    }
    // The API server names the pod from generateName; the validator wants a name.
    let mut pod = pod.clone();
    pod["metadata"]["name"] = "web-x7k2p".into();
    let dir = tempdir::Dir::new();
    let file = dir.path().join("pod.json");
    std::fs::write(&file, serde_json::to_vec(&pod).unwrap()).unwrap();
    for version in ["1.29.0", "1.35.0"] {
        let out = std::process::Command::new("kubernetes-validate")
            .args(["--strict", "-k", version, file.to_str().unwrap()])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && report.contains("passed"),
            "{version}: {report}"
        );
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
async fn malformed_reviews_get_a_clear_400_and_the_webhook_lives_on() {
    let hook = Webhook::start();
    for (body, words) in [
        (b"not json".to_vec(), "not an AdmissionReview"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "request",
        ),
        (vec![b'{'; 5 * 1024 * 1024], "at most"),
    ] {
        let (status, text) = hook.post("/mutate", body).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(words), "want {words:?} in {text}");
    }
    let url = format!("https://127.0.0.1:{}/healthz", hook.sw.addr.port());
    eventually("healthz", Duration::from_secs(5), || async {
        let r = hook.client.get(&url).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
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
