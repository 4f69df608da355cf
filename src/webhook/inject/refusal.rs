//! Why an opted-in pod is admitted without the sidecar: a kind, for callers and tests to tell
//! refusals apart, and the sentence the pod's creator reads as a warning.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The pod has no containers, or a container of sidewatch's name already.
    Shape,
    /// A `sidewatch.io/` annotation is unknown or has a bad value.
    Annotation,
    /// The sidecar would break the pod (a Job that never completes, a port on the node).
    DeadEnd,
    /// `sidewatch.io/app-container` names a container the pod does not have.
    AppContainer,
    /// Nothing the sidecar can probe: no usable readiness probe or port.
    Target,
    /// No port for the sidecar's own admin server.
    AdminPort,
    /// `sidewatch.io/agent-port` names a port the pod uses already.
    AgentPort,
    /// A memory or process setting the pod cannot meet.
    Memory,
    /// The sidecar would refuse the settings it was given: a combination no check above caught.
    Settings,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Shape,
        Kind::Annotation,
        Kind::DeadEnd,
        Kind::AppContainer,
        Kind::Target,
        Kind::AdminPort,
        Kind::AgentPort,
        Kind::Memory,
        Kind::Settings,
    ];

    /// The `reason` label of `sidewatch_webhook_admissions_total{outcome="refused"}`.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Shape => "shape",
            Kind::Annotation => "annotation",
            Kind::DeadEnd => "dead_end",
            Kind::AppContainer => "app_container",
            Kind::Target => "target",
            Kind::AdminPort => "admin_port",
            Kind::AgentPort => "agent_port",
            Kind::Memory => "memory",
            Kind::Settings => "settings",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub kind: Kind,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: Kind, message: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            message: message.into(),
        }
    }

    /// For `map_err` on a step that says why in a sentence.
    pub fn of(kind: Kind) -> impl FnOnce(String) -> Refusal {
        move |message| Refusal { kind, message }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
