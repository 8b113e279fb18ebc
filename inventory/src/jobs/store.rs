//! Jobs, their steps and their log in the database: creating, reading, starting, stepping
//! and ending them.

use super::model::{Job, JobEvent, JobFilter, JobKind, JobState, JobStep, NewJob, StepState};
use crate::audit::record_in;
use crate::transition::{reenter_tx, transition_tx, MachineRef, TransitionAudit};
use crate::{now_ms, Error, Inventory, MachineState, NewAuditEvent, Result};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

const JOB_SELECT: &str = "SELECT j.id, j.kind, j.state, m.name AS machine, j.machine_id, \
    i.name AS image_name, i.version AS image_version, j.image_id, j.lease_id, \
    COALESCE(gj.name, gm.name) AS member_group, j.current_step, \
    (SELECT s.name FROM job_steps s WHERE s.job_id = j.id AND s.seq = j.current_step) AS step, \
    j.phase, j.progress_bytes, j.progress_total, j.error, j.requested_by, j.cancel_requested_by, \
    j.result, j.agent_claimed_at, j.last_agent_at, j.created_at, j.started_at, j.finished_at, j.updated_at \
    FROM jobs j JOIN machines m ON m.id = j.machine_id \
    LEFT JOIN images i ON i.id = j.image_id \
    LEFT JOIN leases lj ON lj.id = j.lease_id LEFT JOIN member_groups gj ON gj.id = lj.group_id \
    LEFT JOIN leases lm ON lm.id = m.lease_id LEFT JOIN member_groups gm ON gm.id = lm.group_id";

