//! The cloud-init NoCloud seed: after the image is verified, find its Linux root filesystem
//! and write `/var/lib/cloud/seed/nocloud/{meta-data,user-data}` there.

use crate::error::{io, Error};
use proto::Task;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where the seed goes inside the root filesystem.
pub const SEED_DIR: &str = "var/lib/cloud/seed/nocloud";
const FILESYSTEMS: &[&str] = &["ext4", "xfs", "btrfs", "vfat"];
const MOUNTPOINT: &str = "/run/rackshare-seed";

/// YAML double-quoted scalar: JSON's string syntax is a subset of it.
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// `meta-data`: the instance id (changes with every deploy job, so cloud-init runs afresh),
/// the hostname, and the SSH keys when user-data could not carry them.
pub fn meta_data(job_id: i64, hostname: Option<&str>, keys_here: &[String]) -> String {
    let mut s = format!(
        "instance-id: {}\n",
        quoted(&format!("rackshare-job-{job_id}"))
    );
    if let Some(h) = hostname {
        s.push_str(&format!("local-hostname: {}\n", quoted(h)));
    }
    if !keys_here.is_empty() {
        s.push_str("public-keys:\n");
        for k in keys_here {
            s.push_str(&format!("  - {}\n", quoted(k)));
        }
    }
    s
}

/// `user-data` with the SSH keys merged in, and whether the keys still need to go to
/// meta-data (user data that is not cloud-config, or keys written in flow style).
pub fn user_data(keys: &[String], given: Option<&str>) -> (String, bool) {
    let items: String = keys
        .iter()
        .map(|k| format!("  - {}\n", quoted(k)))
        .collect();
    let Some(given) = given else {
        if keys.is_empty() {
            return ("#cloud-config\n{}\n".to_string(), false);
        }
        return (
            format!("#cloud-config\nssh_authorized_keys:\n{items}"),
            false,
        );
    };
    if !given.starts_with("#cloud-config") {
        // A script or MIME multipart: pass it through untouched.
        return (given.to_string(), !keys.is_empty());
    }
    if keys.is_empty() {
        return (given.to_string(), false);
    }
    let lines: Vec<&str> = given.lines().collect();
    if let Some(i) = lines
        .iter()
        .position(|l| l.starts_with("ssh_authorized_keys:"))
    {
        let rest = lines[i]["ssh_authorized_keys:".len()..].trim();
        if rest.is_empty() || rest.starts_with('#') {
            // Block style: add our items right under the key, indented like the first item.
            let indent = lines
                .get(i + 1)
                .filter(|l| l.trim_start().starts_with("- "))
                .map(|l| &l[..l.len() - l.trim_start().len()])
                .unwrap_or("  ");
            let mut out: Vec<String> = lines[..=i].iter().map(|l| l.to_string()).collect();
            out.extend(keys.iter().map(|k| format!("{indent}- {}", quoted(k))));
            out.extend(lines[i + 1..].iter().map(|l| l.to_string()));
            return (out.join("\n") + "\n", false);
        }
        // Flow style (`[a, b]`): leave the text alone and let meta-data carry our keys.
        return (given.to_string(), true);
    }
    let mut out = given.to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("ssh_authorized_keys:\n");
    out.push_str(&items);
    (out, false)
}

/// Writes the two seed files under `root` (a mounted root filesystem).
pub fn write_seed(root: &Path, job_id: i64, task: &Task) -> Result<(), Error> {
    let dir = root.join(SEED_DIR);
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let (ud, keys_in_meta) = user_data(&task.ssh_keys, task.user_data.as_deref());
    let keys_here: &[String] = if keys_in_meta { &task.ssh_keys } else { &[] };
    let md = meta_data(job_id, task.hostname.as_deref(), keys_here);
    for (name, text) in [("meta-data", md), ("user-data", ud)] {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(io(format!("writing {}", p.display())))?;
        let f = std::fs::File::open(&p).map_err(io(format!("opening {}", p.display())))?;
        f.sync_all()
            .map_err(io(format!("flushing {}", p.display())))?;
    }
    Ok(())
}

/// The disk itself, then its partitions (in order), as device paths.
fn candidates(disk: &Path, sys: &Path) -> Vec<PathBuf> {
    let mut out = vec![disk.to_path_buf()];
    let Some(name) = disk.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return out;
    };
    let dir = sys.join("block").join(&name);
    let mut parts: Vec<(u32, String)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n: u32 = std::fs::read_to_string(e.path().join("partition"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((n, e.file_name().to_string_lossy().into_owned()))
        })
        .collect();
    parts.sort();
    let parent = disk.parent().unwrap_or(Path::new("/dev"));
    for (_, p) in parts {
        let dev = parent.join(&p);
        // devtmpfs creates the node shortly after the partition table is re-read.
        let until = Instant::now() + Duration::from_secs(5);
        while !dev.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
        out.push(dev);
    }
    out
}

/// Mounts `dev` read-write with the first filesystem type the kernel accepts.
fn try_mount(dev: &Path, at: &Path) -> Option<&'static str> {
    use nix::mount::{mount, MsFlags};
    FILESYSTEMS
        .iter()
        .find(|fs| mount(Some(dev), at, Some(**fs), MsFlags::empty(), None::<&str>).is_ok())
        .copied()
}

