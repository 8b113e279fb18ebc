//! Real firmware: QEMU (TCG) PXE-boots from the server inside a namespace bridge.
//! BIOS: SeaBIOS + iPXE ROM → DHCP → HTTP script. UEFI: OVMF's own PXE → DHCP → TFTP
//! (tsize probe, then snponly.efi) → iPXE → DHCP → HTTP script. UEFI HTTP boot: OVMF with
//! its PXE switched off asks as `HTTPClient` (arch 16) → DHCP reply with a URL → iPXE over
//! HTTP, no TFTP at all → HTTP script. Each authoritative and as proxy beside dnsmasq. The
//! script is the real local-disk template; the serial console must show it ran.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pxe::{
    BootIntent, BootScript, DhcpMode, FileAddressLeaseStore, MachineEntry, PoolConfig, PxeConfig,
    StaticDirectory,
};

/// A minimal HTTP server for `/boot/MAC.ipxe` (the api's job in production).
fn http_server(
    ns: &str,
    root: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    file_hits: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = TcpListener::bind("10.77.0.1:8080").unwrap();
        l.set_nonblocking(true).unwrap();
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let target = req.split_whitespace().nth(1).unwrap_or("").to_string();
            let body = target
                .strip_prefix("/boot/")
                .and_then(|t| t.strip_suffix(".ipxe"))
                .and_then(|m| m.parse::<pxe::MacAddr>().ok())
                .map(|mac| {
                    hits.fetch_add(1, Ordering::Relaxed);
                    pxe::render_boot_script(
                        mac,
                        &BootScript::LocalDisk,
                        &format!("http://10.77.0.1:8080{target}"),
                    )
                });
            // Plain names from the boot root (UEFI HTTP boot fetches the iPXE binary here).
            let file = target
                .strip_prefix("/boot/")
                .filter(|f| !f.contains('/') && !f.ends_with(".ipxe"))
                .and_then(|f| std::fs::read(root.join(f)).ok());
            let resp: Vec<u8> = match (body, file) {
                (Some(b), _) => format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                )
                .into_bytes(),
                (None, Some(f)) => {
                    file_hits.fetch_add(1, Ordering::Relaxed);
                    let head = if req.starts_with("HEAD") {
                        Vec::new()
                    } else {
                        f.clone()
                    };
                    let mut r = format!(
                        "HTTP/1.0 200 OK\r\nContent-Type: application/efi\r\nContent-Length: {}\r\n\r\n",
                        f.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(&head);
                    r
                }
                (None, None) => b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
            };
            let _ = s.write_all(&resp);
        }
    })
}

fn boot(tag: &str, uefi: bool, proxy: bool) {
    boot_with(tag, uefi, proxy, false)
}

