//! The one accept loop of every listener (the admin port, the node agent, the webhook and its
//! metrics port): a connection cap, a header read timeout, small buffers, optional TLS, an
//! optional age limit, and a graceful stop. On `shutdown` it stops accepting (the listener is
//! closed, so new clients are refused), asks every connection to close after the request it is
//! in, gives each `grace` to do so, and returns once every connection has ended. A connection
//! accepted but not yet in its first request gets `FIRST_REQUEST_WAIT` to begin it: a client
//! connects, then writes, and closing in between would drop a request sent before the stop.

mod evict;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use evict::Busy;
pub use evict::Evict;

/// How long a connection accepted without a request yet may take to begin one, at shutdown.
const FIRST_REQUEST_WAIT: Duration = Duration::from_secs(1);

/// How a listener bounds the connections it holds.
pub enum Limit {
    /// At most this many; a permit is taken before accept, so that at the cap new clients wait
    /// in the listen backlog rather than being reset.
    Backlog(usize),
    /// At the cap, an idle connection is closed to admit the new one (`Evict`).
    Evict(Evict),
}

/// TLS on every connection, the handshake bounded.
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub handshake_timeout: Duration,
}

pub struct Options {
    /// Names the listener in log lines.
    pub name: &'static str,
    pub limit: Limit,
    /// Port scanners and slow clients must not hold connections open; hyper also times the wait
    /// for the next request on a kept-alive connection with it.
    pub header_read_timeout: Duration,
    /// hyper's read buffer (its smallest allowed is 8 KiB; its default of 400 KB is not needed).
    pub max_buf: usize,
    pub tls: Option<Tls>,
    /// A connection older than this is asked to close after its current request.
    pub max_age: Option<Duration>,
    /// How long a connection asked to close (at shutdown or at `max_age`) may take to finish
    /// the request it is in before it is dropped.
    pub grace: Duration,
    /// Counts every connection accepted (the admin's: the drain subtracts them from the app
    /// port's namespace-wide count).
    pub accepted: Option<Arc<AtomicU64>>,
}

impl Options {
    /// A listener of small requests (one line and a few headers: probes, scrapes, the agent's
    /// stream requests), no TLS: what the admin port, the webhook's metrics port and the node
    /// agent share. Each sets what differs with struct update syntax.
    pub fn small(name: &'static str, limit: Limit) -> Options {
        Options {
            name,
            limit,
            // Port scanners and slow clients must not hold connections open.
            header_read_timeout: Duration::from_secs(5),
            // hyper's smallest allowed read buffer is 8 KiB.
            max_buf: 16 * 1024,
            tls: None,
            max_age: None,
            // At exit a request under way (a scrape being written) gets this; the exit paths
            // wait no longer.
            grace: Duration::from_secs(1),
            accepted: None,
        }
    }
}

/// Serves `make(peer)`'s service on each connection of `listener` until `shutdown`, then stops
/// as the module says.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    options: Options,
    shutdown: CancellationToken,
    make: F,
) where
    F: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let options = Arc::new(options);
    let permits = match &options.limit {
        Limit::Backlog(cap) => Some(Arc::new(Semaphore::new((*cap).max(1)))),
        Limit::Evict(_) => None,
    };
    let tracker = TaskTracker::new();
    while let Some((stream, peer, permit)) =
        next_connection(&listener, permits.as_ref(), &options, &shutdown).await
    {
        let (slot, evicted) = match &options.limit {
            Limit::Evict(evict) => {
                let (slot, evicted) = evict.admit(peer.ip());
                (Some(slot), Some(evicted))
            }
            Limit::Backlog(_) => (None, None),
        };
        let requested = Arc::new(Notify::new());
        let service = Marked {
            inner: make(peer),
            busy: slot.as_ref().map(|s| s.busy.clone()),
            requested: requested.clone(),
        };
        let ends = Ends {
            evicted,
            requested,
            shutdown: shutdown.clone(),
            options: options.clone(),
            peer,
        };
        tracker.spawn(async move {
            ends.serve_maybe_tls(stream, service).await;
            drop((slot, permit));
        });
    }
    drop(listener);
    tracing::debug!(listener = options.name, "stopped accepting");
    tracker.close();
    tracker.wait().await;
}

