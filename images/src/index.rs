//! The content index of a stored image: the SHA-256 of every MiB of the disk content it
//! expands to (a raw image's own bytes, a raw.zst's decompressed bytes, a qcow2's virtual
//! disk). The server checks a deploy against it: it names random chunks after the agent has
//! written the disk, and the agent must return their hashes as read back from the disk, which
//! it can only know by having written the image.
//!
//! Built once per blob, when the image is stored (or on first use for older stores), and kept
//! beside the store as `index/<sha256>`: a small text header and 32 bytes per chunk.

use crate::{Error, ImageFormat, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes per chunk of the index.
pub const CHUNK_BYTES: u64 = 1 << 20;
const MAGIC: &[u8] = b"rackshare-content-index v1\n";

/// Per-MiB hashes of an image's expanded content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentIndex {
    /// Length of the expanded content (the last chunk may be shorter than a MiB).
    pub content_len: u64,
    /// SHA-256 of each chunk, in order.
    pub chunks: Vec<[u8; 32]>,
}

impl ContentIndex {
    /// The byte range of chunk `i` in the expanded content, if there is such a chunk.
    pub fn range(&self, i: u64) -> Option<(u64, u64)> {
        let start = i.checked_mul(CHUNK_BYTES)?;
        (start < self.content_len).then(|| (start, CHUNK_BYTES.min(self.content_len - start)))
    }

    /// The hash of chunk `i`, lowercase hex.
    pub fn chunk_hex(&self, i: u64) -> Option<String> {
        self.chunks.get(usize::try_from(i).ok()?).map(hex::encode)
    }

    /// The index of `blob` (a stored file of `format`), read through once.
    pub fn build(blob: &Path, format: ImageFormat) -> Result<ContentIndex> {
        let io = |source| Error::Io {
            path: blob.display().to_string(),
            source,
        };
        let file = File::open(blob).map_err(io)?;
        match format {
            ImageFormat::Qcow2 => qcow2_index(&file, blob),
            ImageFormat::RawZst => {
                let mut buffered = BufReader::with_capacity(1 << 20, file);
                let mut frames = ChunkHasher::default();
                // A raw.zst may hold several frames back to back; each decodes in turn.
                loop {
                    if std::io::BufRead::fill_buf(&mut buffered)
                        .map_err(io)?
                        .is_empty()
                    {
                        break;
                    }
                    let mut frame = ruzstd::decoding::StreamingDecoder::new(&mut buffered)
                        .map_err(|e| Error::BadContent(format!("zstd: {e}")))?;
                    frames.feed_reader(&mut frame).map_err(io)?;
                }
                Ok(frames.finish())
            }
            ImageFormat::Raw => {
                let mut h = ChunkHasher::default();
                h.feed_reader(&mut BufReader::with_capacity(1 << 20, file))
                    .map_err(io)?;
                Ok(h.finish())
            }
        }
    }

    /// Writes the index to `path` (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(MAGIC).map_err(io)?;
        f.write_all(format!("{}\n", self.content_len).as_bytes())
            .map_err(io)?;
        for c in &self.chunks {
            f.write_all(c).map_err(io)?;
        }
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads an index `save` wrote; a damaged file is an error (rebuild it).
    pub fn load(path: &Path) -> Result<ContentIndex> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let damaged = || Error::BadContent(format!("{} is not a content index", path.display()));
        let rest = bytes.strip_prefix(MAGIC).ok_or_else(damaged)?;
        let nl = rest.iter().position(|b| *b == b'\n').ok_or_else(damaged)?;
        let content_len: u64 = std::str::from_utf8(&rest[..nl])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(damaged)?;
        let body = &rest[nl + 1..];
        let expected = content_len.div_ceil(CHUNK_BYTES);
        if body.len() % 32 != 0 || body.len() as u64 / 32 != expected {
            return Err(damaged());
        }
        let chunks = body
            .chunks_exact(32)
            .map(|c| {
                let mut a = [0u8; 32];
                a.copy_from_slice(c);
                a
            })
            .collect();
        Ok(ContentIndex {
            content_len,
            chunks,
        })
    }
}

/// Hashes a byte stream MiB by MiB.
#[derive(Default)]
struct ChunkHasher {
    current: Sha256,
    in_current: u64,
    total: u64,
    chunks: Vec<[u8; 32]>,
}

