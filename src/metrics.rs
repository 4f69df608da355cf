//! The Prometheus registry. Each subsystem defines its own metrics beside its code and registers
//! them here at start-up, only when it runs: a feature that is off exports no series of its own,
//! and `sidewatch_features` says which are on. Every label value a series can take is
//! registered at zero from the start, so that an alert's `increase()` sees the first event.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, TextEncoder,
};

/// An enum of label values written once: each variant beside its label, `ALL` in the order
/// given, and `as_str`. A label's value set is then the enum itself, so a series registered at
/// zero for every value cannot miss one added later.
macro_rules! label_values {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in the order of the declaration.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use label_values;

label_values! {
    /// The parts of sidewatch that can be on or off: the `feature` label of `sidewatch_features`.
    /// Each input declares its own (`app::inputs`); the drain's traffic watch is the drain's, the
    /// agent endpoint an output's.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Feature {
        Probes => "probes",
        Memory => "memory",
        Process => "process",
        Kubernetes => "kubernetes",
        DrainTraffic => "drain_traffic",
        Overload => "overload",
        Agent => "agent",
    }
}

#[derive(Clone)]
pub struct Registry {
    inner: prometheus::Registry,
    features: IntGaugeVec,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry with `sidewatch_build_info` and `sidewatch_features` in it.
    pub fn new() -> Self {
        let inner = prometheus::Registry::new();
        let registry = Registry {
            inner,
            features: gauge_vec(
                "sidewatch_features",
                "1 for each part of sidewatch that runs here, 0 for one that is off (and exports no \
                 series of its own).",
                &["feature"],
            ),
        };
        let build = gauge_vec(
            "sidewatch_build_info",
            "Always 1; the version label says which sidewatch runs.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for feature in Feature::ALL {
            registry.features.with_label_values(&[feature.as_str()]);
        }
        registry.register(build);
        registry.register(registry.features.clone());
        registry
    }

    /// Registers a collector and hands it back. The metrics are fixed in code: a name given
    /// twice is a bug of ours, found by the tests, and registration fails at start-up only.
    pub fn register<C: Collector + Clone + 'static>(&self, collector: C) -> C {
        if let Err(e) = self.inner.register(Box::new(collector.clone())) {
            tracing::error!(error = %e, "internal: a metric registered twice");
        }
        collector
    }

    pub fn unregister<C: Collector + Clone + 'static>(&self, collector: &C) {
        let _ = self.inner.unregister(Box::new(collector.clone()));
    }

    /// Marks a part of sidewatch as running.
    pub fn feature(&self, feature: Feature) {
        self.features.with_label_values(&[feature.as_str()]).set(1);
    }

    /// The text exposition format (0.0.4).
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(8 * 1024);
        // Encoding into a Vec cannot fail on I/O; a collector error would be a bug of ours.
        if let Err(e) = TextEncoder::new().encode(&self.inner.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        spell_infinities(buf)
    }
}

/// The exposition format spells infinities `+Inf` and `-Inf`; the encoder writes Rust's `inf`.
/// A value is the last field of its line, so the spelling is fixed where a line ends in it.
fn spell_infinities(buf: Vec<u8>) -> Vec<u8> {
    if !buf.windows(4).any(|w| w == b"inf\n") {
        return buf;
    }
    let text = String::from_utf8_lossy(&buf);
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.split_inclusive('\n') {
        if let Some(head) = line.strip_suffix(" -inf\n") {
            out.push_str(head);
            out.push_str(" -Inf\n");
        } else if let Some(head) = line.strip_suffix(" inf\n") {
            out.push_str(head);
            out.push_str(" +Inf\n");
        } else {
            out.push_str(line);
        }
    }
    out.into_bytes()
}

// Constructors for the metrics each subsystem defines. Their names and labels are fixed in code,
// so building them cannot fail.

pub fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("static metric definition")
}

pub fn float_gauge(name: &str, help: &str) -> prometheus::Gauge {
    prometheus::Gauge::new(name, help).expect("static metric definition")
}

pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

pub fn float_gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

pub fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("static metric definition")
}

pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

pub fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("static metric definition")
}

pub fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("static metric definition")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infinities_are_spelled_as_the_exposition_format_says() {
        let r = Registry::new();
        let g = r.register(float_gauge("x_seconds", "x"));
        g.set(f64::INFINITY);
        let text = String::from_utf8(r.encode()).unwrap();
        assert!(text.contains("\nx_seconds +Inf\n"), "{text}");
        g.set(f64::NEG_INFINITY);
        let text = String::from_utf8(r.encode()).unwrap();
        assert!(text.contains("\nx_seconds -Inf\n"), "{text}");
        assert!(text.contains("sidewatch_build_info{version=\""));
    }

    #[test]
    fn features_are_on_or_off() {
        let r = Registry::new();
        r.feature(Feature::Memory);
        let text = String::from_utf8(r.encode()).unwrap();
        assert!(
            text.contains("sidewatch_features{feature=\"memory\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sidewatch_features{feature=\"kubernetes\"} 0"),
            "{text}"
        );
    }
}
