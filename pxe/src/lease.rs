//! Lease persistence: the [`LeaseStore`] trait and a file-backed implementation.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

/// State of a persisted lease (`dhcp_leases.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// In use until `expires_at`.
    Bound,
    /// Released by the client; the address is kept for it if still free.
    Released,
}

impl LeaseState {
    /// Column value: `bound` or `released`.
    pub fn as_str(&self) -> &'static str {
        match self {
            LeaseState::Bound => "bound",
            LeaseState::Released => "released",
        }
    }
}

/// One lease, shaped like a `dhcp_leases` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Client MAC (primary key).
    pub mac: MacAddr,
    /// Leased address (unique).
    pub ip: Ipv4Addr,
    /// Host name (option 12 or the directory's).
    pub hostname: Option<String>,
    /// Client identifier (option 61), hex.
    pub client_id: Option<String>,
    /// Expiry, unix milliseconds.
    pub expires_at: i64,
    /// Bound or released.
    pub state: LeaseState,
}

/// One change in a batch. Apply a batch in order, in one transaction:
/// a batch may delete a MAC's row and then give its IP to another MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum LeaseChange {
    /// Insert or replace the row for `lease.mac`.
    Upsert(Lease),
    /// Delete the row for this MAC.
    Delete {
        /// The MAC whose row goes.
        mac: MacAddr,
    },
}

/// Error from a lease store.
#[derive(Debug, thiserror::Error)]
pub enum LeaseStoreError {
    /// I/O failure.
    #[error("lease store I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Anything else (database error text).
    #[error("lease store: {0}")]
    Other(String),
}

/// Durable lease storage. `load` runs once at start; `commit` gets batches of changes
/// (group commit) and must return only once they are durable: ACKs wait for it.
pub trait LeaseStore: Send + Sync + 'static {
    /// All leases (any state).
    fn load(&self) -> BoxFuture<'_, Result<Vec<Lease>, LeaseStoreError>>;
    /// Applies `changes` in order, atomically and durably.
    fn commit(&self, changes: Vec<LeaseChange>) -> BoxFuture<'_, Result<(), LeaseStoreError>>;
}

/// Append-only JSON-lines lease file, fsync'd once per batch; compacted on load and whenever
/// the log holds more than four times as many lines as live leases (and over 10,000).
#[derive(Debug, Clone)]
pub struct FileLeaseStore {
    path: PathBuf,
    state: Arc<Mutex<FileState>>,
}

#[derive(Debug, Default)]
struct FileState {
    file: Option<File>,
    live: HashMap<MacAddr, Lease>,
    lines: usize,
}

const COMPACT_MIN_LINES: usize = 10_000;

