//! An in-process fake Kubernetes API server on loopback that speaks the real wire format: LIST
//! and WATCH of pods (newline-delimited JSON events, resourceVersion, bookmarks, 410 Gone, closed
//! after `timeoutSeconds`), PATCH
//! of `pods/{name}/status` (recorded and applied), POST and PATCH of Events (events.k8s.io/v1
//! and core/v1), and failure modes (an error status for everything or for status patches only,
//! dropped watches, slowness, and going down: every connection closed at once, new ones accepted
//! and closed unanswered, and counted). Every write passes the own-pod ValidatingAdmissionPolicy
//! shipped in deploy/policy first, evaluated on the caller's token (by default the projected
//! token of the fake's pod for the `sidewatch` service account; `set_caller` changes it), and is
//! refused with 403 as the API server does when it denies. It also answers GET of one pod by name
//! (the fake's pod and those added with `add_pod`) and TokenReviews (authentication.k8s.io/v1)
//! from a token table the test sets (`set_token`), as the API server's authenticator would,
//! audiences included. Its waits poll with
//! `common::eventually`: a test crate that includes it includes `common` too.
//!
//! The same server runs without a socket (`in_process`, `client`): its handler is the tower
//! `Service` of a `kube::Client`, for paused-time tests, where any socket, even on loopback,
//! would let the virtual clock run past the client's timeouts while bytes are in flight. Going
//! down then makes every request fail as a refused connection does.
#![allow(dead_code)] // each test crate uses its own subset

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::common::eventually;
use crate::common::policy::{self, Policy, Verdict};

