//! Durable DHCP leases for the boot server's authoritative mode. The boot server keeps the
//! hot set in memory and hands changes over in batches; each batch is one transaction.

use crate::{Inventory, Result};
use serde::{Deserialize, Serialize};
use sqlx::Row;

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

/// One change in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhcpLeaseChange {
    /// Insert or replace the lease with this key.
    Upsert(DhcpLease),
    /// Forget the lease with this key.
    Delete {
        /// The key (see [`DhcpLease::key`]).
        key: String,
    },
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

    /// Applies a batch of changes in order, in one transaction: all or none.
    ///
    /// A run of upserts with distinct keys and distinct addresses is written with two
    /// statements (delete every row holding one of those keys or addresses, then one
    /// multi-row insert), which leaves the same rows as upserting them one by one: the boot
    /// server commits thousands of leases a second, and a round trip per row was most of the
    /// commit's time.
    pub async fn apply_dhcp_lease_changes(&self, changes: &[DhcpLeaseChange]) -> Result<()> {
        // Rows per statement. Small on purpose: SQLite looks a `$N` parameter up by walking
        // the statement's parameter list, so binding costs grow with the square of the
        // parameters per statement (500 rows = 3,000 parameters made binding the commit's
        // main cost, measured with perf); 32 rows keep that negligible and still cut the
        // statements per lease from 2 to 1/16.
        const RUN: usize = 32;
        let mut tx = self.begin_write().await?;
        let mut i = 0;
        while i < changes.len() {
            let run_start = i;
            let mut keys = std::collections::HashSet::new();
            let mut ips = std::collections::HashSet::new();
            while let Some(DhcpLeaseChange::Upsert(l)) = changes.get(i) {
                if i - run_start == RUN || !keys.insert(&l.key) || !ips.insert(&l.ip) {
                    break;
                }
                i += 1;
            }
            let run: Vec<&DhcpLease> = changes[run_start..i]
                .iter()
                .filter_map(|c| match c {
                    DhcpLeaseChange::Upsert(l) => Some(l),
                    DhcpLeaseChange::Delete { .. } => None,
                })
                .collect();
            if run.is_empty() {
                if let Some(DhcpLeaseChange::Delete { key }) = changes.get(i) {
                    sqlx::query("DELETE FROM dhcp_leases WHERE lease_key = $1")
                        .bind(key)
                        .execute(&mut *tx)
                        .await?;
                }
                i += 1;
                continue;
            }
            let n = run.len();
            // Another key's stale row for one of these addresses gives way (the server decided).
            let list = |from: usize| {
                (from..from + n)
                    .map(|k| format!("${k}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let sql = format!(
                "DELETE FROM dhcp_leases WHERE lease_key IN ({}) OR ip IN ({})",
                list(1),
                list(n + 1)
            );
            let mut q = sqlx::query(&sql);
            for l in &run {
                q = q.bind(&l.key);
            }
            for l in &run {
                q = q.bind(&l.ip);
            }
            q.execute(&mut *tx).await?;
            let values = (0..n)
                .map(|r| {
                    let b = r * 7;
                    format!(
                        "(${},${},${},${},${},${},${})",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6,
                        b + 7
                    )
                })
                .collect::<Vec<_>>()
                .join(",");
            let sql = format!(
                "INSERT INTO dhcp_leases (lease_key, mac, ip, hostname, client_id, state, expires_at) \
                 VALUES {values}"
            );
            let mut q = sqlx::query(&sql);
            for l in &run {
                q = q
                    .bind(&l.key)
                    .bind(&l.mac)
                    .bind(&l.ip)
                    .bind(&l.hostname)
                    .bind(&l.client_id)
                    .bind(&l.state)
                    .bind(l.expires_at);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
