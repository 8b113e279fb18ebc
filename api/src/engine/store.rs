//! The engine's thin persisting layer: every write the drive loop makes is retried through
//! a database hiccup (`Inventory::retrying`, the one retry helper), and a write that keeps
//! failing is returned, never dropped.

use inventory::{AuditOutcome, Inventory, Job, NewAuditEvent};
use serde_json::json;

/// Appends a line to a job's log. A log line that cannot be written after the retries is
/// logged here instead: it never fails a job on its own (the step writes that follow it
/// would).
pub(super) async fn event(inv: &Inventory, id: i64, level: &str, msg: &str) {
    if let Err(e) = inv
        .retrying("a job event", || inv.add_job_event(id, level, msg))
        .await
    {
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
    inv.retrying("an agent report's audit", || {
        inv.record(
            NewAuditEvent::ok("agent", "agent.report", "machine", &job.machine)
                .outcome(outcome)
                .group(job.member_group.clone())
                .detail(detail.clone()),
        )
    })
    .await
}
