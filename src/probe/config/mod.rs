//! The `probes` section: what each probe checks (HTTP, gRPC health, TCP connect), where, and how
//! often; and the `--target` shorthand for one probe.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::units::{duration, serde_via_str};

mod values;
use crate::engine::Signal;
use crate::reason::Reason;
pub use values::*;

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
    pub fn signal(&self) -> Signal {
        Signal::probe(&self.name)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
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

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    /// `host:port`.
    pub address: HostPort,
}

/// The YAML shape of a probe; `ProbeConfig` is its validated form.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProbe {
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
mod tests;
