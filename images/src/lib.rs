//! The image store: OS images kept once per content (`blobs/sha256/<hex>`), streamed in from
//! any byte stream, hashed while streaming, verified against an expected SHA-256, and renamed
//! into place atomically, so an interrupted upload leaves nothing behind but a temp file that
//! the next start removes. The catalog (names, owners) lives in the inventory; this crate only
//! knows bytes. It knows nothing of HTTP or the database.

pub mod index;
mod partial;

pub use partial::PartialBlob;

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tokio::io::AsyncWriteExt;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes do not hash to what the caller promised.
    #[error("sha256 mismatch: expected {expected}, the upload hashes to {actual}")]
    HashMismatch {
        /// Promised.
        expected: String,
        /// Found.
        actual: String,
    },
    /// The upload is larger than allowed.
    #[error("the image is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The upload is empty.
    #[error("the image is empty")]
    Empty,
    /// A SHA-256 given by the caller is malformed.
    #[error("'{0}' is not a SHA-256 (64 hex characters)")]
    BadDigest(String),
    /// The content is not in the store.
    #[error("no image content with sha256 {0}")]
    Missing(String),
    /// The stream broke off.
    #[error("the upload broke off after {received} bytes: {message}")]
    Interrupted {
        /// Bytes received before the break.
        received: u64,
        /// Why.
        message: String,
    },
    /// The stored bytes are not a readable image of their format.
    #[error("the image content cannot be read: {0}")]
    BadContent(String),
    /// Local file trouble.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How an image's bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageFormat {
    /// A raw disk image, written as is.
    #[serde(rename = "raw")]
    Raw,
    /// QEMU copy-on-write v2/v3, converted while writing.
    #[serde(rename = "qcow2")]
    Qcow2,
    /// A raw image compressed with zstd, decompressed while writing.
    #[serde(rename = "raw.zst")]
    RawZst,
}

impl ImageFormat {
    /// The name used in the API and catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::RawZst => "raw.zst",
        }
    }

    /// The format the first bytes reveal (magic numbers), raw when none matches.
    pub fn sniff(head: &[u8]) -> ImageFormat {
        if qcow2::is_qcow2(head) {
            ImageFormat::Qcow2
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            ImageFormat::RawZst
        } else {
            ImageFormat::Raw
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImageFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(ImageFormat::Raw),
            "qcow2" => Ok(ImageFormat::Qcow2),
            "raw.zst" | "zst" => Ok(ImageFormat::RawZst),
            _ => Err(format!(
                "'{s}' is not an image format (raw, qcow2, raw.zst)"
            )),
        }
    }
}

/// Content now in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredBlob {
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// The format its first bytes reveal.
    pub sniffed: ImageFormat,
    /// Whether the same bytes were already stored (nothing new was kept).
    pub deduplicated: bool,
}

/// Checks and normalises a hex SHA-256.
pub fn parse_digest(s: &str) -> Result<String> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_prefix("sha256:").unwrap_or(&s).to_string();
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s)
    } else {
        Err(Error::BadDigest(s))
    }
}

/// A content-addressed store under one directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub(crate) root: PathBuf,
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

impl ImageStore {
    /// Opens (creating) the store at `root`, removing temp files of interrupted uploads.
    pub async fn open(root: impl Into<PathBuf>) -> Result<ImageStore> {
        let root = root.into();
        let blobs = root.join("blobs/sha256");
        let tmp = root.join("tmp");
        tokio::fs::create_dir_all(&blobs)
            .await
            .map_err(io(&blobs))?;
        tokio::fs::create_dir_all(&tmp).await.map_err(io(&tmp))?;
        let mut entries = tokio::fs::read_dir(&tmp).await.map_err(io(&tmp))?;
        while let Some(e) = entries.next_entry().await.map_err(io(&tmp))? {
            let _ = tokio::fs::remove_file(e.path()).await;
        }
        Ok(ImageStore { root })
    }

    /// The directory blobs are served from (`<root>/blobs/sha256`), for the HTTP boot server.
    pub fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    /// Where the content with this digest lives (it may not exist).
    pub fn path(&self, sha256: &str) -> Result<PathBuf> {
        Ok(self.blob_dir().join(parse_digest(sha256)?))
    }

    /// The content index of a stored blob of `format`: loaded from `<root>/index/<sha256>`,
    /// or built (one read of the blob) and kept there. Blocking work runs off the runtime.
    pub async fn content_index(
        &self,
        sha256: &str,
        format: ImageFormat,
    ) -> Result<index::ContentIndex> {
        let blob = self.path(sha256)?;
        let dir = self.root.join("index");
        let path = dir.join(parse_digest(sha256)?);
        let task = tokio::task::spawn_blocking(move || {
            if let Ok(idx) = index::ContentIndex::load(&path) {
                return Ok(idx);
            }
            if !blob.exists() {
                return Err(Error::Missing(blob.display().to_string()));
            }
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let idx = index::ContentIndex::build(&blob, format)?;
            idx.save(&path)?;
            Ok(idx)
        });
        task.await
            .map_err(|e| Error::BadContent(format!("indexing stopped: {e}")))?
    }

    /// Whether the content is stored.
    pub async fn contains(&self, sha256: &str) -> Result<bool> {
        Ok(tokio::fs::try_exists(self.path(sha256)?)
            .await
            .unwrap_or(false))
    }

