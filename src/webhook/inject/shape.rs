//! The pods the injector leaves as they are, whatever their annotations: no containers, one
//! named as the sidecar already, or a shape the sidecar would break; and which container is the
//! app.

use serde_json::Value;

use super::annotations::Options;
use super::refusal::{Kind as RefusalKind, Refusal};
use super::sidecar::CONTAINER;

/// Every container of the pod, init containers included.
pub(super) fn all(spec: &Value) -> impl Iterator<Item = &Value> {
    let containers = spec["containers"].as_array().into_iter().flatten();
    containers.chain(spec["initContainers"].as_array().into_iter().flatten())
}

/// The pod's (non-init) containers, none named as the sidecar.
pub(super) fn containers(spec: &Value) -> Result<&[Value], Refusal> {
    let containers = spec["containers"]
        .as_array()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Refusal::new(RefusalKind::Shape, "the pod has no containers"))?;
    if all(spec).any(|c| c["name"] == CONTAINER) {
        return Err(Refusal::new(
            RefusalKind::Shape,
            format!(
                "a container named {CONTAINER:?} is there already (added by hand?): left as it is"
            ),
        ));
    }
    Ok(containers)
}

/// The pods sidewatch would break: a plain sidecar that keeps a Job from completing, an admin
/// port on the node.
pub(super) fn refuse_dead_ends(
    spec: &Value,
    options: &Options,
    native: bool,
) -> Result<(), Refusal> {
    if !native
        && spec["restartPolicy"]
            .as_str()
            .is_some_and(|p| p != "Always")
    {
        return Err(Refusal::new(
            RefusalKind::DeadEnd,
            format!(
                "restartPolicy {}: a plain sidecar container would keep the pod from ever \
                 completing; use the native sidecar (Kubernetes 1.29+)",
                spec["restartPolicy"]
            ),
        ));
    }
    if spec["hostNetwork"] == true && !options.host_network {
        return Err(Refusal::new(
            RefusalKind::DeadEnd,
            "hostNetwork pod: the sidecar's admin port would be a port of the node; annotate \
             sidewatch.io/host-network: \"true\" (and sidewatch.io/admin-port) to inject anyway",
        ));
    }
    Ok(())
}

/// The index of the app container: the annotated one, else the first.
pub(super) fn app_container(containers: &[Value], options: &Options) -> Result<usize, Refusal> {
    match &options.app_container {
        Some(name) => containers
            .iter()
            .position(|c| c["name"] == name.as_str())
            .ok_or_else(|| {
                Refusal::new(
                    RefusalKind::AppContainer,
                    format!(
                        "sidewatch.io/app-container names {name:?}, which the pod does not have"
                    ),
                )
            }),
        None => Ok(0),
    }
}
