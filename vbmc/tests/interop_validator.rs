//! DMTF's Redfish Interop Validator against a vBMC with a running QEMU VM, with the profile of what
//! rackshare needs from a BMC (vbmc/profile/rackshare-bmc.json). It runs offline: the Interop
//! Validator checks the profile's requirements and needs no schema bundle.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use vbmc::{
    Accel, DiskBus, DiskSpec, Firmware, NicBackend, NicSpec, VirtualBmc, VirtualMachineSpec,
};

/// The validator's console script: in $RACKSHARE_VENV/bin (what scripts/test sets up) or on PATH.
fn validator() -> PathBuf {
    let name = "rf_interop_validator";
    let venv = std::env::var_os("RACKSHARE_VENV").map(|v| Path::new(&v).join("bin").join(name));
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    });
    venv.filter(|p| p.is_file()).or(on_path).unwrap_or_else(|| {
        panic!(
            "{name} is missing: install the PyPI package redfish-interop-validator \
             (scripts/test --setup puts it in $RACKSHARE_VENV; or `pip install redfish-interop-validator`)"
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interop_validator_passes_with_rackshares_profile() {
    let validator = validator();
    assert!(
        Path::new("/usr/bin/qemu-system-x86_64").exists(),
        "qemu-system-x86_64 is missing: install the Debian package qemu-system-x86"
    );
    let dir = tempfile::tempdir().unwrap();
    let spec = VirtualMachineSpec {
        name: "lab-1".into(),
        uuid: "0f3c9a7e-1d2b-4c5a-8e6f-7a8b9c0d1e2f".into(),
        memory_mib: 128,
        vcpus: 1,
        firmware: Firmware::Bios,
        accel: Accel::Tcg,
        disks: vec![DiskSpec {
            path: dir.path().join("d0.img"),
            size_bytes: 16 << 20,
            serial: "VDISK0".into(),
            bus: DiskBus::Nvme,
        }],
        nics: vec![NicSpec {
            mac: "52:54:00:ab:cd:01".into(),
            backend: NicBackend::Netdev("user".into()),
        }],
        serial_socket: dir.path().join("serial.sock"),
        serial_log: dir.path().join("serial.log"),
        cd_drive: true,
    };
    let v = VirtualBmc::start(
        spec,
        "127.0.0.1:0".parse().unwrap(),
        "admin",
        "interop-pass",
        dir.path(),
    )
    .await
    .unwrap();
    let on = reqwest::Client::new()
        .post(format!(
            "{}/redfish/v1/Systems/lab-1/Actions/ComputerSystem.Reset",
            v.url()
        ))
        .basic_auth("admin", Some("interop-pass"))
        .json(&serde_json::json!({ "ResetType": "On" }))
        .send()
        .await
        .unwrap();
    assert_eq!(on.status().as_u16(), 204);
    // Two power samples, so the readings are real ones.
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("profile/rackshare-bmc.json");
    let logs = dir.path().join("interop-logs");
    for auth in ["Basic", "Session"] {
        let run = tokio::process::Command::new(&validator)
            .args([
                "--authtype",
                auth,
                "-u",
                "admin",
                "-p",
                "interop-pass",
                "--rhost",
            ])
            .arg(v.url())
            .arg("--logdir")
            .arg(&logs)
            .arg(&profile)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(300), run)
            .await
            .expect("the validator finished within 300 s")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("--- rf_interop_validator ({auth}) ---\n{stdout}\n{stderr}");
        assert!(
            out.status.success(),
            "the Interop Validator failed with {auth} auth (report in {}): {stdout}",
            logs.display()
        );
        assert!(!stdout.contains("FAIL:"), "{stdout}");
    }
    v.shutdown().await;
}
