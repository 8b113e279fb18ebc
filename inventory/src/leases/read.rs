//! Reading leases: one, its detail, lists.

use super::*;
use crate::{now_ms, Error, Inventory, Result};
use sqlx::{Any, Row, Transaction};
use std::collections::HashMap;

impl Inventory {
    /// One lease by id, with its machines.
    pub async fn lease(&self, id: i64) -> Result<Lease> {
        let row = sqlx::query(&format!("{LEASE_SELECT} WHERE l.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::not_found("lease", id.to_string()))?;
        let mut l = [lease_from_row(&row)?];
        self.attach_lease_machines(&mut l).await?;
        let [l] = l;
        Ok(l)
    }

    /// A lease with the energy its machines drew and its wipe certificates.
    pub async fn lease_detail(&self, id: i64) -> Result<LeaseDetail> {
        let lease = self.lease(id).await?;
        let now = now_ms();
        // The same measure as the usage report: the BMC's counter where it has one.
        let mut energy = crate::energy::EnergySplit::default();
        for m in &lease.machines {
            let to = m.released_at.unwrap_or(now);
            let samples = self.meter_samples(&m.name, m.allocated_at, to).await?;
            energy += crate::energy::energy_split(&samples, ENERGY_MAX_GAP_MS);
        }
        let rows = sqlx::query(
            "SELECT c.id, c.job_id, m.name AS machine_name, c.body, c.created_at FROM wipe_certificates c \
             JOIN machines m ON m.id = c.machine_id WHERE c.lease_id = $1 ORDER BY c.id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let wipe_certificates = rows
            .iter()
            .map(|r| {
                Ok(WipeCertificate {
                    id: r.try_get("id")?,
                    job_id: r.try_get("job_id")?,
                    machine: r.try_get("machine_name")?,
                    body: from_json("body", &r.try_get::<String, _>("body")?)?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LeaseDetail {
            lease,
            energy_kwh: energy.total_kwh(),
            wipe_certificates,
        })
    }

    /// Leases matching `f`, newest first (at most 1000), a page at a time with `limit`/`after`.
    pub async fn leases(&self, f: &LeaseFilter) -> Result<Vec<Lease>> {
        let rows = sqlx::query(&format!(
            "{LEASE_SELECT} WHERE ($1 IS NULL OR g.name = $1) AND ($2 IS NULL OR l.state = $2) \
             AND l.id < $3 ORDER BY l.id DESC LIMIT $4"
        ))
        .bind(f.group.clone())
        .bind(f.state.map(|s| s.as_str()))
        .bind(f.after.unwrap_or(i64::MAX))
        .bind(f.limit.unwrap_or(1000).clamp(1, 1000))
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(lease_from_row)
            .collect::<Result<Vec<_>>>()?;
        self.attach_lease_machines(&mut out).await?;
        Ok(out)
    }

    pub(super) async fn attach_lease_machines(&self, leases: &mut [Lease]) -> Result<()> {
        if leases.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = leases.iter().map(|l| l.id.to_string()).collect();
        // The ids are integers we formatted ourselves, so inlining them is safe.
        let rows = sqlx::query(&format!(
            "SELECT lm.lease_id, m.name, lm.allocated_at, lm.released_at FROM lease_machines lm \
             JOIN machines m ON m.id = lm.machine_id WHERE lm.lease_id IN ({}) ORDER BY m.name",
            ids.join(",")
        ))
        .fetch_all(&self.pool)
        .await?;
        let mut by: HashMap<i64, Vec<LeaseMachine>> = HashMap::new();
        for r in &rows {
            by.entry(r.try_get("lease_id")?)
                .or_default()
                .push(LeaseMachine {
                    name: r.try_get("name")?,
                    allocated_at: r.try_get("allocated_at")?,
                    released_at: r.try_get("released_at")?,
                });
        }
        for l in leases {
            l.machines = by.remove(&l.id).unwrap_or_default();
        }
        Ok(())
    }

    pub(super) async fn lease_row_tx(
        &self,
        tx: &mut Transaction<'static, Any>,
        id: i64,
    ) -> Result<LeaseRow> {
        let row = sqlx::query(&format!("{LEASE_SELECT} WHERE l.id = $1"))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| Error::not_found("lease", id.to_string()))?;
        lease_row(&row)
    }
}
