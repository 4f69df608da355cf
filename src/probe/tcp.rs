//! The TCP probe: a connect, and nothing sent; plus the connect the other probes share.

use tokio::net::TcpStream;

use super::config::{HostPort, TcpCheck};
use super::{classify, Failure};
use crate::reason::Reason;

pub struct TcpProber {
    address: HostPort,
}

impl TcpProber {
    pub fn new(check: &TcpCheck) -> Self {
        TcpProber {
            address: check.address.clone(),
        }
    }

    pub async fn check(&self) -> Result<(), Failure> {
        connect(&self.address).await.map(drop)
    }
}

/// Connects to the first of the address's IPs that answers; the last error otherwise.
pub async fn connect(address: &HostPort) -> Result<TcpStream, Failure> {
    let addrs: Vec<_> = tokio::net::lookup_host((address.host.as_str(), address.port))
        .await
        .map_err(|e| Failure::new(Reason::Dns, format!("{address}: {e}")))?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // A probe's few small writes must not wait for Nagle.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some(classify::connect(&addr.to_string(), &e)),
        }
    }
    Err(last.unwrap_or_else(|| Failure::new(Reason::Dns, format!("{address}: no address"))))
}
