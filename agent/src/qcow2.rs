//! qcow2 without a staging copy: the header, L1 and L2 tables come by ranged reads; then the
//! file streams once, front to back (hashed, so the download is verified), and each allocated
//! data cluster is written at its guest offset. Unallocated and zero clusters become zeros.
//! Compressed clusters, encryption, backing files, external data files and extended L2
//! entries are refused: they would need a real qcow2 engine.

use crate::blockdev::{check_fits, read_full, CHUNK};
use crate::error::{io, Error};
use crate::source::{unwrap_io, HashingReader, ImageSource, ResumingReader};
use crate::Progress;
use proto::ImageSpec;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

const MAGIC: &[u8; 4] = b"QFI\xfb";
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;
/// Incompatible feature bits we can honour: dirty (0) and compression type (3, which only
/// matters for compressed clusters, refused anyway).
const INCOMPAT_OK: u64 = (1 << 0) | (1 << 3);
/// Above this the L1 table is not a real image's (a 64 KiB-cluster image of 2 PiB has 32 MiB).
const MAX_L1_BYTES: u64 = 32 << 20;

/// The header fields the agent needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// L1 entries.
    pub l1_size: u32,
    /// Where the L1 table is in the file.
    pub l1_offset: u64,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Image(format!("qcow2: {}", msg.into()))
}

/// Parses and vets the header (the first 104 bytes at least).
pub fn parse_header(b: &[u8]) -> Result<Header, Error> {
    if b.len() < 72 || &b[0..4] != MAGIC {
        return Err(bad("not a qcow2 file (bad magic)"));
    }
    let version = be32(b, 4);
    if version != 2 && version != 3 {
        return Err(bad(format!(
            "version {version} is not supported (2 or 3 are)"
        )));
    }
    if be64(b, 8) != 0 {
        return Err(bad(
            "the image has a backing file; flatten it first (qemu-img convert -O qcow2)",
        ));
    }
    let cluster_bits = be32(b, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(bad(format!("cluster_bits {cluster_bits} is out of range")));
    }
    if be32(b, 32) != 0 {
        return Err(bad("the image is encrypted; decrypt it first"));
    }
    if version == 3 {
        if b.len() < 104 {
            return Err(bad("the version 3 header is truncated"));
        }
        let incompat = be64(b, 72);
        if incompat & (1 << 1) != 0 {
            return Err(bad("the image is marked corrupt"));
        }
        if incompat & (1 << 2) != 0 {
            return Err(bad("the image keeps its data in an external file"));
        }
        if incompat & (1 << 4) != 0 {
            return Err(bad("extended L2 entries (subclusters) are not supported"));
        }
        if incompat & !INCOMPAT_OK != 0 {
            return Err(bad(format!("unknown incompatible features {incompat:#x}")));
        }
    }
    let h = Header {
        cluster_bits,
        size: be64(b, 24),
        l1_size: be32(b, 36),
        l1_offset: be64(b, 40),
    };
    let per_l1 = (1u64 << h.cluster_bits) * ((1u64 << h.cluster_bits) / 8);
    if u64::from(h.l1_size) * per_l1 < h.size {
        return Err(bad("the L1 table is too small for the disk size"));
    }
    if u64::from(h.l1_size) * 8 > MAX_L1_BYTES {
        return Err(bad(format!(
            "an L1 table of {} entries is implausible",
            h.l1_size
        )));
    }
    Ok(h)
}

/// Host offset of every allocated data cluster → the guest offsets that read it.
pub fn map_clusters(
    source: &mut dyn ImageSource,
    h: &Header,
    file_len: u64,
) -> Result<BTreeMap<u64, Vec<u64>>, Error> {
    let cs = 1u64 << h.cluster_bits;
    let l2_entries = cs / 8;
    let l1 = source.read_range(h.l1_offset, u64::from(h.l1_size) * 8)?;
    let mut map: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (i, e) in l1.chunks_exact(8).enumerate() {
        let l2_offset = be64(e, 0) & OFFSET_MASK;
        if l2_offset == 0 {
            continue;
        }
        if l2_offset % cs != 0 || l2_offset + cs > file_len {
            return Err(bad(format!("L1 entry {i} points outside the file")));
        }
        let l2 = source.read_range(l2_offset, cs)?;
        for (j, e) in l2.chunks_exact(8).enumerate() {
            let entry = be64(e, 0);
            let guest = (i as u64 * l2_entries + j as u64) * cs;
            if guest >= h.size {
                break;
            }
            if entry & L2_COMPRESSED != 0 {
                return Err(bad(format!(
                    "compressed clusters are not supported (guest offset {guest}); \
                     re-create the image without -c"
                )));
            }
            let host = entry & OFFSET_MASK;
            if host == 0 || entry & L2_ZERO != 0 {
                continue; // Reads as zeros (no backing file).
            }
            if host % cs != 0 || host >= file_len {
                return Err(bad(format!(
                    "the L2 entry for guest offset {guest} points outside the file"
                )));
            }
            map.entry(host).or_default().push(guest);
        }
    }
    Ok(map)
}

