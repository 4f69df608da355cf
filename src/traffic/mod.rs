//! The app port's traffic, seen from inside the pod's shared network namespace: open connections,
//! new connections and bytes in, from netlink `sock_diag` with `tcp_info`, or from
//! `/proc/net/tcp{,6}` (connections only) as the fallback. The drain asks it "quiet yet?".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6};
use netlink_packet_sock_diag::inet::StateFlags;
use procfs::FromBufRead;
use serde::{Deserialize, Serialize};

mod diag;
mod listen;
mod own;
pub use listen::{ListenCounters, ListenQueue, ListenWatch};
pub use own::{OwnSocket, OwnSockets};

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
    /// New connections and bytes in, every poll (a drain).
    Bytes,
    /// The open connections now (the gauge between drains, refreshed once in
    /// `CONNECTIONS_SEEN_WITHIN`): a lookup, or a dump after arrivals (and once in
    /// `DUMP_WITHIN`).
    Connections,
    /// Every socket, whatever the counters say: a drain's last look before it ends by quiet.
    /// The kernel counts a connection to sidewatch's own server before sidewatch has accepted
    /// it; a dump then takes it for an arrival it has learnt, and an app arrival after it looks
    /// known, its socket unseen by the lookups that follow.
    All,
}

/// How a look gets the app port's sockets. A dump walks the kernel's whole TCP hash, node-wide
/// (milliseconds, however few sockets the pod has); a lookup asks for each known socket by its
/// id (a hash lookup each); the counters of `/proc/net/snmp` say when neither is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Look {
    Reuse,
    Lookup,
    Dump,
}

/// The choice, from the counters: `opens` are the namespace's PassiveOpens less sidewatch's own;
/// `exact` says lookups can be trusted to see everything (sock_diag, with the opens counted).
fn plan(need: Need, last: &Last, in_segs: u64, opens: u64, exact: bool) -> Look {
    // Arrivals since the last dump: sockets it does not know.
    let unknown = opens > last.dumped_opens;
    match need {
        Need::All => Look::Dump,
        Need::Connections if last.dumped_at.elapsed() >= DUMP_WITHIN => Look::Dump,
        // No segment in: no new connection, no byte in.
        Need::Bytes if in_segs == last.in_segs => Look::Reuse,
        // Arrivals now: the opens say there was traffic; the new sockets are learnt once the
        // arrivals stop, by the one dump then.
        Need::Bytes if exact && opens > last.opens => Look::Reuse,
        _ if exact && !unknown => Look::Lookup,
        _ => Look::Dump,
    }
}

pub struct TrafficWatcher {
    port: u16,
    backend: Backend,
    /// The sockets as last seen, with the namespace's counters then.
    last: Option<Last>,
    /// Sidewatch's own connections, which raise the namespace's PassiveOpens but are not app
    /// traffic: those its server accepted, and its probes' connections to the app port (taken
    /// out of the dumps too).
    own_accepts: Arc<AtomicU64>,
    own: Arc<OwnSockets>,
    passive_opens: bool,
    /// `/proc/net/snmp`, read at every look.
    snmp: crate::util::HeldFile,
}

/// How stale `sidewatch_app_connections` may be between drains: the drain's idle look comes this
/// often, and does one dump or lookup, whatever the app's traffic.
pub const CONNECTIONS_SEEN_WITHIN: Duration = Duration::from_secs(10);

/// How long a connection the counters hid (see `Need::All`) can stay out of
/// `sidewatch_app_connections`: the look between drains dumps at least this often.
const DUMP_WITHIN: Duration = Duration::from_secs(60);

struct Last {
    /// Of the last dump (a lookup leaves it).
    dumped_at: Instant,
    /// The counters at the previous look, whatever it did.
    in_segs: u64,
    opens: u64,
    /// The opens at the last dump.
    dumped_opens: u64,
    sockets: HashMap<SockKey, Sock>,
    known: HashMap<SockKey, diag::Known>,
    hot: Hot,
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
            TrafficSource::SockDiag => Backend::SockDiag(diag::netlink_socket()?),
            TrafficSource::Auto => match diag::netlink_socket() {
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
            snmp: crate::util::HeldFile::new("/proc/net/snmp"),
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
        let snmp =
            procfs::net::Snmp::from_buf_read(self.snmp.read()?).map_err(std::io::Error::other)?;
        let own = self.own_accepts.load(Ordering::Relaxed) + self.own.connects();
        let opens = snmp.tcp_passive_opens.saturating_sub(own);
        let exact = self.passive_opens && matches!(self.backend, Backend::SockDiag(_));
        let look = self.last.as_ref().map_or(Look::Dump, |last| {
            plan(need, last, snmp.tcp_in_segs, opens, exact)
        });
        let now = Instant::now();
        // Taken out: a look that fails leaves none, and the next one dumps.
        let mut last = match (look, self.last.take()) {
            (Look::Reuse, Some(last)) => last,
            (Look::Lookup, Some(mut last)) => {
                self.lookup(&mut last, need)?;
                last
            }
            _ => {
                let (sockets, known) = self.dump()?;
                Last {
                    dumped_at: now,
                    in_segs: 0,
                    opens: 0,
                    dumped_opens: opens,
                    sockets,
                    known,
                    hot: Vec::new(),
                }
            }
        };
        last.in_segs = snmp.tcp_in_segs;
        last.opens = opens;
        let mut sockets = last.sockets.clone();
        self.own.remove_from(&mut sockets, now);
        self.last = Some(last);
        Ok(Snapshot {
            sockets,
            passive_opens: self.passive_opens.then_some(opens),
            dumped: look == Look::Dump,
        })
    }

