//! The inventory as the boot server sees it (implemented by the `api` crate).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Mutex, PoisonError};

use futures::future::BoxFuture;

use crate::boot::{BootIntent, ClientInfo};
use crate::mac::MacAddr;

/// Error from a [`MachineDirectory`] (the request is dropped and counted).
#[derive(Debug, thiserror::Error)]
#[error("machine directory: {0}")]
pub struct DirectoryError(pub String);

/// What the inventory knows about one MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineEntry {
    /// What the machine should boot.
    pub intent: BootIntent,
    /// Static reservation (authoritative mode); best kept outside the dynamic pool.
    pub reserved_ip: Option<Ipv4Addr>,
    /// Host name to hand out (option 12), if any.
    pub hostname: Option<String>,
}

/// Lookup of machines by MAC; object-safe, used as `Arc<dyn MachineDirectory>`. The boot
/// server asks on every DISCOVER, REQUEST and INFORM and caches nothing itself, so an
/// implementation over a database keeps its own short-lived cache (the one cache).
pub trait MachineDirectory: Send + Sync + 'static {
    /// The machine with this MAC, or `None` if the inventory does not know it.
    fn lookup(&self, mac: MacAddr) -> BoxFuture<'_, Result<Option<MachineEntry>, DirectoryError>>;
    /// An unknown machine PXE-booted while discovery is on: record it as `new`.
    /// Called at most once per MAC per server run.
    fn discovered(&self, info: ClientInfo) -> BoxFuture<'_, Result<(), DirectoryError>>;
    /// Proxy mode: the machine's PXE exchange showed the boot server this address (the one its
    /// REQUEST asks the network's DHCP server for, or its proxy request's ciaddr). The API binds
    /// an agent's claim to it. Default: ignored.
    fn address_seen(&self, _mac: MacAddr, _ip: Ipv4Addr) {}
}

/// A directory held in memory (tests, examples, and a fallback).
#[derive(Debug, Default)]
pub struct StaticDirectory {
    machines: Mutex<HashMap<MacAddr, MachineEntry>>,
    discovered: Mutex<Vec<ClientInfo>>,
}

impl StaticDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a machine.
    pub fn insert(&self, mac: MacAddr, entry: MachineEntry) {
        self.machines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(mac, entry);
    }

    /// Clients reported through [`MachineDirectory::discovered`].
    pub fn discovered_clients(&self) -> Vec<ClientInfo> {
        self.discovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl MachineDirectory for StaticDirectory {
    fn lookup(&self, mac: MacAddr) -> BoxFuture<'_, Result<Option<MachineEntry>, DirectoryError>> {
        let found = self
            .machines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&mac)
            .cloned();
        Box::pin(async move { Ok(found) })
    }

    fn discovered(&self, info: ClientInfo) -> BoxFuture<'_, Result<(), DirectoryError>> {
        self.discovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(info);
        Box::pin(async { Ok(()) })
    }
}
