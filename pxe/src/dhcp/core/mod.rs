//! DHCP logic: proxy and authoritative answers over the lease table (no sockets here).
//! `table.rs` is the lease table, `reply.rs` builds replies, `proxy.rs` and
//! `authoritative.rs` answer, one function per message type.

mod authoritative;
mod proxy;
mod reply;
mod table;
#[cfg(test)]
mod tests;

pub use reply::reply_destination;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dhcproto::v4::MessageType;

use crate::boot::{decide_boot, BootContext, BootDecision, BootFiles, ClientInfo, IgnoreReason};
use crate::config::{DhcpMode, PoolConfig};
use crate::dhcp::packet::parse_request;
use crate::directory::{MachineDirectory, MachineEntry};
use crate::lease::{AddressLease, AddressLeaseChange};
use crate::mac::MacAddr;
use crate::metrics::{DropReason, Metrics};
use table::AddressLeaseTable;

/// DHCP server port.
pub const SERVER_PORT: u16 = 67;
/// DHCP client port.
pub const CLIENT_PORT: u16 = 68;
/// PXE boot server (proxyDHCP REQUEST) port.
pub const PROXY_PORT: u16 = 4011;

/// Which socket a packet came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// 67.
    Dhcp,
    /// 4011.
    Proxy,
}

/// A reply to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Encoded packet.
    pub bytes: Vec<u8>,
    /// Destination.
    pub dest: SocketAddrV4,
    /// Socket to send from.
    pub via: Port,
    /// DHCP message type (for counting).
    pub msg_type: MessageType,
    /// Unicast to this address/MAC via an ARP entry instead of broadcasting (`dest` is the fallback).
    pub arp_unicast: Option<(Ipv4Addr, MacAddr)>,
}

/// What to do with a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhcpOutcome {
    /// Dropped (already counted).
    Drop(DropReason),
    /// Nothing to send, nothing to store.
    Silent,
    /// Send now.
    Reply(Reply),
    /// Store durably first, then send the reply (if any).
    Durable {
        /// Changes for the lease store.
        changes: Vec<AddressLeaseChange>,
        /// Reply to send once stored.
        reply: Option<Reply>,
    },
}

/// Resolved settings for the DHCP core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Interface name (for [`ClientInfo::interface`]).
    pub interface: String,
    /// Our address.
    pub server_ip: Ipv4Addr,
    /// HTTP boot base URL.
    pub http_base: String,
    /// Discovery on.
    pub discovery: bool,
    /// iPXE file names.
    pub files: BootFiles,
    /// Mode.
    pub mode: DhcpMode,
    /// How long a declined address stays out of the pool ([`PxeConfig::decline_hold`]).
    ///
    /// [`PxeConfig::decline_hold`]: crate::PxeConfig::decline_hold
    pub decline_hold: Duration,
}

/// Milliseconds since the Unix epoch: the boot server's lease clock. The rest of rackshare
/// uses `inventory::now_ms`; `pxe` never depends on the inventory, so this is its own.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
/// The DHCP request handler shared by all sockets.
pub struct DhcpCore {
    cfg: CoreConfig,
    directory: Arc<dyn MachineDirectory>,
    metrics: Arc<Metrics>,
    table: Mutex<AddressLeaseTable>,
    seen: Mutex<HashSet<MacAddr>>,
}

impl DhcpCore {
    /// A handler with the leases loaded from the store.
    pub fn new(
        cfg: CoreConfig,
        directory: Arc<dyn MachineDirectory>,
        metrics: Arc<Metrics>,
        leases: Vec<AddressLease>,
    ) -> Self {
        let pools: &[PoolConfig] = match &cfg.mode {
            DhcpMode::Authoritative { pools } => pools,
            DhcpMode::Proxy => &[],
        };
        let table = AddressLeaseTable::new(cfg.server_ip, pools, leases);
        DhcpCore {
            cfg,
            directory,
            metrics,
            table: Mutex::new(table),
            seen: Mutex::new(HashSet::new()),
        }
    }

    pub(super) fn drop(&self, r: DropReason) -> DhcpOutcome {
        self.metrics.drop_packet(r);
        DhcpOutcome::Drop(r)
    }

    /// Handles one packet received on `port` from `src`.
    pub async fn handle(&self, buf: &[u8], port: Port, src: SocketAddrV4) -> DhcpOutcome {
        self.metrics.dhcp_received.fetch_add(1, Ordering::Relaxed);
        let req = match parse_request(buf) {
            Ok(r) => r,
            Err(r) => return self.drop(r),
        };
        match (&self.cfg.mode, port) {
            (DhcpMode::Proxy, Port::Dhcp) => self.proxy(&req, port, src).await,
            (DhcpMode::Proxy, Port::Proxy) => self.proxy(&req, port, src).await,
            (DhcpMode::Authoritative { .. }, Port::Dhcp) => self.authoritative(&req).await,
            (DhcpMode::Authoritative { .. }, Port::Proxy) => self.drop(DropReason::NotForUs),
        }
    }

    /// The directory's answer for `mac`. Not cached here: the directory is the one cache
    /// (the inventory's is a snapshot at most one second old, decision 25), so DHCP is never
    /// staler than it.
    pub(super) async fn lookup(&self, mac: MacAddr) -> Result<Option<MachineEntry>, DropReason> {
        self.directory.lookup(mac).await.map_err(|e| {
            tracing::warn!(%mac, "directory lookup failed: {e}");
            DropReason::DirectoryError
        })
    }

    pub(super) fn decide(&self, info: &ClientInfo, entry: Option<&MachineEntry>) -> BootDecision {
        let ctx = BootContext {
            http_base: &self.cfg.http_base,
            discovery: self.cfg.discovery,
            files: &self.cfg.files,
        };
        let d = decide_boot(info, entry.map(|e| &e.intent), &ctx);
        match &d {
            BootDecision::Ignore(IgnoreReason::NotPxe) => {}
            BootDecision::Ignore(r) => {
                self.metrics.boot_ignored.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(mac = %info.mac, reason = r.as_str(), "boot request ignored");
            }
            _ if entry.is_none() && self.cfg.discovery => self.report_discovered(info),
            _ => {}
        }
        d
    }

    fn report_discovered(&self, info: &ClientInfo) {
        let first = self
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(info.mac);
        if !first {
            return;
        }
        self.metrics.discovered.fetch_add(1, Ordering::Relaxed);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let dir = Arc::clone(&self.directory);
        let info = info.clone();
        rt.spawn(async move {
            let mac = info.mac;
            if let Err(e) = dir.discovered(info).await {
                tracing::warn!(%mac, "recording discovered machine failed: {e}");
            }
        });
    }

    /// Number of leases in memory (bound, released or declined).
    pub fn lease_count(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_key
            .len()
    }
}
