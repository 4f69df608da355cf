//! The `kubernetes` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{duration, Switch};

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// auto: on when POD_NAME and POD_NAMESPACE are set and a cluster config is found.
    pub enabled: Switch,
    /// The pod condition patched on every readiness change, when the pod spec lists it as a gate.
    pub readiness_gate: String,
    /// Post Kubernetes Events for readiness changes and OOM kills.
    pub events: bool,
    /// Not ready this long after an app container restart.
    #[serde(with = "duration")]
    pub restart_cooldown: Duration,
    /// The app container; default: the first container that is not sidewatch.
    pub app_container: Option<String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            enabled: Switch::Auto,
            readiness_gate: "sidewatch.io/healthy".into(),
            events: true,
            restart_cooldown: Duration::from_secs(15),
            app_container: None,
        }
    }
}
