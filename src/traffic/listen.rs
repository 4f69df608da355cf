//! The app port's listening sockets, seen for overload: how full each accept queue is and how many
//! connections each dropped (sock_diag answers a LISTEN socket's queue length, backlog and
//! `sk_drops`: a dump finds the port's listeners, and each is then looked up by its id), and the
//! namespace's `ListenOverflows` and `ListenDrops`.

use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6};
use netlink_packet_sock_diag::inet::nlas::Nla;
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetResponse, StateFlags};

use super::diag::{listener, lookup, Known};
use crate::util::HeldFile;

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
    /// The listeners the last dump found, each looked up by its id (a hash lookup) until one is
    /// gone or replaced, or `DUMP_EVERY` looks have passed. Empty when they cannot be: none, or a
    /// SO_REUSEPORT group (a lookup finds one member of it).
    known: Vec<Known>,
    looks: u32,
    netstat: HeldFile,
}

/// A dump walks the kernel's whole listening hash, cold in the cache at one look a second, for
/// as much CPU as the rest of a look together; a lookup by id costs a hash probe. Dumps still come
/// this often, to find listeners opened beside the known ones (a lookup that finds another
/// member of a SO_REUSEPORT group, by its cookie, fails and dumps at once).
const DUMP_EVERY: u32 = 30;

impl ListenWatch {
    /// Without sock_diag the queues are unknown and only the counters are read.
    pub fn new(port: u16) -> Self {
        let socket = super::diag::netlink_socket()
            .inspect_err(|e| tracing::info!(error = %e, "sock_diag unavailable: the app port's accept queue is not watched"))
            .ok();
        ListenWatch {
            port,
            socket,
            known: Vec::new(),
            looks: 0,
            netstat: HeldFile::new("/proc/net/netstat"),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The namespace's listen counters (`/proc/net/netstat`, held open).
    pub fn counters(&mut self) -> std::io::Result<ListenCounters> {
        counters(&mut self.netstat)
    }

    /// The port's listeners by a lookup of each known one, when that is what this look should
    /// do: `None` when a dump is due instead (none known, one gone or replaced, or `DUMP_EVERY`
    /// looks since the last), which `queue` then makes. A lookup is answered within its send (an
    /// exact request, no walk): it may run where a dump should not, beside the probes.
    pub fn look_up(&mut self) -> Option<std::io::Result<ListenQueue>> {
        let socket = self.socket.as_mut()?;
        if self.known.is_empty() || self.looks.saturating_add(1) >= DUMP_EVERY {
            return None;
        }
        let mut queue = ListenQueue::default();
        let mut gone = false;
        let looked = lookup(
            socket,
            &self.known,
            ExtensionFlags::SKMEMINFO,
            |_, answer| match answer {
                Some(r) => add(&mut queue, r),
                None => gone = true,
            },
            || false,
        );
        match looked {
            // Closed, or replaced by a new socket (another cookie): the dump finds what is.
            Ok(()) if gone => {
                self.known.clear();
                None
            }
            Ok(()) => {
                self.looks += 1;
                Some(Ok(queue))
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// `None` without sock_diag, or when it fails. A lookup when one will do, else a dump.
    pub fn queue(&mut self) -> Option<std::io::Result<ListenQueue>> {
        if let Some(looked) = self.look_up() {
            return Some(looked);
        }
        let socket = self.socket.as_mut()?;
        let mut queue = ListenQueue::default();
        let mut found = Vec::new();
        for family in [AF_INET, AF_INET6] {
            let looked = super::diag::dump(socket, family, self.port, &StateFlags::LISTEN, |r| {
                add(&mut queue, r);
                found.push(listener(r));
            });
            if let Err(e) = looked {
                self.known.clear();
                return Some(Err(e));
            }
        }
        self.looks = 0;
        self.known = if one_each(&found) { found } else { Vec::new() };
        Some(Ok(queue))
    }
}

/// Adds one listener's answer to the port's.
fn add(queue: &mut ListenQueue, r: &InetResponse) {
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
}

/// Whether each listener is alone on its address: a lookup by address and port finds a
/// SO_REUSEPORT group's members one at a time, never all.
fn one_each(listeners: &[Known]) -> bool {
    listeners
        .iter()
        .enumerate()
        .all(|(i, a)| listeners[i + 1..].iter().all(|b| !a.same_address(b)))
}

/// Reads the counters; procfs has no parser for `/proc/net/netstat`.
fn counters(netstat: &mut HeldFile) -> std::io::Result<ListenCounters> {
    let text = String::from_utf8_lossy(netstat.read()?);
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

    /// A listener on 127.0.0.1 with `backlog`, SO_REUSEPORT set, on `port` (0: any).
    fn listen(port: u16, backlog: i32) -> rustix::fd::OwnedFd {
        use rustix::net::{
            bind, listen, socket_with, sockopt, AddressFamily, SocketFlags, SocketType,
        };
        // Close-on-exec, as std's sockets are: a process another test spawns meanwhile would
        // otherwise hold a dropped listener open, and the dump would find it beside its
        // replacement.
        let fd = socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        sockopt::set_socket_reuseport(&fd, true).unwrap();
        bind(&fd, &std::net::SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
        listen(&fd, backlog).unwrap();
        fd
    }

    fn port_of(fd: &rustix::fd::OwnedFd) -> u16 {
        let addr = rustix::net::getsockname(fd).unwrap();
        std::net::SocketAddr::try_from(addr).unwrap().port()
    }

    #[test]
    fn a_listener_is_looked_up_until_replaced_and_a_group_is_dumped() {
        let first = listen(0, 3);
        let port = port_of(&first);
        let mut watch = ListenWatch::new(port);
        if watch.socket.is_none() {
            return; // no sock_diag here: nothing to look at (start-up says so)
        }
        let look = |watch: &mut ListenWatch| watch.queue().unwrap().unwrap();
        assert_eq!(
            (look(&mut watch).listeners, look(&mut watch).backlog),
            (1, 3)
        );
        assert_eq!(
            (watch.known.len(), watch.looks),
            (1, 1),
            "the second look was a lookup"
        );
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(look(&mut watch).queued, 1, "a lookup sees the queue move");

        // Replaced: the lookup of the old one (by its cookie) fails, and a dump finds the new.
        drop((client, first));
        let second = listen(port, 7);
        assert_eq!(look(&mut watch).backlog, 7);
        assert_eq!(watch.looks, 0, "the look was a dump");

        // A listener opened beside a known one is found by the next dump, at the latest after
        // DUMP_EVERY looks; a SO_REUSEPORT group is dumped at every look from then on (a lookup
        // would find one member).
        let third = listen(port, 5);
        let mut looks = 1;
        while look(&mut watch).listeners < 2 {
            looks += 1;
            assert!(looks <= DUMP_EVERY, "the new listener never found");
        }
        for _ in 0..2 {
            let q = look(&mut watch);
            assert_eq!((q.listeners, q.backlog), (2, 12));
            assert!(watch.known.is_empty());
        }
        drop((second, third));
    }

    #[test]
    fn this_kernel_has_the_counters() {
        let mut netstat = HeldFile::new("/proc/net/netstat");
        assert!(counters(&mut netstat).is_ok());
        assert!(counters(&mut netstat).is_ok(), "read again, held open");
    }
}