impl ChunkHasher {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = usize::try_from(CHUNK_BYTES - self.in_current).unwrap_or(usize::MAX);
            let n = room.min(data.len());
            self.current.update(&data[..n]);
            self.in_current += n as u64;
            self.total += n as u64;
            data = &data[n..];
            if self.in_current == CHUNK_BYTES {
                self.chunks
                    .push(std::mem::take(&mut self.current).finalize().into());
                self.in_current = 0;
            }
        }
    }

    fn feed_zeros(&mut self, mut len: u64) {
        let zeros = [0u8; 64 * 1024];
        while len > 0 {
            let n = usize::try_from(len).unwrap_or(zeros.len()).min(zeros.len());
            self.feed(&zeros[..n]);
            len -= n as u64;
        }
    }

    fn feed_reader(&mut self, r: &mut dyn Read) -> std::io::Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.feed(&buf[..n]);
        }
    }

    fn finish(mut self) -> ContentIndex {
        if self.in_current > 0 {
            self.chunks.push(self.current.finalize().into());
        }
        ContentIndex {
            content_len: self.total,
            chunks: self.chunks,
        }
    }
}

fn qcow2_index(file: &File, path: &Path) -> Result<ContentIndex> {
    let shown = path.display().to_string();
    let file_len = file
        .metadata()
        .map_err(|source| Error::Io {
            path: shown.clone(),
            source,
        })?
        .len();
    let read = |off: u64, len: u64| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; usize::try_from(len).map_err(|_| bad("table too large"))?];
        file.read_exact_at(&mut buf, off)
            .map_err(|source| Error::Io {
                path: shown.clone(),
                source,
            })?;
        Ok(buf)
    };
    let head = read(0, qcow2::HEADER_BYTES.min(file_len))?;
    let h = qcow2::parse_header(&head)?;
    let guests: BTreeMap<u64, u64> = qcow2::guest_map(&qcow2::map_clusters(&read, &h, file_len)?);
    let cs = h.cluster_size();
    let mut hasher = ChunkHasher::default();
    let mut guest = 0u64;
    while guest < h.size {
        let len = cs.min(h.size - guest);
        match guests.get(&guest) {
            Some(host) => hasher.feed(&read(*host, len)?),
            None => hasher.feed_zeros(len),
        }
        guest += len;
    }
    Ok(hasher.finish())
}

fn bad(msg: &str) -> Error {
    Error::BadContent(format!("qcow2: {msg}"))
}

impl From<qcow2::LayoutError> for Error {
    fn from(e: qcow2::LayoutError) -> Self {
        Error::BadContent(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    #[test]
    fn a_raw_image_is_hashed_per_mib_with_a_short_tail() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("raw");
        let data: Vec<u8> = (0..(2 * CHUNK_BYTES + 10))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&p, &data).expect("write");
        let idx = ContentIndex::build(&p, ImageFormat::Raw).expect("index");
        assert_eq!(idx.content_len, data.len() as u64);
        assert_eq!(idx.chunks.len(), 3);
        assert_eq!(idx.chunks[1], hash(&data[1 << 20..2 << 20]));
        assert_eq!(idx.chunks[2], hash(&data[2 << 20..]));
        assert_eq!(idx.range(2), Some((2 << 20, 10)));
        assert_eq!(idx.range(3), None);
        let saved = dir.path().join("idx");
        idx.save(&saved).expect("save");
        assert_eq!(ContentIndex::load(&saved).expect("load"), idx);
        std::fs::write(&saved, b"rackshare-content-index v1\n5\n").expect("damage");
        assert!(ContentIndex::load(&saved).is_err());
    }

    #[test]
    fn a_zst_image_is_indexed_by_its_decompressed_bytes() {
        let dir = tempfile::tempdir().expect("tmp");
        let data: Vec<u8> = (0..(CHUNK_BYTES + 77)).map(|i| (i % 13) as u8).collect();
        let mut zst = ruzstd::encoding::compress_to_vec(
            &data[..1000],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        // Two frames back to back, as some tools write them.
        zst.extend(ruzstd::encoding::compress_to_vec(
            &data[1000..],
            ruzstd::encoding::CompressionLevel::Fastest,
        ));
        let p = dir.path().join("img.zst");
        std::fs::write(&p, &zst).expect("write");
        let idx = ContentIndex::build(&p, ImageFormat::RawZst).expect("index");
        let raw = dir.path().join("raw");
        std::fs::write(&raw, &data).expect("write raw");
        assert_eq!(
            idx,
            ContentIndex::build(&raw, ImageFormat::Raw).expect("raw")
        );
    }
}