/// The next connection accepted (under a permit, with a `Limit::Backlog`), until `shutdown`.
async fn next_connection(
    listener: &TcpListener,
    permits: Option<&Arc<Semaphore>>,
    options: &Options,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr, Option<OwnedSemaphorePermit>)> {
    loop {
        let permit = match permits {
            Some(permits) => tokio::select! {
                permit = permits.clone().acquire_owned() => Some(permit.ok()?),
                _ = shutdown.cancelled() => return None,
            },
            None => None,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return None,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Some(accepted) = &options.accepted {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
                let _ = stream.set_nodelay(true);
                return Some((stream, peer, permit));
            }
            Err(e) => {
                // Out of file descriptors, mostly: back off instead of spinning.
                tracing::warn!(listener = options.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What ends a connection besides its client: eviction, shutdown, age.
struct Ends {
    evicted: Option<oneshot::Receiver<()>>,
    /// Notified at each request: once stored, the connection has begun one.
    requested: Arc<Notify>,
    shutdown: CancellationToken,
    options: Arc<Options>,
    peer: SocketAddr,
}

impl Ends {
    /// Serves the connection, after a TLS handshake (bounded) where the listener has TLS.
    async fn serve_maybe_tls<S, B>(self, stream: TcpStream, service: S)
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (options, peer) = (self.options.clone(), self.peer);
        let Some(tls) = &options.tls else {
            return self.serve(stream, service).await;
        };
        let handshake = tls.acceptor.accept(stream);
        match tokio::time::timeout(tls.handshake_timeout, handshake).await {
            Ok(Ok(stream)) => self.serve(stream, service).await,
            Ok(Err(e)) => {
                tracing::debug!(listener = options.name, %peer, error = %e, "TLS handshake failed")
            }
            Err(_) => tracing::debug!(listener = options.name, %peer, "TLS handshake timed out"),
        }
    }

    async fn serve<I, S, B>(self, io: I, service: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (options, peer) = (&*self.options, self.peer);
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout)
            .max_buf_size(options.max_buf);
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let evicted = async {
            match self.evicted {
                Some(evicted) => {
                    let _ = evicted.await;
                }
                None => std::future::pending().await,
            }
        };
        let aged = async {
            match options.max_age {
                Some(age) => tokio::time::sleep(age).await,
                None => std::future::pending().await,
            }
        };
        let closing = tokio::select! {
            ended = conn.as_mut() => Some(ended),
            () = evicted => {
                tracing::debug!(listener = options.name, %peer, "connection closed to make room");
                return;
            }
            () = self.shutdown.cancelled() => None,
            () = aged => None,
        };
        let ended = match closing {
            Some(ended) => ended,
            None => {
                let begun = tokio::time::timeout(FIRST_REQUEST_WAIT, self.requested.notified());
                tokio::select! {
                    ended = conn.as_mut() => {
                        if let Err(e) = ended {
                            tracing::debug!(listener = options.name, %peer, error = %e, "connection ended with an error");
                        }
                        return;
                    }
                    _ = begun => {}
                }
                conn.as_mut().graceful_shutdown();
                match tokio::time::timeout(options.grace, conn.as_mut()).await {
                    Ok(ended) => ended,
                    Err(_) => {
                        return tracing::debug!(listener = options.name, %peer, "connection dropped: its request outlived the grace")
                    }
                }
            }
        };
        if let Err(e) = ended {
            tracing::debug!(listener = options.name, %peer, error = %e, "connection ended with an error");
        }
    }
}

/// The service, marking its connection busy (not to be evicted) while a request is answered.
struct Marked<S> {
    inner: S,
    busy: Option<Arc<AtomicBool>>,
    requested: Arc<Notify>,
}

type Answer<R> = Pin<Box<dyn Future<Output = Result<R, Infallible>> + Send>>;

impl<S, R> Service<Request<Incoming>> for Marked<S>
where
    S: Service<Request<Incoming>, Response = R, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = R;
    type Error = Infallible;
    type Future = Answer<R>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = self.busy.as_ref().map(Busy::enter);
        self.requested.notify_one();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let answer = answer.await;
            drop(busy);
            answer
        })
    }
}