    /// Every socket on the port, with what a lookup of each needs.
    fn dump(&mut self) -> std::io::Result<(Sockets, Knowns)> {
        let (mut sockets, mut known) = (HashMap::new(), HashMap::new());
        match &mut self.backend {
            Backend::SockDiag(socket) => {
                // Only the listeners' families hold the port's connections (a dual-stack
                // listener's IPv4 peers are IPv6 sockets): a walk of the hash each spared. The
                // listen table's walk is some tens of microseconds.
                let mut families = Vec::new();
                for family in [AF_INET, AF_INET6] {
                    let mut listening = false;
                    diag::dump(socket, family, self.port, &StateFlags::LISTEN, |_| {
                        listening = true
                    })?;
                    if listening {
                        families.push(family);
                    }
                }
                if families.is_empty() {
                    families = vec![AF_INET, AF_INET6];
                }
                let states = StateFlags::all() - StateFlags::LISTEN;
                for family in families {
                    diag::dump(socket, family, self.port, &states, |r| {
                        if let Some((key, sock, id)) = diag::connection(r) {
                            sockets.insert(key, sock);
                            known.insert(key, id);
                        }
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
                    let plain = |a: SocketAddr| SocketAddr::new(diag::unmap(a.ip()), a.port());
                    sockets.insert((plain(e.local_address), plain(e.remote_address)), sock);
                }
            }
        }
        Ok((sockets, known))
    }

    /// The last look's open sockets asked for again: those gone are left out, no new one can
    /// show. The closed ones (TIME_WAIT) are kept as they were, so that a later dump does not
    /// count them as arrivals again. For `Need::Bytes` it stops at the first batch that shows
    /// bytes in, the sockets that had them last asked first: the rest keep their last counts,
    /// and their bytes show at a later look, so none is lost from the drain's total.
    fn lookup(&mut self, last: &mut Last, need: Need) -> std::io::Result<()> {
        let Backend::SockDiag(socket) = &mut self.backend else {
            (last.sockets, last.known) = self.dump()?;
            last.hot.clear();
            return Ok(());
        };
        let mut keys: Vec<SockKey> = last
            .hot
            .iter()
            .filter(|k| last.sockets.contains_key(k))
            .copied()
            .collect();
        keys.extend(
            last.sockets
                .iter()
                .filter(|(key, sock)| sock.open && !last.hot.contains(key))
                .map(|(key, _)| *key),
        );
        let (keys, ids): (Vec<SockKey>, Vec<diag::Known>) = keys
            .into_iter()
            .filter_map(|key| Some((key, last.known.get(&key)?.clone())))
            .unzip();
        let mut hot = Vec::new();
        let found = std::cell::Cell::new(false);
        let (sockets, known) = (&mut last.sockets, &mut last.known);
        diag::lookup(
            socket,
            &ids,
            netlink_packet_sock_diag::inet::ExtensionFlags::INFO,
            |i, answer| {
                let key = keys[i];
                match answer.and_then(diag::connection) {
                    Some((_, sock, _)) => {
                        let before = sockets.get(&key).and_then(|s| s.bytes_in);
                        if sock.bytes_in.is_some() && sock.bytes_in != before {
                            hot.push(key);
                            found.set(true);
                        }
                        sockets.insert(key, sock);
                    }
                    None => {
                        sockets.remove(&key);
                        known.remove(&key);
                    }
                }
            },
            || need == Need::Bytes && found.get(),
        )?;
        last.hot = hot;
        Ok(())
    }
}

/// The sockets that had bytes in at the last lookup.
type Hot = Vec<SockKey>;
type Sockets = HashMap<SockKey, Sock>;
type Knowns = HashMap<SockKey, diag::Known>;

#[cfg(test)]
mod tests;
