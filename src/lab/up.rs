//! `lab up` (build the lab, step by step, recording each step first) and `lab status`.

use super::daemons::BMC_USER;
use super::net::{self, BRIDGE, BRIDGE_IP};
use super::{
    demo, AccelChoice, FirmwareChoice, LabMachine, LabRecord, UpArgs, BMC_BASE_PORT, NETNS,
    SERVICE_PORT, SERVICE_VETH_IP,
};
use crate::client::{enc, Client};
use crate::output::{self, Format};
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// The demo image's name in the lab service's catalog.
pub const DEMO_IMAGE: &str = "demo";

fn progress(t0: Instant, what: &str) {
    eprintln!("lab [{:>5.1} s] {what}", t0.elapsed().as_secs_f64());
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// KVM when a guest really runs under it, else TCG. On some hosts /dev/kvm opens but guests
/// stall inside iPXE, so the probe boots SeaBIOS+iPXE for a few seconds and looks for iPXE
/// getting as far as DHCP (or giving up on every device) on the serial port.
fn kvm_works(state: &Path) -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    let sercon = state.join("kvm-probe-sercon");
    let log = state.join("kvm-probe.log");
    if std::fs::write(&sercon, [0xf8u8, 0x03]).is_err() {
        return false;
    }
    let _ = std::fs::remove_file(&log);
    let child = std::process::Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-machine", "pc", "-nodefaults", "-display"])
        .args(["none", "-m", "128", "-netdev", "user,id=n0", "-device"])
        .args(["virtio-net-pci,netdev=n0", "-boot", "n", "-serial"])
        .arg(format!("file:{}", log.display()))
        .arg("-fw_cfg")
        .arg(format!("name=etc/sercon-port,file={}", sercon.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ok = false;
    while Instant::now() < deadline && !ok {
        std::thread::sleep(Duration::from_millis(250));
        let text = std::fs::read(&log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        ok = text.contains("Configuring") || text.contains("Boot failed");
    }
    let _ = child.kill();
    let _ = child.wait();
    ok
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn plan_machines(a: &UpArgs, kvm: bool) -> Vec<LabMachine> {
    (1..=a.machines)
        .map(|i| LabMachine {
            name: format!("lab-{i}"),
            mac: format!("52:54:00:1a:b0:{i:02x}"),
            firmware: match a.firmware {
                FirmwareChoice::Mixed if i % 2 == 0 => FirmwareChoice::Uefi,
                FirmwareChoice::Mixed => FirmwareChoice::Bios,
                f => f,
            },
            tap: format!("tap{i}"),
            bmc_port: BMC_BASE_PORT + u16::from(i),
            uuid: format!("1ab0{i:04x}-0000-4000-8000-00000000{i:04x}"),
            memory_mib: a.memory_mib,
            disk_gib: a.disk_gib,
            nvme: a.nvme,
            kvm,
        })
        .collect()
}

fn boot_files(a: &UpArgs, data: &Path) -> anyhow::Result<()> {
    let boot = data.join("boot");
    std::fs::create_dir_all(&boot).with_context(|| format!("creating {}", boot.display()))?;
    let files = ["agent-vmlinuz", "agent-initrd.img"];
    if files.iter().all(|f| boot.join(f).is_file()) {
        return Ok(());
    }
    if let Some(src) = &a.agent_boot_dir {
        for f in files {
            std::fs::copy(src.join(f), boot.join(f))
                .with_context(|| format!("copying {f} from {}", src.display()))?;
        }
        return Ok(());
    }
    crate::agent_build::run(crate::agent_build::BuildArgs {
        data_dir: Some(data.to_path_buf()),
        agent_bin: a.agent_bin.clone(),
        refresh: false,
    })
    .context("building the agent's boot files (rackshare agent build)")
}

async fn wait_for_api(c: &Client, serve_log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if c.get("/api/v1/whoami").await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(serve_log).unwrap_or_default();
            bail!("the lab service did not answer within 60 s; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn read_token(file: &Path) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(t) = std::fs::read_to_string(file) {
            if !t.trim().is_empty() {
                return Ok(t.trim().to_string());
            }
        }
        if Instant::now() > deadline {
            bail!("{} did not appear", file.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `rackshare lab up`; on failure it says how to remove what it made (kept for diagnosis).
pub async fn up(a: UpArgs) -> anyhow::Result<()> {
    let state_dir = a.state.state_dir.clone();
    build(a).await.with_context(|| {
        format!(
            "lab up failed (logs in {0}; `rackshare lab down --state-dir {0}` removes what it made)",
            state_dir.display()
        )
    })
}

async fn build(a: UpArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    if !is_root() {
        bail!("`rackshare lab up` makes a network namespace and tap devices: run it as root");
    }
    if a.machines == 0 || a.machines > 50 {
        bail!("--machines must be 1…50");
    }
    let state = super::absolute(&a.state.state_dir)?;
    if net::namespace_exists() {
        bail!("a lab is already up (namespace {NETNS}): `rackshare lab status`, or `rackshare lab down` first");
    }
    // Leftovers of a crashed `up` (processes, the host veth) go first.
    super::down(&state)?;
    let kvm = match a.accel {
        AccelChoice::Auto => kvm_works(&state),
        AccelChoice::Tcg => false,
        AccelChoice::Kvm => true,
    };
    progress(
        t0,
        if kvm {
            "accelerator: KVM"
        } else {
            "accelerator: TCG (KVM unavailable or not chosen)"
        },
    );
    let data = state.join("data");
    let record = LabRecord {
        url: format!("http://127.0.0.1:{}", a.api_port),
        token_file: data.join("admin-token"),
        machines: plan_machines(&a, kvm),
    };
    record.save(&state)?;
    std::fs::write(state.join("bmc-password"), random_hex(12)?)
        .context("writing the BMC password")?;

    progress(
        t0,
        &format!("network: namespace {NETNS}, bridge {BRIDGE} {BRIDGE_IP}/24"),
    );
    net::create_network()?;
    for m in &record.machines {
        net::add_tap(&m.tap)?;
    }
    let s = |p: &Path| p.display().to_string();
    // An IPv6 router advertisement, as real networks have: iPXE waits ~13 s for one otherwise.
    let ra: Vec<String> = [
        "dnsmasq",
        "-d",
        "--port=0",
        "--conf-file=/dev/null",
        "-u",
        "root",
        "--interface=br0",
        "--bind-interfaces",
        "--enable-ra",
        "--dhcp-range=::,constructor:br0,ra-only",
    ]
    .iter()
    .map(|x| x.to_string())
    .chain([format!("--pid-file={}", s(&state.join("ra.pid")))])
    .collect();
    net::spawn(true, &ra, &state.join("ra.log"))?;

    let me = std::env::current_exe().context("finding this program")?;
    let sd = s(&state);
    progress(
        t0,
        &format!("virtual BMCs for {} VMs", record.machines.len()),
    );
    let bmcs = vec![
        s(&me),
        "lab".into(),
        "bmcs".into(),
        "--state-dir".into(),
        sd.clone(),
    ];
    net::spawn(true, &bmcs, &state.join("bmcs.log"))?;

    progress(t0, "agent boot files (built once, then reused)");
    boot_files(&a, &data)?;

    progress(
        t0,
        "lab service (rackshare serve, boot services authoritative on br0)",
    );
    let serve: Vec<String> = [
        s(&me).as_str(),
        "serve",
        "--data-dir",
        &s(&data),
        "--listen",
        &format!("0.0.0.0:{SERVICE_PORT}"),
        "--pxe-interface",
        BRIDGE,
        "--pxe-mode",
        "authoritative",
        "--pxe-pool",
        "10.78.0.100-10.78.0.199",
        "--pxe-force",
        // The lab's own namespace; its API is reached through the loopback forwarder.
        "--no-tls",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    let serve_log = state.join("serve.log");
    net::spawn(true, &serve, &serve_log)?;
    let forward = vec![
        s(&me),
        "lab".into(),
        "forward".into(),
        "--state-dir".into(),
        sd.clone(),
        "--listen".into(),
        format!("127.0.0.1:{}", a.api_port),
        "--to".into(),
        format!("{SERVICE_VETH_IP}:{SERVICE_PORT}"),
    ];
    net::spawn(false, &forward, &state.join("forward.log"))?;
    let token = read_token(&record.token_file).await?;
    let c = Client::new(&record.url, Some(token.clone()), &Default::default())?;
    wait_for_api(&c, &serve_log).await?;

    progress(t0, "enrolling the VMs with their BMCs (Redfish)");
    let password = std::fs::read_to_string(state.join("bmc-password"))?;
    for m in &record.machines {
        c.post(
            "/api/v1/machines",
            &json!({
                "name": m.name,
                "nics": [{"mac": m.mac, "pxe": true}],
                "bmc": {"url": m.bmc_url(), "username": BMC_USER, "password": password.trim(), "tls_insecure": false},
            }),
        )
        .await
        .with_context(|| format!("enrolling {}", m.name))?;
        c.post(
            &format!("/api/v1/machines/{}/state", enc(&m.name)),
            &json!({"state": "available", "reason": "lab up"}),
        )
        .await
        .with_context(|| format!("making {} available", m.name))?;
    }

    progress(t0, "demo image");
    let img = state.join("demo.raw");
    demo::write(&img)?;
    c.upload(&format!("/api/v1/images?name={DEMO_IMAGE}"), &img)
        .await
        .context("adding the demo image")?;

    progress(t0, "the lab is up");
    println!(
        "export RACKSHARE_URL={} RACKSHARE_TOKEN={token}",
        record.url
    );
    println!("# then, for example:");
    println!("rackshare lab status --state-dir {sd}");
    println!("rackshare lease create --count 1 --duration 2h    # or reimage directly as admin:");
    println!("rackshare reimage lab-1 --image {DEMO_IMAGE} --wait");
    println!("tail -f {sd}/vms/lab-1/serial.log    # watch it boot to a login prompt");
    println!("rackshare lab down --state-dir {sd}");
    Ok(())
}

/// `rackshare lab status`.
pub async fn status(state: &Path, fmt: Format) -> anyhow::Result<()> {
    let record = LabRecord::load(state)?.context("no lab here: run `rackshare lab up`")?;
    let token = std::fs::read_to_string(&record.token_file)
        .ok()
        .map(|t| t.trim().to_string());
    let c = Client::new(&record.url, token, &Default::default())?;
    let leases = c.get("/api/v1/dhcp/leases").await.unwrap_or(Value::Null);
    let mut rows = Vec::new();
    for m in &record.machines {
        let machine = c
            .get(&format!("/api/v1/machines/{}", enc(&m.name)))
            .await
            .unwrap_or(Value::Null);
        let power = c
            .get(&format!("/api/v1/machines/{}/power", enc(&m.name)))
            .await
            .map(|v| v["power_state"].clone())
            .unwrap_or(Value::Null);
        let ip = leases
            .as_array()
            .and_then(|l| l.iter().find(|x| x["mac"] == m.mac.as_str()))
            .map(|x| x["ip"].clone())
            .unwrap_or(Value::Null);
        rows.push(json!({
            "name": m.name,
            "firmware": m.firmware,
            "mac": m.mac,
            "bmc_url": m.bmc_url(),
            "power": power,
            "state": machine["state"],
            "ip": ip,
            "serial_log": state.join("vms").join(&m.name).join("serial.log"),
        }));
    }
    match fmt {
        Format::Json => output::json(&json!({
            "url": record.url,
            "token_file": record.token_file,
            "namespace": NETNS,
            "machines": rows,
        })),
        Format::Table => {
            println!(
                "API {}  (token in {})",
                record.url,
                record.token_file.display()
            );
            output::list(
                fmt,
                &Value::Array(rows),
                &[
                    ("NAME", "name"),
                    ("FIRMWARE", "firmware"),
                    ("POWER", "power"),
                    ("STATE", "state"),
                    ("IP", "ip"),
                    ("MAC", "mac"),
                    ("BMC", "bmc_url"),
                ],
            );
        }
    }
    Ok(())
}
