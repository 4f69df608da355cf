//! The mutating admission webhook, `sidewatch webhook`, TLS only, on `--listen`:
//!
//! - `POST /mutate`           pods annotated `sidewatch.io/inject: "true"` get sidewatch
//! - `POST /mutate-namespace` every pod of a namespace labelled `sidewatch.io/inject=enabled`
//!   (through the webhook configuration's namespaceSelector) unless annotated `"false"`
//! - `GET /healthz`
//!
//! Every policy outcome, a pod that cannot be injected included, is an AdmissionReview answer; a
//! review that does not parse is a 400 with the reason. The policy itself is `inject::mutate`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::inject::{self, Outcome, Scope, Settings};

/// Kubernetes objects are at most 1.5 MiB; a review wraps one (twice for updates).
const MAX_BODY: usize = 4 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct WebhookArgs {
    /// Address to serve HTTPS on.
    #[arg(long, env = "SIDEWATCH_LISTEN", default_value = "0.0.0.0:9443")]
    pub listen: SocketAddr,
    /// PEM certificate chain for the webhook's Service name.
    #[arg(long, env = "SIDEWATCH_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key of that certificate.
    #[arg(long, env = "SIDEWATCH_TLS_KEY")]
    pub tls_key: PathBuf,
    /// Image of the injected sidecar.
    #[arg(long, env = "SIDEWATCH_IMAGE", default_value = "sidewatch:0.1.0")]
    pub image: String,
    /// Inject a plain container instead of a native sidecar (Kubernetes before 1.29).
    #[arg(long, env = "SIDEWATCH_PLAIN_SIDECAR")]
    pub plain_sidecar: bool,
}

pub async fn run(args: WebhookArgs) -> anyhow::Result<()> {
    crate::tls::install_crypto_provider();
    let certs = CertificateDer::pem_file_iter(&args.tls_cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("--tls-cert {}: {e}", args.tls_cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&args.tls_key)
        .map_err(|e| anyhow::anyhow!("--tls-key {}: {e}", args.tls_key.display()))?;
    // rustls speaks TLS 1.2 and 1.3 only.
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("--tls-cert and --tls-key do not make a usable pair: {e}"))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let settings = Arc::new(Settings {
        image: args.image,
        native: !args.plain_sidecar,
        ..Settings::default()
    });
    tracing::info!(listen = %listener.local_addr()?, image = %settings.image, native = settings.native, "sidewatch started (webhook)");
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, settings) = (acceptor.clone(), settings.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let service = hyper::service::service_fn(move |req| {
                let settings = settings.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, &settings).await) }
            });
            let mut conn = hyper::server::conn::http1::Builder::new();
            conn.timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT);
            if let Err(e) = conn.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, settings: &Settings) -> Response<Full<Bytes>> {
    let scope = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => return reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::POST, "/mutate") => Scope::Annotated,
        (&Method::POST, "/mutate-namespace") => Scope::Namespace,
        _ => return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            let message = format!("cannot read the review (at most {MAX_BODY} bytes): {e}\n");
            return reply(StatusCode::BAD_REQUEST, "text/plain", message);
        }
    };
    let Some(token) = drain_token() else {
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "no randomness for a drain token\n",
        );
    };
    match review(&body, scope, settings, &token) {
        Ok(answer) => reply(StatusCode::OK, "application/json", answer),
        Err(why) => {
            tracing::warn!(error = %why, "malformed admission review");
            reply(StatusCode::BAD_REQUEST, "text/plain", format!("{why}\n"))
        }
    }
}

/// One AdmissionReview in, one out. `Err` only for a review that cannot be answered at all.
pub fn review(
    body: &[u8],
    scope: Scope,
    settings: &Settings,
    token: &str,
) -> Result<Vec<u8>, String> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|e| format!("not an AdmissionReview request: {e}"))?;
    let response = AdmissionResponse::from(&request);
    let pod: Option<Pod> = request
        .object
        .as_ref()
        .map(|o| serde_json::to_value(o).and_then(serde_json::from_value))
        .transpose()
        .map_err(|e| format!("the review's object is not a Pod: {e}"))?;
    let response = match pod.map(|pod| inject::mutate(&pod, settings, scope, token)) {
        None | Some(Ok(Outcome::Untouched)) => response,
        Some(Ok(Outcome::Patch(patch))) => response
            .with_patch(patch)
            .map_err(|e| format!("cannot serialise the patch: {e}"))?,
        Some(Err(why)) => {
            // Admit the pod as it is: a missing sidecar must not stop a deployment.
            let mut response = response;
            response.warnings = Some(vec![format!("sidewatch not injected: {why}")]);
            response
        }
    };
    serde_json::to_vec(&response.into_review())
        .map_err(|e| format!("cannot serialise the answer: {e}"))
}

/// A fresh per-pod token shared by the sidecar and the app's preStop hook.
fn drain_token() -> Option<String> {
    let mut bytes = [0u8; 16];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
