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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dhcproto::v4::MessageType;

use crate::boot::{decide_boot, BootContext, BootDecision, BootFiles, ClientInfo, IgnoreReason};
use crate::config::{DhcpMode, PoolConfig};
use crate::dhcp::packet::{client_info, parse_request, Request};
use crate::directory::{MachineDirectory, MachineEntry};
use crate::events::{BootEvent, BootEvents};
use crate::lease::{AddressLease, AddressLeaseChange, LostLease};
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
        /// What to send instead if a shared store refuses the lease (another instance holds
        /// the address): a NAK, so the client asks again and is offered another address.
        refusal: Option<Reply>,
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
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
/// A DHCP message type in lower case (`discover`, `ack`, …), for boot event kinds.
fn message_name(t: MessageType) -> String {
    format!("{t:?}").to_lowercase()
}

/// The DHCP request handler shared by all sockets.
pub struct DhcpCore {
    cfg: CoreConfig,
    directory: Arc<dyn MachineDirectory>,
    metrics: Arc<Metrics>,
    events: BootEvents,
    table: Mutex<AddressLeaseTable>,
    seen: Mutex<HashSet<MacAddr>>,
    /// Other instances share the lease store: a REQUEST's ACK carries its NAK in case the
    /// store refuses it.
    shared_store: AtomicBool,
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
            events: BootEvents::off(),
            table: Mutex::new(table),
            seen: Mutex::new(HashSet::new()),
            shared_store: AtomicBool::new(false),
        }
    }

    /// Records what each client asked and was answered in `events`.
    pub fn with_events(mut self, events: BootEvents) -> Self {
        self.events = events;
        self
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
        let out = match (&self.cfg.mode, port) {
            (DhcpMode::Proxy, Port::Dhcp) => self.proxy(&req, port, src).await,
            (DhcpMode::Proxy, Port::Proxy) => self.proxy(&req, port, src).await,
            (DhcpMode::Authoritative { .. }, Port::Dhcp) => self.authoritative(&req).await,
            (DhcpMode::Authoritative { .. }, Port::Proxy) => self.drop(DropReason::NotForUs),
        };
        if self.events.is_on() {
            self.record_events(&req, port, &out);
        }
        out
    }

    /// The client's message (with the arch and vendor class it showed) and our answer, as
    /// boot events; an answer's address is remembered so TFTP and HTTP events name the MAC.
    fn record_events(&self, req: &Request, port: Port, out: &DhcpOutcome) {
        let info = client_info(req, &self.cfg.interface);
        let answer = match out {
            DhcpOutcome::Drop(r) => format!("dropped: {}", r.as_str()),
            DhcpOutcome::Silent => "none".to_string(),
            DhcpOutcome::Reply(r) | DhcpOutcome::Durable { reply: Some(r), .. } => {
                message_name(r.msg_type)
            }
            DhcpOutcome::Durable { reply: None, .. } => "stored".to_string(),
        };
        self.events.record(BootEvent::now(
            req.mac,
            format!("dhcp.{}", message_name(req.msg_type)),
            serde_json::json!({
                "arch": info.arch,
                "vendor_class": info.vendor_class,
                "ipxe": info.is_ipxe,
                "relay": info.relay,
                "interface": self.cfg.interface,
                "port": if port == Port::Proxy { 4011 } else { 67 },
                "answer": answer,
            }),
        ));
        let reply = match out {
            DhcpOutcome::Reply(r) | DhcpOutcome::Durable { reply: Some(r), .. } => r,
            _ => return,
        };
        use dhcproto::Decodable;
        let Ok(m) = dhcproto::v4::Message::decode(&mut dhcproto::Decoder::new(&reply.bytes)) else {
            return;
        };
        let boot_file = match m.opts().get(dhcproto::v4::OptionCode::BootfileName) {
            Some(dhcproto::v4::DhcpOption::BootfileName(b)) => {
                Some(String::from_utf8_lossy(b).into_owned())
            }
            _ => None,
        };
        let address = (!m.yiaddr().is_unspecified()).then(|| m.yiaddr());
        if let Some(ip) = address {
            self.events.address(ip, req.mac);
        }
        self.events.record(BootEvent::now(
            req.mac,
            format!("dhcp.{}", message_name(reply.msg_type)),
            serde_json::json!({
                "address": address,
                "boot_file": boot_file,
                "interface": self.cfg.interface,
            }),
        ));
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

    /// Takes in leases a shared store holds (written by other instances): their addresses
    /// are no longer offered to anyone else.
    pub fn merge_stored(&self, leases: Vec<AddressLease>) {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        for l in leases {
            t.merge_stored(l);
        }
    }

    /// The store refused these leases: the table forgets them and learns their holders.
    pub fn lost(&self, lost: &[LostLease]) {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        for l in lost {
            t.lose(&l.key, l.ip, l.holder.clone());
        }
    }

    /// Other instances may serve the same segment from the same store: prepare a NAK with
    /// every ACK (the store may refuse the lease), and start the address search elsewhere in
    /// each pool, so two instances rarely offer the same address to two clients.
    pub fn share_store(&self) {
        self.shared_store.store(true, Ordering::Relaxed);
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spread_cursors();
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
