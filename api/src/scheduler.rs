//! The lease scheduler: every few seconds it ends due leases, starts due reservations and
//! serves the waitlist (`Inventory::lease_tick`). It keeps no state of its own — everything is
//! in the database — so a restart loses nothing, and the step run at start-up ends the leases
//! that fell due while rackshare was down. With several instances on one database only the
//! leader of the `scheduler` role steps (`Instance::leads`); another takes over when it dies.

use crate::instance::{Instance, SCHEDULER_ROLE};
use inventory::{now_ms, Inventory};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often the scheduler looks. Leases end at most this late.
pub const LEASE_TICK: Duration = Duration::from_secs(2);

/// Runs steps until nothing is left to do (each step is bounded; a long outage may have left
/// more than one step's worth), at most `rounds` times.
pub async fn catch_up(inv: &Inventory, rounds: usize) {
    for _ in 0..rounds {
        // Through a failover the step runs again (it is one transaction, and rolled back).
        match inv
            .retrying("the lease scheduler's step", || inv.lease_tick(now_ms()))
            .await
        {
            Ok(t) if t.is_empty() => return,
            Ok(t) => tracing::info!(
                ended = ?t.ended, started = ?t.started, served = ?t.served, lapsed = ?t.lapsed,
                "lease scheduler"
            ),
            Err(e) => {
                // A database hiccup must not kill the scheduler; the next tick retries.
                tracing::warn!(error = %e, "lease scheduler step failed");
                return;
            }
        }
    }
}

/// [`catch_up`] when this instance leads the scheduler role (taking it if it is free).
pub async fn catch_up_as_leader(inv: &Inventory, instance: &Instance, rounds: usize) {
    if instance.leads(inv, SCHEDULER_ROLE).await {
        catch_up(inv, rounds).await;
    }
}

/// Starts the scheduler; it stops when `stop` is cancelled.
pub fn spawn(
    inv: Inventory,
    instance: Arc<Instance>,
    every: Duration,
    stop: pxe::Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => catch_up_as_leader(&inv, &instance, 10).await,
                _ = stop.cancelled() => break,
            }
        }
    })
}
