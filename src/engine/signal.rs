//! The signals the engine knows, by kind: each watcher names its own with a variant, never with a
//! string it could misspell, and `/readyz`, the logs and the Events print them as `kind:name`.

use std::fmt;
use std::sync::Arc;

use serde::{Serialize, Serializer};

/// One signal. The variants' order is the order `/readyz` lists its reasons in (after the
/// drain's, which comes first), the alphabetical order of their names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    Kube(Kube),
    Memory(Memory),
    /// The app port's accept queue and listen overflows (`overload.signal`).
    Overload,
    /// A configured probe, by its name.
    Probe(Arc<str>),
    /// The app's main process, found by its command line.
    Process,
    /// Not a watcher's: the drain, which vetoes readiness from its start.
    Drain,
}

/// The pod's own signals, from its watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kube {
    /// The app container's restarts.
    App,
    /// The pod's deletion.
    Pod,
}

/// The memory watcher's signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Memory {
    Oom,
    Pressure,
    Trend,
    Usage,
}

impl Kube {
    pub const ALL: [Kube; 2] = [Kube::App, Kube::Pod];
}

impl Memory {
    pub const ALL: [Memory; 4] = [Memory::Usage, Memory::Pressure, Memory::Trend, Memory::Oom];
}

impl Signal {
    pub fn probe(name: &str) -> Signal {
        Signal::Probe(name.into())
    }

    /// The part that feeds it, as the engine's "not watched" list names parts.
    pub fn part(&self) -> &'static str {
        match self {
            Signal::Kube(_) => "kubernetes",
            Signal::Memory(_) => "memory",
            Signal::Overload => "overload",
            Signal::Probe(_) => "probes",
            Signal::Process => "process",
            Signal::Drain => "drain",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signal::Kube(Kube::App) => f.write_str("kube:app"),
            Signal::Kube(Kube::Pod) => f.write_str("kube:pod"),
            Signal::Memory(m) => f.write_str(match m {
                Memory::Oom => "memory:oom",
                Memory::Pressure => "memory:pressure",
                Memory::Trend => "memory:trend",
                Memory::Usage => "memory:usage",
            }),
            Signal::Overload => f.write_str("overload"),
            Signal::Probe(name) => write!(f, "probe:{name}"),
            Signal::Process => f.write_str("process:app"),
            Signal::Drain => f.write_str("drain"),
        }
    }
}

impl Serialize for Signal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_of_the_variants_is_the_order_of_the_names() {
        let mut signals: Vec<Signal> = Kube::ALL
            .map(Signal::Kube)
            .into_iter()
            .chain(Memory::ALL.map(Signal::Memory))
            .chain([
                Signal::Overload,
                Signal::probe("a"),
                Signal::probe("b"),
                Signal::Process,
            ])
            .collect();
        signals.sort();
        let names: Vec<String> = signals.iter().map(Signal::to_string).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }
}
