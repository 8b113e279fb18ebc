//! Boot events: what the boot server saw of each MAC (DHCP messages, TFTP files, and what the
//! API adds: `/boot` fetches, the agent's claim), handed to a [`BootEventSink`] in batches
//! off the hot path. Recording never waits: events go into a bounded channel, and when it is
//! full the event is counted as dropped (`rackshare_boot_events_dropped_total`), so DHCP and
//! TFTP never slow down for the record of themselves.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::mac::MacAddr;
use crate::metrics::Metrics;

/// Events waiting for the writer; beyond this they are dropped and counted.
pub const BOOT_EVENT_QUEUE: usize = 4096;
/// Events per batch handed to the sink.
const BATCH: usize = 256;
/// Addresses remembered for naming a TFTP or HTTP client's MAC (a flood of forged chaddrs is
/// capped here).
const ADDRESSES: usize = 100_000;

/// One thing the boot server saw of a MAC.
#[derive(Debug, Clone, PartialEq)]
pub struct BootEvent {
    /// The client.
    pub mac: MacAddr,
    /// When (unix ms).
    pub at_ms: i64,
    /// What: `dhcp.discover`, `dhcp.offer`, `dhcp.request`, `dhcp.ack`, `dhcp.nak`,
    /// `dhcp.inform`, `tftp.read`, `tftp.refused`, `http.script`, `http.file`, `agent.claim`, ….
    pub kind: String,
    /// The facts seen (arch, vendor class, file name, address, …).
    pub detail: serde_json::Value,
}

impl BootEvent {
    /// An event of `kind` for `mac` now.
    pub fn now(mac: MacAddr, kind: impl Into<String>, detail: serde_json::Value) -> Self {
        BootEvent {
            mac,
            at_ms: crate::dhcp::core::now_ms(),
            kind: kind.into(),
            detail,
        }
    }
}

/// Error from a [`BootEventSink`] (the batch is retried, then counted as dropped).
#[derive(Debug, thiserror::Error)]
#[error("boot event sink: {0}")]
pub struct BootEventSinkError(pub String);

/// Where boot events are stored (implemented by the `api` crate over the inventory).
pub trait BootEventSink: Send + Sync + 'static {
    /// Stores a batch (one transaction, all or none).
    fn write(&self, batch: Vec<BootEvent>) -> BoxFuture<'_, Result<(), BootEventSinkError>>;
}

struct Shared {
    tx: mpsc::Sender<BootEvent>,
    metrics: Arc<Metrics>,
    /// The MAC last seen with each address (DHCP tells; TFTP and HTTP only know the address).
    addresses: Mutex<HashMap<Ipv4Addr, MacAddr>>,
}

/// The recording handle, cheap to clone; [`BootEvents::off`] records nothing.
#[derive(Clone, Default)]
pub struct BootEvents {
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for BootEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootEvents")
            .field("on", &self.shared.is_some())
            .finish()
    }
}

impl BootEvents {
    /// A handle that records nothing.
    pub fn off() -> Self {
        BootEvents::default()
    }

    /// A handle whose events a writer task hands to `sink` in batches until `shutdown`
    /// (then what is queued is written once more).
    pub fn start(
        sink: Arc<dyn BootEventSink>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(BOOT_EVENT_QUEUE);
        let task = tokio::spawn(writer(sink, rx, Arc::clone(&metrics), shutdown));
        let shared = Shared {
            tx,
            metrics,
            addresses: Mutex::new(HashMap::new()),
        };
        (
            BootEvents {
                shared: Some(Arc::new(shared)),
            },
            task,
        )
    }

    /// Whether events are recorded at all.
    pub fn is_on(&self) -> bool {
        self.shared.is_some()
    }

