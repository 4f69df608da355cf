//! What the pod's containers say about ports, sockets and volumes, read from the raw JSON, and
//! the sidecar's own port chosen among them.

use serde_json::{json, Value};

use super::annotations::Options;
use super::sidecar::AGENT_PORT_NAME;
use super::{shape, target, Refusal, RefusalKind, Said, ADMIN_PORT};

/// Every port a container of the pod declares or probes (a probe may use a port it does not
/// declare): the sidecar's own must be none of them.
pub(super) fn ports_in_use<'a>(containers: impl Iterator<Item = &'a Value>) -> Vec<u16> {
    let mut ports = Vec::new();
    let as_port = |v: &Value| v.as_u64().and_then(|p| u16::try_from(p).ok());
    for c in containers {
        for p in c["ports"].as_array().into_iter().flatten() {
            ports.extend(as_port(&p["containerPort"]));
            ports.extend(as_port(&p["hostPort"]));
        }
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            for handler in ["httpGet", "tcpSocket", "grpc"] {
                ports.extend(as_port(&c[probe][handler]["port"]));
            }
        }
    }
    ports
}

pub(super) fn first_tcp_port(container: &Value) -> Option<u16> {
    container["ports"]
        .as_array()?
        .iter()
        .filter(|p| p["protocol"].as_str().unwrap_or("TCP") == "TCP")
        .find_map(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
}

pub(super) fn has_port_named(container: &Value, name: &str) -> bool {
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["name"] == name)
}

/// The TCP port of a `--target`, for the drain.
pub(super) fn target_port(text: &str) -> Option<u16> {
    let seen = text.replace(target::POD_IP, "127.0.0.1");
    let probe =
        crate::config::ProbeConfig::new("app", seen.parse::<crate::config::Target>().ok()?.0);
    probe.port()
}

/// The TCP port of a probe given as config (`SIDEWATCH_PROBES` with one probe), for the drain.
pub(super) fn probes_port(probes: &str) -> Option<u16> {
    let probe: Value = serde_json::from_str::<Value>(probes).ok()?[0].take();
    let seen = serde_json::to_string(&probe)
        .ok()?
        .replace(target::POD_IP, "127.0.0.1");
    serde_json::from_str::<crate::config::ProbeConfig>(&seen)
        .ok()?
        .port()
}

/// The Unix socket a probe given as config connects to.
pub(super) fn unix_socket(probes: &str) -> Option<String> {
    let probes: Value = serde_json::from_str(probes).ok()?;
    let probe = &probes[0];
    probe["http"]["unix_socket"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            let address = probe["grpc"]["address"].as_str()?.strip_prefix("unix:")?;
            Some(address.strip_prefix("//").unwrap_or(address).to_owned())
        })
}

/// A read-only mount, for the sidecar, of the volume a container of the pod has `path` in.
pub(super) fn volume_holding<'a>(
    containers: impl Iterator<Item = &'a Value>,
    path: &str,
) -> Option<Value> {
    containers
        .flat_map(|c| c["volumeMounts"].as_array().into_iter().flatten())
        .filter_map(|m| Some((m["name"].as_str()?, m["mountPath"].as_str()?)))
        .filter(|(_, dir)| {
            let dir = dir.trim_end_matches('/');
            path.strip_prefix(dir)
                .is_some_and(|rest| rest.starts_with('/'))
        })
        .max_by_key(|(_, dir)| dir.len())
        .map(|(name, dir)| json!({"name": name, "mountPath": dir, "readOnly": true}))
}

/// The sidecar's own port: the annotated one, else `ADMIN_PORT`, else the next one the pod
/// does not use.
pub(super) fn choose_admin_port(
    options: &Options,
    used: &[u16],
    said: &mut Said,
) -> Result<u16, Refusal> {
    let port = match options.admin_port {
        Some(port) if used.contains(&port) => {
            return Err(Refusal::new(
                RefusalKind::AdminPort,
                format!("sidewatch.io/admin-port {port} is a port of the pod already"),
            ))
        }
        Some(port) => port,
        None if !used.contains(&ADMIN_PORT) => ADMIN_PORT,
        None => {
            let free = (ADMIN_PORT + 1..=u16::MAX)
                .find(|p| !used.contains(p))
                .ok_or_else(|| {
                    Refusal::new(RefusalKind::AdminPort, "no free port for the sidecar")
                })?;
            said.warnings.push(format!(
                "admin port {free}: {ADMIN_PORT} is a port of the pod already"
            ));
            free
        }
    };
    said.notes.push(format!("admin port {port}"));
    Ok(port)
}

/// The HAProxy agent-check port the pod asks for (`sidewatch.io/agent-port`), and whether it may
/// be named `sw-agent`. Refused, never moved, when a container of the pod declares or probes it
/// or it is the admin port: the load balancer is configured with this number, so a port other
/// than the one asked for would be one nobody asks.
pub(super) fn choose_agent_port(
    options: &Options,
    spec: &Value,
    said: &mut Said,
) -> Result<Option<(u16, bool)>, Refusal> {
    let Some(port) = options.agent_port else {
        return Ok(None);
    };
    let clash = |why: String| {
        Err(Refusal::new(
            RefusalKind::AgentPort,
            format!("sidewatch.io/agent-port {port}: {why}; choose another port"),
        ))
    };
    if options.admin_port == Some(port) {
        return clash("it is sidewatch.io/admin-port too".into());
    }
    for c in shape::all(spec) {
        if ports_in_use(std::iter::once(c)).contains(&port) {
            let name = c["name"].as_str().unwrap_or_default();
            return clash(format!("container {name:?} uses that port already"));
        }
    }
    let named = !shape::all(spec).any(|c| has_port_named(c, AGENT_PORT_NAME));
    if !named {
        said.warnings.push(format!(
            "agent port {port} left unnamed: a container of the pod has a port named \
             {AGENT_PORT_NAME} already, so point the load balancer at the number"
        ));
    }
    said.notes.push(format!("agent-check port {port}"));
    Ok(Some((port, named)))
}
