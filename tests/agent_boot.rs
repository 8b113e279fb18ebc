//! The deploy agent booted for real: the kernel and ramdisk from the real
//! `rackshare agent build`, in QEMU (TCG) on a bridge inside a network namespace, with dnsmasq
//! for DHCP and a small in-test double of the agent API on 10.77.0.1 (the real API is tested end
//! to end elsewhere). The VM writes a 16 MiB image to its blank virtio disk and reports the
//! read-back sha256.

mod common;

use common::agent_boot_files;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::netns::{pseudo_random, require, start_dnsmasq, Lab};

const IMAGE_BYTES: usize = 16 << 20;
const MAC: &str = "52:54:00:a9:00:01";

#[derive(Default)]
struct Seen {
    result: Option<serde_json::Value>,
    phases: Vec<String>,
    claims: usize,
}

struct Api {
    image: Vec<u8>,
    /// Set once the port is known (the claim names the image URL).
    claim: std::sync::OnceLock<serde_json::Value>,
    seen: Mutex<Seen>,
}

fn respond(w: &mut TcpStream, code: &str, body: &str) -> std::io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// What the double's server chooses to have read back: the first 4 KiB and 4 KiB at 1 MiB
/// of a deploy's disk; the first and the last 4 KiB of each wiped disk.
fn challenge_for(body: &str) -> serde_json::Value {
    let req: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let disks: Vec<serde_json::Value> = req["disks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    let size = d["size_bytes"].as_u64().unwrap_or(0);
                    serde_json::json!({"name": d["name"], "ranges": [
                        {"offset": 0, "length": 4096},
                        {"offset": size.saturating_sub(4096), "length": 4096}]})
                })
                .collect()
        })
        .unwrap_or_default();
    let ranges = if disks.is_empty() {
        serde_json::json!([{"offset": 0, "length": 4096}, {"offset": 1 << 20, "length": 4096}])
    } else {
        serde_json::json!([])
    };
    serde_json::json!({"ranges": ranges, "disks": disks})
}

fn handle(api: &Api, stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let (mut len, mut range, mut auth) = (0usize, None, String::new());
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((h, ""));
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().unwrap_or(0),
            "range" => range = Some(v.trim().to_string()),
            "authorization" => auth = v.trim().to_string(),
            _ => {}
        }
    }
    let mut body = vec![0; len.min(1 << 20)];
    r.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut w = stream;
    match (method.as_str(), path.as_str(), auth.as_str()) {
        ("POST", "/api/v1/agent/claim", "Bearer one-time") => {
            api.seen.lock().expect("lock").claims += 1;
            let claim = api.claim.get().cloned().unwrap_or_default();
            respond(&mut w, "200 OK", &claim.to_string())
        }
        ("POST", "/api/v1/agent/progress", "Bearer sess") => {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                let phase = v["phase"].as_str().unwrap_or("").to_string();
                let mut seen = api.seen.lock().expect("lock");
                if seen.phases.last() != Some(&phase) {
                    seen.phases.push(phase);
                }
            }
            write!(w, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        }
        ("POST", "/api/v1/agent/challenge", "Bearer sess") => {
            respond(&mut w, "200 OK", &challenge_for(&body).to_string())
        }
        ("POST", "/api/v1/agent/result", "Bearer sess") => {
            api.seen.lock().expect("lock").result = serde_json::from_str(&body).ok();
            respond(&mut w, "200 OK", r#"{"action":"none"}"#)
        }
        ("GET", "/api/v1/agent/image", "Bearer sess") => {
            let start: usize = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
                .min(api.image.len());
            let rest = &api.image[start..];
            let code = if range.is_some() {
                "206 Partial Content"
            } else {
                "200 OK"
            };
            write!(
                w,
                "HTTP/1.1 {code}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                rest.len()
            )?;
            w.write_all(rest)
        }
        _ => respond(
            &mut w,
            "401 Unauthorized",
            r#"{"error":"unknown token or path"}"#,
        ),
    }
}