/// `http_boot`: OVMF's PXE is switched off, so its UEFI HTTP boot asks (arch 16, `HTTPClient`)
/// and loads iPXE from the URL in the reply.
fn boot_with(tag: &str, uefi: bool, proxy: bool, http_boot: bool) {
    require("qemu-system-x86_64", "qemu-system-x86");
    for (f, pkg) in [
        ("/usr/lib/ipxe/qemu/efi-virtio.rom", "ipxe-qemu"),
        ("/usr/lib/ipxe/undionly.kpxe", "ipxe"),
        ("/usr/lib/ipxe/snponly.efi", "ipxe"),
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
        ("/usr/share/OVMF/OVMF_VARS_4M.fd", "ovmf"),
    ] {
        assert!(
            Path::new(f).exists(),
            "{f} is missing: install the Debian package `{pkg}`"
        );
    }
    let lab = Lab::new(tag);
    lab.ip(&lab.srv, "tuntap add tap0 mode tap");
    lab.ip(&lab.srv, "link set tap0 master br0 up");
    let root = lab.path("tftp");
    pxe::populate_tftp_root(
        &root,
        Path::new(pxe::DEBIAN_IPXE_DIR),
        &pxe::BootFiles::default(),
    )
    .unwrap();

    let mac = if uefi {
        "52:54:00:e0:00:02"
    } else {
        "52:54:00:b0:00:01"
    };
    let dir = StaticDirectory::new();
    dir.insert(
        mac.parse().unwrap(),
        MachineEntry {
            intent: BootIntent::LocalDisk,
            reserved_ip: None,
            hostname: Some("vm".into()),
        },
    );
    let mut cfg = PxeConfig::new("br0", &root);
    let mut pool = PoolConfig::new(
        Ipv4Addr::new(10, 77, 0, 100),
        Ipv4Addr::new(10, 77, 0, 150),
        Ipv4Addr::new(255, 255, 255, 0),
    );
    pool.router = Some(SERVER_IP);
    if proxy {
        start_dnsmasq(&lab);
    } else {
        cfg.mode = DhcpMode::Authoritative { pools: vec![pool] };
    }
    let srv = Server::start(
        &lab.srv,
        cfg,
        Arc::new(dir),
        Arc::new(FileAddressLeaseStore::new(lab.path("leases"))),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicUsize::new(0));
    let file_hits = Arc::new(AtomicUsize::new(0));
    let http = http_server(
        &lab.srv,
        root.clone(),
        stop.clone(),
        hits.clone(),
        file_hits.clone(),
    );

    let serial = lab.path("serial.log");
    let sercon = lab.path("sercon");
    std::fs::write(&sercon, [0xf8, 0x03]).unwrap();
    let vars = lab.path("vars.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
    let nic = if uefi {
        format!("virtio-net-pci,netdev=n0,mac={mac},romfile=")
    } else {
        format!("virtio-net-pci,netdev=n0,mac={mac}")
    };
    let serial_arg = format!("file:{}", serial.display());
    let sercon_arg = format!("name=etc/sercon-port,file={}", sercon.display());
    let code = "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".to_string();
    let vars_arg = format!("if=pflash,format=raw,file={}", vars.display());
    let mut argv: Vec<&str> = vec![
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-m",
        "256",
        "-display",
        "none",
        "-no-reboot",
        "-netdev",
        "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "-device",
        &nic,
        "-serial",
        &serial_arg,
        "-boot",
        "n",
    ];
    if uefi {
        argv.extend(["-drive", &code, "-drive", &vars_arg]);
        if http_boot {
            argv.extend([
                "-fw_cfg",
                "name=opt/org.tianocore/IPv4PXESupport,string=n",
                "-fw_cfg",
                "name=opt/org.tianocore/IPv6PXESupport,string=n",
            ]);
        }
    } else {
        argv.extend(["-fw_cfg", &sercon_arg]);
    }
    lab.spawn(&lab.srv, &argv, &lab.path("qemu.log"));
    let marker = format!("rackshare: booting {mac} from its local disk");
    let read = || String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).to_string();
    let end = std::time::Instant::now() + Duration::from_secs(150);
    while std::time::Instant::now() < end && !read().contains(&marker) {
        std::thread::sleep(Duration::from_millis(250));
    }
    let log = read();
    stop.store(true, Ordering::Relaxed);
    http.join().unwrap();
    assert!(
        log.contains(&marker),
        "serial console never showed the script (tftp: {} done, {} aborted; http hits {})\n{}\n{}",
        get(&srv.metrics.tftp_completed),
        get(&srv.metrics.tftp_aborted_by_client),
        hits.load(Ordering::Relaxed),
        srv.prometheus(),
        log
    );
    assert!(hits.load(Ordering::Relaxed) >= 1);
    if proxy {
        assert_eq!(
            get(&srv.metrics.leases_acked),
            0,
            "proxy mode handed out a lease"
        );
        assert!(get(&srv.metrics.dhcp_answered) >= 1);
    } else {
        assert!(get(&srv.metrics.leases_acked) >= 1);
    }
    if http_boot {
        assert!(
            file_hits.load(Ordering::Relaxed) >= 1,
            "the iPXE binary over HTTP"
        );
        assert_eq!(get(&srv.metrics.tftp_transfers), 0, "HTTP boot used TFTP");
    } else if uefi {
        assert!(
            get(&srv.metrics.tftp_completed) >= 1,
            "snponly.efi over TFTP"
        );
    }
    eprintln!(
        "{tag} (proxy {proxy}): tftp completed {} aborted-by-client {} timeouts {}; dhcp acks {} answered {}; http hits {}",
        get(&srv.metrics.tftp_completed),
        get(&srv.metrics.tftp_aborted_by_client),
        get(&srv.metrics.tftp_timeouts),
        get(&srv.metrics.leases_acked),
        get(&srv.metrics.dhcp_answered),
        hits.load(Ordering::Relaxed)
    );
    srv.stop().unwrap();
}

// Each test boots one VM at a time (authoritative, then proxy beside dnsmasq) to spare the CPU.
#[test]
fn bios_ipxe_rom_boots_script() {
    boot("qbios", false, false);
    boot("qbiosp", false, true);
}

#[test]
fn uefi_ovmf_pxe_tftp_then_script() {
    boot("quefi", true, false);
    boot("quefip", true, true);
}

#[test]
fn uefi_http_boot_loads_ipxe_over_http() {
    boot_with("quhttp", true, false, true);
    boot_with("quhttpp", true, true, true);
}
