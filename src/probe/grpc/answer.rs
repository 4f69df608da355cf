//! What a health check's answer says: the call's status (code and message), then its one
//! message, each turned into a verdict; and the request's message framed as gRPC frames it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::probe::Failure;
use crate::reason::Reason;

/// What the server said: the headers or trailers that carry `grpc-status`, and the body.
pub(super) struct Answer {
    pub status: http::HeaderMap,
    pub message: Bytes,
}

pub(super) fn verdict(answer: Answer, service: &str) -> Result<(), Failure> {
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
pub(super) fn frame(message: &HealthCheckRequest) -> Bytes {
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
    use http::header::HeaderValue;

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
