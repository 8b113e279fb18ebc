//! The lab's network (namespace, bridge, taps, veth) and its processes, made and removed with
//! `ip` and signals.

use super::{HOST_VETH, NETNS, SERVICE_VETH_IP};
use anyhow::{bail, Context};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The bridge inside the namespace and its address (the lab service's boot address).
pub const BRIDGE: &str = "br0";
/// The bridge's IPv4 address.
pub const BRIDGE_IP: &str = "10.78.0.1";
const HOST_VETH_IP: &str = "10.78.1.1";
const NS_VETH: &str = "rslab-ns";

/// Runs a command, failing with its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &str) -> anyhow::Result<String> {
    run(Command::new("ip").args(args.split_whitespace()))
}

fn ip_ns(args: &str) -> anyhow::Result<String> {
    run(Command::new("ip")
        .args(["-n", NETNS])
        .args(args.split_whitespace()))
}

/// True when the lab's namespace exists.
pub fn namespace_exists() -> bool {
    ip("netns list")
        .map(|l| {
            l.lines()
                .any(|n| n.split_whitespace().next() == Some(NETNS))
        })
        .unwrap_or(false)
}

/// The namespace with its bridge (and an IPv6 prefix for the RA), the veth to the host.
pub fn create_network() -> anyhow::Result<()> {
    ip(&format!("netns add {NETNS}"))?;
    ip_ns("link set lo up")?;
    ip_ns(&format!(
        "link add {BRIDGE} type bridge forward_delay 0 stp_state 0"
    ))?;
    ip_ns(&format!("addr add {BRIDGE_IP}/24 dev {BRIDGE}"))?;
    ip_ns(&format!("addr add fd78::1/64 dev {BRIDGE} nodad"))?;
    ip_ns(&format!("link set {BRIDGE} up"))?;
    ip(&format!(
        "link add {HOST_VETH} type veth peer name {NS_VETH} netns {NETNS}"
    ))?;
    ip(&format!("addr add {HOST_VETH_IP}/30 dev {HOST_VETH}"))?;
    ip(&format!("link set {HOST_VETH} up"))?;
    ip_ns(&format!("addr add {SERVICE_VETH_IP}/30 dev {NS_VETH}"))?;
    ip_ns(&format!("link set {NS_VETH} up"))?;
    Ok(())
}

/// A tap device on the bridge for one VM.
pub fn add_tap(name: &str) -> anyhow::Result<()> {
    ip_ns(&format!("tuntap add dev {name} mode tap"))?;
    ip_ns(&format!("link set {name} master {BRIDGE} up"))?;
    Ok(())
}

/// Deletes the namespace (its bridge and taps go with it) and the host veth; absent is fine.
pub fn remove_network() -> anyhow::Result<()> {
    if namespace_exists() {
        ip(&format!("netns del {NETNS}"))?;
    }
    if ip(&format!("link show {HOST_VETH}")).is_ok() {
        // The kernel removes the veth's host end after the namespace asynchronously: it may
        // vanish between the show and the del, which is the outcome we want.
        if let Err(e) = ip(&format!("link del {HOST_VETH}")) {
            if !e.to_string().contains("Cannot find device") {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Starts `args` (inside the namespace when `in_ns`) in its own process group, detached from
/// the terminal, output to `log`; returns its pid.
pub fn spawn(in_ns: bool, args: &[String], log: &Path) -> anyhow::Result<u32> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = if in_ns {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", NETNS]).args(args);
        c
    } else {
        let mut c = Command::new(&args[0]);
        c.args(&args[1..]);
        c
    };
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = cmd.spawn().with_context(|| format!("starting {args:?}"))?;
    Ok(child.id())
}

/// Pids of live processes whose command line names `state_dir` (the lab's services, its
/// vBMC daemon and every QEMU: all are given paths under it).
fn processes_of(state_dir: &Path) -> Vec<i32> {
    let needle = state_dir.display().to_string();
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        // A zombie's command line is empty, so it is not counted.
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // Not the lab's own commands (nor a wrapper such as flock running one).
        let command = [" lab up", " lab down", " lab status"];
        if cmdline.contains(&needle) && !command.iter().any(|c| cmdline.contains(c)) {
            pids.push(pid);
        }
    }
    pids
}

fn signal(pids: &[i32], sig: &str) {
    if pids.is_empty() {
        return;
    }
    let mut c = Command::new("kill");
    c.arg(format!("-{sig}"));
    c.args(pids.iter().map(|p| p.to_string()));
    // A process may end between listing and signalling: that is what we want anyway.
    let _ = c.stderr(Stdio::null()).status();
}

/// SIGTERM to every process of the lab, SIGKILL to those still there after 10 s; how many.
pub fn stop_processes_of(state_dir: &Path) -> anyhow::Result<usize> {
    let first = processes_of(state_dir);
    signal(&first, "TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_of(state_dir);
        if left.is_empty() {
            return Ok(first.len());
        }
        if Instant::now() > deadline {
            signal(&left, "KILL");
            std::thread::sleep(Duration::from_millis(500));
            let still = processes_of(state_dir);
            if !still.is_empty() {
                bail!("lab processes {still:?} do not die");
            }
            return Ok(first.len());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
