//! The TCP probe: a connect, and nothing sent; plus the connection the other probes open.
//!
//! A probe's connection is written to as soon as its connect is begun: on loopback the handshake
//! is over by the time connect returns, so a check that waited for the socket to become writable
//! first would wake the watch runtime twice (once for the connect, once for the answer) where
//! once will do, with two more system calls (the wait, and the read of the socket's error). A
//! connect that failed surfaces as that first write's error, and is reported as the connect's
//! failure all the same ([`ConnectFailed`]).

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustix::io::Errno;
use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::config::{HostPort, TcpCheck};
use super::{classify, Failure};
use crate::reason::Reason;
use crate::traffic::{OwnSocket, OwnSockets};

pub struct TcpProber {
    address: HostPort,
}

impl TcpProber {
    pub fn new(check: &TcpCheck) -> Self {
        TcpProber {
            address: check.address.clone(),
        }
    }

    pub async fn check(&self, own: Option<&Arc<OwnSockets>>) -> Result<(), Failure> {
        connect(&self.address, own, Connected::Now).await.map(drop)
    }
}

/// Whether [`connect`] waits for the handshake (the TCP probe, and an address that others follow
/// if it fails) or leaves it to the first write.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Connected {
    Now,
    ByFirstWrite,
}

/// Connects to the first of the address's IPs that answers; the last error otherwise. Only the
/// last IP's connect may be left to the first write: an earlier one must fail here for the next
/// to be tried. With `own`, the connection is marked as sidewatch's, for the traffic watch,
/// until it drops.
pub async fn connect(
    address: &HostPort,
    own: Option<&Arc<OwnSockets>>,
    connected: Connected,
) -> Result<Connection, Failure> {
    let addrs: Vec<_> = tokio::net::lookup_host((address.host.as_str(), address.port))
        .await
        .map_err(|e| Failure::new(Reason::Dns, format!("{address}: {e}")))?
        .collect();
    let mut last = None;
    for (i, &addr) in addrs.iter().enumerate() {
        let wait = connected == Connected::Now || i + 1 < addrs.len();
        match Connection::begin(addr, own, wait).await {
            Ok(connection) => return Ok(connection),
            Err(e) => last = Some(classify::connect(&addr.to_string(), &e)),
        }
    }
    Err(last.unwrap_or_else(|| Failure::new(Reason::Dns, format!("{address}: no address"))))
}

/// A connect that failed, found by the first write on the connection.
#[derive(Debug, thiserror::Error)]
#[error("{addr}: {source}")]
pub struct ConnectFailed {
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// A probe's TCP connection: tokio's stream, but for its first write, which is tried at once
/// (tokio's waits for the socket's readiness, which a socket just registered has yet to report).
pub struct Connection {
    stream: TcpStream,
    addr: SocketAddr,
    /// Until a write went through, a write's error is the connect's.
    established: bool,
    own: Option<Arc<OwnSockets>>,
    _mark: Option<OwnSocket>,
}

impl Connection {
    async fn begin(
        addr: SocketAddr,
        own: Option<&Arc<OwnSockets>>,
        wait: bool,
    ) -> io::Result<Connection> {
        if let Some(own) = own {
            own.connecting();
        }
        let refused = |e| {
            if let Some(own) = own {
                own.refused();
            }
            e
        };
        let mut connection = Connection::start(addr, own).map_err(refused)?;
        if wait {
            connection.established().await.map_err(refused)?;
        }
        Ok(connection)
    }

    fn start(addr: SocketAddr, own: Option<&Arc<OwnSockets>>) -> io::Result<Connection> {
        let family = match addr {
            SocketAddr::V4(_) => AddressFamily::INET,
            SocketAddr::V6(_) => AddressFamily::INET6,
        };
        let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
        let fd = rustix::net::socket_with(family, SocketType::STREAM, flags, None)?;
        match rustix::net::connect(&fd, &addr) {
            Ok(()) | Err(Errno::INPROGRESS) => {}
            Err(e) => return Err(e.into()),
        }
        let stream = TcpStream::from_std(std::net::TcpStream::from(fd))?;
        let mark = match own {
            Some(own) => Some(own.mark(stream.local_addr()?)),
            None => None,
        };
        Ok(Connection {
            stream,
            addr,
            established: false,
            own: own.cloned(),
            _mark: mark,
        })
    }

