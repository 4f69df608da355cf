//! The value types of probe settings, each parsed from text at its own line and column.

use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Replaces each `${NAME}` in a probe's address by the environment variable NAME, an IPv6
/// address in brackets: the injector probes `${POD_IP}` (from the downward API), the address the
/// kubelet probes, which may be IPv6, and Kubernetes' own `$(NAME)` expansion cannot bracket it.
pub(super) fn expand(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let (before, after) = rest.split_at(start);
        out.push_str(before);
        let end = after
            .find('}')
            .ok_or_else(|| format!("{text:?}: `${{` without its `}}`"))?;
        let name = &after[2..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("{text:?}: bad variable name {name:?} in ${{…}}"));
        }
        let value = std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("{text:?}: environment variable {name} is not set"))?;
        if value.parse::<Ipv6Addr>().is_ok() && !out.ends_with('[') {
            out.push('[');
            out.push_str(&value);
            out.push(']');
        } else {
            out.push_str(&value);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// An `http://` or `https://` URL with a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl(pub url::Url);

impl FromStr for HttpUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = &expand(s)?;
        let url = url::Url::parse(s).map_err(|e| format!("bad URL {s:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "bad URL {s:?}: want http://host[:port]/path or https://…"
            ));
        }
        Ok(HttpUrl(url))
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// `host:port`, the port given explicitly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = &expand(s)?;
        let bad = || format!("bad address {s:?}: want host:port");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// An accepted status or range of statuses: `200`, `"200"` or `"200-399"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusRange(pub u16, pub u16);

impl StatusRange {
    pub fn contains(&self, status: u16) -> bool {
        (self.0..=self.1).contains(&status)
    }
}

impl FromStr for StatusRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad status {s:?}: want a code like 200 or a range like \"200-399\"");
        let (lo, hi) = s.split_once('-').unwrap_or((s, s));
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
            return Err(bad());
        }
        Ok(StatusRange(lo, hi))
    }
}

impl std::fmt::Display for StatusRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 == self.1 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{}-{}", self.0, self.1)
        }
    }
}

/// The HTTP version a probe speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HttpVersion {
    #[default]
    Http1,
    Http2,
    Auto,
}

impl FromStr for HttpVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "1.1" => Ok(HttpVersion::Http1),
            "2" | "2.0" => Ok(HttpVersion::Http2),
            "auto" => Ok(HttpVersion::Auto),
            _ => Err(format!("bad http_version {s:?}: want 1.1, 2 or auto")),
        }
    }
}

impl std::fmt::Display for HttpVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HttpVersion::Http1 => "1.1",
            HttpVersion::Http2 => "2",
            HttpVersion::Auto => "auto",
        })
    }
}

/// One request header, as a Kubernetes probe's `httpHeaders` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub name: String,
    pub value: String,
}

impl Header {
    pub(super) fn validate(&self) -> Result<(), String> {
        http::HeaderName::from_bytes(self.name.as_bytes())
            .map_err(|_| format!("bad header name {:?}", self.name))?;
        http::HeaderValue::from_str(&self.value)
            .map_err(|_| format!("bad value for header {:?}", self.name))?;
        Ok(())
    }
}

/// Where a gRPC probe connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrpcAddress {
    Tcp(HostPort),
    Unix(PathBuf),
}

impl FromStr for GrpcAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // gRPC's own naming: unix:path, or unix:///absolute/path.
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if !path.starts_with('/') {
                return Err(format!(
                    "bad address {s:?}: want unix:/absolute/path or unix:///absolute/path"
                ));
            }
            return Ok(GrpcAddress::Unix(PathBuf::from(path)));
        }
        s.parse().map(GrpcAddress::Tcp)
    }
}

impl std::fmt::Display for GrpcAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrpcAddress::Tcp(a) => a.fmt(f),
            GrpcAddress::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}
