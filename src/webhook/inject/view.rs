//! What of a pod the injector reads, taken from the review's raw JSON without building a tree of
//! the whole pod: env lists, volume sources, securityContexts and the rest are skipped as they
//! are parsed. A 50-container pod's admission spent most of its time allocating, and then freeing,
//! a `Value` of every field. The view is only read; the patch's paths are the pod's own (every
//! list keeps its entries, in order), so nothing of the pod is ever written back from it.
//!
//! Every member the injector reads or checks the presence of must be here: one left out would be
//! taken for absent (and a list replaced instead of extended). `tests/kubernetes/injection.rs` checks, on
//! every pod of the corpus, that the patch keeps every field.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The pod as the injector sees it, as a `Value` of the members it reads. The tree is built as
/// the review is parsed (a typed view turned into a `Value` copied every member it kept: a fifth
/// of a 50-container pod's admission). A member that is `null` is left out, and a missing
/// `metadata` or `spec` is an empty object, so the injector sees absent and `null` alike.
pub fn of(raw: &str) -> Result<Value, serde_json::Error> {
    let mut parser = serde_json::Deserializer::from_str(raw);
    let mut pod = POD.deserialize(&mut parser)?;
    parser.end()?;
    if let Value::Object(members) = &mut pod {
        for key in ["metadata", "spec"] {
            members
                .entry(key)
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }
    Ok(pod)
}

/// Which part of a JSON value the view keeps. A value of another shape than its `Keep` expects
/// (a list where an object was expected, say) is kept whole, as a full parse would have it.
enum Keep {
    /// The value, whole.
    All,
    /// Of an object, these members, each kept as its `Keep` says; every other one is skipped.
    Members(&'static [(&'static str, Keep)]),
    /// Of a list, every element, kept as the `Keep` says.
    Each(&'static Keep),
}

use Keep::{All, Each, Members};

const IDS: Keep = Members(&[("runAsUser", All), ("runAsGroup", All)]);

const CONTAINER: Keep = Members(&[
    ("name", All),
    ("ports", All),
    ("readinessProbe", All),
    ("livenessProbe", All),
    ("startupProbe", All),
    ("lifecycle", All),
    ("resources", Members(&[("limits", All)])),
    ("volumeMounts", All),
    ("securityContext", IDS),
]);

static POD: Keep = Members(&[
    (
        "metadata",
        // The name or generateName: only for the webhook's audit line.
        Members(&[
            ("name", All),
            ("generateName", All),
            ("annotations", All),
            ("labels", All),
        ]),
    ),
    (
        "spec",
        Members(&[
            ("containers", Each(&CONTAINER)),
            ("initContainers", Each(&CONTAINER)),
            ("volumes", Each(&Members(&[("name", All)]))),
            ("readinessGates", All),
            ("hostNetwork", All),
            ("restartPolicy", All),
            ("shareProcessNamespace", All),
            ("automountServiceAccountToken", All),
            ("terminationGracePeriodSeconds", All),
            ("securityContext", IDS),
        ]),
    ),
]);

impl<'de> DeserializeSeed<'de> for &'static Keep {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, parser: D) -> Result<Value, D::Error> {
        match self {
            All => Value::deserialize(parser),
            _ => parser.deserialize_any(Shaped(self)),
        }
    }
}

/// Builds the kept part of one value.
struct Shaped(&'static Keep);

impl<'de> Visitor<'de> for Shaped {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut kept = Map::new();
        let Members(members) = self.0 else {
            while let Some((key, value)) = map.next_entry::<String, Value>()? {
                kept.insert(key, value);
            }
            return Ok(Value::Object(kept));
        };
        while let Some(found) = map.next_key_seed(Member(members))? {
            let Some(i) = found else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let (name, keep) = &members[i];
            let value = map.next_value_seed(keep)?;
            if !value.is_null() {
                kept.insert((*name).to_owned(), value);
            }
        }
        Ok(Value::Object(kept))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut kept = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        match self.0 {
            Each(each) => {
                while let Some(value) = seq.next_element_seed(*each)? {
                    kept.push(value);
                }
            }
            _ => {
                while let Some(value) = seq.next_element::<Value>()? {
                    kept.push(value);
                }
            }
        }
        Ok(Value::Array(kept))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

/// An object's key, as the index of the member it names, if one does: no key is copied.
struct Member(&'static [(&'static str, Keep)]);

impl<'de> DeserializeSeed<'de> for Member {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, parser: D) -> Result<Option<usize>, D::Error> {
        parser.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Member {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member's name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|(name, _)| *name == key))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_view_keeps_what_the_injector_reads_and_nothing_else() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "labels": {"x": "y"}, "annotations": {"sidewatch.io/inject": "true"}},
            "spec": {"containers": [{"name": "web", "image": "i", "env": [{"name": "A", "value": "1"}],
                "ports": [{"containerPort": 80}], "readinessProbe": {"httpGet": {"port": 80}},
                "resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": "1"}},
                "lifecycle": {}, "securityContext": {"runAsUser": 1, "privileged": false}}],
                "volumes": [{"name": "v", "emptyDir": {}}], "readinessGates": [], "nodeName": "n",
                "shareProcessNamespace": false}});
        let view = of(&pod.to_string()).unwrap();
        assert_eq!(
            view,
            json!({"metadata": {"name": "a", "annotations": {"sidewatch.io/inject": "true"}, "labels": {"x": "y"}},
                "spec": {"containers": [{"name": "web", "ports": [{"containerPort": 80}],
                    "readinessProbe": {"httpGet": {"port": 80}}, "lifecycle": {},
                    "resources": {"limits": {"memory": "1Gi"}}, "securityContext": {"runAsUser": 1}}],
                    "volumes": [{"name": "v"}], "readinessGates": [], "shareProcessNamespace": false}})
        );
    }

    #[test]
    fn null_members_are_absent_and_other_shapes_are_kept_whole() {
        let pod = json!({"spec": {"initContainers": null, "containers": {"odd": [1]},
            "volumes": [{"name": "v", "secret": {}}, "text", 3],
            "securityContext": [{"runAsUser": 1}]}});
        let view = of(&pod.to_string()).unwrap();
        assert_eq!(
            view,
            json!({"metadata": {}, "spec": {"containers": {"odd": [1]},
                "volumes": [{"name": "v"}, "text", 3], "securityContext": [{"runAsUser": 1}]}})
        );
        assert_eq!(of("[1, 2.5, true]").unwrap(), json!([1, 2.5, true]));
        assert!(of("{\"spec\": {}} trailing").is_err());
        assert!(of("{\"spec\": {\"containers\": [}}").is_err());
    }
}
