//! The memory step: which source the sidecar reads, and what the pod needs for it. The choices
//! of the install (`Settings`: a node agent on every node, whether the injector may share the
//! process namespace) decide what `auto` becomes and what a pod without memory signals is told.

use serde_json::{json, Value};

use super::annotations::{Memory, Options};
use super::patch::{free_name, Edits};
use super::{node_token, sidecar, Settings};

/// The memory source the sidecar gets, with what it needs added to the pod, and why.
pub(super) fn memory(
    options: &Options,
    settings: &Settings,
    spec: &Value,
    app: &Value,
    edits: &mut Edits<'_>,
    notes: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<sidecar::MemoryPlan, String> {
    let mut pattern = options.process_match.clone();
    let pod_shares = spec["shareProcessNamespace"] == true;
    let pod_refuses = spec["shareProcessNamespace"] == false;
    if pattern.is_some() && pod_refuses {
        return Err(
            "sidewatch.io/process-match needs a shared process namespace, and the pod sets \
             shareProcessNamespace: false"
                .into(),
        );
    }
    // app-root and proc see the app only through a shared process namespace: the pod's own, or
    // one the injector sets where the install lets it.
    let sharing = if pod_refuses {
        Err("the pod sets shareProcessNamespace: false".to_owned())
    } else if pod_shares || settings.share_process_namespace {
        Ok(())
    } else {
        Err(NOT_SHARED.to_owned())
    };
    if let (Some(p), Err(why)) = (&pattern, &sharing) {
        warnings.push(format!(
            "sidewatch.io/process-match {p:?} left out: {why}; set shareProcessNamespace: true in \
             the pod spec to keep it"
        ));
        pattern = None;
    }
    // The pod's annotation, else the install's choice (the chart's `webhook.memorySource`), where
    // `auto` is the node agent when one runs on every node.
    let (asked, asked_by) = match options.memory {
        Some(memory) => (memory, "sidewatch.io/memory"),
        None if settings.memory == Memory::Auto && settings.node_agent => {
            (Memory::Node, "the webhook's --node-agent")
        }
        None => (settings.memory, "the webhook's --memory-source"),
    };
    // Entering the app's root takes the app's own user and group, and no capability: the sidecar
    // runs as them (never as root: Pod Security "restricted" forbids it, and so does sidewatch).
    let app_root = sharing.clone().and_then(|()| match app_ids(spec, app) {
        Some((0, _)) => Err("the app runs as root, which the sidecar must not".to_owned()),
        Some(ids) => Ok(ids),
        None => Err(
            "the pod spec does not state the app's runAsUser and runAsGroup, which the sidecar \
             must share to read its cgroup"
                .to_owned(),
        ),
    });
    let off = |why: &str, warnings: &mut Vec<String>| {
        warnings.push(memory_off(why, settings, pod_refuses));
        (Memory::None, None)
    };
    let (chosen, run_as) = match (asked, app_root) {
        (Memory::Auto | Memory::AppRoot, Ok(ids)) => (Memory::AppRoot, Some(ids)),
        (Memory::Auto, Err(why)) => match &sharing {
            Ok(()) => {
                notes.push(format!("not the app's cgroup: {why}"));
                (Memory::Proc, None)
            }
            Err(_) => {
                notes.push(format!("memory signals off: {why}"));
                off(&why, warnings)
            }
        },
        (Memory::AppRoot, Err(why)) => match &sharing {
            Ok(()) => {
                warnings.push(format!(
                    "sidewatch.io/memory app-root: {why}; memory from the app's processes instead"
                ));
                (Memory::Proc, None)
            }
            Err(_) => off(&format!("sidewatch.io/memory app-root: {why}"), warnings),
        },
        (Memory::Proc, _) => match &sharing {
            Ok(()) => (Memory::Proc, None),
            Err(why) => off(&format!("{asked_by} is proc, but {why}"), warnings),
        },
        (Memory::None, _) if options.memory.is_none() => {
            off(&format!("{asked_by} is none"), warnings)
        }
        (Memory::Node, _) => {
            if options.memory.is_some() && !settings.node_agent && settings.memory != Memory::Node {
                warnings.push(
                    "sidewatch.io/memory: node, but this install does not say that a node agent \
                     runs on every node (the chart's node.enabled): without one the sidecar's \
                     memory is blind"
                        .into(),
                );
            }
            (Memory::Node, None)
        }
        (other, _) => (other, None),
    };
    if !pod_shares && (pattern.is_some() || matches!(chosen, Memory::AppRoot | Memory::Proc)) {
        edits.set_new(&["spec"], "shareProcessNamespace", true.into());
    }
    let mount = match chosen {
        Memory::Cgroup => {
            let name = free_name(spec["volumes"].as_array(), "sidewatch-cgroup");
            if name != "sidewatch-cgroup" {
                warnings.push(format!(
                    "volume {name}: sidewatch-cgroup is a volume of the pod already"
                ));
            }
            edits.append(
                &["spec", "volumes"],
                json!({"name": name, "hostPath": {"path": "/sys/fs/cgroup", "type": "Directory"}}),
            );
            notes.push("memory from the node's cgroup tree (hostPath, read-only)".into());
            Some(json!({"name": name, "mountPath": "/sys/fs/cgroup", "readOnly": true}))
        }
        Memory::Node => {
            notes.push(format!(
                "memory from the node agent at the node's address ({asked_by}), with a projected \
                 token for it"
            ));
            Some(node_token::add(spec, edits, warnings))
        }
        Memory::AppRoot => {
            if let Some((uid, gid)) = run_as {
                notes.push(format!(
                    "memory from the app container's own cgroup, through its root; the sidecar \
                     runs as its user {uid} and group {gid}, the process namespace shared"
                ));
            }
            None
        }
        Memory::Proc => {
            notes.push(match &pattern {
                Some(_) => "memory from the app's processes (/proc)".into(),
                None => "memory from the app container's processes (/proc), found by its \
                         container ID"
                    .into(),
            });
            None
        }
        Memory::None | Memory::Auto => {
            if asked == Memory::None {
                notes.push(format!("memory signals off ({asked_by})"));
            }
            None
        }
    };
    Ok(sidecar::MemoryPlan {
        source: chosen,
        pattern,
        mount,
        run_as,
    })
}

const NOT_SHARED: &str = "this install does not let the injector share the pod's process \
                          namespace (the chart's webhook.shareProcessNamespace: false)";

/// The admission warning of a pod that gets no memory signals: why, what it loses, and what
/// would turn them on for it with this install.
fn memory_off(why: &str, settings: &Settings, pod_refuses: bool) -> String {
    let mut ways = Vec::new();
    if settings.node_agent {
        ways.push("annotate sidewatch.io/memory: node (this install runs the node agent)".into());
    }
    let shared = "memory then comes from the app container's processes, or from its own cgroup \
                  when the app's runAsUser and runAsGroup are set (not 0)";
    ways.push(if pod_refuses && settings.share_process_namespace {
        format!("drop shareProcessNamespace: false from the pod spec: {shared}")
    } else if settings.share_process_namespace {
        "annotate sidewatch.io/memory: proc (the app container's processes) or app-root (its own \
         cgroup, with the app's runAsUser and runAsGroup set, not 0): the injector shares the \
         process namespace"
            .into()
    } else {
        format!(
            "set shareProcessNamespace: true in the pod spec{} (this install does not set it \
             itself: the chart's webhook.shareProcessNamespace is false): {shared}",
            if pod_refuses { " instead of false" } else { "" }
        )
    });
    ways.push(
        "annotate sidewatch.io/memory: cgroup (the node's cgroup tree by hostPath, Pod Security \
         privileged)"
            .into(),
    );
    let mut install = Vec::new();
    if !settings.node_agent {
        install.push(
            "node.enabled (a node agent on every node: memory signals for every pod at Pod \
             Security restricted)",
        );
    }
    if !settings.share_process_namespace {
        install.push("webhook.shareProcessNamespace: true");
    }
    install.push("webhook.memorySource");
    format!(
        "memory signals off for this pod ({why}): no OOM prediction, no OOM kill counted by \
         sidewatch. To turn them on: {}; install-wide, the chart's {}",
        ways.join("; or "),
        install.join(", or ")
    )
}

/// The user and group the app container runs as, when the pod spec states both (the
/// container's securityContext, else the pod's): an image's own USER is not visible here.
fn app_ids(spec: &Value, app: &Value) -> Option<(i64, i64)> {
    let id = |key: &str| {
        app["securityContext"][key]
            .as_i64()
            .or_else(|| spec["securityContext"][key].as_i64())
    };
    Some((id("runAsUser")?, id("runAsGroup")?))
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
