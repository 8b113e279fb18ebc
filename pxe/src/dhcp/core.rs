//! DHCP logic: proxy and authoritative answers, lease table (no sockets here).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dhcproto::v4::relay::{RelayCode, RelayInfo};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption};
use dhcproto::Encodable;

use crate::boot::{decide_boot, BootContext, BootDecision, BootFiles, ClientInfo, IgnoreReason};
use crate::config::{DhcpMode, PoolConfig};
use crate::dhcp::packet::{client_info, parse_request, Request};
use crate::directory::{MachineDirectory, MachineEntry};
use crate::lease::{to_hex, Lease, LeaseChange, LeaseKey, LeaseState};
use crate::mac::MacAddr;
use crate::metrics::{DropReason, Metrics};

const OFFER_HOLD: Duration = Duration::from_secs(60);
/// How long a directory answer is reused: a DISCOVER's lookup serves the REQUEST that follows
/// it (one database query per DORA instead of two); an inventory change reaches DHCP within it.
const DIRECTORY_TTL: Duration = Duration::from_secs(1);
/// The address that names the client's subnet: option 118 (RFC 3011, subnet selection) when
/// sent, else the relay's link-selection sub-option of option 82 (RFC 3527, for relays whose
/// giaddr is not on the client's link), else giaddr. Replies still go to giaddr.
fn selection_address(q: &Message) -> Ipv4Addr {
    if let Some(DhcpOption::SubnetSelection(a)) = q.opts().get(OptionCode::SubnetSelection) {
        if !a.is_unspecified() {
            return *a;
        }
    }
    if let Some(DhcpOption::RelayAgentInformation(info)) =
        q.opts().get(OptionCode::RelayAgentInformation)
    {
        if let Some(RelayInfo::LinkSelection(a)) = info.get(RelayCode::LinkSelection) {
            if !a.is_unspecified() {
                return *a;
            }
        }
    }
    q.giaddr()
}

/// Cached directory answers kept before expired ones are swept.
const DIRECTORY_CACHE_MAX: usize = 8192;
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
pub enum Outcome {
    /// Dropped (already counted).
    Drop(DropReason),
    /// Nothing to send, nothing to store.
    Silent,
    /// Send now.
    Reply(Reply),
    /// Store durably first, then send the reply (if any).
    Durable {
        /// Changes for the lease store.
        changes: Vec<LeaseChange>,
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct PoolState {
    cfg: PoolConfig,
    start: u32,
    size: u32,
    cursor: u32,
}

struct Offer {
    ip: Ipv4Addr,
    until: Instant,
}

/// Whether an address can go to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Avail {
    /// Nobody else holds it (never leased, or this client's own).
    Free,
    /// Another client's lease on it has expired (or was released, or a decline's hold ended):
    /// usable, but only when no free address is left.
    Expired,
    /// Not for this client.
    Taken,
}

/// In-memory lease state (the hot set); the store holds the durable copy.
struct LeaseTable {
    server_ip: Ipv4Addr,
    pools: Vec<PoolState>,
    by_key: HashMap<LeaseKey, Lease>,
    by_ip: HashMap<Ipv4Addr, LeaseKey>,
    /// (expires_at, ip) of every lease in `by_key`: the oldest expired lease is found first.
    by_expiry: BTreeSet<(i64, u32)>,
    offers: HashMap<LeaseKey, Offer>,
    offered_ips: HashMap<Ipv4Addr, LeaseKey>,
    reserved: HashMap<Ipv4Addr, MacAddr>,
}

impl LeaseTable {
    fn new(server_ip: Ipv4Addr, pools: &[PoolConfig], leases: Vec<Lease>) -> Self {
        let pools = pools
            .iter()
            .map(|p| {
                let start = u32::from(p.range_start);
                let end = u32::from(p.range_end).max(start);
                PoolState {
                    cfg: p.clone(),
                    start,
                    size: end - start + 1,
                    cursor: 0,
                }
            })
            .collect();
        let mut t = LeaseTable {
            server_ip,
            pools,
            by_key: HashMap::new(),
            by_ip: HashMap::new(),
            by_expiry: BTreeSet::new(),
            offers: HashMap::new(),
            offered_ips: HashMap::new(),
            reserved: HashMap::new(),
        };
        // The store is shared by every authoritative interface (and the relayed subnets of
        // each): only the leases in this table's own subnets are its to hand out, hold or
        // reclaim. Another interface's leases stay in the store untouched.
        for l in leases {
            if !t.pools.iter().any(|p| p.cfg.contains_subnet(l.ip)) {
                continue;
            }
            let key = l.key();
            t.put(key, l);
        }
        t
    }

    /// Inserts or replaces `key`'s lease, keeping `by_ip` and `by_expiry` in step. A lease
    /// of another key on the same address is removed and returned.
    fn put(&mut self, key: LeaseKey, lease: Lease) -> Option<(LeaseKey, Lease)> {
        let displaced = match self.by_ip.get(&lease.ip) {
            Some(other) if *other != key => {
                let other = other.clone();
                self.remove(&other).map(|l| (other, l))
            }
            _ => None,
        };
        if let Some(old) = self.by_key.get(&key) {
            self.by_expiry.remove(&(old.expires_at, u32::from(old.ip)));
            if old.ip != lease.ip && self.by_ip.get(&old.ip) == Some(&key) {
                self.by_ip.remove(&old.ip);
            }
        }
        self.by_expiry
            .insert((lease.expires_at, u32::from(lease.ip)));
        self.by_ip.insert(lease.ip, key.clone());
        self.by_key.insert(key, lease);
        displaced
    }

    /// Forgets `key`'s lease.
    fn remove(&mut self, key: &LeaseKey) -> Option<Lease> {
        let l = self.by_key.remove(key)?;
        self.by_expiry.remove(&(l.expires_at, u32::from(l.ip)));
        if self.by_ip.get(&l.ip) == Some(key) {
            self.by_ip.remove(&l.ip);
        }
        Some(l)
    }

    /// The pool for a client whose subnet is named by `giaddr` (see [`selection_address`]);
    /// unspecified means directly attached: the server's own subnet, else the first pool.
    fn pool_index(&self, giaddr: Ipv4Addr) -> Option<usize> {
        let anchor = if giaddr.is_unspecified() {
            self.server_ip
        } else {
            giaddr
        };
        self.pools
            .iter()
            .position(|p| p.cfg.contains_subnet(anchor))
            .or(if giaddr.is_unspecified() && !self.pools.is_empty() {
                Some(0)
            } else {
                None
            })
    }

