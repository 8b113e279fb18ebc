//! Durable DHCP leases for the boot server's authoritative mode. The boot server keeps the
//! hot set in memory and hands changes over in batches; each batch is one transaction.
//!
//! Several instances may serve one segment from one database: the database decides who gets
//! an address (`ip` is unique; a batch is applied under one lock, and an upsert whose address
//! another key holds live loses and is reported back, never written over). See
//! [`plan_lease_writes`].

use crate::db::Backend;
use crate::{Inventory, Result};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::collections::HashMap;

/// Arbitrary key of the PostgreSQL advisory lock that serialises DHCP lease batches of every
/// instance (SQLite's `BEGIN IMMEDIATE` already does).
const DHCP_LOCK_KEY: i64 = 0x7261_636b_6468_6370; // "rackdhcp"
/// Rows per statement. Small on purpose: SQLite looks a `$N` parameter up by walking the
/// statement's parameter list, so binding costs grow with the square of the parameters per
/// statement (500 rows = 3,000 parameters made binding the commit's main cost, measured with
/// perf); 32 rows keep that negligible and still cut the statements per lease to a few /32.
const RUN: usize = 32;
/// How far back [`Inventory::dhcp_leases_written_since`] callers should re-read: a batch's
/// `written_at` is taken under the lock, so batches commit in that order up to the clock skew
/// between instances and the commit's own latency.
pub const DHCP_REREAD_MS: i64 = 2_000;

/// One DHCP lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpLease {
    /// The lease's key (`lease_key`): the client MAC `aa:bb:…`, `id:HEX` for a client
    /// identified by its DHCP client identifier, or `declined:IP` for an address held out of
    /// the pool after a DHCPDECLINE.
    pub key: String,
    /// The client's hardware address `aa:bb:…`; `None` for a declined hold, and for `id:`
    /// rows written before the column existed (schema 0005) until the client renews.
    pub mac: Option<String>,
    /// Leased IPv4 address.
    pub ip: String,
    /// Host name the client sent.
    pub hostname: Option<String>,
    /// Client identifier (option 61), hex.
    pub client_id: Option<String>,
    /// `bound`, `released` or `declined`.
    pub state: String,
    /// Expiry (unix ms).
    pub expires_at: i64,
}

/// One DHCP lease as staff see it: the row and, when its MAC is an enrolled NIC, the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpLeaseInfo {
    /// The stored lease (its fields appear at the top level in JSON).
    #[serde(flatten)]
    pub lease: DhcpLease,
    /// The enrolled machine with a NIC of this MAC.
    pub machine: Option<String>,
}

/// Decodes the lease columns (`lease_key, mac, ip, hostname, client_id, state, expires_at`).
fn lease_from_row(r: &sqlx::any::AnyRow) -> Result<DhcpLease> {
    Ok(DhcpLease {
        key: r.try_get("lease_key")?,
        mac: r.try_get("mac")?,
        ip: r.try_get("ip")?,
        hostname: r.try_get("hostname")?,
        client_id: r.try_get("client_id")?,
        state: r.try_get("state")?,
        expires_at: r.try_get("expires_at")?,
    })
}

impl Inventory {
    /// Every stored DHCP lease.
    pub async fn dhcp_leases(&self) -> Result<Vec<DhcpLease>> {
        let rows = sqlx::query(
            "SELECT lease_key, mac, ip, hostname, client_id, state, expires_at FROM dhcp_leases \
             ORDER BY lease_key",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(lease_from_row).collect()
    }

    /// Every stored DHCP lease with the machine its MAC belongs to, in address order.
    pub async fn dhcp_lease_infos(&self) -> Result<Vec<DhcpLeaseInfo>> {
        // machine_nics.mac is unique, so the join adds at most one row per lease.
        let rows = sqlx::query(
            "SELECT l.lease_key, l.mac, l.ip, l.hostname, l.client_id, l.state, l.expires_at, \
                    m.name AS machine \
             FROM dhcp_leases l \
             LEFT JOIN machine_nics n ON n.mac = l.mac \
             LEFT JOIN machines m ON m.id = n.machine_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(DhcpLeaseInfo {
                    lease: lease_from_row(r)?,
                    machine: r.try_get("machine")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Numeric address order (text order puts .100 before .20); a damaged address last.
        out.sort_by_key(|l| {
            l.lease
                .ip
                .parse::<std::net::Ipv4Addr>()
                .map_or(u64::MAX, |ip| u64::from(u32::from(ip)))
        });
        Ok(out)
    }
}

/// One change in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhcpLeaseChange {
    /// Insert or replace the lease with this key, unless another key holds its address live.
    Upsert(DhcpLease),
    /// Forget the lease with this key.
    Delete {
        /// The key (see [`DhcpLease::key`]).
        key: String,
    },
    /// Forget `key`'s lease on `ip` only if it is expired or released: the boot server saw it
    /// so and reclaims the address, but another instance may have renewed it meanwhile.
    Reclaim {
        /// The key whose stale lease gives way.
        key: String,
        /// The address it held.
        ip: String,
    },
}

/// An upsert the database refused: another key holds the address, live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpLeaseLost {
    /// The key that asked.
    pub key: String,
    /// The address it asked for.
    pub ip: String,
    /// The lease that holds the address.
    pub holder: DhcpLease,
}

