//! The `probes` section: what each probe checks (HTTP, gRPC health, TCP connect), where, and how
//! often; and the `--target` shorthand for one probe.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::duration;
use crate::reason::Reason;

/// The probe list, with names unique (they are metric labels and signal names).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "Vec<ProbeConfig>")]
pub struct Probes(pub Vec<ProbeConfig>);

impl TryFrom<Vec<ProbeConfig>> for Probes {
    type Error = String;
    fn try_from(probes: Vec<ProbeConfig>) -> Result<Self, String> {
        let mut seen = BTreeSet::new();
        for p in &probes {
            if !seen.insert(p.name.as_str()) {
                return Err(format!("probe name {:?} is used twice", p.name));
            }
        }
        Ok(Probes(probes))
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "RawProbe", into = "RawProbe")]
pub struct ProbeConfig {
    pub name: String,
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub critical: bool,
}

impl ProbeConfig {
    /// The TCP port this probe checks, for the drain's traffic watch; none for a Unix socket.
    pub fn port(&self) -> Option<u16> {
        match &self.check {
            Check::Http(h) if h.unix_socket.is_some() => None,
            Check::Http(h) => h.url.0.port_or_known_default(),
            Check::Grpc(g) => match &g.address {
                GrpcAddress::Tcp(a) => Some(a.port),
                GrpcAddress::Unix(_) => None,
            },
            Check::Tcp(t) => Some(t.address.port),
        }
    }

    pub fn new(name: &str, check: Check) -> Self {
        Self {
            name: name.to_owned(),
            check,
            interval: default_interval(),
            timeout: default_timeout(),
            failure_threshold: default_failure_threshold(),
            success_threshold: 1,
            critical: true,
        }
    }

    /// The engine's name for this probe's signal.
    pub fn signal(&self) -> String {
        format!("probe:{}", self.name)
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err(format!(
                "probe {name:?}: interval and timeout must be above zero"
            ));
        }
        if self.failure_threshold == 0 || self.success_threshold == 0 {
            return Err(format!("probe {name:?}: thresholds must be at least 1"));
        }
        match &self.check {
            Check::Http(h) => h.validate().map_err(|e| format!("probe {name:?}: {e}")),
            Check::Grpc(g) => g.validate().map_err(|e| format!("probe {name:?}: {e}")),
            Check::Tcp(_) => Ok(()),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    Http(HttpCheck),
    Grpc(GrpcCheck),
    Tcp(TcpCheck),
}

impl Check {
    /// `http`, `grpc` or `tcp`: the probe's kind, as logs and `check-config` name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Check::Http(_) => "http",
            Check::Grpc(_) => "grpc",
            Check::Tcp(_) => "tcp",
        }
    }

    /// Every reason a check of this kind can fail with.
    pub fn reasons(&self) -> &'static [Reason] {
        match self {
            Check::Http(_) => &Reason::HTTP,
            Check::Grpc(_) => &Reason::GRPC,
            Check::Tcp(_) => &Reason::TCP,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub url: HttpUrl,
    /// Request headers, in order; a `Host` header replaces the URL's host in the request (as the
    /// kubelet's `httpHeaders` do), not the address connected to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Header>,
    #[serde(default = "default_expect_status")]
    pub expect_status: Vec<StatusRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// PEM file with the CA certificates that sign the app's certificate; replaces the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// `1.1`, `2` (cleartext with prior knowledge on http://, ALPN `h2` alone on https://) or
    /// `auto` (https:// only: ALPN offers `h2` and `http/1.1`, and the app picks).
    #[serde(default)]
    pub http_version: HttpVersion,
    /// Connect to this Unix domain socket instead of the URL's host and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix_socket: Option<PathBuf>,
}

impl HttpCheck {
    pub fn new(url: HttpUrl) -> Self {
        Self {
            url,
            headers: Vec::new(),
            expect_status: default_expect_status(),
            body_contains: None,
            ca_file: None,
            insecure_skip_verify: false,
            http_version: HttpVersion::default(),
            unix_socket: None,
        }
    }

