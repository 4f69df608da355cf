//! The gRPC probe: the standard `grpc.health.v1.Health/Check` call (tonic-health's client), on a
//! fresh HTTP/2 connection of our own over TCP or a Unix socket, plaintext as the kubelet's `grpc`
//! probe, or TLS. The connection is ours, not a tonic `Channel`, so that every failure is seen
//! where it happens (connect, TLS, HTTP/2, gRPC) and nothing outlives the check.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::config::{GrpcAddress, GrpcCheck};
use super::{classify, tcp, tls, Failure, ProbeSetupError};
use crate::reason::Reason;
use crate::traffic::OwnSockets;

pub struct GrpcProber {
    address: GrpcAddress,
    service: String,
    /// `http://host:port` or `https://…`: the `:scheme` and `:authority` of each call.
    origin: http::Uri,
    tls: Option<tls::Connector>,
}

impl GrpcProber {
    pub fn new(probe: &str, check: &GrpcCheck) -> Result<Self, ProbeSetupError> {
        let authority = match &check.address {
            GrpcAddress::Tcp(address) => address.to_string(),
            GrpcAddress::Unix(_) => "localhost".to_owned(),
        };
        let scheme = if check.tls { "https" } else { "http" };
        // The authority was parsed as host:port or is "localhost": it makes a URI.
        let origin = format!("{scheme}://{authority}")
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("http://localhost"));
        let tls = if check.tls {
            let name = match (&check.server_name, &check.address) {
                (Some(name), _) => name.clone(),
                (None, GrpcAddress::Tcp(address)) => address.host.clone(),
                (None, GrpcAddress::Unix(_)) => "localhost".to_owned(),
            };
            let settings = tls::Settings {
                ca_file: check.ca_file.as_deref(),
                insecure_skip_verify: check.insecure_skip_verify,
                alpn: &[b"h2"],
            };
            Some(tls::connector(probe, &settings, name)?)
        } else {
            None
        };
        Ok(GrpcProber {
            address: check.address.clone(),
            service: check.service.clone(),
            origin,
            tls,
        })
    }

    pub async fn check(&self, own: Option<&Arc<OwnSockets>>) -> Result<(), Failure> {
        match &self.address {
            GrpcAddress::Tcp(address) => {
                let (tcp, _mark) = tcp::connect(address, own).await?;
                self.over(tcp).await
            }
            GrpcAddress::Unix(path) => {
                let unix = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| classify::connect(&path.display().to_string(), &e))?;
                self.over(unix).await
            }
        }
    }

    async fn over<S>(&self, stream: S) -> Result<(), Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match &self.tls {
            None => self.call(stream).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| classify::chain(&e, Reason::Tls))?;
                self.call(tls).await
            }
        }
    }

    async fn call<S>(&self, stream: S) -> Result<(), Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // h2 writes its preface on its own and flushes only with the frames that follow: the
        // buffer makes them one packet, each of which the loopback makes us pay for the peer too.
        let stream = tokio::io::BufWriter::new(stream);
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| classify::chain(&e, Reason::InvalidResponse))?;
        let mut client = HealthClient::with_origin(Call(sender), self.origin.clone());
        let request = HealthCheckRequest {
            service: self.service.clone(),
        };
        // The connection is driven here, beside the call, and closed when the check ends.
        tokio::pin!(connection);
        let answer = tokio::select! {
            answer = client.check(request) => answer,
            ended = &mut connection => return Err(match ended {
                Err(e) => classify::chain(&e, Reason::InvalidResponse),
                Ok(()) => Failure::new(Reason::Reset, "the server closed the connection before answering"),
            }),
        };
        let service = if self.service.is_empty() {
            "the server".to_owned()
        } else {
            format!("service {:?}", self.service)
        };
        match answer {
            Ok(response) => match response.into_inner().status() {
                ServingStatus::Serving => Ok(()),
                ServingStatus::ServiceUnknown => Err(Failure::new(
                    Reason::UnknownService,
                    format!("health of {service}: SERVICE_UNKNOWN"),
                )),
                other => Err(Failure::new(
                    Reason::NotServing,
                    format!("health of {service}: {}", other.as_str_name()),
                )),
            },
            Err(status) => Err(status_failure(&status, &service)),
        }
    }
}

/// A failed call: a transport error (tonic keeps it as the status's source), or the server's own
/// gRPC status.
fn status_failure(status: &tonic::Status, service: &str) -> Failure {
    use std::error::Error as _;
    if let Some(source) = status.source() {
        return classify::chain(source, Reason::InvalidResponse);
    }
    let code = status.code();
    let detail = format!("gRPC {code:?}: {}", status.message());
    match code {
        Code::NotFound => Failure::new(
            Reason::UnknownService,
            format!("health of {service}: {detail}"),
        ),
        Code::DeadlineExceeded => Failure::new(Reason::Timeout, detail),
        Code::Unimplemented => Failure::new(
            Reason::UnexpectedStatus,
            format!("{detail} (the server has no grpc.health.v1.Health service)"),
        ),
        _ => Failure::new(Reason::UnexpectedStatus, detail),
    }
}

/// tonic's client over one hyper HTTP/2 connection. An answer that is not gRPC (an HTTP/2 server
/// that answers HTML, say) is refused here, before tonic would read it as a gRPC status.
struct Call(SendRequest<Full<Bytes>>);

#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("encoding the request: {0}")]
    Body(tonic::Status),
    #[error("HTTP {status} with content-type {content_type:?}: not a gRPC server")]
    NotGrpc { status: u16, content_type: String },
}

type CallFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<hyper::body::Incoming>, CallError>> + Send>>;

impl tower_service::Service<http::Request<tonic::body::Body>> for Call {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = CallError;
    type Future = CallFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        self.0.poll_ready(cx).map_err(CallError::from)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> CallFuture {
        let mut sender = self.0.clone();
        Box::pin(async move {
            // The one request message, whole: hyper then sends it with its headers, instead of
            // streaming it from a task of its own in a packet of its own.
            let (parts, body) = request.into_parts();
            let body = body.collect().await.map_err(CallError::Body)?.to_bytes();
            let request = http::Request::from_parts(parts, Full::new(body));
            let response = sender.send_request(request).await?;
            let content_type = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            if !content_type.starts_with("application/grpc") {
                return Err(CallError::NotGrpc {
                    status: response.status().as_u16(),
                    content_type,
                });
            }
            Ok(response)
        })
    }
}
