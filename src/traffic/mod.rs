//! The app port's traffic, seen from inside the pod's shared network namespace: open connections,
//! new connections and bytes in, from netlink `sock_diag` with `tcp_info`, or from
//! `/proc/net/tcp{,6}` (connections only) as the fallback. The drain asks it "quiet yet?".

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::nlas::Nla;
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use serde::{Deserialize, Serialize};

mod listen;
mod own;
pub use listen::{counters as listen_counters, ListenCounters, ListenQueue, ListenWatch};
pub use own::{OwnSocket, OwnSockets};

const TCP_LISTEN: u8 = 10;
const TCP_TIME_WAIT: u8 = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficSource {
    /// sock_diag when the kernel answers it, else /proc.
    Auto,
    SockDiag,
    Proc,
}

/// One socket on the app port, as one poll saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sock {
    /// Counts toward `sidewatch_app_connections` (not TIME_WAIT).
    pub open: bool,
    /// `tcpi_bytes_received`; `None` where the source cannot tell (TIME_WAIT, /proc).
    pub bytes_in: Option<u64>,
}

/// A socket's identity across polls: its two ends (unique while it exists).
pub type SockKey = (SocketAddr, SocketAddr);

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub sockets: HashMap<SockKey, Sock>,
    /// The namespace's TCP `PassiveOpens` less sidewatch's own (its server's accepts, its probes'
    /// connections to the port).
    pub passive_opens: Option<u64>,
    /// This look dumped the sockets (else it reused the last dump's).
    pub dumped: bool,
}

/// What changed between two polls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    pub new_connections: u64,
    pub bytes_in: u64,
    pub open: usize,
}

impl Activity {
    pub fn is_quiet(&self) -> bool {
        self.new_connections == 0 && self.bytes_in == 0
    }
}

/// New connections are sockets not seen at the previous poll, in any state (a TIME_WAIT socket
/// marks an arrival too), plus arrivals that left no socket behind: the rise of `PassiveOpens`
/// beyond the new sockets seen. Bytes in are the growth of each surviving socket's counter.
pub fn compare(prev: &Snapshot, next: &Snapshot) -> Activity {
    let mut activity = Activity {
        open: next.sockets.values().filter(|s| s.open).count(),
        ..Activity::default()
    };
    for (key, sock) in &next.sockets {
        match prev.sockets.get(key) {
            None => activity.new_connections += 1,
            Some(before) => {
                if let (Some(a), Some(b)) = (before.bytes_in, sock.bytes_in) {
                    activity.bytes_in += b.saturating_sub(a);
                }
            }
        }
    }
    if let (Some(a), Some(b)) = (prev.passive_opens, next.passive_opens) {
        activity.new_connections = activity.new_connections.max(b.saturating_sub(a));
    }
    activity
}

/// What a look must be able to tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// New connections and bytes in (a drain): the sockets are dumped whenever a segment came in.
    Bytes,
    /// The open connections only (the gauge between drains): dumped when a connection opened
    /// that was not sidewatch's own (a probe's, or one its server accepted), and at least every
    /// `CLOSES_SEEN_WITHIN` for the ones that closed, which no counter tells apart from
    /// sidewatch's own.
    Connections,
}

pub struct TrafficWatcher {
    port: u16,
    backend: Backend,
    /// The last full look, with the namespace's counters then. The socket dump walks the kernel's
    /// whole TCP hash, node-wide (milliseconds, however few sockets the pod has), so it is skipped
    /// when the counters say nothing it reports can have changed.
    last: Option<Last>,
    /// Sidewatch's own connections, which raise the namespace's PassiveOpens but are not app
    /// traffic: those its server accepted, and its probes' connections to the app port (taken
    /// out of the dumps too).
    own_accepts: Arc<AtomicU64>,
    own: Arc<OwnSockets>,
    passive_opens: bool,
}

/// How stale the open connections may be for closes, between drains.
pub const CLOSES_SEEN_WITHIN: Duration = Duration::from_secs(10);

struct Last {
    at: Instant,
    in_segs: u64,
    /// PassiveOpens less sidewatch's own.
    foreign_opens: u64,
    sockets: HashMap<SockKey, Sock>,
}

enum Backend {
    SockDiag(netlink_sys::Socket),
    Proc,
}

