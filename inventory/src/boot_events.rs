//! What the boot server saw of each MAC (DHCP, TFTP, `/boot` fetches, the agent's claim),
//! kept per MAC and bounded: each batch's writer prunes every MAC it wrote to the newest
//! [`BOOT_EVENTS_PER_MAC`], and the whole table to the newest [`BOOT_EVENTS_TOTAL`], so it
//! grows neither with time nor with the number of MACs a stranger on the boot network invents.

use crate::db::{from_json, to_json};
use crate::{Inventory, MacAddress, Result};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::collections::BTreeSet;

/// How many events are kept per MAC (the newest).
pub const BOOT_EVENTS_PER_MAC: i64 = 300;

/// How many events are kept in all (the newest), whatever the number of MACs.
pub const BOOT_EVENTS_TOTAL: i64 = 100_000;

/// One boot event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootEvent {
    /// Its id (increasing: the cursor of `after`).
    pub id: i64,
    /// The client's MAC `aa:bb:…`.
    pub mac: String,
    /// When the boot server saw it (unix ms).
    pub at: i64,
    /// What happened: `dhcp.discover`, `dhcp.offer`, `tftp.read`, `http.script`, `agent.claim`, ….
    pub kind: String,
    /// The facts seen (arch, vendor class, file, address, …).
    pub detail: serde_json::Value,
}

/// A boot event to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBootEvent {
    /// The client's MAC.
    pub mac: MacAddress,
    /// When it was seen (unix ms).
    pub at: i64,
    /// What happened (see [`BootEvent::kind`]).
    pub kind: String,
    /// The facts seen.
    pub detail: serde_json::Value,
}

impl Inventory {
    /// Stores a batch of boot events in one transaction and prunes each of their MACs to the
    /// newest [`BOOT_EVENTS_PER_MAC`].
    pub async fn record_boot_events(&self, batch: &[NewBootEvent]) -> Result<()> {
        self.record_boot_events_within(batch, BOOT_EVENTS_TOTAL)
            .await
    }

    /// [`Inventory::record_boot_events`] keeping at most `total` events in all.
    async fn record_boot_events_within(&self, batch: &[NewBootEvent], total: i64) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let mut macs = BTreeSet::new();
        for e in batch {
            let mac = e.mac.to_string();
            sqlx::query("INSERT INTO boot_events (mac, at, kind, detail) VALUES ($1, $2, $3, $4)")
                .bind(&mac)
                .bind(e.at)
                .bind(&e.kind)
                .bind(to_json(&e.detail))
                .execute(&mut *tx)
                .await?;
            macs.insert(mac);
        }
        for mac in &macs {
            let oldest_kept: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM boot_events WHERE mac = $1 ORDER BY id DESC LIMIT 1 OFFSET $2",
            )
            .bind(mac)
            .bind(BOOT_EVENTS_PER_MAC - 1)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(id) = oldest_kept {
                sqlx::query("DELETE FROM boot_events WHERE mac = $1 AND id < $2")
                    .bind(mac)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        // Invented MACs (one event each) must not grow the table without end.
        let oldest_kept: Option<i64> =
            sqlx::query_scalar("SELECT id FROM boot_events ORDER BY id DESC LIMIT 1 OFFSET $1")
                .bind(total - 1)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(id) = oldest_kept {
            sqlx::query("DELETE FROM boot_events WHERE id < $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        crate::retry::commit(tx).await?;
        Ok(())
    }

    /// The boot events of these MACs, newest first: at most `limit` (1..=1000), only those
    /// with an id above `after` when given (to follow new ones).
    pub async fn boot_events(
        &self,
        macs: &[MacAddress],
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<BootEvent>> {
        if macs.is_empty() {
            return Ok(Vec::new());
        }
        let list = (0..macs.len())
            .map(|i| format!("${}", i + 3))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "SELECT id, mac, at, kind, detail FROM boot_events \
             WHERE id > $1 AND mac IN ({list}) ORDER BY id DESC LIMIT $2"
        );
        let mut q = sqlx::query(&sql)
            .bind(after.unwrap_or(0))
            .bind(limit.clamp(1, 1000));
        for m in macs {
            q = q.bind(m.to_string());
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(BootEvent {
                    id: r.try_get("id")?,
                    mac: r.try_get("mac")?,
                    at: r.try_get("at")?,
                    kind: r.try_get("kind")?,
                    detail: from_json("detail", &r.try_get::<String, _>("detail")?)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_mac_keeps_its_newest_events() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let inv = Inventory::open(&url, crate::SecretBox::from_key([7; 32]))
            .await
            .expect("open");
        let a: MacAddress = "02:00:00:00:00:0a".parse().expect("mac");
        let b: MacAddress = "02:00:00:00:00:0b".parse().expect("mac");
        let ev = |mac, n: i64| NewBootEvent {
            mac,
            at: n,
            kind: "dhcp.discover".into(),
            detail: serde_json::json!({ "n": n }),
        };
        let batch: Vec<NewBootEvent> = (0..BOOT_EVENTS_PER_MAC + 20).map(|n| ev(a, n)).collect();
        inv.record_boot_events(&batch).await.expect("write");
        inv.record_boot_events(&[ev(b, 1)]).await.expect("write");
        let got = inv.boot_events(&[a], None, 1000).await.expect("read");
        assert_eq!(got.len() as i64, BOOT_EVENTS_PER_MAC);
        assert_eq!(got[0].at, BOOT_EVENTS_PER_MAC + 19, "newest first");
        assert_eq!(got.last().map(|e| e.at), Some(20), "the oldest 20 pruned");
        let only_b = inv.boot_events(&[b], None, 10).await.expect("read");
        assert_eq!(only_b.len(), 1);
        let newer = inv
            .boot_events(&[a], Some(got[1].id), 10)
            .await
            .expect("read");
        assert_eq!(newer.len(), 1, "after: only newer ones");
    }

    #[tokio::test]
    async fn a_flood_of_invented_macs_keeps_the_table_bounded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let inv = Inventory::open(&url, crate::SecretBox::from_key([7; 32]))
            .await
            .expect("open");
        let batch: Vec<NewBootEvent> = (0..50u8)
            .map(|n| NewBootEvent {
                mac: MacAddress([2, 0, 0, 0, 1, n]),
                at: i64::from(n),
                kind: "dhcp.discover".into(),
                detail: serde_json::json!({}),
            })
            .collect();
        inv.record_boot_events_within(&batch, 20)
            .await
            .expect("write");
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM boot_events")
            .fetch_one(&inv.pool)
            .await
            .expect("count");
        assert_eq!(n, 20);
        let newest = inv
            .boot_events(&[MacAddress([2, 0, 0, 0, 1, 49])], None, 10)
            .await
            .expect("read");
        assert_eq!(newest.len(), 1, "the newest are the ones kept");
        let oldest = inv
            .boot_events(&[MacAddress([2, 0, 0, 0, 1, 0])], None, 10)
            .await
            .expect("read");
        assert!(oldest.is_empty());
    }
}