    /// Can `ip` go to the client `key` (hardware address `mac`)?
    fn avail(
        &self,
        ip: Ipv4Addr,
        key: &LeaseKey,
        mac: MacAddr,
        pool: &PoolConfig,
        now: Instant,
        now_ms: i64,
    ) -> Avail {
        if ip == self.server_ip || Some(ip) == pool.router || !pool.contains_subnet(ip) {
            return Avail::Taken;
        }
        let m = u32::from(pool.subnet_mask);
        let v = u32::from(ip);
        if m != u32::MAX && (v & !m == 0 || v & !m == !m) {
            return Avail::Taken; // network or broadcast address
        }
        if let Some(owner) = self.reserved.get(&ip) {
            if *owner != mac {
                return Avail::Taken;
            }
        }
        if let Some(other) = self.offered_ips.get(&ip) {
            if other != key && self.offers.get(other).is_some_and(|o| o.until > now) {
                return Avail::Taken;
            }
        }
        match self.by_ip.get(&ip) {
            Some(other) if other != key => match self.by_key.get(other) {
                Some(l) if l.expires_at > now_ms && l.state != LeaseState::Released => Avail::Taken,
                Some(_) => Avail::Expired,
                None => Avail::Free,
            },
            _ => Avail::Free,
        }
    }

    /// Picks an address for `key`: its reservation, its own lease, its offer, the address it
    /// asks for, then a never-used one; only when none is free, the address of the lease that
    /// expired first (RFC 2131 §4.3.1 prefers a client's previous address).
    fn allocate(
        &mut self,
        key: &LeaseKey,
        mac: MacAddr,
        pool_idx: usize,
        reserved: Option<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
    ) -> Option<Ipv4Addr> {
        let now = Instant::now();
        let now_ms = now_ms();
        let pool = &self.pools.get(pool_idx)?.cfg;
        if let Some(ip) = reserved {
            if self.avail(ip, key, mac, pool, now, now_ms) != Avail::Taken {
                return Some(ip);
            }
        }
        if let Some(l) = self.by_key.get(key) {
            if self.avail(l.ip, key, mac, pool, now, now_ms) == Avail::Free
                && (pool.contains_range(l.ip) || reserved == Some(l.ip))
            {
                return Some(l.ip);
            }
        }
        if let Some(o) = self.offers.get(key) {
            // Possibly a reclaimed address: it was the best choice when offered.
            if self.avail(o.ip, key, mac, pool, now, now_ms) != Avail::Taken {
                return Some(o.ip);
            }
        }
        if let Some(ip) = requested {
            if pool.contains_range(ip) && self.avail(ip, key, mac, pool, now, now_ms) == Avail::Free
            {
                return Some(ip);
            }
        }
        let p = self.pools.get(pool_idx)?;
        let (start, size, cursor) = (p.start, p.size, p.cursor);
        for k in 0..size {
            let off = (cursor.wrapping_add(k)) % size;
            let ip = Ipv4Addr::from(start.wrapping_add(off));
            if self.avail(ip, key, mac, &p.cfg, now, now_ms) == Avail::Free {
                if let Some(p) = self.pools.get_mut(pool_idx) {
                    p.cursor = (off + 1) % size;
                }
                return Some(ip);
            }
        }
        // No free address: reclaim, oldest expiry first. A release sets the expiry to the
        // release time, so everything reclaimable sorts before the first live lease.
        for &(exp, ip) in &self.by_expiry {
            if exp > now_ms {
                break;
            }
            let ip = Ipv4Addr::from(ip);
            if p.cfg.contains_range(ip)
                && self.avail(ip, key, mac, &p.cfg, now, now_ms) != Avail::Taken
            {
                return Some(ip);
            }
        }
        None
    }

    fn record_offer(&mut self, key: &LeaseKey, ip: Ipv4Addr) {
        if let Some(old) = self.offers.insert(
            key.clone(),
            Offer {
                ip,
                until: Instant::now() + OFFER_HOLD,
            },
        ) {
            if old.ip != ip && self.offered_ips.get(&old.ip) == Some(key) {
                self.offered_ips.remove(&old.ip);
            }
        }
        self.offered_ips.insert(ip, key.clone());
        // Keep the offer map bounded: sweep expired offers now and then.
        if self.offers.len() > 4096 && self.offers.len().is_power_of_two() {
            let now = Instant::now();
            let expired: Vec<LeaseKey> = self
                .offers
                .iter()
                .filter(|(_, o)| o.until <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for k in expired {
                self.drop_offer(&k);
            }
        }
    }

    fn drop_offer(&mut self, key: &LeaseKey) {
        if let Some(o) = self.offers.remove(key) {
            if self.offered_ips.get(&o.ip) == Some(key) {
                self.offered_ips.remove(&o.ip);
            }
        }
    }

    /// Binds `lease` to `key`; returns the store changes (a displaced lease's delete first).
    fn bind(&mut self, key: LeaseKey, lease: Lease) -> Vec<LeaseChange> {
        let mut changes = Vec::with_capacity(2);
        self.drop_offer(&key);
        if let Some((other, _)) = self.put(key, lease.clone()) {
            changes.push(LeaseChange::Delete { key: other });
        }
        changes.push(LeaseChange::Upsert(lease));
        changes
    }
}

/// The DHCP request handler shared by all sockets.
pub struct DhcpCore {
    cfg: CoreConfig,
    directory: Arc<dyn MachineDirectory>,
    metrics: Arc<Metrics>,
    table: Mutex<LeaseTable>,
    seen: Mutex<HashSet<MacAddr>>,
    looked_up: Mutex<HashMap<MacAddr, (Instant, Option<MachineEntry>)>>,
}

impl DhcpCore {
    /// A handler with the leases loaded from the store.
    pub fn new(
        cfg: CoreConfig,
        directory: Arc<dyn MachineDirectory>,
        metrics: Arc<Metrics>,
        leases: Vec<Lease>,
    ) -> Self {
        let pools: &[PoolConfig] = match &cfg.mode {
            DhcpMode::Authoritative { pools } => pools,
            DhcpMode::Proxy => &[],
        };
        let table = LeaseTable::new(cfg.server_ip, pools, leases);
        DhcpCore {
            cfg,
            directory,
            metrics,
            table: Mutex::new(table),
            seen: Mutex::new(HashSet::new()),
            looked_up: Mutex::new(HashMap::new()),
        }
    }

    fn drop(&self, r: DropReason) -> Outcome {
        self.metrics.drop_packet(r);
        Outcome::Drop(r)
    }

    /// Handles one packet received on `port` from `src`.
    pub async fn handle(&self, buf: &[u8], port: Port, src: SocketAddrV4) -> Outcome {
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

    async fn lookup(&self, mac: MacAddr) -> Result<Option<MachineEntry>, DropReason> {
        let now = Instant::now();
        if let Some((at, e)) = self
            .looked_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&mac)
        {
            if now.duration_since(*at) < DIRECTORY_TTL {
                return Ok(e.clone());
            }
        }
        match self.directory.lookup(mac).await {
            Ok(e) => {
                let mut cache = self
                    .looked_up
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if cache.len() >= DIRECTORY_CACHE_MAX {
                    cache.retain(|_, (at, _)| now.duration_since(*at) < DIRECTORY_TTL);
                    if cache.len() >= DIRECTORY_CACHE_MAX {
                        cache.clear();
                    }
                }
                cache.insert(mac, (now, e.clone()));
                Ok(e)
            }
            Err(e) => {
                tracing::warn!(%mac, "directory lookup failed: {e}");
                Err(DropReason::DirectoryError)
            }
        }
    }

