//! Changing a running lease: extending it, and ending it (each machine queued for a wipe).

use super::calendar::fmt_time;
use super::*;
use crate::audit::record_in;
use crate::transition::{transition_tx, MachineRef, TransitionAudit};
use crate::{now_ms, Error, Inventory, MachineState, NewAuditEvent, Result};
use sqlx::{Any, Row, Transaction};

impl Inventory {
    /// Moves a lease's end to `ends_at`, within quotas, the maximum lease length and the
    /// calendar (reservations that would lose their machines refuse the extension).
    pub async fn extend_lease(&self, actor: &str, id: i64, ends_at: i64) -> Result<Lease> {
        let now = now_ms();
        let mut tx = begin_lease_write(self).await?;
        let row = self.lease_row_tx(&mut tx, id).await?;
        let l = &row.lease;
        if l.state == LeaseState::Ended {
            return Err(Error::conflict("state", format!("lease {id} has ended")));
        }
        if ends_at <= l.ends_at || ends_at <= now {
            return Err(Error::invalid(
                "ends_at",
                format!(
                    "the new end must be later than the current one ({})",
                    fmt_time(l.ends_at)
                ),
            ));
        }
        let base = if row.lease.waiting { now } else { l.starts_at };
        let new_duration = ends_at - base;
        self.check_max_length(new_duration).await?;
        // The extension is a new booking of the same machines over [old end, new end).
        self.check_quotas(
            &mut tx,
            row.group_id,
            &l.group,
            l.machine_count,
            l.ends_at.max(now),
            ends_at,
            Some(id),
            now,
        )
        .await?;
        if !l.waiting {
            let free = self
                .capacity(
                    &mut tx,
                    &l.constraints,
                    l.ends_at.max(now),
                    ends_at,
                    Some(id),
                )
                .await?;
            if free < l.machine_count {
                return Err(Error::conflict(
                    "ends_at",
                    format!(
                        "cannot extend to {}: reservations need these machines; the calendar leaves {} matching machines free over that time, the lease holds {}",
                        fmt_time(ends_at),
                        free.max(0),
                        l.machine_count
                    ),
                ));
            }
        }
        let duration_ms = if l.waiting {
            new_duration
        } else {
            row.duration_ms
        };
        sqlx::query("UPDATE leases SET ends_at = $1, duration_ms = $2 WHERE id = $3")
            .bind(ends_at)
            .bind(duration_ms)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "lease.extend", "lease", &id.to_string())
                .group(Some(l.group.clone()))
                .detail(serde_json::json!({"from": l.ends_at, "to": ends_at})),
        )
        .await?;
        crate::retry::commit(tx).await?;
        self.lease(id).await
    }

    /// Ends a lease now (release by its group, revoke by staff, or expiry): in one transaction
    /// the lease is `ended`, its machines released and each queued for a wipe.
    pub async fn end_lease(
        &self,
        actor: &str,
        id: i64,
        reason: EndReason,
        note: &str,
    ) -> Result<Lease> {
        let mut tx = self.begin_write().await?;
        let row = self.lease_row_tx(&mut tx, id).await?;
        if row.lease.state == LeaseState::Ended {
            return Err(Error::conflict(
                "state",
                format!(
                    "lease {id} already ended ({})",
                    row.lease.end_reason.as_deref().unwrap_or("-")
                ),
            ));
        }
        self.end_lease_tx(&mut tx, actor, &row.lease, reason, note, now_ms())
            .await?;
        crate::retry::commit(tx).await?;
        self.lease(id).await
    }

    pub(super) async fn end_lease_tx(
        &self,
        tx: &mut Transaction<'static, Any>,
        actor: &str,
        l: &Lease,
        reason: EndReason,
        note: &str,
        now: i64,
    ) -> Result<()> {
        let n = sqlx::query(
            "UPDATE leases SET state = 'ended', ended_at = $1, end_reason = $2, waiting = 0 WHERE id = $3 AND state <> 'ended'",
        )
        .bind(now)
        .bind(if note.is_empty() {
            reason.as_str().to_string()
        } else {
            format!("{}: {note}", reason.as_str())
        })
        .bind(l.id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::conflict(
                "state",
                format!("lease {} ended concurrently", l.id),
            ));
        }
        let machines = sqlx::query(
            "SELECT m.id, m.name, m.state FROM lease_machines lm JOIN machines m ON m.id = lm.machine_id \
             WHERE lm.lease_id = $1 AND lm.released_at IS NULL ORDER BY m.id",
        )
        .bind(l.id)
        .fetch_all(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE lease_machines SET released_at = $1 WHERE lease_id = $2 AND released_at IS NULL",
        )
        .bind(now)
        .bind(l.id)
        .execute(&mut **tx)
        .await?;
        let action = match (reason, l.state) {
            (_, LeaseState::Pending) => "lease.cancel",
            (EndReason::Expired, _) => "lease.expire",
            (EndReason::Released, _) => "lease.release",
            (EndReason::Revoked, _) => "lease.revoke",
        };
        let names: Vec<String> = machines
            .iter()
            .map(|r| r.try_get("name"))
            .collect::<Result<_, _>>()?;
        record_in(
            tx,
            &NewAuditEvent::ok(actor, action, "lease", &l.id.to_string())
                .group(Some(l.group.clone()))
                .detail(
                    serde_json::json!({"reason": reason.as_str(), "note": note, "machines": names}),
                ),
        )
        .await?;
        // Wipes are queued while the machines still carry the lease, so the wipe jobs' audit
        // events land in the group's ledger; then the machines leave the lease.
        for r in &machines {
            let state: MachineState = r.try_get::<String, _>("state")?.parse()?;
            queue_wipe(
                tx,
                actor,
                r.try_get("id")?,
                &r.try_get::<String, _>("name")?,
                state,
                l,
            )
            .await?;
        }
        sqlx::query("UPDATE machines SET lease_id = NULL, updated_at = $1 WHERE lease_id = $2")
            .bind(now)
            .bind(l.id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// Queues the wipe of a machine a lease let go: a wipe job (the job engine moves the machine
/// to `releasing`; the conductor makes it `available` once the wipe succeeded and stores the
/// certificate). A machine with another job in progress, or one the lifecycle cannot send to
/// `releasing` (mid-deploy), goes to `maintenance` instead: it must never reach another group
/// unwiped, and staff decide what to do with it.
pub(super) async fn queue_wipe(
    tx: &mut Transaction<'static, Any>,
    actor: &str,
    machine_id: i64,
    name: &str,
    state: MachineState,
    l: &Lease,
) -> Result<()> {
    let job = crate::NewJob {
        kind: crate::JobKind::Wipe,
        machine_id,
        image_id: None,
        lease_id: Some(l.id),
        user_data: None,
    };
    // insert_job_tx checks the lifecycle and the one-job-per-machine rule before it writes,
    // so a refusal leaves the transaction usable.
    match crate::jobs::insert_job_tx(tx, actor, &job).await {
        Ok(_) => return Ok(()),
        Err(Error::ForbiddenTransition { .. } | Error::Conflict { .. }) => {}
        Err(e) => return Err(e),
    }
    if state == MachineState::Maintenance {
        return Ok(());
    }
    let reason = format!(
        "lease {} of {} ended while the machine was {state} (or busy with a job); wipe it before it goes back to the pool",
        l.id, l.group
    );
    let machine = MachineRef {
        id: machine_id,
        name,
        group: Some(&l.group),
    };
    transition_tx(
        tx,
        actor,
        &machine,
        state,
        MachineState::Maintenance,
        &reason,
        TransitionAudit::Transition(Some(serde_json::json!({"lease": l.id}))),
    )
    .await
}
