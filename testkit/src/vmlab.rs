//! Real VMs behind a real Redfish BMC: QEMU guests defined in libvirt, powered and boot-steered
//! by sushy-tools' libvirt driver, wired into a [`Lab`]'s `br0` so they PXE-boot from whatever
//! serves DHCP/TFTP there.
//!
//! Topology. libvirtd lives in the root network namespace, so its taps (`vnetN`) do too. Each
//! [`VmLab`] makes a root-namespace bridge with no address at all (IPv4 none, IPv6 disabled) and
//! a veth from it into the lab's `srv` namespace, enslaved to `br0`:
//!
//! ```text
//! VM ── vnetN ── rsvXXXN (root ns, no IP) ── rsvXXXNv ══ veth ══ vmlabN ── br0 (srv ns, 10.77.0.1/24)
//! ```
//!
//! Facts this relies on (measured, see shared/LAB-NOTES.md): KVM is broken here, so domains are
//! `type='qemu'` (TCG); PID 1 does not reap orphans, so libvirtd runs under `tini -s`; iPXE waits
//! ~13 s for an IPv6 RA unless one is on the segment ([`start_router_advertiser`]).

use crate::netns::{must_be_root, require, Lab};
use crate::{free_tcp_port, venv_tool, wait_tcp, Proc, SushyOpts};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const LIBVIRT_URI: &str = "qemu:///system";
/// Serialises daemon start-up between parallel test processes (and test binaries).
const LOCK_PATH: &str = "/run/rackshare-test-libvirtd.lock";
/// Our libvirtd's private config, log and persistent domain XML. Outlives any one test: the
/// daemon is shared by every test process on the machine.
const STATE_DIR: &str = "/run/rackshare-test-libvirtd";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Domain names start with this, then `<pid>-`: lets a later run sweep a killed run's leftovers.
const DOMAIN_PREFIX: &str = "rsv-";
/// Interface alias marking links a VmLab made, with the owner's pid (same purpose).
const LINK_ALIAS: &str = "rackshare-vmlab pid=";

/// The Debian packages the libvirt harness needs, named in every "missing" panic.
pub const LIBVIRT_PACKAGES: &str = "libvirt-daemon-system libvirt-daemon-driver-qemu \
     libvirt-clients python3-libvirt tini qemu-utils qemu-system-x86 ovmf ipxe-qemu";

/// Runs a command with a hard time limit (coreutils `timeout`), so no wait is unbounded.
fn run_bounded(argv: &[&str], limit: Duration) -> Output {
    Command::new("timeout")
        .args(["-k", "2", &limit.as_secs().max(1).to_string()])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {argv:?}: {e}"))
}

