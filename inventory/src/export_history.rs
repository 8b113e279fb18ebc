//! The history parts of the exchange format (version 3): leases with the machines they held,
//! the finished jobs, the wipe certificates and the audit log. Leases, jobs and certificates
//! keep their ids across an import (a certificate fetched before the move is found by the same
//! id after it); audit events are appended in their order and numbered by the receiving log.

use crate::db::{from_json, to_json, Backend};
use crate::{Error, Inventory, Result};
use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction};
use std::collections::HashMap;

/// A lease and its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportLease {
    /// Its id (kept on import).
    pub id: i64,
    /// The member group holding it.
    pub group: String,
    /// `pending`, `active` or `ended`.
    pub state: String,
    /// Machines asked for.
    pub machine_count: i64,
    /// What the machines had to match, as the API took it.
    #[serde(default)]
    pub constraints: serde_json::Value,
    /// Start (unix ms).
    pub starts_at: i64,
    /// End (unix ms).
    pub ends_at: i64,
    /// Who asked.
    pub created_by: String,
    /// When (unix ms).
    pub created_at: i64,
    /// When it ended.
    #[serde(default)]
    pub ended_at: Option<i64>,
    /// Why it ended.
    #[serde(default)]
    pub end_reason: Option<String>,
    /// Energy measured over the lease.
    #[serde(default)]
    pub energy_wh: f64,
    /// Waits for capacity.
    #[serde(default)]
    pub waiting: bool,
    /// How long a waiting lease runs once it starts.
    #[serde(default)]
    pub duration_ms: i64,
    /// The machines it held, by name, in allocation order.
    #[serde(default)]
    pub machines: Vec<ExportLeaseMachine>,
}

/// One machine a lease held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportLeaseMachine {
    /// Machine name.
    pub machine: String,
    /// Handed over (unix ms).
    pub allocated_at: i64,
    /// Given back, if it was.
    #[serde(default)]
    pub released_at: Option<i64>,
}

/// A finished job (queued and running ones stay with the conductor that runs them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportJob {
    /// Its id (kept on import).
    pub id: i64,
    /// `reimage`, `inspect` or `wipe`.
    pub kind: String,
    /// Machine name.
    pub machine: String,
    /// Image written, by name and version.
    #[serde(default)]
    pub image: Option<ExportImageRef>,
    /// The lease it served.
    #[serde(default)]
    pub lease_id: Option<i64>,
    /// `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Who asked.
    pub requested_by: String,
    /// What the agent reported, as it reported it.
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    /// Times (unix ms).
    pub created_at: i64,
    /// Started.
    #[serde(default)]
    pub started_at: Option<i64>,
    /// Finished.
    #[serde(default)]
    pub finished_at: Option<i64>,
    /// Its steps, in order.
    #[serde(default)]
    pub steps: Vec<ExportJobStep>,
}

/// An image named by its catalogue identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportImageRef {
    /// Name.
    pub name: String,
    /// Version.
    #[serde(default)]
    pub version: String,
}

/// One step of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportJobStep {
    /// Position.
    pub seq: i64,
    /// Name.
    pub name: String,
    /// State.
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// Attempts allowed.
    pub max_attempts: i64,
    /// Timeout.
    pub timeout_secs: i64,
    /// Started.
    #[serde(default)]
    pub started_at: Option<i64>,
    /// Finished.
    #[serde(default)]
    pub finished_at: Option<i64>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// A signed wipe certificate, byte for byte as signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportCertificate {
    /// Its id (kept on import).
    pub id: i64,
    /// The wipe job.
    pub job_id: i64,
    /// Machine name.
    pub machine: String,
    /// The lease the wipe closed.
    #[serde(default)]
    pub lease_id: Option<i64>,
    /// The certified body, as stored (the signature is over it).
    pub body: String,
    /// The signature, naming the key id (none for certificates from before signing).
    #[serde(default)]
    pub signature: Option<String>,
    /// When (unix ms).
    pub created_at: i64,
}

/// One audit log event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportAuditEvent {
    /// When (unix ms).
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Kind of target.
    pub target_kind: String,
    /// Target.
    pub target: String,
    /// Machine concerned.
    #[serde(default)]
    pub machine: Option<String>,
    /// Group concerned.
    #[serde(default)]
    pub member_group: Option<String>,
    /// `ok`, `denied` or `failed`.
    pub outcome: String,
    /// Extra facts.
    #[serde(default)]
    pub detail: serde_json::Value,
    /// The caller's address.
    #[serde(default)]
    pub source: Option<String>,
    /// The caller's token prefix.
    #[serde(default)]
    pub token_prefix: Option<String>,
}

