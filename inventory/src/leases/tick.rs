//! The scheduler step: ends due leases, starts due reservations, serves the waitlist.

use super::*;
use crate::audit::record_in;
use crate::{Inventory, NewAuditEvent, Result};
use sqlx::Row;

impl Inventory {
    /// Tries to give a pending lease its machines now. Returns whether it started.
    pub(super) async fn try_start(&self, id: i64, now: i64, check_quota: bool) -> Result<bool> {
        // A read first: a step runs every few seconds for every pending lease, and on SQLite a
        // write transaction takes the database's one write lock even when nothing fits.
        let l = self.lease(id).await?;
        if l.state != LeaseState::Pending
            || self.matching_available(&l.constraints).await? < l.machine_count
        {
            return Ok(false);
        }
        let mut tx = begin_lease_write(self).await?;
        let row = self.lease_row_tx(&mut tx, id).await?;
        let l = &row.lease;
        if l.state != LeaseState::Pending {
            return Ok(false);
        }
        let (starts_at, ends_at) = if l.waiting {
            (now, now.saturating_add(row.duration_ms))
        } else {
            (l.starts_at, l.ends_at)
        };
        if check_quota
            && self
                .check_quotas(
                    &mut tx,
                    row.group_id,
                    &l.group,
                    l.machine_count,
                    starts_at,
                    ends_at,
                    Some(id),
                    now,
                )
                .await
                .is_err()
        {
            return Ok(false);
        }
        let picked = self.pick(&mut tx, &l.constraints, l.machine_count).await?;
        if (picked.len() as i64) < l.machine_count {
            return Ok(false);
        }
        if l.waiting
            && self
                .reserved_overlapping(&mut tx, starts_at, ends_at, Some(id))
                .await?
                > 0
            && self
                .capacity(&mut tx, &l.constraints, starts_at, ends_at, Some(id))
                .await?
                < l.machine_count
        {
            // The machines are free now but promised to a reservation in that window.
            return Ok(false);
        }
        self.assign(&mut tx, "scheduler", id, &l.group, &picked, now)
            .await?;
        sqlx::query(
            "UPDATE leases SET state = 'active', waiting = 0, starts_at = $1, ends_at = $2 WHERE id = $3",
        )
        .bind(starts_at)
        .bind(ends_at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        record_in(
            &mut tx,
            &NewAuditEvent::ok("scheduler", "lease.start", "lease", &id.to_string())
                .group(Some(l.group.clone()))
                .detail(serde_json::json!({"starts_at": starts_at, "ends_at": ends_at, "from": if l.waiting { "waitlist" } else { "reservation" }})),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(true)
    }

    /// One scheduler step at time `now`: ends due leases, starts due reservations, then
    /// serves the waitlist in fair-share order (groups with the fewest machine-hours in the
    /// last 30 days first, then the oldest request). Bounded; all state is in the database,
    /// so a restart loses nothing and a step missed while rackshare was down runs at start-up.
    pub async fn lease_tick(&self, now: i64) -> Result<LeaseTick> {
        let mut out = LeaseTick::default();
        let due: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM leases WHERE state = 'active' AND ends_at <= $1 ORDER BY ends_at LIMIT $2",
        )
        .bind(now)
        .bind(TICK_BATCH)
        .fetch_all(&self.pool)
        .await?;
        for id in due {
            // One lease's trouble (it was released in between, a machine changed under it)
            // must not stop the others: log it and move on; the next step retries.
            match self.expire(id, now).await {
                Ok(true) => out.ended.push(id),
                Ok(false) => {}
                Err(e) => tracing::warn!(lease = id, error = %e, "could not end a due lease"),
            }
        }
        // Reservations whose whole window passed without machines lapse.
        let lapsed: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM leases WHERE state = 'pending' AND waiting = 0 AND ends_at <= $1 ORDER BY ends_at LIMIT $2",
        )
        .bind(now)
        .bind(TICK_BATCH)
        .fetch_all(&self.pool)
        .await?;
        for id in lapsed {
            match self.expire(id, now).await {
                Ok(true) => out.lapsed.push(id),
                Ok(false) => {}
                Err(e) => tracing::warn!(lease = id, error = %e, "could not lapse a reservation"),
            }
        }
        let reservations: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM leases WHERE state = 'pending' AND waiting = 0 AND starts_at <= $1 ORDER BY starts_at, id LIMIT $2",
        )
        .bind(now)
        .bind(TICK_BATCH)
        .fetch_all(&self.pool)
        .await?;
        for id in reservations {
            // Quotas were checked when the reservation was booked.
            match self.try_start(id, now, false).await {
                Ok(true) => out.started.push(id),
                Ok(false) => {}
                Err(e) => tracing::warn!(lease = id, error = %e, "could not start a reservation"),
            }
        }
        for id in self.waitlist_order(now).await? {
            match self.try_start(id, now, true).await {
                Ok(true) => out.served.push(id),
                Ok(false) => {}
                Err(e) => tracing::warn!(lease = id, error = %e, "could not serve a waiting lease"),
            }
        }
        Ok(out)
    }

    /// Ends lease `id` if it is due at `now`: an active lease past its end (`expired`), or a
    /// reservation whose window passed without machines. Returns whether it ended it.
    pub(super) async fn expire(&self, id: i64, now: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let row = self.lease_row_tx(&mut tx, id).await?;
        let l = &row.lease;
        let note = match l.state {
            LeaseState::Active if l.ends_at <= now => "",
            LeaseState::Pending if !l.waiting && l.ends_at <= now => {
                "the reserved machines never became available"
            }
            _ => return Ok(false),
        };
        self.end_lease_tx(&mut tx, "scheduler", l, EndReason::Expired, note, now)
            .await?;
        crate::retry::commit(tx).await?;
        Ok(true)
    }

    /// Waiting leases in the order they are served: least machine-hours in the last 30 days
    /// first, then oldest request.
    pub async fn waitlist_order(&self, now: i64) -> Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT l.id, l.group_id, l.created_at, \
             (SELECT CAST(COALESCE(SUM((CASE WHEN lm.released_at IS NULL OR lm.released_at > $1 THEN $1 ELSE lm.released_at END) \
                 - (CASE WHEN lm.allocated_at < $2 THEN $2 ELSE lm.allocated_at END)), 0) AS BIGINT) \
              FROM lease_machines lm JOIN leases u ON u.id = lm.lease_id \
              WHERE u.group_id = l.group_id AND (lm.released_at IS NULL OR lm.released_at > $2) AND lm.allocated_at < $1) AS usage_ms \
             FROM leases l WHERE l.state = 'pending' AND l.waiting = 1 \
             ORDER BY usage_ms, l.created_at, l.id LIMIT $3",
        )
        .bind(now)
        .bind(now - FAIR_SHARE_WINDOW_MS)
        .bind(TICK_BATCH)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }
}
