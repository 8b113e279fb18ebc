//! What a virtual machine is made of, and the QEMU command line that builds it.

use std::path::{Path, PathBuf};

/// One virtual machine behind a virtual BMC.
#[derive(Clone, Debug)]
pub struct VirtualMachineSpec {
    /// The VM's name; also its Redfish System id (`/redfish/v1/Systems/NAME`).
    pub name: String,
    /// The SMBIOS UUID (`-uuid`), reported as the System's UUID.
    pub uuid: String,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// BIOS or UEFI firmware.
    pub firmware: Firmware,
    /// TCG or KVM.
    pub accel: Accel,
    /// Disks, in the order the guest sees them.
    pub disks: Vec<DiskSpec>,
    /// Network interfaces, in PCI order.
    pub nics: Vec<NicSpec>,
    /// The unix socket the vBMC listens on for QEMU's serial port (QEMU connects to it).
    pub serial_socket: PathBuf,
    /// Every byte of serial output is appended here.
    pub serial_log: PathBuf,
    /// A CD drive for virtual media.
    pub cd_drive: bool,
}

/// The VM's firmware.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS (QEMU's default).
    Bios,
    /// OVMF: read-only code and a template of the variable store, copied once per VM.
    Uefi {
        /// e.g. /usr/share/OVMF/OVMF_CODE_4M.fd
        code: PathBuf,
        /// e.g. /usr/share/OVMF/OVMF_VARS_4M.fd
        vars_template: PathBuf,
    },
}

impl Firmware {
    /// OVMF from Debian's `ovmf` package.
    pub fn debian_ovmf() -> Self {
        Firmware::Uefi {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars_template: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
        }
    }

    /// The Redfish BootSourceOverrideMode this firmware boots in.
    pub fn boot_mode(&self) -> &'static str {
        match self {
            Firmware::Bios => "Legacy",
            Firmware::Uefi { .. } => "UEFI",
        }
    }
}

/// QEMU's accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: works everywhere.
    Tcg,
    /// Hardware virtualisation (needs a working /dev/kvm).
    Kvm,
}

/// One disk: a raw image file.
#[derive(Clone, Debug)]
pub struct DiskSpec {
    /// The raw image; created sparse with `size_bytes` when missing.
    pub path: PathBuf,
    /// Size of a newly created image.
    pub size_bytes: u64,
    /// The serial number the guest (and Redfish) sees; at most 20 characters.
    pub serial: String,
    /// How it is attached.
    pub bus: DiskBus,
}

/// How a disk is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskBus {
    /// virtio-blk-pci
    Virtio,
    /// QEMU's NVMe controller
    Nvme,
}

impl DiskBus {
    /// The Redfish Drive Protocol.
    pub fn protocol(self) -> &'static str {
        match self {
            DiskBus::Virtio => "PCIe",
            DiskBus::Nvme => "NVMe",
        }
    }
}

/// One network interface (virtio-net-pci).
#[derive(Clone, Debug)]
pub struct NicSpec {
    /// `52:54:00:…`
    pub mac: String,
    /// Where its frames go.
    pub backend: NicBackend,
}

/// A NIC's QEMU netdev.
#[derive(Clone, Debug)]
pub enum NicBackend {
    /// An existing tap device (`-netdev tap,ifname=NAME,script=no,downscript=no`).
    Tap(String),
    /// A `-netdev` argument without `id=`, e.g. `user` or `socket,mcast=230.0.0.1:1234`.
    Netdev(String),
}

/// What the machine boots first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootTarget {
    /// The network first.
    Pxe,
    /// The disks first (then the network): also the order without an override.
    Hdd,
    /// The CD first.
    Cd,
}

/// Paths of the per-VM files the vBMC makes in its state directory.
pub(crate) struct StatePaths {
    pub qmp: PathBuf,
    pub vars: PathBuf,
    pub sercon: PathBuf,
    pub media_dir: PathBuf,
}

impl StatePaths {
    pub fn new(state_dir: &Path, name: &str) -> Self {
        StatePaths {
            qmp: state_dir.join(format!("{name}.qmp")),
            vars: state_dir.join(format!("{name}-VARS.fd")),
            sercon: state_dir.join("sercon"),
            media_dir: state_dir.join(format!("{name}-media")),
        }
    }
}

/// Boot priorities (QEMU `bootindex`) of disks, NICs and the CD for a target.
fn boot_indexes(target: BootTarget) -> (u32, u32, u32) {
    // Each class gets a block of 100 so several disks/NICs keep their own order inside it.
    match target {
        BootTarget::Hdd => (100, 200, 300),
        BootTarget::Pxe => (200, 100, 300),
        BootTarget::Cd => (200, 300, 100),
    }
}

