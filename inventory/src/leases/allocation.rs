//! Allocation: a new lease, the calendar's capacity, picking and assigning machines, and
//! explaining a shortfall.

use super::calendar::fmt_time;
use super::constraints::{
    check_constraints, first_failure, match_sql, Bind, Candidate, POOL_STATES,
};
use super::health::{held_back_summary, hold_back, MachineHealth, HEALTH_COLUMNS};
use super::*;
use crate::audit::record_in;
use crate::db::{from_json, to_json};
use crate::transition::{transition_tx, MachineRef, TransitionAudit};
use crate::{now_ms, Backend, Error, Inventory, MachineState, NewAuditEvent, Result};
use sqlx::{Any, Row, Transaction};

/// The end of the year 9999 (unix ms): no lease time lies beyond it.
const LATEST_TIME_MS: i64 = 253_402_300_799_999;

impl Inventory {
    /// Asks for machines for `group`. Immediately: picks and marks them (`available →
    /// allocated`) in one transaction, or fails saying which constraint ruled how many out (or
    /// queues the request when `wait_for_capacity`). With a future start: books capacity in
    /// the calendar; the scheduler allocates at the start.
    pub async fn create_lease(&self, actor: &str, group: &str, req: &NewLease) -> Result<Lease> {
        let c = req.constraints();
        check_constraints(req.count, &c)?;
        let now = now_ms();
        let starts_at = match req.starts_at {
            Some(s) if s > now + RESERVATION_SLACK_MS => s,
            Some(s) if s < now - 60_000 => {
                return Err(Error::invalid("starts_at", "the start is in the past"))
            }
            _ => now,
        };
        let reservation = starts_at > now;
        if reservation && req.wait_for_capacity {
            return Err(Error::invalid(
                "wait_for_capacity",
                "a reservation (future start) cannot also wait for capacity",
            ));
        }
        let duration_ms = match (req.ends_at, req.duration_secs) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "duration",
                    "give an end time or a duration, not both",
                ))
            }
            (Some(e), None) => e - starts_at,
            (None, Some(d)) => d.saturating_mul(1000),
            (None, None) => DEFAULT_LEASE_HOURS * HOUR_MS,
        };
        if duration_ms <= 0 {
            return Err(Error::invalid(
                "duration",
                "the lease must end after it starts",
            ));
        }
        let ends_at = starts_at.saturating_add(duration_ms);
        // Times past the calendar's end (i64::MAX is the year 292 million) are mistakes.
        if starts_at > LATEST_TIME_MS || ends_at > LATEST_TIME_MS {
            return Err(Error::invalid(
                "ends_at",
                "times after the year 9999 are not accepted",
            ));
        }
        self.check_max_length(duration_ms).await?;

        let mut tx = begin_lease_write(self).await?;
        let group_id: i64 = sqlx::query_scalar("SELECT id FROM member_groups WHERE name = $1")
            .bind(group)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::not_found("group", group))?;
        if let Some(site) = &c.site {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sites WHERE name = $1")
                .bind(site)
                .fetch_one(&mut *tx)
                .await?;
            if n == 0 {
                return Err(Error::not_found("site", site.clone()));
            }
        }
        self.check_quotas(
            &mut tx, group_id, group, req.count, starts_at, ends_at, None, now,
        )
        .await?;
        // Immediate leases pick their machines first (cheap: the state index, LIMIT count); the
        // calendar, which counts the whole pool, is consulted only when reservations overlap.
        let reserved = self
            .reserved_overlapping(&mut tx, starts_at, ends_at, None)
            .await?;
        let (fits, picked) = if reservation {
            let free = self.capacity(&mut tx, &c, starts_at, ends_at, None).await?;
            (free >= req.count, Vec::new())
        } else {
            let picked = self.pick(&mut tx, &c, req.count).await?;
            let mut fits = picked.len() as i64 >= req.count;
            if fits && reserved > 0 {
                fits = self.capacity(&mut tx, &c, starts_at, ends_at, None).await? >= req.count;
            }
            (fits, picked)
        };
        if !fits && !req.wait_for_capacity {
            let why = self
                .explain_shortfall(&mut tx, &c, req.count, starts_at, ends_at, reservation)
                .await?;
            return Err(Error::conflict("count", why));
        }
        let waiting = !fits;
        let state = if reservation || waiting {
            LeaseState::Pending
        } else {
            LeaseState::Active
        };
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO leases (group_id, state, machine_count, constraints, starts_at, ends_at, created_by, created_at, waiting, duration_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(group_id)
        .bind(state.as_str())
        .bind(req.count)
        .bind(to_json(&c))
        .bind(starts_at)
        .bind(ends_at)
        .bind(actor)
        .bind(now)
        .bind(i64::from(waiting))
        .bind(duration_ms)
        .fetch_one(&mut *tx)
        .await?;
        let action = if waiting {
            "lease.wait"
        } else if reservation {
            "lease.reserve"
        } else {
            "lease.create"
        };
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, action, "lease", &id.to_string())
                .group(Some(group.into()))
                .detail(serde_json::json!({
                    "count": req.count, "constraints": c, "starts_at": starts_at, "ends_at": ends_at,
                })),
        )
        .await?;
        if state == LeaseState::Active {
            self.assign(&mut tx, actor, id, group, &picked, now).await?;
        }
        crate::retry::commit(tx).await?;
        self.lease(id).await
    }

    /// How many free machines match `c` (a plain read, outside any transaction).
    pub(super) async fn matching_available(&self, c: &LeaseConstraints) -> Result<i64> {
        let m = match_sql(self.backend, c, 1);
        let sql = format!(
            "SELECT COUNT(*) FROM machines m WHERE m.state = 'available' AND m.lease_id IS NULL AND {}",
            m.sql
        );
        Ok(bind_all!(sqlx::query_scalar(&sql), &m.binds)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Machines matching `c` that the calendar leaves free over `[start, end)`: the pool minus
    /// machines of active leases still running at `start`, minus every pending reservation
    /// overlapping the window (counted whole, whatever it asks for: conservative, never
    /// overbooked). `except` leaves one lease out (when it is the one being extended).
    pub(super) async fn capacity(
        &self,
        tx: &mut Transaction<'static, Any>,
        c: &LeaseConstraints,
        start: i64,
        end: i64,
        except: Option<i64>,
    ) -> Result<i64> {
        let m = match_sql(self.backend, c, 3);
        let sql = format!(
            "SELECT COUNT(*) FROM machines m WHERE m.state IN {POOL_STATES} AND {} AND NOT (m.lease_id IS NOT NULL AND EXISTS \
             (SELECT 1 FROM leases l WHERE l.id = m.lease_id AND l.state = 'active' AND l.ends_at > $1 AND l.id <> $2))",
            m.sql
        );
        let pool: i64 = bind_all!(
            sqlx::query_scalar(&sql)
                .bind(start)
                .bind(except.unwrap_or(0)),
            &m.binds
        )
        .fetch_one(&mut **tx)
        .await?;
        let reserved = self.reserved_overlapping(tx, start, end, except).await?;
        Ok(pool - reserved)
    }

    /// Says which constraint ruled how many machines out.
    pub(super) async fn explain_shortfall(
        &self,
        tx: &mut Transaction<'static, Any>,
        c: &LeaseConstraints,
        count: i64,
        start: i64,
        end: i64,
        reservation: bool,
    ) -> Result<String> {
        let rows = sqlx::query(&format!(
            "SELECT m.state, m.arch, m.ram_mib, m.cpu_count, m.disks, m.tags, s.name AS site_name, {HEALTH_COLUMNS} \
             FROM machines m LEFT JOIN sites s ON s.id = m.site_id WHERE m.state IN {POOL_STATES}"
        ))
        .fetch_all(&mut **tx)
        .await?;
        let mut free = 0;
        let mut busy_matching = 0;
        let mut matching_pool = 0;
        let mut reasons: Vec<((String, String), i64)> = Vec::new();
        let mut held_back = Vec::new();
        for r in &rows {
            let state: String = r.try_get("state")?;
            let cand = Candidate {
                arch: r.try_get("arch")?,
                site: r.try_get("site_name")?,
                ram_mib: r.try_get("ram_mib")?,
                cpu_count: r.try_get("cpu_count")?,
                disks: from_json("disks", &r.try_get::<String, _>("disks")?)?,
                tags: from_json("tags", &r.try_get::<String, _>("tags")?)?,
            };
            let fail = first_failure(&cand, c);
            let health = MachineHealth {
                bmc_failures: r.try_get("bmc_failures")?,
                last_wipe_state: r.try_get("last_wipe_state")?,
            };
            let held = hold_back(&health).first().copied();
            if fail.is_none() && held.is_none() {
                matching_pool += 1;
            }
            if state == "available" {
                free += 1;
                match (fail, held) {
                    (Some(f), _) => match reasons.iter_mut().find(|(p, _)| *p == f) {
                        Some((_, n)) => *n += 1,
                        None => reasons.push((f, 1)),
                    },
                    (None, Some(h)) => held_back.push(h),
                    (None, None) => {}
                }
            } else if fail.is_none() {
                busy_matching += 1;
            }
        }
        let fitting = free - reasons.iter().map(|(_, n)| n).sum::<i64>() - held_back.len() as i64;
        let mut msg = format!("asked for {count} machines; ");
        if reservation {
            let left = self.capacity(tx, c, start, end, None).await?;
            msg.push_str(&format!(
                "{matching_pool} machines in the pool match, and the calendar leaves {} of them free from {} to {} (the rest are held by leases or reservations overlapping that time)",
                left.max(0),
                fmt_time(start),
                fmt_time(end),
            ));
            return Ok(msg);
        }
        msg.push_str(&format!(
            "{free} available machine{}",
            if free == 1 { "" } else { "s" }
        ));
        if !reasons.is_empty() {
            let parts: Vec<String> = reasons
                .iter()
                .map(|((one, many), n)| format!("{n} {}", if *n == 1 { one } else { many }))
                .collect();
            msg.push_str(&format!(": {}", parts.join(", ")));
        }
        msg.push_str(&format!("; {fitting} fit"));
        // Counts only: a member learns that machines are held back, never a BMC's details.
        if let Some(held) = held_back_summary(&held_back) {
            msg.push_str(&format!("; {held}"));
        }
        let reserved: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(machine_count), 0) AS BIGINT) FROM leases WHERE state = 'pending' AND waiting = 0 \
             AND starts_at < $1 AND ends_at > $2",
        )
        .bind(end)
        .bind(start)
        .fetch_one(&mut **tx)
        .await?;
        if reserved > 0 && fitting > 0 {
            msg.push_str(&format!(
                ", but reservations overlapping {} to {} hold {reserved} machines",
                fmt_time(start),
                fmt_time(end)
            ));
        }
        if busy_matching > 0 {
            msg.push_str(&format!(
                "; {busy_matching} more matching machines are leased or being wiped (--wait-for-capacity queues the request)"
            ));
        }
        Ok(msg)
    }

    /// Up to `count` free machines matching `c`, by id; on PostgreSQL locked for this
    /// transaction (`SKIP LOCKED`: rows another writer holds are not waited for).
    pub(super) async fn pick(
        &self,
        tx: &mut Transaction<'static, Any>,
        c: &LeaseConstraints,
        count: i64,
    ) -> Result<Vec<(i64, String)>> {
        let m = match_sql(self.backend, c, 2);
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "SELECT m.id, m.name FROM machines m WHERE m.state = 'available' AND m.lease_id IS NULL AND {} ORDER BY m.id LIMIT $1{lock}",
            m.sql
        );
        let rows = bind_all!(sqlx::query(&sql).bind(count), &m.binds)
            .fetch_all(&mut **tx)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("name")?)))
            .collect()
    }

    /// Sum of machines booked by pending reservations overlapping `[start, end)`.
    pub(super) async fn reserved_overlapping(
        &self,
        tx: &mut Transaction<'static, Any>,
        start: i64,
        end: i64,
        except: Option<i64>,
    ) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(machine_count), 0) AS BIGINT) FROM leases WHERE state = 'pending' AND waiting = 0 \
             AND starts_at < $1 AND ends_at > $2 AND id <> $3",
        )
        .bind(end)
        .bind(start)
        .bind(except.unwrap_or(0))
        .fetch_one(&mut **tx)
        .await?)
    }

    /// Gives the picked machines to lease `id` (`available → allocated`, compare-and-set).
    pub(super) async fn assign(
        &self,
        tx: &mut Transaction<'static, Any>,
        actor: &str,
        id: i64,
        group: &str,
        picked: &[(i64, String)],
        now: i64,
    ) -> Result<()> {
        let reason = format!("lease {id} of {group}");
        for (mid, name) in picked {
            // Picked under the leasing lock (and row locks on PostgreSQL): if another writer
            // changed it anyway, fail the whole transaction rather than hand out fewer.
            let machine = MachineRef {
                id: *mid,
                name,
                group: Some(group),
            };
            transition_tx(
                tx,
                actor,
                &machine,
                MachineState::Available,
                MachineState::Allocated,
                &reason,
                TransitionAudit::Allocate { lease: id },
            )
            .await?;
            let n = sqlx::query(
                "UPDATE machines SET lease_id = $1, updated_at = $2 WHERE id = $3 AND lease_id IS NULL",
            )
            .bind(id)
            .bind(now)
            .bind(mid)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(Error::StateChanged {
                    machine: name.clone(),
                    expected: MachineState::Available,
                    actual: "held by another lease".into(),
                });
            }
            sqlx::query(
                "INSERT INTO lease_machines (lease_id, machine_id, allocated_at) VALUES ($1, $2, $3)",
            )
            .bind(id)
            .bind(mid)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}
