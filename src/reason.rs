//! The fixed vocabulary of failure reasons: one label value each, shared by `/readyz`, metrics and logs.

use serde::{Serialize, Serializer};

/// Why a signal says "not ready". The string forms are the `reason` label values of DESIGN.md, so
/// metrics never carry an error's free text as a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Nothing listens on the port (TCP RST on connect).
    Refused,
    /// No complete answer within the probe timeout (connect, TLS or response).
    Timeout,
    /// The connection was accepted, then reset or closed before a whole response arrived.
    Reset,
    /// Bytes came back, but they are not valid HTTP.
    InvalidResponse,
    Http5xx,
    UnexpectedStatus,
    BodyMismatch,
    Tls,
    Dns,
    /// The gRPC health service answered NOT_SERVING (or UNKNOWN) for the service asked about.
    NotServing,
    /// The gRPC health service does not know the service asked about (NOT_FOUND).
    UnknownService,
    /// The working set is above `memory.unready_above` of the limit.
    MemoryHigh,
    /// PSI memory stall above its threshold.
    MemoryPressure,
    /// The memory trend reaches the limit within `memory.predict_oom_within`.
    OomPredicted,
    /// The OOM killer killed a process of the app's cgroup within `memory.oom_cooldown`.
    OomKilled,
    /// The app's main process (`process.match`) is gone.
    ProcessExited,
    /// The app port's accept queue is full, or connections to it overflow (`overload.signal`).
    Overloaded,
    /// The kubelet restarted the app container (or it is in CrashLoopBackOff).
    ContainerRestarted,
    /// The pod has a deletionTimestamp.
    Terminating,
    /// A critical signal has not succeeded even once since start-up.
    Starting,
    Draining,
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

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Refused => "refused",
            Reason::Timeout => "timeout",
            Reason::Reset => "reset",
            Reason::InvalidResponse => "invalid_response",
            Reason::Http5xx => "http_5xx",
            Reason::UnexpectedStatus => "unexpected_status",
            Reason::BodyMismatch => "body_mismatch",
            Reason::Tls => "tls",
            Reason::Dns => "dns",
            Reason::NotServing => "not_serving",
            Reason::UnknownService => "unknown_service",
            Reason::MemoryHigh => "memory_high",
            Reason::MemoryPressure => "memory_pressure",
            Reason::OomPredicted => "oom_predicted",
            Reason::OomKilled => "oom_killed",
            Reason::ProcessExited => "process_exited",
            Reason::Overloaded => "overloaded",
            Reason::ContainerRestarted => "container_restarted",
            Reason::Terminating => "terminating",
            Reason::Starting => "starting",
            Reason::Draining => "draining",
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_form_matches_label_form() {
        for r in Reason::HTTP
            .iter()
            .chain(&Reason::GRPC)
            .chain(&[Reason::Starting, Reason::Draining])
        {
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::Value::String(r.as_str().into())
            );
        }
    }
}
