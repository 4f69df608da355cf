//! The demo's sample app: an HTTP port and a standard gRPC health service on loopback, whose
//! behaviour the demo switches phase by phase.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::Mode;
use crate::liveness::{Ended, Scope};

/// The sample app's ports, bound on free loopback ports before the sidewatch that probes them
/// starts; served in its lifecycle (`serve`).
pub(super) struct App {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    http_listener: TcpListener,
    grpc_listener: TcpListener,
}

impl App {
    pub(super) async fn bind() -> std::io::Result<App> {
        let http_listener = TcpListener::bind("127.0.0.1:0").await?;
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await?;
        Ok(App {
            http: http_listener.local_addr()?,
            grpc: grpc_listener.local_addr()?,
            http_listener,
            grpc_listener,
        })
    }

    /// Serves both ports as tasks of `scope` (the demo's sidewatch's: one stop ends all); the
    /// returned sender switches the app's behaviour. A listener that fails is a death, told by
    /// `/livez` as any other task's.
    pub(super) fn serve(self, scope: &Scope) -> watch::Sender<Mode> {
        let (mode_tx, mode_rx) = watch::channel(Mode::Healthy);
        scope.spawn(
            "demo app: gRPC",
            serve_grpc(self.grpc_listener, mode_rx.clone(), scope.clone()),
        );
        scope.spawn(
            "demo app: HTTP",
            serve_app(self.http, self.http_listener, mode_rx, scope.clone()),
        );
        mode_tx
    }
}

/// The standard gRPC health service (tonic-health's), served over HTTP/2 by hyper.
async fn serve_grpc(listener: TcpListener, mut mode: watch::Receiver<Mode>, scope: Scope) -> Ended {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    use tonic_health::ServingStatus;

    let (reporter, service) = tonic_health::server::health_reporter();
    scope.spawn("demo app: gRPC status", async move {
        loop {
            let status = match *mode.borrow_and_update() {
                Mode::NotServing => ServingStatus::NotServing,
                _ => ServingStatus::Serving,
            };
            reporter.set_service_status("", status).await;
            if mode.changed().await.is_err() {
                return Ended::Normally; // the demo is over
            }
        }
    });
    while let Ok((stream, _)) = listener.accept().await {
        let service = TowerToHyperService::new(service.clone());
        scope.spawn("demo app: gRPC connection", async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            Ended::Normally
        });
    }
    Ended::Early
}

async fn serve_app(
    addr: SocketAddr,
    listener: TcpListener,
    mut mode: watch::Receiver<Mode>,
    scope: Scope,
) -> Ended {
    let mut listener = Some(listener);
    loop {
        let current = *mode.borrow_and_update();
        if current == Mode::Crashed {
            // Closing the listener is what a crashed process looks like: connections are refused.
            listener = None;
            if mode.changed().await.is_err() {
                return Ended::Normally;
            }
            continue;
        }
        let Some(l) = &listener else {
            match TcpListener::bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(e) => {
                    eprintln!("demo app: cannot listen on {addr} again: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            continue;
        };
        tokio::select! {
            accepted = l.accept() => {
                if let Ok((stream, _)) = accepted {
                    scope.spawn("demo app: HTTP connection", async move {
                        answer(stream, current).await;
                        Ended::Normally
                    });
                }
            }
            changed = mode.changed() => if changed.is_err() { return Ended::Normally },
        }
    }
}

async fn answer(mut stream: TcpStream, mode: Mode) {
    let mut buf = [0u8; 4096];
    let mut read = 0;
    while read < buf.len() && !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf[read..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => read += n,
        }
    }
    let reply: &[u8] = match mode {
        Mode::Healthy | Mode::NotServing => {
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
        }
        Mode::Unavailable => {
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        }
        Mode::Garbage => b"\x00\x13\x37 garbage, this is not HTTP\r\n\r\n",
        Mode::Hang => {
            // Hold the connection until the client gives up, as a wedged app does.
            let _ = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await;
            return;
        }
        Mode::Crashed => return,
    };
    let _ = stream.write_all(reply).await;
    let _ = stream.shutdown().await;
}
