//! The connection cap that evicts (the admin port's): at the cap, admitting a connection closes
//! one that is not inside a request (so idle, or still sending its headers), taken from the client
//! address that holds the most connections, its oldest first. One client that opens many
//! connections loses its own, and the kubelet's probe from the node's address always gets in. A
//! connection inside a request, a held `/drain` above all, is never closed.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The open connections, oldest first, and the metrics of what clients hold.
#[derive(Clone)]
pub struct Evict {
    cap: usize,
    open: Arc<Mutex<Open>>,
    connections: prometheus::IntGauge,
    evictions: prometheus::IntCounter,
}

#[derive(Default)]
struct Open {
    next: u64,
    slots: BTreeMap<u64, Entry>,
}

struct Entry {
    peer: IpAddr,
    busy: Arc<AtomicBool>,
    /// Dropping it closes the connection.
    _evict: oneshot::Sender<()>,
}

/// A connection's place in `Evict`; dropped when the connection ends.
pub(super) struct Slot {
    id: u64,
    pub(super) busy: Arc<AtomicBool>,
    evict: Evict,
}

impl Evict {
    /// `connections` follows the count open; `evictions` counts the connections closed at the cap.
    pub fn new(
        cap: usize,
        connections: prometheus::IntGauge,
        evictions: prometheus::IntCounter,
    ) -> Self {
        Evict {
            cap: cap.max(1),
            open: Arc::default(),
            connections,
            evictions,
        }
    }

    /// Registers a new connection, closing another (`Open::victim`) if the cap is reached. The
    /// receiver completes when this connection is closed in turn.
    pub(super) fn admit(&self, peer: IpAddr) -> (Slot, oneshot::Receiver<()>) {
        let (evict, evicted) = oneshot::channel();
        let busy = Arc::new(AtomicBool::new(false));
        let mut open = self.lock();
        if open.slots.len() >= self.cap {
            if let Some(id) = open.victim() {
                open.slots.remove(&id);
                self.evictions.inc();
            }
        }
        let id = open.next;
        open.next += 1;
        open.slots.insert(
            id,
            Entry {
                peer,
                busy: busy.clone(),
                _evict: evict,
            },
        );
        self.connections.set(open.slots.len() as i64);
        let slot = Slot {
            id,
            busy,
            evict: self.clone(),
        };
        (slot, evicted)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // The map stays consistent even if a holder panicked: every update is a single insert or remove.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Open {
    /// The connection to close: not inside a request, of the address with the most connections,
    /// the oldest of those.
    fn victim(&self) -> Option<u64> {
        let mut per_peer: HashMap<IpAddr, usize> = HashMap::new();
        for entry in self.slots.values() {
            *per_peer.entry(entry.peer).or_default() += 1;
        }
        let idle = self
            .slots
            .iter()
            .filter(|(_, e)| !e.busy.load(Ordering::Acquire));
        // max_by_key keeps the last of equals; reversed, that is the oldest.
        idle.rev()
            .max_by_key(|(_, e)| per_peer.get(&e.peer).copied().unwrap_or(0))
            .map(|(id, _)| *id)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.evict.lock();
        open.slots.remove(&self.id);
        self.evict.connections.set(open.slots.len() as i64);
    }
}

/// Marks a connection busy while one of its requests is being answered.
pub(super) struct Busy(Arc<AtomicBool>);

impl Busy {
    pub(super) fn enter(flag: &Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Release);
        Busy(flag.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_victim_is_the_oldest_idle_connection_of_the_busiest_client() {
        let gauge = prometheus::IntGauge::new("g", "g").unwrap();
        let counter = prometheus::IntCounter::new("c", "c").unwrap();
        let c = Evict::new(4, gauge.clone(), counter.clone());
        let (node, attacker) = ("10.0.0.1".parse().unwrap(), "10.1.2.3".parse().unwrap());
        let (_kubelet, _) = c.admit(node);
        let (held, _) = c.admit(attacker);
        let busy = Busy::enter(&held.busy);
        let (next, _) = c.admit(attacker);
        let (_newest, _) = c.admit(attacker);
        assert_eq!(c.lock().victim(), Some(next.id));
        drop(busy);
        assert_eq!(c.lock().victim(), Some(held.id));
        // At the cap, admitting closes the victim and keeps the count.
        let (_admitted, _) = c.admit(node);
        assert_eq!(counter.get(), 1);
        assert_eq!(gauge.get(), 4);
        assert_eq!(c.lock().slots.len(), 4);
        assert!(!c.lock().slots.contains_key(&held.id));
    }
}