    /// Queues an event; never waits (a full queue drops it, counted).
    pub fn record(&self, ev: BootEvent) {
        let Some(s) = &self.shared else { return };
        if s.tx.try_send(ev).is_err() {
            s.metrics
                .boot_events_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Remembers that `mac` has `ip` (an address DHCP offered, acknowledged or saw).
    pub fn address(&self, ip: Ipv4Addr, mac: MacAddr) {
        let Some(s) = &self.shared else { return };
        if ip.is_unspecified() || ip.is_broadcast() {
            return;
        }
        let mut a = s.addresses.lock().unwrap_or_else(PoisonError::into_inner);
        if a.len() < ADDRESSES || a.contains_key(&ip) {
            a.insert(ip, mac);
        }
    }

    /// The MAC last seen with `ip`.
    pub fn mac_of(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        let s = self.shared.as_ref()?;
        let a = s.addresses.lock().unwrap_or_else(PoisonError::into_inner);
        a.get(&ip).copied()
    }

    /// Queues an event of the client at `ip`, if its MAC is known (else it is not recorded:
    /// an event names a MAC).
    pub fn record_from(&self, ip: Ipv4Addr, kind: &str, detail: serde_json::Value) {
        if let Some(mac) = self.mac_of(ip) {
            self.record(BootEvent::now(mac, kind, detail));
        }
    }
}

async fn writer(
    sink: Arc<dyn BootEventSink>,
    mut rx: mpsc::Receiver<BootEvent>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => None,
            ev = rx.recv() => ev,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        write_batch(sink.as_ref(), batch, &metrics).await;
    }
    // Shutdown: what is already queued is written once more.
    let mut rest = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        rest.push(ev);
    }
    for chunk in rest.chunks(BATCH) {
        write_batch(sink.as_ref(), chunk.to_vec(), &metrics).await;
    }
}

/// Writes a batch, retrying a few times (a database hiccup); a batch that keeps failing is
/// counted as dropped with the reason logged, since boot events must never hold up booting.
async fn write_batch(sink: &dyn BootEventSink, batch: Vec<BootEvent>, metrics: &Metrics) {
    let n = batch.len() as u64;
    let mut last = None;
    for attempt in 0..3u64 {
        match sink.write(batch.clone()).await {
            Ok(()) => {
                metrics.boot_events_recorded.fetch_add(n, Ordering::Relaxed);
                return;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
    }
    metrics.boot_events_dropped.fetch_add(n, Ordering::Relaxed);
    if let Some(e) = last {
        tracing::warn!(events = n, "boot events not stored: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Slow {
        got: Mutex<Vec<BootEvent>>,
        gate: tokio::sync::Semaphore,
    }

    impl BootEventSink for Slow {
        fn write(&self, batch: Vec<BootEvent>) -> BoxFuture<'_, Result<(), BootEventSinkError>> {
            Box::pin(async move {
                let _p = self.gate.acquire().await;
                self.got
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(batch);
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let sink = Arc::new(Slow {
            got: Mutex::new(Vec::new()),
            gate: tokio::sync::Semaphore::new(0),
        });
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        let (events, task) = BootEvents::start(
            Arc::clone(&sink) as Arc<dyn BootEventSink>,
            Arc::clone(&metrics),
            stop.clone(),
        );
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let total = BOOT_EVENT_QUEUE + BATCH + 500;
        for _ in 0..total {
            events.record(BootEvent::now(mac, "dhcp.discover", serde_json::json!({})));
        }
        let dropped = metrics.boot_events_dropped.load(Ordering::Relaxed);
        assert!(dropped >= 500, "dropped {dropped}");
        sink.gate.add_permits(1000);
        stop.cancel();
        task.await.expect("writer");
        let stored = sink
            .got
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        assert_eq!(
            stored as u64 + dropped,
            total as u64,
            "every event stored or counted"
        );
    }

    #[test]
    fn an_address_names_its_mac_and_off_records_nothing() {
        let off = BootEvents::off();
        off.address(Ipv4Addr::new(10, 0, 0, 5), MacAddr([2, 0, 0, 0, 0, 1]));
        assert_eq!(off.mac_of(Ipv4Addr::new(10, 0, 0, 5)), None);
    }
}
