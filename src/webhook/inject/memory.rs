//! The memory step: which source the sidecar reads, and what the pod needs for it.

use serde_json::{json, Value};

use super::annotations::{Memory, Options};
use super::patch::Edits;
use super::sidecar;

/// The memory source the sidecar gets, with what it needs added to the pod, and why.
pub(super) fn memory(
    options: &Options,
    install_default: Memory,
    spec: &Value,
    app: &Value,
    edits: &mut Edits<'_>,
    notes: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<sidecar::MemoryPlan, String> {
    let pattern = options.process_match.clone();
    let refused_sharing = spec["shareProcessNamespace"] == false;
    if pattern.is_some() && refused_sharing {
        return Err(
            "sidewatch.io/process-match needs a shared process namespace, and the pod sets \
             shareProcessNamespace: false"
                .into(),
        );
    }
    // The pod's annotation, else the install's choice (the chart's `webhook.memorySource`).
    let (asked, asked_by) = match options.memory {
        Some(memory) => (memory, "sidewatch.io/memory"),
        None => (install_default, "the webhook's --memory-source"),
    };
    // Entering the app's root takes the app's own user and group, and no capability: the sidecar
    // runs as them (never as root: Pod Security "restricted" forbids it, and so does sidewatch).
    let ids = app_ids(spec, app);
    let app_root = match (ids, refused_sharing) {
        (_, true) => Err("the pod sets shareProcessNamespace: false".to_owned()),
        (Some((0, _)), _) => Err("the app runs as root, which the sidecar must not".to_owned()),
        (Some(ids), _) => Ok(ids),
        (None, _) => Err(
            "the pod spec does not state the app's runAsUser and runAsGroup, which the sidecar \
             must share to read its cgroup"
                .to_owned(),
        ),
    };
    let (chosen, run_as) = match (asked, app_root) {
        (Memory::Auto | Memory::AppRoot, Ok(ids)) => (Memory::AppRoot, Some(ids)),
        (Memory::Auto, Err(why)) if pattern.is_some() => {
            notes.push(format!("not the app's cgroup: {why}"));
            (Memory::Proc, None)
        }
        (Memory::Auto, Err(why)) => {
            notes.push(format!("memory signals off: {why}"));
            warnings.push(memory_off(&why));
            (Memory::None, None)
        }
        (Memory::Proc, _) if pattern.is_none() => {
            // Only an install-wide proc gets here: the annotation alone is refused at parsing.
            warnings.push(memory_off(&format!(
                "{asked_by} is proc, which needs sidewatch.io/process-match"
            )));
            (Memory::None, None)
        }
        (Memory::None, _) if options.memory.is_none() => {
            warnings.push(memory_off(&format!("{asked_by} is none")));
            (Memory::None, None)
        }
        (Memory::AppRoot, Err(why)) => {
            let fallback = if pattern.is_some() {
                Memory::Proc
            } else {
                Memory::None
            };
            warnings.push(if fallback == Memory::Proc {
                format!(
                    "sidewatch.io/memory app-root: {why}; memory from the app's processes instead"
                )
            } else {
                memory_off(&format!("sidewatch.io/memory app-root: {why}"))
            });
            (fallback, None)
        }
        (other, _) => (other, None),
    };
    if pattern.is_some() || chosen == Memory::AppRoot {
        edits.set_new(&["spec"], "shareProcessNamespace", true.into());
    }
    let volume = match chosen {
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
            Some(name)
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
            notes.push("memory from the app's processes (/proc)".into());
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
        volume,
        run_as,
    })
}

/// The admission warning of a pod that gets no memory signals: why, what it loses, and what
/// would turn them on for it.
fn memory_off(why: &str) -> String {
    format!(
        "memory signals off for this pod ({why}): no OOM prediction, no OOM kill counted by \
         sidewatch. To turn them on, set the app container's securityContext runAsUser and \
         runAsGroup (not 0), or annotate sidewatch.io/process-match with a part of the app's \
         command line (memory from its processes), or sidewatch.io/memory: cgroup (the node's \
         cgroup tree by hostPath, Pod Security privileged); install-wide, the chart's \
         webhook.memorySource"
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

/// `base`, or `base-2`, `base-3`… whichever no entry of `list` is named.
pub(super) fn free_name(list: Option<&Vec<Value>>, base: &str) -> String {
    let taken = |name: &str| list.into_iter().flatten().any(|v| v["name"] == name);
    std::iter::once(base.to_owned())
        .chain((2..).map(|n| format!("{base}-{n}")))
        .find(|name| !taken(name))
        .unwrap_or_else(|| base.to_owned())
}
