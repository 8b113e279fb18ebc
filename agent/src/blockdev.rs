//! Disk I/O that deploy (raw, raw.zst, qcow2) and wipe share: opening a disk with its
//! capacity, full reads, dropping the page cache before a read-back, hashing a read-back.

use crate::error::{io, Error};
use crate::Progress;
use proto::{ByteRange, RangeHash};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// Bytes per read and write: large enough for disk throughput, small enough for a 512 MiB VM.
pub const CHUNK: usize = 1 << 20;

/// Opens a disk for writing; its capacity when it is a block device (a regular file, as in
/// tests, just grows).
pub fn open_disk(path: &Path) -> Result<(File, Option<u64>), Error> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(format!("opening {} for writing", path.display())))?;
    let meta = f
        .metadata()
        .map_err(io(format!("reading the metadata of {}", path.display())))?;
    let capacity = if meta.file_type().is_block_device() {
        let end = f
            .seek(SeekFrom::End(0))
            .map_err(io(format!("measuring {}", path.display())))?;
        f.seek(SeekFrom::Start(0))
            .map_err(io(format!("seeking {}", path.display())))?;
        Some(end)
    } else {
        None
    };
    Ok((f, capacity))
}

/// Refuses an image bigger than the disk before a byte is written.
pub fn check_fits(disk: &Path, capacity: Option<u64>, needed: u64) -> Result<(), Error> {
    match capacity {
        Some(available) if available < needed => Err(Error::TooSmall {
            disk: disk.display().to_string(),
            needed,
            available,
        }),
        _ => Ok(()),
    }
}

/// Reads until `buf` is full or the reader ends; the count read.
pub fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Drops the page cache so the read-back of a block device comes from the disk, not from
/// memory. Regular files (tests) are left alone: dropping the host's cache helps nothing.
pub fn drop_caches(disk: &Path) {
    let is_block = std::fs::metadata(disk).is_ok_and(|m| m.file_type().is_block_device());
    if !is_block {
        return;
    }
    let dropped = std::fs::write("/proc/sys/vm/drop_caches", "1");
    if let Err(e) = dropped {
        crate::log!("could not drop the page cache ({e}); the read-back may come from memory");
    }
}

/// The sha256 of each of `ranges` of `disk`, read back (the answer to a challenge). Ranges
/// past the end of the disk are an error: the server chose them inside what was reported.
pub fn hash_ranges(disk: &Path, ranges: &[ByteRange]) -> Result<Vec<RangeHash>, Error> {
    let name = disk.display().to_string();
    let f = File::open(disk).map_err(io(format!("opening {name} to answer the challenge")))?;
    let mut out = Vec::with_capacity(ranges.len());
    let mut buf = Vec::new();
    for r in ranges {
        let len = usize::try_from(r.length)
            .ok()
            .filter(|&l| l <= 16 * CHUNK)
            .ok_or_else(|| {
                Error::Api(format!("the challenge asks for {} bytes at once", r.length))
            })?;
        buf.resize(len, 0);
        f.read_exact_at(&mut buf, r.offset).map_err(io(format!(
            "reading {name} at byte {} for the challenge",
            r.offset
        )))?;
        out.push(RangeHash {
            offset: r.offset,
            length: r.length,
            sha256: hex::encode(Sha256::digest(&buf)),
        });
    }
    Ok(out)
}

/// sha256 of the first `len` bytes of `disk`, read back.
pub fn read_back(disk: &Path, len: u64, progress: &mut dyn Progress) -> Result<String, Error> {
    let name = disk.display().to_string();
    let mut f = File::open(disk).map_err(io(format!("opening {name} to read it back")))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    progress.report("verifying", 0, len)?;
    while done < len {
        let want = usize::try_from(len - done).unwrap_or(CHUNK).min(CHUNK);
        f.read_exact(&mut buf[..want])
            .map_err(io(format!("reading {name} back at byte {done}")))?;
        hasher.update(&buf[..want]);
        done += want as u64;
        progress.report("verifying", done, len)?;
    }
    Ok(hex::encode(hasher.finalize()))
}
