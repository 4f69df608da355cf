//! The fixed vocabulary of failure reasons: one label value each, shared by `/readyz`, metrics and logs.

use serde::{Serialize, Serializer};

use crate::metrics::label_values;

label_values! {
    /// Why a signal says "not ready". The string forms are the `reason` label values of DESIGN.md, so
    /// metrics never carry an error's free text as a label.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum Reason {
        /// Nothing listens on the port (TCP RST on connect).
        Refused => "refused",
        /// No complete answer within the probe timeout (connect, TLS or response).
        Timeout => "timeout",
        /// The connection was accepted, then reset or closed before a whole response arrived.
        Reset => "reset",
        /// Bytes came back, but they are not valid HTTP.
        InvalidResponse => "invalid_response",
        Http5xx => "http_5xx",
        UnexpectedStatus => "unexpected_status",
        BodyMismatch => "body_mismatch",
        Tls => "tls",
        Dns => "dns",
        /// The gRPC health service answered NOT_SERVING (or UNKNOWN) for the service asked about.
        NotServing => "not_serving",
        /// The gRPC health service does not know the service asked about (NOT_FOUND).
        UnknownService => "unknown_service",
        /// The working set is above `memory.unready_above` of the limit.
        MemoryHigh => "memory_high",
        /// PSI memory stall above its threshold.
        MemoryPressure => "memory_pressure",
        /// The memory trend reaches the limit within `memory.predict_oom_within`.
        OomPredicted => "oom_predicted",
        /// The OOM killer killed a process of the app's cgroup within `memory.oom_cooldown`.
        OomKilled => "oom_killed",
        /// The app's main process (`process.match`) is gone.
        ProcessExited => "process_exited",
        /// The app port's accept queue is full, or connections to it overflow (`overload.signal`).
        Overloaded => "overloaded",
        /// The kubelet restarted the app container (or it is in CrashLoopBackOff).
        ContainerRestarted => "container_restarted",
        /// The pod has a deletionTimestamp.
        Terminating => "terminating",
        /// A critical signal has not succeeded even once since start-up.
        Starting => "starting",
        Draining => "draining",
    }
}

impl Reason {
    /// The reasons an HTTP probe can fail with, pre-registered at zero so `rate()` works from the
    /// start.
    pub const HTTP: [Reason; 9] = [
        Reason::Refused,
        Reason::Timeout,
        Reason::Reset,
        Reason::InvalidResponse,
        Reason::Http5xx,
        Reason::UnexpectedStatus,
        Reason::BodyMismatch,
        Reason::Tls,
        Reason::Dns,
    ];
    /// A gRPC health probe's: the transport's, and the health service's answers.
    pub const GRPC: [Reason; 9] = [
        Reason::Refused,
        Reason::Timeout,
        Reason::Reset,
        Reason::InvalidResponse,
        Reason::UnexpectedStatus,
        Reason::Tls,
        Reason::Dns,
        Reason::NotServing,
        Reason::UnknownService,
    ];
    /// A TCP connect's.
    pub const TCP: [Reason; 4] = [Reason::Refused, Reason::Timeout, Reason::Reset, Reason::Dns];
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_form_matches_label_form() {
        for r in Reason::ALL {
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::Value::String(r.as_str().into())
            );
        }
    }
}
