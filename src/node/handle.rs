//! One request to the agent: the probes and `/metrics`, and the memory stream's checks in order
//! (the request, the token, the pod, the cgroup, the caps) before its 200.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::mpsc;

use super::auth::{self, Refusal};
use super::metrics::Outcome;
use super::stream::{Stream, BUFFERED_LINES};
use super::{Agent, MAX_INTERVAL, MIN_INTERVAL};
use crate::liveness::Ended;
use crate::memory::wire;

type Body = BoxBody<Bytes, Infallible>;

pub(super) async fn handle(agent: &Agent, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/livez" => {
            let dead = agent.liveness.dead();
            if dead.is_empty() {
                text(StatusCode::OK, "ok\n")
            } else {
                // The kubelet restarts the agent; its sidecars reconnect.
                let body = format!("dead: {}\n", dead.join(", "));
                text(StatusCode::SERVICE_UNAVAILABLE, body)
            }
        }
        "/readyz" => text(StatusCode::OK, "ok\n"),
        "/metrics" => with_type(
            StatusCode::OK,
            agent.registry.encode().into(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        wire::PATH => match memory(agent, &req).await {
            Ok(resp) => {
                agent.metrics.request(Outcome::Ok);
                resp
            }
            Err((outcome, resp)) => {
                if let Some(outcome) = outcome {
                    agent.metrics.request(outcome);
                }
                resp
            }
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /v1/memory, /livez, /readyz, /metrics\n",
        ),
    }
}

/// The query of a memory stream.
#[derive(Debug, PartialEq)]
struct Query {
    namespace: String,
    pod: String,
    container: Option<String>,
    interval: Option<Duration>,
}

fn query(text: &str) -> Result<Query, String> {
    let (mut namespace, mut pod, mut container, mut interval) = (None, None, None, None);
    for (key, value) in url::form_urlencoded::parse(text.as_bytes()) {
        let value = value.into_owned();
        match key.as_ref() {
            "namespace" => namespace = Some(value),
            "pod" => pod = Some(value),
            "container" => container = Some(value).filter(|v| !v.is_empty()),
            "interval" => {
                let d = humantime::parse_duration(&value)
                    .map_err(|e| format!("interval {value:?}: {e}"))?;
                interval = Some(d.clamp(MIN_INTERVAL, MAX_INTERVAL));
            }
            // Parameters a later sidecar adds are not ours to refuse.
            _ => {}
        }
    }
    match (namespace, pod) {
        (Some(namespace), Some(pod)) if !namespace.is_empty() && !pod.is_empty() => Ok(Query {
            namespace,
            pod,
            container,
            interval,
        }),
        _ => Err("namespace and pod are required".into()),
    }
}

/// A refusal and its outcome; none for a malformed request (the client's bug, not a refusal of
/// who it is: `sidewatch_node_requests_total` counts what callers were told about themselves).
type Refused = (Option<Outcome>, Response<Body>);

async fn memory(agent: &Agent, req: &Request<Incoming>) -> Result<Response<Body>, Refused> {
    let q = query(req.uri().query().unwrap_or_default())
        .map_err(|why| (None, text(StatusCode::BAD_REQUEST, format!("{why}\n"))))?;
    let token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            refused(Refusal::Unauthenticated(
                "no Authorization: Bearer token".into(),
            ))
        })?;
    let caller = auth::review(&agent.client, token).await.map_err(refused)?;
    let asked = (q.namespace.as_str(), q.pod.as_str());
    let target = auth::target(
        &agent.client,
        &caller,
        asked,
        q.container.as_deref(),
        &agent.node,
    )
    .await
    .map_err(refused)?;
    let dir = agent
        .root
        .locate(&target.uid, target.container_id.as_deref())
        .map_err(|why| refused(Refusal::NotFound(why)))?;
    let key = format!("{}/{}", caller.namespace, caller.pod);
    let Some(slot) = agent.slots.take(&key) else {
        tracing::info!(pod = %key, "node: stream refused at the caps");
        let mut resp = text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many streams (in all, or of this pod)\n",
        );
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("5"));
        return Err((Some(Outcome::RefusedBusy), resp));
    };
    let interval = q.interval.unwrap_or(agent.interval);
    tracing::info!(pod = %key, container = ?q.container, dir = %dir.path.display(), ?interval, "node: stream opened");
    let (tx, rx) = mpsc::channel::<Bytes>(BUFFERED_LINES);
    let stream = Stream {
        root: agent.root.clone(),
        client: agent.client.clone(),
        caller,
        container: q.container,
        node: agent.node.clone(),
        interval,
        metrics: agent.metrics.clone(),
        scope: agent.tasks.scope(&agent.shutdown),
    };
    let shutdown = agent.shutdown.clone();
    let name = format!("node: stream of {key}");
    // The client going, the agent stopping, the pod no longer the token's: all normal ends.
    agent.tasks.spawn_part(name, &agent.shutdown, async move {
        stream.run(dir, tx, shutdown).await;
        tracing::info!(pod = %key, "node: stream closed");
        drop(slot);
        Ended::Normally
    });
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(line)), rx))
    });
    let mut resp = Response::new(StreamBody::new(lines).boxed());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(wire::CONTENT_TYPE));
    Ok(resp)
}

fn refused(r: Refusal) -> Refused {
    let status = match r {
        Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
        Refusal::NotFound(_) => StatusCode::NOT_FOUND,
        Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    match &r {
        Refusal::Unavailable(_) => tracing::warn!(error = %r, "node: request refused"),
        _ => tracing::info!(error = %r, "node: request refused"),
    }
    (Some(r.outcome()), text(status, format!("{r}\n")))
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, body.into(), "text/plain; charset=utf-8")
}

fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(body).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_needs_a_pod_and_clamps_the_interval() {
        let q = query("namespace=shop&pod=web-1&container=app&interval=1ms&later=1").unwrap();
        assert_eq!(
            q,
            Query {
                namespace: "shop".into(),
                pod: "web-1".into(),
                container: Some("app".into()),
                interval: Some(MIN_INTERVAL),
            }
        );
        assert_eq!(
            query("namespace=a&pod=b&interval=1h").unwrap().interval,
            Some(MAX_INTERVAL)
        );
        assert_eq!(query("namespace=a&pod=b").unwrap().container, None);
        assert!(query("pod=b").is_err());
        assert!(query("namespace=a&pod=b&interval=soon").is_err());
    }
}
