//! Images over thin links (decision 52): every instance serves images from its own store,
//! and a blob it lacks but the catalog has is fetched **once** from a live instance that holds
//! it (the database's `image_copies`), resumably (a partial file kept across a dropped
//! connection and a restart, continued with HTTP Range), verified by SHA-256 before it enters
//! the store, and single-flight: however many agents ask at once, one transfer runs and the
//! others wait on it. Requests between instances are signed with a key every instance shares
//! ([`signing`]); the peer side is `routes::peer`.

pub mod signing;

use crate::ApiError;
use futures::StreamExt;
use images::ImageStore;
use inventory::{CopyState, CopyUpdate, Image, Inventory};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

/// How an instance fetches blobs from others.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    /// Transfers from other instances at once (`--image-peer-transfers`).
    pub max_transfers: usize,
    /// Bytes per second a transfer may take, 0: no cap (`--image-peer-rate`), so a reimage
    /// wave's prefetch can leave room on a thin uplink.
    pub max_bytes_per_sec: u64,
    /// How long a request for a blob waits for its transfer before it is answered 503 with the
    /// progress (the agent retries; its reads time out at 60 s).
    pub wait: Duration,
    /// A transfer that receives nothing this long is cut off (and resumed from another holder
    /// or at the next request).
    pub stall: Duration,
}

impl Default for PeerPolicy {
    fn default() -> Self {
        PeerPolicy {
            max_transfers: 2,
            max_bytes_per_sec: 0,
            wait: Duration::from_secs(40),
            stall: Duration::from_secs(30),
        }
    }
}

/// Where one blob's transfer stands (what waiting requests watch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchState {
    /// Waiting for a transfer slot.
    Queued,
    /// Bytes so far of the total, from an instance.
    Running {
        /// The instance the bytes come from.
        from: String,
        /// Bytes in the partial file.
        bytes: u64,
        /// The blob's size.
        total: u64,
    },
    /// The blob is in the store.
    Done,
    /// The transfer failed; why, for a person.
    Failed(String),
}

impl FetchState {
    /// The progress in words ("fetching image from instance X, 43 %").
    pub fn describe(&self) -> String {
        match self {
            FetchState::Queued => "waiting for a free transfer slot to fetch the image".into(),
            FetchState::Running { from, bytes, total } => format!(
                "fetching image from instance {from}, {} %",
                bytes.saturating_mul(100) / (*total).max(1)
            ),
            FetchState::Done => "the image is here".into(),
            FetchState::Failed(why) => why.clone(),
        }
    }
}

/// Counters of transfers between instances (`/metrics`).
#[derive(Debug, Default)]
pub struct PeerMetrics {
    /// Blob requests this instance answered for others.
    pub served: AtomicU64,
    /// Bytes of those answers.
    pub served_bytes: AtomicU64,
    /// Peer requests refused (unsigned, forged, expired).
    pub refused: AtomicU64,
    /// Blobs fetched and verified.
    pub fetched: AtomicU64,
    /// Bytes received from other instances.
    pub fetched_bytes: AtomicU64,
    /// Transfers that continued a partial file (HTTP Range).
    pub resumed: AtomicU64,
    /// Transfers whose bytes did not hash to the blob's SHA-256 (discarded).
    pub corrupt: AtomicU64,
    /// Transfers that failed otherwise (no holder, no room, network).
    pub failed: AtomicU64,
}

