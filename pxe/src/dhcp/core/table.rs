//! The lease table: the hot set of leases and offers of one interface's pools, and the
//! allocation rule (free first, then the oldest expired lease).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::now_ms;
use crate::config::PoolConfig;
use crate::lease::{AddressLease, AddressLeaseChange, AddressLeaseKey, AddressLeaseState};
use crate::mac::MacAddr;

/// How long an offered address is kept for the client that was offered it.
pub(super) const OFFER_HOLD: Duration = Duration::from_secs(60);

pub(super) struct PoolState {
    pub(super) cfg: PoolConfig,
    pub(super) start: u32,
    pub(super) size: u32,
    pub(super) cursor: u32,
}

pub(super) struct Offer {
    pub(super) ip: Ipv4Addr,
    pub(super) until: Instant,
}

/// Whether an address can go to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Avail {
    /// Nobody else holds it (never leased, or this client's own).
    Free,
    /// Another client's lease on it has expired (or was released, or a decline's hold ended):
    /// usable, but only when no free address is left.
    Expired,
    /// Not for this client.
    Taken,
}

/// In-memory lease state (the hot set); the store holds the durable copy.
pub(super) struct AddressLeaseTable {
    pub(super) server_ip: Ipv4Addr,
    pub(super) pools: Vec<PoolState>,
    pub(super) by_key: HashMap<AddressLeaseKey, AddressLease>,
    pub(super) by_ip: HashMap<Ipv4Addr, AddressLeaseKey>,
    /// (expires_at, ip) of every lease in `by_key`: the oldest expired lease is found first.
    pub(super) by_expiry: BTreeSet<(i64, u32)>,
    pub(super) offers: HashMap<AddressLeaseKey, Offer>,
    pub(super) offered_ips: HashMap<Ipv4Addr, AddressLeaseKey>,
    pub(super) reserved: HashMap<Ipv4Addr, MacAddr>,
}

impl AddressLeaseTable {
    pub(super) fn new(
        server_ip: Ipv4Addr,
        pools: &[PoolConfig],
        leases: Vec<AddressLease>,
    ) -> Self {
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
        let mut t = AddressLeaseTable {
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
    pub(super) fn put(
        &mut self,
        key: AddressLeaseKey,
        lease: AddressLease,
    ) -> Option<(AddressLeaseKey, AddressLease)> {
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
    pub(super) fn remove(&mut self, key: &AddressLeaseKey) -> Option<AddressLease> {
        let l = self.by_key.remove(key)?;
        self.by_expiry.remove(&(l.expires_at, u32::from(l.ip)));
        if self.by_ip.get(&l.ip) == Some(key) {
            self.by_ip.remove(&l.ip);
        }
        Some(l)
    }

    /// The pool for a client whose subnet is named by `giaddr` (see [`selection_address`]);
    /// unspecified means directly attached: the server's own subnet, else the first pool.
    pub(super) fn pool_index(&self, giaddr: Ipv4Addr) -> Option<usize> {
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
    pub(super) fn avail(
        &self,
        ip: Ipv4Addr,
        key: &AddressLeaseKey,
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
                Some(l) if l.expires_at > now_ms && l.state != AddressLeaseState::Released => {
                    Avail::Taken
                }
                Some(_) => Avail::Expired,
                None => Avail::Free,
            },
            _ => Avail::Free,
        }
    }

    /// Picks an address for `key`: its reservation, its own lease, its offer, the address it
    /// asks for, then a never-used one; only when none is free, the address of the lease that
    /// expired first (RFC 2131 §4.3.1 prefers a client's previous address).
    pub(super) fn allocate(
        &mut self,
        key: &AddressLeaseKey,
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

    pub(super) fn record_offer(&mut self, key: &AddressLeaseKey, ip: Ipv4Addr) {
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
            let expired: Vec<AddressLeaseKey> = self
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

    pub(super) fn drop_offer(&mut self, key: &AddressLeaseKey) {
        if let Some(o) = self.offers.remove(key) {
            if self.offered_ips.get(&o.ip) == Some(key) {
                self.offered_ips.remove(&o.ip);
            }
        }
    }

    /// Takes in a lease the store holds (written by another instance on a shared store, or
    /// this one's own, read back): the store's row wins over what the table believes, unless
    /// the table already has something newer for that key or that address.
    pub(super) fn merge_stored(&mut self, lease: AddressLease) {
        if !self.pools.iter().any(|p| p.cfg.contains_subnet(lease.ip)) {
            return;
        }
        let key = lease.key();
        if self
            .by_key
            .get(&key)
            .is_some_and(|l| l.expires_at >= lease.expires_at)
        {
            return;
        }
        if let Some(other) = self.by_ip.get(&lease.ip).filter(|k| **k != key) {
            if self
                .by_key
                .get(other)
                .is_some_and(|l| l.expires_at > lease.expires_at)
            {
                return;
            }
        }
        self.put(key, lease);
    }

    /// The store refused `key`'s lease on `ip` because `holder` has it: forget the binding
    /// the table made and learn the holder's, so the next DISCOVER is offered another address.
    pub(super) fn lose(&mut self, key: &AddressLeaseKey, ip: Ipv4Addr, holder: AddressLease) {
        if self.by_key.get(key).is_some_and(|l| l.ip == ip) {
            self.remove(key);
        }
        self.drop_offer(key);
        let holder_key = holder.key();
        self.put(holder_key, holder);
    }

    /// Starts each pool's search for a free address at a point of its own derived from the
    /// server's address, so two instances on one segment mostly offer different addresses
    /// (the store still decides when they do not).
    pub(super) fn spread_cursors(&mut self) {
        let seed = u32::from(self.server_ip).wrapping_mul(0x9e37_79b9);
        for p in &mut self.pools {
            p.cursor = (seed >> 7) % p.size.max(1);
        }
    }

    /// Binds `lease` to `key`; returns the store changes (a displaced lease's delete first).
    pub(super) fn bind(
        &mut self,
        key: AddressLeaseKey,
        lease: AddressLease,
    ) -> Vec<AddressLeaseChange> {
        let mut changes = Vec::with_capacity(2);
        self.drop_offer(&key);
        if let Some((other, old)) = self.put(key, lease.clone()) {
            changes.push(AddressLeaseChange::Reclaim {
                key: other,
                ip: old.ip,
            });
        }
        changes.push(AddressLeaseChange::Upsert(lease));
        changes
    }
}
