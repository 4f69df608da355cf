//! The injected sidecar container, as JSON: its environment (the whole of its configuration, read
//! by `sidewatch run` through the `SIDEWATCH_*` overlay), probes, resources and securityContext.

use serde_json::{json, Value};

use super::annotations::Memory;
use super::Settings;

pub const CONTAINER: &str = "sidewatch";
/// The sidecar's admin port unless the pod uses it already.
pub const ADMIN_PORT: u16 = 9102;
/// The agent-check port when `sidewatch.io/agent-port` is `"true"` (the agreed default of
/// `agent.listen`).
pub const AGENT_PORT: u16 = 9466;
/// The name of the agent-check containerPort, for a Service's `targetPort` (15 characters at
/// most, as an IANA service name).
pub const AGENT_PORT_NAME: &str = "sw-agent";
/// The readiness-gate condition, as `kubernetes.readiness_gate` defaults it.
pub const GATE: &str = "sidewatch.io/healthy";
/// The variable that holds the per-pod drain token (`drain.token_env` names it).
const TOKEN_ENV: &str = "SIDEWATCH_INJECTED_DRAIN_TOKEN";

pub struct MemoryPlan {
    pub source: Memory,
    pub pattern: Option<String>,
    /// The sidecar's mount of what the source reads: the node's cgroup tree (`Memory::Cgroup`),
    /// the node agent's token (`Memory::Node`).
    pub mount: Option<Value>,
    /// The app's user and group, for `Memory::AppRoot`: the sidecar runs as them.
    pub run_as: Option<(i64, i64)>,
}

/// Everything the sidecar is given.
pub struct Sidecar<'a> {
    pub settings: &'a Settings,
    pub native: bool,
    pub app: &'a str,
    /// `SIDEWATCH_TARGET` or `SIDEWATCH_PROBES`, and its value.
    pub target: (&'static str, String),
    pub drain_port: Option<u16>,
    pub admin_port: u16,
    /// False when a container of the pod has a port named `sidewatch` already.
    pub admin_port_named: bool,
    /// The HAProxy agent-check port, and whether it may take the name `sw-agent`.
    pub agent_port: Option<(u16, bool)>,
    pub grace: i64,
    pub token: &'a str,
    /// The pod mounts a service-account token: the Kubernetes watch, gate and Events can work.
    pub kubernetes: bool,
    pub memory_unready_above: Option<&'a str>,
    pub drain_readiness: Option<&'a str>,
    pub overload_signal: bool,
    pub memory: MemoryPlan,
    /// The app container sets `resources.limits.memory`.
    pub app_memory_limit: bool,
}

