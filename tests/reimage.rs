//! The heart of the suite: `rackshare reimage --wait` on a real machine. A QEMU VM (TCG) with a
//! blank disk PXE-boots with real firmware on a bridge inside a namespace the test creates; its
//! BMC is sushy-tools' libvirt driver, so rackshare's Redfish power cycle and boot override
//! really boot it; the agent (built by `rackshare agent build`) writes the image. At the end the
//! VM's disk file holds exactly the image, the machine is `deployed`, and the VM boots its disk.
//!
//! BIOS in authoritative mode with a kill -9 of rackshare in the middle of the deploy; UEFI in
//! proxy mode beside dnsmasq, first with a corrupted image (the job fails, the machine is not
//! deployed), then with a good one.

mod common;

use common::{serve_in_lab, Service};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Output;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use testkit::netns::{start_dnsmasq, Lab};
use testkit::vmlab::{
    start_router_advertiser, Firmware, LibvirtDaemon, SushyLibvirt, Vm, VmLab, VmSpec,
};
use testkit::SushyOpts;

/// One TCG guest at a time: two share 2 cores badly and every timeout would have to double.
static ONE_VM: Mutex<()> = Mutex::new(());

const IMAGE_MIB: usize = 64;
const DISK_MARKER: &str = "RACKSHARE-DISK-BOOTED";

/// A raw image whose first sector is a tiny BIOS boot sector printing [`DISK_MARKER`] on the
/// first serial port, so "the VM boots its disk" is something the test can see.
fn bootable_image(len: usize, seed: u64) -> Vec<u8> {
    let mut img = testkit::netns::pseudo_random(len, seed);
    #[rustfmt::skip]
    let code: [u8; 22] = [
        0xFC,                   // cld
        0x31, 0xC0,             // xor ax, ax
        0x8E, 0xD8,             // mov ds, ax
        0xBE, 0x16, 0x7C,       // mov si, msg (0x7c16)
        0xBA, 0xF8, 0x03,       // mov dx, 0x3f8
        0xAC,                   // next: lodsb
        0x84, 0xC0,             // test al, al
        0x74, 0x03,             // jz done
        0xEE,                   // out dx, al
        0xEB, 0xF8,             // jmp next
        0xF4,                   // done: hlt
        0xEB, 0xFD,             // jmp done
    ];
    img[..512].fill(0);
    img[..code.len()].copy_from_slice(&code);
    let msg = format!("\r\n{DISK_MARKER}\r\n\0");
    img[code.len()..code.len() + msg.len()].copy_from_slice(msg.as_bytes());
    img[510] = 0x55;
    img[511] = 0xAA;
    img
}

struct Rig {
    lab: Lab,
    _vmlab: VmLab,
    sushy: SushyLibvirt,
    vm: Vm,
    s: Service,
    serve_args: Vec<String>,
}

fn rig(tag: &str, firmware: Firmware, mac: &str, serve_args: &[&str], with_dnsmasq: bool) -> Rig {
    let r = rig_unenrolled(tag, firmware, mac, serve_args, with_dnsmasq);
    enrol_bmc(&r, tag, true);
    r.s.cli(&["machine", "state", tag, "available"]);
    r
}

/// Gives machine `name` the rig VM's BMC; `add` enrols it first.
fn enrol_bmc(r: &Rig, name: &str, add: bool) {
    let pw = common::write(r.s.dir.path(), "bmc-password", "password");
    let url = r.sushy.system_url(&r.vm.uuid);
    let mut args = vec!["machine", if add { "add" } else { "edit" }, name];
    if add {
        args.extend(["--mac", &r.vm.mac]);
    }
    let pw = pw.display().to_string();
    args.extend([
        "--bmc",
        &url,
        "--bmc-user",
        "admin",
        "--bmc-password-file",
        &pw,
    ]);
    r.s.cli(&args);
}

