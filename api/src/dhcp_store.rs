//! The inventory's `dhcp_leases` table as the boot server's lease store: the io seam between
//! the sans-IO DHCP core (`pxe`) and the database. On PostgreSQL the store is *shared* (other
//! instances may serve the same segment): the database decides who gets an address and the
//! boot server reads back what the others wrote (decision 58).

use futures::future::BoxFuture;
use futures::FutureExt;
use inventory::{Backend, DhcpLease, DhcpLeaseChange, Inventory, DHCP_REREAD_MS};
use pxe::{
    AddressLease, AddressLeaseChange, AddressLeaseKey, AddressLeaseState, AddressLeaseStore,
    AddressLeaseStoreError, LostLease, MacAddr,
};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicI64, Ordering};

/// The inventory's `dhcp_leases` table as the boot server's lease store.
pub struct InventoryAddressLeaseStore {
    inv: Inventory,
    /// The newest `written_at` [`AddressLeaseStore::refresh`] has seen.
    seen_until: AtomicI64,
}

impl InventoryAddressLeaseStore {
    /// The store over `inv`.
    pub fn new(inv: Inventory) -> Self {
        InventoryAddressLeaseStore {
            inv,
            seen_until: AtomicI64::new(0),
        }
    }
}

fn store_error(e: inventory::Error) -> AddressLeaseStoreError {
    AddressLeaseStoreError::Other(e.to_string())
}

/// A stored row as the boot server's lease; `None` (logged) for a damaged row, whose address
/// is then re-leased rather than the start failing.
fn lease_of_row(r: DhcpLease) -> Option<AddressLease> {
    let (Ok(key), Ok(ip)) = (r.key.parse::<AddressLeaseKey>(), r.ip.parse::<Ipv4Addr>()) else {
        tracing::warn!(key = %r.key, ip = %r.ip, "skipping a damaged DHCP lease row");
        return None;
    };
    // The stored hardware address; a MAC key is one too. `id:` rows from before schema 0005
    // have none until the client renews, declined holds never do.
    let mac = match (r.mac.as_deref().map(str::parse::<MacAddr>), &key) {
        (Some(Ok(m)), _) => m,
        (_, AddressLeaseKey::Mac(m)) => *m,
        _ => MacAddr([0; 6]),
    };
    Some(AddressLease {
        mac,
        ip,
        hostname: r.hostname,
        client_id: r.client_id,
        expires_at: r.expires_at,
        state: AddressLeaseState::from_column(&r.state),
    })
}

fn row_of_lease(l: AddressLease) -> DhcpLease {
    DhcpLease {
        key: l.key().to_string(),
        // A declined hold belongs to nobody (decision 23).
        mac: (l.state != AddressLeaseState::Declined).then(|| l.mac.to_string()),
        ip: l.ip.to_string(),
        hostname: l.hostname,
        client_id: l.client_id,
        state: l.state.as_str().into(),
        expires_at: l.expires_at,
    }
}

impl AddressLeaseStore for InventoryAddressLeaseStore {
    fn load(&self) -> BoxFuture<'_, Result<Vec<AddressLease>, AddressLeaseStoreError>> {
        async move {
            // What load returns needs no refresh: start the cursor now (less the re-read).
            self.seen_until
                .store(inventory::now_ms() - DHCP_REREAD_MS, Ordering::Relaxed);
            let rows = self.inv.dhcp_leases().await.map_err(store_error)?;
            Ok(rows.into_iter().filter_map(lease_of_row).collect())
        }
        .boxed()
    }

    fn commit(
        &self,
        changes: Vec<AddressLeaseChange>,
    ) -> BoxFuture<'_, Result<Vec<LostLease>, AddressLeaseStoreError>> {
        async move {
            let batch: Vec<DhcpLeaseChange> = changes
                .into_iter()
                .map(|c| match c {
                    AddressLeaseChange::Delete { key } => DhcpLeaseChange::Delete {
                        key: key.to_string(),
                    },
                    AddressLeaseChange::Reclaim { key, ip } => DhcpLeaseChange::Reclaim {
                        key: key.to_string(),
                        ip: ip.to_string(),
                    },
                    AddressLeaseChange::Upsert(l) => DhcpLeaseChange::Upsert(row_of_lease(l)),
                })
                .collect();
            let lost = self.inv.retrying_dhcp(&batch).await.map_err(store_error)?;
            Ok(lost
                .into_iter()
                .filter_map(|l| {
                    Some(LostLease {
                        key: l.key.parse().ok()?,
                        ip: l.ip.parse().ok()?,
                        holder: lease_of_row(l.holder)?,
                    })
                })
                .collect())
        }
        .boxed()
    }

    fn shared(&self) -> bool {
        // SQLite has one writer, this process: nothing to learn from the table.
        self.inv.backend() == Backend::Postgres
    }

    fn refresh(&self) -> BoxFuture<'_, Result<Vec<AddressLease>, AddressLeaseStoreError>> {
        async move {
            if !self.shared() {
                return Ok(Vec::new());
            }
            let since = self.seen_until.load(Ordering::Relaxed);
            let (rows, newest) = self
                .inv
                .dhcp_leases_written_since(since)
                .await
                .map_err(store_error)?;
            // Re-read a little: a batch stamped just before `newest` may commit after it.
            self.seen_until
                .store(since.max(newest - DHCP_REREAD_MS), Ordering::Relaxed);
            Ok(rows.into_iter().filter_map(lease_of_row).collect())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inventory store keeps MAC-keyed, client-id-keyed and declined leases apart and
    /// loads them back with the same keys and states.
    #[tokio::test]
    async fn lease_store_round_trips_lease_keys() {
        let dir = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}", dir.path().join("inv.db").display());
        let inv = Inventory::open(&url, inventory::SecretBox::from_key([7; 32]))
            .await
            .expect("open");
        let store = InventoryAddressLeaseStore::new(inv);
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let lease = |ip: [u8; 4], client_id: Option<&str>, state| AddressLease {
            mac,
            ip: Ipv4Addr::from(ip),
            hostname: None,
            client_id: client_id.map(str::to_string),
            expires_at: 5,
            state,
        };
        let by_mac = lease([10, 0, 0, 1], None, AddressLeaseState::Bound);
        let by_id = lease([10, 0, 0, 2], Some("00786978"), AddressLeaseState::Bound);
        let declined = lease([10, 0, 0, 3], None, AddressLeaseState::Declined);
        store
            .commit(vec![
                AddressLeaseChange::Upsert(by_mac.clone()),
                AddressLeaseChange::Upsert(by_id.clone()),
                AddressLeaseChange::Upsert(declined.clone()),
            ])
            .await
            .expect("commit");
        let mut got = store.load().await.expect("load");
        got.sort_by_key(|l| l.ip);
        let keys: Vec<(AddressLeaseKey, AddressLeaseState)> =
            got.iter().map(|l| (l.key(), l.state)).collect();
        assert_eq!(
            keys,
            [
                (by_mac.key(), AddressLeaseState::Bound),
                (by_id.key(), AddressLeaseState::Bound),
                (declined.key(), AddressLeaseState::Declined),
            ]
        );
        // The chaddr of MAC- and client-id-keyed leases is stored; a declined hold has none.
        assert_eq!(got[0].mac, mac);
        assert_eq!(got[1].mac, mac);
        assert_eq!(got[2].mac, MacAddr([0; 6]));
        store
            .commit(vec![AddressLeaseChange::Delete { key: by_id.key() }])
            .await
            .expect("delete");
        assert_eq!(store.load().await.expect("load").len(), 2);
    }
}
