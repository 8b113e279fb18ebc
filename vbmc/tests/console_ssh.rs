//! The vBMC's serial console over SSH, reached by the bmc crate's Redfish SerialConsole backend
//! (`bmc::serial_ssh`). No VM: the test plays QEMU on the serial socket.
#![allow(clippy::unwrap_used, missing_docs)]

use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vbmc::{Accel, Firmware, VirtualBmc, VirtualMachineSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serial_console_is_offered_over_ssh_with_the_bmc_password() {
    let dir = tempfile::tempdir().unwrap();
    let spec = VirtualMachineSpec {
        name: "lab-7".into(),
        uuid: "5e0f0c1a-7b7e-4d3e-9a55-0c4c2b1a0f07".into(),
        memory_mib: 128,
        vcpus: 1,
        firmware: Firmware::Bios,
        accel: Accel::Tcg,
        disks: Vec::new(),
        nics: Vec::new(),
        serial_socket: dir.path().join("serial.sock"),
        serial_log: dir.path().join("serial.log"),
        cd_drive: false,
    };
    let bmc = VirtualBmc::start(
        spec,
        "127.0.0.1:0".parse().unwrap(),
        "admin",
        "pw",
        dir.path(),
    )
    .await
    .unwrap();

    // Redfish says where: the System's SerialConsole.SSH, and the Manager offers SSH.
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let url = format!("{}{path}", bmc.url());
        let http = http.clone();
        async move {
            http.get(url)
                .basic_auth("admin", Some("pw"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let systems = get("/redfish/v1/Systems").await;
    let system_path = systems["Members"][0]["@odata.id"]
        .as_str()
        .unwrap()
        .to_string();
    let found = bmc::serial_ssh::ssh_console_of(&get(&system_path).await).expect("SSH offered");
    assert_eq!(found.port, bmc.console_ssh_addr().port());
    let manager = get("/redfish/v1/Managers/1").await;
    assert_eq!(
        bmc::serial_ssh::ssh_console_of(&manager).map(|c| c.port),
        Some(22),
        "the Manager's older shape names SSH (the port is on the System)"
    );

    // The test is QEMU: it connects to the serial socket and prints a banner.
    let mut qemu = tokio::net::UnixStream::connect(dir.path().join("serial.sock"))
        .await
        .unwrap();
    qemu.write_all(b"SeaBIOS banner\r\nlogin: ").await.unwrap();

    let refused = bmc::serial_ssh::open("127.0.0.1", found.port, "admin", "wrong").await;
    assert!(
        matches!(refused, Err(bmc::BmcError::AuthFailed { .. })),
        "a wrong password is refused"
    );

    let mut link = bmc::serial_ssh::open("127.0.0.1", found.port, "admin", "pw")
        .await
        .unwrap();
    // The replay shows what came before we connected (bounded wait, not a timing assertion).
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(20), async {
        while !String::from_utf8_lossy(&seen).contains("login: ") {
            let n = link.output.read(&mut buf).await.unwrap();
            assert!(n > 0, "the console closed");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the replay arrives");
    assert!(String::from_utf8_lossy(&seen).contains("SeaBIOS banner"));

    // Keystrokes reach the guest; its answer comes back live.
    link.input.write_all(b"root\r").await.unwrap();
    link.input.flush().await.unwrap();
    let mut typed = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !typed.ends_with(b"root\r") {
            let n = qemu.read(&mut buf).await.unwrap();
            assert!(n > 0, "the serial socket closed");
            typed.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the keystrokes arrive");
    qemu.write_all(b"\r\nPassword: ").await.unwrap();
    let mut more = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !String::from_utf8_lossy(&more).contains("Password: ") {
            let n = link.output.read(&mut buf).await.unwrap();
            assert!(n > 0, "the console closed");
            more.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("live output arrives");
}