/// Binds 10.77.0.1:0 inside the lab's server namespace (from a thread that joined it) and
/// serves the API double from there; the port.
fn serve_in_ns(ns: &str, api: Arc<Api>) -> u16 {
    let ns_path = format!("/var/run/netns/{ns}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns_path).expect("open netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let l = TcpListener::bind("10.77.0.1:0").expect("bind 10.77.0.1");
        tx.send(l.local_addr().expect("addr").port())
            .expect("send port");
        for s in l.incoming().flatten() {
            let api = api.clone();
            std::thread::spawn(move || {
                let _ = handle(&api, s);
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the API double starts")
}

fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// What one boot of the agent reported.
struct Run {
    result: serde_json::Value,
    phases: Vec<String>,
    claims: usize,
    serial: String,
}

/// Boots the agent in a fresh lab with `disk` as its virtio disk (`drive_opts` appended to
/// `-drive`), serves `image` and the claim `task(api_url)`, and waits (bounded) for the result.
/// `inspect` gets the disk back while QEMU still runs. `extra` is appended to QEMU's arguments
/// (more disks).
fn boot_agent(
    what: &str,
    image: Vec<u8>,
    task: impl Fn(&str) -> serde_json::Value,
    disk: &Path,
    drive_opts: &str,
    extra: &[&str],
) -> Run {
    let lab = lab_with_dhcp(what);
    // Built (or found cached) before the clock starts: the first build takes minutes.
    agent_boot_files();
    let api = Arc::new(Api {
        image,
        claim: std::sync::OnceLock::new(),
        seen: Mutex::new(Seen::default()),
    });
    let port = serve_in_ns(&lab.srv, api.clone());
    let api_url = format!("http://10.77.0.1:{port}");
    api.claim.set(task(&api_url)).expect("claim set once");
    let serial = lab.path("serial.log");
    let started = Instant::now();
    start_vm(
        &lab,
        &format!("rackshare.api={api_url} rackshare.mode={what}"),
        disk,
        drive_opts,
        extra,
    );

    // TCG on a shared 2-core box: ~10-20 s expected, 240 s allowed.
    let deadline = started + Duration::from_secs(240);
    let result = loop {
        if let Some(r) = api.seen.lock().expect("lock").result.clone() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no result from the agent within 240 s; serial console:\n{}\nqemu: {}",
            tail(&serial),
            tail(&lab.path("qemu.log"))
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let seen = api.seen.lock().expect("lock");
    eprintln!(
        "{what}: boot to result under TCG {:.1} s; phases {:?}",
        started.elapsed().as_secs_f64(),
        seen.phases
    );
    Run {
        result,
        phases: seen.phases.clone(),
        claims: seen.claims,
        serial: tail(&serial),
    }
    // Dropping the lab stops QEMU and deletes the namespaces.
}

/// A fresh lab with a tap for the VM on its bridge and dnsmasq answering DHCP.
fn lab_with_dhcp(what: &str) -> Lab {
    testkit::netns::must_be_root();
    require("qemu-system-x86_64", "qemu-system-x86");
    let lab = Lab::new(what);
    lab.ip(&lab.srv, "tuntap add tap0 mode tap");
    lab.ip(&lab.srv, "link set tap0 master br0 up");
    start_dnsmasq(&lab);
    lab
}

/// Starts QEMU in `lab` on the real agent kernel and ramdisk, `agent_args` on the kernel
/// command line (a one-time token is added), `disk` as its virtio disk; the console goes to
/// the lab's `serial.log`.
fn start_vm(lab: &Lab, agent_args: &str, disk: &Path, drive_opts: &str, extra: &[&str]) {
    let boot = agent_boot_files();
    let serial = lab.path("serial.log");
    let kernel = boot.join("agent-vmlinuz").display().to_string();
    let initrd = boot.join("agent-initrd.img").display().to_string();
    let append = format!("console=ttyS0 panic=-1 rackshare.token=one-time {agent_args}");
    // A serial, as real disks have: the server matches wipe reports to the inventory by it.
    let drive = format!(
        "file={},format=raw,if=none,id=d0{drive_opts}",
        disk.display()
    );
    let nic = format!("virtio-net-pci,netdev=n0,mac={MAC}");
    let serial_arg = format!("file:{}", serial.display());
    let mut args = vec![
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-m",
        "512",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        &kernel,
        "-initrd",
        &initrd,
        "-append",
        &append,
        "-netdev",
        "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "-device",
        &nic,
        "-drive",
        &drive,
        // QEMU 7.2 takes a serial on the device, not on `-drive`.
        "-device",
        "virtio-blk-pci,drive=d0,serial=RSVM-DISK0",
        "-serial",
        &serial_arg,
    ];
    args.extend_from_slice(extra);
    lab.spawn(&lab.srv, &args, &lab.path("qemu.log"));
}

fn sha_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn the_agent_boots_in_qemu_and_deploys_an_image() {
    let image = pseudo_random(IMAGE_BYTES, 77);
    let image_copy = image.clone();
    let sha = sha_hex(&image);
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(64 << 20))
        .expect("blank disk");
    let run = boot_agent(
        "deploy",
        image,
        |api_url| {
            serde_json::json!({
                "job_id": 41, "session": "sess",
                "task": {"mode": "deploy",
                    "image": {"url": format!("{api_url}/api/v1/agent/image"),
                              "sha256": sha, "size_bytes": IMAGE_BYTES, "format": "raw"},
                    "target_disk": null, "hostname": "vm-1",
                    "ssh_keys": ["ssh-ed25519 AAAAC3Nza test@rackshare"], "user_data": null}
            })
        },
        &disk,
        ",cache=writeback",
        &[],
    );
    let r = &run.result;
    assert_eq!(r["ok"], true, "{r}\n{}", run.serial);
    assert_eq!(r["deploy"]["sha256"], sha.as_str(), "{r}");
    assert_eq!(r["deploy"]["written_bytes"], IMAGE_BYTES as u64);
    assert_eq!(r["deploy"]["target_disk"], "/dev/vda");
    // The challenge is answered from the disk, before the seed.
    let answered = &r["deploy"]["challenge"];
    assert_eq!(answered[0]["sha256"], sha_hex(&image_copy[..4096]), "{r}");
    assert_eq!(
        answered[1]["sha256"],
        sha_hex(&image_copy[1 << 20..(1 << 20) + 4096]),
        "{r}"
    );
    assert_eq!(
        r["deploy"]["seed"], "skipped: no Linux root filesystem on the image",
        "random bytes have no filesystem"
    );
    assert_eq!(run.claims, 1);
    for phase in ["starting", "writing", "verifying", "seeding"] {
        assert!(
            run.phases.iter().any(|p| p == phase),
            "{phase} missing from {:?}",
            run.phases
        );
    }
    let mut on_disk = vec![0u8; IMAGE_BYTES];
    std::fs::File::open(&disk)
        .and_then(|mut f| f.read_exact(&mut on_disk))
        .expect("read the VM's disk");
    assert_eq!(sha_hex(&on_disk), sha, "the disk holds the image");
}

#[test]
fn the_agent_wipes_then_inspects_a_vm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.img");
    let size = 32usize << 20;
    std::fs::write(&disk, pseudo_random(size, 5)).expect("disk full of data");
    // A second disk on QEMU's emulated NVMe controller: the agent erases it with the
    // controller's own command (Format NVM or Sanitize, whichever it advertises).
    let nvme = dir.path().join("nvme.img");
    let nvme_size = 16usize << 20;
    std::fs::write(&nvme, pseudo_random(nvme_size, 6)).expect("NVMe disk full of data");
    let nvme_drive = format!("file={},format=raw,if=none,id=d1", nvme.display());
    // A third on an AHCI controller: the agent reads its IDENTIFY DEVICE data through ATA
    // pass-through; QEMU's IDE disks have no security feature set, so it falls back and says so.
    let sata = dir.path().join("sata.img");
    let sata_size = 8usize << 20;
    std::fs::write(&sata, pseudo_random(sata_size, 7)).expect("SATA disk full of data");
    let sata_drive = format!(
        "file={},format=raw,if=none,id=d2,discard=unmap",
        sata.display()
    );
    let run = boot_agent(
        "wipe",
        Vec::new(),
        |_| serde_json::json!({"job_id": 42, "session": "sess", "task": {"mode": "wipe"}}),
        &disk,
        // QEMU punches holes in the file for the guest's discards, so they read back as zeros.
        ",discard=unmap",
        &[
            "-drive",
            &nvme_drive,
            "-device",
            "nvme,drive=d1,serial=RSVM-NVME0",
            "-drive",
            &sata_drive,
            "-device",
            "ahci,id=ahci0",
            "-device",
            "ide-hd,drive=d2,bus=ahci0.0,serial=RSVM-SATA0",
        ],
    );
    let r = &run.result;
    assert_eq!(r["ok"], true, "{r}\n{}", run.serial);
    let disks = r["wipe"]["disks"].as_array().expect("disks");
    eprintln!("wipe: {r}");
    assert_eq!(disks.len(), 3, "{r}");
    let (nvme_disk, sata_disk, virtio) = (&disks[0], &disks[1], &disks[2]);
    assert_eq!(sata_disk["name"], "sda", "{r}");
    assert!(
        ["discard", "zero"].contains(&sata_disk["method"].as_str().unwrap_or("")),
        "{r}"
    );
    assert_eq!(
        sata_disk["not_used"][0],
        "ATA Secure Erase: security feature set not supported (IDENTIFY DEVICE word 82 bit 1 or word 128 bit 0 clear)",
        "the identify data of the AHCI disk was read and decides the fallback: {r}"
    );
    assert_eq!(virtio["name"], "vda");
    assert_eq!(virtio["size_bytes"], size as u64);
    assert!(
        ["discard", "zero"].contains(&virtio["method"].as_str().unwrap_or("")),
        "{r}"
    );
    assert!(
        virtio["not_used"][0]
            .as_str()
            .unwrap_or("")
            .starts_with("device sanitize"),
        "a virtio disk says why no device erase ran: {r}"
    );
    assert_eq!(
        virtio["verification"], "66 sampled 1 MiB blocks read back as zero",
        "{r}"
    );
    assert_eq!(nvme_disk["name"], "nvme0n1", "{r}");
    assert_eq!(nvme_disk["serial"], "RSVM-NVME0", "{r}");
    let method = nvme_disk["method"].as_str().unwrap_or("");
    assert!(
        [
            "nvme-format",
            "nvme-sanitize-block",
            "nvme-sanitize-crypto",
            "nvme-format-crypto"
        ]
        .contains(&method),
        "the NVMe disk is erased by the controller: {r}\n{}",
        run.serial
    );
    let zeros = sha_hex(&[0u8; 4096]);
    for d in disks {
        let samples = d["samples"].as_array().expect("samples");
        assert_eq!(samples.len(), 2, "{r}");
        assert!(samples.iter().all(|s| s["sha256"] == zeros.as_str()), "{r}");
    }
    assert_eq!(virtio["samples"][1]["offset"], size as u64 - 4096, "{r}");
    assert!(run.phases.iter().any(|p| p == "wiping"), "{:?}", run.phases);
    let after = std::fs::read(&disk).expect("read the VM's disk");
    assert!(
        after.iter().all(|&b| b == 0),
        "every byte of the disk is zero"
    );
    let after = std::fs::read(&sata).expect("read the VM's SATA disk");
    assert!(
        after.iter().all(|&b| b == 0),
        "every byte of the SATA disk is zero"
    );
    let after = std::fs::read(&nvme).expect("read the VM's NVMe disk");
    assert!(
        after.iter().all(|&b| b == 0),
        "every byte of the NVMe disk is zero"
    );

    let run = boot_agent(
        "inspect",
        Vec::new(),
        |_| serde_json::json!({"job_id": 43, "session": "sess", "task": {"mode": "inspect"}}),
        &disk,
        "",
        &[],
    );
    let i = &run.result["inspect"];
    assert_eq!(run.result["ok"], true, "{}\n{}", run.result, run.serial);
    assert_eq!(i["arch"], "x86_64");
    assert_eq!(i["cpu_count"], 1);
    assert!(
        (400..=512).contains(&i["ram_mib"].as_u64().unwrap_or(0)),
        "{i}"
    );
    assert_eq!(i["vendor"], "QEMU", "{i}");
    assert_eq!(
        i["nics"],
        serde_json::json!([{"name": "eth0", "mac": MAC}]),
        "{i}"
    );
    assert_eq!(i["disks"][0]["name"], "vda", "{i}");
    assert_eq!(i["disks"][0]["size_bytes"], size as u64, "{i}");
}

/// A 32 MiB disk: an MBR with one Linux partition at 1 MiB holding ext4 with `/etc`.
fn partitioned_ext4(dir: &Path) -> PathBuf {
    require("mkfs.ext4", "e2fsprogs");
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    std::fs::write(root.join("etc/hostname"), "image\n").expect("write");
    let img = dir.join("image.raw");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(32 << 20))
        .expect("create");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "offset=1048576", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("24M")
        .output()
        .expect("mkfs.ext4");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The MBR by hand (no sfdisk needed): entry 1 = type 0x83, LBA 2048, 24 MiB.
    let mut mbr = [0u8; 512];
    mbr[446 + 4] = 0x83;
    mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    mbr[446 + 12..446 + 16].copy_from_slice(&(24u32 * 2048).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .expect("open");
    f.write_all(&mbr).expect("write mbr");
    img
}

/// `cat PATH` inside the ext4 partition of a disk image, by debugfs (no mount).
fn cat_in_partition(dir: &Path, disk: &Path, path: &str) -> String {
    let part = dir.join("part.img");
    let bytes = std::fs::read(disk).expect("read disk");
    std::fs::write(&part, &bytes[1 << 20..25 << 20]).expect("write partition");
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(&part)
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_agent_deploys_a_qcow2_and_seeds_cloud_init() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = partitioned_ext4(dir.path());
    let raw_bytes = std::fs::read(&raw).expect("read");
    let qcow2 = dir.path().join("image.qcow2");
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .output()
        .expect("qemu-img (qemu-utils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = std::fs::read(&qcow2).expect("read");
    let (sha, size) = (sha_hex(&image), image.len());
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, pseudo_random(64 << 20, 9)).expect("a used disk");
    let run = boot_agent(
        "deploy",
        image,
        |api_url| {
            serde_json::json!({
                "job_id": 44, "session": "sess",
                "task": {"mode": "deploy",
                    "image": {"url": format!("{api_url}/api/v1/agent/image"),
                              "sha256": sha, "size_bytes": size, "format": "qcow2"},
                    "target_disk": "/dev/vda", "hostname": "vm-44",
                    "ssh_keys": ["ssh-ed25519 AAAAC3Nza test@rackshare"],
                    "user_data": "#cloud-config\npackages: [htop]\n"}
            })
        },
        &disk,
        ",cache=writeback",
        &[],
    );
    let r = &run.result;
    assert_eq!(r["ok"], true, "{r}\n{}", run.serial);
    // The hash is of the image as written, before the seed changed the filesystem.
    assert_eq!(r["deploy"]["sha256"], sha_hex(&raw_bytes), "{r}");
    assert_eq!(r["deploy"]["written_bytes"], raw_bytes.len() as u64);
    assert_eq!(
        r["deploy"]["seed"], "written: /dev/vda1 /var/lib/cloud/seed/nocloud",
        "{r}\n{}",
        run.serial
    );
    let md = cat_in_partition(dir.path(), &disk, "/var/lib/cloud/seed/nocloud/meta-data");
    assert_eq!(
        md,
        "instance-id: \"rackshare-job-44\"\nlocal-hostname: \"vm-44\"\n"
    );
    let ud = cat_in_partition(dir.path(), &disk, "/var/lib/cloud/seed/nocloud/user-data");
    assert_eq!(
        ud,
        "#cloud-config\npackages: [htop]\nssh_authorized_keys:\n  - \"ssh-ed25519 AAAAC3Nza test@rackshare\"\n"
    );
}

/// A listener on 10.77.0.1 (any port) inside namespace `ns`: bound from a thread that joined
/// it; the socket stays in that namespace wherever it is used.
fn bind_in_ns(ns: &str) -> TcpListener {
    let ns_path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let f = std::fs::File::open(&ns_path).expect("open netns");
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            TcpListener::bind("10.77.0.1:0").expect("bind 10.77.0.1")
        })
        .join()
        .expect("bind thread")
    })
}

