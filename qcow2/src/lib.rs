//! The qcow2 layout rackshare accepts, as pure functions: the header's checks and the walk of
//! the L1/L2 tables into a cluster map. The caller brings the bytes (ranged HTTP reads in the
//! agent, `pread` in the image store), so both read an image by the same rules.
//!
//! Refused, because they would need a real qcow2 engine: compressed clusters, encryption,
//! backing files, external data files, extended L2 entries (subclusters).

use std::collections::BTreeMap;

const MAGIC: &[u8; 4] = b"QFI\xfb";
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;
/// Incompatible feature bits we can honour: dirty (0) and compression type (3, which only
/// matters for compressed clusters, refused anyway).
const INCOMPAT_OK: u64 = (1 << 0) | (1 << 3);
/// Above this the L1 table is not a real image's (a 64 KiB-cluster image of 2 PiB has 32 MiB).
const MAX_L1_BYTES: u64 = 32 << 20;
/// How many header bytes `parse_header` needs (version 3 with its extra fields).
pub const HEADER_BYTES: u64 = 112;

/// Why an image is not one rackshare can read; the message says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("qcow2: {0}")]
pub struct LayoutError(pub String);

fn bad(msg: impl Into<String>) -> LayoutError {
    LayoutError(msg.into())
}

/// The header fields a reader needs.
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

impl Header {
    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }
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

/// Whether `head` starts like a qcow2 file.
pub fn is_qcow2(head: &[u8]) -> bool {
    head.len() >= 4 && &head[0..4] == MAGIC
}

/// Parses and vets the header (the first [`HEADER_BYTES`] bytes, or the whole file if shorter).
pub fn parse_header(b: &[u8]) -> Result<Header, LayoutError> {
    if b.len() < 72 || !is_qcow2(b) {
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
    let per_l1 = h.cluster_size() * (h.cluster_size() / 8);
    if u64::from(h.l1_size).saturating_mul(per_l1) < h.size {
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

/// Host offset of every allocated data cluster → the guest offsets that read it (in guest
/// order). Guest clusters not in the map read as zeros. `read(offset, len)` returns exactly
/// `len` bytes of the file at `offset`.
pub fn map_clusters<E: From<LayoutError>>(
    mut read: impl FnMut(u64, u64) -> Result<Vec<u8>, E>,
    h: &Header,
    file_len: u64,
) -> Result<BTreeMap<u64, Vec<u64>>, E> {
    let cs = h.cluster_size();
    let l2_entries = cs / 8;
    let l1 = read(h.l1_offset, u64::from(h.l1_size) * 8)?;
    let mut map: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (i, e) in l1.chunks_exact(8).enumerate() {
        let l2_offset = be64(e, 0) & OFFSET_MASK;
        if l2_offset == 0 {
            continue;
        }
        if l2_offset % cs != 0 || l2_offset.saturating_add(cs) > file_len {
            return Err(bad(format!("L1 entry {i} points outside the file")).into());
        }
        let l2 = read(l2_offset, cs)?;
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
                ))
                .into());
            }
            let host = entry & OFFSET_MASK;
            if host == 0 || entry & L2_ZERO != 0 {
                continue; // Reads as zeros (no backing file).
            }
            if host % cs != 0 || host >= file_len {
                return Err(bad(format!(
                    "the L2 entry for guest offset {guest} points outside the file"
                ))
                .into());
            }
            map.entry(host).or_default().push(guest);
        }
    }
    Ok(map)
}

/// The same map turned around: guest cluster offset → host offset of its data.
pub fn guest_map(clusters: &BTreeMap<u64, Vec<u64>>) -> BTreeMap<u64, u64> {
    clusters
        .iter()
        .flat_map(|(host, guests)| guests.iter().map(move |g| (*g, *host)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 3 image of `size` bytes with 64 KiB clusters, L1 at 0x30000, one L2 table at
    /// 0x40000 whose entry 1 maps guest cluster 1 to host 0x50000.
    fn image(size: u64) -> Vec<u8> {
        let mut f = vec![0u8; 0x60000];
        f[0..4].copy_from_slice(MAGIC);
        f[4..8].copy_from_slice(&3u32.to_be_bytes());
        f[20..24].copy_from_slice(&16u32.to_be_bytes());
        f[24..32].copy_from_slice(&size.to_be_bytes());
        f[36..40].copy_from_slice(&1u32.to_be_bytes());
        f[40..48].copy_from_slice(&0x30000u64.to_be_bytes());
        f[100..104].copy_from_slice(&104u32.to_be_bytes());
        f[0x30000..0x30008].copy_from_slice(&(0x40000u64 | 1 << 63).to_be_bytes());
        f[0x40008..0x40010].copy_from_slice(&(0x50000u64 | 1 << 63).to_be_bytes());
        f
    }

    fn read(f: &[u8]) -> impl FnMut(u64, u64) -> Result<Vec<u8>, LayoutError> + '_ {
        move |off, len| {
            let (a, b) = (off as usize, (off + len) as usize);
            f.get(a..b)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| bad("short read"))
        }
    }

    #[test]
    fn a_small_image_maps_its_one_cluster() {
        let f = image(1 << 20);
        let h = parse_header(&f).expect("header");
        assert_eq!(h.cluster_size(), 65536);
        let map = map_clusters(read(&f), &h, f.len() as u64).expect("map");
        assert_eq!(map.get(&0x50000), Some(&vec![65536]));
        assert_eq!(guest_map(&map).get(&65536), Some(&0x50000));
    }

    #[test]
    fn refusals_say_why() {
        let mut f = image(1 << 20);
        f[8..16].copy_from_slice(&1u64.to_be_bytes());
        assert!(parse_header(&f)
            .expect_err("backing")
            .0
            .contains("backing file"));
        let mut f = image(1 << 20);
        f[32..36].copy_from_slice(&1u32.to_be_bytes());
        assert!(parse_header(&f).expect_err("crypt").0.contains("encrypted"));
        let mut f = image(1 << 20);
        f[0x40008..0x40010].copy_from_slice(&(0x50000u64 | 1 << 62).to_be_bytes());
        let h = parse_header(&f).expect("header");
        let err = map_clusters(read(&f), &h, f.len() as u64).expect_err("compressed");
        assert!(err.0.contains("compressed"));
        let mut f = image(1 << 20);
        f[0x40008..0x40010].copy_from_slice(&(0x900000u64 | 1 << 63).to_be_bytes());
        let h = parse_header(&f).expect("header");
        let err = map_clusters(read(&f), &h, f.len() as u64).expect_err("outside");
        assert!(err.0.contains("outside the file"));
        // An L1 table too small for the disk it claims.
        assert!(parse_header(&image(1 << 40)).is_err());
    }
}