fn rig_unenrolled(
    tag: &str,
    firmware: Firmware,
    mac: &str,
    serve_args: &[&str],
    with_dnsmasq: bool,
) -> Rig {
    let daemon = LibvirtDaemon::ensure();
    eprintln!("libvirtd ready after {:?}", daemon.ready_after);
    let lab = Lab::new(tag);
    let vmlab = VmLab::new(&lab);
    // A router advertisement, as real networks have: iPXE otherwise waits ~13 s for one.
    start_router_advertiser(&lab);
    if with_dnsmasq {
        start_dnsmasq(&lab);
    }
    let vm = vmlab.define_vm(VmSpec::new(tag, firmware, mac, 256));
    let sushy = SushyLibvirt::start_scoped_in(
        &lab.srv,
        &SushyLibvirt::default_venv(),
        SushyOpts {
            users: vec![("admin".into(), "password".into())],
            tls: None,
        },
        &[&vm.uuid],
    );
    let dir = tempfile::tempdir().expect("tmp");
    common::install_agent_boot_files(&dir.path().join("data").join("boot"));
    let s = serve_in_lab(&lab.srv, dir, serve_args);
    Rig {
        lab,
        _vmlab: vmlab,
        sushy,
        vm,
        s,
        serve_args: serve_args.iter().map(|a| a.to_string()).collect(),
    }
}

fn add_image(s: &Service, name: &str, bytes: &[u8]) -> String {
    let f = s.dir.path().join(format!("{name}.raw"));
    std::fs::write(&f, bytes).expect("write image");
    s.cli(&["image", "add", name, &f.display().to_string()]);
    hex::encode(Sha256::digest(bytes))
}

/// `rackshare reimage NAME --image IMAGE --wait`, bounded.
fn reimage_wait(s: &Service, machine: &str, image: &str) -> std::process::Child {
    let mut c = std::process::Command::new("ip");
    c.args([
        "netns",
        "exec",
        s.netns.as_deref().expect("netns"),
        common::BIN,
    ])
    .args(["reimage", machine, "--image", image, "--wait"])
    .env("RACKSHARE_URL", &s.url)
    // The lab's private namespace speaks plain HTTP.
    .env("RACKSHARE_INSECURE_HTTP", "1")
    .env("RACKSHARE_TOKEN", &s.admin_token)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    c.spawn().expect("spawn reimage")
}

