//! Lease persistence: the [`AddressLeaseStore`] trait and a file-backed implementation.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;

/// State of a persisted lease (`dhcp_leases.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressLeaseState {
    /// In use until `expires_at`.
    Bound,
    /// Released by the client; the address is kept for it if still free.
    Released,
    /// Declined by a client (address in use on the wire): nobody gets it until `expires_at`.
    Declined,
}

impl AddressLeaseState {
    /// Column value: `bound` or `released`.
    pub fn as_str(&self) -> &'static str {
        match self {
            AddressLeaseState::Bound => "bound",
            AddressLeaseState::Released => "released",
            AddressLeaseState::Declined => "declined",
        }
    }

    /// Parses a column value; anything unknown is `bound` (the safe reading: not handed out).
    pub fn from_column(s: &str) -> Self {
        match s {
            "released" => AddressLeaseState::Released,
            "declined" => AddressLeaseState::Declined,
            _ => AddressLeaseState::Bound,
        }
    }
}

/// Whom a lease belongs to, and the stored row's key (`dhcp_leases.lease_key`).
///
/// RFC 2131 §4.2: a client that sends a client identifier (option 61) is identified by it,
/// not by chaddr. An identifier of hardware type 1 with six bytes names an Ethernet address,
/// so it is the same key as that MAC: PXE firmware (which sends `01:MAC`) and an OS that sends
/// no identifier then share one lease instead of burning two addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressLeaseKey {
    /// Keyed by Ethernet address (no option 61, or option 61 = `01` + MAC). Text: `aa:bb:…`.
    Mac(MacAddr),
    /// Keyed by another client identifier (raw option 61 bytes). Text: `id:` + hex.
    ClientId(Vec<u8>),
    /// A declined address held out of the pool; nobody owns it. Text: `declined:` + address.
    Declined(Ipv4Addr),
}

impl AddressLeaseKey {
    /// The key of a client with hardware address `chaddr` and option 61 `client_id`.
    pub fn for_client(chaddr: MacAddr, client_id: Option<&[u8]>) -> AddressLeaseKey {
        match client_id {
            Some([1, rest @ ..]) if rest.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(rest);
                AddressLeaseKey::Mac(MacAddr(m))
            }
            Some(id) if !id.is_empty() => AddressLeaseKey::ClientId(id.to_vec()),
            _ => AddressLeaseKey::Mac(chaddr),
        }
    }
}

/// Lower-case hex of `bytes` (the `client_id` column's form).
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Bytes of an even-length hex string; `None` if it is not one.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|p| {
            let d = |c: u8| char::from(c).to_digit(16);
            Some((d(p[0])? * 16 + d(p[1])?) as u8)
        })
        .collect()
}

impl fmt::Display for AddressLeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressLeaseKey::Mac(m) => write!(f, "{m}"),
            AddressLeaseKey::ClientId(id) => write!(f, "id:{}", to_hex(id)),
            AddressLeaseKey::Declined(ip) => write!(f, "declined:{ip}"),
        }
    }
}

/// Error for text that is not a lease key.
#[derive(Debug, thiserror::Error)]
#[error("not a lease key: {0:?}")]
pub struct AddressLeaseKeyParseError(pub String);

impl FromStr for AddressLeaseKey {
    type Err = AddressLeaseKeyParseError;
    /// Accepts the [`Display`](fmt::Display) forms.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || AddressLeaseKeyParseError(s.to_string());
        if let Some(hex) = s.strip_prefix("id:") {
            return match from_hex(hex) {
                Some(id) if !id.is_empty() => Ok(AddressLeaseKey::ClientId(id)),
                _ => Err(err()),
            };
        }
        if let Some(ip) = s.strip_prefix("declined:") {
            return ip.parse().map(AddressLeaseKey::Declined).map_err(|_| err());
        }
        s.parse().map(AddressLeaseKey::Mac).map_err(|_| err())
    }
}