    fn decide(&self, info: &ClientInfo, entry: Option<&MachineEntry>) -> BootDecision {
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

    fn base_reply(&self, req: &Request, mt: MessageType) -> Message {
        let q = &req.msg;
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_htype(q.htype())
            .set_chaddr(q.chaddr())
            .set_xid(q.xid())
            .set_flags(q.flags())
            .set_giaddr(q.giaddr());
        m.opts_mut().insert(DhcpOption::MessageType(mt));
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(self.cfg.server_ip));
        if let Some(raw) = &req.relay_info {
            m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::RelayAgentInformation,
                raw.clone(),
            )));
        }
        // RFC 3011 §3: a server that honours subnet selection returns the option as sent.
        if let Some(o @ DhcpOption::SubnetSelection(_)) = q.opts().get(OptionCode::SubnetSelection)
        {
            m.opts_mut().insert(o.clone());
        }
        m
    }

    fn apply_boot(&self, m: &mut Message, req: &Request, d: &BootDecision, proxy: bool) {
        let (name, class) = match d {
            BootDecision::Ignore(_) => return,
            BootDecision::Tftp { filename } => (filename.as_str(), "PXEClient"),
            BootDecision::Http { url } => (url.as_str(), "HTTPClient"),
            BootDecision::IpxeScript { url } => (url.as_str(), "PXEClient"),
        };
        m.set_siaddr(self.cfg.server_ip);
        if name.len() < 128 {
            m.set_fname_str(name);
        }
        let opts = m.opts_mut();
        opts.insert(DhcpOption::BootfileName(name.as_bytes().to_vec()));
        if matches!(d, BootDecision::Tftp { .. }) {
            opts.insert(DhcpOption::TFTPServerName(
                self.cfg.server_ip.to_string().into_bytes(),
            ));
        }
        if proxy || class == "HTTPClient" {
            opts.insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
        }
        if proxy && class == "PXEClient" {
            // PXE_DISCOVERY_CONTROL = 8: boot the file named here, no boot server discovery.
            opts.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
        }
        if let Some(uuid) = req.msg.opts().get(OptionCode::ClientMachineIdentifier) {
            opts.insert(uuid.clone());
        }
    }

    fn encode(&self, m: &Message, dest: SocketAddrV4, via: Port, mt: MessageType) -> Option<Reply> {
        let arp_unicast = (dest.ip().is_broadcast()
            && matches!(mt, MessageType::Offer | MessageType::Ack)
            && m.giaddr().is_unspecified()
            && m.ciaddr().is_unspecified()
            && !m.flags().broadcast()
            && !m.yiaddr().is_unspecified())
        .then(|| MacAddr::from_chaddr(m.chaddr()).map(|mac| (m.yiaddr(), mac)))
        .flatten();
        match m.to_vec() {
            Ok(bytes) => Some(Reply {
                bytes,
                dest,
                via,
                msg_type: mt,
                arp_unicast,
            }),
            Err(e) => {
                tracing::error!("encoding DHCP reply failed: {e}");
                None
            }
        }
    }

    async fn proxy(&self, req: &Request, port: Port, src: SocketAddrV4) -> Outcome {
        let mt = match (port, req.msg_type) {
            (Port::Dhcp, MessageType::Discover) => MessageType::Offer,
            (Port::Proxy, MessageType::Request | MessageType::Inform) => MessageType::Ack,
            _ => return self.drop(DropReason::NotForUs),
        };
        let info = client_info(req, &self.cfg.interface);
        if !info.is_ipxe && !info.is_pxe_client() && !info.is_http_client() {
            return self.drop(DropReason::NotForUs);
        }
        let entry = match self.lookup(req.mac).await {
            Ok(e) => e,
            Err(r) => return self.drop(r),
        };
        let d = self.decide(&info, entry.as_ref());
        if matches!(d, BootDecision::Ignore(_)) {
            return Outcome::Silent;
        }
        let mut m = self.base_reply(req, mt);
        if port == Port::Proxy {
            m.set_ciaddr(req.msg.ciaddr());
        }
        self.apply_boot(&mut m, req, &d, true);
        let dest = match port {
            Port::Proxy => src,
            Port::Dhcp => reply_destination(&req.msg, mt, Ipv4Addr::UNSPECIFIED),
        };
        match self.encode(&m, dest, port, mt) {
            Some(r) => Outcome::Reply(r),
            None => Outcome::Silent,
        }
    }

    fn lease_options(m: &mut Message, pool: &PoolConfig, with_lease: bool) {
        let opts = m.opts_mut();
        opts.insert(DhcpOption::SubnetMask(pool.subnet_mask));
        if let Some(r) = pool.router {
            opts.insert(DhcpOption::Router(vec![r]));
        }
        if !pool.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(pool.dns.clone()));
        }
        if let Some(d) = &pool.domain {
            opts.insert(DhcpOption::DomainName(d.clone()));
        }
        if !pool.ntp.is_empty() {
            opts.insert(DhcpOption::NtpServers(pool.ntp.clone()));
        }
        if let Some(mtu) = pool.mtu {
            opts.insert(DhcpOption::InterfaceMtu(mtu));
        }
        if with_lease {
            let secs = pool.lease_time.as_secs().clamp(10, u64::from(u32::MAX - 1)) as u32;
            opts.insert(DhcpOption::AddressLeaseTime(secs));
            opts.insert(DhcpOption::Renewal(secs / 2));
            opts.insert(DhcpOption::Rebinding(secs / 8 * 7));
        }
    }

    fn nak(&self, req: &Request, why: &str) -> Outcome {
        self.metrics.leases_nak.fetch_add(1, Ordering::Relaxed);
        let mut m = self.base_reply(req, MessageType::Nak);
        m.opts_mut().insert(DhcpOption::Message(why.to_string()));
        if !req.msg.giaddr().is_unspecified() {
            m.set_flags(Flags::default().set_broadcast());
        }
        let dest = reply_destination(&req.msg, MessageType::Nak, Ipv4Addr::UNSPECIFIED);
        match self.encode(&m, dest, Port::Dhcp, MessageType::Nak) {
            Some(r) => Outcome::Reply(r),
            None => Outcome::Silent,
        }
    }

    async fn authoritative(&self, req: &Request) -> Outcome {
        let q = &req.msg;
        let mac = req.mac;
        let opts = q.opts();
        let requested = match opts.get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        };
        let server_id = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        let client_id = match opts.get(OptionCode::ClientIdentifier) {
            Some(DhcpOption::ClientIdentifier(id)) if !id.is_empty() => Some(id.as_slice()),
            _ => None,
        };
        let key = LeaseKey::for_client(mac, client_id);
        let now = now_ms();
        match req.msg_type {
            MessageType::Release => {
                let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(l) = t.by_key.get(&key) else {
                    return Outcome::Silent;
                };
                if l.ip != q.ciaddr() || server_id.is_some_and(|s| s != self.cfg.server_ip) {
                    return Outcome::Silent;
                }
                let mut l = l.clone();
                l.state = LeaseState::Released;
                l.expires_at = now;
                t.put(key, l.clone());
                self.metrics.leases_released.fetch_add(1, Ordering::Relaxed);
                return Outcome::Durable {
                    changes: vec![LeaseChange::Upsert(l)],
                    reply: None,
                };
            }
            MessageType::Decline => {
                let Some(ip) = requested else {
                    return self.drop(DropReason::BadOptions);
                };
                if server_id.is_some_and(|s| s != self.cfg.server_ip) {
                    return self.drop(DropReason::NotForUs);
                }
                let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
                t.drop_offer(&key);
                // Only the lease's holder can decline it (as Kea): otherwise any host could
                // take addresses out of the pool for everyone.
                if t.by_key.get(&key).is_none_or(|l| l.ip != ip) {
                    return Outcome::Silent;
                }
                self.metrics.leases_declined.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%ip, %mac, "DHCPDECLINE: address in use on the network; held out of the pool");
                t.remove(&key);
                // Persisted as a lease of its own, so a restart keeps the address out too.
                let held = Lease {
                    mac,
                    ip,
                    hostname: None,
                    client_id: None,
                    expires_at: now.saturating_add(
                        i64::try_from(self.cfg.decline_hold.as_millis()).unwrap_or(i64::MAX),
                    ),
                    state: LeaseState::Declined,
                };
                t.put(held.key(), held.clone());
                return Outcome::Durable {
                    changes: vec![LeaseChange::Delete { key }, LeaseChange::Upsert(held)],
                    reply: None,
                };
            }
            MessageType::Discover | MessageType::Request | MessageType::Inform => {}
            _ => return self.drop(DropReason::NotForUs),
        }
        if req.msg_type == MessageType::Request
            && server_id.is_some_and(|s| s != self.cfg.server_ip)
        {
            // The client chose another server: free our offer.
            self.table
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drop_offer(&key);
            return self.drop(DropReason::NotForUs);
        }
        let entry = match self.lookup(mac).await {
            Ok(e) => e,
            Err(r) => return self.drop(r),
        };
        let info = client_info(req, &self.cfg.interface);
        let boot = self.decide(&info, entry.as_ref());
        let reserved = entry.as_ref().and_then(|e| e.reserved_ip);
        let hostname = entry
            .as_ref()
            .and_then(|e| e.hostname.clone())
            .or(info.hostname.clone());

        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ip) = reserved {
            t.reserved.insert(ip, mac);
        }
        let Some(pool_idx) = t.pool_index(selection_address(q)) else {
            drop(t);
            return self.drop(DropReason::NotForUs);
        };
        let Some(pool) = t.pools.get(pool_idx).map(|p| p.cfg.clone()) else {
            drop(t);
            return self.drop(DropReason::NotForUs);
        };
        match req.msg_type {
            MessageType::Inform => {
                drop(t);
                self.metrics.informs.fetch_add(1, Ordering::Relaxed);
                let mut m = self.base_reply(req, MessageType::Ack);
                m.set_ciaddr(q.ciaddr());
                Self::lease_options(&mut m, &pool, false);
                self.apply_boot(&mut m, req, &boot, false);
                let dest = reply_destination(q, MessageType::Ack, Ipv4Addr::UNSPECIFIED);
                match self.encode(&m, dest, Port::Dhcp, MessageType::Ack) {
                    Some(r) => Outcome::Reply(r),
                    None => Outcome::Silent,
                }
            }
            MessageType::Discover => {
                let Some(ip) = t.allocate(&key, mac, pool_idx, reserved, requested) else {
                    drop(t);
                    self.metrics.pool_exhausted.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%mac, "address pool exhausted");
                    return Outcome::Silent;
                };
                t.record_offer(&key, ip);
                drop(t);
                self.metrics.leases_offered.fetch_add(1, Ordering::Relaxed);
                let mut m = self.base_reply(req, MessageType::Offer);
                m.set_yiaddr(ip);
                Self::lease_options(&mut m, &pool, true);
                if let Some(h) = &hostname {
                    m.opts_mut().insert(DhcpOption::Hostname(h.clone()));
                }
                self.apply_boot(&mut m, req, &boot, false);
                let dest = reply_destination(q, MessageType::Offer, ip);
                match self.encode(&m, dest, Port::Dhcp, MessageType::Offer) {
                    Some(r) => Outcome::Reply(r),
                    None => Outcome::Silent,
                }
            }
            _ => {
                // REQUEST: selecting (server id), init-reboot (opt 50), renew/rebind (ciaddr).
                let ciaddr = q.ciaddr();
                let Some(ip) = requested.or((!ciaddr.is_unspecified()).then_some(ciaddr)) else {
                    drop(t);
                    return self.drop(DropReason::BadOptions);
                };
                let now_i = Instant::now();
                let known = t.by_key.get(&key).is_some_and(|l| l.ip == ip);
                // Another client's expired address only if we offered it (the reclaim rule
                // lives in `allocate`) or it is this client's reservation.
                let offered = t.offers.get(&key).is_some_and(|o| o.ip == ip);
                let ok = pool.contains_subnet(ip)
                    && match t.avail(ip, &key, mac, &pool, now_i, now) {
                        Avail::Free => true,
                        Avail::Expired => offered || reserved == Some(ip),
                        Avail::Taken => false,
                    }
                    && (pool.contains_range(ip) || reserved == Some(ip) || known);
                if !ok {
                    drop(t);
                    if !pool.contains_subnet(ip) && !ciaddr.is_unspecified() && server_id.is_none()
                    {
                        // Rebinding an address from some other network: not ours to judge.
                        return self.drop(DropReason::NotForUs);
                    }
                    return self.nak(req, "requested address not available");
                }
                let lease = Lease {
                    mac,
                    ip,
                    hostname: hostname.clone(),
                    client_id: client_id.map(to_hex),
                    expires_at: now.saturating_add(pool.lease_time.as_millis() as i64),
                    state: LeaseState::Bound,
                };
                let changes = t.bind(key, lease);
                drop(t);
                self.metrics.leases_acked.fetch_add(1, Ordering::Relaxed);
                let mut m = self.base_reply(req, MessageType::Ack);
                m.set_yiaddr(ip);
                m.set_ciaddr(ciaddr);
                Self::lease_options(&mut m, &pool, true);
                if let Some(h) = &hostname {
                    m.opts_mut().insert(DhcpOption::Hostname(h.clone()));
                }
                self.apply_boot(&mut m, req, &boot, false);
                let dest = reply_destination(q, MessageType::Ack, ip);
                Outcome::Durable {
                    changes,
                    reply: self.encode(&m, dest, Port::Dhcp, MessageType::Ack),
                }
            }
        }
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