    /// Streams bytes in. They are hashed as they arrive, checked against `expected` (if
    /// given) and `limit`, synced to disk, then renamed into place. On any failure the temp
    /// file is removed and the store is unchanged.
    pub async fn ingest<S, B, E>(
        &self,
        mut body: S,
        expected: Option<&str>,
        limit: u64,
    ) -> Result<StoredBlob>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: fmt::Display,
    {
        let expected = expected.map(parse_digest).transpose()?;
        let mut suffix = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut suffix);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("upload-{}", hex::encode(suffix)));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
            let mut hasher = Sha256::new();
            let mut size: u64 = 0;
            let mut head: Vec<u8> = Vec::with_capacity(8);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| Error::Interrupted {
                    received: size,
                    message: e.to_string(),
                })?;
                let bytes = chunk.as_ref();
                size += bytes.len() as u64;
                if size > limit {
                    return Err(Error::TooLarge { limit });
                }
                if head.len() < 8 {
                    head.extend(bytes.iter().take(8 - head.len()));
                }
                hasher.update(bytes);
                file.write_all(bytes).await.map_err(io(&tmp))?;
            }
            if size == 0 {
                return Err(Error::Empty);
            }
            file.sync_all().await.map_err(io(&tmp))?;
            let sha256 = hex::encode(hasher.finalize());
            if let Some(want) = &expected {
                if *want != sha256 {
                    return Err(Error::HashMismatch {
                        expected: want.clone(),
                        actual: sha256,
                    });
                }
            }
            Ok((sha256, size, ImageFormat::sniff(&head)))
        }
        .await;
        let (sha256, size, sniffed) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let dest = self.blob_dir().join(&sha256);
        let deduplicated = tokio::fs::try_exists(&dest).await.unwrap_or(false);
        if deduplicated {
            let _ = tokio::fs::remove_file(&tmp).await;
        } else {
            tokio::fs::rename(&tmp, &dest).await.map_err(io(&dest))?;
            // The rename is durable only once the directory entry is.
            if let Ok(dir) = tokio::fs::File::open(self.blob_dir()).await {
                let _ = dir.sync_all().await;
            }
        }
        Ok(StoredBlob {
            sha256,
            size,
            sniffed,
            deduplicated,
        })
    }

    /// Removes content (when no catalog entry refers to it any more).
    pub async fn remove(&self, sha256: &str) -> Result<()> {
        let p = self.path(sha256)?;
        match tokio::fs::remove_file(&p).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::Missing(sha256.into()))
            }
            Err(e) => Err(io(&p)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(
        chunks: Vec<&'static [u8]>,
    ) -> impl Stream<Item = Result<&'static [u8], String>> + Unpin {
        futures::stream::iter(chunks.into_iter().map(Ok))
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[tokio::test]
    async fn ingest_hashes_verifies_and_deduplicates() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = ImageStore::open(dir.path()).await.expect("open");
        let b = store
            .ingest(
                stream(vec![b"hello ", b"world"]),
                Some(&sha(b"hello world")),
                1 << 20,
            )
            .await
            .expect("ingest");
        assert_eq!(b.size, 11);
        assert_eq!(b.sha256, sha(b"hello world"));
        assert!(!b.deduplicated);
        assert_eq!(
            std::fs::read(store.path(&b.sha256).expect("p")).expect("read"),
            b"hello world"
        );
        let again = store
            .ingest(stream(vec![b"hello world"]), None, 1 << 20)
            .await
            .expect("again");
        assert!(again.deduplicated);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp"))
                .expect("tmp")
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn failures_leave_nothing_behind() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = ImageStore::open(dir.path()).await.expect("open");
        let wrong = sha(b"something else");
        assert!(matches!(
            store
                .ingest(stream(vec![b"abc"]), Some(&wrong), 1 << 20)
                .await,
            Err(Error::HashMismatch { .. })
        ));
        assert!(matches!(
            store.ingest(stream(vec![b"abcdef"]), None, 3).await,
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            store.ingest(stream(vec![]), None, 3).await,
            Err(Error::Empty)
        ));
        let broken =
            futures::stream::iter(vec![Ok(&b"abc"[..]), Err("connection reset".to_string())]);
        assert!(matches!(
            store.ingest(broken, None, 1 << 20).await,
            Err(Error::Interrupted { received: 3, .. })
        ));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp"))
                .expect("tmp")
                .count(),
            0
        );
        assert_eq!(
            std::fs::read_dir(store.blob_dir()).expect("blobs").count(),
            0
        );
        assert!(matches!(
            store.ingest(stream(vec![b"x"]), Some("nothex"), 10).await,
            Err(Error::BadDigest(_))
        ));
    }

    #[tokio::test]
    async fn open_clears_interrupted_uploads() {
        let dir = tempfile::tempdir().expect("tmp");
        ImageStore::open(dir.path()).await.expect("open");
        std::fs::write(dir.path().join("tmp/upload-dead"), b"half").expect("write");
        ImageStore::open(dir.path()).await.expect("reopen");
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp"))
                .expect("tmp")
                .count(),
            0
        );
    }

    #[test]
    fn formats_are_sniffed() {
        assert_eq!(ImageFormat::sniff(b"QFI\xfb\0\0\0\x03"), ImageFormat::Qcow2);
        assert_eq!(
            ImageFormat::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            ImageFormat::RawZst
        );
        assert_eq!(ImageFormat::sniff(b"\xeb\x63\x90"), ImageFormat::Raw);
        assert_eq!(
            "raw.zst".parse::<ImageFormat>().ok(),
            Some(ImageFormat::RawZst)
        );
        assert!(parse_digest(
            "sha256:ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
        )
        .is_ok());
    }
}
