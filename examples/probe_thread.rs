//! A measurement, not part of sidewatch: the HTTP probe as a thread of its own with blocking
//! sockets and hyper driven over them, the restructure BENCHMARKS.md section 12.1 weighs against
//! the event loop sidewatch's probes share. `bench/probe_thread.py` runs it beside
//! `bench/floor.c`, in rounds, as `bench/cpu_probe.py` runs sidewatch.
//!
//! Each check, on a fixed grid of INTERVAL_US: a blocking connect; the two socket timeouts and
//! the local address a product probe would need (its timeout, the traffic watch's mark); the
//! GET sidewatch sends, through hyper's HTTP/1.1 client; the whole answer read; close. Reads
//! block only while the answer is awaited: hyper's dispatcher reads before it writes and after
//! the answer, and those reads must not wait for the app. It leaves out what a product would
//! add, whose cost this does not count: a read that waits again for an answer split over
//! several packets, the result's hand-off to the engine, and TLS and HTTP/2.
//!
//!   cargo run --release --example probe_thread -- PORT PATH INTERVAL_US SECONDS
//!
//! Prints "checks N failed F ran_us R" as floor.c does: its CPU, as the scheduler counts it,
//! over the checks after a warm-up of 50.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustix::io::Errno;
use rustix::net::RecvFlags;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const WARM_UP: u64 = 50;

struct Blocking {
    stream: TcpStream,
    /// A write went out and its answer is awaited: the next read may block.
    awaiting: bool,
}

impl AsyncRead for Blocking {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let unfilled = buf.initialize_unfilled();
        let n = if std::mem::take(&mut this.awaiting) {
            this.stream.read(unfilled)?
        } else {
            match rustix::net::recv(&this.stream, unfilled, RecvFlags::DONTWAIT) {
                Ok((n, _)) => n,
                Err(Errno::AGAIN) => {
                    // Nothing to read yet: let the other half of the exchange run.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Blocking {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.awaiting = true;
        Poll::Ready(this.stream.write(b))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn check(
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<bool, Box<dyn std::error::Error>> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let _mark = stream.local_addr()?;
    let io = TokioIo::new(Blocking {
        stream,
        awaiting: false,
    });
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    let mut request = http::Request::new(Empty::<Bytes>::new());
    *request.uri_mut() = path.parse()?;
    let headers = request.headers_mut();
    headers.insert(http::header::HOST, format!("127.0.0.1:{port}").parse()?);
    headers.insert(
        http::header::USER_AGENT,
        concat!("sidewatch/", env!("CARGO_PKG_VERSION")).parse()?,
    );
    headers.insert(http::header::ACCEPT, http::HeaderValue::from_static("*/*"));
    let answer = async {
        let response = sender.send_request(request).await?;
        let ok = response.status().is_success();
        response.into_body().collect().await?;
        Ok::<_, hyper::Error>(ok)
    };
    tokio::pin!(connection, answer);
    // The connection runs until the app closes it, which a keep-alive app does not: the answer
    // ends the check.
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            ok = &mut answer => return Ok(ok?),
            ended = &mut connection, if open => {
                ended?;
                open = false;
            }
        }
    }
}

fn ran_ns() -> io::Result<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    stat.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .ok_or_else(|| io::Error::other("unreadable schedstat"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, port, path, interval_us, seconds] = &args[..] else {
        return Err("usage: probe_thread PORT PATH INTERVAL_US SECONDS".into());
    };
    let port: u16 = port.parse()?;
    let interval = Duration::from_micros(interval_us.parse()?);
    let run_for = Duration::from_secs(seconds.parse()?);
    // No I/O or timer driver: every await is answered by a blocking call or a self-wake.
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let (mut checks, mut failed, mut ran_from) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let mut next = start;
    while start.elapsed() < run_for {
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        if checks == WARM_UP {
            ran_from = ran_ns()?;
        }
        let ok = runtime.block_on(check(port, path, interval.max(Duration::from_millis(500))));
        checks += 1;
        if checks > WARM_UP && !matches!(ok, Ok(true)) {
            failed += 1;
        }
    }
    let counted = checks.saturating_sub(WARM_UP).max(1);
    let ran_us = (ran_ns()? - ran_from) / 1000;
    println!("checks {counted} failed {failed} ran_us {ran_us}");
    Ok(())
}
