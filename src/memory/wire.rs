//! The node agent's stream to a sidecar (memory source `node`): one JSON object per line, a
//! sample of the pod's memory as the agent read it from the node's cgroup tree, or why it could
//! not read one. The sidecar judges the samples itself (`Assessor`), as if it had read them.
//!
//! A line is a `Line`: `{"sample":{…}}` or `{"unreadable":{"kind":"gone","message":"…"}}`. Fields
//! a later agent adds are ignored; a line that does not parse is a garbled reading, never a panic.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::read::{Pressure, ReadError};
use super::sample::{Bound, OomCounts, Sample, Scope};

/// The path the sidecar asks, with `namespace`, `pod` and `container` (the app container's name)
/// as query parameters and its projected token as `Authorization: Bearer`.
pub const PATH: &str = "/v1/memory";
/// The audience of the token a sidecar proves itself with: the agent's own, never the API
/// server's, so the agent cannot replay it elsewhere.
pub const AUDIENCE: &str = "sidewatch.io/node";
/// The agent's port by default (the chart's `node.port`).
pub const PORT: u16 = 9465;
pub const CONTENT_TYPE: &str = "application/x-ndjson";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    Sample(WireSample),
    Unreadable(WireError),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireSample {
    pub working_set: u64,
    pub limit: Option<u64>,
    pub bound: Option<WireBound>,
    #[serde(default)]
    pub under_oom: bool,
    pub oom: Option<WireOom>,
    pub high_events: Option<u64>,
    pub pressure: Option<WirePressure>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireBound {
    pub level: usize,
    /// `own`, `parent` or `pod`.
    pub scope: String,
    /// `memory.max`, `memory.high` or `memory.limit_in_bytes`.
    pub file: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireOom {
    pub kills: u64,
    #[serde(default)]
    pub group_kills: u64,
    #[serde(default)]
    pub ooms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct WirePressure {
    pub some_avg10: f64,
    pub full_avg10: f64,
}

/// Why the agent has no sample: `kind` is `ReadError::kind` (`gone` while a container restarts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    pub kind: String,
    pub message: String,
}

impl Line {
    /// The line the agent sends for one look at the cgroup.
    pub fn from_read(read: &Result<Sample, ReadError>) -> Line {
        match read {
            Ok(s) => Line::Sample(WireSample {
                working_set: s.working_set,
                limit: s.limit,
                bound: s.bound.map(|b| WireBound {
                    level: b.level,
                    scope: match b.scope {
                        Scope::Own => "own",
                        Scope::Parent => "parent",
                        Scope::Pod => "pod",
                    }
                    .into(),
                    file: b.file.into(),
                }),
                under_oom: s.under_oom,
                oom: s.oom.map(|o| WireOom {
                    kills: o.kills,
                    group_kills: o.group_kills,
                    ooms: o.ooms,
                }),
                high_events: s.high_events,
                pressure: s.pressure.map(|p| WirePressure {
                    some_avg10: p.some_avg10,
                    full_avg10: p.full_avg10,
                }),
            }),
            Err(e) => Line::Unreadable(WireError {
                kind: e.kind().into(),
                message: e.to_string(),
            }),
        }
    }

    /// One line of JSON, newline included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// A line as the sidecar reads it; `Err` says what is wrong with it.
    pub fn decode(line: &[u8]) -> Result<Line, String> {
        serde_json::from_slice(line).map_err(|e| e.to_string())
    }
}

impl WireSample {
    /// The sample as if read here at `at`; `Err` for a bound this sidecar does not know.
    pub fn into_sample(self, at: Instant) -> Result<Sample, String> {
        let bound = match self.bound {
            None => None,
            Some(b) => Some(Bound {
                level: b.level,
                scope: match b.scope.as_str() {
                    "own" => Scope::Own,
                    "parent" => Scope::Parent,
                    "pod" => Scope::Pod,
                    other => return Err(format!("unknown bound scope {other:?}")),
                },
                file: match b.file.as_str() {
                    "memory.max" => "memory.max",
                    "memory.high" => "memory.high",
                    "memory.limit_in_bytes" => "memory.limit_in_bytes",
                    other => return Err(format!("unknown limit file {other:?}")),
                },
            }),
        };
        Ok(Sample {
            at,
            working_set: self.working_set,
            limit: self.limit,
            bound,
            under_oom: self.under_oom,
            oom: self.oom.map(|o| OomCounts {
                kills: o.kills,
                group_kills: o.group_kills,
                ooms: o.ooms,
            }),
            high_events: self.high_events,
            pressure: self.pressure.map(|p| Pressure {
                some_avg10: p.some_avg10,
                full_avg10: p.full_avg10,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_crosses_the_wire_unchanged() {
        let at = Instant::now();
        let sample = Sample {
            at,
            working_set: 70 << 20,
            limit: Some(80 << 20),
            bound: Some(Bound {
                level: 1,
                scope: Scope::Pod,
                file: "memory.max",
            }),
            under_oom: false,
            oom: Some(OomCounts {
                kills: 4,
                group_kills: 1,
                ooms: 1,
            }),
            high_events: Some(3),
            pressure: Some(Pressure {
                some_avg10: 1.5,
                full_avg10: 0.25,
            }),
        };
        let bytes = Line::from_read(&Ok(sample.clone())).encode();
        assert_eq!(bytes.last(), Some(&b'\n'));
        assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1);
        let Ok(Line::Sample(wire)) = Line::decode(&bytes) else {
            panic!("not a sample: {}", String::from_utf8_lossy(&bytes));
        };
        assert_eq!(wire.into_sample(at), Ok(sample));
    }

    #[test]
    fn an_unreadable_cgroup_keeps_its_kind_and_garbage_is_an_error() {
        let gone = ReadError::Gone {
            path: "/sys/fs/cgroup/x".into(),
        };
        let line = Line::decode(&Line::from_read(&Err(gone)).encode());
        let Ok(Line::Unreadable(e)) = line else {
            panic!("{line:?}")
        };
        assert_eq!(e.kind, "gone");
        assert!(e.message.contains("/sys/fs/cgroup/x"), "{}", e.message);
        assert!(Line::decode(b"{\"sample\":{\"working_set\":-1}}").is_err());
        assert!(Line::decode(b"HTTP/1.1 200 OK").is_err());
        let odd = br#"{"sample":{"working_set":1,"limit":2,"bound":{"level":0,"scope":"x","file":"memory.max"},"oom":null,"high_events":null,"pressure":null}}"#;
        let Ok(Line::Sample(odd)) = Line::decode(odd) else {
            panic!()
        };
        assert!(odd.into_sample(Instant::now()).is_err());
    }
}
