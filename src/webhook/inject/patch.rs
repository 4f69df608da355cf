//! The JSON Patch the injector answers with, built from "add" operations alone on the pod as it
//! came: a list grows by an insert or an append (never by rewriting its entries), an object by a
//! new member, and a member is set only where the pod did not have it. What exists is read from
//! the pod and from the edits made so far; the pod itself is never copied (a deep copy of a large
//! pod costs more than all the rest of an admission).

use std::collections::HashSet;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::Value;

pub struct Edits<'a> {
    pod: &'a Value,
    /// Paths this patch makes: lists and objects it adds, members it sets.
    made: HashSet<Vec<String>>,
    ops: Vec<PatchOperation>,
}

impl<'a> Edits<'a> {
    pub fn new(pod: &'a Value) -> Self {
        Edits {
            pod,
            made: HashSet::new(),
            ops: Vec::new(),
        }
    }

    pub fn into_patch(self) -> Patch {
        Patch(self.ops)
    }

    fn add(&mut self, path: &[&str], value: Value) {
        self.made
            .insert(path.iter().map(|s| s.to_string()).collect());
        let path = PointerBuf::from_tokens(path.iter().copied());
        self.ops
            .push(PatchOperation::Add(AddOperation { path, value }));
    }

    /// The pod's value at `path`, `null` counting as absent (the API server treats them alike).
    pub fn get(&self, path: &[&str]) -> Option<&'a Value> {
        path.iter()
            .try_fold(self.pod, |node, key| match node {
                Value::Object(map) => map.get(*key),
                Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            })
            .filter(|v| !v.is_null())
    }

    /// The pod has it, or this patch made it.
    fn exists(&self, path: &[&str]) -> bool {
        self.get(path).is_some()
            || self
                .made
                .contains(&path.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    /// Sets `key` in the object at `object` (made when absent), if neither the pod nor this patch
    /// sets it. Returns false, changing nothing, when the member is there already.
    pub fn set_new(&mut self, object: &[&str], key: &str, value: Value) -> bool {
        let member = [object, &[key]].concat();
        if self.exists(&member) {
            return false;
        }
        if self.exists(object) {
            self.add(&member, value);
        } else {
            let mut made = serde_json::Map::new();
            made.insert(key.to_owned(), value);
            self.add(object, Value::Object(made));
            self.made
                .insert(member.iter().map(|s| s.to_string()).collect());
        }
        true
    }

    /// Appends `value` to the list at `list` (made when absent).
    pub fn append(&mut self, list: &[&str], value: Value) {
        if self.exists(list) {
            self.add(&[list, &["-"]].concat(), value);
        } else {
            self.add(list, Value::Array(vec![value]));
        }
    }

    /// Inserts `value` first in the list at `list` (made when absent); the entries there move
    /// down one place, whole.
    pub fn prepend(&mut self, list: &[&str], value: Value) {
        if self.exists(list) {
            self.add(&[list, &["0"]].concat(), value);
        } else {
            self.add(list, Value::Array(vec![value]));
        }
    }
}

/// `base`, or `base-2`, `base-3`… whichever no entry of `list` is named.
pub(super) fn free_name(list: Option<&Vec<Value>>, base: &str) -> String {
    let taken = |name: &str| list.into_iter().flatten().any(|v| v["name"] == name);
    std::iter::once(base.to_owned())
        .chain((2..).map(|n| format!("{base}-{n}")))
        .find(|name| !taken(name))
        .unwrap_or_else(|| base.to_owned())
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
