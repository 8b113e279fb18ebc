//! Inspect: what is in the box, from /proc and /sys.

use crate::error::{io, Error};
use proto::{InspectResult, NicInfo};
use std::path::Path;

fn read_trim(p: &Path) -> Option<String> {
    let s = std::fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// The network interfaces with a MAC, loopback and all-zero addresses left out.
pub fn nics(sys: &Path) -> Vec<NicInfo> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(sys.join("class/net")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "lo" {
                continue;
            }
            if let Some(mac) = read_trim(&e.path().join("address")) {
                if mac != "00:00:00:00:00:00" {
                    out.push(NicInfo {
                        name,
                        mac: mac.to_ascii_lowercase(),
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Describes the machine from `PROC` and `SYS` (the real `/proc`, `/sys` outside tests).
pub fn inspect(proc_root: &Path, sys: &Path) -> Result<InspectResult, Error> {
    let cpuinfo =
        std::fs::read_to_string(proc_root.join("cpuinfo")).map_err(io("reading /proc/cpuinfo"))?;
    let cpu_count = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().map(str::trim) == Some("processor"))
        .count() as u32;
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.split(':').next().map(str::trim) == Some("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let meminfo =
        std::fs::read_to_string(proc_root.join("meminfo")).map_err(io("reading /proc/meminfo"))?;
    let ram_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let dmi = sys.join("class/dmi/id");
    Ok(InspectResult {
        arch: std::env::consts::ARCH.to_string(),
        cpu_count,
        cpu_model,
        ram_mib: ram_kib / 1024,
        vendor: read_trim(&dmi.join("sys_vendor")),
        model: read_trim(&dmi.join("product_name")),
        serial: read_trim(&dmi.join("product_serial")),
        disks: crate::disks::list(sys)?
            .into_iter()
            .map(|d| d.info)
            .collect(),
        nics: nics(sys),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpus_ram_dmi_and_nics() {
        let root = tempfile::tempdir().expect("tempdir");
        let proc_root = root.path().join("proc");
        let sys = root.path().join("sys");
        std::fs::create_dir_all(&proc_root).expect("mkdir");
        std::fs::write(
            proc_root.join("cpuinfo"),
            "processor\t: 0\nmodel name\t: QEMU Virtual CPU version 2.5+\n\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU version 2.5+\n",
        )
        .expect("write");
        std::fs::write(
            proc_root.join("meminfo"),
            "MemTotal:         497416 kB\nMemFree: 1 kB\n",
        )
        .expect("write");
        std::fs::create_dir_all(sys.join("class/dmi/id")).expect("mkdir");
        std::fs::write(sys.join("class/dmi/id/sys_vendor"), "QEMU\n").expect("write");
        std::fs::write(
            sys.join("class/dmi/id/product_name"),
            "Standard PC (i440FX + PIIX, 1996)\n",
        )
        .expect("write");
        for (n, mac) in [("lo", "00:00:00:00:00:00"), ("eth0", "52:54:00:AB:CD:EF")] {
            std::fs::create_dir_all(sys.join("class/net").join(n)).expect("mkdir");
            std::fs::write(
                sys.join("class/net").join(n).join("address"),
                format!("{mac}\n"),
            )
            .expect("write");
        }
        std::fs::create_dir_all(sys.join("block/vda/queue")).expect("mkdir");
        std::fs::write(sys.join("block/vda/size"), "2048\n").expect("write");
        let r = inspect(&proc_root, &sys).expect("inspects");
        assert_eq!(r.cpu_count, 2);
        assert_eq!(
            r.cpu_model.as_deref(),
            Some("QEMU Virtual CPU version 2.5+")
        );
        assert_eq!(r.ram_mib, 485);
        assert_eq!(r.vendor.as_deref(), Some("QEMU"));
        assert_eq!(r.serial, None);
        assert_eq!(
            r.nics,
            vec![NicInfo {
                name: "eth0".into(),
                mac: "52:54:00:ab:cd:ef".into()
            }]
        );
        assert_eq!(r.disks.len(), 1);
        assert_eq!(r.disks[0].size_bytes, 1 << 20);
    }
}
