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
    let pod_shares = spec["shareProcessNamespace"] == true;
    let pod_refuses = spec["shareProcessNamespace"] == false;
    let sharing = sharing(settings, pod_shares, pod_refuses);
    let pattern = process_match(options, &sharing, pod_refuses, warnings)?;
    let (asked, asked_by) = asked(options, settings);
    let mut choice = Choice {
        options,
        settings,
        pod_refuses,
        asked,
        asked_by,
        notes,
        warnings,
    };
    let (chosen, run_as) = choice.source(&sharing, spec, app);
    if !pod_shares && (pattern.is_some() || matches!(chosen, Memory::AppRoot | Memory::Proc)) {
        edits.set_new(&["spec"], "shareProcessNamespace", true.into());
    }
    let mount = choice.mount(chosen, run_as, pattern.is_some(), spec, edits);
    Ok(sidecar::MemoryPlan {
        source: chosen,
        pattern,
        mount,
        run_as,
    })
}

/// app-root and proc see the app only through a shared process namespace: the pod's own, or one
/// the injector sets where the install lets it. Else why not.
fn sharing(settings: &Settings, pod_shares: bool, pod_refuses: bool) -> Result<(), String> {
    if pod_refuses {
        Err("the pod sets shareProcessNamespace: false".to_owned())
    } else if pod_shares || settings.share_process_namespace {
        Ok(())
    } else {
        Err(NOT_SHARED.to_owned())
    }
}

/// `sidewatch.io/process-match`, refused where the pod forbids sharing, left out with a warning
/// where the install does.
fn process_match(
    options: &Options,
    sharing: &Result<(), String>,
    pod_refuses: bool,
    warnings: &mut Vec<String>,
) -> Result<Option<String>, String> {
    let Some(pattern) = &options.process_match else {
        return Ok(None);
    };
    if pod_refuses {
        return Err(
            "sidewatch.io/process-match needs a shared process namespace, and the pod sets \
             shareProcessNamespace: false"
                .into(),
        );
    }
    match sharing {
        Ok(()) => Ok(Some(pattern.clone())),
        Err(why) => {
            warnings.push(format!(
                "sidewatch.io/process-match {pattern:?} left out: {why}; set \
                 shareProcessNamespace: true in the pod spec to keep it"
            ));
            Ok(None)
        }
    }
}

/// The pod's annotation, else the install's choice (the chart's `webhook.memorySource`), where
/// `auto` is the node agent when one runs on every node; and who asked, for the notes.
fn asked(options: &Options, settings: &Settings) -> (Memory, &'static str) {
    match options.memory {
        Some(memory) => (memory, "sidewatch.io/memory"),
        None if settings.memory == Memory::Auto && settings.node_agent => {
            (Memory::Node, "the webhook's --node-agent")
        }
        None => (settings.memory, "the webhook's --memory-source"),
    }
}

/// Entering the app's root takes the app's own user and group, and no capability: the sidecar
/// runs as them (never as root: Pod Security "restricted" forbids it, and so does sidewatch).
fn app_root(spec: &Value, app: &Value) -> Result<(i64, i64), String> {
    match app_ids(spec, app) {
        Some((0, _)) => Err("the app runs as root, which the sidecar must not".to_owned()),
        Some(ids) => Ok(ids),
        None => Err(
            "the pod spec does not state the app's runAsUser and runAsGroup, which the sidecar \
             must share to read its cgroup"
                .to_owned(),
        ),
    }
}

/// The choice of a source, with what it tells the pod's annotation (`notes`) and its creator
/// (`warnings`).
struct Choice<'a, 's> {
    options: &'a Options,
    settings: &'a Settings,
    pod_refuses: bool,
    asked: Memory,
    asked_by: &'static str,
    notes: &'s mut Vec<String>,
    warnings: &'s mut Vec<String>,
}

