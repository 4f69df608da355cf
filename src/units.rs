//! The value types of the configuration, shared by the sections each part defines beside its
//! code: durations, byte counts, shares, switches.

use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// Every duration of the configuration: humantime text (`250ms`, `1m30s`), at most a day. Longer
/// means nothing to a watchdog, and far longer would overflow the arithmetic of instants.
pub mod duration {
    use std::time::Duration;

    use serde::{de::Error, Deserializer, Serializer};

    pub const MAX: Duration = Duration::from_secs(24 * 60 * 60);

    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text)
            .map_err(|e| format!("{text:?} is not a duration like 250ms or 1m30s: {e}"))
            .and_then(bounded)
    }

    fn bounded(d: Duration) -> Result<Duration, String> {
        if d > MAX {
            return Err(format!(
                "{} is longer than the most allowed, 24h",
                humantime::format_duration(d)
            ));
        }
        Ok(d)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(d, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let d: Duration = humantime_serde::deserialize(d)?;
        bounded(d).map_err(D::Error::custom)
    }

    pub mod option {
        use std::time::Duration;

        use serde::{de::Error, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            humantime_serde::option::serialize(d, s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let d: Option<Duration> = humantime_serde::option::deserialize(d)?;
            d.map(super::bounded).transpose().map_err(D::Error::custom)
        }
    }
}

/// Serde through `FromStr`/`Display`, so a bad value fails at its own line and column.
macro_rules! serde_via_str {
    ($($t:ty),*) => {$(
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(serde::Deserialize)]
                #[serde(untagged)]
                enum Scalar { Int(u64), Bool(bool), Float(f64), Str(String) }
                let s = match <Scalar as serde::Deserialize>::deserialize(d)? {
                    Scalar::Int(i) => i.to_string(),
                    Scalar::Bool(b) => b.to_string(),
                    Scalar::Float(f) => f.to_string(),
                    Scalar::Str(s) => s,
                };
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
pub(crate) use serde_via_str;

serde_via_str!(Bytes, Switch);

/// `auto`, `true` or `false`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    Auto,
    On,
    Off,
}

impl FromStr for Switch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Switch::Auto),
            "true" => Ok(Switch::On),
            "false" => Ok(Switch::Off),
            _ => Err(format!("bad switch {s:?}: want auto, true or false")),
        }
    }
}

impl std::fmt::Display for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Switch::Auto => "auto",
            Switch::On => "true",
            Switch::Off => "false",
        })
    }
}

/// A byte count: a number, or a Kubernetes quantity (`64Mi`, `1Gi`, `500M`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl FromStr for Bytes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad size {s:?}: want bytes or a quantity like 512Mi");
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let factor: u64 = match unit {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            "k" | "K" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(factor)
            .filter(|b| *b > 0)
            .map(Bytes)
            .ok_or_else(bad)
    }
}

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A share of the limit, above 0 and at most 1.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Fraction(pub f64);

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if v > 0.0 && v <= 1.0 {
            Ok(Fraction(v))
        } else {
            Err(serde::de::Error::custom(format!(
                "{v} is not a share of the limit: want a number above 0 and at most 1, e.g. 0.9"
            )))
        }
    }
}
