//! Debian packages as building blocks: run a tool, install it when missing, download a
//! `.deb` once into a cache and unpack it. `rackshare agent build` and the lab's demo image
//! are made this way, so a second build is offline.

use anyhow::{anyhow, bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs a command, failing with its stderr; its stdout.
pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `bin` is on PATH (or in /usr/sbin, /sbin).
pub fn have(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(bin).is_file())
}

/// `apt-get ARGS`, refreshing the package lists once if it fails (missing or stale lists).
pub fn apt_get(args: &[&str], cwd: &Path) -> anyhow::Result<()> {
    let attempt = || {
        Command::new("apt-get")
            .args(["-q", "-y"])
            .args(args)
            .current_dir(cwd)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
    };
    let first = attempt().context("running apt-get (is this Debian?)")?;
    if first.status.success() {
        return Ok(());
    }
    eprintln!(
        "apt-get {} failed; updating the package lists and trying again",
        args.join(" ")
    );
    run_cmd(Command::new("apt-get").args(["-q", "update"]))?;
    let second = attempt().context("running apt-get")?;
    if !second.status.success() {
        bail!(
            "apt-get {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&second.stderr).trim()
        );
    }
    Ok(())
}

/// Installs `package` when `bin` is missing.
pub fn ensure_tool(bin: &str, package: &str) -> anyhow::Result<()> {
    if !have(bin) {
        eprintln!("installing {package} (for {bin})");
        apt_get(
            &["install", "--no-install-recommends", package],
            Path::new("/"),
        )?;
    }
    Ok(())
}

/// The cached `.deb` of `package` (the newest if several), downloading it when missing.
pub fn cached_deb(cache: &Path, package: &str, refresh: bool) -> anyhow::Result<PathBuf> {
    let find = || -> anyhow::Result<Option<PathBuf>> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(cache)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .collect();
        found.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        Ok(found.pop())
    };
    if !refresh {
        if let Some(p) = find()? {
            return Ok(p);
        }
    }
    eprintln!("downloading {package}");
    apt_get(&["download", package], cache)?;
    find()?.ok_or_else(|| {
        anyhow!(
            "apt-get download {package} left no .deb in {}",
            cache.display()
        )
    })
}

/// Unpacks a `.deb`'s files into `dir`.
pub fn extract(deb: &Path, dir: &Path) -> anyhow::Result<()> {
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir))?;
    Ok(())
}
