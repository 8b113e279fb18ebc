//! The lease-end notice worker: every few seconds it asks the inventory which notices are due
//! (`Inventory::lease_notices_due`: 24 h and 1 h before a lease of a group with a webhook ends)
//! and POSTs each to the group's webhook, checked like a URL import (`import_guard`), bounded in
//! time; each attempt is recorded, a notice is tried [`inventory::NOTICE_ATTEMPTS`] times and
//! its outcome audited. With several instances only the scheduler's leader sends.

use crate::import_guard::{self, ImportRange};
use crate::instance::{Instance, SCHEDULER_ROLE};
use futures::StreamExt;
use inventory::{now_ms, DueNotice, Inventory};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often the worker looks (a notice is at most this late, plus retries).
pub const NOTICE_TICK: Duration = Duration::from_secs(5);
/// How long one webhook call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Webhooks called at once.
const PARALLELISM: usize = 8;

/// The JSON a webhook receives.
pub fn notice_body(n: &DueNotice, now: i64) -> serde_json::Value {
    serde_json::json!({
        "event": "lease.ending",
        "notice": n.kind,
        "lease": n.lease_id,
        "group": n.group,
        "machines": n.machines,
        "ends_at": n.ends_at,
        "ends_at_text": inventory::fmt_utc(n.ends_at, false),
        "minutes_left": (n.ends_at - now).max(0) / 60_000,
    })
}

/// One look: delivers every due notice once.
pub async fn send_due(inv: &Inventory, allow: &[ImportRange]) {
    let now = now_ms();
    let due = match inv.lease_notices_due(now).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "lease notices: cannot list them");
            return;
        }
    };
    futures::stream::iter(due)
        .for_each_concurrent(PARALLELISM, |n| async move {
            let body = notice_body(&n, now);
            let error = import_guard::post_json(&n.url, &body, allow, CALL_TIMEOUT)
                .await
                .err()
                .map(|e| e.0);
            match &error {
                None => tracing::info!(lease = n.lease_id, group = %n.group, notice = n.kind.as_str(), "lease notice sent"),
                Some(e) => tracing::warn!(lease = n.lease_id, group = %n.group, error = %e, "lease notice failed"),
            }
            if let Err(e) = inv.record_lease_notice(&n, error.as_deref()).await {
                // Not recorded: the next tick tries again (one extra call at worst).
                tracing::warn!(lease = n.lease_id, error = %e, "lease notice: cannot record the attempt");
            }
        })
        .await;
}

/// Starts the worker; it stops when `stop` is cancelled.
pub fn spawn(
    inv: Inventory,
    instance: Arc<Instance>,
    allow: Arc<Vec<ImportRange>>,
    stop: pxe::Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(NOTICE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if instance.leads(&inv, SCHEDULER_ROLE).await {
                        send_due(&inv, &allow).await;
                    }
                }
                _ = stop.cancelled() => break,
            }
        }
    })
}
