//! The HTTP probe: one GET on a fresh connection (HTTP/1.1, or HTTP/2 by prior knowledge or
//! ALPN), over TCP or a Unix socket, with the configured headers; the status and, when asked, the
//! body decide.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::config::{HttpCheck, HttpVersion, StatusRange};
use super::{classify, read_ca_file, Failure, ProbeSetupError};
use crate::reason::Reason;

/// The most of a response body read: enough for `body_contains` on any health page, and a bound
/// on what a misbehaving app can make us buffer.
const MAX_BODY: usize = 64 * 1024;

pub struct HttpProber {
    client: reqwest::Client,
    check: HttpCheck,
    headers: HeaderMap,
}

impl HttpProber {
    pub fn new(probe: &str, check: &HttpCheck) -> Result<Self, ProbeSetupError> {
        crate::tls::install_crypto_provider();
        // No pool (a fresh connection per check, like the kubelet), no proxy, no redirects, no
        // retries: we test the port.
        let mut builder = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .tcp_nodelay(true)
            .user_agent(concat!("sidewatch/", env!("CARGO_PKG_VERSION")));
        builder = match check.http_version {
            HttpVersion::Http1 => builder.http1_only(),
            // Cleartext: h2c with prior knowledge; over TLS: ALPN offers `h2` alone.
            HttpVersion::Http2 => builder.http2_prior_knowledge(),
            // ALPN offers `h2` and `http/1.1`, as the kubelet's Go client does.
            HttpVersion::Auto => builder,
        };
        if let Some(path) = &check.ca_file {
            let mut certs = Vec::new();
            for der in read_ca_file(probe, path)? {
                certs.push(reqwest::Certificate::from_der(&der).map_err(|source| {
                    ProbeSetupError::Client {
                        probe: probe.to_owned(),
                        source,
                    }
                })?);
            }
            builder = builder.tls_certs_only(certs);
        }
        if check.url.0.scheme() == "http" {
            // No TLS on this probe: skip loading the system's root certificates.
            builder = builder.tls_certs_only(Vec::new());
        }
        if check.insecure_skip_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        if let Some(path) = &check.unix_socket {
            builder = builder.unix_socket(path.as_path());
        }
        let client = builder.build().map_err(|source| ProbeSetupError::Client {
            probe: probe.to_owned(),
            source,
        })?;
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
        Ok(HttpProber {
            client,
            check: check.clone(),
            headers,
        })
    }

    pub async fn check(&self) -> Result<(), Failure> {
        let check = &self.check;
        let mut response = self
            .client
            .get(check.url.0.clone())
            .headers(self.headers.clone())
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let status = response.status().as_u16();
        if (500..=599).contains(&status) && !accepts(&check.expect_status, status) {
            return Err(Failure::new(Reason::Http5xx, format!("HTTP {status}")));
        }
        if !accepts(&check.expect_status, status) {
            let want: Vec<String> = check.expect_status.iter().map(|r| r.to_string()).collect();
            return Err(Failure::new(
                Reason::UnexpectedStatus,
                format!("HTTP {status}, want {}", want.join(",")),
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
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_BODY + needle.len() - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) => break,
                Err(e) => return Err(classify(&e)),
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
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn accepts(ranges: &[StatusRange], status: u16) -> bool {
    ranges.iter().any(|r| r.contains(status))
}

/// A reqwest error's reason: a connect that failed in no known way was refused; any other
/// failure is an answer we could not read.
pub fn classify(err: &reqwest::Error) -> Failure {
    let fallback = if err.is_connect() {
        Reason::Refused
    } else {
        Reason::InvalidResponse
    };
    classify::chain(err, fallback)
}
