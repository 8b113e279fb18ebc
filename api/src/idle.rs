//! The idle power-off worker: every few seconds, machines that the inventory says are due
//! (`Inventory::idle_machines_due`: available, unleased, past their site's policy time, not
//! tried since they became idle) are powered off through their BMC. Each outcome is recorded
//! and audited once; a BMC that cannot do it is reported, not retried until the machine is
//! used again. A machine it powered off that a lease then holds is powered on again once
//! (`power_on_leased`); reimage and inspection power machines on as they always do.
//! Only the instance leading a machine's site does either (`Instance::site_leads`).

use crate::bmc_service::BmcService;
use crate::instance::Instance;
use bmc::PowerAction;
use futures::StreamExt;
use inventory::{now_ms, Inventory};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often the worker looks; a machine is powered off at most this late.
pub const IDLE_TICK: Duration = Duration::from_secs(2);

/// How many BMCs are told at once.
const PARALLELISM: usize = 8;

/// One look: powers off every machine that is due and at a site `covers`.
pub async fn power_off_idle(
    inv: &Inventory,
    bmc: &BmcService,
    covers: impl Fn(Option<&str>) -> bool,
) {
    let due = match inv.idle_machines_due(now_ms()).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "idle power-off: cannot list machines");
            return;
        }
    };
    let due = due.into_iter().filter(|m| covers(m.site.as_deref()));
    futures::stream::iter(due)
        .for_each_concurrent(PARALLELISM, |m| async move {
            let res = bmc
                .run(&m.name, |h| async move { h.power(PowerAction::Off).await })
                .await;
            let error = res.err().map(|e| e.message);
            match &error {
                None => tracing::info!(machine = %m.name, idle_secs = m.idle_ms / 1000, "idle power-off"),
                Some(e) => tracing::warn!(machine = %m.name, error = %e, "idle power-off failed; not retried until the machine is used"),
            }
            // Recorded so it is not tried again this idle stretch; a failed write is retried
            // once, then the next tick tries the machine again (bounded by the tick).
            for attempt in 0..2 {
                match inv
                    .record_idle_power_off(&m.name, m.idle_ms, error.as_deref())
                    .await
                {
                    Ok(()) => break,
                    Err(e) if attempt == 0 => {
                        tracing::warn!(machine = %m.name, error = %e, "idle power-off: record failed, retrying")
                    }
                    Err(e) => {
                        tracing::error!(machine = %m.name, error = %e, "idle power-off: cannot record the outcome")
                    }
                }
            }
        })
        .await;
}

/// One look: powers on every machine at a site `covers` that the idle rule powered off and
/// a lease now holds.
pub async fn power_on_leased(
    inv: &Inventory,
    bmc: &BmcService,
    covers: impl Fn(Option<&str>) -> bool,
) {
    let wake = match inv.idle_machines_to_wake().await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "idle power-on: cannot list machines");
            return;
        }
    };
    let wake = wake.into_iter().filter(|m| covers(m.site.as_deref()));
    futures::stream::iter(wake)
        .for_each_concurrent(PARALLELISM, |m| async move {
            let name = m.name;
            let res = bmc
                .run(&name, |h| async move { h.power(PowerAction::On).await })
                .await;
            let error = res.err().map(|e| e.message);
            match &error {
                None => tracing::info!(machine = %name, "leased after an idle power-off: powered on"),
                Some(e) => tracing::warn!(machine = %name, error = %e, "idle power-on failed; the group can power it on"),
            }
            for attempt in 0..2 {
                match inv.record_idle_power_on(&name, error.as_deref()).await {
                    Ok(()) => break,
                    Err(e) if attempt == 0 => {
                        tracing::warn!(machine = %name, error = %e, "idle power-on: record failed, retrying")
                    }
                    Err(e) => {
                        tracing::error!(machine = %name, error = %e, "idle power-on: cannot record the outcome")
                    }
                }
            }
        })
        .await;
}

/// Starts the worker; it stops when `stop` is cancelled.
pub fn spawn(
    inv: Inventory,
    bmc: Arc<BmcService>,
    instance: Arc<Instance>,
    stop: pxe::Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(IDLE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let leads = instance.site_leads(&inv).await;
                    let covers = |site: Option<&str>| leads.covers(&instance.scope, site);
                    power_on_leased(&inv, &bmc, covers).await;
                    power_off_idle(&inv, &bmc, covers).await;
                }
                _ = stop.cancelled() => break,
            }
        }
    })
}
