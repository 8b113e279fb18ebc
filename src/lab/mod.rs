//! `rackshare lab`: a virtual rack on one box. A network namespace with a bridge, N QEMU VMs
//! each behind its own virtual BMC (crate `vbmc`, Redfish over QMP), and a `rackshare serve` of
//! the lab's own whose boot services are authoritative on the bridge. Everything the lab makes
//! is written to `STATE_DIR/lab.json` before it is made, so `lab down` can undo a crashed `up`.

mod daemons;
mod demo;
mod net;
mod up;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::output::Format;

/// The lab's namespace; one lab per box.
pub const NETNS: &str = "rackshare-lab";
/// The host end of the veth pair the API forward reaches the lab service through.
pub const HOST_VETH: &str = "rslab-host";
/// The lab service's member API port, inside the namespace (its boot listener on br0 keeps the default 8080).
pub const SERVICE_PORT: u16 = 9090;
/// The lab service's address on the veth, inside the namespace.
pub const SERVICE_VETH_IP: &str = "10.78.1.2";
/// The first vBMC port (127.0.0.1 inside the namespace); lab-N gets BMC_BASE_PORT + N.
pub const BMC_BASE_PORT: u16 = 8200;

/// `rackshare lab …`.
#[derive(Debug, Subcommand)]
pub enum LabCmd {
    /// Build the lab: namespace, bridge, VMs with virtual BMCs, a lab service, the demo image (root)
    Up(UpArgs),
    /// The lab's VMs, BMC URLs, power and machine states, addresses
    Status(StateDirArg),
    /// Remove every VM, namespace, link and process the lab made (idempotent)
    Down(StateDirArg),
    /// (internal) Serve the lab's virtual BMCs; runs inside the namespace
    #[command(hide = true)]
    Bmcs(StateDirArg),
    /// (internal) Forward 127.0.0.1:PORT on the host to the lab service
    #[command(hide = true)]
    Forward {
        #[command(flatten)]
        state: StateDirArg,
        /// Where to listen
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Where to connect
        #[arg(long)]
        to: std::net::SocketAddr,
    },
}

/// The lab's state directory.
#[derive(Debug, Args, Clone)]
pub struct StateDirArg {
    /// Where the lab keeps its records, VM disks, logs and the lab service's data
    #[arg(long, default_value = "rackshare-lab", env = "RACKSHARE_LAB_DIR")]
    pub state_dir: PathBuf,
}

/// Firmware of the lab's VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirmwareChoice {
    /// SeaBIOS
    Bios,
    /// OVMF
    Uefi,
    /// Odd machines BIOS, even ones UEFI
    Mixed,
}

/// QEMU accelerator choice for the lab's VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccelChoice {
    /// KVM if a probe guest really runs under it, else TCG
    Auto,
    /// Software emulation
    Tcg,
    /// Hardware virtualisation
    Kvm,
}

/// `rackshare lab up` options.
#[derive(Debug, Args, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    pub state: StateDirArg,
    /// How many VMs
    #[arg(long, default_value_t = 2)]
    pub machines: u8,
    /// Their firmware
    #[arg(long, value_enum, default_value_t = FirmwareChoice::Mixed)]
    pub firmware: FirmwareChoice,
    /// Each VM's disk
    #[arg(long, default_value_t = 2)]
    pub disk_gib: u32,
    /// Each VM's memory
    #[arg(long, default_value_t = 512)]
    pub memory_mib: u32,
    /// Attach the disk as NVMe instead of virtio
    #[arg(long)]
    pub nvme: bool,
    /// QEMU's accelerator: auto probes KVM (10 s at most) and falls back to TCG
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    pub accel: AccelChoice,
    /// The API forward's port on the host's 127.0.0.1
    #[arg(long, default_value_t = 18080)]
    pub api_port: u16,
    /// Take agent-vmlinuz and agent-initrd.img from this directory instead of building them
    #[arg(long)]
    pub agent_boot_dir: Option<PathBuf>,
    /// The static agent for `agent build` [default: as `agent build` finds it]
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
}

/// One lab VM as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabMachine {
    /// lab-N
    pub name: String,
    /// Its NIC's MAC
    pub mac: String,
    /// bios or uefi
    pub firmware: FirmwareChoice,
    /// Its tap device in the namespace
    pub tap: String,
    /// Its vBMC's port on the namespace's 127.0.0.1
    pub bmc_port: u16,
    /// SMBIOS UUID
    pub uuid: String,
    /// Memory in MiB
    pub memory_mib: u32,
    /// Disk size in GiB
    pub disk_gib: u32,
    /// NVMe or virtio
    pub nvme: bool,
    /// KVM (else TCG)
    pub kvm: bool,
}

impl LabMachine {
    /// The BMC URL the lab service enrols it with.
    pub fn bmc_url(&self) -> String {
        format!(
            "redfish+http://127.0.0.1:{}/redfish/v1/Systems/{}",
            self.bmc_port, self.name
        )
    }
}

/// `STATE_DIR/lab.json`: what the lab made.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LabRecord {
    /// The API on the host
    pub url: String,
    /// The lab service's admin token
    pub token_file: PathBuf,
    /// The VMs
    pub machines: Vec<LabMachine>,
}

impl LabRecord {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("lab.json")
    }

    /// The record, or None when the lab was never brought up.
    pub fn load(state_dir: &Path) -> anyhow::Result<Option<LabRecord>> {
        let p = Self::path(state_dir);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b).with_context(|| format!("reading {}", p.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Writes the record (before the things it names are made).
    pub fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        let p = Self::path(state_dir);
        std::fs::write(&p, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", p.display()))
    }
}

/// The state directory as an absolute path (processes are found by it).
pub fn absolute(state_dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    std::fs::canonicalize(state_dir).with_context(|| format!("resolving {}", state_dir.display()))
}

/// Runs `rackshare lab …`.
pub async fn run(cmd: LabCmd, fmt: Format) -> anyhow::Result<()> {
    match cmd {
        LabCmd::Up(a) => up::up(a).await,
        LabCmd::Status(s) => up::status(&absolute(&s.state_dir)?, fmt).await,
        LabCmd::Down(s) => down(&absolute(&s.state_dir)?),
        LabCmd::Bmcs(s) => daemons::bmcs(&absolute(&s.state_dir)?).await,
        LabCmd::Forward { listen, to, .. } => daemons::forward(listen, to).await,
    }
}

/// `lab down`: every process started for this state directory, then the namespace and the veth.
pub fn down(state_dir: &Path) -> anyhow::Result<()> {
    let stopped = net::stop_processes_of(state_dir)?;
    if stopped > 0 {
        eprintln!("lab: stopped {stopped} processes");
    }
    net::remove_network()?;
    eprintln!("lab: down (namespace {NETNS} and link {HOST_VETH} gone)");
    Ok(())
}
