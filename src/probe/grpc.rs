//! The gRPC probe: the standard `grpc.health.v1.Health/Check` call on a fresh HTTP/2 connection
//! of our own over TCP or a Unix socket, plaintext as the kubelet's `grpc` probe, or TLS.
//!
//! The call is made with `h2` directly and the messages are tonic-health's (prost): what is ours
//! is the 5-byte length prefix of one message each way, and reading the status's two headers.
//! A tonic client over hyper costs a task for the connection and one for the request's body per
//! check, a frame to open a 5 MB window and a graceful shutdown: 4.5 writes a check. One task
//! driving `h2` makes the same exchange in two or three (BENCHMARKS.md, section 4). Every failure
//! is seen where it happens (connect, TLS, HTTP/2, gRPC) and nothing outlives the check.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_TYPE, TE};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

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

/// What the server said: the headers or trailers that carry `grpc-status`, and the body.
struct Answer {
    status: http::HeaderMap,
    message: Bytes,
}

fn verdict(answer: Answer, service: &str) -> Result<(), Failure> {
    let service = || {
        if service.is_empty() {
            "the server".to_owned()
        } else {
            format!("service {service:?}")
        }
    };
    let Some((code, message)) = status(&answer.status) else {
        return Err(Failure::new(
            Reason::InvalidResponse,
            "the answer ended without a grpc-status",
        ));
    };
    if code != Code::Ok {
        return Err(status_failure(code, &message, &service()));
    }
    let response = unframe(answer.message)?;
    match response.status() {
        ServingStatus::Serving => Ok(()),
        ServingStatus::ServiceUnknown => Err(Failure::new(
            Reason::UnknownService,
            format!("health of {}: SERVICE_UNKNOWN", service()),
        )),
        other => Err(Failure::new(
            Reason::NotServing,
            format!("health of {}: {}", service(), other.as_str_name()),
        )),
    }
}

/// The call's status: its code, and its message percent-decoded as the protocol sends it. Not
/// `tonic::Status::from_header_map`, which panics on a `grpc-status-details-bin` that is not
/// base64 (grpc/grpc-rust#2618, open) and copies every header to keep the rest: a probe must not
/// fall over on what the app sends, and has no use for the details.
fn status(headers: &http::HeaderMap) -> Option<(Code, String)> {
    let code = Code::from_bytes(headers.get("grpc-status")?.as_bytes());
    let message = headers
        .get("grpc-message")
        .map(|v| {
            percent_encoding::percent_decode(v.as_bytes())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    Some((code, message))
}

/// A message as gRPC frames it on the wire: uncompressed flag, length, bytes.
fn frame(message: &HealthCheckRequest) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + message.encoded_len());
    buf.put_u8(0);
    // A service name is a DNS-like label, far below 4 GiB.
    buf.put_u32(u32::try_from(message.encoded_len()).unwrap_or(u32::MAX));
    message.encode(&mut buf).unwrap_or_default();
    buf.freeze()
}

/// The one message of an answer. The request offered no compression, so a compressed one (or
/// anything but exactly one message) is not a valid answer.
fn unframe(mut body: Bytes) -> Result<HealthCheckResponse, Failure> {
    let invalid = |what: String| Failure::new(Reason::InvalidResponse, what);
    if body.len() < 5 {
        return Err(invalid(format!(
            "an answer of {} bytes, not a message",
            body.len()
        )));
    }
    let compressed = body.get_u8();
    let length = body.get_u32() as usize;
    if compressed != 0 {
        return Err(invalid(
            "a compressed answer to a request that offered none".to_owned(),
        ));
    }
    if length != body.len() {
        return Err(invalid(format!(
            "a message of {length} bytes announced, {} sent",
            body.len()
        )));
    }
    HealthCheckResponse::decode(body)
        .map_err(|e| invalid(format!("not a HealthCheckResponse: {e}")))
}

fn h2_failure(e: &h2::Error) -> Failure {
    classify::chain(e, Reason::InvalidResponse)
}

/// The server's own gRPC status, not OK.
fn status_failure(code: Code, message: &str, service: &str) -> Failure {
    let detail = format!("gRPC {code:?}: {message}");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: &[(&'static str, &'static str)], message: &[u8]) -> Answer {
        let mut headers = http::HeaderMap::new();
        for (name, value) in status {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        Answer {
            status: headers,
            message: Bytes::copy_from_slice(message),
        }
    }

    fn serving(status: ServingStatus) -> Vec<u8> {
        let response = HealthCheckResponse {
            status: status as i32,
        };
        let mut framed = vec![0];
        framed.extend((response.encoded_len() as u32).to_be_bytes());
        framed.extend(response.encode_to_vec());
        framed
    }

    fn reason(answer: Answer) -> Option<Reason> {
        verdict(answer, "").err().map(|f| f.reason)
    }

    #[test]
    fn the_request_is_one_uncompressed_message() {
        let framed = frame(&HealthCheckRequest {
            service: "db".into(),
        });
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 4]);
        let request = HealthCheckRequest::decode(&framed[5..]).expect("a request");
        assert_eq!(request.service, "db");
    }

    #[test]
    fn an_answer_is_read_by_its_status_then_its_message() {
        let ok = [("grpc-status", "0")];
        assert_eq!(reason(answer(&ok, &serving(ServingStatus::Serving))), None);
        assert_eq!(
            reason(answer(&ok, &serving(ServingStatus::NotServing))),
            Some(Reason::NotServing)
        );
        assert_eq!(
            reason(answer(&ok, &serving(ServingStatus::ServiceUnknown))),
            Some(Reason::UnknownService)
        );
        // A trailers-only error answer has no message.
        assert_eq!(
            reason(answer(&[("grpc-status", "5")], b"")),
            Some(Reason::UnknownService)
        );
        assert_eq!(
            reason(answer(&[("grpc-status", "12")], b"")),
            Some(Reason::UnexpectedStatus)
        );
    }

    #[test]
    fn the_status_message_is_decoded_and_bad_details_are_ignored() {
        // tonic's parser panics on details that are not base64; the probe reads past them.
        let failure = verdict(
            answer(
                &[
                    ("grpc-status", "14"),
                    ("grpc-message", "down%20for%20maintenance"),
                    ("grpc-status-details-bin", "!!not base64!!"),
                ],
                b"",
            ),
            "",
        )
        .expect_err("UNAVAILABLE is a failure");
        assert_eq!(failure.reason, Reason::UnexpectedStatus);
        assert_eq!(failure.message, "gRPC Unavailable: down for maintenance");
        // A code that is not a number is UNKNOWN, as gRPC reads it.
        assert_eq!(
            reason(answer(&[("grpc-status", "x")], b"")),
            Some(Reason::UnexpectedStatus)
        );
    }

    #[test]
    fn a_malformed_answer_is_invalid() {
        let ok = [("grpc-status", "0")];
        let good = serving(ServingStatus::Serving);
        let mut compressed = good.clone();
        compressed[0] = 1;
        let mut long = good.clone();
        long[4] += 1;
        for bad in [
            answer(&[], &good),
            answer(&ok, b""),
            answer(&ok, &good[..3]),
            answer(&ok, &compressed),
            answer(&ok, &long),
            answer(&ok, &[0, 0, 0, 0, 2, 0xff, 0xff]),
        ] {
            assert_eq!(reason(bad), Some(Reason::InvalidResponse));
        }
    }
}