impl PeerMetrics {
    /// Appends the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        for (name, help, v) in [
            (
                "served_total",
                "Blob requests answered for other instances.",
                &self.served,
            ),
            (
                "served_bytes_total",
                "Bytes sent to other instances.",
                &self.served_bytes,
            ),
            (
                "refused_total",
                "Peer requests refused (unsigned, forged, expired).",
                &self.refused,
            ),
            (
                "fetched_total",
                "Blobs fetched from other instances and verified.",
                &self.fetched,
            ),
            (
                "fetched_bytes_total",
                "Bytes received from other instances.",
                &self.fetched_bytes,
            ),
            (
                "resumed_total",
                "Transfers that resumed a partial file with Range.",
                &self.resumed,
            ),
            (
                "corrupt_total",
                "Transfers discarded for a wrong SHA-256 or size.",
                &self.corrupt,
            ),
            (
                "failed_total",
                "Transfers that failed otherwise.",
                &self.failed,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP rackshare_image_peer_{name} {help}\n# TYPE rackshare_image_peer_{name} counter\nrackshare_image_peer_{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

/// This instance's side of blob transfers between instances.
pub struct ImagePeers {
    /// This instance's id.
    pub instance: String,
    inv: Inventory,
    store: ImageStore,
    http: reqwest::Client,
    slots: Arc<Semaphore>,
    policy: PeerPolicy,
    inflight: Mutex<HashMap<String, watch::Receiver<FetchState>>>,
    /// The counters.
    pub metrics: PeerMetrics,
}

impl std::fmt::Debug for ImagePeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImagePeers")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// How a transfer from one holder ended badly.
enum TransferError {
    /// The bytes are wrong: discarded, counted; trying another holder would fetch them again.
    Corrupt(String),
    /// The holder or the network failed; the partial file stays for the next holder.
    Failed(String),
}

impl ImagePeers {
    /// The peer side of instance `instance`. `pin` is the SHA-256 of the certificate every
    /// instance's member listener presents (the shared identity), when it speaks HTTPS.
    pub fn new(
        instance: String,
        inv: Inventory,
        store: ImageStore,
        policy: PeerPolicy,
        pin: Option<[u8; 32]>,
    ) -> Result<Arc<ImagePeers>, String> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(sha256) = pin {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(pin::PinnedVerifier::new(
                    sha256, provider,
                )))
                .with_no_client_auth();
            builder = builder.use_preconfigured_tls(config);
        }
        let http = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Arc::new(ImagePeers {
            instance,
            inv,
            store,
            http,
            slots: Arc::new(Semaphore::new(policy.max_transfers.max(1))),
            policy,
            inflight: Mutex::new(HashMap::new()),
            metrics: PeerMetrics::default(),
        }))
    }

    /// The policy in force.
    pub fn policy(&self) -> &PeerPolicy {
        &self.policy
    }

    /// Records that this instance's store holds blob `sha256` (after an upload or import).
    pub async fn record_held(&self, sha256: &str, size: i64) {
        if let Err(e) = self
            .inv
            .set_image_copy(sha256, &self.instance, &CopyUpdate::held(size))
            .await
        {
            tracing::warn!(sha256, error = %e, "could not record the image copy");
        }
    }

    /// Forgets every copy of a blob the catalog no longer names (after a delete).
    pub async fn forget_unused(&self, sha256: &str) {
        if let Err(e) = self.inv.forget_unused_image_copies(sha256).await {
            tracing::warn!(sha256, error = %e, "could not forget the image's copies");
        }
    }

    /// At start-up: records the catalog's blobs this store holds (an instance upgraded from
    /// before copies were recorded, or whose rows were lost, is found as a holder again).
    pub async fn reconcile(&self) {
        let images = match self.inv.images(None).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "could not list images to record this store's copies");
                return;
            }
        };
        let mut seen = std::collections::HashSet::new();
        for img in images {
            if seen.insert(img.sha256.clone())
                && self.store.contains(&img.sha256).await.unwrap_or(false)
            {
                self.record_held(&img.sha256, img.size_bytes).await;
            }
        }
    }

    /// The transfer of blob `sha256` of `size` bytes: the one running, or a new one. It runs
    /// on its own task, so a request that stops waiting does not stop it.
    pub fn fetch(self: &Arc<Self>, sha256: &str, size: u64) -> watch::Receiver<FetchState> {
        let mut inflight = match self.inflight.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(rx) = inflight.get(sha256) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(FetchState::Queued);
        inflight.insert(sha256.to_string(), rx.clone());
        drop(inflight);
        let me = self.clone();
        let sha = sha256.to_string();
        tokio::spawn(async move {
            let end = match me.run(&sha, size, &tx).await {
                Ok(()) => FetchState::Done,
                Err(why) => FetchState::Failed(why),
            };
            if let Ok(mut g) = me.inflight.lock() {
                g.remove(&sha);
            }
            let _ = tx.send(end);
        });
        rx
    }

    async fn record(&self, sha256: &str, update: CopyUpdate) {
        if let Err(e) = self
            .inv
            .set_image_copy(sha256, &self.instance, &update)
            .await
        {
            tracing::warn!(sha256, error = %e, "could not record the image copy's progress");
        }
    }

    async fn run(
        &self,
        sha256: &str,
        size: u64,
        tx: &watch::Sender<FetchState>,
    ) -> Result<(), String> {
        let _slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "the transfer slots are closed (shutting down)".to_string())?;
        let size_i = i64::try_from(size).unwrap_or(i64::MAX);
        if self.store.contains(sha256).await.unwrap_or(false) {
            self.record_held(sha256, size_i).await;
            return Ok(());
        }
        let result = self.transfer(sha256, size, tx).await;
        match &result {
            Ok(from) => {
                self.metrics.fetched.fetch_add(1, Ordering::Relaxed);
                tracing::info!(sha256, from = %from, size, "fetched an image blob from another instance");
                self.record(
                    sha256,
                    CopyUpdate {
                        source: Some(from.clone()),
                        ..CopyUpdate::held(size_i)
                    },
                )
                .await;
            }
            Err(why) => {
                tracing::warn!(sha256, error = %why, "could not fetch an image blob from another instance");
                self.record(
                    sha256,
                    CopyUpdate {
                        state: CopyState::Failed,
                        bytes: 0,
                        size_bytes: size_i,
                        source: None,
                        error: Some(why.clone()),
                    },
                )
                .await;
            }
        }
        result.map(|_| ())
    }

    /// Fetches the blob from the first holder that delivers it; returns that holder.
    async fn transfer(
        &self,
        sha256: &str,
        size: u64,
        tx: &watch::Sender<FetchState>,
    ) -> Result<String, String> {
        let holders = self
            .inv
            .image_blob_holders(sha256, &self.instance)
            .await
            .map_err(|e| format!("cannot look up which instance holds the image: {e}"))?;
        if holders.is_empty() {
            self.metrics.failed.fetch_add(1, Ordering::Relaxed);
            return Err("no live instance holds the image's bytes: start one that does (see `rackshare image show`)".into());
        }
        let mut partial = self
            .store
            .partial(sha256, size)
            .await
            .map_err(|e| format!("cannot keep the transfer: {e}"))?;
        let need = size - partial.len();
        let free = self.store.free_bytes().map_err(|e| e.to_string())?;
        if free < need {
            self.metrics.failed.fetch_add(1, Ordering::Relaxed);
            return Err(format!(
                "the image store's disk has {free} bytes free and the image needs {need} more: free space on this instance first"
            ));
        }
        let mut last = String::new();
        for holder in &holders {
            match self.transfer_from(holder, &mut partial, tx).await {
                Ok(()) => {
                    return match partial.finish(&self.store).await {
                        Ok(_) => Ok(holder.instance.clone()),
                        Err(e) => {
                            self.metrics.corrupt.fetch_add(1, Ordering::Relaxed);
                            Err(format!(
                                "the bytes from instance {} are not the image ({e}); they were discarded",
                                holder.instance
                            ))
                        }
                    };
                }
                Err(TransferError::Corrupt(why)) => {
                    self.metrics.corrupt.fetch_add(1, Ordering::Relaxed);
                    partial.discard().await;
                    return Err(why);
                }
                Err(TransferError::Failed(why)) => {
                    tracing::info!(from = %holder.instance, error = %why, "a transfer broke off; trying the next holder");
                    last = why;
                }
            }
        }
        let _ = partial.sync().await;
        self.metrics.failed.fetch_add(1, Ordering::Relaxed);
        Err(format!(
            "no instance holding the image delivered it ({last}); the {} bytes received are kept and the next request resumes",
            partial.len()
        ))
    }

    /// One ranged GET of the rest of the blob from `holder` into `partial`.
    async fn transfer_from(
        &self,
        holder: &inventory::BlobHolder,
        partial: &mut images::PartialBlob,
        tx: &watch::Sender<FetchState>,
    ) -> Result<(), TransferError> {
        let size = partial.size();
        let sha256 = partial.sha256().to_string();
        let path = format!("/api/v1/peer/blobs/{sha256}");
        let url = format!("{}{path}", holder.api_url.trim_end_matches('/'));
        let start = partial.len();
        let mut req = self.http.get(&url);
        for (name, value) in signing::sign(
            self.inv.secrets(),
            "GET",
            &path,
            &self.instance,
            inventory::now_ms(),
        ) {
            req = req.header(name, value);
        }
        if start > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={start}-"));
        }
        let resp = tokio::time::timeout(self.policy.stall, req.send())
            .await
            .map_err(|_| {
                TransferError::Failed(format!("{url}: no answer in {:?}", self.policy.stall))
            })?
            .map_err(|e| TransferError::Failed(format!("{url}: {e}")))?;
        match (resp.status().as_u16(), start) {
            (206, s) if s > 0 => {
                self.metrics.resumed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(from = %holder.instance, offset = s, "resuming an image transfer with Range");
            }
            (200, 0) => {}
            (200, _) => partial
                .restart()
                .await
                .map_err(|e| TransferError::Failed(e.to_string()))?,
            (code, _) => {
                let text = resp.text().await.unwrap_or_default();
                return Err(TransferError::Failed(format!(
                    "{url} answered {code}: {}",
                    text.chars().take(300).collect::<String>()
                )));
            }
        }
        let began = Instant::now();
        let received_at_start = partial.len();
        let mut last_report = Instant::now() - Duration::from_secs(10);
        let mut last_sync = partial.len();
        let mut body = resp.bytes_stream();
        loop {
            let next = tokio::time::timeout(self.policy.stall, body.next())
                .await
                .map_err(|_| {
                    TransferError::Failed(format!(
                        "{url}: nothing received for {:?}",
                        self.policy.stall
                    ))
                })?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| TransferError::Failed(format!("{url}: {e}")))?;
            partial.append(&chunk).await.map_err(|e| match e {
                images::Error::TooLarge { .. } => TransferError::Corrupt(format!(
                    "instance {} sent more than the image's {size} bytes; they were discarded",
                    holder.instance
                )),
                other => TransferError::Failed(other.to_string()),
            })?;
            self.metrics
                .fetched_bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            let bytes = partial.len();
            if bytes - last_sync >= 8 << 20 {
                partial
                    .sync()
                    .await
                    .map_err(|e| TransferError::Failed(e.to_string()))?;
                last_sync = bytes;
            }
            if last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                let _ = tx.send(FetchState::Running {
                    from: holder.instance.clone(),
                    bytes,
                    total: size,
                });
                self.record(
                    &sha256,
                    CopyUpdate {
                        state: CopyState::Fetching,
                        bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
                        size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
                        source: Some(holder.instance.clone()),
                        error: None,
                    },
                )
                .await;
            }
            if self.policy.max_bytes_per_sec > 0 {
                // Paced: this transfer's bytes over time stay under the cap.
                let sent = (bytes - received_at_start) as f64;
                let due = Duration::from_secs_f64(sent / self.policy.max_bytes_per_sec as f64);
                if let Some(ahead) = due.checked_sub(began.elapsed()) {
                    tokio::time::sleep(ahead).await;
                }
            }
        }
        if partial.len() < size {
            return Err(TransferError::Failed(format!(
                "{url}: the answer ended at byte {} of {size}",
                partial.len()
            )));
        }
        Ok(())
    }

    /// Every 2 s: fetches the blobs a prefetch asked this instance for (`image_copies` rows
    /// `wanted`), until `shutdown`.
    pub fn spawn_prefetcher(
        self: &Arc<Self>,
        shutdown: pxe::Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                match me.inv.wanted_image_copies(&me.instance).await {
                    Ok(wanted) => {
                        for (sha, size) in wanted {
                            let size = u64::try_from(size).unwrap_or(0);
                            me.record(
                                &sha,
                                CopyUpdate {
                                    state: CopyState::Fetching,
                                    bytes: 0,
                                    size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
                                    source: None,
                                    error: None,
                                },
                            )
                            .await;
                            drop(me.fetch(&sha, size));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read the prefetches asked of this instance")
                    }
                }
            }
        })
    }
}

