//! What the injector was asked through (`Scope`) and what it decided (`Outcome`, `Skip`), with
//! the labels the webhook's metrics give them.

use super::Refusal;

/// Which webhook path the review came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `/mutate`: only pods annotated `sidewatch.io/inject: "true"`.
    Annotated,
    /// `/mutate-namespace`: every pod of an opted-in namespace unless annotated `"false"`.
    Namespace,
}

impl Scope {
    pub const ALL: [Scope; 2] = [Scope::Annotated, Scope::Namespace];

    /// The `reason` label of `sidewatch_webhook_admissions_total{outcome="injected"}`.
    pub fn label(self) -> &'static str {
        match self {
            Scope::Annotated => "annotated",
            Scope::Namespace => "namespace",
        }
    }
}

/// What `mutate` decided. Every case may carry warnings for the person who created the pod.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Not opted in, or injected already: the pod is left as it is.
    Untouched(Skip),
    /// Opted in but not injectable (a bad annotation, nothing to watch): admitted as it is, with
    /// this reason as a warning; a missing sidecar must not stop a deployment.
    Refused(Refusal),
    Patch {
        patch: json_patch::Patch,
        warnings: Vec<String>,
    },
}

/// Why a pod is left as it is, for the webhook's metrics and log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Through `/mutate`, without `sidewatch.io/inject: "true"`.
    NotOptedIn,
    /// Through `/mutate-namespace`, annotated `sidewatch.io/inject: "false"`.
    OptedOut,
    /// Injected already (a second pass, or a pod made from an injected one).
    Injected,
}

impl Skip {
    pub const ALL: [Skip; 3] = [Skip::NotOptedIn, Skip::OptedOut, Skip::Injected];

    /// The `reason` label of `sidewatch_webhook_admissions_total{outcome="skipped"}`.
    pub fn label(self) -> &'static str {
        match self {
            Skip::NotOptedIn => "not_opted_in",
            Skip::OptedOut => "opted_out",
            Skip::Injected => "already_injected",
        }
    }
}