impl Serialize for AddressLeaseKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AddressLeaseKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One lease, shaped like a `dhcp_leases` row (whose `lease_key` column holds [`AddressLease::key`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressLease {
    /// The client's hardware address as last seen, whatever the key: a client keyed by its
    /// identifier has one too, and stores keep it. 00:00:00:00:00:00 for a declined hold
    /// loaded back (nobody owns it) or a row stored before stores kept it.
    pub mac: MacAddr,
    /// Leased address (unique).
    pub ip: Ipv4Addr,
    /// Host name (option 12 or the directory's).
    pub hostname: Option<String>,
    /// Client identifier (option 61), hex.
    pub client_id: Option<String>,
    /// Expiry, unix milliseconds.
    pub expires_at: i64,
    /// Bound, released or declined.
    pub state: AddressLeaseState,
}

impl AddressLease {
    /// The lease's key, derived from the state, `client_id` and `mac`.
    pub fn key(&self) -> AddressLeaseKey {
        if self.state == AddressLeaseState::Declined {
            return AddressLeaseKey::Declined(self.ip);
        }
        let id = self.client_id.as_deref().and_then(from_hex);
        AddressLeaseKey::for_client(self.mac, id.as_deref())
    }
}

/// One change in a batch. Apply a batch in order, in one transaction:
/// a batch may delete a key's row and then give its IP to another key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum AddressLeaseChange {
    /// Insert or replace the row for `lease.key()`.
    Upsert(AddressLease),
    /// Delete the row with this key.
    Delete {
        /// The key whose row goes (`mac` in files written before client-id keys).
        #[serde(alias = "mac")]
        key: AddressLeaseKey,
    },
    /// Delete `key`'s row on `ip` if it is still expired or released: the table reclaims the
    /// address, but a store shared with other instances may hold a renewal it has not seen.
    Reclaim {
        /// The key whose stale lease gives way.
        key: AddressLeaseKey,
        /// The address it held.
        ip: Ipv4Addr,
    },
}

/// An upsert the store refused: another client holds the address, live (a store shared by
/// several instances decides; the ACK must become a NAK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostLease {
    /// The client that asked.
    pub key: AddressLeaseKey,
    /// The address it asked for.
    pub ip: Ipv4Addr,
    /// The lease that holds the address.
    pub holder: AddressLease,
}

/// Error from a lease store.
#[derive(Debug, thiserror::Error)]
pub enum AddressLeaseStoreError {
    /// I/O failure.
    #[error("lease store I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Anything else (database error text).
    #[error("lease store: {0}")]
    Other(String),
}

/// Durable lease storage. `load` runs once at start; `commit` gets batches of changes
/// (group commit) and must return only once they are durable: ACKs wait for it.
///
/// A store may be *shared* by several instances serving one segment: it then decides who
/// gets an address (an upsert on an address another key holds live is refused and returned),
/// and [`refresh`](AddressLeaseStore::refresh) tells each instance what the others wrote.
pub trait AddressLeaseStore: Send + Sync + 'static {
    /// All leases (any state).
    fn load(&self) -> BoxFuture<'_, Result<Vec<AddressLease>, AddressLeaseStoreError>>;
    /// Applies `changes` in order, atomically and durably; returns the upserts it refused.
    fn commit(
        &self,
        changes: Vec<AddressLeaseChange>,
    ) -> BoxFuture<'_, Result<Vec<LostLease>, AddressLeaseStoreError>>;
    /// Whether other instances write to this store too.
    fn shared(&self) -> bool {
        false
    }
    /// The leases written (by anyone) since the last call; repeats are harmless.
    fn refresh(&self) -> BoxFuture<'_, Result<Vec<AddressLease>, AddressLeaseStoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Append-only JSON-lines lease file, fsync'd once per batch; compacted on load and whenever
/// the log holds more than four times as many lines as live leases (and over 10,000).
#[derive(Debug, Clone)]
pub struct FileAddressLeaseStore {
    path: PathBuf,
    state: Arc<Mutex<FileState>>,
}

#[derive(Debug, Default)]
struct FileState {
    file: Option<File>,
    live: HashMap<AddressLeaseKey, AddressLease>,
    lines: usize,
}

const COMPACT_MIN_LINES: usize = 10_000;

