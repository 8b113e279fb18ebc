//! Group quotas: machines at once and machine-hours a month.

use super::calendar::{fmt_hours, hours, overlap};
use super::*;
use crate::audit::record_in;
use crate::month_bounds;
use crate::{now_ms, Error, Inventory, NewAuditEvent, Result};
use sqlx::{Any, Row, Transaction};

impl Inventory {
    /// Refuses with the numbers when `count` machines over `[start, end)` would take the group
    /// past a quota. `except`: the lease being extended (its own use is the base).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn check_quotas(
        &self,
        tx: &mut Transaction<'static, Any>,
        group_id: i64,
        group: &str,
        count: i64,
        start: i64,
        end: i64,
        except: Option<i64>,
        now: i64,
    ) -> Result<()> {
        let row = sqlx::query(
            "SELECT quota_max_machines, quota_machine_hours_month FROM member_groups WHERE id = $1",
        )
        .bind(group_id)
        .fetch_one(&mut **tx)
        .await?;
        let max_machines: Option<i64> = row.try_get("quota_max_machines")?;
        let max_hours: Option<i64> = row.try_get("quota_machine_hours_month")?;
        if let Some(max) = max_machines {
            // Held by active leases still running at `start`, plus reservations overlapping.
            let held: i64 = sqlx::query_scalar(
                "SELECT CAST(COALESCE(SUM(CASE WHEN l.state = 'active' THEN \
                    (SELECT COUNT(*) FROM lease_machines lm WHERE lm.lease_id = l.id AND lm.released_at IS NULL) \
                    ELSE l.machine_count END), 0) AS BIGINT) \
                 FROM leases l WHERE l.group_id = $1 AND l.id <> $2 AND l.waiting = 0 AND ( \
                    (l.state = 'active' AND l.ends_at > $3) OR (l.state = 'pending' AND l.starts_at < $4 AND l.ends_at > $3))",
            )
            .bind(group_id)
            .bind(except.unwrap_or(0))
            .bind(start)
            .bind(end)
            .fetch_one(&mut **tx)
            .await?;
            machines_quota(group, max, held, count)?;
        }
        if let Some(max) = max_hours {
            let (month_start, month_end) = month_bounds(start.max(now));
            let (used, booked) = self
                .machine_ms(tx, group_id, month_start, month_end, now, except)
                .await?;
            let each = overlap(start, end, month_start, month_end);
            hours_quota(group, max, used, booked, count, each)?;
        }
        Ok(())
    }

    /// Machine-milliseconds of a group within `[from, to)`: used up to `now`, and booked
    /// from `now` by its active and pending leases. `except`: a lease whose booking is not
    /// counted (its used time still is).
    pub(super) async fn machine_ms(
        &self,
        tx: &mut Transaction<'static, Any>,
        group_id: i64,
        from: i64,
        to: i64,
        now: i64,
        except: Option<i64>,
    ) -> Result<(i64, i64)> {
        let rows = sqlx::query(
            "SELECT lm.allocated_at, lm.released_at FROM lease_machines lm JOIN leases l ON l.id = lm.lease_id \
             WHERE l.group_id = $1 AND lm.allocated_at < $2 AND (lm.released_at IS NULL OR lm.released_at > $3)",
        )
        .bind(group_id)
        .bind(to)
        .bind(from)
        .fetch_all(&mut **tx)
        .await?;
        let mut used = 0;
        for r in &rows {
            let a: i64 = r.try_get("allocated_at")?;
            let b: Option<i64> = r.try_get("released_at")?;
            used += overlap(a, b.unwrap_or(now).min(now), from, to);
        }
        let rows = sqlx::query(
            "SELECT l.state, l.machine_count, l.starts_at, l.ends_at, l.waiting, l.duration_ms, \
             (SELECT COUNT(*) FROM lease_machines lm WHERE lm.lease_id = l.id AND lm.released_at IS NULL) AS held \
             FROM leases l WHERE l.group_id = $1 AND l.state <> 'ended' AND l.id <> $2",
        )
        .bind(group_id)
        .bind(except.unwrap_or(0))
        .fetch_all(&mut **tx)
        .await?;
        let mut booked = 0;
        for r in &rows {
            let b = Booking {
                active: r.try_get::<String, _>("state")? == "active",
                waiting: r.try_get::<i64, _>("waiting")? != 0,
                held: r.try_get("held")?,
                machine_count: r.try_get("machine_count")?,
                starts_at: r.try_get("starts_at")?,
                ends_at: r.try_get("ends_at")?,
                duration_ms: r.try_get("duration_ms")?,
            };
            booked += b.booked_ms(now, from, to);
        }
        Ok((used, booked))
    }

    /// A group's quotas and its use of them now.
    pub async fn group_quota(&self, group: &str) -> Result<GroupQuota> {
        let g = self.group(group).await?;
        let now = now_ms();
        let (from, to) = month_bounds(now);
        // A read, but through a transaction so the helpers can be shared with the writers.
        let mut tx = self.pool.begin().await?;
        let (used, booked) = self.machine_ms(&mut tx, g.id, from, to, now, None).await?;
        let in_use: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM lease_machines lm JOIN leases l ON l.id = lm.lease_id \
             WHERE l.group_id = $1 AND lm.released_at IS NULL",
        )
        .bind(g.id)
        .fetch_one(&mut *tx)
        .await?;
        tx.rollback().await?;
        Ok(GroupQuota {
            group: g.name,
            max_machines: g.quota_max_machines,
            machine_hours_month: g.quota_machine_hours_month,
            machines_in_use: in_use,
            machine_hours_used: (hours(used) * 10.0).round() / 10.0,
            machine_hours_booked: (hours(booked) * 10.0).round() / 10.0,
        })
    }

    /// Sets a group's quotas (None: unlimited). Takes effect for new requests and extensions.
    pub async fn set_group_quota(
        &self,
        actor: &str,
        group: &str,
        max_machines: Option<i64>,
        machine_hours_month: Option<i64>,
    ) -> Result<GroupQuota> {
        for (field, v) in [
            ("max_machines", max_machines),
            ("machine_hours_month", machine_hours_month),
        ] {
            if v.is_some_and(|n| n < 0) {
                return Err(Error::invalid(
                    field,
                    format!("{field} must not be negative"),
                ));
            }
        }
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE member_groups SET quota_max_machines = $1, quota_machine_hours_month = $2 WHERE name = $3",
        )
        .bind(max_machines)
        .bind(machine_hours_month)
        .bind(group)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::not_found("group", group));
        }
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "group.quota", "group", group)
                .group(Some(group.into()))
                .detail(serde_json::json!({"max_machines": max_machines, "machine_hours_month": machine_hours_month})),
        )
        .await?;
        tx.commit().await?;
        self.group_quota(group).await
    }
}

