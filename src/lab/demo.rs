//! The lab's demo image: a small raw disk that boots to a serial login prompt under BIOS and
//! UEFI alike, built from Debian packages as the agent's ramdisk is (downloaded once into a
//! cache, then offline). One FAT partition holds Debian's kernel (the agent's, as shipped), a
//! busybox ramdisk whose init runs `getty` on the first serial port, and SYSLINUX for both
//! firmwares: its MBR code and `ldlinux.sys` for BIOS, `\EFI\BOOT\BOOTX64.EFI` for UEFI's
//! removable-media path (docs/decisions.md, "the lab's demo image").

use crate::debs::{self, cached_deb, ensure_tool, run_cmd};
use anyhow::{anyhow, Context};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the serial console shows once the image booted (getty's prompt with the host name).
pub const LOGIN_PROMPT: &str = "lab-demo login:";
/// The image's size: small, so a deploy under TCG is quick; room for the kernel and ramdisk.
const IMAGE_MIB: u64 = 32;
/// The partition's first sector (1 MiB, the usual alignment).
const PART_START: u64 = 2048;
/// The Debian packages the image is made of.
const PACKAGES: &[&str] = &[
    "busybox-static",
    "syslinux",
    "syslinux-common",
    "syslinux-efi",
    "mtools",
];

const INIT: &str = r#"#!/bin/sh
# The lab demo image: a shell behind a login prompt on the serial console.
/bin/busybox mkdir -p /proc /sys /dev /root /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
hostname lab-demo
while :; do getty -L 115200 ttyS0 vt100; done
"#;

/// Both firmwares read the same configuration (BIOS from the root, UEFI beside BOOTX64.EFI).
const SYSLINUX_CFG: &str = "DEFAULT demo\nPROMPT 0\nTIMEOUT 0\nSERIAL 0 115200\n\
LABEL demo\n  LINUX /vmlinuz\n  INITRD /initrd.gz\n  APPEND console=ttyS0,115200 quiet panic=-1\n";

/// The MBR: SYSLINUX's boot code, then one active FAT16 (LBA) partition from [`PART_START`]
/// to the end of the disk.
fn mbr(boot_code: &[u8], disk_sectors: u64) -> anyhow::Result<[u8; 512]> {
    let code = boot_code
        .get(..440)
        .ok_or_else(|| anyhow!("SYSLINUX's mbr.bin is shorter than 440 bytes"))?;
    let sectors = u32::try_from(disk_sectors - PART_START)?;
    let start = u32::try_from(PART_START)?;
    let mut m = [0u8; 512];
    m[..440].copy_from_slice(code);
    let e = &mut m[446..462];
    e[0] = 0x80; // active: SYSLINUX's MBR boots it
    e[1..4].copy_from_slice(&[0xFE, 0xFF, 0xFF]); // CHS unused: LBA only
    e[4] = 0x0E; // FAT16, LBA
    e[5..8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&start.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    Ok(m)
}

/// Builds the demo image at `out` from `kernel` and the packages cached under `cache`.
pub fn build(cache: &Path, kernel: &Path, out: &Path) -> anyhow::Result<()> {
    for (bin, pkg) in [("dpkg-deb", "dpkg"), ("gzip", "gzip")] {
        ensure_tool(bin, pkg)?;
    }
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let cache = cache.canonicalize()?;
    let work = cache.join(format!("work-{}", std::process::id()));
    // A leftover of a crashed build is stale; failing to remove it is not an error.
    let _ = std::fs::remove_dir_all(&work);
    let result = assemble(&cache, &work, kernel, out);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn assemble(cache: &Path, work: &Path, kernel: &Path, out: &Path) -> anyhow::Result<()> {
    let pkgs = work.join("pkgs");
    let root = work.join("root");
    for d in [&pkgs, &root.join("bin"), &root.join("etc")] {
        std::fs::create_dir_all(d)?;
    }
    for p in PACKAGES {
        debs::extract(&cached_deb(cache, p, false)?, &pkgs)?;
    }
    let file = |rel: &str| -> anyhow::Result<PathBuf> {
        let p = pkgs.join(rel);
        p.is_file()
            .then_some(p)
            .ok_or_else(|| anyhow!("the demo image's packages have no {rel}"))
    };

    let busybox = file("bin/busybox").or_else(|_| file("usr/bin/busybox"))?;
    std::fs::copy(&busybox, root.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
    std::fs::write(root.join("init"), INIT)?;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755))?;
    // No password: a demo to look at, reachable only on the lab's serial console.
    std::fs::write(root.join("etc/passwd"), "root::0:0:root:/root:/bin/sh\n")?;
    std::fs::write(root.join("etc/issue"), "\nrackshare lab demo image\n\n")?;
    let initrd = work.join("initrd.gz");
    crate::ramdisk::write(&root, &initrd)?;
    let cfg = work.join("syslinux.cfg");
    std::fs::write(&cfg, SYSLINUX_CFG)?;

    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let disk_sectors = IMAGE_MIB * 2048;
    {
        let f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.set_len(IMAGE_MIB << 20)?;
        let code = std::fs::read(file("usr/lib/syslinux/mbr/mbr.bin")?)?;
        std::os::unix::fs::FileExt::write_all_at(&f, &mbr(&code, disk_sectors)?, 0)?;
    }
    // mtools and syslinux work on the partition inside the image file: no loop device, no mount.
    let image = format!("{}@@{}", tmp.display(), PART_START * 512);
    let bin = pkgs.join("usr/bin");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mtool = |args: &[&str]| -> anyhow::Result<()> {
        run_cmd(
            Command::new(bin.join(args[0]))
                .args(["-i", &image])
                .args(&args[1..])
                .env("PATH", &path)
                .env("MTOOLS_SKIP_CHECK", "1"),
        )
        .map(drop)
    };
    let sectors = (disk_sectors - PART_START).to_string();
    mtool(&[
        "mformat", "-v", "DEMO", "-T", &sectors, "-h", "64", "-s", "32", "-H", "2048", "::",
    ])?;
    mtool(&["mmd", "::/EFI", "::/EFI/BOOT"])?;
    let efi = file("usr/lib/SYSLINUX.EFI/efi64/syslinux.efi")?;
    let ldlinux_efi = file("usr/lib/syslinux/modules/efi64/ldlinux.e64")?;
    for (src, dest) in [
        (kernel, "::/vmlinuz"),
        (initrd.as_path(), "::/initrd.gz"),
        (cfg.as_path(), "::/syslinux.cfg"),
        (efi.as_path(), "::/EFI/BOOT/BOOTX64.EFI"),
        (ldlinux_efi.as_path(), "::/EFI/BOOT/ldlinux.e64"),
        (cfg.as_path(), "::/EFI/BOOT/syslinux.cfg"),
    ] {
        let src = src.display().to_string();
        mtool(&["mcopy", &src, dest]).with_context(|| format!("copying {src} into the image"))?;
    }
    run_cmd(
        Command::new(bin.join("syslinux"))
            .args(["--install", "--offset", &(PART_START * 512).to_string()])
            .arg(&tmp)
            .env("PATH", &path)
            .env("MTOOLS_SKIP_CHECK", "1"),
    )
    .context("installing SYSLINUX's BIOS loader")?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mbr_has_one_active_lba_partition_after_the_code() {
        let code = [0x90u8; 440];
        let m = mbr(&code, 32 * 2048).expect("mbr");
        assert_eq!(&m[..440], &code[..]);
        assert_eq!(m[446], 0x80);
        assert_eq!(m[450], 0x0E);
        assert_eq!(u32::from_le_bytes([m[454], m[455], m[456], m[457]]), 2048);
        assert_eq!(
            u32::from_le_bytes([m[458], m[459], m[460], m[461]]),
            32 * 2048 - 2048
        );
        assert_eq!(&m[510..], &[0x55, 0xAA]);
        assert!(mbr(&[0u8; 10], 4096).is_err());
    }
}