impl FileLeaseStore {
    /// Uses (and creates if needed) the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileLeaseStore {
            path: path.into(),
            state: Arc::new(Mutex::new(FileState::default())),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `leases` to a temporary file and renames it over the log; returns the reopened log.
    fn rewrite(&self, leases: &[&Lease]) -> Result<File, LeaseStoreError> {
        let tmp = self.path.with_extension("compact.tmp");
        {
            let mut f = File::create(&tmp)?;
            let mut buf = Vec::new();
            for l in leases {
                serde_json::to_writer(&mut buf, &LeaseChange::Upsert((*l).clone()))
                    .map_err(|e| LeaseStoreError::Other(e.to_string()))?;
                buf.push(b'\n');
            }
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(OpenOptions::new().append(true).open(&self.path)?)
    }

    fn load_blocking(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        let mut map: HashMap<MacAddr, Lease> = HashMap::new();
        match File::open(&self.path) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    let line = line?;
                    // A torn last line (crash mid-write, never acknowledged) is skipped.
                    match serde_json::from_str::<LeaseChange>(&line) {
                        Ok(LeaseChange::Upsert(l)) => {
                            map.insert(l.mac, l);
                        }
                        Ok(LeaseChange::Delete { mac }) => {
                            map.remove(&mac);
                        }
                        Err(e) => {
                            tracing::warn!(path = %self.path.display(), "skipping bad lease line: {e}")
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let mut leases: Vec<Lease> = map.values().cloned().collect();
        leases.sort_by_key(|l| u32::from(l.ip));
        let file = self.rewrite(&leases.iter().collect::<Vec<_>>())?;
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.file = Some(file);
        st.lines = map.len();
        st.live = map;
        Ok(leases)
    }

    fn commit_blocking(&self, changes: &[LeaseChange]) -> Result<(), LeaseStoreError> {
        let mut buf = Vec::with_capacity(changes.len() * 160);
        for c in changes {
            serde_json::to_writer(&mut buf, c)
                .map_err(|e| LeaseStoreError::Other(e.to_string()))?;
            buf.push(b'\n');
        }
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let st = &mut *guard;
        if st.file.is_none() {
            st.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let f = st
            .file
            .as_mut()
            .ok_or_else(|| LeaseStoreError::Other("lease file not open".into()))?;
        f.write_all(&buf)?;
        f.sync_data()?;
        for c in changes {
            match c {
                LeaseChange::Upsert(l) => {
                    st.live.insert(l.mac, l.clone());
                }
                LeaseChange::Delete { mac } => {
                    st.live.remove(mac);
                }
            }
        }
        st.lines += changes.len();
        if st.lines > COMPACT_MIN_LINES && st.lines > 4 * st.live.len() {
            // Durable already; a failed compaction leaves the (valid) longer log.
            match self.rewrite(&st.live.values().collect::<Vec<_>>()) {
                Ok(file) => {
                    st.file = Some(file);
                    st.lines = st.live.len();
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), "lease log compaction failed: {e}")
                }
            }
        }
        Ok(())
    }
}

impl LeaseStore for FileLeaseStore {
    fn load(&self) -> BoxFuture<'_, Result<Vec<Lease>, LeaseStoreError>> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.load_blocking())
                .await
                .map_err(|e| LeaseStoreError::Other(e.to_string()))?
        })
    }

    fn commit(&self, changes: Vec<LeaseChange>) -> BoxFuture<'_, Result<(), LeaseStoreError>> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.commit_blocking(&changes))
                .await
                .map_err(|e| LeaseStoreError::Other(e.to_string()))?
        })
    }
}

/// A store that keeps nothing (proxy mode, or benchmarks of the non-durable path).
#[derive(Debug, Default, Clone, Copy)]
pub struct NullLeaseStore;

impl LeaseStore for NullLeaseStore {
    fn load(&self) -> BoxFuture<'_, Result<Vec<Lease>, LeaseStoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn commit(&self, _changes: Vec<LeaseChange>) -> BoxFuture<'_, Result<(), LeaseStoreError>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(last: u8, ip: u8) -> Lease {
        Lease {
            mac: MacAddr([2, 0, 0, 0, 0, last]),
            ip: Ipv4Addr::new(10, 0, 0, ip),
            hostname: Some("h".into()),
            client_id: None,
            expires_at: 1_000,
            state: LeaseState::Bound,
        }
    }

    #[tokio::test]
    async fn file_store_round_trip_and_compaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leases.jsonl");
        let store = FileLeaseStore::new(&path);
        assert!(store.load().await.expect("load").is_empty());
        store
            .commit(vec![
                LeaseChange::Upsert(lease(1, 10)),
                LeaseChange::Upsert(lease(2, 11)),
            ])
            .await
            .expect("commit");
        let mut moved = lease(3, 10);
        moved.state = LeaseState::Released;
        store
            .commit(vec![
                LeaseChange::Delete {
                    mac: lease(1, 10).mac,
                },
                LeaseChange::Upsert(moved.clone()),
            ])
            .await
            .expect("commit");
        // Torn line at the end is ignored.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"op\":\"ups"))
            .expect("append");
        let again = FileLeaseStore::new(&path);
        let got = again.load().await.expect("load");
        assert_eq!(got, vec![moved, lease(2, 11)]);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2, "compacted: {text}");
    }

    #[tokio::test]
    async fn file_store_compacts_while_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leases.jsonl");
        let store = FileLeaseStore::new(&path);
        store.load().await.expect("load");
        for round in 0..30 {
            let batch = (0..500)
                .map(|i| {
                    let mut l = lease((i % 5) as u8, (i % 5) as u8);
                    l.expires_at = round * 1000 + i as i64;
                    LeaseChange::Upsert(l)
                })
                .collect();
            store.commit(batch).await.expect("commit");
        }
        let lines = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .count();
        assert!(lines < 10_000, "log never compacted: {lines} lines");
        let got = FileLeaseStore::new(&path).load().await.expect("load");
        assert_eq!(got.len(), 5);
        assert!(got.iter().all(|l| l.expires_at >= 29_000));
    }
}
