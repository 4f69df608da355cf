//! What of a pod the injector reads, taken from the review's raw JSON without building a tree of
//! the whole pod: env lists, volume sources, securityContexts and the rest are skipped as they
//! are parsed. A 50-container pod's admission spent most of its time allocating, and then freeing,
//! a `Value` of every field. The view is only read; the patch's paths are the pod's own (every
//! list keeps its entries, in order), so nothing of the pod is ever written back from it.
//!
//! Every member the injector reads or checks the presence of must be here: one left out would be
//! taken for absent (and a list replaced instead of extended). `tests/injection.rs` checks, on
//! every pod of the corpus, that the patch keeps every field.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The pod as the injector sees it, as a `Value` of the members it reads.
pub fn of(raw: &str) -> Result<Value, serde_json::Error> {
    let pod: Pod = serde_json::from_str(raw)?;
    serde_json::to_value(pod)
}

#[derive(Deserialize, Serialize)]
struct Pod {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
}

#[derive(Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    /// The name or generateName: only for the webhook's audit line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generate_name: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    labels: Option<Value>,
}

#[derive(Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    containers: Option<Vec<Container>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    init_containers: Option<Vec<Container>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    volumes: Option<Vec<Named>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    readiness_gates: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host_network: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restart_policy: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    share_process_namespace: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    automount_service_account_token: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    termination_grace_period_seconds: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    security_context: Option<Ids>,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ports: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    readiness_probe: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    liveness_probe: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    startup_probe: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lifecycle: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    volume_mounts: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    security_context: Option<Ids>,
}

/// The user and group a container runs as, from its or the pod's securityContext.
#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Ids {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_as_user: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_as_group: Option<Value>,
}

#[derive(Deserialize, Serialize)]
struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limits: Option<Value>,
}

#[derive(Deserialize, Serialize)]
struct Named {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<Value>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_view_keeps_what_the_injector_reads_and_nothing_else() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "labels": {"x": "y"}, "annotations": {"sidewatch.io/inject": "true"}},
            "spec": {"containers": [{"name": "web", "image": "i", "env": [{"name": "A", "value": "1"}],
                "ports": [{"containerPort": 80}], "readinessProbe": {"httpGet": {"port": 80}},
                "resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": "1"}},
                "lifecycle": {}, "securityContext": {"runAsUser": 1, "privileged": false}}],
                "volumes": [{"name": "v", "emptyDir": {}}], "readinessGates": [], "nodeName": "n",
                "shareProcessNamespace": false}});
        let view = of(&pod.to_string()).unwrap();
        assert_eq!(
            view,
            json!({"metadata": {"name": "a", "annotations": {"sidewatch.io/inject": "true"}, "labels": {"x": "y"}},
                "spec": {"containers": [{"name": "web", "ports": [{"containerPort": 80}],
                    "readinessProbe": {"httpGet": {"port": 80}}, "lifecycle": {},
                    "resources": {"limits": {"memory": "1Gi"}}, "securityContext": {"runAsUser": 1}}],
                    "volumes": [{"name": "v"}], "readinessGates": [], "shareProcessNamespace": false}})
        );
    }
}