#[derive(Clone, Debug)]
pub struct Recorded {
    /// When the request's body had arrived.
    pub at: std::time::SystemTime,
    /// The same on the runtime's clock: virtual time in a paused-time test.
    pub instant: tokio::time::Instant,
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

struct State {
    pod: Value,
    rv: u64,
    /// (resourceVersion, type, object) of every change, for watches to replay.
    history: Vec<(u64, &'static str, Value)>,
    /// Watches from a resourceVersion below this get 410 Gone.
    oldest: u64,
    requests: Vec<Recorded>,
    fail: Option<u16>,
    /// Like `fail`, for PATCH of pods/status only: the watch stays up.
    fail_patches: Option<u16>,
    delay: Duration,
    /// Down: connections are accepted, counted in `refused` and closed without a byte.
    down: bool,
    refused: usize,
    /// In process, each request refused while down (no body read).
    refusals: Vec<Recorded>,
    /// Bumped to cut every open watch.
    generation: u64,
    /// Who the requests come from: the userInfo the API server takes from the caller's token.
    caller: Value,
    /// Events posted so far, by name, for a patch to be judged on the Event it makes.
    events: std::collections::HashMap<String, Value>,
    /// The policy's verdict on each write it was asked about: (method path, verdict).
    verdicts: Vec<(String, Verdict)>,
    /// Pods beside `pod`, served by GET by name only.
    others: Vec<Value>,
    /// Token → (audiences it was issued for, the userInfo it authenticates as).
    tokens: std::collections::HashMap<String, (Vec<String>, Value)>,
}

#[derive(Clone)]
pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    /// Bumped to close every open connection (going down).
    cut: Arc<tokio::sync::watch::Sender<u64>>,
    policy: Arc<Policy>,
    /// Notified at each request, for `wait_requests`.
    seen: Arc<Notify>,
}

impl FakeApi {
    pub async fn start(pod: Value) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, pod, None)
    }

    /// As `start`, on `addr` over TLS: the API server a pod reaches in-cluster, through
    /// `KUBERNETES_SERVICE_HOST`, a service-account token and the CA in `ca.crt`.
    pub async fn start_tls(
        addr: SocketAddr,
        pod: Value,
        tls: tokio_rustls::TlsAcceptor,
    ) -> FakeApi {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, pod, Some(tls))
    }

    /// The server without a socket: reach it through `client` (its `addr` is unspecified).
    pub fn in_process(pod: Value) -> FakeApi {
        Self::new(SocketAddr::from(([0, 0, 0, 0], 0)), pod)
    }

    /// A client of the pod's namespace whose every request is answered by this server's handler,
    /// in process: the request and response bodies are the wire format, unsent.
    pub fn client(&self) -> kube::Client {
        let namespace = self.pod()["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        kube::Client::new(InProcess(self.clone()), namespace)
    }

    fn serve(listener: TcpListener, pod: Value, tls: Option<tokio_rustls::TlsAcceptor>) -> FakeApi {
        let api = Self::new(listener.local_addr().unwrap(), pod);
        Self::spawn_accept(api.clone(), listener, tls);
        api
    }

    fn new(addr: SocketAddr, mut pod: Value) -> FakeApi {
        pod["metadata"]["resourceVersion"] = "1".into();
        let caller = policy::pod_token(
            pod["metadata"]["namespace"].as_str().unwrap_or("default"),
            "sidewatch",
            pod["metadata"]["name"].as_str().unwrap_or_default(),
            pod["metadata"]["uid"].as_str().unwrap_or_default(),
        );
        FakeApi {
            addr,
            state: Arc::new(Mutex::new(State {
                pod,
                rv: 1,
                history: Vec::new(),
                oldest: 0,
                requests: Vec::new(),
                fail: None,
                fail_patches: None,
                delay: Duration::ZERO,
                down: false,
                refused: 0,
                refusals: Vec::new(),
                generation: 0,
                caller,
                events: Default::default(),
                verdicts: Vec::new(),
                others: Vec::new(),
                tokens: Default::default(),
            })),
            changed: Arc::new(Notify::new()),
            cut: Arc::new(tokio::sync::watch::channel(0).0),
            policy: Arc::new(Policy::shipped()),
            seen: Arc::new(Notify::new()),
        }
    }

    fn spawn_accept(
        server: FakeApi,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) {
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                {
                    let mut s = server.state.lock().unwrap();
                    if s.down {
                        s.refused += 1;
                        continue; // dropping the stream closes it unanswered
                    }
                }
                let api = server.clone();
                let cut = server.cut.subscribe();
                match tls.clone() {
                    None => {
                        tokio::spawn(connection(api, hyper_util::rt::TokioIo::new(stream), cut));
                    }
                    Some(acceptor) => {
                        tokio::spawn(async move {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                connection(api, hyper_util::rt::TokioIo::new(stream), cut).await;
                            }
                        });
                    }
                }
            }
        });
    }

    /// Goes down (every open connection closed, new ones closed unanswered) or comes back up.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
        if down {
            self.drop_watches();
            self.cut.send_modify(|n| *n += 1);
        }
    }

    /// Connections closed unanswered while down, so far.
    pub fn refused(&self) -> usize {
        self.state.lock().unwrap().refused
    }

    /// In process, the requests refused while down so far, in order.
    pub fn refusals(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().refusals.clone()
    }

    /// The requests come from this userInfo from now on (`policy::pod_token` of another pod…).
    pub fn set_caller(&self, caller: Value) {
        self.state.lock().unwrap().caller = caller;
    }

    /// Another pod, answered to GET by its namespace and name.
    pub fn add_pod(&self, pod: Value) {
        self.state.lock().unwrap().others.push(pod);
    }

    /// A token the TokenReviews know: issued for `audiences`, authenticating as `user` (a
    /// `policy::pod_token` userInfo for a pod's projected token).
    pub fn set_token(&self, token: &str, audiences: &[&str], user: Value) {
        let audiences = audiences.iter().map(|a| (*a).to_owned()).collect();
        self.state
            .lock()
            .unwrap()
            .tokens
            .insert(token.to_owned(), (audiences, user));
    }

    /// The own-pod policy's verdict on each write so far: ("PATCH /api/v1/…", verdict).
    pub fn verdicts(&self) -> Vec<(String, Verdict)> {
        self.state.lock().unwrap().verdicts.clone()
    }

    /// Asks the policy about a write whose result is `object`; the refusal to answer if denied.
    fn admit(
        &self,
        s: &mut State,
        (method, path): (&Method, &str),
        operation: &str,
        resource: (&str, &str, &str),
        object: &Value,
    ) -> Option<Response<BoxBody<Bytes, Infallible>>> {
        // /api/v1/namespaces/{ns}/{resource}/{name}[/{sub}] or /apis/{group}/v1/namespaces/…
        let parts: Vec<&str> = path.split('/').collect();
        let at = parts.iter().position(|p| *p == "namespaces")?;
        let namespace = parts.get(at + 1).copied().unwrap_or_default();
        let name = match parts.get(at + 3) {
            Some(name) => (*name).to_owned(),
            None => object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        };
        let request = policy::request(&s.caller, operation, resource, namespace, &name, object);
        let verdict = self.policy.admit(&request);
        s.verdicts
            .push((format!("{method} {path}"), verdict.clone()));
        let Verdict::Denied(message) = verdict else {
            return None;
        };
        let message = format!(
            "{} \"{name}\" is forbidden: ValidatingAdmissionPolicy '{}' with binding '{}' denied request: {message}",
            resource.1, self.policy.name, self.policy.name
        );
        Some(json_response(403, status_body(403, &message)))
    }

    /// PATCH of pods/status answers this status until `None`; everything else works.
    pub fn fail_patches_with(&self, status: Option<u16>) {
        self.state.lock().unwrap().fail_patches = status;
    }

    /// A kubeconfig that points at this server, as a user would write one.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\nusers:\n- name: sidewatch\n  user: {{token: test-token}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: sidewatch, namespace: shop}}\ncurrent-context: fake\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Changes the pod as the kubelet or a user would; watchers get MODIFIED.
    pub fn update_pod(&self, f: impl FnOnce(&mut Value)) {
        let mut s = self.state.lock().unwrap();
        f(&mut s.pod);
        bump(&mut s, "MODIFIED");
        drop(s);
        self.changed.notify_waiters();
    }

    pub fn pod(&self) -> Value {
        self.state.lock().unwrap().pod.clone()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Waits until `check` finds what it wants in the requests so far, woken by each request and
    /// bounded on the runtime's clock: in a paused-time test `within` is virtual time, and the
    /// wait lets it run (every timer of the code under test fires in order while it waits).
    pub async fn wait_requests<T>(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&[Recorded]) -> Option<T>,
    ) -> T {
        let wait = async {
            loop {
                let next = self.seen.notified();
                if let Some(v) = check(&self.requests()) {
                    return v;
                }
                next.await;
            }
        };
        match tokio::time::timeout(within, wait).await {
            Ok(v) => v,
            Err(_) => panic!(
                "timed out after {within:?} waiting for {what}; requests: {:#?}",
                self.requests()
                    .iter()
                    .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
                    .collect::<Vec<_>>()
            ),
        }
    }

    /// Waits until a pod watch has been asked for (after the initial list).
    pub async fn wait_watching(&self) {
        eventually("a pod watch", Duration::from_secs(10), || async {
            self.requests()
                .iter()
                .any(|r| r.query.contains("watch=true"))
                .then_some(())
        })
        .await;
    }

    /// The readiness gate's condition on the pod, if any.
    fn gate_condition(&self) -> Option<Value> {
        let pod = self.pod();
        let conditions = pod["status"]["conditions"].as_array()?;
        conditions.iter().find(|c| c["type"] == GATE).cloned()
    }

    /// The readiness gate's condition on the pod, if any: (status, message).
    pub fn gate(&self) -> Option<(String, String)> {
        let c = self.gate_condition()?;
        Some((
            c["status"].as_str()?.to_owned(),
            c["message"].as_str()?.to_owned(),
        ))
    }

    /// Waits until the readiness gate's status is `want` (`"True"`, `"False"`).
    pub async fn wait_gate(&self, want: &str, within: Duration) {
        eventually(&format!("the gate {want}"), within, || async {
            (self.gate().is_some_and(|(st, _)| st == want)).then_some(())
        })
        .await;
    }

    /// The readiness gate's `lastTransitionTime` on the pod, if any.
    pub fn gate_since(&self) -> Option<String> {
        let c = self.gate_condition()?;
        Some(c["lastTransitionTime"].as_str()?.to_owned())
    }

    /// (status, lastTransitionTime) that each status patch of the pod so far sent, in order.
    pub fn gate_patch_times(&self) -> Vec<(String, String)> {
        self.gate_patches()
            .iter()
            .map(|p| {
                let c = &p.body["status"]["conditions"][0];
                let field = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
                (field("status"), field("lastTransitionTime"))
            })
            .collect()
    }

    /// Every status patch of the pod so far.
    pub fn gate_patches(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "PATCH" && r.path.ends_with("/pods/web-1/status"))
            .collect()
    }

    /// Every request answers this status (403, 500…) until `None`.
    pub fn fail_with(&self, status: Option<u16>) {
        self.state.lock().unwrap().fail = status;
        self.drop_watches();
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// Cuts every open watch, as a restarting API server or a load balancer would.
    pub fn drop_watches(&self) {
        self.state.lock().unwrap().generation += 1;
        self.changed.notify_waiters();
    }

    /// Forgets history: watches from any version seen so far get 410 Gone and must relist.
    pub fn compact(&self) {
        let mut s = self.state.lock().unwrap();
        s.oldest = s.rv + 1;
        bump(&mut s, "MODIFIED");
        drop(s);
        self.drop_watches();
    }

    async fn handle<B: hyper::body::Body>(
        &self,
        req: Request<B>,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let is_status_patch = method == Method::PATCH && path.ends_with("/status");
        let (fail, delay) = {
            let mut s = self.state.lock().unwrap();
            s.requests.push(Recorded {
                at: std::time::SystemTime::now(),
                instant: tokio::time::Instant::now(),
                method: method.to_string(),
                path: path.clone(),
                query: query.clone(),
                content_type: content_type.clone(),
                body: body.clone(),
            });
            let fail = s.fail.or(s.fail_patches.filter(|_| is_status_patch));
            (fail, s.delay)
        };
        self.seen.notify_waiters();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(code) = fail {
            return json_response(code, status_body(code, "injected failure"));
        }
        let pods = path.starts_with("/api/v1/namespaces/") && path.ends_with("/pods");
        let segments: Vec<&str> = path.split('/').collect();
        // ["", "api", "v1", "namespaces", ns, "pods", name]
        let one_pod = (segments.len() == 7 && segments[5] == "pods")
            .then(|| (segments[4].to_owned(), segments[6].to_owned()));
        match (&method, path.as_str()) {
            (&Method::GET, _) if one_pod.is_some() => {
                let (namespace, name) = one_pod.unwrap_or_default();
                let s = self.state.lock().unwrap();
                let found = std::iter::once(&s.pod).chain(&s.others).find(|p| {
                    p["metadata"]["namespace"] == namespace.as_str()
                        && p["metadata"]["name"] == name.as_str()
                });
                match found {
                    Some(pod) => json_response(200, pod.clone()),
                    None => {
                        json_response(404, status_body(404, &format!("pods \"{name}\" not found")))
                    }
                }
            }
            (&Method::POST, "/apis/authentication.k8s.io/v1/tokenreviews") => {
                let s = self.state.lock().unwrap();
                json_response(201, token_review(&s.tokens, &body))
            }
            (&Method::GET, _) if pods && query.contains("watch=true") => self.watch(&query),
            (&Method::GET, _) if pods => {
                let s = self.state.lock().unwrap();
                let list = json!({"kind": "PodList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": s.rv.to_string()}, "items": [s.pod.clone()]});
                json_response(200, list)
            }
            (&Method::PATCH, p) if p.ends_with("/status") && p.contains("/pods/") => {
                let mut s = self.state.lock().unwrap();
                let mut pod = s.pod.clone();
                if content_type.starts_with("application/strategic-merge-patch+json") {
                    merge_conditions(&mut pod, &body);
                }
                let resource = ("", "pods", "status");
                if let Some(denied) = self.admit(&mut s, (&method, p), "UPDATE", resource, &pod) {
                    return denied;
                }
                s.pod = pod;
                bump(&mut s, "MODIFIED");
                let pod = s.pod.clone();
                drop(s);
                self.changed.notify_waiters();
                json_response(200, pod)
            }
            (&Method::POST, p) if p.ends_with("/events") => {
                let mut event = body;
                if event["metadata"]["name"].is_null() {
                    event["metadata"]["name"] = "event-1".into();
                }
                let mut s = self.state.lock().unwrap();
                if let Some(denied) =
                    self.admit(&mut s, (&method, p), "CREATE", event_resource(p), &event)
                {
                    return denied;
                }
                let name = event["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                s.events.insert(name, event.clone());
                json_response(201, event)
            }
            (&Method::PATCH, p) if p.contains("/events/") => {
                let mut s = self.state.lock().unwrap();
                let name = p.rsplit('/').next().unwrap_or_default().to_owned();
                let Some(mut event) = s.events.get(&name).cloned() else {
                    return json_response(404, status_body(404, "no such Event"));
                };
                json_patch::merge(&mut event, &body);
                if let Some(denied) =
                    self.admit(&mut s, (&method, p), "UPDATE", event_resource(p), &event)
                {
                    return denied;
                }
                s.events.insert(name, event.clone());
                json_response(200, event)
            }
            _ => json_response(404, status_body(404, "not found")),
        }
    }

    fn watch(&self, query: &str) -> Response<BoxBody<Bytes, Infallible>> {
        let from: u64 = param(query, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (gone, generation) = {
            let s = self.state.lock().unwrap();
            (from < s.oldest, s.generation)
        };
        if gone {
            let event =
                json!({"type": "ERROR", "object": status_body(410, "too old resource version")});
            let line = Bytes::from(format!("{event}\n"));
            let body = Full::new(line).boxed();
            return Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(body)
                .unwrap();
        }
        // Closed after `timeoutSeconds`, as the API server does; clients then watch again.
        let ends = param(query, "timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map(|t| tokio::time::Instant::now() + Duration::from_secs(t));
        let api = self.clone();
        let stream = futures_util::stream::unfold((from, true), move |(sent, first)| {
            let api = api.clone();
            async move {
                loop {
                    let notified = api.changed.notified();
                    {
                        let s = api.state.lock().unwrap();
                        if s.generation != generation {
                            return None;
                        }
                        if first {
                            // A bookmark first, as servers send with allowWatchBookmarks.
                            let bookmark = json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                                "metadata": {"resourceVersion": s.rv.max(sent).to_string()}}});
                            let line = Frame::data(Bytes::from(format!("{bookmark}\n")));
                            return Some((Ok::<_, Infallible>(line), (sent, false)));
                        }
                        if let Some((rv, kind, obj)) =
                            s.history.iter().find(|(rv, _, _)| *rv > sent)
                        {
                            let event = json!({"type": kind, "object": obj});
                            let line = Frame::data(Bytes::from(format!("{event}\n")));
                            return Some((Ok(line), (*rv, false)));
                        }
                    }
                    match ends {
                        Some(at) => tokio::time::timeout_at(at, notified).await.ok()?,
                        None => notified.await,
                    }
                }
            }
        });
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(StreamBody::new(stream).boxed())
            .unwrap()
    }
}