impl FileAddressLeaseStore {
    /// Uses (and creates if needed) the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileAddressLeaseStore {
            path: path.into(),
            state: Arc::new(Mutex::new(FileState::default())),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `leases` to a temporary file and renames it over the log; returns the reopened log.
    fn rewrite(&self, leases: &[&AddressLease]) -> Result<File, AddressLeaseStoreError> {
        let tmp = self.path.with_extension("compact.tmp");
        {
            let mut f = File::create(&tmp)?;
            let mut buf = Vec::new();
            for l in leases {
                serde_json::to_writer(&mut buf, &AddressLeaseChange::Upsert((*l).clone()))
                    .map_err(|e| AddressLeaseStoreError::Other(e.to_string()))?;
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

    fn load_blocking(&self) -> Result<Vec<AddressLease>, AddressLeaseStoreError> {
        let mut map: HashMap<AddressLeaseKey, AddressLease> = HashMap::new();
        match File::open(&self.path) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    let line = line?;
                    // A torn last line (crash mid-write, never acknowledged) is skipped.
                    match serde_json::from_str::<AddressLeaseChange>(&line) {
                        Ok(AddressLeaseChange::Upsert(l)) => {
                            map.insert(l.key(), l);
                        }
                        Ok(
                            AddressLeaseChange::Delete { key }
                            | AddressLeaseChange::Reclaim { key, .. },
                        ) => {
                            map.remove(&key);
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
        let mut leases: Vec<AddressLease> = map.values().cloned().collect();
        leases.sort_by_key(|l| u32::from(l.ip));
        let file = self.rewrite(&leases.iter().collect::<Vec<_>>())?;
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.file = Some(file);
        st.lines = map.len();
        st.live = map;
        Ok(leases)
    }

    fn commit_blocking(
        &self,
        changes: &[AddressLeaseChange],
    ) -> Result<(), AddressLeaseStoreError> {
        let mut buf = Vec::with_capacity(changes.len() * 160);
        for c in changes {
            serde_json::to_writer(&mut buf, c)
                .map_err(|e| AddressLeaseStoreError::Other(e.to_string()))?;
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
            .ok_or_else(|| AddressLeaseStoreError::Other("lease file not open".into()))?;
        f.write_all(&buf)?;
        f.sync_data()?;
        for c in changes {
            match c {
                AddressLeaseChange::Upsert(l) => {
                    st.live.insert(l.key(), l.clone());
                }
                // One writer: what the table reclaims is reclaimable here too.
                AddressLeaseChange::Delete { key } | AddressLeaseChange::Reclaim { key, .. } => {
                    st.live.remove(key);
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

impl AddressLeaseStore for FileAddressLeaseStore {
    fn load(&self) -> BoxFuture<'_, Result<Vec<AddressLease>, AddressLeaseStoreError>> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.load_blocking())
                .await
                .map_err(|e| AddressLeaseStoreError::Other(e.to_string()))?
        })
    }

    fn commit(
        &self,
        changes: Vec<AddressLeaseChange>,
    ) -> BoxFuture<'_, Result<Vec<LostLease>, AddressLeaseStoreError>> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.commit_blocking(&changes))
                .await
                .map_err(|e| AddressLeaseStoreError::Other(e.to_string()))??;
            // One instance owns the file: the table's decision is the only one.
            Ok(Vec::new())
        })
    }
}

/// A store that keeps nothing (proxy mode, or benchmarks of the non-durable path).
#[derive(Debug, Default, Clone, Copy)]
pub struct NullAddressLeaseStore;

impl AddressLeaseStore for NullAddressLeaseStore {
    fn load(&self) -> BoxFuture<'_, Result<Vec<AddressLease>, AddressLeaseStoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn commit(
        &self,
        _changes: Vec<AddressLeaseChange>,
    ) -> BoxFuture<'_, Result<Vec<LostLease>, AddressLeaseStoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(last: u8, ip: u8) -> AddressLease {
        AddressLease {
            mac: MacAddr([2, 0, 0, 0, 0, last]),
            ip: Ipv4Addr::new(10, 0, 0, ip),
            hostname: Some("h".into()),
            client_id: None,
            expires_at: 1_000,
            state: AddressLeaseState::Bound,
        }
    }

    #[tokio::test]
    async fn file_store_round_trip_and_compaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leases.jsonl");
        let store = FileAddressLeaseStore::new(&path);
        assert!(store.load().await.expect("load").is_empty());
        store
            .commit(vec![
                AddressLeaseChange::Upsert(lease(1, 10)),
                AddressLeaseChange::Upsert(lease(2, 11)),
            ])
            .await
            .expect("commit");
        let mut moved = lease(3, 10);
        moved.state = AddressLeaseState::Released;
        store
            .commit(vec![
                AddressLeaseChange::Delete {
                    key: lease(1, 10).key(),
                },
                AddressLeaseChange::Upsert(moved.clone()),
            ])
            .await
            .expect("commit");
        // Torn line at the end is ignored.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"op\":\"ups"))
            .expect("append");
        let again = FileAddressLeaseStore::new(&path);
        let got = again.load().await.expect("load");
        assert_eq!(got, vec![moved, lease(2, 11)]);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2, "compacted: {text}");
    }

    #[tokio::test]
    async fn file_store_compacts_while_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leases.jsonl");
        let store = FileAddressLeaseStore::new(&path);
        store.load().await.expect("load");
        for round in 0..30 {
            let batch = (0..500)
                .map(|i| {
                    let mut l = lease((i % 5) as u8, (i % 5) as u8);
                    l.expires_at = round * 1000 + i as i64;
                    AddressLeaseChange::Upsert(l)
                })
                .collect();
            store.commit(batch).await.expect("commit");
        }
        let lines = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .count();
        assert!(lines < 10_000, "log never compacted: {lines} lines");
        let got = FileAddressLeaseStore::new(&path)
            .load()
            .await
            .expect("load");
        assert_eq!(got.len(), 5);
        assert!(got.iter().all(|l| l.expires_at >= 29_000));
    }

