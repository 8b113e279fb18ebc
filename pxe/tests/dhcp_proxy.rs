//! Proxy mode beside dnsmasq (the network's DHCP server), malformed packets, the probe.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use pxe::{
    BootIntent, DropReason, MachineEntry, NullAddressLeaseStore, PxeConfig, StaticDirectory,
};

fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
    m.opts().get(code)
}

fn class_of(m: &Message) -> Option<Vec<u8>> {
    match opt(m, OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => Some(v.clone()),
        _ => None,
    }
}

fn server_id(m: &Message) -> Option<Ipv4Addr> {
    match opt(m, OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

/// A BIOS PXE ROM: address from dnsmasq, boot file from rackshare (67 then 4011);
/// then the chain-loaded iPXE gets the script URL. A plain udhcpc is left to dnsmasq.
#[test]
fn pxe_client_beside_dnsmasq() {
    let lab = Lab::new("proxy");
    start_dnsmasq(&lab);
    let client = lab.add_host("cli", "52:54:00:aa:bb:01", None);
    let mac = [0x52, 0x54, 0, 0xaa, 0xbb, 1];
    let dir = StaticDirectory::new();
    dir.insert(
        "52:54:00:aa:bb:01".parse().unwrap(),
        MachineEntry {
            intent: BootIntent::LocalDisk,
            reserved_ip: None,
            hostname: None,
        },
    );
    let mut cfg = PxeConfig::new("br0", lab.fake_tftp_root());
    cfg.http_port = 8080;
    let srv = Server::start(
        &lab.srv,
        cfg,
        Arc::new(dir),
        Arc::new(NullAddressLeaseStore),
    );
    std::thread::sleep(Duration::from_millis(500)); // dnsmasq start-up

    let dlog = lab.path("dnsmasq.log");
    let (offers, ack, proxy_ack, ipxe_offers) = in_ns(&client, move || {
        let sock = client_socket(68);
        let discover = encode(&request(
            mac,
            0x1111,
            MessageType::Discover,
            pxe_bios_options(false),
        ));
        let offers = exchange(
            &sock,
            &[discover],
            bcast67(),
            0x1111,
            Duration::from_secs(2),
        );
        let dnsmasq_offer = offers
            .iter()
            .find(|(_, m)| !m.yiaddr().is_unspecified())
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| {
                panic!(
                    "no offer from dnsmasq: {offers:?}\n{}",
                    std::fs::read_to_string(&dlog).unwrap_or_default()
                )
            });
        let mut extra = pxe_bios_options(false);
        extra.push(DhcpOption::ServerIdentifier(DNSMASQ_IP));
        extra.push(DhcpOption::RequestedIpAddress(dnsmasq_offer.yiaddr()));
        let req = encode(&request(mac, 0x2222, MessageType::Request, extra));
        let acks = exchange(&sock, &[req], bcast67(), 0x2222, Duration::from_secs(1));
        let ack = acks
            .iter()
            .find(|(_, m)| m.opts().msg_type() == Some(MessageType::Ack))
            .map(|(_, m)| m.clone())
            .expect("no ACK from dnsmasq");
        // Configure the address, then ask the boot server on 4011 as a PXE ROM does.
        let ip = ack.yiaddr();
        let st = std::process::Command::new("ip")
            .args(["addr", "add", &format!("{ip}/24"), "dev", "eth0"])
            .status()
            .unwrap();
        assert!(st.success());
        let mut extra = pxe_bios_options(false);
        extra.push(DhcpOption::ServerIdentifier(SERVER_IP));
        let mut m = request(mac, 0x3333, MessageType::Request, extra);
        m.set_ciaddr(ip);
        let proxy = exchange(
            &sock,
            &[encode(&m)],
            SocketAddrV4::new(SERVER_IP, 4011),
            0x3333,
            Duration::from_secs(1),
        );
        // iPXE (chain-loaded) DHCPs again with option 77 "iPXE".
        let d2 = encode(&request(
            mac,
            0x4444,
            MessageType::Discover,
            pxe_bios_options(true),
        ));
        let ipxe_offers = exchange(&sock, &[d2], bcast67(), 0x4444, Duration::from_secs(2));
        (offers, ack, proxy, ipxe_offers)
    });

    // Two offers: dnsmasq's address, rackshare's boot information (no address).
    let ours: Vec<&(SocketAddr, Message)> = offers
        .iter()
        .filter(|(_, m)| server_id(m) == Some(SERVER_IP))
        .collect();
    assert_eq!(ours.len(), 1, "{offers:?}");
    let o = &ours[0].1;
    assert_eq!(o.opts().msg_type(), Some(MessageType::Offer));
    assert!(
        o.yiaddr().is_unspecified(),
        "proxy must not hand out addresses"
    );
    assert_eq!(o.siaddr(), SERVER_IP);
    assert_eq!(
        o.fname_str().unwrap().unwrap().trim_end_matches('\0'),
        "undionly.kpxe"
    );
    assert_eq!(class_of(o).as_deref(), Some(&b"PXEClient"[..]));
    assert!(
        matches!(opt(o, OptionCode::VendorExtensions), Some(DhcpOption::VendorExtensions(v)) if v == &vec![6, 1, 8, 255])
    );
    assert!(
        ack.yiaddr().octets()[3] >= 100,
        "dnsmasq address: {}",
        ack.yiaddr()
    );

    let (from, pa) = proxy_ack.first().expect("no ACK on 4011");
    assert_eq!(from.port(), 4011);
    assert_eq!(pa.opts().msg_type(), Some(MessageType::Ack));
    assert!(pa.yiaddr().is_unspecified());
    assert_eq!(
        pa.fname_str().unwrap().unwrap().trim_end_matches('\0'),
        "undionly.kpxe"
    );
    assert_eq!(pa.siaddr(), SERVER_IP);

    let (_, io) = ipxe_offers
        .iter()
        .find(|(_, m)| server_id(m) == Some(SERVER_IP))
        .expect("no proxy offer for iPXE");
    assert_eq!(
        io.fname_str().unwrap().unwrap().trim_end_matches('\0'),
        "http://10.77.0.1:8080/boot/52-54-00-aa-bb-01.ipxe"
    );
    assert!(get(&srv.metrics.dhcp_answered) >= 3);

    // A plain client: dnsmasq serves it, rackshare stays silent.
    require("udhcpc", "udhcpc");
    let plain = lab.add_host("plain", "02:00:00:00:05:01", None);
    let answered = get(&srv.metrics.dhcp_answered);
    let out = lab.exec(
        &plain,
        &[
            "udhcpc",
            "-f",
            "-q",
            "-n",
            "-i",
            "eth0",
            "-s",
            "/bin/true",
            "-t",
            "5",
            "-T",
            "1",
        ],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "udhcpc got no lease from dnsmasq: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        get(&srv.metrics.dhcp_answered),
        answered,
        "proxy answered a non-PXE client"
    );
    assert!(srv.metrics.dropped(DropReason::NotForUs) > 0);
    srv.stop().unwrap();
}

/// Unknown MAC: ignored and counted without discovery; with discovery the directory hears of it.
#[test]
fn unknown_mac_discovery() {
    let lab = Lab::new("disc");
    let client = lab.add_host("cli", "52:54:00:aa:bb:02", Some("10.77.0.9/24"));
    let mac = [0x52, 0x54, 0, 0xaa, 0xbb, 2];
    let run = |discovery: bool| {
        let dir = Arc::new(StaticDirectory::new());
        let mut cfg = PxeConfig::new("br0", lab.fake_tftp_root());
        cfg.discovery = discovery;
        let srv = Server::start(&lab.srv, cfg, dir.clone(), Arc::new(NullAddressLeaseStore));
        let replies = in_ns(&client, move || {
            let sock = client_socket(68);
            let d = encode(&request(
                mac,
                0x5555,
                MessageType::Discover,
                pxe_bios_options(false),
            ));
            exchange(
                &sock,
                &[d.clone(), d],
                bcast67(),
                0x5555,
                Duration::from_secs(1),
            )
        });
        let ignored = get(&srv.metrics.boot_ignored);
        srv.stop().unwrap();
        (replies, ignored, dir.discovered_clients())
    };
    let (replies, ignored, found) = run(false);
    assert!(replies.is_empty());
    assert_eq!(ignored, 2);
    assert!(found.is_empty());
    let (replies, ignored, found) = run(true);
    assert_eq!(replies.len(), 2);
    assert_eq!(ignored, 0);
    assert_eq!(found.len(), 1, "reported once per MAC");
    assert_eq!(found[0].mac.to_string(), "52:54:00:aa:bb:02");
    assert_eq!(found[0].arch, Some(pxe::ClientArch::Bios));
}

/// Garbage, truncated, wrong-op, bad-cookie and looping-option packets are dropped and
/// counted; a valid request right after still gets its answer.
#[test]
fn malformed_packets_are_dropped() {
    let lab = Lab::new("garbage");
    let client = lab.add_host("cli", "52:54:00:aa:bb:03", Some("10.77.0.9/24"));
    let mac = [0x52, 0x54, 0, 0xaa, 0xbb, 3];
    let dir = StaticDirectory::new();
    dir.insert(
        "52:54:00:aa:bb:03".parse().unwrap(),
        MachineEntry {
            intent: BootIntent::LocalDisk,
            reserved_ip: None,
            hostname: None,
        },
    );
    let srv = Server::start(
        &lab.srv,
        PxeConfig::new("br0", lab.fake_tftp_root()),
        Arc::new(dir),
        Arc::new(NullAddressLeaseStore),
    );
    let replies = in_ns(&client, move || {
        let sock = client_socket(68);
        let good = encode(&request(
            mac,
            0x6666,
            MessageType::Discover,
            pxe_bios_options(false),
        ));
        let mut bad = vec![
            vec![],
            b"hello".to_vec(),
            good[..120].to_vec(),
            pseudo_random(300, 9),
            pseudo_random(3000, 10),
        ];
        let mut wrong_op = good.clone();
        wrong_op[0] = 2;
        bad.push(wrong_op);
        let mut cookie = good.clone();
        cookie[236] = 0;
        bad.push(cookie);
        let mut looping = good[..240].to_vec();
        looping.extend_from_slice(&[53, 1, 1]);
        for _ in 0..300 {
            looping.extend_from_slice(&[43, 2, 1, 0]);
        }
        looping.push(255);
        bad.push(looping);
        let mut overrun = good[..240].to_vec();
        overrun.extend_from_slice(&[53, 1, 1, 60, 250, b'P']);
        bad.push(overrun);
        let mut overload = good[..240].to_vec();
        overload.extend_from_slice(&[53, 1, 1, 52, 1, 3, 255]);
        bad.push(overload);
        let mut jumbo = good.clone();
        jumbo.truncate(jumbo.len() - 1);
        jumbo.extend(std::iter::repeat_n(0u8, 6000));
        jumbo.push(255);
        bad.push(jumbo);
        for p in &bad {
            let _ = sock.send_to(p, bcast67());
        }
        exchange(&sock, &[good], bcast67(), 0x6666, Duration::from_secs(1))
    });
    assert_eq!(
        replies.len(),
        1,
        "valid request after garbage got no answer"
    );
    let m = &srv.metrics;
    assert!(
        m.dropped(DropReason::Truncated) >= 3,
        "{}",
        srv.prometheus()
    );
    assert!(m.dropped(DropReason::WrongOp) >= 1);
    assert!(m.dropped(DropReason::BadCookie) >= 1);
    assert!(m.dropped(DropReason::BadOptions) >= 3);
    assert!(srv
        .prometheus()
        .contains("rackshare_dhcp_dropped_total{reason=\"bad_cookie\"}"));
    srv.stop().unwrap();
}

/// `probe_dhcp_servers` lists dnsmasq (with an address) and rackshare's proxy.
#[test]
fn probe_lists_servers() {
    let lab = Lab::new("probe");
    start_dnsmasq(&lab);
    let client = lab.add_host("cli", "52:54:00:aa:bb:04", None);
    let dir = StaticDirectory::new();
    dir.insert(
        "52:54:00:aa:bb:04".parse().unwrap(),
        MachineEntry {
            intent: BootIntent::LocalDisk,
            reserved_ip: None,
            hostname: None,
        },
    );
    let srv = Server::start(
        &lab.srv,
        PxeConfig::new("br0", lab.fake_tftp_root()),
        Arc::new(dir),
        Arc::new(NullAddressLeaseStore),
    );
    std::thread::sleep(Duration::from_millis(500));
    let seen = in_ns(&client, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(pxe::probe_dhcp_servers("eth0", Duration::from_secs(2)))
            .unwrap()
    });
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter()
            .any(|s| s.server_id == Some(DNSMASQ_IP) && !s.proxy && s.offered_ip.is_some()),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.server_id == Some(SERVER_IP) && s.proxy),
        "{seen:?}"
    );
    srv.stop().unwrap();
}

