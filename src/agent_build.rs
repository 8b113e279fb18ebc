//! `rackshare agent build`: the deploy agent's kernel and ramdisk, from Debian packages.
//!
//! `DATA_DIR/boot/agent-vmlinuz` is Debian's `linux-image-amd64` kernel as shipped;
//! `DATA_DIR/boot/agent-initrd.img` is a gzipped newc cpio we write ourselves: busybox
//! (static), the NIC, storage and filesystem modules with their dependencies, an init script
//! and the static `rackshare-agent`. The .debs are cached in `DATA_DIR/cache/agent/`, so a
//! second build is offline.

use crate::debs::{self, cached_deb, ensure_tool, run_cmd};
use crate::ramdisk;
use anyhow::{anyhow, bail, Context};
use clap::Args;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// `rackshare agent build` arguments.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Data directory (as for `serve`) [default: ./rackshare-data]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The static agent binary [default: rackshare-agent next to this program, then
    /// target/x86_64-unknown-linux-gnu/release/rackshare-agent (scripts/build-agent)]
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Download the kernel and busybox packages again instead of using the cache
    #[arg(long)]
    pub refresh: bool,
}

/// Module directories (relative to `kernel/`) the ramdisk keeps: NICs, storage, filesystems,
/// and the crypto the filesystems ask for by name. Dependencies are added from modules.dep.
const MODULE_PREFIXES: &[&str] = &[
    "drivers/net/ethernet/",
    "drivers/net/virtio_net.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/mii.ko",
    "drivers/net/mdio",
    "drivers/net/phy/",
    "drivers/net/usb/",
    "drivers/virtio/",
    "drivers/block/virtio_blk.ko",
    "drivers/scsi/virtio_scsi.ko",
    "drivers/scsi/sd_mod.ko",
    "drivers/scsi/scsi_mod.ko",
    "drivers/scsi/scsi_transport_sas.ko",
    "drivers/scsi/megaraid",
    "drivers/scsi/mpt3sas/",
    "drivers/scsi/hpsa.ko",
    "drivers/scsi/smartpqi/",
    "drivers/ata/",
    "drivers/nvme/host/",
    "drivers/usb/storage/usb-storage.ko",
    "drivers/usb/host/",
    "fs/ext4/",
    "fs/xfs/",
    "fs/btrfs/",
    "fs/fat/",
    "fs/nls/nls_cp437.ko",
    "fs/nls/nls_iso8859-1.ko",
    "fs/nls/nls_utf8.ko",
    "crypto/crc32c_generic.ko",
    "crypto/xxhash_generic.ko",
    "crypto/blake2b_generic.ko",
    "arch/x86/crypto/crc32c-intel.ko",
];

/// Loaded by name at boot (not by modalias): what mounting an image's filesystems needs.
const BOOT_MODULES: &str =
    "crc32c_generic crc32c_intel ext4 xfs btrfs vfat nls_cp437 nls_iso8859_1 nls_utf8 sd_mod";

const INIT: &str = r#"#!/bin/sh
# rackshare agent ramdisk: drivers, DHCP, then the agent as PID 1.
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /sbin /usr/bin /usr/sbin /etc
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "rackshare init: $(cat /proc/uptime | cut -d' ' -f1)s, loading drivers"
# Twice: a bus driver loaded by the first pass exposes new devices for the second.
for pass in 1 2; do
  find /sys/devices -name modalias -exec cat {} + 2>/dev/null | sort -u | xargs modprobe -a -q 2>/dev/null
