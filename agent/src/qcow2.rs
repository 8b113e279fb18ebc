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

// The layout rules (header checks, the L1/L2 walk) are the `qcow2` crate's, shared with the
// server's content index; this file only streams and writes.
pub use qcow2::{Header, LayoutError};

impl From<LayoutError> for Error {
    fn from(e: LayoutError) -> Self {
        Error::Image(e.to_string())
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Image(format!("qcow2: {}", msg.into()))
}

/// Parses and vets the header (the first 104 bytes at least).
pub fn parse_header(b: &[u8]) -> Result<Header, Error> {
    Ok(qcow2::parse_header(b)?)
}

/// Host offset of every allocated data cluster → the guest offsets that read it.
pub fn map_clusters(
    source: &mut dyn ImageSource,
    h: &Header,
    file_len: u64,
) -> Result<BTreeMap<u64, Vec<u64>>, Error> {
    qcow2::map_clusters(|off, len| source.read_range(off, len), h, file_len)
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