/// Zeros `len` bytes at `offset`: the kernel's zero-out when it can (fast on SSDs, thin
/// storage and sparse files), plain writes otherwise.
pub fn zero_range(file: &File, disk: &str, offset: u64, len: u64) -> Result<(), Error> {
    use nix::fcntl::{fallocate, FallocateFlags};
    let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(bad("offset out of range"));
    };
    if fallocate(
        std::os::fd::AsRawFd::as_raw_fd(file),
        FallocateFlags::FALLOC_FL_ZERO_RANGE,
        off,
        l,
    )
    .is_ok()
    {
        return Ok(());
    }
    let zeros = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from(len - done).unwrap_or(CHUNK).min(CHUNK);
        file.write_all_at(&zeros[..n], offset + done)
            .map_err(io(format!("writing zeros to {disk}")))?;
        done += n as u64;
    }
    Ok(())
}

/// Writes a qcow2 image onto `file`; returns the virtual size (bytes now meaningful on disk).
pub fn write(
    source: &mut dyn ImageSource,
    spec: &ImageSpec,
    file: &mut File,
    disk: &str,
    capacity: Option<u64>,
    progress: &mut dyn Progress,
) -> Result<u64, Error> {
    let header = source.read_range(0, 112.min(spec.size_bytes))?;
    let h = parse_header(&header)?;
    check_fits(std::path::Path::new(disk), capacity, h.size)?;
    let map = map_clusters(source, &h, spec.size_bytes)?;
    let cs = 1u64 << h.cluster_bits;

    // Zeros where no data cluster lands, merged into runs.
    let mut allocated: Vec<u64> = map.values().flatten().copied().collect();
    allocated.sort_unstable();
    let mut at = 0u64;
    for g in allocated.iter().copied().chain(std::iter::once(h.size)) {
        if g > at {
            zero_range(file, disk, at, g - at)?;
        }
        at = at.max(g + cs).min(h.size);
    }

    // One pass over the file, in file order, hashing everything.
    let mut stream = HashingReader::new(ResumingReader::new(source, spec.size_bytes));
    let mut pos = 0u64;
    let mut cluster = vec![0u8; usize::try_from(cs).map_err(|_| bad("cluster too big"))?];
    for (host, guests) in &map {
        let skip = host - pos;
        let skipped = std::io::copy(&mut (&mut stream).take(skip), &mut std::io::sink())
            .map_err(|e| unwrap_io("reading the image", e))?;
        if skipped != skip {
            return Err(bad("the file ends before its data"));
        }
        let n =
            read_full(&mut stream, &mut cluster).map_err(|e| unwrap_io("reading the image", e))?;
        // The last cluster of a file may be short; the rest reads as zeros.
        cluster[n..].fill(0);
        pos = host + n as u64;
        for &g in guests {
            let len = cs.min(h.size - g) as usize;
            file.write_all_at(&cluster[..len], g)
                .map_err(io(format!("writing {disk}")))?;
        }
        progress.report("writing", pos, spec.size_bytes)?;
    }
    std::io::copy(&mut stream, &mut std::io::sink())
        .map_err(|e| unwrap_io("reading the image", e))?;
    let got = stream.finish();
    if !got.eq_ignore_ascii_case(spec.sha256.trim()) {
        return Err(Error::HashMismatch(format!(
            "the image downloaded has sha256 {got}, but the API announced {}",
            spec.sha256
        )));
    }
    progress.report("writing", spec.size_bytes, spec.size_bytes)?;
    Ok(h.size)
}
