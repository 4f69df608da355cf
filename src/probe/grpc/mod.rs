//! The gRPC probe: the standard `grpc.health.v1.Health/Check` call on a fresh HTTP/2 connection
//! of our own over TCP or a Unix socket, plaintext as the kubelet's `grpc` probe, or TLS.
//!
//! The call is made with `h2` directly and the messages are tonic-health's (prost): what is ours
//! is the 5-byte length prefix of one message each way, and reading the status's two headers
//! (`answer.rs`).
//! A tonic client over hyper costs a task for the connection and one for the request's body per
//! check, a frame to open a 5 MB window and a graceful shutdown: 4.5 writes a check. One task
//! driving `h2` makes the same exchange in two or three (BENCHMARKS.md, section 4). Every failure
//! is seen where it happens (connect, TLS, HTTP/2, gRPC) and nothing outlives the check.

mod answer;

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_TYPE, TE};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic_health::pb::HealthCheckRequest;

use self::answer::{frame, verdict, Answer};
use super::config::{GrpcAddress, GrpcCheck};
use super::{classify, tcp, tls, Failure, ProbeSetupError};
use crate::reason::Reason;
use crate::traffic::OwnSockets;

const PATH: &str = "/grpc.health.v1.Health/Check";
/// A health answer is a few bytes; more than this is not one (and would outgrow the stream's
/// window, which is never widened since the connection ends with the answer).
const MAX_ANSWER: usize = 16 * 1024;

pub struct GrpcProber {
    address: GrpcAddress,
    service: String,
    /// `http://host:port/grpc.health.v1.Health/Check` or `https://…`.
    uri: http::Uri,
    /// The request's one message, framed: built once, sent by reference each check.
    message: Bytes,
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
        let uri = format!("{scheme}://{authority}{PATH}")
            .parse()
            .unwrap_or_else(|_| {
                http::Uri::from_static("http://localhost/grpc.health.v1.Health/Check")
            });
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
            uri,
            message: frame(&HealthCheckRequest {
                service: check.service.clone(),
            }),
            tls,
        })
    }

    pub async fn check(&self, own: Option<&Arc<OwnSockets>>) -> Result<(), Failure> {
        match &self.address {
            GrpcAddress::Tcp(address) => {
                let tcp = tcp::connect(address, own, tcp::Connected::ByFirstWrite).await?;
                tcp.no_delay();
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
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // h2 writes its preface on its own and flushes only with the frames that follow: the
        // buffer makes them one packet, each of which the loopback makes us pay for the peer too.
        let stream = tokio::io::BufWriter::new(stream);
        let (sender, connection) = h2::client::Builder::new()
            .enable_push(false)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|e| h2_failure(&e))?;
        // The connection is driven here, beside the call, and dropped when the check ends: an
        // answer read whole needs nothing more from it. The call is polled first, so that it
        // queues the request before the connection's first flush, which then sends the preface,
        // SETTINGS and the request in one write.
        tokio::pin!(connection);
        tokio::select! {
            biased;
            answer = self.exchange(sender) => verdict(answer?, &self.service),
            ended = &mut connection => Err(match ended {
                Err(e) => h2_failure(&e),
                Ok(()) => Failure::new(Reason::Reset, "the server closed the connection before answering"),
            }),
        }
    }

    /// The call: the request with its message in one go, and the answer read to its end.
    async fn exchange(&self, sender: h2::client::SendRequest<Bytes>) -> Result<Answer, Failure> {
        let mut sender = sender.ready().await.map_err(|e| h2_failure(&e))?;
        let request = http::Request::post(self.uri.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/grpc"))
            .header(TE, HeaderValue::from_static("trailers"))
            .body(())
            .map_err(|e| Failure::new(Reason::InvalidResponse, e.to_string()))?;
        let (response, mut body) = sender
            .send_request(request, false)
            .map_err(|e| h2_failure(&e))?;
        body.send_data(self.message.clone(), true)
            .map_err(|e| h2_failure(&e))?;
        let response = response.await.map_err(|e| h2_failure(&e))?;
        let content_type = response.headers().get(CONTENT_TYPE).map(|v| v.as_bytes());
        if !content_type.is_some_and(|v| v.starts_with(b"application/grpc")) {
            let content_type = String::from_utf8_lossy(content_type.unwrap_or_default());
            return Err(Failure::new(
                Reason::InvalidResponse,
                format!(
                    "HTTP {} with content-type {content_type:?}: not a gRPC server",
                    response.status().as_u16()
                ),
            ));
        }
        let (head, mut body) = response.into_parts();
        // A "trailers-only" answer (an error, say) ends the stream with its headers.
        if body.is_end_stream() {
            return Ok(Answer {
                status: head.headers,
                message: Bytes::new(),
            });
        }
        let mut message = BytesMut::new();
        while let Some(data) = body.data().await {
            let data = data.map_err(|e| h2_failure(&e))?;
            if message.len() + data.len() > MAX_ANSWER {
                return Err(Failure::new(
                    Reason::InvalidResponse,
                    format!("an answer of more than {MAX_ANSWER} bytes"),
                ));
            }
            message.put(data);
        }
        let status = body
            .trailers()
            .await
            .map_err(|e| h2_failure(&e))?
            .unwrap_or_default();
        Ok(Answer {
            status,
            message: message.freeze(),
        })
    }
}

fn h2_failure(e: &h2::Error) -> Failure {
    classify::chain(e, Reason::InvalidResponse)
}
