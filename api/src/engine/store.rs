//! The engine's thin persisting layer: every write the drive loop makes is retried through
//! a database hiccup, and a write that keeps failing is returned, never dropped.

use inventory::{AuditOutcome, Inventory, Job, NewAuditEvent};
use serde_json::json;
use std::future::Future;
use std::time::Duration;

/// How often a write is tried before its error is returned.
const WRITE_ATTEMPTS: u32 = 5;

/// Runs `write` until it succeeds, at most [`WRITE_ATTEMPTS`] times, pausing 200 ms, 400 ms,
/// … between tries (about 6 s in all: SQLite's busy timeout or a PostgreSQL failover).
pub(super) async fn retry_write<T, F, Fut>(what: &str, mut write: F) -> inventory::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = inventory::Result<T>>,
{
    let mut pause = Duration::from_millis(200);
    let mut tries = 1;
    loop {
        match write().await {
            Ok(v) => return Ok(v),
            Err(e) if tries < WRITE_ATTEMPTS => {
                tracing::warn!(error = %e, "cannot record {what} (try {tries}); retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Appends a line to a job's log. A log line that cannot be written after the retries is
/// logged here instead: it never fails a job on its own (the step writes that follow it
/// would).
pub(super) async fn event(inv: &Inventory, id: i64, level: &str, msg: &str) {
    if let Err(e) = retry_write("a job event", || inv.add_job_event(id, level, msg)).await {
        tracing::warn!(job = id, error = %e, message = msg, "could not log a job event");
    }
}

/// Audits what the engine made of an agent's report (actor `agent`): accepted, or refused
/// and why. The audit write is retried; its error is returned so the step can fail on it.
pub(super) async fn audit_report(
    inv: &Inventory,
    job: &Job,
    step: &str,
    verdict: Result<(), &str>,
) -> inventory::Result<()> {
    let (outcome, detail) = match verdict {
        Ok(()) => (AuditOutcome::Ok, json!({"job": job.id, "step": step})),
        Err(why) => (
            AuditOutcome::Failed,
            json!({"job": job.id, "step": step, "error": why}),
        ),
    };
    retry_write("an agent report's audit", || {
        inv.record(
            NewAuditEvent::ok("agent", "agent.report", "machine", &job.machine)
                .outcome(outcome)
                .group(job.member_group.clone())
                .detail(detail.clone()),
        )
    })
    .await
}
