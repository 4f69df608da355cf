//! The agent's listener through `crate::http_server`: a connection cap (at the cap, new clients
//! wait in the listen backlog), a short header read timeout, small buffers; and the stream caps,
//! in all and per pod.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use hyper::service::service_fn;
use tokio::net::TcpListener;

use super::Agent;
use crate::http_server::{self, Limit, Options};

/// Connections beyond the streams: probes, scrapes, and requests being refused.
const SPARE_CONNECTIONS: usize = 32;

/// Serves until the agent's shutdown, then stops accepting and lets each connection end (its
/// stream ends with the agent's shutdown too).
pub(super) async fn serve(listener: TcpListener, agent: Arc<Agent>, max_streams: usize) {
    // At shutdown every stream ends at once (it watches the agent's shutdown too); the grace
    // bounds a refusal or a scrape being written.
    let options = Options::small("node", Limit::Backlog(max_streams + SPARE_CONNECTIONS));
    let shutdown = agent.shutdown.clone();
    http_server::serve(listener, options, shutdown, move |_peer| {
        let agent = agent.clone();
        service_fn(move |req| {
            let agent = agent.clone();
            async move { Ok::<_, Infallible>(super::handle::handle(&agent, req).await) }
        })
    })
    .await;
}

/// The streams open, in all and per pod.
#[derive(Clone)]
pub(crate) struct Slots {
    cap: usize,
    per_pod: usize,
    open: Arc<Mutex<Open>>,
    gauge: prometheus::IntGauge,
}

#[derive(Default)]
struct Open {
    total: usize,
    pods: HashMap<String, usize>,
}

/// A stream's place; dropped when the stream ends.
pub(crate) struct Slot {
    slots: Slots,
    pod: String,
}

impl Slots {
    pub(crate) fn new(cap: usize, per_pod: usize, gauge: prometheus::IntGauge) -> Self {
        Slots {
            cap,
            per_pod,
            open: Arc::default(),
            gauge,
        }
    }

    /// A slot for one more stream of `pod` (namespace/name), unless a cap is reached.
    pub(crate) fn take(&self, pod: &str) -> Option<Slot> {
        let mut open = self.lock();
        let of_pod = open.pods.get(pod).copied().unwrap_or(0);
        if open.total >= self.cap || of_pod >= self.per_pod {
            return None;
        }
        open.total += 1;
        open.pods.insert(pod.to_owned(), of_pod + 1);
        self.gauge.set(open.total as i64);
        Some(Slot {
            slots: self.clone(),
            pod: pod.to_owned(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // Every update is a few integer writes: the counts stay usable after a holder panicked.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.pods.get_mut(&self.pod) {
            *n -= 1;
            if *n == 0 {
                open.pods.remove(&self.pod);
            }
        }
        self.slots.gauge.set(open.total as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_per_pod_and_in_all() {
        let gauge = prometheus::IntGauge::new("g", "g").unwrap();
        let slots = Slots::new(5, 2, gauge.clone());
        let a: Vec<_> = (0..2).filter_map(|_| slots.take("shop/a")).collect();
        assert_eq!(a.len(), 2);
        assert!(slots.take("shop/a").is_none(), "a third of one pod");
        let b: Vec<_> = (0..3)
            .filter_map(|_| slots.take(&format!("shop/b{}", 0)))
            .collect();
        assert_eq!(b.len(), 2);
        let c = slots.take("shop/c").unwrap();
        assert!(slots.take("shop/d").is_none(), "the cap in all");
        assert_eq!(gauge.get(), 5);
        drop((a, b, c));
        assert_eq!(gauge.get(), 0);
        assert!(slots.lock().pods.is_empty());
    }
}