done
modprobe -a -q __BOOT_MODULES__ 2>/dev/null
ip link set lo up
# The agent proper; bench/reimage's baseline instead when asked (the same VM, kernel and
# network writing the same image with busybox `wget | dd`, for comparison with the agent).
start_agent() {
  for w in $(cat /proc/cmdline); do
    case "$w" in rackshare.baseline=*)
      url=${w#rackshare.baseline=}
      t0=$(cut -d' ' -f1 /proc/uptime)
      wget -q -O - "$url" | dd of=/dev/vda bs=1M conv=fsync 2>/dev/null
      t1=$(cut -d' ' -f1 /proc/uptime)
      echo "rackshare baseline: wget|dd from $t0 to $t1"
      poweroff -f
    esac
  done
  exec /bin/rackshare-agent
}
# The address the firmware got (iPXE's ${netX/...} on the command line): kept, so the claim
# comes from the address the boot server saw in this boot's PXE exchange, whoever gave it.
fw_mac= fw_ip= fw_mask= fw_gw=
for w in $(cat /proc/cmdline); do
  case "$w" in
    rackshare.mac=*) fw_mac=${w#rackshare.mac=} ;;
    rackshare.ip=*) fw_ip=${w#rackshare.ip=} ;;
    rackshare.netmask=*) fw_mask=${w#rackshare.netmask=} ;;
    rackshare.gateway=*) fw_gw=${w#rackshare.gateway=} ;;
  esac
done
if [ -n "$fw_ip" ] && [ -n "$fw_mac" ]; then
  for n in /sys/class/net/*; do
    i=${n##*/}; [ "$i" = lo ] && continue
    [ "$(cat "$n/address" 2>/dev/null)" = "$fw_mac" ] || continue
    if ifconfig "$i" "$fw_ip" netmask "${fw_mask:-255.255.255.0}" up; then
      case "$fw_gw" in ""|0.0.0.0) ;; *) route add default gw "$fw_gw" dev "$i" ;; esac
      echo "rackshare init: $(cat /proc/uptime | cut -d' ' -f1)s, $i keeps the firmware's $fw_ip"
      start_agent
    fi
  done
  echo "rackshare init: no interface has $fw_mac; asking DHCP instead"
fi
round=0
while :; do
  for n in /sys/class/net/*; do
    i=${n##*/}; [ "$i" = lo ] || ip link set "$i" up
  done
  for n in /sys/class/net/*; do
    i=${n##*/}; [ "$i" = lo ] && continue
    # Without -s the lease is never applied to the interface (LAB-NOTES).
    if udhcpc -i "$i" -s /etc/udhcpc.script -q -n -t 10 -T 2; then
      echo "rackshare init: $(cat /proc/uptime | cut -d' ' -f1)s, $i is up"
      start_agent
    fi
  done
  round=$((round+1))
  echo "rackshare init: no DHCP answer on any interface (round $round); trying again"
  sleep 5
done
"#;

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# udhcpc calls this with the lease in the environment; it configures the interface.
case "$1" in
  deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
    if [ -n "$router" ]; then
      while route del default gw 0.0.0.0 dev "$interface" 2>/dev/null; do :; done
      for r in $router; do route add default gw "$r" dev "$interface"; break; done
    fi
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    ;;
esac
exit 0
"#;

/// The real kernel package a metapackage depends on (`linux-image-6.1.0-NN-amd64`).
fn kernel_package(meta_deb: &Path) -> anyhow::Result<String> {
    let depends = run_cmd(
        Command::new("dpkg-deb")
            .arg("-f")
            .arg(meta_deb)
            .arg("Depends"),
    )?;
    depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| {
            anyhow!(
                "{} depends on no linux-image package: {depends}",
                meta_deb.display()
            )
        })
}

/// Refuses a dynamically linked agent: the ramdisk has no loader and no libc.
pub fn check_static(path: &Path) -> anyhow::Result<()> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let dynamic = elf_has_interp(&b)
        .with_context(|| format!("{} is not an x86_64 ELF program", path.display()))?;
    if dynamic {
        bail!(
            "{} is dynamically linked (it has an ELF interpreter); the ramdisk has no libc. \
             Build it with scripts/build-agent (RUSTFLAGS='-C target-feature=+crt-static')",
            path.display()
        );
    }
    Ok(())
}