fn run_ok(argv: &[&str], limit: Duration) -> String {
    let out = run_bounded(argv, limit);
    assert!(
        out.status.success(),
        "{argv:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn virsh(args: &[&str], limit: Duration) -> Output {
    let mut argv = vec!["virsh", "-c", LIBVIRT_URI];
    argv.extend_from_slice(args);
    run_bounded(&argv, limit)
}

fn virsh_ok(args: &[&str], limit: Duration) -> String {
    let mut argv = vec!["virsh", "-c", LIBVIRT_URI];
    argv.extend_from_slice(args);
    run_ok(&argv, limit)
}

fn require_file(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "`{path}` is missing: install the Debian package `{package}` (scripts/test installs it; \
         the libvirt harness needs: {LIBVIRT_PACKAGES})"
    );
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The machine-wide libvirtd that every [`VmLab`] uses.
pub struct LibvirtDaemon {
    /// True when this call started it (false: it was already answering).
    pub started_here: bool,
    /// How long `ensure` took, including the wait for the first `virsh version` answer.
    pub ready_after: Duration,
}

impl LibvirtDaemon {
    /// Makes sure a libvirtd answers on `qemu:///system`, starting one if none does.
    ///
    /// The daemon we start runs in a private mount namespace where our own `qemu.conf` (QEMU as
    /// root, no security driver, no cgroups, no /dev namespace, logs to plain files) and an empty
    /// `/etc/libvirt/qemu` (so no distribution network such as `default`/virbr0 is ever
    /// autostarted) are bind-mounted over the system's: the host's /etc stays untouched. It is
    /// left running for later tests, like a system service would be.
    pub fn ensure() -> LibvirtDaemon {
        let t0 = Instant::now();
        must_be_root();
        require("virsh", "libvirt-clients");
        require("libvirtd", "libvirt-daemon-system");
        require("tini", "tini");
        require("unshare", "util-linux");
        require("setsid", "util-linux");
        require("timeout", "coreutils");
        require("qemu-system-x86_64", "qemu-system-x86");
        require_file(
            "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so",
            "libvirt-daemon-driver-qemu",
        );
        if answers() && (is_ours() || foreign_daemon_usable()) {
            return LibvirtDaemon {
                started_here: false,
                ready_after: t0.elapsed(),
            };
        }
        // Parallel test processes race here: the first takes the lock and starts the daemon,
        // the others wait on the lock and then find it answering.
        // Polled, not blocking, so the wait is bounded even if a holder hangs.
        let mut lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)
            .unwrap_or_else(|e| panic!("opening {LOCK_PATH}: {e}"));
        let _guard = loop {
            match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(guard) => break guard,
                Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                    assert!(
                        t0.elapsed() < Duration::from_secs(120),
                        "{LOCK_PATH} held for over 120 s by another test process starting libvirtd"
                    );
                    lock = file;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err((_, e)) => panic!("locking {LOCK_PATH}: {e}"),
            }
        };
        if answers() {
            if !is_ours() {
                start_virtlogd_for_foreign_daemon();
            }
            return LibvirtDaemon {
                started_here: false,
                ready_after: t0.elapsed(),
            };
        }
        let state = Path::new(STATE_DIR);
        let domains = state.join("qemu");
        std::fs::create_dir_all(&domains).unwrap();
        let conf = state.join("qemu.conf");
        std::fs::write(
            &conf,
            "# Written by rackshare's testkit (vmlab.rs) for its private libvirtd.\n\
             # QEMU as root: reads the root-owned temp dirs as they are, and (measured) every\n\
             # define takes ~11 s under Debian's default user libvirt-qemu, 0.04 s as root.\n\
             user = \"+0\"\n\
             group = \"+0\"\n\
             # Leave the test's files alone (no chown, no ownership xattrs).\n\
             dynamic_ownership = 0\n\
             remember_owner = 0\n\
             # No AppArmor/SELinux confinement, cgroups or private /dev in this container.\n\
             security_driver = \"none\"\n\
             cgroup_controllers = [ ]\n\
             namespaces = [ ]\n\
             # QEMU's output to /var/log/libvirt/qemu/NAME.log directly: no virtlogd needed.\n\
             stdio_handler = \"file\"\n",
        )
        .unwrap();
        let log = state.join("libvirtd.log");
        let script = format!(
            "mount --bind {conf} /etc/libvirt/qemu.conf && \
             mount --bind {domains} /etc/libvirt/qemu && \
             exec 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- && \
             exec tini -s -- libvirtd",
            conf = conf.display(),
            domains = domains.display()
        );
        let out = File::create(&log).unwrap();
        // The daemon outlives this test run, so it must not keep the run's inherited
        // descriptors (a `flock` around the run would stay held by libvirtd for good): the
        // script closes 3-9 before it execs. `setsid -f` forks the daemon into a session of its own and returns at once: a Ctrl-C
        // or a killed test run must not take the shared daemon down, and it is not our child
        // to reap (it outlives this process).
        let status = Command::new("setsid")
            .args([
                "-f",
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
            ])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .status()
            .unwrap_or_else(|e| panic!("starting libvirtd: {e}"));
        assert!(status.success(), "setsid -f unshare … libvirtd: {status}");
        let deadline = Duration::from_secs(60);
        while t0.elapsed() < deadline {
            if answers() {
                return LibvirtDaemon {
                    started_here: true,
                    ready_after: t0.elapsed(),
                };
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "libvirtd did not answer `virsh -c {LIBVIRT_URI} version` within {deadline:?}; its log ({}):\n{}",
            log.display(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

fn answers() -> bool {
    virsh(&["version"], Duration::from_secs(10))
        .status
        .success()
}

/// Whether the answering libvirtd is the one `ensure` starts: its mount namespace has our
/// qemu.conf bind-mounted (found through the pid file libvirtd keeps).
fn is_ours() -> bool {
    let Ok(pid) = std::fs::read_to_string("/run/libvirtd.pid") else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{}/mountinfo", pid.trim()))
        .is_ok_and(|m| m.lines().any(|l| l.contains(" /etc/libvirt/qemu.conf ")))
}

const VIRTLOGD_SOCK: &str = "/run/libvirt/virtlogd-sock";

/// True when a libvirtd we did not start can run our VMs without a start-up under the lock.
fn foreign_daemon_usable() -> bool {
    virtlogd_answers()
}

/// Connects rather than checking the path: a killed virtlogd leaves its socket file behind.
fn virtlogd_answers() -> bool {
    std::os::unix::net::UnixStream::connect(VIRTLOGD_SOCK).is_ok()
}

/// Someone else's libvirtd (Debian's default qemu.conf) answers: the domains' per-domain DAC
/// label (`+0:+0`) still runs QEMU as root, but its `stdio_handler = "logd"` needs virtlogd, and
/// without it every start fails with "Failed to connect socket to '/run/libvirt/virtlogd-sock'".
/// Measured with that config: `virsh define` and sushy's PATCH Boot take 8–16 s each (20–100 ms
/// with ours), and the BIOS test passes in 45 s instead of 8 s.
fn start_virtlogd_for_foreign_daemon() {
    eprintln!(
        "testkit::vmlab: using a libvirtd not started by testkit (no vmlab qemu.conf): defines \
         take ~11 s each there (Debian's default user libvirt-qemu)"
    );
    if virtlogd_answers() {
        return;
    }
    require("virtlogd", "libvirt-daemon-system");
    std::fs::create_dir_all(STATE_DIR).unwrap();
    let log = Path::new(STATE_DIR).join("virtlogd.log");
    let out = File::create(&log).unwrap();
    let status = Command::new("setsid")
        .args(["-f", "tini", "-s", "--", "virtlogd"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap_or_else(|e| panic!("starting virtlogd: {e}"));
    assert!(status.success(), "setsid -f tini -s -- virtlogd: {status}");
    let t0 = Instant::now();
    while !virtlogd_answers() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "virtlogd did not create {VIRTLOGD_SOCK} within 15 s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Firmware of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS, then iPXE from the virtio NIC's option ROM (Debian `ipxe-qemu`).
    Bios,
    /// OVMF (Debian `ovmf`) with its own native PXE: the NIC's iPXE ROM is disabled.
    Uefi,
}

/// What [`VmLab::define_vm`] makes.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Short tag for the domain name (`rsv-<pid>-<lab>-<n>-<tag>`).
    pub name_tag: String,
    pub firmware: Firmware,
    /// The NIC's MAC, e.g. "52:54:00:12:34:56".
    pub mac: String,
    /// Size of the blank raw disk.
    pub disk_mib: u64,
    pub ram_mib: u64,
}

impl VmSpec {
    /// 512 MiB of RAM (enough for iPXE and a small ramdisk; LAB-NOTES: ~300 MB used per VM).
    pub fn new(name_tag: &str, firmware: Firmware, mac: &str, disk_mib: u64) -> VmSpec {
        VmSpec {
            name_tag: name_tag.to_string(),
            firmware,
            mac: mac.to_string(),
            disk_mib,
            ram_mib: 512,
        }
    }
}

static VMLAB_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A root-namespace bridge patched into a [`Lab`]'s `br0`, and the libvirt domains on it.
/// Dropping it destroys and undefines the domains, then deletes the links.
pub struct VmLab {
    /// The root-namespace bridge the VMs' taps join (no IP address).
    pub bridge: String,
    veth_root: String,
    /// The veth end inside the lab's `srv` namespace, enslaved to `br0`.
    pub veth_srv: String,
    index: usize,
    domains: Mutex<Vec<String>>,
    vms: AtomicUsize,
}

impl VmLab {
    /// Needs a running libvirtd: call [`LibvirtDaemon::ensure`] first (this does it too).
    pub fn new(lab: &Lab) -> VmLab {
        LibvirtDaemon::ensure();
        sweep_leftovers();
        let pid = std::process::id();
        let secs = Duration::from_secs(10);
        // Names are short (IFNAMSIZ is 15), so two live processes can share `pid % 1000`: never
        // delete an existing link of that name (it may be theirs; a dead run's were swept
        // above), take the next counter value instead. `ip link add` failing on an existing
        // name is the atomic test.
        let mut attempts = 0;
        let (n, bridge) = loop {
            let n = VMLAB_COUNTER.fetch_add(1, Ordering::SeqCst);
            // "rsv" + 3 digits + n, and the root veth end adds "v": ≤ 15 with n < 100000.
            let bridge = format!("rsv{:03}{n}", pid % 1000);
            assert!(bridge.len() < 15, "interface name {bridge} too long");
            let out = run_bounded(
                &[
                    "ip",
                    "link",
                    "add",
                    &bridge,
                    "type",
                    "bridge",
                    "forward_delay",
                    "0",
                    "stp_state",
                    "0",
                ],
                secs,
            );
            if out.status.success() {
                break (n, bridge);
            }
            attempts += 1;
            assert!(
                attempts < 20,
                "cannot create a bridge named like {bridge}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let veth_root = format!("{bridge}v");
        let veth_srv = format!("vmlab{n}");
        // From here on, a panic drops `vl`, which deletes what exists.
        let vl = VmLab {
            bridge: bridge.clone(),
            veth_root: veth_root.clone(),
            veth_srv: veth_srv.clone(),
            index: n,
            domains: Mutex::new(Vec::new()),
            vms: AtomicUsize::new(0),
        };
        let alias = format!("{LINK_ALIAS}{pid}");
        run_ok(&["ip", "link", "set", &bridge, "alias", &alias], secs);
        run_ok(
            &[
                "ip", "link", "add", &veth_root, "type", "veth", "peer", "name", &veth_srv,
                "netns", &lab.srv,
            ],
            secs,
        );
        run_ok(&["ip", "link", "set", &veth_root, "alias", &alias], secs);
        // No address of any kind on root-namespace links: IPv4 is never configured, and IPv6
        // is disabled before the link goes up so it gets no link-local address and cannot
        // autoconfigure from the RAs the lab sends. The host's stack never talks on this segment.
        for dev in [&bridge, &veth_root] {
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1")
                .unwrap_or_else(|e| panic!("disabling IPv6 on {dev}: {e}"));
        }
        run_ok(&["ip", "link", "set", &veth_root, "master", &bridge], secs);
        run_ok(&["ip", "link", "set", &bridge, "up"], secs);
        run_ok(&["ip", "link", "set", &veth_root, "up"], secs);
        lab.ip(&lab.srv, &format!("link set {veth_srv} master br0 up"));
        vl
    }

    /// Creates a blank disk and defines (does not start) a domain on this lab's bridge.
    pub fn define_vm(&self, spec: VmSpec) -> Vm {
        let n = self.vms.fetch_add(1, Ordering::SeqCst);
        let name = format!(
            "{DOMAIN_PREFIX}{}-{}-{n}-{}",
            std::process::id(),
            self.index,
            spec.name_tag
        );
        let dir = tempfile::Builder::new()
            .prefix("rackshare-vm-")
            .tempdir()
            .unwrap();
        let disk_path = dir.path().join("disk.raw");
        // Sparse: a blank disk costs nothing until the guest writes to it.
        File::create(&disk_path)
            .unwrap()
            .set_len(spec.disk_mib * 1024 * 1024)
            .unwrap();
        let serial_path = dir.path().join("serial.log");
        File::create(&serial_path).unwrap();
        let mut os_extra = String::new();
        let mut rom = "";
        let mut qemu_args = String::new();
        let machine = match spec.firmware {
            Firmware::Bios => {
                // SeaBIOS and iPXE print only to VGA unless told a serial port: this fw_cfg file
                // (port 0x3f8, little-endian) turns on SeaBIOS' serial console, and iPXE follows.
                require_file("/usr/lib/ipxe/qemu/pxe-virtio.rom", "ipxe-qemu");
                let sercon = dir.path().join("sercon");
                std::fs::write(&sercon, [0xf8u8, 0x03]).unwrap();
                qemu_args = format!(
                    "  <qemu:commandline>\n    <qemu:arg value='-fw_cfg'/>\n    \
                     <qemu:arg value='name=etc/sercon-port,file={}'/>\n  </qemu:commandline>\n",
                    sercon.display()
                );
                "pc"
            }
            Firmware::Uefi => {
                require_file(OVMF_CODE, "ovmf");
                require_file(OVMF_VARS, "ovmf");
                let vars = dir.path().join("OVMF_VARS_4M.fd");
                std::fs::copy(OVMF_VARS, &vars).unwrap();
                os_extra = format!(
                    "    <loader readonly='yes' type='pflash'>{OVMF_CODE}</loader>\n    \
                     <nvram>{}</nvram>\n",
                    vars.display()
                );
                // No option ROM: OVMF's own virtio-net driver and PXE do the network boot, as
                // on a real UEFI server (QEMU's `romfile=`).
                rom = "      <rom enabled='no'/>\n";
                "q35"
            }
        };
        let xml = format!(
            "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>{ram}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='{machine}'>hvm</type>
{os_extra}    <boot dev='network'/>
    <boot dev='hd'/>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
      <serial>RSVM-DISK0</serial>
    </disk>
    <interface type='bridge'>
      <mac address='{mac}'/>
      <source bridge='{bridge}'/>
      <model type='virtio'/>
{rom}    </interface>
    <serial type='file'>
      <source path='{serial}'/>
      <target port='0'/>
    </serial>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
{qemu_args}</domain>
",
            ram = spec.ram_mib,
            disk = disk_path.display(),
            mac = spec.mac,
            bridge = self.bridge,
            serial = serial_path.display(),
        );
        let xml_path = dir.path().join("domain.xml");
        std::fs::write(&xml_path, &xml).unwrap();
        let t0 = Instant::now();
        // Recorded before defining, so a panic between the two still cleans up.
        self.domains.lock().unwrap().push(name.clone());
        virsh_ok(
            &["define", &xml_path.display().to_string()],
            Duration::from_secs(60),
        );
        let define_took = t0.elapsed();
        let uuid = virsh_ok(&["domuuid", &name], Duration::from_secs(30))
            .trim()
            .to_string();
        Vm {
            name,
            uuid,
            disk_path,
            serial_path,
            firmware: spec.firmware,
            mac: spec.mac,
            define_took,
            dir,
        }
    }
}

impl Drop for VmLab {
    fn drop(&mut self) {
        for name in self.domains.lock().unwrap().iter() {
            remove_domain(name);
        }
        // Deleting one end of a veth deletes the other (the one in `srv`) too.
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth_root])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

fn remove_domain(name: &str) {
    let limit = Duration::from_secs(30);
    let _ = virsh(&["destroy", name], limit);
    let _ = virsh(&["undefine", "--nvram", name], limit);
}

/// Removes domains and links left by test processes that died without dropping their VmLab
/// (SIGKILL, a timeout): they would keep TCG guests spinning on our two cores.
fn sweep_leftovers() {
    let out = virsh(&["list", "--all", "--name"], Duration::from_secs(30));
    for name in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(rest) = name.trim().strip_prefix(DOMAIN_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !pid_alive(pid) {
                remove_domain(name.trim());
            }
        }
    }
    let Ok(links) = std::fs::read_dir("/sys/class/net") else {
        return;
    };
    for link in links.flatten() {
        let alias = std::fs::read_to_string(link.path().join("ifalias")).unwrap_or_default();
        if let Some(pid) = alias.trim().strip_prefix(LINK_ALIAS) {
            if pid.parse::<u32>().is_ok_and(|p| !pid_alive(p)) {
                let _ = Command::new("ip")
                    .arg("link")
                    .arg("del")
                    .arg(link.file_name())
                    .output();
            }
        }
    }
}

/// A libvirt domain made by [`VmLab::define_vm`]; destroyed and undefined on drop.
pub struct Vm {
    pub name: String,
    /// libvirt's UUID: also the Redfish System id under sushy-tools' libvirt driver.
    pub uuid: String,
    pub disk_path: PathBuf,
    pub serial_path: PathBuf,
    pub firmware: Firmware,
    pub mac: String,
    /// How long `virsh define` took.
    pub define_took: Duration,
    dir: tempfile::TempDir,
}

impl Vm {
    /// What the firmware (SeaBIOS/iPXE via sercon, OVMF natively) printed on the serial port.
    pub fn serial_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial_path).unwrap_or_default()).into_owned()
    }

    /// QEMU's own log (command line, errors), written by libvirt.
    pub fn qemu_log(&self) -> String {
        std::fs::read_to_string(format!("/var/log/libvirt/qemu/{}.log", self.name))
            .unwrap_or_default()
    }

    /// libvirt's state word: "running", "shut off", "paused", …
    pub fn state(&self) -> String {
        virsh_ok(&["domstate", &self.name], Duration::from_secs(30))
            .trim()
            .to_string()
    }

    pub fn is_running(&self) -> bool {
        self.state() == "running"
    }

    /// Waits (bounded) until the serial console shows `needle`; returns how long it took.
    /// Panics with the serial and QEMU logs otherwise.
    pub fn wait_serial(&self, needle: &str, limit: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            if self.serial_log().contains(needle) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < limit,
                "{}: {needle:?} not on the serial console within {limit:?}\n--- serial:\n{}\n--- qemu:\n{}",
                self.name,
                self.serial_log(),
                self.qemu_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The domain's current XML (sushy-tools rewrites the boot order in it).
    pub fn xml(&self) -> String {
        virsh_ok(&["dumpxml", &self.name], Duration::from_secs(30))
    }

    /// Hex SHA-256 of the disk's first `len` bytes (fewer if the disk is smaller).
    pub fn disk_sha256(&self, len: u64) -> String {
        use sha2::Digest;
        let mut f = File::open(&self.disk_path).unwrap().take(len);
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = f.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
        }
        hex::encode(h.finalize())
    }

    /// Hard power-off through libvirt (not Redfish); no error if already off.
    pub fn destroy(&self) {
        let _ = virsh(&["destroy", &self.name], Duration::from_secs(30));
    }

    /// The VM's temp directory (disk, serial log, NVRAM copy, domain XML).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        remove_domain(&self.name);
    }
}

/// dnsmasq sending IPv6 router advertisements (and nothing else) on the lab's `br0`, so iPXE
/// does not wait ~13 s for one. Gives `br0` the ULA fd77::1/64. Killed when the lab drops.
/// (Deliberately the same dnsmasq arguments as `rackshare lab up`'s: neither side depends on the other.)
/// Returns dnsmasq's log path.
pub fn start_router_advertiser(lab: &Lab) -> PathBuf {
    require("dnsmasq", "dnsmasq-base");
    lab.ip(&lab.srv, "addr add fd77::1/64 dev br0 nodad");
    let log = lab.path("dnsmasq-ra.log");
    let pid = lab.path("dnsmasq-ra.pid").display().to_string();
    lab.spawn(
        &lab.srv,
        &[
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
            &format!("--pid-file={pid}"),
        ],
        &log,
    );
    log
}

/// sushy-emulator with the libvirt driver on `qemu:///system`, on 127.0.0.1 and a free port,
/// killed on drop. It lists every domain of the shared daemon; address systems by UUID.
pub struct SushyLibvirt {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub proc_: Proc,
    pub tls: bool,
    /// The first of `SushyOpts::users`, used by [`SushyLibvirt::request`].
    pub auth: Option<(String, String)>,
    /// From spawn to the first 200 on /redfish/v1/Systems (the first libvirt connection).
    pub ready_after: Duration,
    /// The network namespace it listens in (its 127.0.0.1 is that namespace's), if not the root one.
    pub netns: Option<String>,
}

impl SushyLibvirt {
    /// The venv holding `sushy-emulator`, as [`venv_tool`] finds it.
    pub fn default_venv() -> PathBuf {
        venv_tool("sushy-emulator")
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .to_path_buf()
    }

    /// `venv` must be made with Debian's python and `--system-site-packages` so that
    /// `import libvirt` finds Debian's `python3-libvirt` (pip's libvirt-python would compile).
    /// Serves every domain of the shared daemon (other test processes' VMs included): prefer
    /// [`SushyLibvirt::start_scoped`] when the test counts systems.
    pub fn start(venv: &Path, opts: SushyOpts) -> SushyLibvirt {
        SushyLibvirt::start_inner(venv, opts, None, None)
    }

    /// Like [`SushyLibvirt::start`], but the BMC serves only these domain UUIDs
    /// (`SUSHY_EMULATOR_ALLOWED_INSTANCES`; others are 404 and absent from the collection).
    pub fn start_scoped(venv: &Path, opts: SushyOpts, uuids: &[&str]) -> SushyLibvirt {
        SushyLibvirt::start_inner(venv, opts, Some(uuids), None)
    }

    /// Like [`SushyLibvirt::start_scoped`], listening on 127.0.0.1 inside namespace `ns`, so a
    /// rackshare running in that namespace reaches it (libvirtd's unix socket is not
    /// namespaced, so the driver still works).
    pub fn start_scoped_in(ns: &str, venv: &Path, opts: SushyOpts, uuids: &[&str]) -> SushyLibvirt {
        SushyLibvirt::start_inner(venv, opts, Some(uuids), Some(ns))
    }

    fn start_inner(
        venv: &Path,
        opts: SushyOpts,
        scope: Option<&[&str]>,
        netns: Option<&str>,
    ) -> SushyLibvirt {
        require("curl", "curl");
        let exe = venv.join("bin").join("sushy-emulator");
        assert!(
            exe.is_file(),
            "{} is missing: /usr/bin/python3 -m venv --system-site-packages {v} && \
             {v}/bin/pip install sushy-tools (scripts/test does this)",
            exe.display(),
            v = venv.display()
        );
        let py = venv.join("bin").join("python3");
        let probe = run_bounded(
            &[&py.display().to_string(), "-c", "import libvirt"],
            Duration::from_secs(30),
        );
        assert!(
            probe.status.success(),
            "`import libvirt` fails in {}: install the Debian package python3-libvirt and make \
             the venv with `/usr/bin/python3 -m venv --system-site-packages` (not pyenv's or a \
             venv without system site-packages): {}",
            venv.display(),
            String::from_utf8_lossy(&probe.stderr)
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_tcp_port();
        let mut conf = format!(
            "SUSHY_EMULATOR_LIBVIRT_URI = {LIBVIRT_URI:?}\nSUSHY_EMULATOR_STATE_DIR = {:?}\n",
            dir.path().join("state").display().to_string()
        );
        if let Some(uuids) = scope {
            conf.push_str(&format!("SUSHY_EMULATOR_ALLOWED_INSTANCES = {uuids:?}\n"));
        }
        if !opts.users.is_empty() {
            let htpasswd = crate::write_htpasswd(&exe, dir.path(), &opts.users);
            conf.push_str(&format!(
                "SUSHY_EMULATOR_AUTH_FILE = {:?}\n",
                htpasswd.display().to_string()
            ));
        }
        let conf_path = dir.path().join("sushy.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.arg("--config")
            .arg(&conf_path)
            .args(["--libvirt-uri", LIBVIRT_URI])
            .args(["-i", "127.0.0.1", "-p", &port.to_string()]);
        if let Some((cert, key)) = &opts.tls {
            cmd.arg("--ssl-certificate")
                .arg(cert)
                .arg("--ssl-key")
                .arg(key);
        }
        let t0 = Instant::now();
        let mut proc_ = Proc::spawn(
            "sushy-emulator (libvirt)",
            cmd,
            dir.path().join("sushy.log"),
        );
        if netns.is_none() {
            wait_tcp(&mut proc_, port, Duration::from_secs(30));
        }
        let mut s = SushyLibvirt {
            dir,
            port,
            proc_,
            tls: opts.tls.is_some(),
            auth: opts.users.first().cloned(),
            ready_after: Duration::ZERO,
            netns: netns.map(str::to_string),
        };
        // Listening is not ready: the first request opens the libvirt connection (~12 s).
        let deadline = Duration::from_secs(90);
        loop {
            let (code, body) = s.request("GET", "/redfish/v1/Systems", None);
            if code == 200 && body["Members"].is_array() {
                break;
            }
            s.proc_.assert_running();
            assert!(
                t0.elapsed() < deadline,
                "sushy-emulator (libvirt) did not list /redfish/v1/Systems within {deadline:?} \
                 (last: {code} {body}):\n{}",
                s.proc_.log_text()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        s.ready_after = t0.elapsed();
        s
    }

    /// Base URL for rackshare's BMC syntax: `redfish+http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let scheme = if self.tls {
            "redfish+https"
        } else {
            "redfish+http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `redfish+http://127.0.0.1:PORT/redfish/v1/Systems/UUID`: a machine's `--bmc` value.
    pub fn system_url(&self, uuid: &str) -> String {
        format!("{}/redfish/v1/Systems/{uuid}", self.url())
    }

    /// The plain HTTP(S) base URL, for talking to the emulator directly.
    pub fn http_base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// One Redfish request through curl (blocking, usable from sync and async tests alike),
    /// bounded to 120 s: sushy's libvirt calls take seconds each. Returns status and JSON body
    /// (`Null` when the body is empty or not JSON).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let url = format!("{}{path}", self.http_base());
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "curl"]);
                c
            }
            None => Command::new("curl"),
        };
        cmd.args([
            "-sS",
            "--max-time",
            "120",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ]);
        if self.tls {
            cmd.arg("-k");
        }
        if let Some((u, p)) = &self.auth {
            // Throwaway test credentials on loopback: visible in argv is acceptable here.
            cmd.arg("-u").arg(format!("{u}:{p}"));
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(b.to_string());
        }
        let out = cmd
            .arg(&url)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running curl: {e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_ref()));
        let code = code.trim().parse::<u16>().unwrap_or(0);
        (code, serde_json::from_str(body).unwrap_or_default())
    }
}