    /// Waits for the handshake's end, as a blocking connect would.
    async fn established(&mut self) -> io::Result<()> {
        // Writable once connected, and also once failed; the socket's error tells which.
        self.stream.writable().await?;
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        self.established = true;
        Ok(())
    }

    /// Exchanges of more than one write each way (TLS, HTTP/2) must not wait for Nagle.
    pub fn no_delay(&self) {
        let _ = self.stream.set_nodelay(true);
    }

    fn write_with(
        &mut self,
        cx: &mut Context<'_>,
        now: impl FnOnce(BorrowedFd<'_>) -> Result<usize, Errno>,
        later: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if self.established {
            return later(Pin::new(&mut self.stream), cx);
        }
        let result = match now(self.stream.as_fd()) {
            // Still connecting: tokio's write waits for the socket.
            Err(Errno::AGAIN) => ready!(later(Pin::new(&mut self.stream), cx)),
            result => result.map_err(io::Error::from),
        };
        Poll::Ready(match result {
            Ok(n) => {
                self.established = true;
                Ok(n)
            }
            // The app's end existed and dropped the connection: not the connect's failure.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                ) =>
            {
                Err(e)
            }
            Err(source) => {
                if let Some(own) = self.own.take() {
                    own.refused();
                }
                let kind = source.kind();
                let addr = self.addr;
                Err(io::Error::new(kind, ConnectFailed { addr, source }))
            }
        })
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_with(
            cx,
            |fd| rustix::net::send(fd, buf, SendFlags::NOSIGNAL),
            |stream, cx| stream.poll_write(cx, buf),
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_with(
            cx,
            |fd| rustix::io::writev(fd, bufs),
            |stream, cx| stream.poll_write_vectored(cx, bufs),
        )
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn at(addr: SocketAddr) -> HostPort {
        HostPort {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    /// A port nothing listens on: one just let go.
    fn closed_port() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    }

    #[tokio::test]
    async fn a_refused_connect_found_by_the_first_write_is_the_connects_failure() {
        let addr = closed_port();
        let own = Arc::new(OwnSockets::default());
        let mut connection = connect(&at(addr), Some(&own), Connected::ByFirstWrite)
            .await
            .expect("the connect is left to the first write");
        let e = connection
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect_err("nothing listens");
        let failure = classify::chain(&e, Reason::InvalidResponse);
        assert_eq!(failure.reason, Reason::Refused);
        assert_eq!(
            failure.message,
            format!("{addr}: Connection refused (os error 111)")
        );
        assert_eq!(
            own.connects(),
            0,
            "a refused connect is no connection of ours"
        );
        // Waited for, the same connect fails the same way, at once.
        let waited = match connect(&at(addr), Some(&own), Connected::Now).await {
            Err(failure) => failure,
            Ok(_) => panic!("connected to a closed port"),
        };
        assert_eq!(waited, failure);
        assert_eq!(own.connects(), 0);
    }

    #[tokio::test]
    async fn the_first_write_reaches_the_app_and_the_answer_comes_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let app = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut asked = [0; 4];
            stream.read_exact(&mut asked).await.expect("read");
            stream.write_all(b"pong").await.expect("write");
            asked
        });
        let own = Arc::new(OwnSockets::default());
        let mut connection = connect(&at(addr), Some(&own), Connected::ByFirstWrite)
            .await
            .expect("connect");
        connection.write_all(b"ping").await.expect("write");
        let mut answer = [0; 4];
        connection.read_exact(&mut answer).await.expect("read");
        assert_eq!(&answer, b"pong");
        assert_eq!(&app.await.expect("app"), b"ping");
        assert_eq!(own.connects(), 1, "counted as ours");
    }
}