/// Refuses when a group holding (or having booked) `held` machines over a window would
/// pass its `max` at once with `count` more.
pub(super) fn machines_quota(group: &str, max: i64, held: i64, count: i64) -> Result<()> {
    if held + count > max {
        return Err(Error::conflict(
            "quota",
            format!(
                "group {group} may hold {max} machines at once; it holds or has booked {held} over that time, and this asks for {count} more"
            ),
        ));
    }
    Ok(())
}

/// Refuses when `count` machines for `each` ms of this month, on top of the machine-ms
/// `used` and `booked`, would pass a quota of `max` machine-hours a month.
pub(super) fn hours_quota(
    group: &str,
    max: i64,
    used: i64,
    booked: i64,
    count: i64,
    each: i64,
) -> Result<()> {
    let asked = count.saturating_mul(each);
    if used + booked + asked > max.saturating_mul(HOUR_MS) {
        return Err(Error::conflict(
            "quota",
            format!(
                "group {group} may use {max} machine-hours a month; this month it has used {} and booked {} more, and this asks for {} ({count} × {})",
                fmt_hours(used),
                fmt_hours(booked),
                fmt_hours(asked),
                fmt_hours(each),
            ),
        ));
    }
    Ok(())
}

/// What a lease that has not ended books from now on.
pub(super) struct Booking {
    /// Active (it holds machines) rather than pending.
    pub(super) active: bool,
    /// Pending on the waitlist (no start yet: it books its duration from now).
    pub(super) waiting: bool,
    /// Machines an active lease still holds.
    pub(super) held: i64,
    /// Machines a pending lease asks for.
    pub(super) machine_count: i64,
    pub(super) starts_at: i64,
    pub(super) ends_at: i64,
    pub(super) duration_ms: i64,
}

impl Booking {
    /// Machine-ms booked inside `[from, to)` from `now` on.
    pub(super) fn booked_ms(&self, now: i64, from: i64, to: i64) -> i64 {
        if self.active {
            self.held * overlap(now, self.ends_at, from, to)
        } else if self.waiting {
            self.machine_count * overlap(now, now + self.duration_ms, from, to)
        } else {
            self.machine_count * overlap(self.starts_at.max(now), self.ends_at, from, to)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_at_once() {
        assert!(machines_quota("a", 4, 2, 2).is_ok());
        let e = machines_quota("a", 4, 3, 2).expect_err("over");
        assert!(e.to_string().contains("may hold 4 machines at once"), "{e}");
    }

    #[test]
    fn machine_hours() {
        // 10 h quota: 4 h used, 2 h booked, asking 2 machines × 2 h fits exactly.
        assert!(hours_quota("a", 10, 4 * HOUR_MS, 2 * HOUR_MS, 2, 2 * HOUR_MS).is_ok());
        let e = hours_quota("a", 10, 4 * HOUR_MS, 2 * HOUR_MS, 2, 3 * HOUR_MS).expect_err("over");
        assert!(e.to_string().contains("asks for 6 h (2 × 3 h)"), "{e}");
    }

    #[test]
    fn bookings_count_from_now() {
        let b = |active, waiting| Booking {
            active,
            waiting,
            held: 2,
            machine_count: 3,
            starts_at: 50,
            ends_at: 200,
            duration_ms: 30,
        };
        // Active: held machines until the end, clipped to the window.
        assert_eq!(b(true, false).booked_ms(100, 0, 150), 2 * 50);
        // Waiting: its duration from now.
        assert_eq!(b(false, true).booked_ms(100, 0, 1000), 3 * 30);
        // Reserved: from its start (or now, if later) to its end.
        assert_eq!(b(false, false).booked_ms(0, 0, 1000), 3 * 150);
        assert_eq!(b(false, false).booked_ms(100, 0, 1000), 3 * 100);
    }
}
