//! What the kubelet does with a container's `env` before it starts it: `value` with `$(VAR)`
//! expanded from the entries before it, `fieldRef` from the pod, `resourceFieldRef` from the
//! container's resources (rounded up by its divisor); secrets and config maps are not resolved
//! (a test pod's sidecar uses none).
#![allow(dead_code)] // each test crate uses its own subset

use serde_json::Value;

/// What the API server and the kubelet know of a running pod.
#[derive(Clone, Debug)]
pub struct PodFacts {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub ip: String,
    pub host_ip: String,
    pub node: String,
}

impl PodFacts {
    /// Facts for `pod` as the API server would name it (from `generateName` when it has no name).
    pub fn of(pod: &Value, ip: &str) -> PodFacts {
        let meta = &pod["metadata"];
        let name = meta["name"].as_str().map_or_else(
            || format!("{}x7k2p", meta["generateName"].as_str().unwrap_or("pod-")),
            str::to_owned,
        );
        PodFacts {
            name,
            namespace: meta["namespace"].as_str().unwrap_or("default").to_owned(),
            uid: "6b1d3e0c-1f6e-4a55-9a53-0d3e6c1c2b7a".into(),
            ip: ip.into(),
            host_ip: "192.168.49.2".into(),
            node: "node-1".into(),
        }
    }
}

/// The node's allocatable memory, which `resourceFieldRef: limits.memory` gives a container
/// without a limit.
const NODE_MEMORY: u64 = 8 << 30;

/// The container's environment as its process sees it, in order.
pub fn resolve_env(
    pod: &Value,
    container: &Value,
    facts: &PodFacts,
) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = Vec::new();
    for entry in container["env"].as_array().into_iter().flatten() {
        let name = entry["name"]
            .as_str()
            .ok_or("an env entry without a name")?;
        let value = if let Some(v) = entry["value"].as_str() {
            expand(v, &env)
        } else if let Some(field) = entry["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            field_value(pod, field, facts)?
        } else if entry["valueFrom"]["resourceFieldRef"].is_object() {
            resource_value(pod, container, &entry["valueFrom"]["resourceFieldRef"])?
        } else if entry["valueFrom"].is_null() {
            String::new()
        } else {
            return Err(format!(
                "env {name}: a valueFrom this resolver does not know"
            ));
        };
        env.retain(|(k, _)| k != name);
        env.push((name.to_owned(), value));
    }
    Ok(env)
}

/// Kubernetes' `$(VAR)` expansion: a variable defined earlier is replaced, `$$` is a `$`, and a
/// reference to an unknown variable is left as it is.
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn field_value(pod: &Value, path: &str, facts: &PodFacts) -> Result<String, String> {
    let meta = &pod["metadata"];
    let keyed = |prefix: &str, map: &Value| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map[key].as_str().unwrap_or_default().to_owned())
    };
    Ok(match path {
        "metadata.name" => facts.name.clone(),
        "metadata.namespace" => facts.namespace.clone(),
        "metadata.uid" => facts.uid.clone(),
        "spec.nodeName" => facts.node.clone(),
        "spec.serviceAccountName" => pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .to_owned(),
        "status.hostIP" => facts.host_ip.clone(),
        "status.podIP" | "status.podIPs" => facts.ip.clone(),
        _ => keyed("metadata.labels['", &meta["labels"])
            .or_else(|| keyed("metadata.annotations['", &meta["annotations"]))
            .ok_or_else(|| format!("fieldRef {path} is not one the kubelet resolves"))?,
    })
}

fn resource_value(pod: &Value, this: &Value, field: &Value) -> Result<String, String> {
    let container = match field["containerName"].as_str() {
        None | Some("") => this,
        Some(name) => pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(
                pod["spec"]["initContainers"]
                    .as_array()
                    .into_iter()
                    .flatten(),
            )
            .find(|c| c["name"] == name)
            .ok_or_else(|| format!("resourceFieldRef names container {name:?}, not in the pod"))?,
    };
    let resource = field["resource"].as_str().unwrap_or_default();
    let (section, kind) = resource
        .split_once('.')
        .ok_or_else(|| format!("resource {resource:?}"))?;
    let divisor = field["divisor"]
        .as_str()
        .map(quantity)
        .transpose()?
        .unwrap_or(1.0);
    let amount = match container["resources"][section][kind].as_str() {
        Some(q) => quantity(q)?,
        None if kind == "memory" => NODE_MEMORY as f64,
        None => 2.0,
    };
    Ok(format!("{}", (amount / divisor).ceil() as u64))
}

/// A Kubernetes quantity: `128974848`, `129e6`, `129M`, `123Mi`, `0.5Gi`, `500m`.
pub fn quantity(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("quantity {text:?}"))?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        e if e.starts_with(['e', 'E']) => {
            10f64.powi(e[1..].parse().map_err(|_| format!("quantity {text:?}"))?)
        }
        _ => return Err(format!("quantity {text:?}")),
    };
    Ok(number * factor)
}
