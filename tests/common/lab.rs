//! The service inside a lab namespace, and the agent's kernel and ramdisk for VMs there.
#![allow(dead_code)]

use super::server::Service;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

/// `rackshare serve` inside the lab namespace `ns`: the member API on 10.77.0.1:9090 (the
/// service's `url`), boot services on br0 with the boot listener (boot files) on 10.77.0.1:8080
/// ([`LAB_API`]) and the agent API on 10.77.0.1:8443 ([`LAB_AGENT_API`]), proxy mode unless `extra` says otherwise, data in `dir/data`.
pub fn serve_in_lab(ns: &str, dir: tempfile::TempDir, extra: &[&str]) -> Service {
    let mut args: Vec<String> = vec!["serve".into(), "--data-dir".into()];
    args.push(dir.path().join("data").display().to_string());
    args.extend(
        [
            "--listen",
            "10.77.0.1:9090",
            // The lab's private namespace: plain HTTP, as the tests' clients speak it.
            "--no-tls",
            "--pxe-interface",
            "br0",
            "--energy-interval-secs",
            "0",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    Service::spawn_in(Some(ns), dir, args)
}

/// The target directory the test binary lives in.
pub fn target_dir() -> PathBuf {
    // The test binary is TARGET/debug/deps/agent_boot-HASH.
    let exe = std::env::current_exe().expect("test exe");
    exe.ancestors()
        .nth(3)
        .expect("target dir above the test binary")
        .to_path_buf()
}

/// The agent kernel and ramdisk, built once per (agent binary, build code) by `rackshare agent build`.
pub fn agent_boot_files() -> PathBuf {
    // The tests of this file run in parallel; one builds, the others wait and reuse.
    static BUILD: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let target = target_dir();
    let agent = target.join("x86_64-unknown-linux-gnu/release/rackshare-agent");
    let agent_bytes = std::fs::read(&agent).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build the static agent first with scripts/build-agent (scripts/test does)",
            agent.display()
        )
    });
    let mut h = Sha256::new();
    h.update(&agent_bytes);
    h.update(include_bytes!("../../src/agent_build.rs"));
    let key = hex::encode(&h.finalize()[..8]);
    let cache = target.join("agent-boot-cache");
    let data_dir = cache.join(&key);
    let boot = data_dir.join("boot");
    if boot.join("agent-initrd.img").is_file() && boot.join("agent-vmlinuz").is_file() {
        return boot;
    }
    // Builds for older agents are of no further use (26 MiB each).
    for old in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
        if old.file_name() != "debs" && old.file_name() != key.as_str() {
            let _ = std::fs::remove_dir_all(old.path());
        }
    }
    // The .debs are shared between keys, so only the first build ever downloads.
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).expect("mkdir debs");
    std::fs::create_dir_all(data_dir.join("cache")).expect("mkdir cache");
    let link = data_dir.join("cache/agent");
    if !link.exists() {
        std::os::unix::fs::symlink(&debs, &link).expect("symlink the deb cache");
    }
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rackshare"))
        .args(["agent", "build", "--data-dir"])
        .arg(&data_dir)
        .arg("--agent-bin")
        .arg(&agent)
        .output()
        .expect("run rackshare agent build");
    assert!(
        out.status.success(),
        "rackshare agent build failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "rackshare agent build took {:.1} s:\n{}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout)
    );
    boot
}

/// Copies the agent kernel and ramdisk into a boot root (`DATA_DIR/boot`).
pub fn install_agent_boot_files(boot_root: &Path) {
    let src = agent_boot_files();
    std::fs::create_dir_all(boot_root).expect("mkdir boot root");
    for f in ["agent-vmlinuz", "agent-initrd.img"] {
        std::fs::copy(src.join(f), boot_root.join(f)).expect("copy agent boot file");
    }
}

/// Where `serve_in_lab`'s plain-HTTP boot listener answers (boot files and scripts), inside the lab.
pub const LAB_API: &str = "http://10.77.0.1:8080";

/// Where `serve_in_lab`'s agent API answers (HTTPS on `boot-https-port`), inside the lab.
pub const LAB_AGENT_API: &str = "https://10.77.0.1:8443";
