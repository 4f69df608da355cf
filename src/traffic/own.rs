//! Sidewatch's own connections to the watched port (its probes'): the namespace's counters and
//! socket dumps see them as if they were the app's traffic, so they are taken out of both.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Sock, SockKey};

/// Linux holds a TCP socket in TIME_WAIT for 60 s (TCP_TIMEWAIT_LEN, not tunable).
const LINGER: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct OwnSockets {
    /// Connects begun and not refused: each raises the namespace's PassiveOpens, though maybe
    /// only after it is counted here (so that the foreign opens never seem to rise for it).
    connects: AtomicU64,
    /// The local addresses of our connections, and when our end closed. The app's end of a
    /// closed one can outlive ours (TIME_WAIT, when the app closed first), so one is forgotten
    /// only once that cannot be.
    ends: Mutex<HashMap<SocketAddr, Option<Instant>>>,
}

impl OwnSockets {
    /// Before a connect.
    pub fn connecting(&self) {
        self.connects.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the connection from `local` as ours until the returned guard drops. A dump that
    /// ran while it connected may hold it unmarked; each look takes ours out again, so such a
    /// dump miscounts one look at most.
    pub fn mark(self: &Arc<Self>, local: SocketAddr) -> OwnSocket {
        let local = SocketAddr::new(super::diag::unmap(local.ip()), local.port());
        self.lock().insert(local, None);
        OwnSocket {
            own: self.clone(),
            local,
        }
    }

    /// The connect failed: the app's end never existed.
    pub fn refused(&self) {
        self.connects.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Takes ours out of the app port's sockets (those whose peer is one of our ends).
    pub(super) fn remove_from(&self, sockets: &mut HashMap<SockKey, Sock>, now: Instant) {
        let mut ends = self.lock();
        ends.retain(|_, closed| closed.is_none_or(|at| now.saturating_duration_since(at) < LINGER));
        if !ends.is_empty() {
            sockets.retain(|(_, remote), _| !ends.contains_key(remote));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Option<Instant>>> {
        // The map holds no invariant a panic could break halfway.
        self.ends.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One of our connections, while our end is open.
#[derive(Debug)]
pub struct OwnSocket {
    own: Arc<OwnSockets>,
    local: SocketAddr,
}

impl Drop for OwnSocket {
    fn drop(&mut self) {
        if let Some(closed) = self.own.lock().get_mut(&self.local) {
            *closed = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock() -> Sock {
        Sock {
            open: true,
            bytes_in: Some(1),
        }
    }

    fn key(remote: &str) -> SockKey {
        ("10.0.0.5:8080".parse().unwrap(), remote.parse().unwrap())
    }

    #[test]
    fn ours_are_removed_until_their_app_end_cannot_linger() {
        let own = Arc::new(OwnSockets::default());
        own.connecting();
        let guard = own.mark("127.0.0.1:40000".parse().unwrap());
        assert_eq!(own.connects(), 1);
        let dump: HashMap<_, _> = [
            (key("127.0.0.1:40000"), sock()),
            (key("10.0.0.5:40001"), sock()),
            // The same port from another address: not ours.
            (key("10.0.0.9:40000"), sock()),
            (key("127.0.0.6:40000"), sock()),
        ]
        .into();
        let now = Instant::now();
        let look = |at: Instant| {
            let mut sockets = dump.clone();
            own.remove_from(&mut sockets, at);
            sockets
        };
        assert_eq!(look(now).len(), 3);
        assert!(!look(now).contains_key(&key("127.0.0.1:40000")));
        // Our end closed: the app's may still be there for a minute, and is still ours.
        drop(guard);
        assert_eq!(look(Instant::now() + Duration::from_secs(59)).len(), 3);
        // Then forgotten: a later socket on that address is not taken for ours.
        assert_eq!(look(Instant::now() + Duration::from_secs(61)).len(), 4);
        assert!(own.lock().is_empty());
    }
}
