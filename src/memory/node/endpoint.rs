//! Where the node source asks and what: the agent's address, this pod and its app container, the
//! request with the projected token read anew at each connection, and what a refusal means.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use tokio_util::task::AbortOnDropHandle;

use super::super::config::{MemoryConfig, NodeAgent};
use super::super::wire;

/// The node source cannot be set up: sidewatch refuses to start and says what is missing.
#[derive(Debug, thiserror::Error)]
pub enum NodeSetupError {
    #[error("memory.source is node and memory.node.agent is auto (http://$HOST_IP:{}), but HOST_IP is not set: give the sidecar HOST_IP from the downward API (fieldRef status.hostIP), or set memory.node.agent", wire::PORT)]
    NoHostIp,
    #[error("memory.node.agent is auto but HOST_IP {0:?} is not an IP address")]
    BadHostIp(String),
    #[error("memory.source is node, which asks the node agent for this pod by name: POD_NAME and POD_NAMESPACE (downward API) are not both set")]
    NoPod,
    #[error("memory.source is node, which asks the node agent for the app container by name: set kubernetes.app_container (SIDEWATCH_KUBERNETES_APP_CONTAINER)")]
    NoAppContainer,
}

/// What the sidecar asks the agent for, and where.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// `HOST:PORT`, an IPv6 host in brackets.
    pub authority: String,
    pub token_file: PathBuf,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub interval: Duration,
}

/// Why there is no stream now, for the blind reason, the log and the metric.
#[derive(Debug)]
pub(super) struct Away {
    /// The `kind` of `sidewatch_memory_read_errors_total`.
    pub(super) kind: &'static str,
    /// Said after "the node agent at URL".
    pub(super) why: String,
    /// 401 or 403: a person must act (the token's audience, RBAC, the node); retried slower.
    pub(super) refused: bool,
}

impl Away {
    pub(super) fn new(why: String) -> Away {
        Away {
            kind: "node_away",
            why,
            refused: false,
        }
    }
}

/// A token is a few KiB at most; a larger file is not one.
const MAX_TOKEN: u64 = 64 * 1024;
/// How much of a refusal's body is kept for the log: the agent's one-line reason.
const MAX_SAID: usize = 512;