impl Choice<'_, '_> {
    /// The source that can serve what was asked, and the app's user and group for app-root.
    fn source(
        &mut self,
        sharing: &Result<(), String>,
        spec: &Value,
        app: &Value,
    ) -> (Memory, Option<(i64, i64)>) {
        let app_root = sharing.clone().and_then(|()| app_root(spec, app));
        let asked_by = self.asked_by;
        match (self.asked, app_root) {
            (Memory::Auto | Memory::AppRoot, Ok(ids)) => (Memory::AppRoot, Some(ids)),
            (Memory::Auto, Err(why)) => match sharing {
                Ok(()) => {
                    self.notes.push(format!("not the app's cgroup: {why}"));
                    (Memory::Proc, None)
                }
                Err(_) => {
                    self.notes.push(format!("memory signals off: {why}"));
                    self.off(&why)
                }
            },
            (Memory::AppRoot, Err(why)) => match sharing {
                Ok(()) => {
                    self.warnings.push(format!(
                        "sidewatch.io/memory app-root: {why}; memory from the app's processes instead"
                    ));
                    (Memory::Proc, None)
                }
                Err(_) => self.off(&format!("sidewatch.io/memory app-root: {why}")),
            },
            (Memory::Proc, _) => match sharing {
                Ok(()) => (Memory::Proc, None),
                Err(why) => self.off(&format!("{asked_by} is proc, but {why}")),
            },
            (Memory::None, _) if self.options.memory.is_none() => {
                self.off(&format!("{asked_by} is none"))
            }
            (Memory::Node, _) => {
                self.warn_blind_node();
                (Memory::Node, None)
            }
            (other, _) => (other, None),
        }
    }

    /// No memory signals, and the pod's creator told why and what would turn them on.
    fn off(&mut self, why: &str) -> (Memory, Option<(i64, i64)>) {
        self.warnings
            .push(memory_off(why, self.settings, self.pod_refuses));
        (Memory::None, None)
    }

    /// A pod that asks for the node agent in an install that does not say one runs everywhere.
    fn warn_blind_node(&mut self) {
        let (options, settings) = (self.options, self.settings);
        if options.memory.is_some() && !settings.node_agent && settings.memory != Memory::Node {
            self.warnings.push(
                "sidewatch.io/memory: node, but this install does not say that a node agent \
                 runs on every node (the chart's node.enabled): without one the sidecar's \
                 memory is blind"
                    .into(),
            );
        }
    }

    /// What the chosen source needs mounted in the sidecar (a volume added to the pod for it),
    /// and the note that says where memory comes from.
    fn mount(
        &mut self,
        chosen: Memory,
        run_as: Option<(i64, i64)>,
        has_pattern: bool,
        spec: &Value,
        edits: &mut Edits<'_>,
    ) -> Option<Value> {
        let asked_by = self.asked_by;
        match chosen {
            Memory::Cgroup => Some(self.host_cgroup(spec, edits)),
            Memory::Node => {
                self.notes.push(format!(
                    "memory from the node agent at the node's address ({asked_by}), with a \
                     projected token for it"
                ));
                Some(node_token::add(spec, edits, self.warnings))
            }
            Memory::AppRoot => {
                if let Some((uid, gid)) = run_as {
                    self.notes.push(format!(
                        "memory from the app container's own cgroup, through its root; the \
                         sidecar runs as its user {uid} and group {gid}, the process namespace \
                         shared"
                    ));
                }
                None
            }
            Memory::Proc => {
                self.notes.push(if has_pattern {
                    "memory from the app's processes (/proc)".into()
                } else {
                    "memory from the app container's processes (/proc), found by its container \
                     ID"
                    .into()
                });
                None
            }
            Memory::None | Memory::Auto => {
                if self.asked == Memory::None {
                    self.notes.push(format!("memory signals off ({asked_by})"));
                }
                None
            }
        }
    }

    /// The node's cgroup tree by hostPath, read-only, in a volume of a free name.
    fn host_cgroup(&mut self, spec: &Value, edits: &mut Edits<'_>) -> Value {
        let name = free_name(spec["volumes"].as_array(), "sidewatch-cgroup");
        if name != "sidewatch-cgroup" {
            self.warnings.push(format!(
                "volume {name}: sidewatch-cgroup is a volume of the pod already"
            ));
        }
        edits.append(
            &["spec", "volumes"],
            json!({"name": name, "hostPath": {"path": "/sys/fs/cgroup", "type": "Directory"}}),
        );
        self.notes
            .push("memory from the node's cgroup tree (hostPath, read-only)".into());
        json!({"name": name, "mountPath": "/sys/fs/cgroup", "readOnly": true})
    }
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
