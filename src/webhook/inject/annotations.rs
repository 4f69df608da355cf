//! The pod's `sidewatch.io/*` annotations, read and checked at admission with the parsers the
//! sidecar itself uses (its config loader), so that a bad value keeps the pod uninjected with a
//! warning instead of giving it a sidecar that cannot start.

use serde_json::{Map, Value};

use super::sidecar::AGENT_PORT;
use super::target::POD_IP;
use crate::config::{self, Overrides, Target};

pub const PREFIX: &str = "sidewatch.io/";

/// Annotations the injector writes, which a pod sent again (a retried admission) carries.
pub const INJECTED: &str = "sidewatch.io/injected";
pub const INJECTION: &str = "sidewatch.io/injection";

/// Where the app's memory is read; see docs/memory.md. The annotation `sidewatch.io/memory`,
/// and the webhook's `--memory-source` for the pods without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Memory {
    /// The node agent when one runs on every node (`--node-agent`), else the app container's
    /// own cgroup when the sidecar can run as the app's user, else its processes when the
    /// process namespace may be shared, else none.
    Auto,
    AppRoot,
    Cgroup,
    Proc,
    /// The node agent (`sidewatch node`) of the pod's node, with a projected token for it.
    Node,
    None,
}

/// What the annotations ask for.
#[derive(Debug, Default)]
pub struct Options {
    pub inject: Option<bool>,
    /// `sidewatch.io/target`: a `--target` (`SIDEWATCH_TARGET`) or, as a YAML/JSON map, one
    /// probe of the config (`SIDEWATCH_PROBES`).
    pub target: Option<TargetSetting>,
    pub app_container: Option<String>,
    pub readiness_gate: bool,
    pub memory: Option<Memory>,
    pub process_match: Option<String>,
    pub memory_unready_above: Option<String>,
    pub drain_readiness: Option<String>,
    pub overload_signal: bool,
    pub plain: Option<bool>,
    pub admin_port: Option<u16>,
    /// `sidewatch.io/agent-port`: the port of the HAProxy agent-check endpoint, when opened.
    pub agent_port: Option<u16>,
    pub host_network: bool,
    /// `sidewatch.io/token: sidecar`: a service-account token for the sidecar alone.
    pub sidecar_token: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TargetSetting {
    Flag(String),
    Probe(String),
}

const KNOWN: [&str; 14] = [
    "inject",
    "target",
    "app-container",
    "readiness-gate",
    "memory",
    "process-match",
    "memory-unready-above",
    "mode",
    "admin-port",
    "agent-port",
    "host-network",
    "drain-readiness",
    "overload-signal",
    "token",
];

impl Options {
    /// Reads the pod's annotations. `Err` names the annotation and what is wrong with it.
    pub fn parse(annotations: Option<&Map<String, Value>>) -> Result<Options, String> {
        let mut o = Options::default();
        for (key, value) in annotations.into_iter().flatten() {
            let Some(name) = key.strip_prefix(PREFIX) else {
                continue;
            };
            if key == INJECTED || key == INJECTION {
                continue;
            }
            let text = value.as_str().unwrap_or_default();
            let bad = |why: String| format!("annotation {key}: {why}");
            match name {
                "inject" => o.inject = Some(boolean(text).map_err(bad)?),
                "target" => o.target = Some(target(text).map_err(bad)?),
                "app-container" if !text.is_empty() => o.app_container = Some(text.to_owned()),
                "readiness-gate" => o.readiness_gate = boolean(text).map_err(bad)?,
                "overload-signal" => o.overload_signal = boolean(text).map_err(bad)?,
                "memory" => {
                    use clap::ValueEnum;
                    o.memory = Some(match Memory::from_str(text, false) {
                        Ok(memory) => memory,
                        Err(_) => {
                            return Err(bad(format!(
                                "{text:?}: want auto, app-root, cgroup, proc, node or none"
                            )))
                        }
                    })
                }
                "process-match" if !text.is_empty() => o.process_match = Some(text.to_owned()),
                "memory-unready-above" => {
                    sidecar_accepts(&[("SIDEWATCH_MEMORY_UNREADY_ABOVE", text)]).map_err(bad)?;
                    o.memory_unready_above = Some(text.to_owned());
                }
                "drain-readiness" => {
                    sidecar_accepts(&[("SIDEWATCH_DRAIN_READINESS", text)]).map_err(bad)?;
                    o.drain_readiness = Some(text.to_owned());
                }
                "mode" => {
                    o.plain = Some(match text {
                        "native" => false,
                        "plain" => true,
                        _ => return Err(bad(format!("{text:?}: want native or plain"))),
                    })
                }
                "admin-port" => o.admin_port = Some(port(text).map_err(bad)?),
                "agent-port" => {
                    o.agent_port = match text {
                        "true" => Some(AGENT_PORT),
                        "false" => None,
                        _ => Some(port(text).map_err(|why| {
                            bad(format!(
                                "{why}; want \"true\" (port {AGENT_PORT}) or a port"
                            ))
                        })?),
                    }
                }
                "host-network" => o.host_network = boolean(text).map_err(bad)?,
                "token" => {
                    o.sidecar_token = match text {
                        "pod" => false,
                        "sidecar" => true,
                        _ => return Err(bad(format!("{text:?}: want pod or sidecar"))),
                    }
                }
                _ if KNOWN.contains(&name) => {
                    return Err(bad("must not be empty".into()));
                }
                _ => {
                    return Err(bad(format!(
                        "unknown; known: {}",
                        KNOWN.map(|k| format!("{PREFIX}{k}")).join(", ")
                    )))
                }
            }
        }
        Ok(o)
    }
}

fn boolean(text: &str) -> Result<bool, String> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{text:?}: want \"true\" or \"false\"")),
    }
}