/// What the HTTPS server double saw: connections, and connections that sent request bytes.
#[derive(Default)]
struct TlsSeen {
    connections: usize,
    requests: usize,
}

#[test]
fn the_agent_refuses_a_server_whose_certificate_is_not_the_pinned_one() {
    let lab = lab_with_dhcp("wrongpin");
    // The server's certificate, and the pin of another one on the agent's command line.
    let served = rcgen::generate_simple_self_signed(vec!["10.77.0.1".into()]).expect("cert");
    let other = rcgen::generate_simple_self_signed(vec!["10.77.0.1".into()]).expect("cert");
    let served_fp = pin::fingerprint(served.cert.der());
    let wrong_pin = pin::fingerprint(other.cert.der());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(served.key_pair.serialize_der().into());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![served.cert.der().clone()], key)
        .expect("server config"),
    );
    let listener = bind_in_ns(&lab.srv);
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(TlsSeen::default()));
    let seen_srv = seen.clone();
    std::thread::spawn(move || {
        for mut tcp in listener.incoming().flatten() {
            seen_srv.lock().expect("lock").connections += 1;
            let Ok(mut conn) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
            let mut one = [0u8; 1];
            // A request would be application data after the handshake: the pin must stop
            // the agent before any (its claim carries the boot token).
            if let Ok(n) = rustls::Stream::new(&mut conn, &mut tcp).read(&mut one) {
                if n > 0 {
                    seen_srv.lock().expect("lock").requests += 1;
                }
            }
        }
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(16 << 20))
        .expect("blank disk");
    start_vm(
        &lab,
        &format!(
            "rackshare.api=https://10.77.0.1:{port} rackshare.pin={wrong_pin} rackshare.mode=wipe"
        ),
        &disk,
        "",
        &[],
    );
    let serial = lab.path("serial.log");
    // TCG on a shared 2-core box: ~10-20 s expected, 240 s allowed.
    let deadline = Instant::now() + Duration::from_secs(240);
    let console = loop {
        let s = std::fs::read_to_string(&serial).unwrap_or_default();
        if s.contains("rackshare-agent: idle:") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not stop within 240 s; serial console:\n{}\nqemu: {}",
            tail(&serial),
            tail(&lab.path("qemu.log"))
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let idle = console
        .lines()
        .find(|l| l.contains("rackshare-agent: idle:"))
        .unwrap_or_default();
    assert!(idle.contains("not the pinned"), "{idle}");
    assert!(
        idle.contains(&served_fp),
        "the refusal names the certificate it saw: {idle}"
    );
    let seen = seen.lock().expect("lock");
    assert!(
        seen.connections >= 1,
        "the agent reached the server (refused by the pin, not the network)"
    );
    assert_eq!(seen.requests, 0, "no request (no claim, no token) was sent");
}
