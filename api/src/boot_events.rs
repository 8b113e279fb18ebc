//! Boot events into the inventory: the boot server's [`pxe::BootEventSink`] (batches from its
//! bounded queue, one transaction each, pruned per MAC by the inventory), and what the API
//! itself adds to a MAC's record (`/boot` fetches, the agent's claim).

use futures::future::BoxFuture;
use futures::FutureExt;
use inventory::{Inventory, MacAddress, NewBootEvent};
use pxe::{BootEvent, BootEventSink, BootEventSinkError};

/// The inventory's `boot_events` table as the boot server's event sink.
pub struct InventoryBootEvents {
    /// The inventory.
    pub inv: Inventory,
}

impl BootEventSink for InventoryBootEvents {
    fn write(&self, batch: Vec<BootEvent>) -> BoxFuture<'_, Result<(), BootEventSinkError>> {
        async move {
            let rows: Vec<NewBootEvent> = batch
                .into_iter()
                .map(|e| NewBootEvent {
                    mac: MacAddress(e.mac.0),
                    at: e.at_ms,
                    kind: e.kind,
                    detail: e.detail,
                })
                .collect();
            self.inv
                .record_boot_events(&rows)
                .await
                .map_err(|e| BootEventSinkError(e.to_string()))
        }
        .boxed()
    }
}
