//! The kernel's sock_diag, for the app port's TCP sockets: dumps (a walk of a whole table) and
//! exact lookups by a socket's id (a hash lookup).

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::constants::{AF_INET, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::nlas::Nla;
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::protocols::NETLINK_SOCK_DIAG;

use super::{Sock, SockKey};

const TCP_LISTEN: u8 = 10;
const TCP_TIME_WAIT: u8 = 6;

pub fn netlink_socket() -> std::io::Result<netlink_sys::Socket> {
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
pub fn dump(
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
        for message in messages(&received[..size])? {
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
        }
    }
}

/// What an exact lookup of a listener in a sock_diag answer needs.
pub fn listener(response: &InetResponse) -> Known {
    Known {
        family: response.header.family,
        id: response.header.socket_id.clone(),
    }
}

/// A connection in a sock_diag answer (not the listener), by its two ends, and what an exact
/// lookup of it needs.
pub fn connection(response: &InetResponse) -> Option<(SockKey, Sock, Known)> {
    let id = &response.header.socket_id;
    let state = response.header.state;
    if state == TCP_LISTEN {
        return None;
    }
    let bytes_in = response.nlas.iter().find_map(|nla| match nla {
        Nla::TcpInfo(info) => Some(info.bytes_received),
        _ => None,
    });
    let key = (
        SocketAddr::new(unmap(id.source_address), id.source_port),
        SocketAddr::new(unmap(id.destination_address), id.destination_port),
    );
    let sock = Sock {
        open: state != TCP_TIME_WAIT,
        bytes_in,
    };
    let known = Known {
        family: response.header.family,
        id: id.clone(),
    };
    Some((key, sock, known))
}

/// What an exact lookup of a socket needs: its family and its id as the kernel gave it, with the
/// cookie, so that a later socket on the same two ends is not taken for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Known {
    family: u8,
    id: SocketId,
}

impl Known {
    /// The same family, address and port: another socket of a SO_REUSEPORT group, say.
    pub fn same_address(&self, other: &Known) -> bool {
        self.family == other.family
            && self.id.source_address == other.id.source_address
            && self.id.source_port == other.id.source_port
    }
}

/// How many lookups go in one message: their answers (with tcp_info, some 300 bytes each) stay
/// well inside the socket's receive buffer.
const LOOKUPS_AT_ONCE: usize = 64;

/// Asks the kernel for each of `known` by its id (a hash lookup each, however many sockets the
/// node holds), a batch at a time until `enough` says so; `each` gets each one's index in
/// `known` and its answer, `None` once it is gone.
pub fn lookup(
    socket: &mut netlink_sys::Socket,
    known: &[Known],
    extensions: ExtensionFlags,
    mut each: impl FnMut(usize, Option<&InetResponse>),
    mut enough: impl FnMut() -> bool,
) -> std::io::Result<()> {
    let mut received = Vec::with_capacity(64 * 1024);
    for (n, batch) in known.chunks(LOOKUPS_AT_ONCE).enumerate() {
        if n > 0 && enough() {
            break;
        }
        let first = n * LOOKUPS_AT_ONCE;
        let mut buf = Vec::new();
        for (i, k) in batch.iter().enumerate() {
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST;
            header.sequence_number = (first + i) as u32;
            let mut request = NetlinkMessage::new(
                header,
                SockDiagMessage::InetRequest(InetRequest {
                    family: k.family,
                    protocol: IPPROTO_TCP,
                    extensions: extensions.clone(),
                    states: StateFlags::all(),
                    socket_id: k.id.clone(),
                })
                .into(),
            );
            request.finalize();
            let start = buf.len();
            buf.resize(start + request.buffer_len(), 0);
            request.serialize(&mut buf[start..]);
        }
        socket.send(&buf, 0)?;
        // One answer each: the socket, or an error (ENOENT: it is gone).
        let mut answered = 0;
        while answered < batch.len() {
            received.clear();
            let size = socket.recv(&mut received, 0)?;
            for message in messages(&received[..size])? {
                let index = message.header.sequence_number as usize;
                if !(first..first + batch.len()).contains(&index) {
                    continue; // a late answer to an earlier request
                }
                match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                        answered += 1;
                        each(index, Some(&response));
                    }
                    NetlinkPayload::Error(e) => {
                        answered += 1;
                        use rustix::io::Errno;
                        let errno = Errno::from_raw_os_error(e.code.map_or(0, |c| -c.get()));
                        if errno != Errno::NOENT && errno != Errno::STALE {
                            return Err(errno.into());
                        }
                        each(index, None);
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// The netlink messages in one datagram.
fn messages(datagram: &[u8]) -> std::io::Result<Vec<NetlinkMessage<SockDiagMessage>>> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < datagram.len() {
        let message = <NetlinkMessage<SockDiagMessage>>::deserialize(&datagram[offset..])
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        let length = message.header.length as usize;
        out.push(message);
        if length == 0 {
            break;
        }
        offset += length;
    }
    Ok(out)
}

/// Dual-stack sockets report IPv4 peers as `::ffff:a.b.c.d`; keys use the plain form.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
