//! The VM harness end to end: a libvirt VM behind sushy-tools' libvirt driver, switched on
//! through Redfish with a one-time PXE boot, must DHCP on the lab's `br0`. Needs root, libvirt
//! and the venv (see `testkit::vmlab`); nothing is skipped.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::json;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use testkit::netns::Lab;
use testkit::vmlab::{
    start_router_advertiser, Firmware, LibvirtDaemon, SushyLibvirt, VmLab, VmSpec,
};
use testkit::SushyOpts;

/// One TCG guest at a time: two at once on two shared cores double every boot time, and the
/// timings these tests print are the figures the end-to-end tests are planned with.
static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Polls `probe` until it yields, or panics after `limit` with `context()` (logs to read).
fn wait_for<T>(
    what: &str,
    limit: Duration,
    context: impl Fn() -> String,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            t0.elapsed() < limit,
            "{what}: not within {limit:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn power_state(sushy: &SushyLibvirt, uuid: &str) -> String {
    let (code, body) = sushy.request("GET", &format!("/redfish/v1/Systems/{uuid}"), None);
    assert_eq!(code, 200, "GET system: {body}");
    body["PowerState"].as_str().unwrap_or_default().to_string()
}

fn pxe_boot_through_redfish(firmware: Firmware, mac: &str, dhcp_limit: Duration) {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let daemon = LibvirtDaemon::ensure();
    eprintln!(
        "timing: libvirtd ready after {:?} (started here: {})",
        daemon.ready_after, daemon.started_here
    );
    let lab = Lab::new("vml");
    let vmlab = VmLab::new(&lab);
    // An RA on the segment, as on a real network, so iPXE does not stall ~13 s for one.
    start_router_advertiser(&lab);
    // The segment's DHCP server, on br0 itself: what rackshare will be in the end-to-end test.
    let dhcp_log = lab.path("dnsmasq-dhcp.log");
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
            "--no-ping",
            "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h",
            &format!("--dhcp-leasefile={}", lab.path("dnsmasq.leases").display()),
            &format!("--pid-file={}", lab.path("dnsmasq-dhcp.pid").display()),
            // OVMF's PXE ignores offers without a boot file; no TFTP server is needed for the
            // DHCPREQUEST/ACK this test waits for (the transfer then fails, harmlessly).
            "--dhcp-boot=vmlab-test.efi",
            "--log-dhcp",
        ],
        &dhcp_log,
    );

    let tag = match firmware {
        Firmware::Bios => "bios",
        Firmware::Uefi => "uefi",
    };
    let vm = vmlab.define_vm(VmSpec::new(tag, firmware, mac, 64));
    eprintln!("timing: {tag}: virsh define took {:?}", vm.define_took);
    assert!(!vm.is_running(), "a defined VM must not be started yet");
    // The disk is blank: SHA-256 of 4096 zero bytes.
    assert_eq!(
        vm.disk_sha256(4096),
        "ad7facb2586fc6e966c004d7d1d16b024f5805ff7cb47c7a85dabd8b48892ca7"
    );

    let sushy = SushyLibvirt::start_scoped(
        &SushyLibvirt::default_venv(),
        SushyOpts::default(),
        &[&vm.uuid],
    );
    eprintln!(
        "timing: sushy-emulator (libvirt) first Systems listing after {:?}",
        sushy.ready_after
    );
    let (code, systems) = sushy.request("GET", "/redfish/v1/Systems", None);
    assert_eq!(code, 200);
    // Scoped to our VM: other test processes' domains on the shared daemon are not listed.
    assert_eq!(
        systems["Members"],
        json!([{"@odata.id": format!("/redfish/v1/Systems/{}", vm.uuid)}]),
        "{systems}"
    );
    assert_eq!(power_state(&sushy, &vm.uuid), "Off");
    let system = format!("/redfish/v1/Systems/{}", vm.uuid);

    let t = Instant::now();
    let (code, body) = sushy.request(
        "PATCH",
        &system,
        Some(&json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}})),
    );
    assert!(code == 200 || code == 204, "PATCH Boot: {code} {body}");
    eprintln!("timing: {tag}: PATCH Boot Pxe took {:?}", t.elapsed());
    let xml = vm.xml();
    // sushy moves the boot order onto the devices: NIC first, the disk kept second.
    let nic = xml.find("<interface").unwrap();
    let disk = xml.find("<disk").unwrap();
    let first = xml.find("<boot order='1'/>").expect(&xml);
    let second = xml.find("<boot order='2'/>").expect(&xml);
    assert!(
        first > nic && (second > disk && second < nic),
        "boot order:\n{xml}"
    );

    let t_on = Instant::now();
    let (code, body) = sushy.request(
        "POST",
        &format!("{system}/Actions/ComputerSystem.Reset"),
        Some(&json!({"ResetType": "On"})),
    );
    assert!(code == 200 || code == 204, "Reset On: {code} {body}");
    eprintln!(
        "timing: {tag}: POST Reset On returned after {:?}",
        t_on.elapsed()
    );
    assert!(vm.is_running(), "VM not running after Redfish On");

    // dnsmasq logs `DHCPDISCOVER(br0) MAC` but `DHCPACK(br0) IP MAC`: match per line.
    let seen = |kind: &str| {
        let tag = format!("{kind}(br0) ");
        std::fs::read_to_string(&dhcp_log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(&tag) && l.contains(mac))
    };
    let context = || {
        format!(
            "--- dnsmasq:\n{}\n--- serial:\n{}\n--- qemu:\n{}",
            std::fs::read_to_string(&dhcp_log).unwrap_or_default(),
            vm.serial_log(),
            vm.qemu_log()
        )
    };
    let discover = wait_for(
        &format!("DHCPDISCOVER from {mac} in {}", dhcp_log.display()),
        dhcp_limit,
        context,
        || seen("DHCPDISCOVER").then(|| t_on.elapsed()),
    );
    eprintln!("timing: {tag}: Redfish On -> first DHCPDISCOVER {discover:?}");
    let ack = wait_for(
        &format!("DHCPACK to {mac}"),
        Duration::from_secs(30),
        context,
        || seen("DHCPACK").then(|| t_on.elapsed()),
    );
    eprintln!("timing: {tag}: Redfish On -> DHCPACK {ack:?}");
    let dhcp = std::fs::read_to_string(&dhcp_log).unwrap();
    let vendor_class = match firmware {
        // SeaBIOS+iPXE and OVMF's native PXE both announce themselves as PXE clients.
        Firmware::Bios => "PXEClient:Arch:00000",
        Firmware::Uefi => "PXEClient:Arch:00007",
    };
    assert!(
        dhcp.contains(vendor_class),
        "expected vendor class {vendor_class} in:\n{dhcp}"
    );
    if firmware == Firmware::Bios {
        vm.wait_serial("iPXE", Duration::from_secs(10));
        // The router advertiser reached the guest: iPXE configured a SLAAC address in fd77::/64
        // instead of waiting ~13 s for an RA.
        vm.wait_serial("fd77:", Duration::from_secs(20));
        eprintln!(
            "timing: {tag}: Redfish On -> iPXE shows its fd77:: address {:?}",
            t_on.elapsed()
        );
    }
    assert_eq!(power_state(&sushy, &vm.uuid), "On");

    let (code, body) = sushy.request(
        "POST",
        &format!("{system}/Actions/ComputerSystem.Reset"),
        Some(&json!({"ResetType": "ForceOff"})),
    );
    assert!(code == 200 || code == 204, "Reset ForceOff: {code} {body}");
    wait_for(
        "VM off after Redfish ForceOff",
        Duration::from_secs(30),
        context,
        || (!vm.is_running() && power_state(&sushy, &vm.uuid) == "Off").then_some(()),
    );
}

#[test]
fn bios_vm_pxe_boots_when_switched_on_through_sushy_libvirt() {
    pxe_boot_through_redfish(Firmware::Bios, "52:54:00:76:00:01", Duration::from_secs(60));
}

#[test]
fn uefi_vm_pxe_boots_when_switched_on_through_sushy_libvirt() {
    pxe_boot_through_redfish(
        Firmware::Uefi,
        "52:54:00:76:00:02",
        Duration::from_secs(120),
    );
}
