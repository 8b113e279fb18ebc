//! `rackshare lab` end to end: `lab up --machines 2 --firmware mixed`, a member leases both
//! machines, reimages them with the demo image, both reach `deployed` and both serials (BIOS
//! and UEFI) show the demo's login prompt; release wipes their NVMe disks by Format NVM and
//! leaves certificates that verify; `lab down` leaves nothing behind.
//! Heavy (QEMU, namespaces): run under the shared lock.

mod common;

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const API_PORT: &str = "18181";

/// Runs `lab down` for its state dir when dropped, so a failing test leaves no lab behind
/// (a later `lab up` would refuse the namespace).
struct LabDown(String);

impl Drop for LabDown {
    fn drop(&mut self) {
        let _ = Command::new(common::BIN)
            .args(["lab", "down", "--state-dir", &self.0])
            .output();
    }
}

fn rackshare(token: &str, args: &[&str]) -> Output {
    Command::new(common::BIN)
        .args(args)
        .env("RACKSHARE_URL", format!("http://127.0.0.1:{API_PORT}"))
        .env("RACKSHARE_TOKEN", token)
        .output()
        .expect("run rackshare")
}

fn ok(token: &str, args: &[&str]) -> String {
    let out = rackshare(token, args);
    assert!(
        out.status.success(),
        "rackshare {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(token: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&ok(token, &a)).expect("json output")
}

fn wait_until(what: &str, limit: Duration, state: &Path, mut probe: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !probe() {
        if t0.elapsed() > limit {
            let log = |f: &str| std::fs::read_to_string(state.join(f)).unwrap_or_default();
            let tail = |s: String| s.chars().rev().take(3000).collect::<Vec<_>>();
            let tail = |s: String| tail(s).into_iter().rev().collect::<String>();
            panic!(
                "{what}: not within {limit:?}\n--- serve\n{}\n--- lab-1 serial\n{}\n--- lab-2 serial\n{}",
                tail(log("serve.log")),
                tail(log("vms/lab-1/serial.log")),
                tail(log("vms/lab-2/serial.log")),
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Processes whose command line names the lab's state directory.
fn lab_processes(state: &Path) -> Vec<String> {
    let needle = state.display().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(&needle) {
                found.push(c);
            }
        }
    }
    found
}

#[test]
fn a_lab_is_brought_up_leased_reimaged_wiped_and_torn_down() {
    testkit::netns::must_be_root();
    let boot = common::agent_boot_files();
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("lab");
    let sd = state.display().to_string();
    let _down = LabDown(sd.clone());
    let t0 = Instant::now();
    let up = Command::new(common::BIN)
        // NVMe disks: the release wipe takes the device's own erase (Format NVM).
        .args([
            "lab",
            "up",
            "--machines",
            "2",
            "--firmware",
            "mixed",
            "--nvme",
        ])
        .args([
            "--disk-gib",
            "1",
            "--memory-mib",
            "448",
            "--api-port",
            API_PORT,
        ])
        .args(["--state-dir", &sd, "--agent-boot-dir"])
        .arg(&boot)
        .output()
        .expect("lab up");
    let printed = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(
        up.status.success(),
        "lab up: {printed}{}",
        String::from_utf8_lossy(&up.stderr)
    );
    eprintln!("lab up took {:.1} s", t0.elapsed().as_secs_f64());
    let admin = printed
        .lines()
        .find_map(|l| l.split("RACKSHARE_TOKEN=").nth(1))
        .expect("an export line with the token")
        .trim()
        .to_string();
    assert!(printed.contains(&format!("RACKSHARE_URL=http://127.0.0.1:{API_PORT}")));
    let status = json(&admin, &["lab", "status", "--state-dir", &sd]);
    assert_eq!(status["url"], format!("http://127.0.0.1:{API_PORT}"));
    assert!(status["token_file"].as_str().is_some(), "{status}");
    assert_eq!(status["machines"].as_array().map(Vec::len), Some(2));

    ok(&admin, &["group", "add", "coop-lab"]);
    ok(
        &admin,
        &[
            "user", "add", "ada", "--role", "member", "--group", "coop-lab",
        ],
    );
    let ada = json(&admin, &["token", "create", "--user", "ada"])["token"]
        .as_str()
        .expect("token")
        .to_string();
    let lease = json(
        &admin,
        &[
            "lease",
            "create",
            "--group",
            "coop-lab",
            "--count",
            "2",
            "--duration",
            "1h",
        ],
    );
    let lease_id = lease["id"].as_i64().expect("lease id").to_string();
    let t1 = Instant::now();
    let reimages: Vec<_> = ["lab-1", "lab-2"]
        .iter()
        .map(|m| {
            Command::new(common::BIN)
                .args(["reimage", m, "--image", "demo"])
                .env("RACKSHARE_URL", format!("http://127.0.0.1:{API_PORT}"))
                .env("RACKSHARE_TOKEN", &ada)
                .output()
                .expect("reimage")
        })
        .collect();
    for r in &reimages {
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    for m in ["lab-1", "lab-2"] {
        wait_until(
            &format!("{m} deployed"),
            Duration::from_secs(420),
            &state,
            || {
                let s = json(&ada, &["machine", "show", m])["state"].clone();
                assert_ne!(s, "failed", "{m} failed");
                s == "deployed"
            },
        );
        eprintln!("{m} deployed after {:.1} s", t1.elapsed().as_secs_f64());
    }
    // The demo image boots under BIOS (lab-1) and UEFI (lab-2) alike.
    for m in ["lab-1", "lab-2"] {
        wait_until(
            &format!("{m}'s demo login prompt"),
            Duration::from_secs(180),
            &state,
            || {
                std::fs::read_to_string(state.join(format!("vms/{m}/serial.log")))
                    .unwrap_or_default()
                    .contains("lab-demo login:")
            },
        );
    }

    ok(&ada, &["lease", "release", &lease_id]);
    for m in ["lab-1", "lab-2"] {
        wait_until(
            &format!("{m} wiped"),
            Duration::from_secs(420),
            &state,
            || {
                let s = json(&admin, &["machine", "show", m])["state"].clone();
                if s == "failed" {
                    let jobs = json(&admin, &["job", "list", "--machine", m, "--limit", "1"]);
                    panic!("{m} failed its wipe: {jobs:#}");
                }
                s == "available"
            },
        );
    }
    // Each wipe left a signed certificate naming the device erase; the member checks one.
    let detail = json(&ada, &["lease", "show", &lease_id]);
    let certs = detail["wipe_certificates"]
        .as_array()
        .expect("certificates");
    assert_eq!(certs.len(), 2, "{detail:#}");
    for c in certs {
        let disk = &c["body"]["disks"][0];
        assert_eq!(disk["method"], "nvme-format", "{c:#}");
        assert_eq!(disk["nist_sp800_88"], "Purge", "{c:#}");
    }
    let cid = certs[0]["id"].as_i64().expect("certificate id").to_string();
    let file = dir.path().join("cert.json").display().to_string();
    ok(&ada, &["certificate", "get", &cid, "-O", &file]);
    assert!(ok(&ada, &["certificate", "verify", &file]).contains("valid"));

    let disk = std::fs::read(state.join("vms/lab-1/disk0.img")).expect("disk");
    assert!(
        disk[..8 << 20].iter().all(|b| *b == 0),
        "the demo image is wiped"
    );

    ok(&admin, &["lab", "down", "--state-dir", &sd]);
    ok(&admin, &["lab", "down", "--state-dir", &sd]); // idempotent
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    assert!(!String::from_utf8_lossy(&netns.stdout).contains("rackshare-lab"));
    let links = Command::new("ip").args(["link"]).output().expect("ip");
    assert!(!String::from_utf8_lossy(&links.stdout).contains("rslab-"));
    assert_eq!(lab_processes(&state), Vec::<String>::new());
}
