//! Durable DHCP leases for the boot server's authoritative mode. The boot server keeps the
//! hot set in memory and hands changes over in batches; each batch is one transaction.

use crate::{Inventory, Result};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// One DHCP lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpLease {
    /// The lease's key (the column is named `mac`): the client MAC `aa:bb:…`, `id:HEX` for a
    /// client identified by its DHCP client identifier, or `declined:IP` for an address held
    /// out of the pool after a DHCPDECLINE.
    pub mac: String,
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

/// One change in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhcpLeaseChange {
    /// Insert or replace the lease with this key.
    Upsert(DhcpLease),
    /// Forget the lease with this key.
    Delete {
        /// The key (see [`DhcpLease::mac`]).
        mac: String,
    },
}

impl Inventory {
    /// Every stored DHCP lease.
    pub async fn dhcp_leases(&self) -> Result<Vec<DhcpLease>> {
        let rows = sqlx::query(
            "SELECT mac, ip, hostname, client_id, state, expires_at FROM dhcp_leases ORDER BY mac",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DhcpLease {
                    mac: r.try_get("mac")?,
                    ip: r.try_get("ip")?,
                    hostname: r.try_get("hostname")?,
                    client_id: r.try_get("client_id")?,
                    state: r.try_get("state")?,
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .collect()
    }

    /// Applies a batch of changes in order, in one transaction: all or none.
    pub async fn apply_dhcp_lease_changes(&self, changes: &[DhcpLeaseChange]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for c in changes {
            match c {
                DhcpLeaseChange::Delete { mac } => {
                    sqlx::query("DELETE FROM dhcp_leases WHERE mac = $1")
                        .bind(mac)
                        .execute(&mut *tx)
                        .await?;
                }
                DhcpLeaseChange::Upsert(l) => {
                    // Another MAC's stale row for this address gives way (the server decided).
                    sqlx::query("DELETE FROM dhcp_leases WHERE ip = $1 AND mac <> $2")
                        .bind(&l.ip)
                        .bind(&l.mac)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO dhcp_leases (mac, ip, hostname, client_id, state, expires_at) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (mac) DO UPDATE SET ip = excluded.ip, hostname = excluded.hostname, \
                         client_id = excluded.client_id, state = excluded.state, expires_at = excluded.expires_at",
                    )
                    .bind(&l.mac)
                    .bind(&l.ip)
                    .bind(&l.hostname)
                    .bind(&l.client_id)
                    .bind(&l.state)
                    .bind(l.expires_at)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