/// The server address and mask come from the interface (inside the namespace); a missing or
/// address-less interface is a clear start-up error.
#[test]
fn interface_address_and_startup_errors() {
    let lab = Lab::new("ifaddr");
    lab.add_host("cli", "52:54:00:aa:bb:05", None);
    let got = in_ns(&lab.srv, || pxe::interface_ipv4_with_mask("br0").unwrap());
    assert_eq!(got, (SERVER_IP, Ipv4Addr::new(255, 255, 255, 0)));
    let err = in_ns(&lab.srv, || {
        pxe::interface_ipv4("nope0").unwrap_err().to_string()
    });
    assert!(err.contains("nope0 not found"), "{err}");
    let ns = format!("{}-cli", lab.prefix);
    let err = in_ns(&ns, || pxe::interface_ipv4("eth0").unwrap_err().to_string());
    assert!(err.contains("has no IPv4 address"), "{err}");
    // Missing iPXE binaries: run() refuses to start and names the package.
    let empty = lab.path("empty-root");
    std::fs::create_dir_all(&empty).unwrap();
    let srv_ns = lab.srv.clone();
    let err = in_ns(&srv_ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(pxe::run(
            PxeConfig::new("br0", empty),
            Arc::new(StaticDirectory::new()),
            Arc::new(NullAddressLeaseStore),
            Arc::new(pxe::Metrics::new()),
            tokio_util::sync::CancellationToken::new(),
        ))
        .unwrap_err()
        .to_string()
    });
    assert!(
        err.contains("undionly.kpxe") && err.contains("`ipxe`"),
        "{err}"
    );
}
