//! The app port's listening sockets, seen for overload: how full each accept queue is and how many
//! connections each dropped (sock_diag answers a LISTEN socket's queue length, backlog and
//! `sk_drops`; the listen table alone is walked, some tens of microseconds), and the namespace's
//! `ListenOverflows` and `ListenDrops`.

use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6};
use netlink_packet_sock_diag::inet::nlas::Nla;
use netlink_packet_sock_diag::inet::StateFlags;

/// The port's listeners at one look; several with SO_REUSEPORT, or one per family.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ListenQueue {
    pub listeners: u32,
    /// Connections accepted by the kernel and not yet by the app, summed over the listeners.
    pub queued: u64,
    /// The listeners' backlogs, summed: the kernel drops SYNs once a queue passes its own.
    pub backlog: u64,
    /// The fullest listener's queue over its backlog.
    pub fullest: f64,
    /// Connections the listeners dropped (a full accept or SYN queue, mostly), since they opened.
    pub drops: u64,
}

/// The namespace's TCP listen counters (`/proc/net/netstat`, TcpExt): per pod in a pod's own
/// network namespace, the node's with hostNetwork.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenCounters {
    /// SYNs or handshakes dropped because an accept queue was full.
    pub overflows: u64,
    /// Every dropped incoming connection, overflows included.
    pub drops: u64,
}

pub struct ListenWatch {
    port: u16,
    socket: Option<netlink_sys::Socket>,
}

impl ListenWatch {
    /// Without sock_diag the queues are unknown and only the counters are read.
    pub fn new(port: u16) -> Self {
        let socket = super::diag::netlink_socket()
            .inspect_err(|e| tracing::info!(error = %e, "sock_diag unavailable: the app port's accept queue is not watched"))
            .ok();
        ListenWatch { port, socket }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `None` without sock_diag, or when it fails.
    pub fn queue(&mut self) -> Option<std::io::Result<ListenQueue>> {
        let socket = self.socket.as_mut()?;
        let mut queue = ListenQueue::default();
        for family in [AF_INET, AF_INET6] {
            let looked = super::diag::dump(socket, family, self.port, &StateFlags::LISTEN, |r| {
                let (queued, backlog) = (r.header.recv_queue, r.header.send_queue);
                queue.listeners += 1;
                queue.queued += u64::from(queued);
                queue.backlog += u64::from(backlog);
                // A backlog of 0 still queues one connection.
                let fullness = f64::from(queued) / f64::from(backlog.max(1));
                queue.fullest = queue.fullest.max(fullness);
                for nla in &r.nlas {
                    if let Nla::MemInfo(memory) = nla {
                        queue.drops += u64::from(memory.drops);
                    }
                }
            });
            if let Err(e) = looked {
                return Some(Err(e));
            }
        }
        Some(Ok(queue))
    }
}

/// Reads the counters; procfs has no parser for `/proc/net/netstat`.
pub fn counters() -> std::io::Result<ListenCounters> {
    let text = std::fs::read_to_string("/proc/net/netstat")?;
    parse_netstat(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "/proc/net/netstat has no TcpExt ListenOverflows and ListenDrops",
        )
    })
}

/// The file pairs a line of names with a line of values, per protocol.
fn parse_netstat(text: &str) -> Option<ListenCounters> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?.split_whitespace().skip(1);
    let values = lines.next()?.split_whitespace().skip(1);
    let (mut overflows, mut drops) = (None, None);
    for (name, value) in names.zip(values) {
        match name {
            "ListenOverflows" => overflows = value.parse().ok(),
            "ListenDrops" => drops = value.parse().ok(),
            _ => {}
        }
    }
    Some(ListenCounters {
        overflows: overflows?,
        drops: drops?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listen_counters_are_read_by_name() {
        // A kernel 6.1 file, cut down, the counters not where 5.x puts them.
        let text =
            "TcpExt: SyncookiesSent SyncookiesRecv ListenDrops EmbryonicRsts ListenOverflows\n\
                    TcpExt: 0 0 17 3 12\n\
                    IpExt: InNoRoutes InTruncatedPkts\n\
                    IpExt: 0 0\n";
        assert_eq!(
            parse_netstat(text),
            Some(ListenCounters {
                overflows: 12,
                drops: 17
            })
        );
        assert_eq!(parse_netstat("IpExt: InNoRoutes\nIpExt: 0\n"), None);
        assert_eq!(parse_netstat("TcpExt: ListenOverflows\nTcpExt: x\n"), None);
    }

    #[test]
    fn this_kernel_has_the_counters() {
        assert!(counters().is_ok());
    }
}
