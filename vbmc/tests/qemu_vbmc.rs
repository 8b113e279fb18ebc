//! The virtual BMC with real QEMU VMs (TCG, 128 MiB, no OS), driven by rackshare's own Redfish
//! driver from the `bmc` crate. Heavy: run under /tmp/rackshare-heavy.lock.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::time::{Duration, Instant};

use bmc::{
    BmcError, BmcHandle, BootDevice, BootMode, Controller, Credentials, PowerAction, PowerState,
    TlsPolicy,
};
use serde_json::{json, Value};
use vbmc::{
    Accel, DiskBus, DiskSpec, Firmware, NicBackend, NicSpec, VirtualBmc, VirtualMachineSpec,
};

const USER: &str = "admin";
const PASSWORD: &str = "lab-secret";

fn need(path: &str, package: &str) {
    assert!(
        Path::new(path).exists() || which(path),
        "{path} is missing: install the Debian package {package} (or run scripts/test --setup)"
    );
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

fn spec(dir: &Path, name: &str, firmware: Firmware) -> VirtualMachineSpec {
    need("qemu-system-x86_64", "qemu-system-x86");
    if let Firmware::Uefi { code, .. } = &firmware {
        need(&code.display().to_string(), "ovmf");
    }
    VirtualMachineSpec {
        name: name.into(),
        uuid: "6c1a3a64-8f0e-4c2b-9d53-1f2e3a4b5c6d".into(),
        memory_mib: 128,
        vcpus: 1,
        firmware,
        accel: Accel::Tcg,
        disks: vec![
            DiskSpec {
                path: dir.join("d0.img"),
                size_bytes: 64 << 20,
                serial: "VDISK0".into(),
                bus: DiskBus::Virtio,
            },
            DiskSpec {
                path: dir.join("d1.img"),
                size_bytes: 32 << 20,
                serial: "NVME1".into(),
                bus: DiskBus::Nvme,
            },
        ],
        nics: vec![
            NicSpec {
                mac: "52:54:00:12:34:01".into(),
                backend: NicBackend::Netdev("user".into()),
            },
            NicSpec {
                mac: "52:54:00:12:34:02".into(),
                backend: NicBackend::Netdev("user".into()),
            },
        ],
        serial_socket: dir.join("serial.sock"),
        serial_log: dir.join("serial.log"),
        cd_drive: true,
    }
}

fn policy() -> bmc::Policy {
    bmc::Policy {
        driver: bmc::DriverOptions {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(40),
        },
        op_timeout: Duration::from_secs(60),
        queue_timeout: Duration::from_secs(120),
        attempts: 2,
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        power_deadline: Duration::from_secs(30),
        poll_interval: Duration::from_millis(300),
    }
}

fn handle(ctl: &Controller, v: &VirtualBmc, password: &str) -> BmcHandle {
    ctl.connect(
        &v.bmc_url().parse().unwrap(),
        Credentials::new(USER, password),
        &TlsPolicy::Verify,
    )
    .unwrap()
}

/// A raw Redfish exchange with basic auth; returns status and JSON body (Null when empty).
async fn raw(
    v: &VirtualBmc,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", v.url()))
        .basic_auth(USER, Some(PASSWORD));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get(v: &VirtualBmc, path: &str) -> Value {
    let (status, body) = raw(v, reqwest::Method::GET, path, None).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

async fn qemu_args(v: &VirtualBmc) -> (u32, String) {
    let (pid, args) = v.qemu_process().await.expect("QEMU runs");
    (pid, args.join(" "))
}

async fn query_status(v: &VirtualBmc) -> String {
    let s = v.qmp("query-status", None).await.unwrap();
    s["status"].as_str().unwrap_or_default().to_string()
}

async fn cd_file(v: &VirtualBmc) -> Option<String> {
    let blocks = v.qmp("query-block", None).await.unwrap();
    let cd = blocks
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["device"] == "cd0drv" || b["qdev"] == "cd0")
        .cloned()
        .expect("the CD drive in query-block");
    cd["inserted"]["file"].as_str().map(str::to_string)
}

async fn energy_kwh(v: &VirtualBmc) -> f64 {
    let env = get(v, "/redfish/v1/Chassis/1/EnvironmentMetrics").await;
    env["EnergykWh"]["Reading"].as_f64().unwrap()
}

/// Serves `body` once over HTTP/1.0 on loopback: the lab network's image server, in small.
async fn serve_once(body: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 2048];
        let _ = s.read(&mut buf).await;
        let head = format!(
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
    });
    format!("http://{addr}/images/tiny.iso")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bios_vm_power_boot_inspect_power_media_console_and_auth() {
    let dir = tempfile::tempdir().unwrap();
    let v = VirtualBmc::start(
        spec(dir.path(), "lab-1", Firmware::Bios),
        "127.0.0.1:0".parse().unwrap(),
        USER,
        PASSWORD,
        dir.path(),
    )
    .await
    .unwrap();
    let ctl = Controller::new(policy());
    let h = handle(&ctl, &v, PASSWORD);
    assert_eq!(h.power_state().await.unwrap(), PowerState::Off);

    // Inspection as the driver reads it.
    let info = h.inspect().await.unwrap();
    assert_eq!(info.nic_macs, ["52:54:00:12:34:01", "52:54:00:12:34:02"]);
    let disks: Vec<(Option<String>, Option<u64>)> = info
        .disks
        .iter()
        .map(|d| (d.serial.clone(), d.size_bytes))
        .collect();
    assert_eq!(
        disks,
        [
            (Some("VDISK0".into()), Some(64 << 20)),
            (Some("NVME1".into()), Some(32 << 20))
        ]
    );
    assert_eq!(info.ram_bytes, Some(128 << 20));
    assert_eq!(info.cpu_count, Some(1));
    assert!(info.warnings.is_empty(), "{:?}", info.warnings);
    let sys = get(&v, "/redfish/v1/Systems/lab-1").await;
    assert_eq!(sys["Boot"]["BootSourceOverrideMode"], "Legacy");
    assert_eq!(sys["UUID"], "6c1a3a64-8f0e-4c2b-9d53-1f2e3a4b5c6d");

    // Pxe Once, then power on: the NIC boots first, and the override is used up.
    h.set_boot_device(BootDevice::Pxe, false, BootMode::Unchanged)
        .await
        .unwrap();
    let (console_replay, mut console) = v.console().subscribe();
    assert!(console_replay.is_empty());
    assert_eq!(h.power(PowerAction::On).await.unwrap(), PowerState::On);
    assert_eq!(query_status(&v).await, "running");
    let (pid1, args) = qemu_args(&v).await;
    assert!(
        args.contains("mac=52:54:00:12:34:01,bootindex=100"),
        "{args}"
    );
    assert!(args.contains("serial=VDISK0,bootindex=200"), "{args}");
    let boot = &get(&v, "/redfish/v1/Systems/lab-1").await["Boot"];
    assert_eq!(boot["BootSourceOverrideEnabled"], "Disabled", "{boot}");
    assert_eq!(boot["BootSourceOverrideTarget"], "Pxe");

    // The serial console: SeaBIOS prints its banner, live and into the log.
    let seen = tokio::time::timeout(Duration::from_secs(60), async {
        let mut text = Vec::new();
        while !String::from_utf8_lossy(&text).contains("SeaBIOS") {
            match console.recv().await {
                Ok(bytes) => text.extend(bytes),
                // A slow reader lost bytes: start again from the replay buffer, as a broker would.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let (replay, rx) = v.console().subscribe();
                    text = replay;
                    console = rx;
                }
                Err(e) => panic!("console: {e}"),
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "no SeaBIOS banner on the serial console");
    let log = std::fs::read_to_string(dir.path().join("serial.log")).unwrap_or_default();
    assert!(log.contains("SeaBIOS"), "serial log: {log:?}");
    assert!(String::from_utf8_lossy(&v.console().subscribe().0).contains("SeaBIOS"));
    // Keystrokes reach QEMU while it runs (nothing reads them without an OS, but they go).
    v.console().write(b"\r").await.unwrap();

    // Power readings while on, and a growing energy counter.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let watts = h.power_reading().await.unwrap().expect("a power reading");
    assert!(watts >= vbmc::IDLE_WATTS, "{watts} W");
    let e1 = energy_kwh(&v).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let e2 = energy_kwh(&v).await;
    assert!(e2 > e1 && e1 > 0.0, "energy {e1} then {e2} kWh");

    // Hdd Continuous, then reset: the boot order changed, so QEMU is restarted with it.
    h.set_boot_device(BootDevice::Disk, true, BootMode::Unchanged)
        .await
        .unwrap();
    assert_eq!(h.power(PowerAction::Reset).await.unwrap(), PowerState::On);
    let (pid2, args) = qemu_args(&v).await;
    assert_ne!(pid1, pid2, "a new boot order needs a new process");
    assert!(args.contains("serial=VDISK0,bootindex=100"), "{args}");
    assert!(
        args.contains("mac=52:54:00:12:34:01,bootindex=200"),
        "{args}"
    );
    assert_eq!(query_status(&v).await, "running");
    let boot = &get(&v, "/redfish/v1/Systems/lab-1").await["Boot"];
    assert_eq!(boot["BootSourceOverrideEnabled"], "Continuous");
    // Same order again: a plain system_reset, same process.
    assert_eq!(h.power(PowerAction::Reset).await.unwrap(), PowerState::On);
    assert_eq!(qemu_args(&v).await.0, pid2);

    // Virtual media: a local file, then one fetched over HTTP from loopback; then eject.
    let iso = dir.path().join("tiny.iso");
    std::fs::write(&iso, vec![0u8; 1 << 20]).unwrap();
    let cd = "/redfish/v1/Managers/1/VirtualMedia/Cd";
    let insert = format!("{cd}/Actions/VirtualMedia.InsertMedia");
    let eject = format!("{cd}/Actions/VirtualMedia.EjectMedia");
    let (s, b) = raw(
        &v,
        reqwest::Method::POST,
        &insert,
        Some(json!({ "Image": iso.display().to_string(), "Inserted": true })),
    )
    .await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(cd_file(&v).await.as_deref(), Some(iso.to_str().unwrap()));
    assert_eq!(get(&v, cd).await["Inserted"], true);
    let url = serve_once(vec![7u8; 300_000]).await;
    let (s, b) = raw(
        &v,
        reqwest::Method::POST,
        &insert,
        Some(json!({ "Image": url })),
    )
    .await;
    assert_eq!(s, 204, "{b}");
    let fetched = v.media_path().await.unwrap();
    assert!(fetched.starts_with(dir.path()), "{}", fetched.display());
    assert_eq!(std::fs::metadata(&fetched).unwrap().len(), 300_000);
    assert_eq!(cd_file(&v).await.as_deref(), fetched.to_str());
    let (s, b) = raw(&v, reqwest::Method::POST, &eject, Some(json!({}))).await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(cd_file(&v).await, None);
    assert_eq!(get(&v, cd).await["Inserted"], false);
    // Not from the internet.
    let (s, b) = raw(
        &v,
        reqwest::Method::POST,
        &insert,
        Some(json!({ "Image": "http://example.org/x.iso" })),
    )
    .await;
    assert_eq!(s, 400, "{b}");

    // Unknown properties are refused with a Redfish message.
    let (s, b) = raw(
        &v,
        reqwest::Method::PATCH,
        "/redfish/v1/Systems/lab-1",
        Some(json!({ "Boot": { "BootSourceOverrideTarget": "Pxe", "Colour": "red" } })),
    )
    .await;
    assert_eq!(s, 400);
    assert!(b["error"]["@Message.ExtendedInfo"][0]["MessageId"]
        .as_str()
        .unwrap()
        .ends_with("PropertyUnknown"));

    // Off: QEMU exits, and the power reading drops to 0 W.
    assert_eq!(h.power(PowerAction::Off).await.unwrap(), PowerState::Off);
    assert!(!Path::new(&format!("/proc/{pid2}")).exists());
    assert!(v.qemu_process().await.is_none());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.power_reading().await.unwrap(), Some(0.0));
    let typed = v.console().write(b"x").await;
    assert!(
        matches!(typed, Err(vbmc::ConsoleError::NotConnected)),
        "{typed:?}"
    );

    // Wrong password: 401 with a Redfish error body, and the driver says so.
    let bad = handle(&ctl, &v, "wrong");
    let err = bad.power_state().await.unwrap_err();
    assert!(matches!(err, BmcError::AuthFailed { .. }), "{err}");
    let resp = reqwest::Client::new()
        .get(format!("{}/redfish/v1/Systems", v.url()))
        .basic_auth(USER, Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    h.close().await;
    v.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uefi_vm_boots_ovmf_with_its_own_vars_and_is_killed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let v = VirtualBmc::start(
        spec(dir.path(), "lab-2", Firmware::debian_ovmf()),
        "127.0.0.1:0".parse().unwrap(),
        USER,
        PASSWORD,
        dir.path(),
    )
    .await
    .unwrap();
    assert!(dir.path().join("lab-2-VARS.fd").is_file());
    let ctl = Controller::new(policy());
    let h = handle(&ctl, &v, PASSWORD);
    let sys = get(&v, "/redfish/v1/Systems/lab-2").await;
    assert_eq!(sys["Boot"]["BootSourceOverrideMode"], "UEFI");
    h.set_boot_device(BootDevice::Pxe, false, BootMode::Uefi)
        .await
        .unwrap();
    let t = Instant::now();
    assert_eq!(h.power(PowerAction::On).await.unwrap(), PowerState::On);
    eprintln!("UEFI VM on after {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(query_status(&v).await, "running");
    let (pid, args) = qemu_args(&v).await;
    assert!(
        args.contains("OVMF_CODE_4M.fd") && args.contains("lab-2-VARS.fd"),
        "{args}"
    );
    assert!(
        args.contains("mac=52:54:00:12:34:01,bootindex=100"),
        "{args}"
    );
    // Legacy cannot be asked of a UEFI VM.
    let (s, _) = raw(
        &v,
        reqwest::Method::PATCH,
        "/redfish/v1/Systems/lab-2",
        Some(json!({ "Boot": { "BootSourceOverrideMode": "Legacy" } })),
    )
    .await;
    assert_eq!(s, 400);
    // PowerCycle always gets a new process.
    assert_eq!(h.power(PowerAction::Cycle).await.unwrap(), PowerState::On);
    let (pid2, _) = qemu_args(&v).await;
    assert_ne!(pid, pid2);
    h.close().await;
    // Dropping the vBMC kills its QEMU.
    drop(v);
    let gone = Instant::now();
    while Path::new(&format!("/proc/{pid2}")).exists() && gone.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let zombie_or_gone =
        std::fs::read_to_string(format!("/proc/{pid2}/stat")).map_or(true, |s| s.contains(") Z"));
    assert!(zombie_or_gone, "QEMU {pid2} survived its vBMC");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_from_inside_after_a_one_time_pxe_boot_boots_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path(), "lab-3", Firmware::Bios);
    spec.nics.truncate(1);
    let v = VirtualBmc::start(
        spec,
        "127.0.0.1:0".parse().unwrap(),
        USER,
        PASSWORD,
        dir.path(),
    )
    .await
    .unwrap();
    let ctl = Controller::new(policy());
    let h = handle(&ctl, &v, PASSWORD);
    h.set_boot_device(BootDevice::Pxe, false, BootMode::Unchanged)
        .await
        .unwrap();
    assert_eq!(h.power(PowerAction::On).await.unwrap(), PowerState::On);
    let (pid, args) = qemu_args(&v).await;
    assert!(
        args.contains("mac=52:54:00:12:34:01,bootindex=100"),
        "{args}"
    );
    // Nothing answers PXE with a boot file and the disks are empty, so SeaBIOS gives up and
    // resets the machine itself: that reboot must follow the default order (disk first).
    let t = Instant::now();
    let next = loop {
        match v.qemu_process().await {
            Some((p, args)) if p != pid => break args.join(" "),
            _ if t.elapsed() > Duration::from_secs(150) => {
                let log =
                    std::fs::read_to_string(dir.path().join("serial.log")).unwrap_or_default();
                panic!("no guest reset seen within 150 s; serial: {log}")
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    eprintln!("guest reset after {:.1} s", t.elapsed().as_secs_f64());
    assert!(next.contains("serial=VDISK0,bootindex=100"), "{next}");
    assert!(
        next.contains("mac=52:54:00:12:34:01,bootindex=200"),
        "{next}"
    );
    assert_eq!(h.power_state().await.unwrap(), PowerState::On);
    h.close().await;
    v.shutdown().await;
}
