//! Authoritative DHCP (RFC 2131 §4.3): one function per message type over the lease table.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, PoisonError};
use std::time::Instant;

use dhcproto::v4::{DhcpOption, MessageType, OptionCode};

use super::reply::{reply_destination, selection_address};
use super::table::{AddressLeaseTable, Avail};
use super::{now_ms, DhcpCore, DhcpOutcome, Port};
use crate::boot::BootDecision;
use crate::config::PoolConfig;
use crate::dhcp::packet::{client_info, Request};
use crate::lease::{to_hex, AddressLease, AddressLeaseChange, AddressLeaseKey, AddressLeaseState};
use crate::metrics::DropReason;

/// The options of a client message every type reads, and the time it is handled at.
struct Ask<'a> {
    req: &'a Request,
    key: AddressLeaseKey,
    requested: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
    client_id: Option<&'a [u8]>,
    now: i64,
}

impl<'a> Ask<'a> {
    fn of(req: &'a Request) -> Self {
        let opts = req.msg.opts();
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
        Ask {
            req,
            key: AddressLeaseKey::for_client(req.mac, client_id),
            requested,
            server_id,
            client_id,
            now: now_ms(),
        }
    }
}

/// What DISCOVER, REQUEST and INFORM learnt from the directory, and the pool the client's
/// subnet selects.
struct Client {
    boot: BootDecision,
    reserved: Option<Ipv4Addr>,
    hostname: Option<String>,
    pool_idx: usize,
    pool: PoolConfig,
}

impl DhcpCore {
    pub(super) async fn authoritative(&self, req: &Request) -> DhcpOutcome {
        let a = Ask::of(req);
        match req.msg_type {
            MessageType::Release => return self.release(&a),
            MessageType::Decline => return self.decline(&a),
            MessageType::Discover | MessageType::Request | MessageType::Inform => {}
            _ => return self.drop(DropReason::NotForUs),
        }
        if req.msg_type == MessageType::Request
            && a.server_id.is_some_and(|s| s != self.cfg.server_ip)
        {
            // The client chose another server: free our offer.
            self.table().drop_offer(&a.key);
            return self.drop(DropReason::NotForUs);
        }
        let entry = match self.lookup(req.mac).await {
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

        let mut t = self.table();
        if let Some(ip) = reserved {
            t.reserved.insert(ip, req.mac);
        }
        let Some(pool_idx) = t.pool_index(selection_address(&req.msg)) else {
            drop(t);
            return self.drop(DropReason::NotForUs);
        };
        let Some(pool) = t.pools.get(pool_idx).map(|p| p.cfg.clone()) else {
            drop(t);
            return self.drop(DropReason::NotForUs);
        };
        let c = Client {
            boot,
            reserved,
            hostname,
            pool_idx,
            pool,
        };
        match req.msg_type {
            MessageType::Inform => {
                drop(t);
                self.inform(&a, &c)
            }
            MessageType::Discover => self.discover(&a, &c, t),
            _ => self.request(&a, &c, t),
        }
    }

    fn table(&self) -> MutexGuard<'_, AddressLeaseTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// DHCPRELEASE: the holder gives its address back (kept as a released lease).
    fn release(&self, a: &Ask<'_>) -> DhcpOutcome {
        let mut t = self.table();
        let Some(l) = t.by_key.get(&a.key) else {
            return DhcpOutcome::Silent;
        };
        if l.ip != a.req.msg.ciaddr() || a.server_id.is_some_and(|s| s != self.cfg.server_ip) {
            return DhcpOutcome::Silent;
        }
        let mut l = l.clone();
        l.state = AddressLeaseState::Released;
        l.expires_at = a.now;
        t.put(a.key.clone(), l.clone());
        self.metrics.leases_released.fetch_add(1, Ordering::Relaxed);
        DhcpOutcome::Durable {
            changes: vec![AddressLeaseChange::Upsert(l)],
            reply: None,
            refusal: None,
        }
    }

    /// DHCPDECLINE: the address is in use on the network; it is held out of the pool.
    fn decline(&self, a: &Ask<'_>) -> DhcpOutcome {
        let mac = a.req.mac;
        let Some(ip) = a.requested else {
            return self.drop(DropReason::BadOptions);
        };
        if a.server_id.is_some_and(|s| s != self.cfg.server_ip) {
            return self.drop(DropReason::NotForUs);
        }
        let mut t = self.table();
        t.drop_offer(&a.key);
        // Only the lease's holder can decline it (as Kea): otherwise any host could
        // take addresses out of the pool for everyone.
        if t.by_key.get(&a.key).is_none_or(|l| l.ip != ip) {
            return DhcpOutcome::Silent;
        }
        self.metrics.leases_declined.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%ip, %mac, "DHCPDECLINE: address in use on the network; held out of the pool");
        t.remove(&a.key);
        // Persisted as a lease of its own, so a restart keeps the address out too.
        let held = AddressLease {
            mac,
            ip,
            hostname: None,
            client_id: None,
            expires_at: a.now.saturating_add(
                i64::try_from(self.cfg.decline_hold.as_millis()).unwrap_or(i64::MAX),
            ),
            state: AddressLeaseState::Declined,
        };
        t.put(held.key(), held.clone());
        DhcpOutcome::Durable {
            changes: vec![
                AddressLeaseChange::Delete { key: a.key.clone() },
                AddressLeaseChange::Upsert(held),
            ],
            reply: None,
            refusal: None,
        }
    }

