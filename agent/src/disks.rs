//! Disks as sysfs lists them, and the choice of the deploy target.

use crate::error::{io, Error};
use proto::DiskInfo;
use std::path::Path;

/// A block device that could hold an OS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// What inspect reports.
    pub info: DiskInfo,
    /// Kernel name, e.g. `vda`.
    pub name: String,
    /// USB sticks, card readers and the like.
    pub removable: bool,
}

/// Kernel name prefixes that are never a machine's disk.
const NOT_DISKS: &[&str] = &["loop", "ram", "sr", "zram", "fd", "nbd", "dm-", "md"];

fn read_trim(p: &Path) -> Option<String> {
    let s = std::fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Every disk under `SYS/block`, by name, leaving out loop, ram, optical and virtual devices.
pub fn list(sys: &Path) -> Result<Vec<Disk>, Error> {
    let block = sys.join("block");
    let entries = std::fs::read_dir(&block).map_err(io(format!("listing {}", block.display())))?;
    let mut disks = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if NOT_DISKS.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let dir = block.join(&name);
        let sectors: u64 = read_trim(&dir.join("size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let serial =
            read_trim(&dir.join("device/serial")).or_else(|| read_trim(&dir.join("serial")));
        disks.push(Disk {
            info: DiskInfo {
                name: name.clone(),
                // sysfs counts 512-byte sectors whatever the device's block size.
                size_bytes: sectors * 512,
                model: read_trim(&dir.join("device/model")),
                serial,
                rotational: read_trim(&dir.join("queue/rotational")).as_deref() == Some("1"),
            },
            removable: read_trim(&dir.join("removable")).as_deref() == Some("1"),
            name,
        });
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(disks)
}

/// The biggest non-removable disk (the first by name among equals).
pub fn pick_target(disks: &[Disk]) -> Option<&Disk> {
    disks
        .iter()
        .filter(|d| !d.removable && d.info.size_bytes > 0)
        .fold(None, |best: Option<&Disk>, d| match best {
            Some(b) if b.info.size_bytes >= d.info.size_bytes => Some(b),
            _ => Some(d),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(sys: &Path, name: &str, sectors: u64, removable: bool) {
        let d = sys.join("block").join(name);
        std::fs::create_dir_all(d.join("queue")).expect("mkdir");
        std::fs::write(d.join("size"), format!("{sectors}\n")).expect("write");
        std::fs::write(d.join("removable"), if removable { "1\n" } else { "0\n" }).expect("write");
        std::fs::write(d.join("queue/rotational"), "0\n").expect("write");
    }

    #[test]
    fn picks_the_biggest_fixed_disk() {
        let sys = tempfile::tempdir().expect("tempdir");
        fake(sys.path(), "loop0", 1 << 40, false);
        fake(sys.path(), "sr0", 1 << 30, false);
        fake(sys.path(), "sda", 1000, false);
        fake(sys.path(), "sdb", 4000, true);
        fake(sys.path(), "nvme0n1", 3000, false);
        fake(sys.path(), "vdb", 3000, false);
        let disks = list(sys.path()).expect("lists");
        let names: Vec<_> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "sda", "sdb", "vdb"]);
        assert_eq!(
            pick_target(&disks).map(|d| d.name.as_str()),
            Some("nvme0n1")
        );
        assert_eq!(disks[0].info.size_bytes, 3000 * 512);
        assert!(pick_target(&[]).is_none());
    }
}