/// Seeds cloud-init on the image just written to `disk`. Finding no Linux root filesystem is
/// not an error (the image may be anything); failing to write into one is.
pub fn seed(disk: &Path, sys: &Path, job_id: i64, task: &Task) -> Result<String, Error> {
    use std::os::unix::fs::FileTypeExt;
    // A regular file (tests, a run by hand) has no partitions to re-read or mount.
    if !std::fs::metadata(disk).is_ok_and(|m| m.file_type().is_block_device()) {
        return Ok(format!("skipped: {} is not a block device", disk.display()));
    }
    // The kernel still has the old partition table; ask it to read the image's.
    match Command::new("blockdev")
        .arg("--rereadpt")
        .arg(disk)
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => crate::log!(
            "blockdev --rereadpt {}: {}",
            disk.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => crate::log!("blockdev did not run: {e}"),
    }
    let mnt = Path::new(MOUNTPOINT);
    std::fs::create_dir_all(mnt).map_err(io(format!("creating {MOUNTPOINT}")))?;
    for dev in candidates(disk, sys) {
        let Some(fs) = try_mount(&dev, mnt) else {
            continue;
        };
        let is_root = mnt.join("etc").is_dir();
        let written = if is_root {
            Some(write_seed(mnt, job_id, task))
        } else {
            None
        };
        if let Err(e) = nix::mount::umount(mnt) {
            crate::log!("unmounting {} from {MOUNTPOINT}: {e}", dev.display());
        }
        nix::unistd::sync();
        match written {
            Some(Ok(())) => {
                crate::log!("seeded {} ({fs})", dev.display());
                // The protocol's wording exactly: the API may show it as is.
                return Ok(format!("written: {} /{SEED_DIR}", dev.display()));
            }
            Some(Err(e)) => return Err(e),
            None => crate::log!(
                "{} ({fs}) has no /etc; not a root filesystem",
                dev.display()
            ),
        }
    }
    Ok("skipped: no Linux root filesystem on the image".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<String> {
        vec![
            "ssh-ed25519 AAAA alice".to_string(),
            "ssh-rsa BBBB bob".to_string(),
        ]
    }

    #[test]
    fn keys_alone_make_a_cloud_config() {
        let (ud, meta) = user_data(&keys(), None);
        assert_eq!(
            ud,
            "#cloud-config\nssh_authorized_keys:\n  - \"ssh-ed25519 AAAA alice\"\n  - \"ssh-rsa BBBB bob\"\n"
        );
        assert!(!meta);
    }

    #[test]
    fn keys_merge_into_given_cloud_config() {
        let given = "#cloud-config\npackages: [htop]\nssh_authorized_keys:\n    - ssh-ed25519 CCCC carol\nruncmd:\n  - echo hi\n";
        let (ud, meta) = user_data(&keys(), Some(given));
        assert!(!meta);
        assert_eq!(
            ud,
            "#cloud-config\npackages: [htop]\nssh_authorized_keys:\n    - \"ssh-ed25519 AAAA alice\"\n    - \"ssh-rsa BBBB bob\"\n    - ssh-ed25519 CCCC carol\nruncmd:\n  - echo hi\n"
        );
        let (ud, _) = user_data(&keys(), Some("#cloud-config\npackages: [htop]"));
        assert!(ud.ends_with("packages: [htop]\nssh_authorized_keys:\n  - \"ssh-ed25519 AAAA alice\"\n  - \"ssh-rsa BBBB bob\"\n"), "{ud}");
    }

    #[test]
    fn scripts_pass_through_and_keys_go_to_meta_data() {
        let (ud, meta) = user_data(&keys(), Some("#!/bin/sh\necho hi\n"));
        assert_eq!(ud, "#!/bin/sh\necho hi\n");
        assert!(meta);
        let (_, meta) = user_data(&keys(), Some("#cloud-config\nssh_authorized_keys: [x]\n"));
        assert!(meta);
        let md = meta_data(7, Some("node-7"), &keys());
        assert_eq!(md, "instance-id: \"rackshare-job-7\"\nlocal-hostname: \"node-7\"\npublic-keys:\n  - \"ssh-ed25519 AAAA alice\"\n  - \"ssh-rsa BBBB bob\"\n");
    }

    #[test]
    fn seed_files_land_in_the_nocloud_dir() {
        let root = tempfile::tempdir().expect("tempdir");
        let task = Task {
            mode: proto::AgentMode::Deploy,
            image: None,
            target_disk: None,
            hostname: Some("node-1".into()),
            ssh_keys: keys(),
            user_data: None,
        };
        write_seed(root.path(), 3, &task).expect("writes");
        let md =
            std::fs::read_to_string(root.path().join(SEED_DIR).join("meta-data")).expect("read");
        assert!(
            md.contains("rackshare-job-3") && md.contains("node-1"),
            "{md}"
        );
        let ud =
            std::fs::read_to_string(root.path().join(SEED_DIR).join("user-data")).expect("read");
        assert!(
            ud.starts_with("#cloud-config\n") && ud.contains("alice"),
            "{ud}"
        );
    }
}