    fn validate(&self) -> Result<(), String> {
        let tls = self.url.0.scheme() == "https";
        if self.http_version == HttpVersion::Auto && !tls {
            return Err(
                "http_version auto negotiates through TLS (ALPN): use it with https://, or 1.1 or 2"
                    .into(),
            );
        }
        if !tls && (self.ca_file.is_some() || self.insecure_skip_verify) {
            return Err("ca_file and insecure_skip_verify need an https:// URL".into());
        }
        for h in &self.headers {
            h.validate()?;
        }
        Ok(())
    }
}

fn default_expect_status() -> Vec<StatusRange> {
    vec![StatusRange(200, 399)]
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
    fn validate(&self) -> Result<(), String> {
        http::HeaderName::from_bytes(self.name.as_bytes())
            .map_err(|_| format!("bad header name {:?}", self.name))?;
        http::HeaderValue::from_str(&self.value)
            .map_err(|_| format!("bad value for header {:?}", self.name))?;
        Ok(())
    }
}

/// A `grpc.health.v1.Health/Check` call, as the kubelet's `grpc` probe makes it (plaintext), or
/// over TLS.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcCheck {
    /// `host:port`, or `unix:/path` (also `unix:///path`) for a Unix domain socket.
    pub address: GrpcAddress,
    /// The service asked about; empty asks about the server as a whole.
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub tls: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// The name the certificate is checked against (and sent as SNI); default the address's host
    /// (`localhost` for a Unix socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl GrpcCheck {
    pub fn new(address: GrpcAddress) -> Self {
        Self {
            address,
            service: String::new(),
            tls: false,
            ca_file: None,
            insecure_skip_verify: false,
            server_name: None,
        }
    }

    fn validate(&self) -> Result<(), String> {
        if !self.tls
            && (self.ca_file.is_some() || self.insecure_skip_verify || self.server_name.is_some())
        {
            return Err("ca_file, insecure_skip_verify and server_name need tls: true".into());
        }
        if let Some(name) = &self.server_name {
            rustls::pki_types::ServerName::try_from(name.as_str())
                .map_err(|_| format!("bad server_name {name:?}"))?;
        }
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

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    /// `host:port`.
    pub address: HostPort,
}

/// The YAML shape of a probe; `ProbeConfig` is its validated form.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<HttpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grpc: Option<GrpcCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcp: Option<TcpCheck>,
    #[serde(default = "default_interval", with = "duration")]
    interval: Duration,
    #[serde(default = "default_timeout", with = "duration")]
    timeout: Duration,
    #[serde(default = "default_failure_threshold")]
    failure_threshold: u32,
    #[serde(default = "one")]
    success_threshold: u32,
    #[serde(default = "yes")]
    critical: bool,
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_failure_threshold() -> u32 {
    2
}
fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

impl TryFrom<RawProbe> for ProbeConfig {
    type Error = String;
    fn try_from(raw: RawProbe) -> Result<Self, String> {
        let name = raw.name;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "probe name {name:?} must be non-empty and use only letters, digits, '-' and '_'"
            ));
        }
        let check = match (raw.http, raw.grpc, raw.tcp) {
            (Some(http), None, None) => Check::Http(http),
            (None, Some(grpc), None) => Check::Grpc(grpc),
            (None, None, Some(tcp)) => Check::Tcp(tcp),
            _ => {
                return Err(format!(
                    "probe {name:?} needs exactly one of `http`, `grpc` or `tcp`"
                ))
            }
        };
        let probe = ProbeConfig {
            name,
            check,
            interval: raw.interval,
            timeout: raw.timeout,
            failure_threshold: raw.failure_threshold,
            success_threshold: raw.success_threshold,
            critical: raw.critical,
        };
        probe.validate()?;
        Ok(probe)
    }
}

impl From<ProbeConfig> for RawProbe {
    fn from(p: ProbeConfig) -> Self {
        let (mut http, mut grpc, mut tcp) = (None, None, None);
        match p.check {
            Check::Http(h) => http = Some(h),
            Check::Grpc(g) => grpc = Some(g),
            Check::Tcp(t) => tcp = Some(t),
        }
        RawProbe {
            name: p.name,
            http,
            grpc,
            tcp,
            interval: p.interval,
            timeout: p.timeout,
            failure_threshold: p.failure_threshold,
            success_threshold: p.success_threshold,
            critical: p.critical,
        }
    }
}

