//! The lab's two long-running helpers: the virtual BMCs (inside the namespace) and the API
//! forward (on the host's 127.0.0.1).

use super::{FirmwareChoice, LabRecord};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
use tokio::signal::unix::{signal, SignalKind};
use vbmc::{
    Accel, DiskBus, DiskSpec, Firmware, NicBackend, NicSpec, VirtualBmc, VirtualMachineSpec,
};

/// The BMC user of every lab machine (its password is in `STATE_DIR/bmc-password`).
pub const BMC_USER: &str = "admin";

/// Serves one vBMC per recorded machine on 127.0.0.1 until SIGTERM/SIGINT, then powers the VMs off.
pub async fn bmcs(state_dir: &Path) -> anyhow::Result<()> {
    let record = LabRecord::load(state_dir)?.context("no lab.json: run `rackshare lab up`")?;
    let password = std::fs::read_to_string(state_dir.join("bmc-password"))
        .context("reading the BMC password")?;
    let mut running = Vec::new();
    for m in &record.machines {
        let dir = state_dir.join("vms").join(&m.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let spec = VirtualMachineSpec {
            name: m.name.clone(),
            uuid: m.uuid.clone(),
            memory_mib: m.memory_mib,
            vcpus: 1,
            firmware: match m.firmware {
                FirmwareChoice::Uefi => Firmware::debian_ovmf(),
                _ => Firmware::Bios,
            },
            accel: if m.kvm { Accel::Kvm } else { Accel::Tcg },
            disks: vec![DiskSpec {
                path: dir.join("disk0.img"),
                size_bytes: u64::from(m.disk_gib) << 30,
                serial: format!("LABDISK{}", m.name.trim_start_matches("lab-")),
                bus: if m.nvme {
                    DiskBus::Nvme
                } else {
                    DiskBus::Virtio
                },
            }],
            nics: vec![NicSpec {
                mac: m.mac.clone(),
                backend: NicBackend::Tap(m.tap.clone()),
            }],
            serial_socket: dir.join("serial.sock"),
            serial_log: dir.join("serial.log"),
            cd_drive: true,
        };
        let listen: SocketAddr = ([127, 0, 0, 1], m.bmc_port).into();
        let bmc = VirtualBmc::start(spec, listen, BMC_USER, password.trim(), &dir)
            .await
            .with_context(|| format!("starting the virtual BMC of {}", m.name))?;
        eprintln!("{}: virtual BMC at {}", m.name, bmc.url());
        running.push(bmc);
    }
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    for bmc in running {
        bmc.shutdown().await;
    }
    Ok(())
}

/// Copies bytes between each connection to `listen` and a new connection to `to`.
pub async fn forward(listen: SocketAddr, to: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    loop {
        let (mut inbound, _) = listener.accept().await.context("accepting")?;
        tokio::spawn(async move {
            match tokio::net::TcpStream::connect(to).await {
                Ok(mut outbound) => {
                    // A peer closing mid-stream is normal for HTTP; nothing to report.
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => eprintln!("forward: connecting {to}: {e}"),
            }
        });
    }
}