fn finish(child: std::process::Child, limit: Duration, context: impl Fn() -> String) -> Output {
    let pid = child.id();
    let t0 = Instant::now();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    while !waiter.is_finished() {
        if t0.elapsed() > limit {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            panic!("reimage --wait did not end within {limit:?}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    waiter.join().expect("join").expect("wait")
}

fn context(r: &Rig) -> impl Fn() -> String + '_ {
    move || {
        format!(
            "--- serial\n{}\n--- rackshare log (tail)\n{}",
            tail(&r.vm.serial_log(), 4000),
            tail(&r.s.log_text(), 6000)
        )
    }
}

fn tail(s: &str, n: usize) -> String {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    s[start..].to_string()
}

fn job_of(s: &Service, machine: &str) -> serde_json::Value {
    let jobs = s.cli_json(&["job", "list", "--machine", machine]);
    jobs[0].clone()
}

#[tokio::test]
async fn bios_vm_is_reimaged_authoritative_and_survives_a_kill_9_mid_deploy() {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let mac = "52:54:00:e2:e0:01";
    let mut r = rig(
        "e2ebios",
        Firmware::Bios,
        mac,
        &[
            "--pxe-mode",
            "authoritative",
            "--pxe-pool",
            "10.77.0.100-10.77.0.150",
            "--pxe-force",
        ],
        false,
    );
    let image = bootable_image(IMAGE_MIB << 20, 11);
    let sha = add_image(&r.s, "bootable", &image);
    let setup = t0.elapsed();
    let t1 = Instant::now();
    let job = r.s.cli_json(&["reimage", "e2ebios", "--image", "bootable"]);
    let id = job["id"].as_i64().expect("id");

    // Wait until the agent is deploying, then crash rackshare.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let j = r.s.cli_json(&["job", "show", &id.to_string()]);
        // The agent has claimed the job and works (64 MiB take about a second to write under
        // TCG, so the phase may already be past "writing" when we look).
        if j["step"] == "deploy" && j["state"] == "running" {
            break;
        }
        assert_ne!(j["state"], "failed", "{j:#}\n{}", context(&r)());
        assert!(
            Instant::now() < deadline,
            "the agent never started its deploy: {j:#}\n{}",
            context(&r)()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    r.s.kill9();
    std::thread::sleep(Duration::from_secs(3));
    let dir = r.s.take_dir();
    let args: Vec<&str> = r.serve_args.iter().map(String::as_str).collect();
    r.s = serve_in_lab(&r.lab.srv, dir, &args);
    let out = finish(
        reimage_wait(&r.s, "e2ebios", "bootable"),
        Duration::from_secs(60),
        String::new,
    );
    // A second reimage while the first is in progress is refused: following it instead.
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("already has job {id}")));
    let mut follow = std::process::Command::new("ip");
    follow
        .args([
            "netns",
            "exec",
            &r.lab.srv,
            common::BIN,
            "job",
            "wait",
            &id.to_string(),
        ])
        .env("RACKSHARE_URL", &r.s.url)
        .env("RACKSHARE_INSECURE_HTTP", "1")
        .env("RACKSHARE_TOKEN", &r.s.admin_token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = finish(
        follow.spawn().expect("job wait"),
        Duration::from_secs(300),
        context(&r),
    );
    let deploy_time = t1.elapsed();
    assert!(
        out.status.success(),
        "job wait: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        context(&r)()
    );
    let j = r.s.cli_json(&["job", "show", &id.to_string()]);
    assert_eq!(j["state"], "succeeded");
    let logs = r.s.cli(&["job", "logs", &id.to_string()]);
    assert!(logs.contains("after a restart"), "{logs}");
    assert_eq!(
        r.s.cli_json(&["machine", "show", "e2ebios"])["state"],
        "deployed"
    );
    assert_eq!(
        r.vm.disk_sha256((IMAGE_MIB << 20) as u64),
        sha,
        "the disk holds exactly the image"
    );
    // And the VM boots from its disk.
    r.vm.wait_serial(DISK_MARKER, Duration::from_secs(120));
    eprintln!(
        "timing: setup {setup:?}, reimage with a kill -9 {deploy_time:?}, total {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn uefi_vm_in_proxy_mode_refuses_a_corrupt_image_then_deploys_a_good_one() {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let mac = "52:54:00:e2:e0:02";
    let r = rig("e2euefi", Firmware::Uefi, mac, &[], true);
    // Corrupt image: the stored bytes change after the catalog recorded their hash (a bad
    // disk sector, a tampered store).
    let bad = testkit::netns::pseudo_random(8 << 20, 3);
    let bad_sha = add_image(&r.s, "rotten", &bad);
    let blob = find_blob(&r.s.data_dir(), &bad_sha);
    let mut bytes = std::fs::read(&blob).expect("blob");
    bytes[4096] ^= 0xFF;
    std::fs::write(&blob, &bytes).expect("corrupt the blob");
    let out = finish(
        reimage_wait(&r.s, "e2euefi", "rotten"),
        Duration::from_secs(300),
        context(&r),
    );
    assert!(!out.status.success(), "a corrupt image must fail the job");
    let j = job_of(&r.s, "e2euefi");
    assert_eq!(j["state"], "failed");
    let err = j["error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.contains("sha256") || err.contains("hash"),
        "the reason names the hash: {err}"
    );
    assert_eq!(
        r.s.cli_json(&["machine", "show", "e2euefi"])["state"],
        "failed"
    );

    let good = testkit::netns::pseudo_random(IMAGE_MIB << 20, 5);
    let sha = add_image(&r.s, "good", &good);
    let t1 = Instant::now();
    let out = finish(
        reimage_wait(&r.s, "e2euefi", "good"),
        Duration::from_secs(400),
        context(&r),
    );
    assert!(
        out.status.success(),
        "reimage: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        context(&r)()
    );
    eprintln!(
        "timing: UEFI proxy-mode reimage of {IMAGE_MIB} MiB: {:?}",
        t1.elapsed()
    );
    assert_eq!(
        r.s.cli_json(&["machine", "show", "e2euefi"])["state"],
        "deployed"
    );
    assert_eq!(r.vm.disk_sha256((IMAGE_MIB << 20) as u64), sha);
}

/// The stored blob of `sha` (under `images/blobs`: the content index beside it bears the same name).
fn find_blob(data: &Path, sha: &str) -> std::path::PathBuf {
    let mut stack = vec![data.join("images/blobs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().and_then(|n| n.to_str()) == Some(sha)
                && p.parent().is_some_and(|d| d.ends_with("blobs/sha256"))
            {
                return p;
            }
        }
    }
    panic!("no blob for {sha} under {}", data.display());
}

/// Waits (bounded) until `probe` yields.
fn wait_until<T>(what: &str, limit: Duration, r: &Rig, mut probe: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            t0.elapsed() < limit,
            "{what}: not within {limit:?}\n{}",
            context(r)()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test]
async fn a_new_machine_is_inspected_leased_reimaged_by_its_group_and_wiped_on_release() {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let mac = "52:54:00:e2:e0:03";
    let name = "new-525400e2e003";
    let r = rig_unenrolled(
        "e2elife",
        Firmware::Bios,
        mac,
        &[
            "--pxe-mode",
            "authoritative",
            "--pxe-pool",
            "10.77.0.100-10.77.0.150",
            "--pxe-force",
            "--pxe-discovery",
        ],
        false,
    );
    // Someone racks it and presses the power button: it PXE-boots, enrols itself and is
    // inspected by the agent (no BMC known yet: the agent powers it off when done).
    let (code, body) = r.sushy.request(
        "POST",
        &format!(
            "/redfish/v1/Systems/{}/Actions/ComputerSystem.Reset",
            r.vm.uuid
        ),
        Some(&serde_json::json!({"ResetType": "On"})),
    );
    assert!(code < 300, "power on: {code} {body}");
    let m = wait_until("inspection", Duration::from_secs(240), &r, || {
        let m = r.s.cli_json(&["machine", "list", "--mac", mac]);
        (m[0]["state"] == "available").then(|| m[0].clone())
    });
    assert_eq!(m["name"], name);
    assert!(
        m["ram_mib"].as_i64().unwrap_or(0) >= 400,
        "RAM recorded: {m}"
    );
    assert!(
        m["cpu_count"].as_i64().unwrap_or(0) >= 1,
        "CPUs recorded: {m}"
    );
    let disks = m["disks"].to_string();
    assert!(
        disks.contains("268435456"),
        "the 256 MiB disk recorded: {disks}"
    );
    let job = job_of(&r.s, name);
    assert_eq!(
        (job["kind"].as_str(), job["state"].as_str()),
        (Some("inspect"), Some("succeeded")),
        "{job}"
    );

    // Staff give it its BMC and lease it to a group with an SSH key.
    wait_until(
        "the VM powers itself off",
        Duration::from_secs(60),
        &r,
        || (!r.vm.is_running()).then_some(()),
    );
    enrol_bmc(&r, name, false);
    r.s.cli(&["group", "add", "coop-a"]);
    r.s.cli(&["group", "ssh-key", "add", "coop-a", ROSA_KEY]);
    r.s.cli(&[
        "user", "add", "rosa", "--role", "member", "--group", "coop-a",
    ]);
    let rosa = r.s.cli_json(&["token", "create", "--user", "rosa"])["token"]
        .as_str()
        .expect("token")
        .to_string();
    let lease = r.s.cli_json(&[
        "lease",
        "create",
        "--group",
        "coop-a",
        "--count",
        "1",
        "--duration",
        "1h",
    ]);
    let lease_id = lease["id"].as_i64().expect("lease id").to_string();
    assert_eq!(
        r.s.cli_json(&["machine", "show", name])["state"],
        "allocated"
    );

    // The member reimages it with the group's own image: a Linux root filesystem, so the agent
    // writes the cloud-init seed with the group's key into it.
    let img = linux_root_image(&r);
    let as_rosa = |args: &[&str]| {
        let out = r.s.cli_as(&rosa, args);
        assert!(
            out.status.success(),
            "rosa: {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            context(&r)()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    as_rosa(&["image", "add", "rosa-os", &img.display().to_string()]);
    let out = finish(
        {
            let mut c = std::process::Command::new("ip");
            c.args([
                "netns",
                "exec",
                &r.lab.srv,
                common::BIN,
                "reimage",
                name,
                "--image",
                "rosa-os",
                "--wait",
            ])
            .env("RACKSHARE_URL", &r.s.url)
            .env("RACKSHARE_INSECURE_HTTP", "1")
            .env("RACKSHARE_TOKEN", &rosa)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
            c.spawn().expect("reimage as rosa")
        },
        Duration::from_secs(300),
        context(&r),
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        context(&r)()
    );
    assert_eq!(
        r.s.cli_json(&["machine", "show", name])["state"],
        "deployed"
    );
    let seed = debugfs_cat(&r.vm.disk_path, "/var/lib/cloud/seed/nocloud/user-data");
    assert!(
        seed.contains("AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"),
        "the group's key is in the seed: {seed}"
    );
    let meta = debugfs_cat(&r.vm.disk_path, "/var/lib/cloud/seed/nocloud/meta-data");
    assert!(meta.contains(name), "hostname in meta-data: {meta}");

    // The group leaves data behind and hands the machine back early.
    let secret = testkit::netns::pseudo_random(4 << 20, 9);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&r.vm.disk_path)
            .expect("disk");
        f.seek(SeekFrom::Start(100 << 20)).expect("seek");
        f.write_all(&secret).expect("write the group's data");
        f.seek(SeekFrom::Start(200 << 20)).expect("seek");
        f.write_all(&secret).expect("write the group's data");
    }
    as_rosa(&["lease", "release", &lease_id]);

    // The machine is wiped by the agent through its BMC and returns to the pool.
    let m = wait_until("wipe after the lease", Duration::from_secs(300), &r, || {
        let m = r.s.cli_json(&["machine", "show", name]);
        (m["state"] == "available" || m["state"] == "failed").then_some(m)
    });
    assert_eq!(m["state"], "available", "{m}\n{:#}", job_of(&r.s, name));
    let wipe = job_of(&r.s, name);
    assert_eq!(
        (wipe["kind"].as_str(), wipe["state"].as_str()),
        (Some("wipe"), Some("succeeded")),
        "{wipe}"
    );
    let shown = r.s.cli_json(&["lease", "show", &lease_id]);
    assert_eq!(shown["state"], "ended", "{shown}");
    let certs = shown["wipe_certificates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        certs.len(),
        1,
        "one wipe certificate on the ended lease: {shown}"
    );
    assert!(
        certs[0].to_string().contains("vda"),
        "it names the disk: {}",
        certs[0]
    );
    let disk = std::fs::read(&r.vm.disk_path).expect("disk");
    for at in [100usize << 20, 200 << 20] {
        assert!(
            disk[at..at + secret.len()].iter().all(|b| *b == 0),
            "the group's data at {at} is gone"
        );
    }
}

const ROSA_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl rosa@laptop";

/// A 32 MiB whole-disk ext4 image with a Linux-looking root (`/etc`), made without mounting.
fn linux_root_image(r: &Rig) -> std::path::PathBuf {
    testkit::netns::require("mke2fs", "e2fsprogs");
    let root = r.s.dir.path().join("rootfs");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir etc");
    std::fs::write(root.join("etc/hostname"), "template\n").expect("hostname");
    let img = r.s.dir.path().join("rosa-os.raw");
    let out = std::process::Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("32M")
        .output()
        .expect("mke2fs");
    assert!(
        out.status.success(),
        "mke2fs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

/// A file from the ext4 filesystem at the start of `disk`, read with debugfs (no mount).
fn debugfs_cat(disk: &Path, path: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(disk)
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
