//! The TCP probe: a connect, and nothing sent; plus the connect the other probes share.

use std::net::SocketAddr;
use std::sync::Arc;

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
        connect(&self.address, own).await.map(drop)
    }
}

/// Connects to the first of the address's IPs that answers; the last error otherwise. With
/// `own`, the connection is marked as sidewatch's, for the traffic watch, until the mark drops.
pub async fn connect(
    address: &HostPort,
    own: Option<&Arc<OwnSockets>>,
) -> Result<(TcpStream, Option<OwnSocket>), Failure> {
    let addrs: Vec<_> = tokio::net::lookup_host((address.host.as_str(), address.port))
        .await
        .map_err(|e| Failure::new(Reason::Dns, format!("{address}: {e}")))?
        .collect();
    let mut last = None;
    for addr in addrs {
        match connect_one(addr, own).await {
            Ok(connected) => return Ok(connected),
            Err(e) => last = Some(classify::connect(&addr.to_string(), &e)),
        }
    }
    Err(last.unwrap_or_else(|| Failure::new(Reason::Dns, format!("{address}: no address"))))
}

async fn connect_one(
    addr: SocketAddr,
    own: Option<&Arc<OwnSockets>>,
) -> std::io::Result<(TcpStream, Option<OwnSocket>)> {
    if let Some(own) = own {
        own.connecting();
    }
    let stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(e) => {
            if let Some(own) = own {
                own.refused();
            }
            return Err(e);
        }
    };
    // A probe's few small writes must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let mark = match own {
        Some(own) => Some(own.mark(stream.local_addr()?)),
        None => None,
    };
    Ok((stream, mark))
}
