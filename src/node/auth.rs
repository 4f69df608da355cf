//! Who is asking, and what they may see: the caller's bearer token checked by a TokenReview for
//! the agent's audience, the pod it is bound to, and that pod read back from the API server to
//! be sure it is the same pod (its uid) and runs on this node.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::PostParams;
use kube::{Api, Client};

use super::metrics::Outcome;
use crate::memory::wire::AUDIENCE;

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// Why a request is refused; each is one HTTP status and one `outcome` label.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("cannot check now: {0}")]
    Unavailable(String),
}

impl Refusal {
    pub fn outcome(&self) -> Outcome {
        match self {
            Refusal::Unauthenticated(_) => Outcome::Unauthenticated,
            Refusal::Forbidden(_) => Outcome::Forbidden,
            Refusal::NotFound(_) => Outcome::NotFound,
            Refusal::Unavailable(_) => Outcome::Unavailable,
        }
    }
}

/// The pod a valid token is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
    pub pod: String,
    pub uid: String,
}

/// What the stream reads: the pod's uid and, unless the pod-level cgroup was asked, the app
/// container's runtime ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub uid: String,
    pub container_id: Option<String>,
}

/// Asks the API server whether `token` is valid for the agent's audience, and whose it is.
pub async fn review(client: &Client, token: &str) -> Result<Caller, Refusal> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![AUDIENCE.to_owned()]),
        },
        ..TokenReview::default()
    };
    let api: Api<TokenReview> = Api::all(client.clone());
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| unavailable("the TokenReview", e))?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        let why = status.error.unwrap_or_else(|| "not authenticated".into());
        return Err(Refusal::Unauthenticated(why));
    }
    // An API server that does not know audiences answers without them: it authenticated the
    // token for its own audience, which is not ours.
    if !status
        .audiences
        .unwrap_or_default()
        .iter()
        .any(|a| a == AUDIENCE)
    {
        return Err(Refusal::Unauthenticated(format!(
            "the token is not for the audience {AUDIENCE}"
        )));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((namespace, service_account)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return Err(Refusal::Forbidden(format!(
            "{username:?} is not a service account"
        )));
    };
    let extra = user.extra.unwrap_or_default();
    let one = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
    let (Some(pod), Some(uid)) = (one(POD_NAME), one(POD_UID)) else {
        return Err(Refusal::Forbidden(
            "the token is not bound to a pod (a projected service account token is)".into(),
        ));
    };
    Ok(Caller {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod,
        uid,
    })
}

/// Checks that `caller` asks for its own pod, reads that pod and checks it is the token's (same
/// uid) and on `node`; then finds `container`'s ID, when one is asked.
pub async fn target(
    client: &Client,
    caller: &Caller,
    asked: (&str, &str),
    container: Option<&str>,
    node: &str,
) -> Result<Target, Refusal> {
    let (namespace, pod) = asked;
    if (namespace, pod) != (caller.namespace.as_str(), caller.pod.as_str()) {
        return Err(Refusal::Forbidden(format!(
            "the token is pod {}/{}'s, not {namespace}/{pod}'s",
            caller.namespace, caller.pod
        )));
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let found = match api.get_opt(pod).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return Err(Refusal::Forbidden(format!(
                "pod {namespace}/{pod} does not exist (the token's pod is gone)"
            )))
        }
        Err(e) => return Err(unavailable("the pod", e)),
    };
    check(&found, caller, container, node)
}

/// The checks on the pod as read: pure, so they are tested without a server.
fn check(
    found: &Pod,
    caller: &Caller,
    container: Option<&str>,
    node: &str,
) -> Result<Target, Refusal> {
    let uid = found.metadata.uid.as_deref().unwrap_or_default();
    if uid != caller.uid {
        return Err(Refusal::Forbidden(format!(
            "pod {}/{} is now uid {uid}, the token was made for uid {}",
            caller.namespace, caller.pod, caller.uid
        )));
    }
    let on = found
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default();
    if on != node {
        return Err(Refusal::Forbidden(format!(
            "pod {}/{} runs on node {on:?}, this agent serves {node:?}",
            caller.namespace, caller.pod
        )));
    }
    let Some(name) = container else {
        return Ok(Target {
            uid: uid.to_owned(),
            container_id: None,
        });
    };
    let status = found.status.as_ref();
    let statuses = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default()
        .iter()
        // A native sidecar's status is among the init containers'.
        .chain(
            status
                .and_then(|s| s.init_container_statuses.as_deref())
                .unwrap_or_default(),
        );
    let id = statuses
        .filter(|s: &&ContainerStatus| s.name == name)
        .find_map(|s| s.container_id.as_deref())
        .and_then(runtime_id)
        .ok_or_else(|| {
            Refusal::NotFound(format!(
                "container {name:?} of pod {}/{} has no ID in its status (not started yet, or no such container)",
                caller.namespace, caller.pod
            ))
        })?;
    Ok(Target {
        uid: uid.to_owned(),
        container_id: Some(id.to_owned()),
    })
}

/// `containerd://abc…` → `abc…`; `None` for an empty or odd ID (it becomes a path component).
fn runtime_id(full: &str) -> Option<&str> {
    let id = full.split_once("://").map_or(full, |(_, id)| id);
    let plain = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric());
    plain.then_some(id)
}

fn unavailable(what: &str, e: kube::Error) -> Refusal {
    let detail = match &e {
        kube::Error::Api(status) => format!(
            "{what}: the API server answered {}: {}",
            status.code, status.message
        ),
        other => format!("{what}: {other}"),
    };
    Refusal::Unavailable(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, node: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": uid},
            "spec": {"nodeName": node, "containers": [{"name": "app"}]},
            "status": {
                "containerStatuses": [{"name": "app", "image": "a", "imageID": "", "ready": true,
                    "restartCount": 0, "containerID": "containerd://0123abcd"}],
                "initContainerStatuses": [{"name": "side", "image": "s", "imageID": "", "ready": true,
                    "restartCount": 0, "containerID": "cri-o://feed"},
                    {"name": "odd", "image": "s", "imageID": "", "ready": true,
                    "restartCount": 0, "containerID": "docker://../../etc"}]
            }
        }))
        .unwrap()
    }

    fn caller() -> Caller {
        Caller {
            namespace: "shop".into(),
            service_account: "default".into(),
            pod: "web-1".into(),
            uid: "u-1".into(),
        }
    }

    #[test]
    fn the_container_id_comes_from_either_status_list_without_the_runtime() {
        let p = pod("u-1", "node-a");
        let t = check(&p, &caller(), Some("app"), "node-a").unwrap();
        assert_eq!(t.container_id.as_deref(), Some("0123abcd"));
        let t = check(&p, &caller(), Some("side"), "node-a").unwrap();
        assert_eq!(t.container_id.as_deref(), Some("feed"));
        let t = check(&p, &caller(), None, "node-a").unwrap();
        assert_eq!((t.uid.as_str(), t.container_id), ("u-1", None));
    }

    #[test]
    fn another_uid_another_node_or_an_odd_id_are_refused() {
        let p = pod("u-2", "node-a");
        assert!(matches!(
            check(&p, &caller(), None, "node-a"),
            Err(Refusal::Forbidden(_))
        ));
        let p = pod("u-1", "node-b");
        assert!(matches!(
            check(&p, &caller(), None, "node-a"),
            Err(Refusal::Forbidden(_))
        ));
        let p = pod("u-1", "node-a");
        for name in ["odd", "missing"] {
            assert!(matches!(
                check(&p, &caller(), Some(name), "node-a"),
                Err(Refusal::NotFound(_))
            ));
        }
    }
}