/// One client connection, until it ends or the server goes down.
async fn connection<I>(api: FakeApi, io: I, mut cut: tokio::sync::watch::Receiver<u64>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let api = api.clone();
        async move { Ok::<_, Infallible>(api.handle(req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    tokio::select! {
        _ = conn => {}
        _ = cut.changed() => {}
    }
}

/// The fake's handler as the tower `Service` a `kube::Client` sends through (`FakeApi::client`).
#[derive(Clone)]
struct InProcess(FakeApi);

/// A request the in-process server refused, as a closed connection would be: it is down.
#[derive(Debug, thiserror::Error)]
#[error("connection refused: the fake API server is down")]
struct Refused;

// tower's `Service` trait, which kube's client is built on (tower-service is in the tree already).
impl tower_service::Service<Request<kube::client::Body>> for InProcess {
    type Response = Response<BoxBody<Bytes, Infallible>>;
    type Error = Refused;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Refused>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Refused>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<kube::client::Body>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move {
            {
                let mut s = api.state.lock().unwrap();
                if s.down {
                    s.refused += 1;
                    s.refusals.push(Recorded {
                        at: SystemTime::now(),
                        instant: tokio::time::Instant::now(),
                        method: req.method().to_string(),
                        path: req.uri().path().to_owned(),
                        query: req.uri().query().unwrap_or_default().to_owned(),
                        content_type: String::new(),
                        body: Value::Null,
                    });
                    drop(s);
                    api.seen.notify_waiters();
                    return Err(Refused);
                }
            }
            Ok(api.handle(req).await)
        })
    }
}

fn bump(s: &mut State, kind: &'static str) {
    s.rv += 1;
    s.pod["metadata"]["resourceVersion"] = s.rv.to_string().into();
    let (rv, pod) = (s.rv, s.pod.clone());
    s.history.push((rv, kind, pod));
}

/// The group of an Event's path: events.k8s.io, or the core group.
fn event_resource(path: &str) -> (&'static str, &'static str, &'static str) {
    match path.starts_with("/apis/events.k8s.io/") {
        true => ("events.k8s.io", "events", ""),
        false => ("", "events", ""),
    }
}

/// Strategic merge of `status.conditions`: entries merge by `type`.
fn merge_conditions(pod: &mut Value, patch: &Value) {
    let Some(new) = patch["status"]["conditions"].as_array() else {
        return;
    };
    if !pod["status"]["conditions"].is_array() {
        pod["status"]["conditions"] = json!([]);
    }
    let conditions = pod["status"]["conditions"].as_array_mut().unwrap();
    for c in new {
        match conditions.iter_mut().find(|old| old["type"] == c["type"]) {
            // As the API server does: the fields the patch names replace the entry's, the others
            // stay (a patch without lastTransitionTime keeps the stored one), null removes.
            Some(old) => json_patch::merge(old, c),
            None => conditions.push(c.clone()),
        }
    }
}

/// The API server's answer to a TokenReview: authenticated when the token is known and was
/// issued for one of the audiences asked (the API server's own when none are).
fn token_review(
    tokens: &std::collections::HashMap<String, (Vec<String>, Value)>,
    review: &Value,
) -> Value {
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let asked: Vec<String> = match review["spec"]["audiences"].as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => vec!["https://kubernetes.default.svc".to_owned()],
    };
    let status = match tokens.get(token) {
        None => {
            json!({"authenticated": false, "error": "[invalid bearer token, token lookup failed]"})
        }
        Some((issued, user)) => {
            let common: Vec<&String> = asked.iter().filter(|a| issued.contains(a)).collect();
            if common.is_empty() {
                json!({"authenticated": false, "error": "[invalid bearer token, token audiences is invalid for the target audiences]"})
            } else {
                json!({"authenticated": true, "user": user, "audiences": common})
            }
        }
    };
    json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null}, "spec": review["spec"].clone(), "status": status})
}

fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn status_body(code: u16, message: &str) -> Value {
    let reason = match code {
        403 => "Forbidden",
        409 => "Conflict",
        404 => "NotFound",
        410 => "Expired",
        _ => "InternalError",
    };
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

fn json_response(code: u16, body: Value) -> Response<BoxBody<Bytes, Infallible>> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

/// The readiness gate's condition type.
const GATE: &str = "sidewatch.io/healthy";

/// The app container restarted for the `restart_count`th time, its last run ended with
/// `exit_code` for `reason` at `finished_at`, as the kubelet writes it into `pod`.
pub fn app_restarted(
    pod: &mut Value,
    restart_count: i32,
    exit_code: i32,
    reason: &str,
    finished_at: SystemTime,
) {
    let app = &mut pod["status"]["containerStatuses"][0];
    app["restartCount"] = restart_count.into();
    app["lastState"] = json!({"terminated": {"exitCode": exit_code, "reason": reason,
        "finishedAt": humantime::format_rfc3339_seconds(finished_at).to_string()}});
}

/// A pod named web-1 in shop with an app container and sidewatch as a native sidecar.
pub fn pod(with_gate: bool) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "uid": "0b5e4a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"},
        "spec": {
            "initContainers": [{"name": "sidewatch", "image": "sidewatch:0.1.0", "restartPolicy": "Always"}],
            "containers": [{"name": "app", "image": "example/app"}]
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "initContainerStatuses": [{"name": "sidewatch", "image": "s", "imageID": "", "ready": true, "restartCount": 0}],
            "containerStatuses": [{"name": "app", "image": "a", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]
        }
    });
    if with_gate {
        pod["spec"]["readinessGates"] = json!([{"conditionType": GATE}]);
    }
    pod
}