/// What one batch does to the rows it touches: delete these keys' rows, then insert these.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct LeaseWrites {
    pub(crate) delete_keys: Vec<String>,
    pub(crate) insert: Vec<DhcpLease>,
    pub(crate) lost: Vec<DhcpLeaseLost>,
}

/// Whether a stored lease may give its address to another key: it expired, or was released
/// (a declined hold counts until its hold ends). The same rule as the boot server's table.
fn reclaimable(l: &DhcpLease, now: i64) -> bool {
    l.expires_at <= now || l.state == "released"
}

/// The one rule of who gets an address, pure: `existing` are the stored rows with a key or an
/// address the batch names; `changes` apply in order. An upsert loses when its address is held
/// by another key whose lease is live; a client's own lease moves with it wherever it went
/// (whichever instance wrote it).
pub(crate) fn plan_lease_writes(
    existing: Vec<DhcpLease>,
    changes: &[DhcpLeaseChange],
    now: i64,
) -> LeaseWrites {
    let original: HashMap<String, DhcpLease> =
        existing.into_iter().map(|l| (l.key.clone(), l)).collect();
    let mut rows = original.clone();
    let mut by_ip: HashMap<String, String> = rows
        .values()
        .map(|l| (l.ip.clone(), l.key.clone()))
        .collect();
    let mut lost = Vec::new();
    let forget =
        |rows: &mut HashMap<String, DhcpLease>, by_ip: &mut HashMap<String, String>, key: &str| {
            if let Some(old) = rows.remove(key) {
                if by_ip.get(&old.ip).is_some_and(|k| k == key) {
                    by_ip.remove(&old.ip);
                }
            }
        };
    for c in changes {
        match c {
            DhcpLeaseChange::Upsert(l) => {
                if let Some(other) = by_ip.get(&l.ip).filter(|k| **k != l.key).cloned() {
                    match rows.get(&other) {
                        Some(holder) if !reclaimable(holder, now) => {
                            lost.push(DhcpLeaseLost {
                                key: l.key.clone(),
                                ip: l.ip.clone(),
                                holder: holder.clone(),
                            });
                            continue;
                        }
                        _ => forget(&mut rows, &mut by_ip, &other),
                    }
                }
                forget(&mut rows, &mut by_ip, &l.key);
                by_ip.insert(l.ip.clone(), l.key.clone());
                rows.insert(l.key.clone(), l.clone());
            }
            DhcpLeaseChange::Delete { key } => forget(&mut rows, &mut by_ip, key),
            DhcpLeaseChange::Reclaim { key, ip } => {
                if rows
                    .get(key)
                    .is_some_and(|l| l.ip == *ip && reclaimable(l, now))
                {
                    forget(&mut rows, &mut by_ip, key);
                }
            }
        }
    }
    let mut delete_keys: Vec<String> = original
        .iter()
        .filter(|(k, l)| rows.get(*k) != Some(l))
        .map(|(k, _)| k.clone())
        .collect();
    delete_keys.sort();
    let mut insert: Vec<DhcpLease> = rows
        .into_iter()
        .filter(|(k, l)| original.get(k) != Some(l))
        .map(|(_, l)| l)
        .collect();
    insert.sort_by(|a, b| a.key.cmp(&b.key));
    LeaseWrites {
        delete_keys,
        insert,
        lost,
    }
}