/// The QEMU arguments (without the program) for `spec`, booting `target`, CD medium `cd_image`.
pub(crate) fn qemu_args(
    spec: &VirtualMachineSpec,
    paths: &StatePaths,
    target: BootTarget,
    cd_image: Option<&Path>,
) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |parts: &[&str]| a.extend(parts.iter().map(|s| s.to_string()));
    push(&["-name", &spec.name, "-uuid", &spec.uuid]);
    let smbios = format!("type=1,manufacturer=QEMU,serial={}", spec.uuid);
    push(&["-smbios", &smbios]);
    push(&["-machine", "pc", "-nodefaults", "-display", "none"]);
    let accel = match spec.accel {
        Accel::Tcg => "tcg",
        Accel::Kvm => "kvm",
    };
    push(&["-accel", accel]);
    push(&["-m", &spec.memory_mib.to_string()]);
    push(&["-smp", &spec.vcpus.to_string()]);
    let qmp = format!("unix:{},server=on,wait=off", paths.qmp.display());
    push(&["-qmp", &qmp]);
    let serial = format!(
        "socket,id=ser0,path={},server=off",
        spec.serial_socket.display()
    );
    push(&["-chardev", &serial, "-serial", "chardev:ser0"]);
    match &spec.firmware {
        Firmware::Bios => {
            // SeaBIOS and iPXE print to the serial port only when this fw_cfg file says so.
            let sercon = format!("name=etc/sercon-port,file={}", paths.sercon.display());
            push(&["-fw_cfg", &sercon]);
            // Like a server, SeaBIOS retries (resets) when nothing booted, instead of halting.
            push(&["-boot", "reboot-timeout=10000"]);
        }
        Firmware::Uefi { code, .. } => {
            let code = format!("if=pflash,format=raw,readonly=on,file={}", code.display());
            let vars = format!("if=pflash,format=raw,file={}", paths.vars.display());
            push(&["-drive", &code, "-drive", &vars]);
        }
    }
    let (disk_base, nic_base, cd_base) = boot_indexes(target);
    for (i, d) in spec.disks.iter().enumerate() {
        let drive = format!(
            "file={},if=none,id=disk{i},format=raw,cache=writeback",
            d.path.display()
        );
        let model = match d.bus {
            DiskBus::Virtio => "virtio-blk-pci",
            DiskBus::Nvme => "nvme",
        };
        let device = format!(
            "{model},drive=disk{i},id=dev-disk{i},serial={},bootindex={}",
            d.serial,
            disk_base + i as u32
        );
        push(&["-drive", &drive, "-device", &device]);
    }
    for (i, n) in spec.nics.iter().enumerate() {
        let netdev = match &n.backend {
            NicBackend::Tap(name) => format!("tap,id=net{i},ifname={name},script=no,downscript=no"),
            NicBackend::Netdev(arg) => format!("{arg},id=net{i}"),
        };
        let device = format!(
            "virtio-net-pci,netdev=net{i},id=nic{i},mac={},bootindex={}",
            n.mac,
            nic_base + i as u32
        );
        push(&["-netdev", &netdev, "-device", &device]);
    }
    if spec.cd_drive {
        let drive = match cd_image {
            Some(p) => format!(
                "if=none,id=cd0drv,media=cdrom,readonly=on,file={}",
                p.display()
            ),
            None => "if=none,id=cd0drv,media=cdrom,readonly=on".to_string(),
        };
        let device = format!("ide-cd,drive=cd0drv,id=cd0,bootindex={cd_base}");
        push(&["-drive", &drive, "-device", &device]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VirtualMachineSpec {
        VirtualMachineSpec {
            name: "lab-1".into(),
            uuid: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".into(),
            memory_mib: 128,
            vcpus: 1,
            firmware: Firmware::Bios,
            accel: Accel::Tcg,
            disks: vec![DiskSpec {
                path: "/s/d0.img".into(),
                size_bytes: 1 << 20,
                serial: "D0".into(),
                bus: DiskBus::Nvme,
            }],
            nics: vec![NicSpec {
                mac: "52:54:00:00:00:01".into(),
                backend: NicBackend::Tap("tap0".into()),
            }],
            serial_socket: "/s/ser.sock".into(),
            serial_log: "/s/ser.log".into(),
            cd_drive: true,
        }
    }

    #[test]
    fn boot_target_reorders_bootindex() {
        let s = spec();
        let paths = StatePaths::new(Path::new("/s"), &s.name);
        let pxe = qemu_args(&s, &paths, BootTarget::Pxe, None).join(" ");
        assert!(pxe.contains("mac=52:54:00:00:00:01,bootindex=100"), "{pxe}");
        assert!(pxe.contains("nvme,drive=disk0,id=dev-disk0,serial=D0,bootindex=200"));
        let hdd = qemu_args(&s, &paths, BootTarget::Hdd, None).join(" ");
        assert!(hdd.contains("serial=D0,bootindex=100"), "{hdd}");
        let cd = qemu_args(&s, &paths, BootTarget::Cd, Some(Path::new("/m/x.iso"))).join(" ");
        assert!(cd.contains("file=/m/x.iso") && cd.contains("id=cd0,bootindex=100"));
        assert!(pxe.contains("etc/sercon-port") && pxe.contains("-accel tcg"));
    }
}
