//! The HTTP probe: one GET on a fresh connection (HTTP/1.1, or HTTP/2 by prior knowledge or
//! ALPN), over TCP or a Unix socket, with the configured headers; the status and, when asked, the
//! body decide. The connection is hyper's own, not a pooled client's, as the gRPC probe's is:
//! every failure is seen where it happens, nothing outlives the check, and its local port is
//! known to the traffic watch, which must not count it as the app's traffic.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::config::{HostPort, HttpCheck, HttpVersion, StatusRange};
use super::{classify, tcp, tls, Failure, ProbeSetupError};
use crate::reason::Reason;
use crate::traffic::OwnSockets;

/// The most of a response body read: enough for `body_contains` on any health page, and a bound
/// on what a misbehaving app can make us buffer.
const MAX_BODY: usize = 64 * 1024;

enum Target {
    Tcp(HostPort),
    Unix(PathBuf),
}

pub struct HttpProber {
    target: Target,
    tls: Option<tls::Connector>,
    version: HttpVersion,
    /// The request target of HTTP/1.1 (`/path?query`) and the URI of HTTP/2 (`scheme://host/…`,
    /// whose authority is the `Host` header's value, as Go's client sends it).
    path: http::Uri,
    absolute: http::Uri,
    /// With `Host`; HTTP/2 sends it as `:authority` instead.
    headers: HeaderMap,
    check: HttpCheck,
}

impl HttpProber {
    pub fn new(probe: &str, check: &HttpCheck) -> Result<Self, ProbeSetupError> {
        let url = &check.url.0;
        // A URL always has a host (checked with the config); an IPv6 one without its brackets.
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => "localhost".to_owned(),
        };
        let target = match &check.unix_socket {
            Some(path) => Target::Unix(path.clone()),
            None => Target::Tcp(HostPort {
                host: host.clone(),
                port: url.port_or_known_default().unwrap_or(80),
            }),
        };
        let tls = if url.scheme() == "https" {
            let alpn: &[&[u8]] = match check.http_version {
                HttpVersion::Http1 => &[b"http/1.1"],
                HttpVersion::Http2 => &[b"h2"],
                // As the kubelet's Go client offers them.
                HttpVersion::Auto => &[b"h2", b"http/1.1"],
            };
            let settings = tls::Settings {
                ca_file: check.ca_file.as_deref(),
                insecure_skip_verify: check.insecure_skip_verify,
                alpn,
            };
            Some(tls::connector(probe, &settings, host)?)
        } else {
            None
        };

        let mut headers = HeaderMap::new();
        for h in &check.headers {
            // Validated with the config; a header that still fails is left out, never a panic.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(h.name.as_bytes()),
                HeaderValue::from_str(&h.value),
            ) {
                headers.append(name, value);
            }
        }
        let authority = &url[url::Position::BeforeHost..url::Position::AfterPort];
        defaults(&mut headers, authority);
        let path = &url[url::Position::BeforePath..url::Position::AfterQuery];
        let path: http::Uri = path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        let host_header = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(authority);
        let absolute = format!("{}://{host_header}{path}", url.scheme())
            .parse()
            .unwrap_or_else(|_| path.clone());
        Ok(HttpProber {
            target,
            tls,
            version: check.http_version,
            path,
            absolute,
            headers,
            check: check.clone(),
        })
    }

    pub async fn check(&self, own: Option<&Arc<OwnSockets>>) -> Result<(), Failure> {
        match &self.target {
            Target::Tcp(address) => {
                let stream = tcp::connect(address, own, tcp::Connected::ByFirstWrite).await?;
                // HTTP/1.1 in the clear is one write, which Nagle never holds back.
                if self.tls.is_some() || self.version == HttpVersion::Http2 {
                    stream.no_delay();
                }
                self.over(stream).await
            }
            Target::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| classify::connect(&path.display().to_string(), &e))?;
                self.over(stream).await
            }
        }
    }

    async fn over<S>(&self, stream: S) -> Result<(), Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let prior_knowledge = self.version == HttpVersion::Http2;
        match &self.tls {
            None => self.exchange(stream, prior_knowledge).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| classify::chain(&e, Reason::Tls))?;
                let h2 = match stream.get_ref().1.alpn_protocol() {
                    Some(protocol) => protocol == b"h2",
                    None => prior_knowledge,
                };
                self.exchange(stream, h2).await
            }
        }
    }

    async fn exchange<S>(&self, stream: S, h2: bool) -> Result<(), Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handshake_failed = |e: hyper::Error| classify::chain(&e, Reason::InvalidResponse);
        if h2 {
            // As the gRPC probe: the preface and the request leave in one packet.
            let io = TokioIo::new(tokio::io::BufWriter::new(stream));
            let (mut sender, connection) =
                hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(io)
                    .await
                    .map_err(handshake_failed)?;
            let mut headers = self.headers.clone();
            headers.remove(header::HOST);
            let request = self.request(self.absolute.clone(), headers);
            let answer =
                async move { judge(sender.send_request(request).await, &self.check).await };
            drive(connection, answer).await
        } else {
            let io = TokioIo::new(stream);
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(handshake_failed)?;
            let request = self.request(self.path.clone(), self.headers.clone());
            let answer =
                async move { judge(sender.send_request(request).await, &self.check).await };
            drive(connection, answer).await
        }
    }

    fn request(&self, uri: http::Uri, headers: HeaderMap) -> http::Request<Empty<Bytes>> {
        let mut request = http::Request::new(Empty::new());
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        request
    }
}