/// Whether a 64-bit little-endian ELF has a PT_INTERP program header.
fn elf_has_interp(b: &[u8]) -> anyhow::Result<bool> {
    let u16_at = |o: usize| -> anyhow::Result<u16> {
        let s = b.get(o..o + 2).ok_or_else(|| anyhow!("truncated"))?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    };
    let u32_at = |o: usize| -> anyhow::Result<u32> {
        let s = b.get(o..o + 4).ok_or_else(|| anyhow!("truncated"))?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |o: usize| -> anyhow::Result<u64> {
        let s = b.get(o..o + 8).ok_or_else(|| anyhow!("truncated"))?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    };
    if b.get(0..4) != Some(b"\x7fELF") || b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        bail!("not a 64-bit little-endian ELF file");
    }
    if u16_at(18)? != 62 {
        bail!("not built for x86_64");
    }
    let phoff = usize::try_from(u64_at(32)?)?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    for i in 0..phnum {
        // PT_INTERP = 3
        if u32_at(phoff + i * phentsize)? == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

fn default_agent_bin() -> anyhow::Result<PathBuf> {
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            tried.push(dir.join("rackshare-agent"));
        }
    }
    tried.push(PathBuf::from(
        "target/x86_64-unknown-linux-gnu/release/rackshare-agent",
    ));
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        tried.push(PathBuf::from(t).join("x86_64-unknown-linux-gnu/release/rackshare-agent"));
    }
    // `cargo build` leaves a dynamic rackshare-agent beside a debug rackshare: skip it.
    if let Some(p) = tried
        .iter()
        .find(|p| p.is_file() && check_static(p).is_ok())
    {
        return Ok(p.clone());
    }
    let found: Vec<String> = tried
        .iter()
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    bail!(
        "no static rackshare-agent binary found (looked at {}{}); build it with \
         scripts/build-agent or pass --agent-bin",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        if found.is_empty() {
            String::new()
        } else {
            format!("; dynamically linked: {}", found.join(", "))
        }
    )
}

/// Module paths (relative to the version dir) → their dependencies, from modules.dep.
fn read_modules_dep(moddir: &Path) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(moddir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", moddir.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, deps)| {
            (
                m.to_string(),
                deps.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect())
}

/// The selected modules and everything they depend on.
fn module_closure(dep: &BTreeMap<String, Vec<String>>) -> BTreeSet<String> {
    let mut want: Vec<String> = dep
        .keys()
        .filter(|m| {
            let rel = m.strip_prefix("kernel/").unwrap_or(m);
            MODULE_PREFIXES.iter().any(|p| rel.starts_with(p))
        })
        .cloned()
        .collect();
    let mut out = BTreeSet::new();
    while let Some(m) = want.pop() {
        if out.insert(m.clone()) {
            want.extend(dep.get(&m).into_iter().flatten().cloned());
        }
    }
    out
}

fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Builds `DATA_DIR/boot/agent-vmlinuz` and `DATA_DIR/boot/agent-initrd.img`.
pub fn run(args: BuildArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| api::Config::local_default().data_dir);
    let agent = match args.agent_bin {
        Some(p) => p,
        None => default_agent_bin()?,
    };
    check_static(&agent)?;
    for (bin, pkg) in [("dpkg-deb", "dpkg"), ("depmod", "kmod"), ("gzip", "gzip")] {
        ensure_tool(bin, pkg)?;
    }
    let cache = data_dir.join("cache/agent");
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let cache = cache.canonicalize()?;
    let meta = cached_deb(&cache, "linux-image-amd64", args.refresh)?;
    let kernel_pkg = kernel_package(&meta)?;
    let kernel_deb = cached_deb(&cache, &kernel_pkg, args.refresh)?;
    let busybox_deb = cached_deb(&cache, "busybox-static", args.refresh)?;

    let work = cache.join(format!("work-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let result = assemble(&work, &kernel_deb, &busybox_deb, &agent, &data_dir);
    let _ = std::fs::remove_dir_all(&work);
    let (kernel_bytes, initrd_bytes, modules) = result?;
    println!(
        "agent kernel  {} ({:.1} MiB, {kernel_pkg})",
        data_dir.join("boot/agent-vmlinuz").display(),
        kernel_bytes as f64 / 1048576.0
    );
    println!(
        "agent initrd  {} ({:.1} MiB, {modules} modules, agent {})",
        data_dir.join("boot/agent-initrd.img").display(),
        initrd_bytes as f64 / 1048576.0,
        agent.display()
    );
    println!("built in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn assemble(
    work: &Path,
    kernel_deb: &Path,
    busybox_deb: &Path,
    agent: &Path,
    data_dir: &Path,
) -> anyhow::Result<(u64, u64, usize)> {
    let kdir = work.join("kernel");
    let bdir = work.join("busybox");
    let root = work.join("root");
    for d in [&kdir, &bdir, &root] {
        std::fs::create_dir_all(d)?;
    }
    debs::extract(kernel_deb, &kdir)?;
    debs::extract(busybox_deb, &bdir)?;

    // Newer Debian kernels ship under /usr/lib/modules; bookworm's under /lib/modules.
    let lib = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|l| kdir.join(l))
        .find(|p| p.is_dir())
        .ok_or_else(|| anyhow!("{} has no lib/modules", kernel_deb.display()))?;
    let version = std::fs::read_dir(&lib)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| anyhow!("{} has no module directory", lib.display()))?;
    let vmlinuz = kdir.join("boot").join(format!("vmlinuz-{version}"));
    if !vmlinuz.is_file() {
        bail!("{} has no boot/vmlinuz-{version}", kernel_deb.display());
    }
    let kroot = lib
        .parent()
        .and_then(Path::parent)
        .unwrap_or(&kdir)
        .to_path_buf();
    run_cmd(Command::new("depmod").arg("-b").arg(&kroot).arg(&version))?;
    let src_mods = lib.join(&version);
    let closure = module_closure(&read_modules_dep(&src_mods)?);

    let dst_mods = root.join("lib/modules").join(&version);
    std::fs::create_dir_all(&dst_mods)?;
    for m in &closure {
        let to = dst_mods.join(m);
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::copy(src_mods.join(m), &to).with_context(|| format!("copying module {m}"))?;
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        if src_mods.join(f).is_file() {
            std::fs::copy(src_mods.join(f), dst_mods.join(f))?;
        }
    }
    run_cmd(Command::new("depmod").arg("-b").arg(&root).arg(&version))?;

    for d in [
        "bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp", "usr/bin", "usr/sbin",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let busybox = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| bdir.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{} has no busybox binary", busybox_deb.display()))?;
    std::fs::copy(&busybox, root.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
    std::fs::copy(agent, root.join("bin/rackshare-agent"))
        .with_context(|| format!("copying {}", agent.display()))?;
    std::fs::set_permissions(
        root.join("bin/rackshare-agent"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    write_file(
        &root.join("init"),
        &INIT.replace("__BOOT_MODULES__", BOOT_MODULES),
        0o755,
    )?;
    write_file(&root.join("etc/udhcpc.script"), UDHCPC_SCRIPT, 0o755)?;

    let boot = data_dir.join("boot");
    std::fs::create_dir_all(&boot).with_context(|| format!("creating {}", boot.display()))?;
    // Per-process temporary names: two builds at once must not rename each other's files.
    let initrd_tmp = boot.join(format!("agent-initrd.img.tmp{}", std::process::id()));
    ramdisk::write(&root, &initrd_tmp)?;
    let kernel_tmp = boot.join(format!("agent-vmlinuz.tmp{}", std::process::id()));
    std::fs::copy(&vmlinuz, &kernel_tmp)?;
    std::fs::rename(&kernel_tmp, boot.join("agent-vmlinuz"))?;
    std::fs::rename(&initrd_tmp, boot.join("agent-initrd.img"))?;
    let k = std::fs::metadata(boot.join("agent-vmlinuz"))?.len();
    let i = std::fs::metadata(boot.join("agent-initrd.img"))?.len();
    Ok((k, i, closure.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_dynamic_and_refused() {
        let exe = std::env::current_exe().expect("exe");
        // cargo's test binaries are dynamically linked against glibc.
        let err = check_static(&exe).expect_err("dynamic");
        assert!(err.to_string().contains("dynamically linked"), "{err}");
        assert!(elf_has_interp(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn the_closure_follows_dependencies() {
        let mut dep = BTreeMap::new();
        dep.insert(
            "kernel/fs/ext4/ext4.ko".to_string(),
            vec!["kernel/fs/jbd2/jbd2.ko".to_string()],
        );
        dep.insert(
            "kernel/fs/jbd2/jbd2.ko".to_string(),
            vec!["kernel/lib/crc16.ko".to_string()],
        );
        dep.insert("kernel/lib/crc16.ko".to_string(), vec![]);
        dep.insert("kernel/sound/snd.ko".to_string(), vec![]);
        let c = module_closure(&dep);
        assert_eq!(c.len(), 3);
        assert!(!c.contains("kernel/sound/snd.ko"));
    }
}