    /// DHCPINFORM: a client with an address asks for the other options only.
    fn inform(&self, a: &Ask<'_>, c: &Client) -> DhcpOutcome {
        let req = a.req;
        self.metrics.informs.fetch_add(1, Ordering::Relaxed);
        let mut m = self.base_reply(req, MessageType::Ack);
        m.set_ciaddr(req.msg.ciaddr());
        Self::lease_options(&mut m, &c.pool, false);
        self.apply_boot(&mut m, req, &c.boot, false);
        let dest = reply_destination(&req.msg, MessageType::Ack, Ipv4Addr::UNSPECIFIED);
        self.send_now(&m, dest, Port::Dhcp, MessageType::Ack)
    }

    /// DHCPDISCOVER: offer an address (held for the client for a while, not yet stored).
    fn discover(
        &self,
        a: &Ask<'_>,
        c: &Client,
        mut t: MutexGuard<'_, AddressLeaseTable>,
    ) -> DhcpOutcome {
        let req = a.req;
        let mac = req.mac;
        let Some(ip) = t.allocate(&a.key, mac, c.pool_idx, c.reserved, a.requested) else {
            drop(t);
            self.metrics.pool_exhausted.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%mac, "address pool exhausted");
            return DhcpOutcome::Silent;
        };
        t.record_offer(&a.key, ip);
        drop(t);
        self.metrics.leases_offered.fetch_add(1, Ordering::Relaxed);
        let mut m = self.base_reply(req, MessageType::Offer);
        m.set_yiaddr(ip);
        Self::lease_options(&mut m, &c.pool, true);
        if let Some(h) = &c.hostname {
            m.opts_mut().insert(DhcpOption::Hostname(h.clone()));
        }
        self.apply_boot(&mut m, req, &c.boot, false);
        let dest = reply_destination(&req.msg, MessageType::Offer, ip);
        self.send_now(&m, dest, Port::Dhcp, MessageType::Offer)
    }

    /// DHCPREQUEST: selecting (server id), init-reboot (option 50), renew/rebind (ciaddr).
    /// ACKed only once the lease is stored ([`DhcpOutcome::Durable`]), else NAKed.
    fn request(
        &self,
        a: &Ask<'_>,
        c: &Client,
        mut t: MutexGuard<'_, AddressLeaseTable>,
    ) -> DhcpOutcome {
        let req = a.req;
        let q = &req.msg;
        let (mac, key, pool, reserved) = (req.mac, &a.key, &c.pool, c.reserved);
        let ciaddr = q.ciaddr();
        let Some(ip) = a.requested.or((!ciaddr.is_unspecified()).then_some(ciaddr)) else {
            drop(t);
            return self.drop(DropReason::BadOptions);
        };
        let now_i = Instant::now();
        let known = t.by_key.get(key).is_some_and(|l| l.ip == ip);
        // Another client's expired address only if we offered it (the reclaim rule
        // lives in `allocate`) or it is this client's reservation.
        let offered = t.offers.get(key).is_some_and(|o| o.ip == ip);
        let ok = pool.contains_subnet(ip)
            && match t.avail(ip, key, mac, pool, now_i, a.now) {
                Avail::Free => true,
                Avail::Expired => offered || reserved == Some(ip),
                Avail::Taken => false,
            }
            && (pool.contains_range(ip) || reserved == Some(ip) || known);
        if !ok {
            drop(t);
            if !pool.contains_subnet(ip) && !ciaddr.is_unspecified() && a.server_id.is_none() {
                // Rebinding an address from some other network: not ours to judge.
                return self.drop(DropReason::NotForUs);
            }
            return self.nak(req, "requested address not available");
        }
        let lease = AddressLease {
            mac,
            ip,
            hostname: c.hostname.clone(),
            client_id: a.client_id.map(to_hex),
            expires_at: a.now.saturating_add(pool.lease_time.as_millis() as i64),
            state: AddressLeaseState::Bound,
        };
        let changes = t.bind(key.clone(), lease);
        drop(t);
        self.metrics.leases_acked.fetch_add(1, Ordering::Relaxed);
        let mut m = self.base_reply(req, MessageType::Ack);
        m.set_yiaddr(ip);
        m.set_ciaddr(ciaddr);
        Self::lease_options(&mut m, pool, true);
        if let Some(h) = &c.hostname {
            m.opts_mut().insert(DhcpOption::Hostname(h.clone()));
        }
        self.apply_boot(&mut m, req, &c.boot, false);
        let dest = reply_destination(q, MessageType::Ack, ip);
        DhcpOutcome::Durable {
            changes,
            reply: self.encode(&m, dest, Port::Dhcp, MessageType::Ack),
            refusal: if self.shared_store.load(Ordering::Relaxed) {
                self.nak_reply(req, "address taken by another server's lease")
            } else {
                None
            },
        }
    }
}