    #[test]
    fn lease_keys_round_trip_as_text() {
        let mac = MacAddr([2, 0, 0, 0, 0, 7]);
        for k in [
            AddressLeaseKey::Mac(mac),
            AddressLeaseKey::ClientId(vec![0xff, 0, 1, 0xab]),
            AddressLeaseKey::Declined(Ipv4Addr::new(10, 0, 0, 9)),
        ] {
            assert_eq!(k.to_string().parse::<AddressLeaseKey>().expect("parse"), k);
        }
        assert_eq!(
            AddressLeaseKey::ClientId(vec![0xff, 0xab]).to_string(),
            "id:ffab"
        );
        assert!("id:".parse::<AddressLeaseKey>().is_err());
        assert!("id:abc".parse::<AddressLeaseKey>().is_err());
        assert!("declined:x".parse::<AddressLeaseKey>().is_err());
        // Hardware type 1 + six bytes is that MAC's key; anything else is the identifier.
        let hw = [1, 2, 0, 0, 0, 0, 7];
        assert_eq!(
            AddressLeaseKey::for_client(MacAddr([9; 6]), Some(&hw)),
            AddressLeaseKey::Mac(mac)
        );
        assert_eq!(
            AddressLeaseKey::for_client(mac, Some(&[0, 1])),
            AddressLeaseKey::ClientId(vec![0, 1])
        );
        assert_eq!(
            AddressLeaseKey::for_client(mac, None),
            AddressLeaseKey::Mac(mac)
        );
        let mut l = lease(7, 9);
        l.client_id = Some("0001".into());
        assert_eq!(l.key(), AddressLeaseKey::ClientId(vec![0, 1]));
        l.state = AddressLeaseState::Declined;
        assert_eq!(
            l.key(),
            AddressLeaseKey::Declined(Ipv4Addr::new(10, 0, 0, 9))
        );
    }

    #[tokio::test]
    async fn file_store_keeps_client_id_and_declined_leases_and_reads_old_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leases.jsonl");
        // A delete line as written before lease keys existed ("mac").
        let old = lease(1, 10);
        let mut text =
            serde_json::to_string(&AddressLeaseChange::Upsert(old.clone())).expect("json");
        text.push_str("\n{\"op\":\"delete\",\"mac\":\"02:00:00:00:00:01\"}\n");
        std::fs::write(&path, text).expect("write");
        let store = FileAddressLeaseStore::new(&path);
        assert!(store.load().await.expect("load").is_empty());
        // Two clients on one MAC (different identifiers) and a declined address.
        let mut x = lease(2, 11);
        x.client_id = Some("0078".into());
        let mut y = lease(2, 12);
        y.client_id = Some("0079".into());
        let mut d = lease(3, 13);
        d.state = AddressLeaseState::Declined;
        store
            .commit(vec![
                AddressLeaseChange::Upsert(x.clone()),
                AddressLeaseChange::Upsert(y.clone()),
                AddressLeaseChange::Upsert(d.clone()),
            ])
            .await
            .expect("commit");
        let got = FileAddressLeaseStore::new(&path)
            .load()
            .await
            .expect("load");
        assert_eq!(got, vec![x, y, d]);
    }
}