impl TrafficWatcher {
    /// Opens the chosen source; `auto` tries sock_diag with one real dump before settling on it.
    pub fn new(
        port: u16,
        source: TrafficSource,
        passive_opens: bool,
        own_accepts: Arc<AtomicU64>,
        own: Arc<OwnSockets>,
    ) -> std::io::Result<Self> {
        let backend = match source {
            TrafficSource::Proc => Backend::Proc,
            TrafficSource::SockDiag => Backend::SockDiag(netlink_socket()?),
            TrafficSource::Auto => match netlink_socket() {
                Ok(socket) => Backend::SockDiag(socket),
                Err(e) => {
                    tracing::info!(error = %e, "sock_diag unavailable; watching /proc/net/tcp");
                    Backend::Proc
                }
            },
        };
        let mut watcher = Self {
            port,
            backend,
            last: None,
            own_accepts,
            own,
            passive_opens,
        };
        if let Err(e) = watcher.snapshot(Need::Bytes) {
            if source != TrafficSource::Auto || matches!(watcher.backend, Backend::Proc) {
                return Err(e);
            }
            tracing::info!(error = %e, "sock_diag dump failed; watching /proc/net/tcp");
            watcher.backend = Backend::Proc;
            watcher.snapshot(Need::Bytes)?;
        }
        Ok(watcher)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// How it sees traffic, for the start-up log.
    pub fn describe(&self) -> String {
        let sockets = match self.backend {
            Backend::SockDiag(_) => "sock_diag (connections and tcp_info bytes in)",
            Backend::Proc => "/proc/net/tcp and tcp6 (connections only, no byte counts)",
        };
        let opens = if self.passive_opens {
            " + PassiveOpens of /proc/net/snmp for connections shorter than a poll"
        } else {
            ""
        };
        format!("{sockets}{opens}")
    }

    pub fn snapshot(&mut self, need: Need) -> std::io::Result<Snapshot> {
        let snmp = procfs::net::snmp().map_err(std::io::Error::other)?;
        let own = self.own_accepts.load(Ordering::Relaxed) + self.own.connects();
        let foreign_opens = snmp.tcp_passive_opens.saturating_sub(own);
        let unchanged = self.last.as_ref().is_some_and(|l| match need {
            // No segment in: no new connection, no byte in.
            Need::Bytes => l.in_segs == snmp.tcp_in_segs,
            // Segments in (the probes' own, at least) do not matter here; nor does a fall of the
            // foreign opens, which is our own connect counted before the kernel's.
            Need::Connections => {
                foreign_opens <= l.foreign_opens && l.at.elapsed() < CLOSES_SEEN_WITHIN
            }
        });
        let mut sockets = match &self.last {
            Some(last) if unchanged => last.sockets.clone(),
            _ => {
                let sockets = self.sockets()?;
                self.last = Some(Last {
                    at: Instant::now(),
                    in_segs: snmp.tcp_in_segs,
                    foreign_opens,
                    sockets: sockets.clone(),
                });
                sockets
            }
        };
        self.own.remove_from(&mut sockets, !unchanged);
        Ok(Snapshot {
            sockets,
            passive_opens: self.passive_opens.then_some(foreign_opens),
            dumped: !unchanged,
        })
    }

    fn sockets(&mut self) -> std::io::Result<HashMap<SockKey, Sock>> {
        let mut sockets = HashMap::new();
        match &mut self.backend {
            Backend::SockDiag(socket) => {
                let states = StateFlags::all() - StateFlags::LISTEN;
                for family in [AF_INET, AF_INET6] {
                    dump(socket, family, self.port, &states, |r| {
                        connection(r, &mut sockets)
                    })?;
                }
            }
            Backend::Proc => {
                let mut entries = procfs::net::tcp().map_err(std::io::Error::other)?;
                // Without IPv6 the file is absent: nothing listens there.
                entries.extend(procfs::net::tcp6().unwrap_or_default());
                for e in entries {
                    use procfs::net::TcpState;
                    if e.local_address.port() != self.port || e.state == TcpState::Listen {
                        continue;
                    }
                    let sock = Sock {
                        open: e.state != TcpState::TimeWait,
                        bytes_in: None,
                    };
                    let plain = |a: SocketAddr| SocketAddr::new(unmap(a.ip()), a.port());
                    sockets.insert((plain(e.local_address), plain(e.remote_address)), sock);
                }
            }
        }
        Ok(sockets)
    }
}

fn netlink_socket() -> std::io::Result<netlink_sys::Socket> {
    let mut socket = netlink_sys::Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    // The kernel answers a dump at once; the bound keeps a wedged answer from stalling the
    // watch runtime, which runs the probes too.
    rustix::net::sockopt::set_socket_timeout(
        &socket,
        rustix::net::sockopt::Timeout::Recv,
        Some(std::time::Duration::from_secs(1)),
    )?;
    Ok(socket)
}

/// One sock_diag dump of a family's TCP sockets on `port` in `states`, each answer to `each`.
fn dump(
    socket: &mut netlink_sys::Socket,
    family: u8,
    port: u16,
    states: &StateFlags,
    mut each: impl FnMut(&InetResponse),
) -> std::io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    // The kernel compares a dump's source port with each socket's before it builds an answer for
    // it: only the app port's sockets cross to user space, however many the namespace (or, for
    // the walk, the node) holds. The LISTEN table is walked only when LISTEN is asked for, and
    // the connections' only when another state is.
    socket_id.source_port = port;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            // A listener's drops are in its memory info; a connection's bytes in its tcp_info.
            extensions: if states.contains(StateFlags::LISTEN) {
                ExtensionFlags::SKMEMINFO
            } else {
                ExtensionFlags::INFO
            },
            states: StateFlags::from_bits_retain(states.bits()),
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut received = Vec::with_capacity(64 * 1024);
    loop {
        received.clear();
        let size = socket.recv(&mut received, 0)?;
        let mut offset = 0;
        while offset < size {
            let message = <NetlinkMessage<SockDiagMessage>>::deserialize(&received[offset..size])
                .map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
            })?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response))
                    if response.header.socket_id.source_port == port =>
                {
                    each(&response)
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => return Err(std::io::Error::other(e.to_string())),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// The connections in a dump's answer (not the listener), by their two ends.
fn connection(response: &InetResponse, out: &mut HashMap<SockKey, Sock>) {
    let id = &response.header.socket_id;
    let state = response.header.state;
    if state == TCP_LISTEN {
        return;
    }
    let bytes_in = response.nlas.iter().find_map(|nla| match nla {
        Nla::TcpInfo(info) => Some(info.bytes_received),
        _ => None,
    });
    let key = (
        SocketAddr::new(unmap(id.source_address), id.source_port),
        SocketAddr::new(unmap(id.destination_address), id.destination_port),
    );
    out.insert(
        key,
        Sock {
            open: state != TCP_TIME_WAIT,
            bytes_in,
        },
    );
}

/// Dual-stack sockets report IPv4 peers as `::ffff:a.b.c.d`; keys use the plain form.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests;