impl Sidecar<'_> {
    pub fn container(&self) -> Value {
        let port = self.admin_port;
        let mut ports = vec![json!({"containerPort": port, "protocol": "TCP"})];
        if self.admin_port_named {
            ports[0]["name"] = CONTAINER.into();
        }
        if let Some((agent, named)) = self.agent_port {
            let mut entry = json!({"containerPort": agent, "protocol": "TCP"});
            if named {
                entry["name"] = AGENT_PORT_NAME.into();
            }
            ports.push(entry);
        }
        let mut container = json!({
            "name": CONTAINER,
            "image": self.settings.image,
            "args": ["run"],
            "env": self.env(),
            "ports": ports,
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": port},
                "periodSeconds": 1, "failureThreshold": 1},
            "livenessProbe": {"httpGet": {"path": "/livez", "port": port},
                "periodSeconds": 10, "failureThreshold": 3},
            "resources": {"requests": {"cpu": "5m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": self.settings.uid,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        });
        if let Some((uid, gid)) = self.memory.run_as {
            container["securityContext"]["runAsUser"] = uid.into();
            container["securityContext"]["runAsGroup"] = gid.into();
        }
        if let Some(mount) = &self.memory.mount {
            container["volumeMounts"] = json!([mount]);
        }
        if self.native {
            container["restartPolicy"] = "Always".into();
        }
        container
    }

    /// The sidecar's whole configuration: what every sidecar gets, then what the pod's
    /// annotations and the memory source add.
    fn env(&self) -> Vec<Value> {
        // Leave the app 5 s of its own shutdown inside the grace period, and never more than 25 s.
        let max = self.grace.saturating_sub(5).clamp(1, 25);
        let delay = max.min(5);
        let mut env = vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            // The address the kubelet probes; `${POD_IP}` in the target is replaced by it.
            field_env("POD_IP", "status.podIP"),
            value_env("CONTAINER_NAME", CONTAINER),
            value_env(self.target.0, &self.target.1),
            // Both families: an IPv6-only pod is probed on its IPv6 address.
            value_env("SIDEWATCH_LISTEN", &format!("[::]:{}", self.admin_port)),
            value_env("SIDEWATCH_KUBERNETES_APP_CONTAINER", self.app),
            value_env("SIDEWATCH_DRAIN_DELAY", &format!("{delay}s")),
            value_env("SIDEWATCH_DRAIN_MAX", &format!("{max}s")),
            // sidewatch lingers after the drain until it is scraped, but exits before SIGKILL.
            value_env(
                "SIDEWATCH_DRAIN_GRACE_PERIOD",
                &format!("{}s", self.grace.max(max)),
            ),
            value_env("SIDEWATCH_DRAIN_TOKEN_ENV", TOKEN_ENV),
            value_env(TOKEN_ENV, self.token),
        ];
        self.optional_env(&mut env);
        self.memory_env(&mut env);
        env
    }

    fn optional_env(&self, env: &mut Vec<Value>) {
        if let Some(port) = self.drain_port {
            env.push(value_env("SIDEWATCH_DRAIN_PORT", &port.to_string()));
        }
        if !self.kubernetes {
            env.push(value_env("SIDEWATCH_KUBERNETES_ENABLED", "false"));
        }
        if let Some(v) = self.memory_unready_above {
            env.push(value_env("SIDEWATCH_MEMORY_UNREADY_ABOVE", v));
        }
        if let Some(v) = self.drain_readiness {
            env.push(value_env("SIDEWATCH_DRAIN_READINESS", v));
        }
        if self.overload_signal {
            env.push(value_env("SIDEWATCH_OVERLOAD_SIGNAL", "true"));
        }
        if let Some((port, _)) = self.agent_port {
            // The load balancer asks from outside the pod, over either family.
            env.push(value_env("SIDEWATCH_AGENT_LISTEN", &format!("[::]:{port}")));
        }
    }

    fn memory_env(&self, env: &mut Vec<Value>) {
        let source = match self.memory.source {
            Memory::AppRoot => "app-root",
            Memory::Cgroup => "cgroup",
            Memory::Proc => "proc",
            Memory::Node => "node",
            Memory::None | Memory::Auto => "none",
        };
        env.push(value_env("SIDEWATCH_MEMORY_SOURCE", source));
        if self.memory.source == Memory::Node {
            // `memory.node.agent: auto` is the agent on this address, the pod's own node.
            env.push(field_env("HOST_IP", "status.hostIP"));
        }
        if let Some(pattern) = &self.memory.pattern {
            env.push(value_env("SIDEWATCH_PROCESS_MATCH", pattern));
        }
        if self.memory.source == Memory::Proc && self.app_memory_limit {
            // The app's limit through the downward API (bytes), for the proc source (the others
            // read the cgroup's); only when it has one, since without a limit the value would be
            // the node's allocatable memory.
            env.push(
                json!({"name": "SIDEWATCH_MEMORY_LIMIT", "valueFrom": {"resourceFieldRef":
                {"containerName": self.app, "resource": "limits.memory"}}}),
            );
        }
    }
}

fn value_env(name: &str, value: &str) -> Value {
    json!({"name": name, "value": value})
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}
