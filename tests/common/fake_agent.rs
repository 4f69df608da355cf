//! A fake node agent (`sidewatch node`) on loopback that speaks the wire format of
//! src/memory/wire.rs: it checks each request as the real one does (path, the pod and container
//! asked, the bearer token against the token file the sidecar reads, as the agent's TokenReview
//! would), then streams the line the test chooses every `EVERY`, with one-shot lines (garbage)
//! before it. It can answer a chosen status instead, fall silent, cut every stream, stop (the
//! port refuses) and come back on the same port. Its waits poll with `common::eventually`: a test
//! crate that includes it includes `common` too.
#![allow(dead_code)] // each test crate uses its own subset

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sidewatch::memory::wire::{self, Line, WireBound, WireOom, WireSample};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How often the fake sends its line: the sidecar's `memory.interval` asked for is recorded,
/// not obeyed, so tests run at one pace.
pub const EVERY: Duration = Duration::from_millis(100);

/// One request as the agent saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub query: String,
    pub authorization: String,
    /// The status it was answered with.
    pub status: u16,
}

struct State {
    line: Vec<u8>,
    once: VecDeque<Vec<u8>>,
    /// Answer this instead of checking the request.
    status: Option<u16>,
    silent: bool,
    seen: Vec<Seen>,
}

#[derive(Clone)]
pub struct FakeAgent {
    pub addr: SocketAddr,
    token_file: PathBuf,
    pod: (String, String, String),
    state: Arc<Mutex<State>>,
    /// Bumped to end every open stream and connection.
    cut: Arc<watch::Sender<u64>>,
    /// The accept loop, while up.
    server: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl FakeAgent {
    /// Serves pod `namespace/pod`'s container `container`, to the bearer of the token in
    /// `token_file`, starting with `line`.
    pub async fn start(token_file: PathBuf, pod: [&str; 3], line: Line) -> FakeAgent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let agent = FakeAgent {
            addr: listener.local_addr().unwrap(),
            token_file,
            pod: (pod[0].into(), pod[1].into(), pod[2].into()),
            state: Arc::new(Mutex::new(State {
                line: line.encode(),
                once: VecDeque::new(),
                status: None,
                silent: false,
                seen: Vec::new(),
            })),
            cut: Arc::new(watch::Sender::new(0)),
            server: Arc::default(),
        };
        agent.serve(listener);
        agent
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&self, listener: TcpListener) {
        let agent = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let agent = agent.clone();
                let mut cut = agent.cut.subscribe();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let agent = agent.clone();
                        async move { Ok::<_, Infallible>(agent.handle(req)) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        *self.server.lock().unwrap() = Some(task);
    }

    /// Stops: every stream cut, the port closed (connections refused).
    pub fn stop(&self) {
        if let Some(task) = self.server.lock().unwrap().take() {
            task.abort();
        }
        self.cut_streams();
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// Ends every open stream: the sidecar connects anew.
    pub fn cut_streams(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn set_line(&self, line: Line) {
        self.state.lock().unwrap().line = line.encode();
    }

    /// Sends these bytes once, as they are, before the next line.
    pub fn send_once(&self, bytes: Vec<u8>) {
        self.state.lock().unwrap().once.push_back(bytes);
    }

    /// Answers every request with `status` (`None`: checks them again).
    pub fn answer(&self, status: Option<u16>) {
        self.state.lock().unwrap().status = status;
    }

    /// Keeps the streams open with nothing on them.
    pub fn silent(&self, silent: bool) {
        self.state.lock().unwrap().silent = silent;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Waits for the `n`th request (counting from 1) and returns it.
    pub async fn wait_request(&self, n: usize) -> Seen {
        crate::common::eventually(
            &format!("request {n} to the agent"),
            Duration::from_secs(15),
            || {
                let seen = self.seen();
                async move { seen.get(n - 1).cloned() }
            },
        )
        .await
    }

    fn handle(&self, req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let status = self.judge(&path, &query, &authorization);
        self.state.lock().unwrap().seen.push(Seen {
            path,
            query,
            authorization,
            status,
        });
        if status != 200 {
            return Response::builder()
                .status(status)
                .body(Full::from(format!("fake agent: {status}\n")).boxed())
                .unwrap();
        }
        let state = self.state.clone();
        let cut = self.cut.subscribe();
        let lines = futures_util::stream::unfold((), move |()| {
            let state = state.clone();
            let mut cut = cut.clone();
            async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(EVERY) => {}
                        _ = cut.changed() => return None,
                    }
                    let mut s = state.lock().unwrap();
                    if s.silent {
                        continue;
                    }
                    let mut bytes: Vec<u8> = s.once.drain(..).flatten().collect();
                    bytes.extend_from_slice(&s.line);
                    let frame = Frame::data(Bytes::from(bytes));
                    return Some((Ok::<_, Infallible>(frame), ()));
                }
            }
        });
        Response::builder()
            .status(200)
            .header("content-type", wire::CONTENT_TYPE)
            .body(StreamBody::new(lines).boxed())
            .unwrap()
    }

    /// What the real agent would answer: 401 for a token that is not the file's, 403 for
    /// another pod, 404 for another container.
    fn judge(&self, path: &str, query: &str, authorization: &str) -> u16 {
        if let Some(status) = self.state.lock().unwrap().status {
            return status;
        }
        if path != wire::PATH {
            return 404;
        }
        let token = std::fs::read_to_string(&self.token_file).unwrap_or_default();
        if authorization != format!("Bearer {}", token.trim()) {
            return 401;
        }
        let param = |key: &str| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        };
        let (namespace, pod, container) = &self.pod;
        if param("namespace").as_ref() != Some(namespace) || param("pod").as_ref() != Some(pod) {
            return 403;
        }
        if param("container").as_ref() != Some(container) || param("interval").is_none() {
            return 404;
        }
        200
    }
}

/// A sample of `working_set` MiB against the pod's `memory.max` of `limit` MiB, after `kills`
/// group OOM kills (each of one process).
pub fn sample(working_set_mib: u64, limit_mib: u64, kills: u64) -> Line {
    Line::Sample(WireSample {
        working_set: working_set_mib << 20,
        limit: Some(limit_mib << 20),
        bound: Some(WireBound {
            level: 1,
            scope: "pod".into(),
            file: "memory.max".into(),
        }),
        under_oom: false,
        oom: Some(WireOom {
            kills: kills * 2,
            group_kills: kills,
            ooms: kills,
        }),
        high_events: Some(0),
        pressure: None,
    })
}
