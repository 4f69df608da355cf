//! A ValidatingAdmissionPolicy evaluated as the API server does, with a CEL implementation (the
//! `cel` crate): its match constraints (resource rules), then its match conditions, then its
//! variables in order, then every validation. An expression that errors denies, as
//! `failurePolicy: Fail` says. The policy tests and the fake API server both use it, on the
//! policy exactly as shipped.
#![allow(dead_code)] // each test crate uses its own subset

use cel::{Context, Program};
use serde_json::{json, Value};

pub const FILE: &str = "deploy/policy/own-pod.yaml";

pub struct Policy {
    pub name: String,
    rules: Vec<Value>,
    conditions: Vec<(String, Program)>,
    variables: Vec<(String, Program)>,
    validations: Vec<Validation>,
}

struct Validation {
    expression: Program,
    source: String,
    message: Option<String>,
    message_expression: Option<Program>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Outside the policy's match constraints or conditions.
    NotMatched,
    Allowed,
    Denied(String),
}

fn compile(expression: &Value) -> Program {
    let text = expression.as_str().expect("a CEL expression is a string");
    Program::compile(text).unwrap_or_else(|e| panic!("CEL does not compile: {text}: {e}"))
}

impl Policy {
    /// The policy shipped in `deploy/policy`, built into the test binary: the VM's guest has no
    /// checkout to read it from.
    pub fn shipped() -> Policy {
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/policy/own-pod.yaml"
        ));
        let docs: Vec<Value> = serde_saphyr::from_multiple(text).unwrap();
        Policy::of(&docs)
    }

    /// The ValidatingAdmissionPolicy among `docs`.
    pub fn of(docs: &[Value]) -> Policy {
        let policy = docs
            .iter()
            .find(|d| d["kind"] == "ValidatingAdmissionPolicy")
            .expect("a ValidatingAdmissionPolicy");
        let spec = &policy["spec"];
        assert_eq!(spec["failurePolicy"], "Fail");
        let named = |list: &Value| -> Vec<(String, Program)> {
            list.as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap().to_owned(),
                        compile(&c["expression"]),
                    )
                })
                .collect()
        };
        Policy {
            name: policy["metadata"]["name"].as_str().unwrap().to_owned(),
            rules: spec["matchConstraints"]["resourceRules"]
                .as_array()
                .unwrap()
                .clone(),
            conditions: named(&spec["matchConditions"]),
            variables: named(&spec["variables"]),
            validations: spec["validations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| Validation {
                    expression: compile(&v["expression"]),
                    source: v["expression"].as_str().unwrap().to_owned(),
                    message: v["message"].as_str().map(str::to_owned),
                    message_expression: v.get("messageExpression").map(compile),
                })
                .collect(),
        }
    }

    fn matches_rules(&self, request: &Value) -> bool {
        let resource = match request["subResource"].as_str().unwrap_or_default() {
            "" => request["resource"]["resource"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            sub => format!(
                "{}/{sub}",
                request["resource"]["resource"].as_str().unwrap_or_default()
            ),
        };
        let has = |list: &Value, want: &Value| {
            list.as_array()
                .unwrap()
                .iter()
                .any(|v| v == want || v == "*")
        };
        self.rules.iter().any(|rule| {
            has(&rule["apiGroups"], &request["resource"]["group"])
                && has(&rule["apiVersions"], &request["resource"]["version"])
                && has(&rule["operations"], &request["operation"])
                && has(&rule["resources"], &json!(resource))
        })
    }

    /// The verdict on one AdmissionRequest (`request.object` is the object after the change).
    pub fn admit(&self, request: &Value) -> Verdict {
        if !self.matches_rules(request) {
            return Verdict::NotMatched;
        }
        let mut context = Context::default();
        context.add_variable("request", request).unwrap();
        context.add_variable("object", &request["object"]).unwrap();
        context
            .add_variable("oldObject", &request["oldObject"])
            .unwrap();
        for (name, program) in &self.conditions {
            match program.execute(&context) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => return Verdict::NotMatched,
                other => return Verdict::Denied(format!("match condition {name}: {other:?}")),
            }
        }
        let mut variables = serde_json::Map::new();
        for (name, program) in &self.variables {
            context
                .add_variable("variables", Value::Object(variables.clone()))
                .unwrap();
            let value = match program.execute(&context) {
                Ok(value) => value.json().unwrap(),
                Err(e) => return Verdict::Denied(format!("variable {name}: {e}")),
            };
            variables.insert(name.clone(), value);
        }
        context
            .add_variable("variables", Value::Object(variables))
            .unwrap();
        for v in &self.validations {
            match v.expression.execute(&context) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => {
                    let message = match &v.message_expression {
                        Some(program) => match program.execute(&context) {
                            Ok(cel::Value::String(s)) => s.to_string(),
                            other => format!("messageExpression: {other:?}"),
                        },
                        None => v.message.clone().unwrap_or_else(|| v.source.clone()),
                    };
                    return Verdict::Denied(message);
                }
                other => return Verdict::Denied(format!("{}: {other:?}", v.source)),
            }
        }
        Verdict::Allowed
    }
}

/// The userInfo of a pod's projected service-account token, as the API server fills it in.
pub fn pod_token(namespace: &str, service_account: &str, pod: &str, uid: &str) -> Value {
    json!({
        "username": format!("system:serviceaccount:{namespace}:{service_account}"),
        "uid": "5f0c1a2b-3c4d-4e5f-9a8b-7c6d5e4f3a2b",
        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"), "system:authenticated"],
        "extra": {
            "authentication.kubernetes.io/credential-id": ["JTI=7d2c9f0e-1b3a-4c5d-8e6f-a0b1c2d3e4f5"],
            "authentication.kubernetes.io/node-name": ["node-a"],
            "authentication.kubernetes.io/node-uid": ["c3d4e5f6-a7b8-4c9d-8e0f-1a2b3c4d5e6f"],
            "authentication.kubernetes.io/pod-name": [pod],
            "authentication.kubernetes.io/pod-uid": [uid],
        }
    })
}

/// An AdmissionRequest (admission.k8s.io/v1) as the API server builds it for a policy.
pub fn request(
    user: &Value,
    operation: &str,
    (group, resource, sub): (&str, &str, &str),
    namespace: &str,
    name: &str,
    object: &Value,
) -> Value {
    let kind = match resource {
        "pods" => "Pod",
        _ => "Event",
    };
    json!({
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": group, "version": "v1", "kind": kind},
        "resource": {"group": group, "version": "v1", "resource": resource},
        "subResource": sub,
        "requestKind": {"group": group, "version": "v1", "kind": kind},
        "requestResource": {"group": group, "version": "v1", "resource": resource},
        "requestSubResource": sub,
        "name": name,
        "namespace": namespace,
        "operation": operation,
        "userInfo": user,
        "object": object,
        "oldObject": if operation == "UPDATE" { object.clone() } else { Value::Null },
        "dryRun": false,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": if operation == "CREATE" { "CreateOptions" } else { "UpdateOptions" }},
    })
}
