//! Sidewatch's own connections to the watched port (its probes'): the namespace's counters and
//! socket dumps see them as if they were the app's traffic, so they are taken out of both.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::{Sock, SockKey};

#[derive(Debug, Default)]
pub struct OwnSockets {
    /// Connects begun and not refused: each raises the namespace's PassiveOpens, though maybe
    /// only after it is counted here (so that the foreign opens never seem to rise for it).
    connects: AtomicU64,
    /// The local addresses of our connections, and whether our end is still open. The app's end
    /// of a closed one can outlive ours (CLOSE_WAIT, TIME_WAIT), so one is forgotten only once a
    /// dump no longer shows it.
    ends: Mutex<HashMap<SocketAddr, bool>>,
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
        let local = SocketAddr::new(super::unmap(local.ip()), local.port());
        self.lock().insert(local, true);
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

    /// Takes ours out of the app port's sockets (those whose peer is one of our ends); after a
    /// fresh dump, forgets the closed ends it no longer holds.
    pub(super) fn remove_from(&self, sockets: &mut HashMap<SockKey, Sock>, dumped: bool) {
        let mut ends = self.lock();
        if ends.is_empty() {
            return;
        }
        let mut seen = Vec::new();
        sockets.retain(|(_, remote), _| {
            let ours = ends.contains_key(remote);
            if ours {
                seen.push(*remote);
            }
            !ours
        });
        if dumped {
            ends.retain(|end, open| *open || seen.contains(end));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, bool>> {
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
        if let Some(open) = self.own.lock().get_mut(&self.local) {
            *open = false;
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
    fn ours_are_removed_and_forgotten_once_gone() {
        let own = Arc::new(OwnSockets::default());
        own.connecting();
        let guard = own.mark("127.0.0.1:40000".parse().unwrap());
        assert_eq!(own.connects(), 1);
        let mut dump: HashMap<_, _> = [
            (key("127.0.0.1:40000"), sock()),
            (key("10.0.0.5:40001"), sock()),
            // The same port from another address: not ours.
            (key("10.0.0.9:40000"), sock()),
            (key("127.0.0.6:40000"), sock()),
        ]
        .into();
        own.remove_from(&mut dump.clone(), true);
        let mut once = dump.clone();
        own.remove_from(&mut once, true);
        assert_eq!(once.len(), 3);
        assert!(!once.contains_key(&key("127.0.0.1:40000")));

        // Our end closed, the app's still shown: still ours.
        drop(guard);
        let mut again = dump.clone();
        own.remove_from(&mut again, true);
        assert_eq!(again.len(), 3);
        // Gone from a dump: forgotten (not from a reused one), and a later socket on the port is
        // not taken for ours.
        dump.remove(&key("127.0.0.1:40000"));
        own.remove_from(&mut dump.clone(), false);
        assert_eq!(own.lock().len(), 1);
        own.remove_from(&mut dump.clone(), true);
        assert!(own.lock().is_empty());
        let mut later: HashMap<_, _> = [(key("127.0.0.1:40000"), sock())].into();
        own.remove_from(&mut later, true);
        assert_eq!(later.len(), 1);
    }
}
