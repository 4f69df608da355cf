//! `sidewatch.io/token: sidecar`: the API credential for the sidecar alone. The pod's own token
//! is turned off (`automountServiceAccountToken: false`), and a projected service-account token,
//! with the cluster's CA and the namespace, is mounted in the sidecar only, where the kubelet
//! mounts the usual one: an app that never talks to the API server then holds no credential that
//! could patch pods or post Events, and the sidecar still gets the readiness gate.

use serde_json::{json, Value};

use super::patch::{free_name, Edits};

/// Where Kubernetes clients (kube's in-cluster config among them) read the token, CA and namespace.
const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// As the kubelet's own projection: an hour, plus the seven seconds that mark it as such (the
/// API server may extend it and the kubelet renews it at 80 % of its life; kube re-reads it).
const EXPIRATION_SECONDS: i64 = 3607;

/// Adds the volume and turns the pod's token off; the sidecar's mount, or why it cannot be.
pub fn for_sidecar_only(spec: &Value, edits: &mut Edits<'_>) -> Result<Value, String> {
    if spec["automountServiceAccountToken"] == true {
        return Err(
            "sidewatch.io/token: sidecar, but the pod sets automountServiceAccountToken: true \
             (its app asks for the token): drop one of the two"
                .into(),
        );
    }
    edits.set_new(&["spec"], "automountServiceAccountToken", false.into());
    let name = free_name(spec["volumes"].as_array(), "sidewatch-token");
    edits.append(
        &["spec", "volumes"],
        json!({"name": name, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": EXPIRATION_SECONDS}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}}),
    );
    Ok(json!({"name": name, "mountPath": MOUNT, "readOnly": true}))
}