/// What the kubelet and common clients send unless the probe's headers say otherwise.
fn defaults(headers: &mut HeaderMap, authority: &str) {
    let set = |headers: &mut HeaderMap, name, value: &str| {
        if let (false, Ok(value)) = (headers.contains_key(&name), HeaderValue::from_str(value)) {
            headers.insert(name, value);
        }
    };
    set(headers, header::HOST, authority);
    set(
        headers,
        header::USER_AGENT,
        concat!("sidewatch/", env!("CARGO_PKG_VERSION")),
    );
    set(headers, header::ACCEPT, "*/*");
}

/// Runs the exchange while driving its connection, which closes when the check ends.
async fn drive<C>(
    connection: C,
    answer: impl Future<Output = Result<(), Failure>>,
) -> Result<(), Failure>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(connection, answer);
    tokio::select! {
        result = &mut answer => result,
        ended = &mut connection => match ended {
            // Closed by the app after its answer (`Connection: close`): what is left of the
            // answer is buffered, or its loss is the exchange's own error.
            Ok(()) => answer.await,
            Err(e) => Err(classify::chain(&e, Reason::InvalidResponse)),
        },
    }
}

async fn judge(
    response: Result<http::Response<Incoming>, hyper::Error>,
    check: &HttpCheck,
) -> Result<(), Failure> {
    let mut response = response.map_err(|e| classify::chain(&e, Reason::InvalidResponse))?;
    let status = response.status().as_u16();
    if !accepts(&check.expect_status, status) {
        // The evidence, as the app gave it: the status line and the first bytes of the body.
        let line = format!(
            "{:?} {status} {}",
            response.version(),
            response.status().canonical_reason().unwrap_or("")
        );
        let line = line.trim_end();
        let evidence = match first_bytes(response.body_mut()).await {
            Some(body) if !body.is_empty() => format!("{line}: {body:?}"),
            _ => line.to_owned(),
        };
        if (500..=599).contains(&status) {
            return Err(Failure::new(Reason::Http5xx, evidence));
        }
        let want: Vec<String> = check.expect_status.iter().map(|r| r.to_string()).collect();
        return Err(Failure::new(
            Reason::UnexpectedStatus,
            format!("{evidence}, want {}", want.join(",")),
        ));
    }
    let Some(needle) = &check.body_contains else {
        return Ok(());
    };
    // Read until the needle shows, the body ends, or MAX_BODY: a health page larger than that
    // is not one, and an endless body must not hold the check until its timeout.
    let needle = needle.as_bytes();
    let mut body = Vec::new();
    loop {
        if contains(&body, needle) {
            return Ok(());
        }
        if body.len() >= MAX_BODY {
            return Err(Failure::new(
                Reason::InvalidResponse,
                format!(
                    "HTTP {status}, body over {} KiB without {:?}",
                    MAX_BODY / 1024,
                    String::from_utf8_lossy(needle)
                ),
            ));
        }
        match response.body_mut().frame().await {
            Some(Ok(frame)) => {
                if let Ok(chunk) = frame.into_data() {
                    let room = MAX_BODY + needle.len() - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
            }
            None => break,
            Some(Err(e)) => return Err(classify::chain(&e, Reason::InvalidResponse)),
        }
    }
    Err(Failure::new(
        Reason::BodyMismatch,
        format!(
            "HTTP {status}, body lacks {:?}",
            String::from_utf8_lossy(needle)
        ),
    ))
}

/// How much of a failing answer's body is kept as evidence, and how long it is waited for: the
/// first frame that comes, no more, so that a body that stalls does not turn a 503 into a timeout.
const EVIDENCE_BYTES: usize = 120;
const EVIDENCE_WAIT: Duration = Duration::from_millis(100);

async fn first_bytes(body: &mut Incoming) -> Option<String> {
    let frame = tokio::time::timeout(EVIDENCE_WAIT, body.frame())
        .await
        .ok()??
        .ok()?;
    let data = frame.into_data().ok()?;
    let text = String::from_utf8_lossy(&data[..data.len().min(EVIDENCE_BYTES)]);
    // One line of printable text: the page, the log line and the Event show it as it is.
    let text: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    Some(text)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn accepts(ranges: &[StatusRange], status: u16) -> bool {
    ranges.iter().any(|r| r.contains(status))
}