/// What the history part of an import added.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HistoryAdded {
    pub leases: u64,
    pub jobs: u64,
    pub certificates: u64,
    pub audit_events: u64,
}

impl Inventory {
    pub(crate) async fn export_leases(&self) -> Result<Vec<ExportLease>> {
        let rows = sqlx::query(
            "SELECT l.id, g.name AS group_name, l.state, l.machine_count, l.constraints, l.starts_at, l.ends_at, \
             l.created_by, l.created_at, l.ended_at, l.end_reason, l.energy_wh, l.waiting, l.duration_ms \
             FROM leases l JOIN member_groups g ON g.id = l.group_id ORDER BY l.id",
        )
        .fetch_all(&self.pool)
        .await?;
        let held = sqlx::query(
            "SELECT lm.lease_id, m.name, lm.allocated_at, lm.released_at FROM lease_machines lm \
             JOIN machines m ON m.id = lm.machine_id ORDER BY lm.lease_id, lm.allocated_at, m.name",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut by_lease: HashMap<i64, Vec<ExportLeaseMachine>> = HashMap::new();
        for r in &held {
            by_lease
                .entry(r.try_get("lease_id")?)
                .or_default()
                .push(ExportLeaseMachine {
                    machine: r.try_get("name")?,
                    allocated_at: r.try_get("allocated_at")?,
                    released_at: r.try_get("released_at")?,
                });
        }
        rows.iter()
            .map(|r| {
                let id: i64 = r.try_get("id")?;
                Ok(ExportLease {
                    id,
                    group: r.try_get("group_name")?,
                    state: r.try_get("state")?,
                    machine_count: r.try_get("machine_count")?,
                    constraints: from_json("constraints", &r.try_get::<String, _>("constraints")?)?,
                    starts_at: r.try_get("starts_at")?,
                    ends_at: r.try_get("ends_at")?,
                    created_by: r.try_get("created_by")?,
                    created_at: r.try_get("created_at")?,
                    ended_at: r.try_get("ended_at")?,
                    end_reason: r.try_get("end_reason")?,
                    energy_wh: r.try_get("energy_wh")?,
                    waiting: r.try_get::<i64, _>("waiting")? != 0,
                    duration_ms: r.try_get("duration_ms")?,
                    machines: by_lease.remove(&id).unwrap_or_default(),
                })
            })
            .collect()
    }

    pub(crate) async fn export_jobs(&self) -> Result<Vec<ExportJob>> {
        let rows = sqlx::query(
            "SELECT j.id, j.kind, m.name AS machine_name, i.name AS image_name, i.version AS image_version, \
             j.lease_id, j.state, j.error, j.requested_by, j.result, j.created_at, j.started_at, j.finished_at \
             FROM jobs j JOIN machines m ON m.id = j.machine_id LEFT JOIN images i ON i.id = j.image_id \
             WHERE j.state NOT IN ('queued', 'running') ORDER BY j.id",
        )
        .fetch_all(&self.pool)
        .await?;
        let step_rows = sqlx::query(
            "SELECT s.job_id, s.seq, s.name, s.state, s.attempts, s.max_attempts, s.timeout_secs, \
             s.started_at, s.finished_at, s.error FROM job_steps s JOIN jobs j ON j.id = s.job_id \
             WHERE j.state NOT IN ('queued', 'running') ORDER BY s.job_id, s.seq",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut steps: HashMap<i64, Vec<ExportJobStep>> = HashMap::new();
        for r in &step_rows {
            steps
                .entry(r.try_get("job_id")?)
                .or_default()
                .push(ExportJobStep {
                    seq: r.try_get("seq")?,
                    name: r.try_get("name")?,
                    state: r.try_get("state")?,
                    attempts: r.try_get("attempts")?,
                    max_attempts: r.try_get("max_attempts")?,
                    timeout_secs: r.try_get("timeout_secs")?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                    error: r.try_get("error")?,
                });
        }
        rows.iter()
            .map(|r| {
                let id: i64 = r.try_get("id")?;
                let image_name: Option<String> = r.try_get("image_name")?;
                let image_version: Option<String> = r.try_get("image_version")?;
                let result: Option<String> = r.try_get("result")?;
                Ok(ExportJob {
                    id,
                    kind: r.try_get("kind")?,
                    machine: r.try_get("machine_name")?,
                    image: image_name.map(|name| ExportImageRef {
                        name,
                        version: image_version.unwrap_or_default(),
                    }),
                    lease_id: r.try_get("lease_id")?,
                    state: r.try_get("state")?,
                    error: r.try_get("error")?,
                    requested_by: r.try_get("requested_by")?,
                    result: result.map(|t| from_json("result", &t)).transpose()?,
                    created_at: r.try_get("created_at")?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                    steps: steps.remove(&id).unwrap_or_default(),
                })
            })
            .collect()
    }

    pub(crate) async fn export_certificates(&self) -> Result<Vec<ExportCertificate>> {
        let rows = sqlx::query(
            "SELECT c.id, c.job_id, m.name AS machine_name, c.lease_id, c.body, c.signature, c.created_at \
             FROM wipe_certificates c JOIN machines m ON m.id = c.machine_id ORDER BY c.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ExportCertificate {
                    id: r.try_get("id")?,
                    job_id: r.try_get("job_id")?,
                    machine: r.try_get("machine_name")?,
                    lease_id: r.try_get("lease_id")?,
                    body: r.try_get("body")?,
                    signature: r.try_get("signature")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    pub(crate) async fn export_audit_log(&self) -> Result<Vec<ExportAuditEvent>> {
        let rows = sqlx::query(
            "SELECT at, actor, action, target_kind, target, machine, member_group, outcome, detail, source, token_prefix \
             FROM audit_events ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ExportAuditEvent {
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target_kind: r.try_get("target_kind")?,
                    target: r.try_get("target")?,
                    machine: r.try_get("machine")?,
                    member_group: r.try_get("member_group")?,
                    outcome: r.try_get("outcome")?,
                    detail: from_json("detail", &r.try_get::<String, _>("detail")?)?,
                    source: r.try_get("source")?,
                    token_prefix: r.try_get("token_prefix")?,
                })
            })
            .collect()
    }

    /// The image quota columns of every group, by name (version 3 of the group entry).
    pub(crate) async fn group_image_quotas(
        &self,
    ) -> Result<HashMap<String, (Option<i64>, Option<i64>)>> {
        let rows =
            sqlx::query("SELECT name, quota_max_image_bytes, quota_max_images FROM member_groups")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("name")?,
                    (
                        r.try_get("quota_max_image_bytes")?,
                        r.try_get("quota_max_images")?,
                    ),
                ))
            })
            .collect()
    }
}