fn job_from_row(r: &AnyRow) -> Result<Job> {
    let kind: String = r.try_get("kind")?;
    let state: String = r.try_get("state")?;
    let image_name: Option<String> = r.try_get("image_name")?;
    let image_version: Option<String> = r.try_get("image_version")?;
    let result: Option<String> = r.try_get("result")?;
    let step: Option<String> = r.try_get("step")?;
    Ok(Job {
        id: r.try_get("id")?,
        kind: kind.parse()?,
        state: state.parse()?,
        machine: r.try_get("machine")?,
        machine_id: r.try_get("machine_id")?,
        image: image_name.map(|n| match image_version.as_deref() {
            Some(v) if !v.is_empty() => format!("{n}:{v}"),
            _ => n,
        }),
        image_id: r.try_get("image_id")?,
        lease_id: r.try_get("lease_id")?,
        member_group: r.try_get("member_group")?,
        current_step: r.try_get("current_step")?,
        step: step.as_deref().map(str::parse).transpose()?,
        phase: r.try_get("phase")?,
        progress_bytes: r.try_get("progress_bytes")?,
        progress_total: r.try_get("progress_total")?,
        error: r.try_get("error")?,
        requested_by: r.try_get("requested_by")?,
        cancel_requested_by: r.try_get("cancel_requested_by")?,
        result: match result {
            Some(t) => Some(crate::db::from_json("jobs.result", &t)?),
            None => None,
        },
        agent_claimed_at: r.try_get("agent_claimed_at")?,
        last_agent_at: r.try_get("last_agent_at")?,
        created_at: r.try_get("created_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        updated_at: r.try_get("updated_at")?,
        steps: Vec::new(),
    })
}

fn step_from_row(r: &AnyRow) -> Result<JobStep> {
    let name: String = r.try_get("name")?;
    let state: String = r.try_get("state")?;
    Ok(JobStep {
        seq: r.try_get("seq")?,
        name: name.parse()?,
        state: state.parse()?,
        attempts: r.try_get("attempts")?,
        max_attempts: r.try_get("max_attempts")?,
        timeout_secs: r.try_get("timeout_secs")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        error: r.try_get("error")?,
    })
}

/// Inserts a job, its steps, its first log line and an audit event, and moves the machine to
/// the job's state with a compare-and-set, all inside the caller's write transaction. It is
/// the one way a job is made (API, boot script, lease scheduler), so it is also where the job
/// is announced: on PostgreSQL a `NOTIFY` in the same transaction, delivered to every
/// instance's conductor when (and only if) the transaction commits.
pub(crate) async fn insert_job_tx(
    tx: &mut Transaction<'static, Any>,
    actor: &str,
    job: &NewJob,
) -> Result<i64> {
    let row = sqlx::query(
        "SELECT m.name, m.state, g.name AS grp FROM machines m \
         LEFT JOIN leases l ON l.id = m.lease_id LEFT JOIN member_groups g ON g.id = l.group_id \
         WHERE m.id = $1",
    )
    .bind(job.machine_id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| Error::not_found("machine", job.machine_id.to_string()))?;
    let name: String = row.try_get("name")?;
    let state: String = row.try_get("state")?;
    let group: Option<String> = row.try_get("grp")?;
    let from: MachineState = state.parse()?;
    let to = job.kind.machine_state();
    if job.kind == JobKind::Reimage && job.image_id.is_none() {
        return Err(Error::invalid("image", "a reimage job needs an image"));
    }
    let active: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE machine_id = $1 AND state IN ('queued', 'running') LIMIT 1",
    )
    .bind(job.machine_id)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(other) = active {
        return Err(Error::conflict(
            "machine",
            format!("machine '{name}' already has job {other} in progress; wait for it or cancel it ('rackshare job cancel {other}')"),
        ));
    }
    let now = now_ms();
    let reason = format!("{} job queued by {actor}", job.kind);
    let machine = MachineRef {
        id: job.machine_id,
        name: &name,
        group: group.as_deref(),
    };
    // Re-deploying a machine that is already deploying (a failed job left it) is allowed;
    // otherwise the lifecycle table decides.
    if from == to {
        reenter_tx(tx, &machine, to, &reason).await?;
    } else {
        transition_tx(
            tx,
            actor,
            &machine,
            from,
            to,
            &reason,
            TransitionAudit::ByJob,
        )
        .await
        .map_err(|e| match e {
            Error::ForbiddenTransition {
                machine,
                from,
                to,
                allowed,
            } => Error::ForbiddenTransition {
                machine,
                from,
                to,
                allowed: format!(" for a {} job{allowed}", job.kind),
            },
            e => e,
        })?;
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (kind, machine_id, image_id, lease_id, state, requested_by, user_data, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $7) RETURNING id",
    )
    .bind(job.kind.as_str())
    .bind(job.machine_id)
    .bind(job.image_id)
    .bind(job.lease_id)
    .bind(actor)
    .bind(&job.user_data)
    .bind(now)
    .fetch_one(&mut **tx)
    .await
    .map_err(|e| {
        if crate::error::is_unique_violation(&e) {
            Error::conflict(
                "machine",
                format!("machine '{name}' already has a job in progress"),
            )
        } else {
            e.into()
        }
    })?;
    for (seq, s) in job.kind.plan().iter().enumerate() {
        sqlx::query(
            "INSERT INTO job_steps (job_id, seq, name, state, max_attempts, timeout_secs) \
             VALUES ($1, $2, $3, 'pending', $4, $5)",
        )
        .bind(id)
        .bind(seq as i64)
        .bind(s.name.as_str())
        .bind(s.max_attempts)
        .bind(s.timeout_secs)
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query("INSERT INTO job_events (job_id, at, level, message) VALUES ($1, $2, 'info', $3)")
        .bind(id)
        .bind(now)
        .bind(format!("{} of {name} queued by {actor}", job.kind))
        .execute(&mut **tx)
        .await?;
    record_in(
        tx,
        &NewAuditEvent::ok(actor, &format!("job.{}", job.kind), "job", &id.to_string())
            .machine(Some(name.clone()))
            .group(group)
            .detail(serde_json::json!({"machine": name, "image_id": job.image_id, "lease_id": job.lease_id})),
    )
    .await?;
    crate::instances::announce_jobs_tx(tx).await?;
    Ok(id)
}

impl Inventory {
    /// Creates a job and moves its machine to the job's state, in one transaction.
    pub async fn create_job(&self, actor: &str, job: &NewJob) -> Result<Job> {
        let mut tx = self.begin_write().await?;
        let id = insert_job_tx(&mut tx, actor, job).await?;
        crate::retry::commit(tx).await?;
        self.job(id).await
    }

    /// One job with its steps.
    pub async fn job(&self, id: i64) -> Result<Job> {
        let row = sqlx::query(&format!("{JOB_SELECT} WHERE j.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::not_found("job", id.to_string()))?;
        let mut job = job_from_row(&row)?;
        let steps = sqlx::query(
            "SELECT seq, name, state, attempts, max_attempts, timeout_secs, started_at, finished_at, error \
             FROM job_steps WHERE job_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        job.steps = steps.iter().map(step_from_row).collect::<Result<_>>()?;
        Ok(job)
    }

    /// Jobs, newest first.
    pub async fn jobs(&self, f: &JobFilter) -> Result<Vec<Job>> {
        let rows = sqlx::query(&format!(
            "{JOB_SELECT} WHERE ($1 IS NULL OR m.name = $1) AND ($2 IS NULL OR j.state = $2) \
             AND ($3 IS NULL OR COALESCE(gj.name, gm.name) = $3) AND j.id < $5 \
             AND ($6 IS NULL OR j.kind = $6) ORDER BY j.id DESC LIMIT $4"
        ))
        .bind(&f.machine)
        .bind(f.state.map(|s| s.as_str()))
        .bind(&f.group)
        .bind(f.limit.unwrap_or(100).clamp(1, 10_000))
        .bind(f.after.unwrap_or(i64::MAX))
        .bind(f.kind.map(|k| k.as_str()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// The queued or running job of a machine, if any.
    pub async fn active_job_of(&self, machine_id: i64) -> Result<Option<Job>> {
        let row = sqlx::query(&format!(
            "{JOB_SELECT} WHERE j.machine_id = $1 AND j.state IN ('queued', 'running')"
        ))
        .bind(machine_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Queued and running jobs, oldest first (the conductor's work list).
    pub async fn active_jobs(&self) -> Result<Vec<Job>> {
        let rows = sqlx::query(&format!(
            "{JOB_SELECT} WHERE j.state IN ('queued', 'running') ORDER BY j.id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// A job's log lines after `after_id`, oldest first.
    pub async fn job_events(&self, id: i64, after_id: i64) -> Result<Vec<JobEvent>> {
        let rows = sqlx::query(
            "SELECT id, job_id, at, level, message FROM job_events WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT 10000",
        )
        .bind(id)
        .bind(after_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(JobEvent {
                    id: r.try_get("id")?,
                    job_id: r.try_get("job_id")?,
                    at: r.try_get("at")?,
                    level: r.try_get("level")?,
                    message: r.try_get("message")?,
                })
            })
            .collect()
    }

    /// Appends a line to a job's log.
    pub async fn add_job_event(&self, id: i64, level: &str, message: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO job_events (job_id, at, level, message) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(now_ms())
            .bind(level)
            .bind(message)
            .execute(&mut *tx)
            .await?;
        crate::retry::commit(tx).await?;
        Ok(())
    }

    /// Asks for a job to stop. A queued job ends at once (its machine goes `failed`, since
    /// it already left its old state); a running one is flagged for the conductor.
    pub async fn cancel_job(&self, actor: &str, id: i64) -> Result<Job> {
        let job = self.job(id).await?;
        if job.state.is_final() {
            return Err(Error::conflict(
                "job",
                format!("job {id} has already ended ({})", job.state),
            ));
        }
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        if job.state == JobState::Queued {
            let n = sqlx::query(
                "UPDATE jobs SET state = 'cancelled', error = $1, finished_at = $2, updated_at = $2, cancel_requested_by = $3 \
                 WHERE id = $4 AND state = 'queued'",
            )
            .bind(format!("cancelled by {actor} before it started"))
            .bind(now)
            .bind(actor)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 {
                move_job_machine_tx(
                    &mut tx,
                    actor,
                    &job,
                    MachineState::Failed,
                    &format!("{} job {id} cancelled by {actor}", job.kind),
                )
                .await?;
            }
        } else {
            sqlx::query(
                "UPDATE jobs SET cancel_requested_by = $1, updated_at = $2 WHERE id = $3 AND state = 'running'",
            )
            .bind(actor)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO job_events (job_id, at, level, message) VALUES ($1, $2, 'warn', $3)",
        )
        .bind(id)
        .bind(now)
        .bind(format!("cancel requested by {actor}"))
        .execute(&mut *tx)
        .await?;
        record_in(
            &mut tx,
            &NewAuditEvent::ok(actor, "job.cancel", "job", &id.to_string())
                .machine(Some(job.machine.clone()))
                .group(job.member_group.clone()),
        )
        .await?;
        crate::retry::commit(tx).await?;
        self.job(id).await
    }

    /// Moves a queued job to running (compare-and-set). Returns whether this call did it.
    pub async fn start_job(&self, id: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        let n = sqlx::query(
            "UPDATE jobs SET state = 'running', started_at = $1, updated_at = $1 WHERE id = $2 AND state = 'queued'",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        crate::retry::commit(tx).await?;
        Ok(n == 1)
    }

    /// Marks step `seq` running (one more attempt) and makes it the job's current step.
    /// Returns the attempt number.
    pub async fn begin_step(&self, id: i64, seq: i64) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        sqlx::query(
            "UPDATE job_steps SET state = 'running', attempts = attempts + 1, started_at = $1, finished_at = NULL \
             WHERE job_id = $2 AND seq = $3",
        )
        .bind(now)
        .bind(id)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE jobs SET current_step = $1, updated_at = $2 WHERE id = $3")
            .bind(seq)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let attempts: i64 =
            sqlx::query_scalar("SELECT attempts FROM job_steps WHERE job_id = $1 AND seq = $2")
                .bind(id)
                .bind(seq)
                .fetch_one(&mut *tx)
                .await?;
        crate::retry::commit(tx).await?;
        Ok(attempts)
    }

    /// Records how an attempt of step `seq` ended: succeeded, failed or skipped (running
    /// again, with an error, for a failed attempt that will be retried).
    pub async fn end_step(
        &self,
        id: i64,
        seq: i64,
        state: StepState,
        error: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE job_steps SET state = $1, error = $2, finished_at = $3 WHERE job_id = $4 AND seq = $5",
        )
        .bind(state.as_str())
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        crate::retry::commit(tx).await?;
        Ok(())
    }

    /// Ends a job: its final state, the machine's new state (compare-and-set from the job's
    /// state), the audit event. `machine_to` None leaves the machine alone.
    pub async fn finish_job(
        &self,
        id: i64,
        state: JobState,
        error: Option<&str>,
        machine_to: Option<MachineState>,
        reason: &str,
    ) -> Result<()> {
        let job = self.job(id).await?;
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        let n = sqlx::query(
            "UPDATE jobs SET state = $1, error = $2, finished_at = $3, updated_at = $3, \
             agent_armed_at = NULL, agent_token_hash = NULL, agent_token_expires_at = NULL \
             WHERE id = $4 AND state IN ('queued', 'running')",
        )
        .bind(state.as_str())
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(());
        }
        if let Some(to) = machine_to {
            move_job_machine_tx(&mut tx, "conductor", &job, to, reason).await?;
        }
        let level = if state == JobState::Succeeded {
            "info"
        } else {
            "error"
        };
        sqlx::query("INSERT INTO job_events (job_id, at, level, message) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(now)
            .bind(level)
            .bind(match error {
                Some(e) => format!("job {state}: {e}"),
                None => format!("job {state}"),
            })
            .execute(&mut *tx)
            .await?;
        let outcome = if state == JobState::Succeeded {
            crate::AuditOutcome::Ok
        } else {
            crate::AuditOutcome::Failed
        };
        record_in(
            &mut tx,
            &NewAuditEvent::ok(
                "conductor",
                &format!("job.{}.{}", job.kind, state),
                "job",
                &id.to_string(),
            )
            .outcome(outcome)
            .machine(Some(job.machine.clone()))
            .group(job.member_group.clone())
            .detail(serde_json::json!({"error": error, "machine_state": machine_to})),
        )
        .await?;
        crate::retry::commit(tx).await?;
        Ok(())
    }
}

impl Inventory {
    /// The SSH keys of the member group holding a machine (injected on reimage).
    pub async fn ssh_keys_for_machine(&self, machine_id: i64) -> Result<Vec<String>> {
        let keys: Option<String> = sqlx::query_scalar(
            "SELECT g.ssh_keys FROM machines m JOIN leases l ON l.id = m.lease_id \
             JOIN member_groups g ON g.id = l.group_id WHERE m.id = $1",
        )
        .bind(machine_id)
        .fetch_optional(&self.pool)
        .await?;
        match keys {
            Some(t) => crate::db::from_json("member_groups.ssh_keys", &t),
            None => Ok(Vec::new()),
        }
    }

    /// The user data stored with a job.
    pub async fn job_user_data(&self, id: i64) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT user_data FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }
}

/// Moves a job's machine out of the job's state, if it is still there (a person may have put
/// it in maintenance meanwhile; then it stays there). The job's audit event records the move.
async fn move_job_machine_tx(
    tx: &mut Transaction<'static, Any>,
    actor: &str,
    job: &Job,
    to: MachineState,
    reason: &str,
) -> Result<()> {
    let machine = MachineRef {
        id: job.machine_id,
        name: &job.machine,
        group: job.member_group.as_deref(),
    };
    let from = job.kind.machine_state();
    match transition_tx(
        tx,
        actor,
        &machine,
        from,
        to,
        reason,
        TransitionAudit::ByJob,
    )
    .await
    {
        Ok(()) | Err(Error::StateChanged { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
