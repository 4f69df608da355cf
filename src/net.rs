//! Small network helpers shared by the admin server, the drain and the webhook.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpListener;

/// Binds `addr`. The wildcard `[::]` (both families, so that an IPv6-only pod is reachable on
/// its address) falls back to `0.0.0.0` on a kernel without IPv6, with one log line.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Err(e) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && no_ipv6(&e) => {
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::info!(error = %e, fallback = %v4, "no IPv6 here: listening on IPv4 only");
            TcpListener::bind(v4).await
        }
        other => other,
    }
}

fn no_ipv6(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let errno = e.raw_os_error();
    errno == Some(Errno::AFNOSUPPORT.raw_os_error())
        || errno == Some(Errno::ADDRNOTAVAIL.raw_os_error())
}

/// Loopback in either family, including IPv4-mapped IPv6 (`::ffff:127.0.0.1`) from dual-stack sockets.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_recognised_in_every_form() {
        for ip in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.0.0.1",
            "192.168.1.1",
            "::ffff:10.0.0.1",
            "fe80::1",
            "0.0.0.0",
        ] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn the_dual_stack_wildcard_binds() {
        let listener = bind("[::]:0".parse().unwrap()).await.unwrap();
        assert!(listener.local_addr().unwrap().ip().is_unspecified());
    }
}