/// The path of image `img`'s blob in this instance's store, fetching it from another instance
/// first when the store lacks it. A request waits up to the policy's `wait` (the job's
/// progress says how far the transfer is when `job` is given); then it is answered 503 with the
/// progress, and the transfer goes on for the next request.
pub(crate) async fn local_blob(
    st: &crate::state::AppState,
    img: &Image,
    job: Option<i64>,
) -> Result<PathBuf, ApiError> {
    let path = st.images.path(&img.sha256).map_err(ApiError::internal)?;
    if tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Ok(path);
    }
    let size = u64::try_from(img.size_bytes).unwrap_or(0);
    let mut rx = st.peers.fetch(&img.sha256, size);
    let deadline = tokio::time::Instant::now() + st.peers.policy().wait;
    let mut reported = Instant::now() - Duration::from_secs(10);
    loop {
        let state = rx.borrow_and_update().clone();
        match &state {
            FetchState::Done => return Ok(path),
            FetchState::Failed(why) => return Err(unavailable(why.clone())),
            FetchState::Queued | FetchState::Running { .. } => {}
        }
        if let (Some(job), FetchState::Running { bytes, total, .. }) = (job, &state) {
            if reported.elapsed() >= Duration::from_secs(1) {
                reported = Instant::now();
                let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                let _ = st
                    .inv
                    .agent_progress(
                        job,
                        "fetching",
                        clamp(*bytes),
                        clamp(*total),
                        Some(&state.describe()),
                    )
                    .await;
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            // The transfer's task ended (its last state was read above or is read now).
            Ok(Err(_)) => {
                return match &*rx.borrow() {
                    FetchState::Done => Ok(path),
                    other => Err(unavailable(other.describe())),
                }
            }
            Err(_) => {
                let now = rx.borrow().describe();
                return Err(ApiError {
                    status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    code: "image_fetching",
                    message: format!("{now}; ask again in a few seconds"),
                    field: None,
                });
            }
        }
    }
}

fn unavailable(why: String) -> ApiError {
    ApiError {
        status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
        code: "image_unavailable",
        message: format!(
            "this instance does not have the image's bytes and could not fetch them: {why}"
        ),
        field: None,
    }
}