/// Replaces each `${NAME}` in a probe's address by the environment variable NAME, an IPv6
/// address in brackets: the injector probes `${POD_IP}` (from the downward API), the address the
/// kubelet probes, which may be IPv6, and Kubernetes' own `$(NAME)` expansion cannot bracket it.
fn expand(text: &str) -> Result<String, String> {
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
pub struct HttpUrl(pub reqwest::Url);

impl FromStr for HttpUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = &expand(s)?;
        let url = reqwest::Url::parse(s).map_err(|e| format!("bad URL {s:?}: {e}"))?;
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

serde_via_str!(HttpUrl, HostPort, StatusRange, HttpVersion, GrpcAddress);

/// A `--target`: `http://…`, `https://…`, `tcp://host:port`, or `grpc://host:port[/service]`
/// (`grpcs://` over TLS).
#[derive(Clone, Debug, PartialEq)]
pub struct Target(pub Check);

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(addr) = s.strip_prefix("tcp://") {
            let address = addr.trim_end_matches('/').parse()?;
            return Ok(Target(Check::Tcp(TcpCheck { address })));
        }
        for (scheme, tls) in [("grpc://", false), ("grpcs://", true)] {
            if let Some(rest) = s.strip_prefix(scheme) {
                let (address, service) = rest.split_once('/').unwrap_or((rest, ""));
                let mut check = GrpcCheck::new(GrpcAddress::Tcp(address.parse()?));
                check.service = service.to_owned();
                check.tls = tls;
                return Ok(Target(Check::Grpc(check)));
            }
        }
        Ok(Target(Check::Http(HttpCheck::new(s.parse()?))))
    }
}

/// Serde for `--target`-shaped text in files and annotations.
impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Check::Http(h) => s.collect_str(&h.url),
            Check::Tcp(t) => s.collect_str(&format_args!("tcp://{}", t.address)),
            Check::Grpc(g) => {
                let scheme = if g.tls { "grpcs" } else { "grpc" };
                s.collect_str(&format_args!("{scheme}://{}/{}", g.address, g.service))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_by_scheme() {
        assert!(matches!(
            "https://a:8443/h".parse::<Target>(),
            Ok(Target(Check::Http(_)))
        ));
        assert!(matches!(
            "tcp://[::1]:80".parse::<Target>(),
            Ok(Target(Check::Tcp(_)))
        ));
        let Ok(Target(Check::Grpc(g))) = "grpcs://10.0.0.1:50051/shop.Cart".parse::<Target>()
        else {
            panic!("grpc expected")
        };
        assert_eq!(
            (g.address.to_string(), g.service.as_str(), g.tls),
            ("10.0.0.1:50051".into(), "shop.Cart", true)
        );
        let Ok(Target(Check::Grpc(g))) = "grpc://h:1".parse::<Target>() else {
            panic!("grpc expected")
        };
        assert_eq!((g.service.as_str(), g.tls), ("", false));
        assert!("tcp://nohost".parse::<Target>().is_err());
        assert!("udp://a:1".parse::<Target>().is_err());
        assert!("grpc://nohost".parse::<Target>().is_err());
    }

    #[test]
    fn grpc_addresses_take_grpc_naming_for_unix_sockets() {
        for text in ["unix:/run/app.sock", "unix:///run/app.sock"] {
            assert_eq!(
                text.parse::<GrpcAddress>(),
                Ok(GrpcAddress::Unix("/run/app.sock".into()))
            );
        }
        assert!("unix:relative.sock".parse::<GrpcAddress>().is_err());
    }

    #[test]
    fn a_variable_in_a_host_is_expanded_and_an_ipv6_address_bracketed() {
        // Set values (an IPv4 and an IPv6 POD_IP) are tested through the binary, in tests/cli.rs:
        // the process environment is not the test's to change.
        assert!(expand("${SIDEWATCH_TEST_SURELY_UNSET}:80")
            .unwrap_err()
            .contains("is not set"));
        assert!(expand("${bad-name}")
            .unwrap_err()
            .contains("bad variable name"));
        assert!(expand("${OPEN").unwrap_err().contains("without"));
        assert_eq!(expand("no variables").unwrap(), "no variables");
    }
}