/// `$from,…,$(from+n-1)`.
fn params(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|k| format!("${k}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Inventory {
    /// Applies a batch of changes in order, in one transaction: all or none. Returns the
    /// upserts that lost their address to another key's live lease (written by another
    /// instance, or by this one before a restart): nothing of theirs is written, and the boot
    /// server must not ACK them.
    ///
    /// The batch reads the rows it touches, decides with [`plan_lease_writes`] and writes only
    /// what changed, a few statements per 32 leases: the boot server commits thousands of
    /// leases a second, and a round trip per row was most of the commit's time.
    pub async fn apply_dhcp_lease_changes(
        &self,
        changes: &[DhcpLeaseChange],
    ) -> Result<Vec<DhcpLeaseLost>> {
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            // Two instances' batches must not both read "free" and then both write.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(DHCP_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
        }
        // Taken under the lock: batches' `written_at` follow their commit order.
        let now = crate::now_ms();
        let mut keys: Vec<&str> = Vec::new();
        let mut ips: Vec<&str> = Vec::new();
        for c in changes {
            match c {
                DhcpLeaseChange::Upsert(l) => {
                    keys.push(&l.key);
                    ips.push(&l.ip);
                }
                DhcpLeaseChange::Delete { key } | DhcpLeaseChange::Reclaim { key, .. } => {
                    keys.push(key)
                }
            }
        }
        keys.sort_unstable();
        keys.dedup();
        ips.sort_unstable();
        ips.dedup();
        let mut existing: HashMap<String, DhcpLease> = HashMap::new();
        for (column, values) in [("lease_key", &keys), ("ip", &ips)] {
            for chunk in values.chunks(RUN) {
                let sql = format!(
                    "SELECT lease_key, mac, ip, hostname, client_id, state, expires_at \
                     FROM dhcp_leases WHERE {column} IN ({})",
                    params(1, chunk.len())
                );
                let mut q = sqlx::query(&sql);
                for v in chunk {
                    q = q.bind(*v);
                }
                for r in q.fetch_all(&mut *tx).await? {
                    let l = lease_from_row(&r)?;
                    existing.insert(l.key.clone(), l);
                }
            }
        }
        let plan = plan_lease_writes(existing.into_values().collect(), changes, now);
        for chunk in plan.delete_keys.chunks(RUN) {
            let sql = format!(
                "DELETE FROM dhcp_leases WHERE lease_key IN ({})",
                params(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for k in chunk {
                q = q.bind(k);
            }
            q.execute(&mut *tx).await?;
        }
        for run in plan.insert.chunks(RUN) {
            let values = (0..run.len())
                .map(|r| format!("({})", params(r * 8 + 1, 8)))
                .collect::<Vec<_>>()
                .join(",");
            let sql = format!(
                "INSERT INTO dhcp_leases \
                 (lease_key, mac, ip, hostname, client_id, state, expires_at, written_at) \
                 VALUES {values}"
            );
            let mut q = sqlx::query(&sql);
            for l in run {
                q = q
                    .bind(&l.key)
                    .bind(&l.mac)
                    .bind(&l.ip)
                    .bind(&l.hostname)
                    .bind(&l.client_id)
                    .bind(&l.state)
                    .bind(l.expires_at)
                    .bind(now);
            }
            q.execute(&mut *tx).await?;
        }
        crate::retry::commit(tx).await?;
        Ok(plan.lost)
    }

    /// The leases written at or after `since` (unix ms), by any instance, with the newest
    /// `written_at` among them: how an instance learns the addresses the others handed out.
    pub async fn dhcp_leases_written_since(&self, since: i64) -> Result<(Vec<DhcpLease>, i64)> {
        let rows = sqlx::query(
            "SELECT lease_key, mac, ip, hostname, client_id, state, expires_at, written_at \
             FROM dhcp_leases WHERE written_at >= $1 ORDER BY written_at LIMIT 100000",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let mut newest = since;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            newest = newest.max(r.try_get::<i64, _>("written_at")?);
            out.push(lease_from_row(r)?);
        }
        Ok((out, newest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(key: &str, ip: &str, expires_at: i64, state: &str) -> DhcpLease {
        DhcpLease {
            key: key.into(),
            mac: Some(key.into()),
            ip: ip.into(),
            hostname: None,
            client_id: None,
            state: state.into(),
            expires_at,
        }
    }

    #[test]
    fn a_live_lease_of_another_key_keeps_its_address() {
        let theirs = lease("aa", "10.0.0.5", 2_000, "bound");
        let mine = lease("bb", "10.0.0.5", 3_000, "bound");
        let w = plan_lease_writes(
            vec![theirs.clone()],
            &[DhcpLeaseChange::Upsert(mine)],
            1_000,
        );
        assert!(w.insert.is_empty() && w.delete_keys.is_empty(), "{w:?}");
        assert_eq!(w.lost.len(), 1);
        assert_eq!(w.lost[0].holder, theirs);
        assert_eq!(w.lost[0].key, "bb");
    }

    #[test]
    fn an_expired_released_or_ended_hold_gives_way() {
        for old in [
            lease("aa", "10.0.0.5", 500, "bound"),
            lease("aa", "10.0.0.5", 9_000, "released"),
            lease("declined:10.0.0.5", "10.0.0.5", 900, "declined"),
        ] {
            let mine = lease("bb", "10.0.0.5", 3_000, "bound");
            let w = plan_lease_writes(
                vec![old.clone()],
                &[DhcpLeaseChange::Upsert(mine.clone())],
                1_000,
            );
            assert!(w.lost.is_empty(), "{old:?}");
            assert_eq!(w.delete_keys, vec![old.key.clone()]);
            assert_eq!(w.insert, vec![mine]);
        }
        // A live declined hold does not.
        let held = lease("declined:10.0.0.5", "10.0.0.5", 9_000, "declined");
        let w = plan_lease_writes(
            vec![held],
            &[DhcpLeaseChange::Upsert(lease(
                "bb", "10.0.0.5", 3_000, "bound",
            ))],
            1_000,
        );
        assert_eq!(w.lost.len(), 1);
    }

    #[test]
    fn a_clients_own_lease_moves_and_renews_whoever_wrote_it() {
        let old = lease("aa", "10.0.0.5", 9_000, "bound");
        let renewed = lease("aa", "10.0.0.5", 19_000, "bound");
        let w = plan_lease_writes(
            vec![old.clone()],
            &[DhcpLeaseChange::Upsert(renewed.clone())],
            1_000,
        );
        assert!(w.lost.is_empty());
        assert_eq!(w.delete_keys, vec!["aa".to_string()]);
        assert_eq!(w.insert, vec![renewed]);
        let moved = lease("aa", "10.0.0.6", 19_000, "bound");
        let w = plan_lease_writes(vec![old], &[DhcpLeaseChange::Upsert(moved.clone())], 1_000);
        assert_eq!(w.insert, vec![moved]);
    }

    #[test]
    fn reclaim_spares_a_lease_renewed_meanwhile_and_batches_apply_in_order() {
        let renewed = lease("aa", "10.0.0.5", 9_000, "bound");
        let w = plan_lease_writes(
            vec![renewed.clone()],
            &[
                DhcpLeaseChange::Reclaim {
                    key: "aa".into(),
                    ip: "10.0.0.5".into(),
                },
                DhcpLeaseChange::Upsert(lease("bb", "10.0.0.5", 3_000, "bound")),
            ],
            1_000,
        );
        assert_eq!(w.lost.len(), 1, "the renewed lease stays: {w:?}");
        // In one batch: a key leaves an address, another takes it.
        let w = plan_lease_writes(
            vec![renewed],
            &[
                DhcpLeaseChange::Upsert(lease("aa", "10.0.0.6", 9_000, "bound")),
                DhcpLeaseChange::Upsert(lease("bb", "10.0.0.5", 3_000, "bound")),
                DhcpLeaseChange::Delete { key: "cc".into() },
            ],
            1_000,
        );
        assert!(w.lost.is_empty());
        assert_eq!(w.insert.len(), 2);
    }

    /// Two inventories on one database (PostgreSQL when the suite has one, else one SQLite
    /// file) race for the same 20 addresses: each address goes to one key only.
    #[tokio::test]
    async fn racing_batches_never_give_one_address_twice() {
        let dir = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}", dir.path().join("d.db").display());
        let a = Inventory::open(&url, crate::SecretBox::from_key([1; 32]))
            .await
            .expect("open");
        let b = Inventory::open(&url, crate::SecretBox::from_key([1; 32]))
            .await
            .expect("open");
        let far = crate::now_ms() + 600_000;
        let batch = |who: &str| -> Vec<DhcpLeaseChange> {
            (0..20)
                .map(|i| {
                    DhcpLeaseChange::Upsert(lease(
                        &format!("{who}{i}"),
                        &format!("10.0.0.{i}"),
                        far,
                        "bound",
                    ))
                })
                .collect()
        };
        let (ba, bb) = (batch("a"), batch("b"));
        let (ra, rb) = tokio::join!(
            a.apply_dhcp_lease_changes(&ba),
            b.apply_dhcp_lease_changes(&bb)
        );
        let (la, lb) = (ra.expect("a"), rb.expect("b"));
        assert_eq!(la.len() + lb.len(), 20, "one of each pair lost");
        let rows = a.dhcp_leases().await.expect("rows");
        assert_eq!(rows.len(), 20);
        let (since, newest) = a.dhcp_leases_written_since(0).await.expect("since");
        assert_eq!(since.len(), 20);
        assert!(newest > 0);
    }
}