fn port(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{text:?} is not a port number"))
}

fn target(text: &str) -> Result<TargetSetting, String> {
    let text = text.trim();
    if text.starts_with('{') {
        // One probe of the sidecar's config; its name defaults to "app".
        let mut probe: Value =
            serde_saphyr::from_str(text).map_err(|e| format!("not a YAML map: {e}"))?;
        let Some(map) = probe.as_object_mut() else {
            return Err("not a YAML map".into());
        };
        map.entry("name").or_insert_with(|| "app".into());
        let probes = serde_json::to_string(&[&probe]).map_err(|e| e.to_string())?;
        sidecar_accepts(&[("SIDEWATCH_PROBES", &probes)])?;
        return Ok(TargetSetting::Probe(probes));
    }
    let seen = text.replace(POD_IP, "127.0.0.1");
    seen.parse::<Target>()?;
    Ok(TargetSetting::Flag(text.to_owned()))
}

/// Loads the sidecar's configuration from these variables as the sidecar will, `${POD_IP}`
/// standing in for the address the kubelet will give it.
pub fn sidecar_accepts(vars: &[(&str, &str)]) -> Result<(), String> {
    let env = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.replace(POD_IP, "127.0.0.1")));
    config::load(None, env, &Overrides::default())
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(annotations: Value) -> Result<Options, String> {
        Options::parse(annotations.as_object())
    }

    #[test]
    fn values_are_checked_with_the_sidecars_own_parsers() {
        let err = parse(json!({"sidewatch.io/memory-unready-above": "lots"})).unwrap_err();
        assert!(
            err.contains("sidewatch.io/memory-unready-above") && err.contains("lots"),
            "{err}"
        );
        // Valid alone, refused with the default ready_below: the sidecar would refuse it too.
        let err = parse(json!({"sidewatch.io/memory-unready-above": "0.5"})).unwrap_err();
        assert!(err.contains("ready_below"), "{err}");
        let err = parse(json!({"sidewatch.io/target": "ftp://x/"})).unwrap_err();
        assert!(err.contains("sidewatch.io/target"), "{err}");
        let err = parse(json!({"sidewatch.io/target": "{grpc: {address: nowhere}}"})).unwrap_err();
        assert!(err.contains("host:port"), "{err}");
        let err = parse(json!({"sidewatch.io/readiness-gate": "yes"})).unwrap_err();
        assert!(err.contains("\"yes\""), "{err}");
        let err = parse(json!({"sidewatch.io/readines-gate": "true"})).unwrap_err();
        assert!(
            err.contains("unknown") && err.contains("sidewatch.io/readiness-gate"),
            "{err}"
        );
        // Without process-match, proc finds the app container's processes by its container ID.
        let ok = parse(json!({"sidewatch.io/memory": "proc"})).unwrap();
        assert_eq!(ok.memory, Some(Memory::Proc));
        let err = parse(json!({"sidewatch.io/memory": "agent"})).unwrap_err();
        assert!(err.contains("node"), "{err}");
        let err = parse(json!({"sidewatch.io/drain-readiness": "serve"})).unwrap_err();
        assert!(err.contains("sidewatch.io/drain-readiness"), "{err}");
        let ok = parse(json!({"sidewatch.io/drain-readiness": "serve_while_terminating"})).unwrap();
        assert_eq!(
            ok.drain_readiness.as_deref(),
            Some("serve_while_terminating")
        );
    }

    #[test]
    fn targets_are_a_flag_or_a_probe_map() {
        let o = parse(
            json!({"sidewatch.io/target": "grpc://${POD_IP}:9000/shop.Cart",
            "other.io/x": "y"}),
        )
        .unwrap();
        assert_eq!(
            o.target,
            Some(TargetSetting::Flag(
                "grpc://${POD_IP}:9000/shop.Cart".into()
            ))
        );
        let o = parse(json!({"sidewatch.io/target":
            "{http: {url: 'http://localhost/healthz', unix_socket: /run/app.sock}, timeout: 2s}"}))
        .unwrap();
        let Some(TargetSetting::Probe(probes)) = o.target else {
            panic!("a probe")
        };
        let probes: Value = serde_json::from_str(&probes).unwrap();
        assert_eq!(probes[0]["name"], "app");
        assert_eq!(probes[0]["http"]["unix_socket"], "/run/app.sock");
    }
}
