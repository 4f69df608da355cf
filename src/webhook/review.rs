//! One AdmissionReview (admission.k8s.io/v1) in, one out. The envelope is read through a small
//! typed struct; the object stays raw JSON for the injector. Only the creation of a Pod is
//! mutated; any other operation or resource is allowed unchanged. The patch goes out as the API
//! documents a `[]byte`: a base64 string.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::inject::{self, Outcome, Scope, Settings};
use super::metrics::Admitted;

/// The `reason` of a review skipped for being about something else than a pod's creation.
pub const NOT_A_POD_CREATION: &str = "not_a_pod_creation";

const API_VERSION: &str = "admission.k8s.io/v1";
const KIND: &str = "AdmissionReview";

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("not an AdmissionReview: {0}")]
    Parse(serde_json::Error),
    #[error("not an {API_VERSION} {KIND}: apiVersion {api_version:?}, kind {kind:?}")]
    Type { api_version: String, kind: String },
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("cannot serialise the answer: {0}")]
    Answer(serde_json::Error),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review<'a> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(borrow)]
    request: Option<Request<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    uid: String,
    #[serde(default)]
    kind: Kind,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    namespace: String,
    /// Raw: the injector reads a view of it (`inject::view`), not a tree of every field.
    #[serde(default, borrow)]
    object: Option<&'a serde_json::value::RawValue>,
}

#[derive(Default, Deserialize)]
struct Kind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

/// What one review decided, and about which pod: the webhook's audit line and metrics.
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    /// Injected, skipped or refused: the `outcome` label.
    pub outcome: Admitted,
    /// The `reason` label: the path's scope, why it was skipped, or the refusal's kind.
    pub reason: &'static str,
    pub uid: String,
    pub namespace: String,
    /// Empty for a pod of a controller, which has a `generate_name` instead.
    pub name: String,
    pub generate_name: String,
}

/// The answer's bytes and what was decided. `Err` only for a review that cannot be answered.
pub fn review(
    body: &[u8],
    scope: Scope,
    settings: &Settings,
    token: &str,
) -> Result<(Vec<u8>, Decision), ReviewError> {
    // serde_json stops at 128 levels of nesting, so a hostile review cannot overflow the stack.
    let review: Review = serde_json::from_slice(body).map_err(ReviewError::Parse)?;
    // The answer repeats these; the API server would reject an answer of another type.
    if review.api_version != API_VERSION || review.kind != KIND {
        return Err(ReviewError::Type {
            api_version: review.api_version,
            kind: review.kind,
        });
    }
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    let mut response = json!({"uid": request.uid, "allowed": true});
    let mut decision = Decision {
        outcome: Admitted::Skipped,
        reason: NOT_A_POD_CREATION,
        uid: request.uid.clone(),
        namespace: request.namespace.clone(),
        name: String::new(),
        generate_name: String::new(),
    };
    let is_pod_creation = request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.sub_resource.as_deref().unwrap_or("").is_empty()
        && request.operation == "CREATE";
    if let Some(raw) = request.object.filter(|_| is_pod_creation) {
        let pod = pod_of(raw.get());
        let meta = |key: &str| pod["metadata"][key].as_str().unwrap_or_default().to_owned();
        (decision.name, decision.generate_name) = (meta("name"), meta("generateName"));
        (decision.outcome, decision.reason) = match inject::mutate(&pod, settings, scope, token) {
            Outcome::Untouched(skip) => (Admitted::Skipped, skip.label()),
            Outcome::Refused(why) => {
                response["warnings"] = json!([format!("sidewatch not injected: {why}")]);
                (Admitted::Refused, why.kind.label())
            }
            Outcome::Patch { patch, warnings } => {
                let bytes = serde_json::to_vec(&patch).map_err(ReviewError::Answer)?;
                response["patchType"] = "JSONPatch".into();
                response["patch"] = base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into();
                if !warnings.is_empty() {
                    let warnings: Vec<String> =
                        warnings.iter().map(|w| format!("sidewatch: {w}")).collect();
                    response["warnings"] = warnings.into();
                }
                (Admitted::Injected, scope.label())
            }
        };
    }
    let answer = json!({"apiVersion": API_VERSION, "kind": KIND, "response": response});
    let bytes = serde_json::to_vec(&answer).map_err(ReviewError::Answer)?;
    Ok((bytes, decision))
}

/// The view of the pod the injector reads. It keeps a member of an odd type whole, so it fails
/// only where a full parse would too (the object came from a parsed review: nesting too deep).
fn pod_of(raw: &str) -> Value {
    inject::view::of(raw).unwrap_or(Value::Null)
}
