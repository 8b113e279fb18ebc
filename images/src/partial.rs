//! A blob on its way from another instance: `<root>/partial/<sha256>`, kept across a dropped
//! connection and a restart, so a transfer resumes (HTTP Range) where it stopped. It enters
//! the store only whole and hashing to its SHA-256; anything else is discarded.

use crate::{io, parse_digest, Error, ImageFormat, ImageStore, Result, StoredBlob};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The partial file of one blob being fetched.
#[derive(Debug)]
pub struct PartialBlob {
    path: PathBuf,
    sha256: String,
    size: u64,
    /// Bytes kept (tracked here: tokio's file may still be writing the last chunk).
    len: u64,
    file: Option<tokio::fs::File>,
}

impl ImageStore {
    /// The partial file of blob `sha256` of `size` bytes (created empty when there is none).
    /// A partial file longer than the blob is not a prefix of it: it is emptied.
    pub async fn partial(&self, sha256: &str, size: u64) -> Result<PartialBlob> {
        let sha256 = parse_digest(sha256)?;
        let dir = self.root.join("partial");
        tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
        let path = dir.join(&sha256);
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(io(&path))?;
        let mut len = file.metadata().await.map_err(io(&path))?.len();
        if len > size {
            file.set_len(0).await.map_err(io(&path))?;
            len = 0;
        }
        Ok(PartialBlob {
            path,
            sha256,
            size,
            len,
            file: Some(file),
        })
    }

    /// Bytes free for the store on its file system (what an unprivileged writer may use).
    pub fn free_bytes(&self) -> Result<u64> {
        let st = nix::sys::statvfs::statvfs(&self.root).map_err(|e| Error::Io {
            path: self.root.display().to_string(),
            source: std::io::Error::from(e),
        })?;
        #[allow(clippy::useless_conversion)] // the field types differ between libcs
        let free = u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
        Ok(free)
    }
}

impl PartialBlob {
    /// How many bytes are kept so far (where a resumed transfer starts).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is kept yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The blob's SHA-256 (hex).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The blob's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends bytes that follow what is kept. More than the blob's size is refused.
    pub async fn append(&mut self, bytes: &[u8]) -> Result<()> {
        if self.len + bytes.len() as u64 > self.size {
            return Err(Error::TooLarge { limit: self.size });
        }
        let file = self.file.as_mut().ok_or_else(|| Error::Io {
            path: self.path.display().to_string(),
            source: std::io::Error::other("the partial file is closed"),
        })?;
        file.write_all(bytes).await.map_err(io(&self.path))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Forgets what is kept (the source sent a whole body instead of the range asked for).
    pub async fn restart(&mut self) -> Result<()> {
        if let Some(f) = self.file.as_mut() {
            f.flush().await.map_err(io(&self.path))?;
            f.set_len(0).await.map_err(io(&self.path))?;
        }
        self.len = 0;
        Ok(())
    }

    /// Syncs what is kept to disk (so a restart resumes from it).
    pub async fn sync(&mut self) -> Result<()> {
        if let Some(f) = self.file.as_mut() {
            f.flush().await.map_err(io(&self.path))?;
            f.sync_data().await.map_err(io(&self.path))?;
        }
        Ok(())
    }

    /// Removes the partial file.
    pub async fn discard(mut self) {
        self.file = None;
        let _ = tokio::fs::remove_file(&self.path).await;
    }

    /// Moves the whole blob into the store once it has all its bytes and hashes to its
    /// SHA-256. A wrong size or hash discards the partial file (nothing is stored, nothing
    /// served) and says what was found.
    pub async fn finish(mut self, store: &ImageStore) -> Result<StoredBlob> {
        self.sync().await?;
        self.file = None;
        let (size, actual, head) = match hash_file(&self.path).await {
            Ok(v) => v,
            Err(e) => {
                self.discard().await;
                return Err(e);
            }
        };
        if size != self.size || actual != self.sha256 {
            let expected = self.sha256.clone();
            self.discard().await;
            return Err(Error::HashMismatch {
                expected,
                actual: format!("{actual} ({size} bytes)"),
            });
        }
        let dest = store.blob_dir().join(&self.sha256);
        tokio::fs::rename(&self.path, &dest)
            .await
            .map_err(io(&dest))?;
        if let Ok(dir) = tokio::fs::File::open(store.blob_dir()).await {
            let _ = dir.sync_all().await;
        }
        Ok(StoredBlob {
            sha256: self.sha256,
            size,
            sniffed: ImageFormat::sniff(&head),
            deduplicated: false,
        })
    }
}

/// Size, hex SHA-256 and first bytes of a file.
async fn hash_file(path: &std::path::Path) -> Result<(u64, String, Vec<u8>)> {
    let mut f = tokio::fs::File::open(path).await.map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    let mut head = Vec::with_capacity(8);
    loop {
        let n = f.read(&mut buf).await.map_err(io(path))?;
        if n == 0 {
            break;
        }
        if head.len() < 8 {
            head.extend(buf[..n].iter().take(8 - head.len()));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize()), head))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[tokio::test]
    async fn a_partial_blob_resumes_and_enters_the_store_whole() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = ImageStore::open(dir.path()).await.expect("open");
        let data = b"0123456789abcdef";
        let mut p = store.partial(&sha(data), 16).await.expect("partial");
        p.append(&data[..6]).await.expect("append");
        p.sync().await.expect("sync");
        drop(p);
        // A restart: the store reopens, the partial file stays.
        let store = ImageStore::open(dir.path()).await.expect("reopen");
        let mut p = store.partial(&sha(data), 16).await.expect("partial");
        assert_eq!(p.len(), 6);
        p.append(&data[6..]).await.expect("append");
        assert!(p.append(b"x").await.is_err(), "no byte past the size");
        let blob = p.finish(&store).await.expect("finish");
        assert_eq!(blob.sha256, sha(data));
        assert!(store.contains(&sha(data)).await.expect("contains"));
    }

    #[tokio::test]
    async fn corrupt_or_short_bytes_are_discarded() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = ImageStore::open(dir.path()).await.expect("open");
        let data = b"the real bytes";
        let mut p = store.partial(&sha(data), 14).await.expect("partial");
        p.append(b"the fake bytes").await.expect("append");
        assert!(matches!(
            p.finish(&store).await,
            Err(Error::HashMismatch { .. })
        ));
        let mut p = store.partial(&sha(data), 14).await.expect("partial");
        assert!(p.is_empty(), "the corrupt file is gone");
        p.append(b"the real").await.expect("append");
        assert!(p.finish(&store).await.is_err(), "short is refused");
        assert!(!store.contains(&sha(data)).await.expect("contains"));
        assert!(store.free_bytes().expect("free") > 0);
    }
}