/// A history row whose id is already used here: the history only moves into an empty instance.
fn id_taken(kind: &'static str, id: i64) -> impl Fn(sqlx::Error) -> Error {
    move |e| {
        if crate::error::is_unique_violation(&e) {
            Error::conflict(
                kind,
                format!("{kind} {id} already exists here (history imports into an empty instance)"),
            )
        } else {
            e.into()
        }
    }
}

async fn machine_id(tx: &mut Transaction<'_, Any>, field: &'static str, name: &str) -> Result<i64> {
    sqlx::query_scalar("SELECT id FROM machines WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| Error::invalid(field, format!("names unknown machine '{name}'")))
}

/// Inserts the file's leases, jobs, certificates (with their ids) and audit events, after the
/// machines, groups and images they name.
pub(crate) async fn import_history(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    leases: &[ExportLease],
    jobs: &[ExportJob],
    certificates: &[ExportCertificate],
    audit: &[ExportAuditEvent],
) -> Result<HistoryAdded> {
    let mut added = HistoryAdded::default();
    for l in leases {
        let gid: i64 = sqlx::query_scalar("SELECT id FROM member_groups WHERE name = $1")
            .bind(&l.group)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| {
                Error::invalid(
                    "leases.group",
                    format!("lease {} names unknown group '{}'", l.id, l.group),
                )
            })?;
        sqlx::query(
            "INSERT INTO leases (id, group_id, state, machine_count, constraints, starts_at, ends_at, created_by, \
             created_at, ended_at, end_reason, energy_wh, waiting, duration_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(l.id)
        .bind(gid)
        .bind(&l.state)
        .bind(l.machine_count)
        .bind(to_json(&l.constraints))
        .bind(l.starts_at)
        .bind(l.ends_at)
        .bind(&l.created_by)
        .bind(l.created_at)
        .bind(l.ended_at)
        .bind(&l.end_reason)
        .bind(l.energy_wh)
        .bind(i64::from(l.waiting))
        .bind(l.duration_ms)
        .execute(&mut **tx)
        .await
        .map_err(id_taken("lease", l.id))?;
        for h in &l.machines {
            let mid = machine_id(tx, "leases.machines", &h.machine).await?;
            sqlx::query(
                "INSERT INTO lease_machines (lease_id, machine_id, allocated_at, released_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(l.id)
            .bind(mid)
            .bind(h.allocated_at)
            .bind(h.released_at)
            .execute(&mut **tx)
            .await?;
            // A machine still held points at its lease, as allocation leaves it.
            if h.released_at.is_none() && l.state == "active" {
                sqlx::query("UPDATE machines SET lease_id = $1 WHERE id = $2")
                    .bind(l.id)
                    .bind(mid)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        added.leases += 1;
    }
    for j in jobs {
        if matches!(j.state.as_str(), "queued" | "running") {
            return Err(Error::invalid(
                "jobs.state",
                format!("job {} is {}: only finished jobs move", j.id, j.state),
            ));
        }
        let mid = machine_id(tx, "jobs.machine", &j.machine).await?;
        let image_id: Option<i64> = match &j.image {
            Some(i) => Some(
                sqlx::query_scalar("SELECT id FROM images WHERE name = $1 AND version = $2")
                    .bind(&i.name)
                    .bind(&i.version)
                    .fetch_optional(&mut **tx)
                    .await?
                    .ok_or_else(|| {
                        Error::invalid(
                            "jobs.image",
                            format!(
                                "job {} names unknown image '{}' '{}'",
                                j.id, i.name, i.version
                            ),
                        )
                    })?,
            ),
            None => None,
        };
        let updated_at = j.finished_at.unwrap_or(j.created_at);
        sqlx::query(
            "INSERT INTO jobs (id, kind, machine_id, image_id, lease_id, state, error, requested_by, result, \
             created_at, started_at, finished_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(j.id)
        .bind(&j.kind)
        .bind(mid)
        .bind(image_id)
        .bind(j.lease_id)
        .bind(&j.state)
        .bind(&j.error)
        .bind(&j.requested_by)
        .bind(j.result.as_ref().map(to_json))
        .bind(j.created_at)
        .bind(j.started_at)
        .bind(j.finished_at)
        .bind(updated_at)
        .execute(&mut **tx)
        .await
        .map_err(id_taken("job", j.id))?;
        for s in &j.steps {
            sqlx::query(
                "INSERT INTO job_steps (job_id, seq, name, state, attempts, max_attempts, timeout_secs, started_at, finished_at, error) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(j.id)
            .bind(s.seq)
            .bind(&s.name)
            .bind(&s.state)
            .bind(s.attempts)
            .bind(s.max_attempts)
            .bind(s.timeout_secs)
            .bind(s.started_at)
            .bind(s.finished_at)
            .bind(&s.error)
            .execute(&mut **tx)
            .await?;
        }
        added.jobs += 1;
    }
    for c in certificates {
        let mid = machine_id(tx, "certificates.machine", &c.machine).await?;
        sqlx::query(
            "INSERT INTO wipe_certificates (id, job_id, machine_id, lease_id, body, signature, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(c.id)
        .bind(c.job_id)
        .bind(mid)
        .bind(c.lease_id)
        .bind(&c.body)
        .bind(&c.signature)
        .bind(c.created_at)
        .execute(&mut **tx)
        .await
        .map_err(id_taken("wipe certificate", c.id))?;
        added.certificates += 1;
    }
    for e in audit {
        sqlx::query(
            "INSERT INTO audit_events (at, actor, action, target_kind, target, machine, member_group, outcome, detail, source, token_prefix) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(e.at)
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.target_kind)
        .bind(&e.target)
        .bind(&e.machine)
        .bind(&e.member_group)
        .bind(&e.outcome)
        .bind(to_json(&e.detail))
        .bind(&e.source)
        .bind(&e.token_prefix)
        .execute(&mut **tx)
        .await?;
        added.audit_events += 1;
    }
    // Explicit ids leave PostgreSQL's identity sequences behind (SQLite's AUTOINCREMENT
    // follows the largest id by itself): the next lease, job or certificate must not collide.
    if backend == Backend::Postgres {
        for reset in [
            "SELECT setval(pg_get_serial_sequence('leases', 'id'), (SELECT COALESCE(MAX(id), 0) + 1 FROM leases), false)",
            "SELECT setval(pg_get_serial_sequence('jobs', 'id'), (SELECT COALESCE(MAX(id), 0) + 1 FROM jobs), false)",
            "SELECT setval(pg_get_serial_sequence('wipe_certificates', 'id'), (SELECT COALESCE(MAX(id), 0) + 1 FROM wipe_certificates), false)",
        ] {
            sqlx::query(reset).execute(&mut **tx).await?;
        }
    }
    Ok(added)
}
