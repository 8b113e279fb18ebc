//! Group quotas: machines at once and machine-hours a month, and the image storage a group
//! may use (bytes and count).

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
        let images = image_usage(&mut tx, g.id).await?;
        tx.rollback().await?;
        Ok(GroupQuota {
            group: g.name,
            max_machines: g.quota_max_machines,
            machine_hours_month: g.quota_machine_hours_month,
            machines_in_use: in_use,
            machine_hours_used: (hours(used) * 10.0).round() / 10.0,
            machine_hours_booked: (hours(booked) * 10.0).round() / 10.0,
            max_image_bytes: images.max_bytes,
            max_images: images.max_count,
            image_bytes_stored: images.bytes,
            images_stored: images.count,
        })
    }

    /// How many more image bytes group `group` may store now (None: no byte limit), after
    /// refusing with the numbers when it may store no more images at all. An upload streams
    /// at most this much, so a full quota stops the body at its limit, not after it.
    pub async fn image_room(&self, group: &str) -> Result<Option<u64>> {
        let id = self.group_id(group).await?;
        let mut tx = self.pool.begin().await?;
        let u = image_usage(&mut tx, id).await?;
        tx.rollback().await?;
        images_quota(group, &u, 0)?;
        Ok(u.max_bytes.map(|m| u64::try_from(m - u.bytes).unwrap_or(0)))
    }

    /// The refusal for an image of more than [`Inventory::image_room`] bytes.
    pub async fn image_quota_refusal(&self, group: &str, size: u64) -> Result<Error> {
        let id = self.group_id(group).await?;
        let mut tx = self.pool.begin().await?;
        let u = image_usage(&mut tx, id).await?;
        tx.rollback().await?;
        Ok(
            images_quota(group, &u, i64::try_from(size).unwrap_or(i64::MAX))
                .err()
                .unwrap_or_else(|| {
                    Error::conflict("quota", format!("group {group}'s image quota is full"))
                }),
        )
    }

    /// Refuses, inside the transaction adding it, an image that takes group `group_id` past
    /// its image quota (the last word: two uploads racing each passed [`Inventory::image_room`]).
    pub(crate) async fn check_image_quota(
        &self,
        tx: &mut Transaction<'static, Any>,
        group_id: i64,
        group: &str,
        size: i64,
    ) -> Result<()> {
        let u = image_usage(tx, group_id).await?;
        images_quota(group, &u, size)
    }

    /// Sets a group's quotas (None: unlimited). Takes effect for new requests and extensions.
    pub async fn set_group_quota(
        &self,
        actor: &str,
        group: &str,
        q: &QuotaLimits,
    ) -> Result<GroupQuota> {
        for (field, v) in [
            ("max_machines", q.max_machines),
            ("machine_hours_month", q.machine_hours_month),
            ("max_image_bytes", q.max_image_bytes),
            ("max_images", q.max_images),
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
            "UPDATE member_groups SET quota_max_machines = $1, quota_machine_hours_month = $2, \
             quota_max_image_bytes = $3, quota_max_images = $4 WHERE name = $5",
        )
        .bind(q.max_machines)
        .bind(q.machine_hours_month)
        .bind(q.max_image_bytes)
        .bind(q.max_images)
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
                .detail(serde_json::json!(q)),
        )
        .await?;
        crate::retry::commit(tx).await?;
        self.group_quota(group).await
    }
}

/// A group's image storage: its limits and what it stores.
pub(crate) struct ImageUsage {
    max_bytes: Option<i64>,
    max_count: Option<i64>,
    bytes: i64,
    count: i64,
}

async fn image_usage(tx: &mut Transaction<'static, Any>, group_id: i64) -> Result<ImageUsage> {
    let row = sqlx::query(
        "SELECT g.quota_max_image_bytes, g.quota_max_images, \
         (SELECT CAST(COALESCE(SUM(i.size_bytes), 0) AS BIGINT) FROM images i WHERE i.owner_group_id = g.id) AS bytes, \
         (SELECT COUNT(*) FROM images i WHERE i.owner_group_id = g.id) AS n \
         FROM member_groups g WHERE g.id = $1",
    )
    .bind(group_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(ImageUsage {
        max_bytes: row.try_get("quota_max_image_bytes")?,
        max_count: row.try_get("quota_max_images")?,
        bytes: row.try_get("bytes")?,
        count: row.try_get("n")?,
    })
}

/// Refuses, with the usage and the limit, one more image of `size` bytes (0: only the
/// count is checked) that would take a group past its image quota.
fn images_quota(group: &str, u: &ImageUsage, size: i64) -> Result<()> {
    if let Some(max) = u.max_count {
        if u.count + 1 > max {
            return Err(Error::conflict(
                "quota",
                format!(
                    "group {group} may store {max} images and stores {}; delete one first",
                    u.count
                ),
            ));
        }
    }
    if let Some(max) = u.max_bytes {
        if u.bytes.saturating_add(size) > max {
            return Err(Error::conflict(
                "quota",
                format!(
                    "group {group} may store {max} bytes of images and stores {}; {} bytes are left, and this image is larger",
                    u.bytes,
                    (max - u.bytes).max(0)
                ),
            ));
        }
    }
    Ok(())
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
    fn image_storage() {
        let u = |bytes, count| ImageUsage {
            max_bytes: Some(100),
            max_count: Some(3),
            bytes,
            count,
        };
        assert!(images_quota("a", &u(60, 2), 40).is_ok());
        let e = images_quota("a", &u(60, 2), 41).expect_err("bytes");
        assert!(
            e.to_string()
                .contains("may store 100 bytes of images and stores 60; 40 bytes are left"),
            "{e}"
        );
        let e = images_quota("a", &u(10, 3), 0).expect_err("count");
        assert!(
            e.to_string().contains("may store 3 images and stores 3"),
            "{e}"
        );
        let open = ImageUsage {
            max_bytes: None,
            max_count: None,
            bytes: i64::MAX,
            count: i64::MAX - 1,
        };
        assert!(images_quota("a", &open, i64::MAX).is_ok());
    }

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