/// Where a reply goes (RFC 2131 §4.1). For a client without an address and no broadcast flag
/// this is the broadcast fallback; [`Reply::arp_unicast`] then asks for unicast to yiaddr.
pub fn reply_destination(req: &Message, reply: MessageType, _yiaddr: Ipv4Addr) -> SocketAddrV4 {
    let giaddr = req.giaddr();
    if !giaddr.is_unspecified() {
        return SocketAddrV4::new(giaddr, SERVER_PORT);
    }
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT);
    if reply == MessageType::Nak {
        return bcast;
    }
    let ciaddr = req.ciaddr();
    if !ciaddr.is_unspecified() {
        return SocketAddrV4::new(ciaddr, CLIENT_PORT);
    }
    bcast
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ciaddr: [u8; 4], giaddr: [u8; 4], bcast: bool) -> Message {
        let mut m = Message::default();
        m.set_ciaddr(ciaddr).set_giaddr(giaddr);
        if bcast {
            m.set_flags(Flags::default().set_broadcast());
        }
        m
    }

    #[test]
    fn destinations() {
        let y = Ipv4Addr::new(10, 0, 0, 5);
        let d = |m: &Message, t| reply_destination(m, t, y).to_string();
        assert_eq!(
            d(&msg([0; 4], [10, 1, 0, 1], false), MessageType::Offer),
            "10.1.0.1:67"
        );
        assert_eq!(
            d(&msg([0; 4], [10, 1, 0, 1], false), MessageType::Nak),
            "10.1.0.1:67"
        );
        assert_eq!(
            d(&msg([10, 0, 0, 9], [0; 4], false), MessageType::Ack),
            "10.0.0.9:68"
        );
        assert_eq!(
            d(&msg([10, 0, 0, 9], [0; 4], false), MessageType::Nak),
            "255.255.255.255:68"
        );
        assert_eq!(
            d(&msg([0; 4], [0; 4], true), MessageType::Offer),
            "255.255.255.255:68"
        );
        assert_eq!(
            d(&msg([0; 4], [0; 4], false), MessageType::Offer),
            "255.255.255.255:68"
        );
    }

    use crate::boot::{BootFiles, BootIntent};
    use crate::directory::StaticDirectory;
    use dhcproto::Decodable;

    const SRV: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];

    fn core(dir: StaticDirectory, pools: Vec<PoolConfig>) -> DhcpCore {
        DhcpCore::new(
            CoreConfig {
                interface: "t0".into(),
                server_ip: SRV,
                http_base: "http://10.0.0.1:8080".into(),
                discovery: false,
                files: BootFiles::default(),
                mode: DhcpMode::Authoritative { pools },
                decline_hold: crate::config::DEFAULT_DECLINE_HOLD,
            },
            Arc::new(dir),
            Arc::new(Metrics::new()),
            Vec::new(),
        )
    }

    fn req(mt: MessageType, extra: Vec<DhcpOption>) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest)
            .set_xid(42)
            .set_chaddr(&MAC);
        m.opts_mut().insert(DhcpOption::MessageType(mt));
        for o in extra {
            m.opts_mut().insert(o);
        }
        m
    }

    fn run(c: &DhcpCore, m: &Message) -> Outcome {
        let src = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
        futures::executor::block_on(c.handle(&m.to_vec().expect("encode"), Port::Dhcp, src))
    }

    fn reply_of(o: &Outcome) -> (Message, SocketAddrV4) {
        let r = match o {
            Outcome::Reply(r) => r,
            Outcome::Durable { reply: Some(r), .. } => r,
            other => panic!("no reply: {other:?}"),
        };
        let m = Message::decode(&mut dhcproto::Decoder::new(&r.bytes)).expect("decode");
        (m, r.dest)
    }

    #[test]
    fn dora_renew_release_decline() {
        let mut p = pool();
        p.router = Some(SRV);
        p.dns = vec![SRV];
        p.mtu = Some(9000);
        let c = core(StaticDirectory::new(), vec![p]);
        let o = run(&c, &req(MessageType::Discover, vec![]));
        let (offer, dest) = reply_of(&o);
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(dest.to_string(), "255.255.255.255:68");
        // No broadcast flag: unicast to yiaddr through an ARP entry, broadcast as fallback.
        assert!(
            matches!(&o, Outcome::Reply(r) if r.arp_unicast == Some((offer.yiaddr(), MacAddr(MAC))))
        );
        let ip = offer.yiaddr();
        assert_eq!(ip, Ipv4Addr::new(10, 0, 0, 10));
        assert!(offer.opts().get(OptionCode::InterfaceMtu).is_some());
        // Plain client: no boot file.
        assert!(offer.opts().get(OptionCode::BootfileName).is_none());
        let o = run(
            &c,
            &req(
                MessageType::Request,
                vec![
                    DhcpOption::ServerIdentifier(SRV),
                    DhcpOption::RequestedIpAddress(ip),
                ],
            ),
        );
        let Outcome::Durable { changes, .. } = &o else {
            panic!("ACK must wait for the store: {o:?}")
        };
        assert!(matches!(&changes[..], [LeaseChange::Upsert(l)] if l.ip == ip));
        let (ack, _) = reply_of(&o);
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), ip);
        // Renew: unicast to ciaddr.
        let mut renew = req(MessageType::Request, vec![]);
        renew.set_ciaddr(ip);
        let (ack, dest) = reply_of(&run(&c, &renew));
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(dest, SocketAddrV4::new(ip, 68));
        // Another client asking for this address gets a NAK.
        let mut other = req(
            MessageType::Request,
            vec![DhcpOption::RequestedIpAddress(ip)],
        );
        other.set_chaddr(&[2, 0, 0, 0, 0, 9]);
        let (nak, _) = reply_of(&run(&c, &other));
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        // Wrong network: NAK.
        let bad = req(
            MessageType::Request,
            vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                192, 168, 1, 5,
            ))],
        );
        let (nak, _) = reply_of(&run(&c, &bad));
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        // Selecting another server: silently dropped.
        let o = run(
            &c,
            &req(
                MessageType::Request,
                vec![
                    DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 2)),
                    DhcpOption::RequestedIpAddress(ip),
                ],
            ),
        );
        assert_eq!(o, Outcome::Drop(DropReason::NotForUs));
        // INFORM: options, no address, unicast to ciaddr.
        let mut inform = req(MessageType::Inform, vec![]);
        inform.set_ciaddr(Ipv4Addr::new(10, 0, 0, 77));
        let (ack, dest) = reply_of(&run(&c, &inform));
        assert!(ack.yiaddr().is_unspecified());
        assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert!(ack.opts().get(OptionCode::Router).is_some());
        assert_eq!(dest.to_string(), "10.0.0.77:68");
        // RELEASE: stored as released.
        let mut rel = req(
            MessageType::Release,
            vec![DhcpOption::ServerIdentifier(SRV)],
        );
        rel.set_ciaddr(ip);
        match run(&c, &rel) {
            Outcome::Durable {
                changes,
                reply: None,
            } => {
                assert!(
                    matches!(&changes[..], [LeaseChange::Upsert(l)] if l.state == LeaseState::Released)
                )
            }
            other => panic!("{other:?}"),
        }
        // The released client gets its address back; then DECLINE quarantines it.
        let (offer, _) = reply_of(&run(&c, &req(MessageType::Discover, vec![])));
        assert_eq!(offer.yiaddr(), ip);
        run(
            &c,
            &req(
                MessageType::Request,
                vec![
                    DhcpOption::ServerIdentifier(SRV),
                    DhcpOption::RequestedIpAddress(ip),
                ],
            ),
        );
        let o = run(
            &c,
            &req(
                MessageType::Decline,
                vec![
                    DhcpOption::RequestedIpAddress(ip),
                    DhcpOption::ServerIdentifier(SRV),
                ],
            ),
        );
        assert!(matches!(o, Outcome::Durable { reply: None, .. }), "{o:?}");
        let (offer, _) = reply_of(&run(&c, &req(MessageType::Discover, vec![])));
        assert_ne!(offer.yiaddr(), ip, "declined address offered again");
    }

    #[test]
    fn relay_giaddr_and_option_82() {
        let relayed = PoolConfig::new(
            Ipv4Addr::new(10, 9, 0, 100),
            Ipv4Addr::new(10, 9, 0, 110),
            Ipv4Addr::new(255, 255, 255, 0),
        );
        let c = core(StaticDirectory::new(), vec![pool(), relayed]);
        let mut m = req(MessageType::Discover, vec![]);
        m.set_giaddr(Ipv4Addr::new(10, 9, 0, 1)).set_hops(1);
        let mut raw = m.to_vec().expect("encode");
        // Append option 82 (circuit id "port7", remote id "sw1") before END.
        let end = raw.iter().rposition(|b| *b == 255).expect("end");
        raw.truncate(end);
        let opt82 = [
            82u8, 12, 1, 5, b'p', b'o', b'r', b't', b'7', 2, 3, b's', b'w', b'1',
        ];
        raw.extend_from_slice(&opt82[..2]);
        raw.extend_from_slice(&opt82[2..]);
        raw[end + 1] = 12;
        raw.push(255);
        let o = futures::executor::block_on(c.handle(
            &raw,
            Port::Dhcp,
            SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 1), 67),
        ));
        let Outcome::Reply(r) = &o else {
            panic!("{o:?}")
        };
        assert_eq!(r.dest.to_string(), "10.9.0.1:67");
        let (offer, _) = reply_of(&o);
        assert_eq!(
            offer.yiaddr(),
            Ipv4Addr::new(10, 9, 0, 100),
            "pool chosen by giaddr"
        );
        assert_eq!(offer.giaddr(), Ipv4Addr::new(10, 9, 0, 1));
        let tail = &r.bytes[240..];
        assert!(
            tail.windows(14).any(|w| w == opt82),
            "option 82 echoed byte for byte"
        );
        // A relay from a subnet with no pool: dropped.
        let mut m = req(MessageType::Discover, vec![]);
        m.set_giaddr(Ipv4Addr::new(172, 16, 0, 1));
        assert_eq!(run(&c, &m), Outcome::Drop(DropReason::NotForUs));
    }

    /// Option 118 (RFC 3011) and option 82's link selection (RFC 3527) name the subnet in
    /// place of giaddr; replies still go to giaddr, and 118 is echoed.
    #[test]
    fn subnet_selection_and_link_selection_pick_the_pool() {
        let relayed = PoolConfig::new(
            Ipv4Addr::new(10, 9, 0, 100),
            Ipv4Addr::new(10, 9, 0, 110),
            Ipv4Addr::new(255, 255, 255, 0),
        );
        let c = core(StaticDirectory::new(), vec![pool(), relayed]);
        let relay = Ipv4Addr::new(172, 16, 0, 1); // no pool of its own
        let src = SocketAddrV4::new(relay, 67);
        let handle = |m: &Message| {
            futures::executor::block_on(c.handle(&m.to_vec().expect("encode"), Port::Dhcp, src))
        };

        let mut m = req(
            MessageType::Discover,
            vec![DhcpOption::SubnetSelection(Ipv4Addr::new(10, 9, 0, 0))],
        );
        m.set_giaddr(relay).set_hops(1);
        let o = handle(&m);
        let (offer, dest) = reply_of(&o);
        assert_eq!(
            offer.yiaddr(),
            Ipv4Addr::new(10, 9, 0, 100),
            "pool by option 118"
        );
        assert_eq!(dest, SocketAddrV4::new(relay, 67), "reply to the relay");
        assert_eq!(
            offer.opts().get(OptionCode::SubnetSelection),
            Some(&DhcpOption::SubnetSelection(Ipv4Addr::new(10, 9, 0, 0))),
            "option 118 echoed"
        );

        let mut info = dhcproto::v4::relay::RelayAgentInformation::default();
        info.insert(RelayInfo::LinkSelection(Ipv4Addr::new(10, 9, 0, 0)));
        let mut m = req(
            MessageType::Discover,
            vec![DhcpOption::RelayAgentInformation(info)],
        );
        m.set_chaddr(&[0x52, 0x54, 0, 0x99, 0, 2]);
        m.set_giaddr(relay).set_hops(1);
        let (offer, _) = reply_of(&handle(&m));
        assert_eq!(
            offer.yiaddr().octets()[..3],
            [10, 9, 0],
            "pool by link selection"
        );

        // Naming a subnet without a pool is not for us.
        let mut m = req(
            MessageType::Discover,
            vec![DhcpOption::SubnetSelection(Ipv4Addr::new(192, 168, 5, 0))],
        );
        m.set_giaddr(relay);
        assert_eq!(handle(&m), Outcome::Drop(DropReason::NotForUs));
    }

    #[test]
    fn pxe_client_gets_boot_file_in_authoritative_mode() {
        let dir = StaticDirectory::new();
        dir.insert(
            MacAddr(MAC),
            MachineEntry {
                intent: BootIntent::LocalDisk,
                reserved_ip: None,
                hostname: Some("n1".into()),
            },
        );
        let c = core(dir, vec![pool()]);
        let m = req(
            MessageType::Discover,
            vec![
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003016".to_vec()),
                DhcpOption::ClientSystemArchitecture(7u16.into()),
            ],
        );
        let (offer, _) = reply_of(&run(&c, &m));
        assert_eq!(offer.siaddr(), SRV);
        assert_eq!(
            offer.opts().get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(b"snponly.efi".to_vec()))
        );
        assert_eq!(
            offer.opts().get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("n1".into()))
        );
        // Proxy-only options stay out of authoritative answers.
        assert!(offer.opts().get(OptionCode::VendorExtensions).is_none());
    }

    fn pool() -> PoolConfig {
        PoolConfig::new(
            Ipv4Addr::new(10, 0, 0, 10),
            Ipv4Addr::new(10, 0, 0, 12),
            Ipv4Addr::new(255, 255, 255, 0),
        )
    }

    fn lease_of(mac: MacAddr, ip: Ipv4Addr, expires_at: i64) -> Lease {
        Lease {
            mac,
            ip,
            hostname: None,
            client_id: None,
            expires_at,
            state: LeaseState::Bound,
        }
    }

    /// With two authoritative interfaces on one lease store, each table takes only the leases
    /// in its own subnets: another interface's leases are neither handed out again, nor
    /// reclaimed, nor deleted.
    #[test]
    fn a_table_loads_only_the_leases_of_its_own_subnets() {
        let mac = |n: u8| MacAddr([2, 0, 0, 1, 0, n]);
        let ours = lease_of(mac(1), Ipv4Addr::new(10, 0, 0, 10), i64::MAX);
        // Another interface's subnet, long expired: reclaimable at once if it were ours.
        let theirs = lease_of(mac(2), Ipv4Addr::new(10, 78, 0, 150), 0);
        let mut t = LeaseTable::new(
            Ipv4Addr::new(10, 0, 0, 1),
            &[pool()],
            vec![ours.clone(), theirs.clone()],
        );
        assert_eq!(t.by_key.len(), 1, "only the lease in 10.0.0.0/24 is loaded");
        assert!(t.by_key.contains_key(&ours.key()));
        assert!(!t.by_ip.contains_key(&theirs.ip));
        // Filling the pool (and running dry) never hands out, reclaims or deletes theirs.
        for n in 3..=6u8 {
            let key = LeaseKey::Mac(mac(n));
            let Some(ip) = t.allocate(&key, mac(n), 0, None, None) else {
                assert!(n > 4, "two free addresses");
                continue;
            };
            assert!(pool().contains_range(ip), "{ip}");
            let changes = t.bind(key, lease_of(mac(n), ip, i64::MAX));
            assert!(
                changes
                    .iter()
                    .all(|c| !matches!(c, LeaseChange::Delete { key } if *key == theirs.key())),
                "{changes:?}"
            );
        }
        assert_eq!(t.by_key.len(), 3);
    }

    #[test]
    fn allocation_and_reclaim() {
        let mut t = LeaseTable::new(Ipv4Addr::new(10, 0, 0, 1), &[pool()], Vec::new());
        let macs: Vec<MacAddr> = (1..=4).map(|i| MacAddr([2, 0, 0, 0, 0, i])).collect();
        let keys: Vec<LeaseKey> = macs.iter().map(|m| LeaseKey::Mac(*m)).collect();
        let a = t.allocate(&keys[0], macs[0], 0, None, None).expect("ip");
        t.record_offer(&keys[0], a);
        assert_eq!(
            t.allocate(&keys[0], macs[0], 0, None, None),
            Some(a),
            "same offer again"
        );
        let b = t.allocate(&keys[1], macs[1], 0, None, None).expect("ip");
        assert_ne!(a, b);
        t.record_offer(&keys[1], b);
        let c = t.allocate(&keys[2], macs[2], 0, None, None).expect("ip");
        t.record_offer(&keys[2], c);
        assert_eq!(
            t.allocate(&keys[3], macs[3], 0, None, None),
            None,
            "pool full"
        );
        // An expired lease of another client is reclaimed with a Delete first.
        t.drop_offer(&keys[0]);
        let changes = t.bind(keys[0].clone(), lease_of(macs[0], a, 0));
        assert_eq!(changes.len(), 1);
        let ip = t
            .allocate(&keys[3], macs[3], 0, None, None)
            .expect("reclaimed");
        assert_eq!(ip, a);
        let changes = t.bind(keys[3].clone(), lease_of(macs[3], ip, i64::MAX));
        assert_eq!(
            changes[0],
            LeaseChange::Delete {
                key: keys[0].clone()
            }
        );
        // Reservation outside the range but in the subnet.
        let r = Ipv4Addr::new(10, 0, 0, 50);
        assert_eq!(t.allocate(&keys[0], macs[0], 0, Some(r), None), Some(r));
    }

    #[test]
    fn expired_leases_are_reclaimed_only_when_no_address_is_free_oldest_first() {
        let m = |i: u8| MacAddr([2, 0, 0, 0, 1, i]);
        let ip = |i: u8| Ipv4Addr::new(10, 0, 0, i);
        let now = now_ms();
        // Pool 10..=12: A (.10) expired a minute ago, B (.11) an hour ago; .12 never used.
        let mut released = lease_of(m(9), ip(12), now + 3_600_000);
        released.state = LeaseState::Released;
        let mut t = LeaseTable::new(
            SRV,
            &[pool()],
            vec![
                lease_of(m(1), ip(10), now - 60_000),
                lease_of(m(2), ip(11), now - 3_600_000),
            ],
        );
        let key = |i: u8| LeaseKey::Mac(m(i));
        // A free address goes first, even though two expired ones come earlier in the range.
        assert_eq!(t.allocate(&key(3), m(3), 0, None, None), Some(ip(12)));
        // Asking for an expired address of someone else does not get it while one is free.
        assert_eq!(
            t.allocate(&key(3), m(3), 0, None, Some(ip(10))),
            Some(ip(12))
        );
        t.bind(key(3), lease_of(m(3), ip(12), now + 3_600_000));
        // The pool has no free address left: the oldest expiry (B's) goes first.
        assert_eq!(t.allocate(&key(4), m(4), 0, None, None), Some(ip(11)));
        let changes = t.bind(key(4), lease_of(m(4), ip(11), now + 3_600_000));
        assert_eq!(changes[0], LeaseChange::Delete { key: key(2) });
        // A client whose own lease expired gets its address back (it is still free for it).
        assert_eq!(t.allocate(&key(1), m(1), 0, None, None), Some(ip(10)));
        assert_eq!(t.allocate(&key(5), m(5), 0, None, None), Some(ip(10)));
        t.bind(key(5), lease_of(m(5), ip(10), now + 3_600_000));
        assert_eq!(t.allocate(&key(6), m(6), 0, None, None), None, "all live");
        // A released lease is reclaimable at once, before leases that expire later.
        let mut rel = lease_of(m(3), ip(12), now);
        rel.state = LeaseState::Released;
        t.put(key(3), rel);
        assert_eq!(t.allocate(&key(6), m(6), 0, None, None), Some(ip(12)));
        let _ = released;
    }

    fn req_from(mac: [u8; 6], client_id: Option<&[u8]>, mt: MessageType) -> Message {
        let mut m = req(mt, vec![]);
        m.set_chaddr(&mac);
        if let Some(id) = client_id {
            m.opts_mut()
                .insert(DhcpOption::ClientIdentifier(id.to_vec()));
        }
        m
    }

    /// DISCOVER then REQUEST; returns the address and the store changes of the ACK.
    fn dora(c: &DhcpCore, mac: [u8; 6], client_id: Option<&[u8]>) -> (Ipv4Addr, Vec<LeaseChange>) {
        let (offer, _) = reply_of(&run(c, &req_from(mac, client_id, MessageType::Discover)));
        let ip = offer.yiaddr();
        let mut r = req_from(mac, client_id, MessageType::Request);
        r.opts_mut().insert(DhcpOption::ServerIdentifier(SRV));
        r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        match run(c, &r) {
            Outcome::Durable { changes, reply } => {
                let (ack, _) = reply_of(&Outcome::Durable {
                    changes: changes.clone(),
                    reply,
                });
                assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
                assert_eq!(ack.yiaddr(), ip);
                (ip, changes)
            }
            other => panic!("no ACK: {other:?}"),
        }
    }

    #[test]
    fn client_identifier_keys_the_lease() {
        let c = core(StaticDirectory::new(), vec![pool()]);
        let m1 = [2, 0, 0, 0, 2, 1];
        let m2 = [2, 0, 0, 0, 2, 2];
        let (ip_x, changes) = dora(&c, m1, Some(b"\0host-x"));
        let [LeaseChange::Upsert(l)] = &changes[..] else {
            panic!("{changes:?}")
        };
        assert_eq!(l.key(), LeaseKey::ClientId(b"\0host-x".to_vec()));
        assert_eq!(l.key().to_string(), "id:00686f73742d78");
        assert_eq!(l.mac, MacAddr(m1));
        // Same client identifier from another NIC: the same lease.
        let (again, _) = dora(&c, m2, Some(b"\0host-x"));
        assert_eq!(
            again, ip_x,
            "the client identifier, not chaddr, names the client"
        );
        // Same chaddr, another identifier: another client, another address.
        let (ip_y, _) = dora(&c, m1, Some(b"\0host-y"));
        assert_ne!(ip_y, ip_x);
        // Same chaddr, no identifier: a third client.
        let (ip_m, changes) = dora(&c, m1, None);
        assert!(ip_m != ip_x && ip_m != ip_y, "{ip_m} {ip_x} {ip_y}");
        assert!(
            matches!(&changes[..], [LeaseChange::Upsert(l)] if l.key() == LeaseKey::Mac(MacAddr(m1)))
        );
        // An identifier that is hardware type 1 + this MAC is the MAC's key.
        let mut hw = vec![1u8];
        hw.extend_from_slice(&m1);
        let (ip_hw, _) = dora(&c, m1, Some(&hw));
        assert_eq!(ip_hw, ip_m);
        // RELEASE is matched by identifier too; another identifier's release is ignored.
        let mut rel = req_from(m2, Some(b"\0host-y"), MessageType::Release);
        rel.set_ciaddr(ip_x);
        assert_eq!(run(&c, &rel), Outcome::Silent);
        let mut rel = req_from(m2, Some(b"\0host-x"), MessageType::Release);
        rel.set_ciaddr(ip_x);
        assert!(matches!(
            run(&c, &rel),
            Outcome::Durable { reply: None, .. }
        ));
    }

    /// Applies a batch to a map the way a store does (in order).
    fn apply(store: &mut HashMap<LeaseKey, Lease>, changes: &[LeaseChange]) {
        for ch in changes {
            match ch {
                LeaseChange::Upsert(l) => {
                    store.retain(|_, o| o.ip != l.ip);
                    store.insert(l.key(), l.clone());
                }
                LeaseChange::Delete { key } => {
                    store.remove(key);
                }
            }
        }
    }

    #[test]
    fn declined_address_is_persisted_and_stays_out_after_a_restart() {
        let c = core(StaticDirectory::new(), vec![pool()]);
        let mut store = HashMap::new();
        let a = [2, 0, 0, 0, 3, 1];
        let (ip, changes) = dora(&c, a, None);
        apply(&mut store, &changes);
        // Someone else declining A's address is ignored.
        let mut d = req_from([2, 0, 0, 0, 3, 9], None, MessageType::Decline);
        d.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        assert_eq!(run(&c, &d), Outcome::Silent);
        let mut d = req_from(a, None, MessageType::Decline);
        d.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        d.opts_mut().insert(DhcpOption::ServerIdentifier(SRV));
        let Outcome::Durable {
            changes,
            reply: None,
        } = run(&c, &d)
        else {
            panic!("DECLINE must be stored")
        };
        assert_eq!(
            changes[0],
            LeaseChange::Delete {
                key: LeaseKey::Mac(MacAddr(a))
            }
        );
        let LeaseChange::Upsert(held) = &changes[1] else {
            panic!("{changes:?}")
        };
        assert_eq!(held.state, LeaseState::Declined);
        assert_eq!(held.key(), LeaseKey::Declined(ip));
        assert_eq!(held.key().to_string(), format!("declined:{ip}"));
        assert!(held.expires_at > now_ms() + 500_000);
        apply(&mut store, &changes);
        // A new server over the stored rows: nobody gets the address, not even A.
        let fresh = DhcpCore::new(
            c.cfg.clone(),
            Arc::new(StaticDirectory::new()),
            Arc::new(Metrics::new()),
            store.values().cloned().collect(),
        );
        let other = dora(&fresh, [2, 0, 0, 0, 4, 0], None).0;
        let (got_a, _) = dora(&fresh, a, None);
        assert!(other != ip && got_a != ip, "declined {ip} handed out");
        // The pool (3 addresses) is now full: the held address is not reclaimed.
        let o = run(
            &fresh,
            &req_from([2, 0, 0, 0, 4, 1], None, MessageType::Discover),
        );
        assert_eq!(o, Outcome::Silent, "pool exhausted while {ip} is held");
        // Once the hold is over the address is reclaimable like an expired lease.
        let mut over = held.clone();
        over.expires_at = now_ms() - 1;
        let fresh = DhcpCore::new(
            c.cfg.clone(),
            Arc::new(StaticDirectory::new()),
            Arc::new(Metrics::new()),
            vec![over],
        );
        let mut seen = Vec::new();
        for i in 0..3u8 {
            seen.push(dora(&fresh, [2, 0, 0, 0, 5, i], None).0);
        }
        assert_eq!(
            seen.last(),
            Some(&ip),
            "last, when nothing else is free: {seen:?}"
        );
    }

    #[test]
    fn decline_hold_is_the_configured_one() {
        for hold in [Duration::from_secs(30), Duration::from_secs(7200)] {
            let mut c = core(StaticDirectory::new(), vec![pool()]);
            c.cfg.decline_hold = hold;
            let a = [2, 0, 0, 0, 6, 1];
            let (ip, _) = dora(&c, a, None);
            let mut d = req_from(a, None, MessageType::Decline);
            d.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
            let before = now_ms();
            let Outcome::Durable { changes, .. } = run(&c, &d) else {
                panic!("DECLINE must be stored")
            };
            let after = now_ms();
            let [_, LeaseChange::Upsert(held)] = &changes[..] else {
                panic!("{changes:?}")
            };
            let ms = hold.as_millis() as i64;
            assert!(
                (before + ms..=after + ms).contains(&held.expires_at),
                "held until {} for a {hold:?} hold (now {before})",
                held.expires_at
            );
        }
    }
}
