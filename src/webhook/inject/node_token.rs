//! The node agent's credential: a projected service-account token whose audience is the agent's
//! alone (`memory::wire::AUDIENCE`), mounted read-only in the sidecar. A token for that audience
//! is useless to the API server, so the agent never holds the pod's API credential, and the
//! sidecar hands it only to the agent of its own node.

use serde_json::{json, Value};

use super::patch::{free_name, Edits};
use crate::memory::wire::AUDIENCE;

/// Where the sidecar reads it (`memory.node.token_file` defaults to `{MOUNT}/token`).
pub const MOUNT: &str = "/var/run/secrets/sidewatch.io/node";
/// Ten minutes, the shortest the API server allows: the kubelet renews it at 80 % of its life
/// and the sidecar reads the file anew at each connection.
const EXPIRATION_SECONDS: i64 = 600;
const VOLUME: &str = "sidewatch-node-token";

/// Adds the projected volume (under a free name) and returns the sidecar's mount of it.
pub fn add(spec: &Value, edits: &mut Edits<'_>, warnings: &mut Vec<String>) -> Value {
    let name = free_name(spec["volumes"].as_array(), VOLUME);
    if name != VOLUME {
        warnings.push(format!(
            "volume {name}: {VOLUME} is a volume of the pod already"
        ));
    }
    edits.append(
        &["spec", "volumes"],
        json!({"name": name, "projected": {"sources": [{"serviceAccountToken": {
            "audience": AUDIENCE, "expirationSeconds": EXPIRATION_SECONDS, "path": "token"}}]}}),
    );
    json!({"name": name, "mountPath": MOUNT, "readOnly": true})
}
