//! The JSON Patch the injector answers with, built from "add" operations alone on the pod as it
//! came: a list grows by an insert or an append (never by rewriting its entries), an object by a
//! new member, and a member is set only where the pod did not have it. Each operation is applied
//! to a working copy at once, so that the next one sees what the earlier ones made.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::Value;

pub struct Edits {
    doc: Value,
    ops: Vec<PatchOperation>,
}

impl Edits {
    pub fn new(pod: &Value) -> Self {
        Edits {
            doc: pod.clone(),
            ops: Vec::new(),
        }
    }

    pub fn into_patch(self) -> Patch {
        Patch(self.ops)
    }

    fn add(&mut self, path: PointerBuf, value: Value) {
        let op = PatchOperation::Add(AddOperation { path, value });
        // Every path is made from members that exist in the working copy (or their parent), so
        // the operation applies; one that did not would be left out rather than answered.
        if json_patch::patch(&mut self.doc, std::slice::from_ref(&op)).is_ok() {
            self.ops.push(op);
        } else {
            tracing::error!(%op, "internal: a patch operation did not apply");
        }
    }

    /// The value at `path`, `null` counting as absent (the API server treats them alike).
    pub fn get(&self, path: &[&str]) -> Option<&Value> {
        path.iter()
            .try_fold(&self.doc, |node, key| match node {
                Value::Object(map) => map.get(*key),
                Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            })
            .filter(|v| !v.is_null())
    }

    /// Sets `key` in the object at `object` (made when absent), if the pod does not set it.
    /// Returns false, changing nothing, when the member is there already.
    pub fn set_new(&mut self, object: &[&str], key: &str, value: Value) -> bool {
        match self.get(object) {
            Some(Value::Object(map)) if map.get(key).is_some_and(|v| !v.is_null()) => false,
            Some(Value::Object(_)) => {
                self.add(pointer(object, &[key]), value);
                true
            }
            _ => {
                let mut made = serde_json::Map::new();
                made.insert(key.to_owned(), value);
                self.add(pointer(object, &[]), Value::Object(made));
                true
            }
        }
    }

    /// Appends `value` to the list at `list` (made when absent).
    pub fn append(&mut self, list: &[&str], value: Value) {
        match self.get(list) {
            Some(Value::Array(_)) => self.add(pointer(list, &["-"]), value),
            _ => self.add(pointer(list, &[]), Value::Array(vec![value])),
        }
    }

    /// Inserts `value` first in the list at `list` (made when absent); the entries there move
    /// down one place, whole.
    pub fn prepend(&mut self, list: &[&str], value: Value) {
        match self.get(list) {
            Some(Value::Array(_)) => self.add(pointer(list, &["0"]), value),
            _ => self.add(pointer(list, &[]), Value::Array(vec![value])),
        }
    }
}

fn pointer(base: &[&str], rest: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(base.iter().chain(rest).copied())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lists_and_objects_grow_by_adds_and_set_members_stay() {
        let pod = json!({"metadata": {"name": "a", "annotations": null},
            "spec": {"containers": [{"name": "c", "x-new": 1}], "initContainers": []}});
        let mut e = Edits::new(&pod);
        assert!(e.set_new(&["metadata", "annotations"], "sidewatch.io/x", json!("1")));
        assert!(e.set_new(&["metadata", "annotations"], "sidewatch.io/y", json!("2")));
        assert!(!e.set_new(&["metadata"], "name", json!("b")));
        e.prepend(&["spec", "initContainers"], json!({"name": "s"}));
        e.prepend(&["spec", "initContainers"], json!({"name": "t"}));
        e.append(&["spec", "volumes"], json!({"name": "v"}));
        e.append(&["spec", "volumes"], json!({"name": "w"}));
        let patch = e.into_patch();
        assert!(patch
            .0
            .iter()
            .all(|op| matches!(op, PatchOperation::Add(_))));
        let mut applied = pod.clone();
        json_patch::patch(&mut applied, &patch).unwrap();
        assert_eq!(
            applied,
            json!({"metadata": {"name": "a", "annotations": {"sidewatch.io/x": "1", "sidewatch.io/y": "2"}},
                "spec": {"containers": [{"name": "c", "x-new": 1}],
                    "initContainers": [{"name": "t"}, {"name": "s"}],
                    "volumes": [{"name": "v"}, {"name": "w"}]}})
        );
        let text = serde_json::to_string(&patch).unwrap();
        assert!(
            text.contains("/metadata/annotations/sidewatch.io~1y"),
            "{text}"
        );
    }
}