impl Endpoint {
    /// From `memory.node`, the app container's name and the environment (`HOST_IP`, `POD_NAME`,
    /// `POD_NAMESPACE`).
    pub fn new(
        memory: &MemoryConfig,
        app_container: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Endpoint, NodeSetupError> {
        let var = |k: &str| {
            env(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let authority = match &memory.node.agent {
            NodeAgent::Http(authority) => authority.clone(),
            NodeAgent::Auto => {
                let ip = var("HOST_IP").ok_or(NodeSetupError::NoHostIp)?;
                match ip.parse::<IpAddr>() {
                    Ok(IpAddr::V4(v4)) => format!("{v4}:{}", wire::PORT),
                    Ok(IpAddr::V6(v6)) => format!("[{v6}]:{}", wire::PORT),
                    Err(_) => return Err(NodeSetupError::BadHostIp(ip)),
                }
            }
        };
        let (Some(pod), Some(namespace)) = (var("POD_NAME"), var("POD_NAMESPACE")) else {
            return Err(NodeSetupError::NoPod);
        };
        let container = app_container
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .ok_or(NodeSetupError::NoAppContainer)?;
        Ok(Endpoint {
            authority,
            token_file: memory.node.token_file.clone(),
            namespace,
            pod,
            container: container.to_owned(),
            interval: memory.interval,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.authority)
    }

    /// For the start-up log and `check-config`.
    pub fn describe(&self) -> String {
        format!(
            "{} for container {} of pod {}/{}, every {}, token from {}",
            self.url(),
            self.container,
            self.namespace,
            self.pod,
            humantime::format_duration(self.interval),
            self.token_file.display()
        )
    }

    /// `/v1/memory?namespace=…&pod=…&container=…&interval=…`.
    pub fn path_and_query(&self) -> String {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("namespace", &self.namespace)
            .append_pair("pod", &self.pod)
            .append_pair("container", &self.container)
            .append_pair(
                "interval",
                &humantime::format_duration(self.interval).to_string(),
            )
            .finish();
        format!("{}?{query}", wire::PATH)
    }

    /// The token as the file holds it now: the kubelet rewrites it well before it expires.
    pub(super) fn token(&self) -> Result<String, Away> {
        let unreadable = |kind, what: String| Away {
            kind,
            why: format!(
                "is not asked: the token file {} {what}",
                self.token_file.display()
            ),
            refused: false,
        };
        let bytes = crate::util::read_bounded(&self.token_file, MAX_TOKEN)
            .map_err(|e| unreadable("io", format!("cannot be read: {e}")))?;
        let token = String::from_utf8(bytes)
            .map_err(|_| unreadable("garbled", "is not text".into()))?
            .trim()
            .to_owned();
        if token.is_empty() || header::HeaderValue::from_str(&token).is_err() {
            return Err(unreadable("garbled", "holds no token".into()));
        }
        Ok(token)
    }

    /// Connects and asks; the body of a 200 and the task that drives the connection (dropped,
    /// it closes it), or why not.
    pub(super) async fn open(
        &self,
        token: &str,
    ) -> Result<(Incoming, AbortOnDropHandle<()>), Away> {
        let request = http::Request::get(self.path_and_query())
            .header(header::HOST, &self.authority)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::ACCEPT, wire::CONTENT_TYPE)
            .header(
                header::USER_AGENT,
                concat!("sidewatch/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| Away::new(format!("is not asked: the request cannot be made: {e}")))?;
        let stream = tokio::net::TcpStream::connect(self.authority.as_str())
            .await
            .map_err(|e| Away::new(format!("cannot be reached: {e}")))?;
        // Lines are small and each should leave at once.
        let _ = stream.set_nodelay(true);
        let broke = |e: hyper::Error| Away::new(format!("broke the connection: {e}"));
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(broke)?;
        let driver = AbortOnDropHandle::new(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let response = sender.send_request(request).await.map_err(broke)?;
        let status = response.status();
        if status == StatusCode::OK {
            return Ok((response.into_body(), driver));
        }
        let said = said(response.into_body()).await;
        Err(refusal(status, &said, self))
    }
}

/// The start of a refusal's body, as text on one line.
async fn said(body: Incoming) -> String {
    let collected = tokio::time::timeout(
        Duration::from_secs(1),
        Limited::new(body, MAX_SAID).collect(),
    )
    .await;
    let Ok(Ok(collected)) = collected else {
        return String::new();
    };
    let bytes = collected.to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    crate::util::clip(&line, MAX_SAID).to_owned()
}

fn refusal(status: StatusCode, said: &str, e: &Endpoint) -> Away {
    let said = if said.is_empty() {
        String::new()
    } else {
        format!(" (it says: {said})")
    };
    let status_text = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let (why, refused) = match status {
        StatusCode::UNAUTHORIZED => (
            format!(
                "refused the token from {} ({status_text}){said}: it is not valid for the audience {}, or it expired",
                e.token_file.display(),
                wire::AUDIENCE
            ),
            true,
        ),
        StatusCode::FORBIDDEN => (
            format!(
                "refused to serve pod {}/{} ({status_text}){said}: the token is another pod's, or this pod is not on that agent's node",
                e.namespace, e.pod
            ),
            true,
        ),
        StatusCode::NOT_FOUND => (
            format!(
                "has no memory of container {} ({status_text}){said}: not started yet, or not of this pod",
                e.container
            ),
            false,
        ),
        StatusCode::SERVICE_UNAVAILABLE => (
            format!("cannot check the token now ({status_text}){said}: it cannot reach the API server"),
            false,
        ),
        _ => (format!("answered {status_text}{said}"), false),
    };
    Away {
        kind: if refused { "node_refused" } else { "node_away" },
        why,
        refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    const POD: [(&str, &str); 2] = [("POD_NAME", "web-1"), ("POD_NAMESPACE", "shop")];

    #[test]
    fn auto_is_the_host_ip_at_the_agents_port_ipv6_in_brackets() {
        let memory = MemoryConfig::default();
        for (ip, authority) in [("10.0.0.7", "10.0.0.7:9465"), ("fd00::7", "[fd00::7]:9465")] {
            let vars = [POD[0], POD[1], ("HOST_IP", ip)];
            let e = Endpoint::new(&memory, Some("app"), env(&vars)).unwrap();
            assert_eq!(e.authority, authority);
        }
        let vars = [POD[0], POD[1], ("HOST_IP", "node-a")];
        let err = Endpoint::new(&memory, Some("app"), env(&vars)).unwrap_err();
        assert!(matches!(err, NodeSetupError::BadHostIp(_)), "{err}");
    }

    #[test]
    fn what_is_missing_is_said() {
        let memory = MemoryConfig::default();
        let err = Endpoint::new(&memory, Some("app"), env(&POD)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("HOST_IP is not set") && text.contains("memory.node.agent"),
            "{text}"
        );
        let vars = [("HOST_IP", "10.0.0.7"), POD[0]];
        let err = Endpoint::new(&memory, Some("app"), env(&vars)).unwrap_err();
        assert!(matches!(err, NodeSetupError::NoPod), "{err}");
        let vars = [POD[0], POD[1], ("HOST_IP", "10.0.0.7")];
        let err = Endpoint::new(&memory, Some(" "), env(&vars)).unwrap_err();
        assert!(
            err.to_string().contains("kubernetes.app_container"),
            "{err}"
        );
        // An explicit agent needs no HOST_IP.
        let mut memory = MemoryConfig::default();
        memory.node.agent = "http://127.0.0.1:9000".parse().unwrap();
        assert!(Endpoint::new(&memory, Some("app"), env(&POD)).is_ok());
    }

    #[test]
    fn the_request_names_the_pod_the_container_and_the_interval() {
        let memory = MemoryConfig::default();
        let vars = [("POD_NAME", "web 1&x"), POD[1], ("HOST_IP", "10.0.0.7")];
        let e = Endpoint::new(&memory, Some("app"), env(&vars)).unwrap();
        assert_eq!(
            e.path_and_query(),
            "/v1/memory?namespace=shop&pod=web+1%26x&container=app&interval=250ms"
        );
        assert_eq!(e.url(), "http://10.0.0.7:9465");
    }
}
