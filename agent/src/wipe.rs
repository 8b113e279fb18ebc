//! Wipe: erase every disk by the strongest method it offers (`sanitize::plan`: NVMe Sanitize or
//! Format NVM, ATA Secure Erase, else discard, else zeros) and check by reading samples back. The
//! discard-zeroes ioctl is no help: modern kernels always answer 0, so read-back decides.

use crate::ata::AtaDisk;
use crate::blockdev::{drop_caches, hash_ranges, CHUNK};
use crate::error::{io, Error};
use crate::nvme::Namespace;
use crate::sanitize::{self, Controller, EraseMethod, ErasePlan};
use crate::{Challenger, Progress};
use proto::{ChallengeDisk, ChallengeRequest, WipeResult, WipedDisk};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;
/// Spread samples, besides the first and last MiB.
pub const SPREAD_SAMPLES: u64 = 64;

/// Offsets of the 1 MiB blocks read back: the first, the last, and 64 spread evenly between.
pub fn sample_offsets(size: u64) -> Vec<u64> {
    if size <= MIB {
        return vec![0];
    }
    let last = (size - MIB) & !4095;
    let mut v = vec![0, last];
    for i in 1..=SPREAD_SAMPLES {
        v.push((last / (SPREAD_SAMPLES + 1) * i) & !4095);
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// Reads the samples back; the offset of the first non-zero byte, if any.
pub fn first_nonzero(path: &Path, size: u64) -> Result<Option<u64>, Error> {
    let f = File::open(path).map_err(io(format!("opening {} to verify it", path.display())))?;
    let mut buf = vec![0u8; MIB as usize];
    for off in sample_offsets(size) {
        let len = MIB.min(size - off) as usize;
        f.read_exact_at(&mut buf[..len], off)
            .map_err(io(format!("reading {} back at {off}", path.display())))?;
        if let Some(i) = buf[..len].iter().position(|&b| b != 0) {
            return Ok(Some(off + i as u64));
        }
    }
    Ok(None)
}

fn zero_fill(path: &Path, size: u64, progress: &mut dyn Progress) -> Result<(), Error> {
    let name = path.display().to_string();
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(format!("opening {name} for writing")))?;
    let zeros = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < size {
        let n = (size - done).min(CHUNK as u64) as usize;
        f.write_all_at(&zeros[..n], done)
            .map_err(io(format!("writing zeros to {name}")))?;
        done += n as u64;
        progress.report("wiping", done, size)?;
    }
    f.sync_all().map_err(io(format!("flushing {name}")))
}

/// How long a device's own erase may take before the agent gives up on it.
const DEVICE_ERASE_LIMIT: Duration = Duration::from_secs(4 * 3600);

/// The handle a device's own erase commands go through.
pub enum Device {
    /// An NVMe namespace.
    Nvme(Namespace),
    /// A disk that answers ATA commands (SATA on AHCI or behind a SAS HBA).
    Ata(AtaDisk),
}

/// Runs one device erase method on `dev`.
fn device_erase(dev: &Device, method: EraseMethod) -> Result<(), Error> {
    match (dev, method) {
        (Device::Nvme(ns), EraseMethod::NvmeSanitizeCrypto) => ns.sanitize(4, DEVICE_ERASE_LIMIT),
        (Device::Nvme(ns), EraseMethod::NvmeSanitizeBlock) => ns.sanitize(2, DEVICE_ERASE_LIMIT),
        (Device::Nvme(ns), EraseMethod::NvmeFormatCrypto) => ns.format(2, DEVICE_ERASE_LIMIT),
        (Device::Nvme(ns), EraseMethod::NvmeFormat) => ns.format(1, DEVICE_ERASE_LIMIT),
        (Device::Ata(d), EraseMethod::AtaSecureEraseEnhanced) => {
            d.secure_erase(true, DEVICE_ERASE_LIMIT)
        }
        (Device::Ata(d), EraseMethod::AtaSecureErase) => d.secure_erase(false, DEVICE_ERASE_LIMIT),
        (_, other) => Err(Error::DeviceErase(format!(
            "{} is not a command of this device",
            other.as_str()
        ))),
    }
}

/// Runs a device erase on its own thread and reports progress every few seconds meanwhile:
/// a Format NVM or Sanitize of a big disk takes minutes to hours in one command, and the
/// server counts a silent agent as lost.
fn erase_reporting(
    dev: &Device,
    method: EraseMethod,
    size: u64,
    progress: &mut dyn Progress,
) -> Result<(), Error> {
    std::thread::scope(|s| {
        let erase = s.spawn(|| device_erase(dev, method));
        let mut reported = Ok(());
        let mut last = std::time::Instant::now();
        while !erase.is_finished() {
            if reported.is_ok() && last.elapsed() >= Duration::from_secs(5) {
                reported = progress.report("wiping", 0, size);
                last = std::time::Instant::now();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let done = erase
            .join()
            .unwrap_or_else(|_| Err(Error::DeviceErase("the erase thread panicked".into())));
        // The command cannot be interrupted: a job found gone meanwhile is said afterwards.
        reported.and(done)
    })
}

/// What the disk's controller offers, and the handle for its own erase commands: an NVMe
/// namespace, else a disk that answers ATA IDENTIFY DEVICE, else neither.
pub fn probe(path: &Path) -> (Controller, Option<Device>) {
    if let Some(ns) = Namespace::open(path) {
        return match ns.caps() {
            Ok(c) => (Controller::Nvme(c), Some(Device::Nvme(ns))),
            Err(e) => {
                crate::log!("{}: NVMe Identify failed ({e})", path.display());
                (Controller::Other, None)
            }
        };
    }
    match AtaDisk::open(path) {
        Some(d) => (Controller::Ata(d.identify.security()), Some(Device::Ata(d))),
        None => (Controller::Other, None),
    }
}

/// Wipes one disk of `size` bytes by the first method of `plan` that works and verifies:
/// the device's own erase (through `dev`), discard, or zeros over every byte. Every method
/// passed over is said in the report's `not_used`.
pub fn wipe_disk(
    path: &Path,
    name: &str,
    size: u64,
    plan: &ErasePlan,
    dev: Option<&Device>,
    progress: &mut dyn Progress,
) -> Result<WipedDisk, Error> {
    let samples = sample_offsets(size).len();
    let mut not_used = plan.not_used.clone();
    progress.report("wiping", 0, size)?;
    for &method in &plan.methods {
        let done = match method {
            EraseMethod::Zero => zero_fill(path, size, progress).map(|()| true),
            EraseMethod::Discard => match Command::new("blkdiscard").arg(path).status() {
                Ok(s) if s.success() => Ok(true),
                Ok(s) => Ok(why_not(
                    &mut not_used,
                    method,
                    &format!("blkdiscard failed ({s})"),
                )),
                Err(e) => Ok(why_not(
                    &mut not_used,
                    method,
                    &format!("blkdiscard did not run ({e})"),
                )),
            },
            device => match dev.map(|d| erase_reporting(d, device, size, progress)) {
                Some(Ok(())) => Ok(true),
                Some(Err(e)) => Ok(why_not(&mut not_used, method, &e.to_string())),
                None => Ok(why_not(&mut not_used, method, "no device to command")),
            },
        }?;
        if !done {
            continue;
        }
        drop_caches(path);
        let verification = if method.reads_zero() {
            match first_nonzero(path, size)? {
                None => format!("{samples} sampled 1 MiB blocks read back as zero"),
                Some(at) if method != EraseMethod::Zero => {
                    why_not(
                        &mut not_used,
                        method,
                        &format!("the disk did not read back as zero afterwards (byte {at})"),
                    );
                    continue;
                }
                Some(at) => {
                    return Err(Error::WipeVerify(format!(
                        "{name} still has data at byte {at} after being overwritten with zeros"
                    )))
                }
            }
        } else {
            "a crypto erase leaves ciphertext under a destroyed key; not read back as zero".into()
        };
        progress.report("wiping", size, size)?;
        crate::log!("{name}: erased by {}", method.as_str());
        return Ok(WipedDisk {
            name: name.to_string(),
            size_bytes: size,
            method: method.as_str().to_string(),
            not_used,
            bytes: size,
            verification,
            ..Default::default()
        });
    }
    Err(Error::WipeVerify(format!(
        "{name}: no erase method worked ({})",
        not_used.join("; ")
    )))
}

/// Records why `method` was passed over; false (nothing was erased).
fn why_not(not_used: &mut Vec<String>, method: EraseMethod, why: &str) -> bool {
    crate::log!("{}: {why}; trying the next method", method.as_str());
    not_used.push(format!("{}: {why}", method.as_str()));
    false
}

/// Wipes every non-removable disk sysfs lists, then reads back the samples the server
/// chooses for each.
pub fn run<S: Progress + Challenger>(sys: &Path, server: &mut S) -> Result<WipeResult, Error> {
    let disks: Vec<_> = crate::disks::list(sys)?
        .into_iter()
        .filter(|d| !d.removable && d.info.size_bytes > 0)
        .collect();
    if disks.is_empty() {
        return Err(Error::NoDisk(format!(
            "{} lists no non-removable disk to wipe",
            sys.join("block").display()
        )));
    }
    let mut out = Vec::new();
    for d in disks {
        let path = Path::new("/dev").join(&d.name);
        crate::log!("wiping {} ({} bytes)", path.display(), d.info.size_bytes);
        let (controller, dev) = probe(&path);
        let plan = sanitize::plan(controller);
        crate::log!("{}: {controller:?}; plan {:?}", d.name, plan.methods);
        let wiped = wipe_disk(
            &path,
            &d.name,
            d.info.size_bytes,
            &plan,
            dev.as_ref(),
            server,
        )?;
        // The server matches the report to its inventory by serial (else model and name).
        out.push(WipedDisk {
            model: d.info.model.clone(),
            serial: d.info.serial.clone(),
            ..wiped
        });
    }
    answer_challenge(server, Path::new("/dev"), &mut out)?;
    Ok(WipeResult {
        disks: out,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// Asks the server where to read each wiped disk (under `dev`) back, and records what was
/// read there as the disk's samples.
pub fn answer_challenge(
    server: &mut dyn Challenger,
    dev: &Path,
    wiped: &mut [WipedDisk],
) -> Result<(), Error> {
    let req = ChallengeRequest {
        disks: wiped
            .iter()
            .map(|w| ChallengeDisk {
                name: w.name.clone(),
                size_bytes: w.size_bytes,
            })
            .collect(),
    };
    let challenge = server.challenge(&req)?;
    for w in wiped.iter_mut() {
        let Some(chosen) = challenge.disks.iter().find(|d| d.name == w.name) else {
            continue;
        };
        let path = dev.join(&w.name);
        drop_caches(&path);
        w.samples = hash_ranges(&path, &chosen.ranges)?;
        crate::log!(
            "{}: read back {} samples the server chose",
            w.name,
            w.samples.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoProgress;

    #[test]
    fn samples_cover_first_last_and_spread() {
        let s = sample_offsets(1 << 30);
        assert_eq!(s.len(), 66);
        assert_eq!(s[0], 0);
        assert_eq!(*s.last().expect("samples"), (1 << 30) - MIB);
        assert_eq!(sample_offsets(1000), vec![0]);
    }

    #[test]
    fn a_file_is_zeroed_and_verified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("disk");
        let size = 7 * MIB + 512;
        std::fs::write(&disk, vec![0x5Au8; size as usize]).expect("write");
        assert!(first_nonzero(&disk, size).expect("reads").is_some());
        // blkdiscard refuses a regular file, so this takes the zero path.
        let plan = sanitize::plan(Controller::Other);
        let r = wipe_disk(&disk, "disk", size, &plan, None, &mut NoProgress).expect("wipes");
        assert_eq!(r.method, "zero");
        // Discard was tried (blkdiscard refuses a file, or is missing) and says why it was not used.
        assert!(
            r.not_used.iter().any(|w| w.starts_with("discard:")),
            "{r:?}"
        );
        assert!(r.not_used[0].starts_with("device sanitize"), "{r:?}");
        assert_eq!(r.bytes, size);
        assert!(std::fs::read(&disk).expect("read").iter().all(|&b| b == 0));
    }

    /// Answers a challenge with fixed ranges, as the server would.
    struct Fixed(proto::Challenge);

    impl Challenger for Fixed {
        fn challenge(&mut self, _req: &ChallengeRequest) -> Result<proto::Challenge, Error> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn the_servers_samples_are_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("vda"), vec![0u8; 3 * MIB as usize]).expect("write");
        let range = proto::ByteRange {
            offset: MIB,
            length: 4096,
        };
        let mut server = Fixed(proto::Challenge {
            ranges: Vec::new(),
            disks: vec![proto::DiskRanges {
                name: "vda".into(),
                ranges: vec![range],
            }],
        });
        let mut wiped = vec![WipedDisk {
            name: "vda".into(),
            size_bytes: 3 * MIB,
            ..Default::default()
        }];
        answer_challenge(&mut server, dir.path(), &mut wiped).expect("answers");
        let zeros = hex::encode(<sha2::Sha256 as sha2::Digest>::digest([0u8; 4096]));
        assert_eq!(wiped[0].samples.len(), 1);
        assert_eq!(wiped[0].samples[0].offset, MIB);
        assert_eq!(wiped[0].samples[0].sha256, zeros);
    }
}
