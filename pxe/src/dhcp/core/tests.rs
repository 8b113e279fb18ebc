//! The DHCP core against a static directory: whole exchanges, the lease table, relays.

use super::reply::reply_destination;
use super::table::AddressLeaseTable;
use super::*;
use crate::lease::{AddressLease, AddressLeaseChange, AddressLeaseKey, AddressLeaseState};
use crate::mac::MacAddr;
use dhcproto::v4::relay::RelayInfo;
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::Encodable;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

fn msg(ciaddr: [u8; 4], giaddr: [u8; 4], bcast: bool) -> Message {
    let mut m = Message::default();
    m.set_ciaddr(ciaddr).set_giaddr(giaddr);
    if bcast {
        m.set_flags(Flags::default().set_broadcast());
    }
    m
}

#[test]
fn destinations() {
    let y = Ipv4Addr::new(10, 0, 0, 5);
    let d = |m: &Message, t| reply_destination(m, t, y).to_string();
    assert_eq!(
        d(&msg([0; 4], [10, 1, 0, 1], false), MessageType::Offer),
        "10.1.0.1:67"
    );
    assert_eq!(
        d(&msg([0; 4], [10, 1, 0, 1], false), MessageType::Nak),
        "10.1.0.1:67"
    );
    assert_eq!(
        d(&msg([10, 0, 0, 9], [0; 4], false), MessageType::Ack),
        "10.0.0.9:68"
    );
    assert_eq!(
        d(&msg([10, 0, 0, 9], [0; 4], false), MessageType::Nak),
        "255.255.255.255:68"
    );
    assert_eq!(
        d(&msg([0; 4], [0; 4], true), MessageType::Offer),
        "255.255.255.255:68"
    );
    assert_eq!(
        d(&msg([0; 4], [0; 4], false), MessageType::Offer),
        "255.255.255.255:68"
    );
}

use crate::boot::{BootFiles, BootIntent};
use crate::directory::StaticDirectory;
use dhcproto::Decodable;

const SRV: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];

fn core(dir: StaticDirectory, pools: Vec<PoolConfig>) -> DhcpCore {
    DhcpCore::new(
        CoreConfig {
            interface: "t0".into(),
            server_ip: SRV,
            http_base: "http://10.0.0.1:8080".into(),
            discovery: false,
            files: BootFiles::default(),
            mode: DhcpMode::Authoritative { pools },
            decline_hold: crate::config::DEFAULT_DECLINE_HOLD,
        },
        Arc::new(dir),
        Arc::new(Metrics::new()),
        Vec::new(),
    )
}

fn req(mt: MessageType, extra: Vec<DhcpOption>) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_xid(42)
        .set_chaddr(&MAC);
    m.opts_mut().insert(DhcpOption::MessageType(mt));
    for o in extra {
        m.opts_mut().insert(o);
    }
    m
}

fn run(c: &DhcpCore, m: &Message) -> DhcpOutcome {
    let src = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
    futures::executor::block_on(c.handle(&m.to_vec().expect("encode"), Port::Dhcp, src))
}

fn reply_of(o: &DhcpOutcome) -> (Message, SocketAddrV4) {
    let r = match o {
        DhcpOutcome::Reply(r) => r,
        DhcpOutcome::Durable { reply: Some(r), .. } => r,
        other => panic!("no reply: {other:?}"),
    };
    let m = Message::decode(&mut dhcproto::Decoder::new(&r.bytes)).expect("decode");
    (m, r.dest)
}

#[test]
fn dora_renew_release_decline() {
    let mut p = pool();
    p.router = Some(SRV);
    p.dns = vec![SRV];
    p.mtu = Some(9000);
    let c = core(StaticDirectory::new(), vec![p]);
    let o = run(&c, &req(MessageType::Discover, vec![]));
    let (offer, dest) = reply_of(&o);
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(dest.to_string(), "255.255.255.255:68");
    // No broadcast flag: unicast to yiaddr through an ARP entry, broadcast as fallback.
    assert!(
        matches!(&o, DhcpOutcome::Reply(r) if r.arp_unicast == Some((offer.yiaddr(), MacAddr(MAC))))
    );
    let ip = offer.yiaddr();
    assert_eq!(ip, Ipv4Addr::new(10, 0, 0, 10));
    assert!(offer.opts().get(OptionCode::InterfaceMtu).is_some());
    // Plain client: no boot file.
    assert!(offer.opts().get(OptionCode::BootfileName).is_none());
    let o = run(
        &c,
        &req(
            MessageType::Request,
            vec![
                DhcpOption::ServerIdentifier(SRV),
                DhcpOption::RequestedIpAddress(ip),
            ],
        ),
    );
    let DhcpOutcome::Durable { changes, .. } = &o else {
        panic!("ACK must wait for the store: {o:?}")
    };
    assert!(matches!(&changes[..], [AddressLeaseChange::Upsert(l)] if l.ip == ip));
    let (ack, _) = reply_of(&o);
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), ip);
    // Renew: unicast to ciaddr.
    let mut renew = req(MessageType::Request, vec![]);
    renew.set_ciaddr(ip);
    let (ack, dest) = reply_of(&run(&c, &renew));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(dest, SocketAddrV4::new(ip, 68));
    // Another client asking for this address gets a NAK.
    let mut other = req(
        MessageType::Request,
        vec![DhcpOption::RequestedIpAddress(ip)],
    );
    other.set_chaddr(&[2, 0, 0, 0, 0, 9]);
    let (nak, _) = reply_of(&run(&c, &other));
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    // Wrong network: NAK.
    let bad = req(
        MessageType::Request,
        vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(
            192, 168, 1, 5,
        ))],
    );
    let (nak, _) = reply_of(&run(&c, &bad));
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    // Selecting another server: silently dropped.
    let o = run(
        &c,
        &req(
            MessageType::Request,
            vec![
                DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 2)),
                DhcpOption::RequestedIpAddress(ip),
            ],
        ),
    );
    assert_eq!(o, DhcpOutcome::Drop(DropReason::NotForUs));
    // INFORM: options, no address, unicast to ciaddr.
    let mut inform = req(MessageType::Inform, vec![]);
    inform.set_ciaddr(Ipv4Addr::new(10, 0, 0, 77));
    let (ack, dest) = reply_of(&run(&c, &inform));
    assert!(ack.yiaddr().is_unspecified());
    assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(ack.opts().get(OptionCode::Router).is_some());
    assert_eq!(dest.to_string(), "10.0.0.77:68");
    // RELEASE: stored as released.
    let mut rel = req(
        MessageType::Release,
        vec![DhcpOption::ServerIdentifier(SRV)],
    );
    rel.set_ciaddr(ip);
    match run(&c, &rel) {
        DhcpOutcome::Durable {
            changes,
            reply: None,
            ..
        } => {
            assert!(
                matches!(&changes[..], [AddressLeaseChange::Upsert(l)] if l.state == AddressLeaseState::Released)
            )
        }
        other => panic!("{other:?}"),
    }
    // The released client gets its address back; then DECLINE quarantines it.
    let (offer, _) = reply_of(&run(&c, &req(MessageType::Discover, vec![])));
    assert_eq!(offer.yiaddr(), ip);
    run(
        &c,
        &req(
            MessageType::Request,
            vec![
                DhcpOption::ServerIdentifier(SRV),
                DhcpOption::RequestedIpAddress(ip),
            ],
        ),
    );
    let o = run(
        &c,
        &req(
            MessageType::Decline,
            vec![
                DhcpOption::RequestedIpAddress(ip),
                DhcpOption::ServerIdentifier(SRV),
            ],
        ),
    );
    assert!(
        matches!(o, DhcpOutcome::Durable { reply: None, .. }),
        "{o:?}"
    );
    let (offer, _) = reply_of(&run(&c, &req(MessageType::Discover, vec![])));
    assert_ne!(offer.yiaddr(), ip, "declined address offered again");
}

#[test]
fn relay_giaddr_and_option_82() {
    let relayed = PoolConfig::new(
        Ipv4Addr::new(10, 9, 0, 100),
        Ipv4Addr::new(10, 9, 0, 110),
        Ipv4Addr::new(255, 255, 255, 0),
    );
    let c = core(StaticDirectory::new(), vec![pool(), relayed]);
    let mut m = req(MessageType::Discover, vec![]);
    m.set_giaddr(Ipv4Addr::new(10, 9, 0, 1)).set_hops(1);
    let mut raw = m.to_vec().expect("encode");
    // Append option 82 (circuit id "port7", remote id "sw1") before END.
    let end = raw.iter().rposition(|b| *b == 255).expect("end");
    raw.truncate(end);
    let opt82 = [
        82u8, 12, 1, 5, b'p', b'o', b'r', b't', b'7', 2, 3, b's', b'w', b'1',
    ];
    raw.extend_from_slice(&opt82[..2]);
    raw.extend_from_slice(&opt82[2..]);
    raw[end + 1] = 12;
    raw.push(255);
    let o = futures::executor::block_on(c.handle(
        &raw,
        Port::Dhcp,
        SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 1), 67),
    ));
    let DhcpOutcome::Reply(r) = &o else {
        panic!("{o:?}")
    };
    assert_eq!(r.dest.to_string(), "10.9.0.1:67");
    let (offer, _) = reply_of(&o);
    assert_eq!(
        offer.yiaddr(),
        Ipv4Addr::new(10, 9, 0, 100),
        "pool chosen by giaddr"
    );
    assert_eq!(offer.giaddr(), Ipv4Addr::new(10, 9, 0, 1));
    let tail = &r.bytes[240..];
    assert!(
        tail.windows(14).any(|w| w == opt82),
        "option 82 echoed byte for byte"
    );
    // A relay from a subnet with no pool: dropped.
    let mut m = req(MessageType::Discover, vec![]);
    m.set_giaddr(Ipv4Addr::new(172, 16, 0, 1));
    assert_eq!(run(&c, &m), DhcpOutcome::Drop(DropReason::NotForUs));
}

/// Option 118 (RFC 3011) and option 82's link selection (RFC 3527) name the subnet in
/// place of giaddr; replies still go to giaddr, and 118 is echoed.
#[test]
fn subnet_selection_and_link_selection_pick_the_pool() {
    let relayed = PoolConfig::new(
        Ipv4Addr::new(10, 9, 0, 100),
        Ipv4Addr::new(10, 9, 0, 110),
        Ipv4Addr::new(255, 255, 255, 0),
    );
    let c = core(StaticDirectory::new(), vec![pool(), relayed]);
    let relay = Ipv4Addr::new(172, 16, 0, 1); // no pool of its own
    let src = SocketAddrV4::new(relay, 67);
    let handle = |m: &Message| {
        futures::executor::block_on(c.handle(&m.to_vec().expect("encode"), Port::Dhcp, src))
    };

    let mut m = req(
        MessageType::Discover,
        vec![DhcpOption::SubnetSelection(Ipv4Addr::new(10, 9, 0, 0))],
    );
    m.set_giaddr(relay).set_hops(1);
    let o = handle(&m);
    let (offer, dest) = reply_of(&o);
    assert_eq!(
        offer.yiaddr(),
        Ipv4Addr::new(10, 9, 0, 100),
        "pool by option 118"
    );
    assert_eq!(dest, SocketAddrV4::new(relay, 67), "reply to the relay");
    assert_eq!(
        offer.opts().get(OptionCode::SubnetSelection),
        Some(&DhcpOption::SubnetSelection(Ipv4Addr::new(10, 9, 0, 0))),
        "option 118 echoed"
    );

    let mut info = dhcproto::v4::relay::RelayAgentInformation::default();
    info.insert(RelayInfo::LinkSelection(Ipv4Addr::new(10, 9, 0, 0)));
    let mut m = req(
        MessageType::Discover,
        vec![DhcpOption::RelayAgentInformation(info)],
    );
    m.set_chaddr(&[0x52, 0x54, 0, 0x99, 0, 2]);
    m.set_giaddr(relay).set_hops(1);
    let (offer, _) = reply_of(&handle(&m));
    assert_eq!(
        offer.yiaddr().octets()[..3],
        [10, 9, 0],
        "pool by link selection"
    );

    // Naming a subnet without a pool is not for us.
    let mut m = req(
        MessageType::Discover,
        vec![DhcpOption::SubnetSelection(Ipv4Addr::new(192, 168, 5, 0))],
    );
    m.set_giaddr(relay);
    assert_eq!(handle(&m), DhcpOutcome::Drop(DropReason::NotForUs));
}

#[test]
fn pxe_client_gets_boot_file_in_authoritative_mode() {
    let dir = StaticDirectory::new();
    dir.insert(
        MacAddr(MAC),
        MachineEntry {
            intent: BootIntent::LocalDisk,
            reserved_ip: None,
            hostname: Some("n1".into()),
        },
    );
    let c = core(dir, vec![pool()]);
    let m = req(
        MessageType::Discover,
        vec![
            DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003016".to_vec()),
            DhcpOption::ClientSystemArchitecture(7u16.into()),
        ],
    );
    let (offer, _) = reply_of(&run(&c, &m));
    assert_eq!(offer.siaddr(), SRV);
    assert_eq!(
        offer.opts().get(OptionCode::BootfileName),
        Some(&DhcpOption::BootfileName(b"snponly.efi".to_vec()))
    );
    assert_eq!(
        offer.opts().get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("n1".into()))
    );
    // Proxy-only options stay out of authoritative answers.
    assert!(offer.opts().get(OptionCode::VendorExtensions).is_none());
}

fn pool() -> PoolConfig {
    PoolConfig::new(
        Ipv4Addr::new(10, 0, 0, 10),
        Ipv4Addr::new(10, 0, 0, 12),
        Ipv4Addr::new(255, 255, 255, 0),
    )
}

fn lease_of(mac: MacAddr, ip: Ipv4Addr, expires_at: i64) -> AddressLease {
    AddressLease {
        mac,
        ip,
        hostname: None,
        client_id: None,
        expires_at,
        state: AddressLeaseState::Bound,
    }
}

/// With two authoritative interfaces on one lease store, each table takes only the leases
/// in its own subnets: another interface's leases are neither handed out again, nor
/// reclaimed, nor deleted.
#[test]
fn a_table_loads_only_the_leases_of_its_own_subnets() {
    let mac = |n: u8| MacAddr([2, 0, 0, 1, 0, n]);
    let ours = lease_of(mac(1), Ipv4Addr::new(10, 0, 0, 10), i64::MAX);
    // Another interface's subnet, long expired: reclaimable at once if it were ours.
    let theirs = lease_of(mac(2), Ipv4Addr::new(10, 78, 0, 150), 0);
    let mut t = AddressLeaseTable::new(
        Ipv4Addr::new(10, 0, 0, 1),
        &[pool()],
        vec![ours.clone(), theirs.clone()],
    );
    assert_eq!(t.by_key.len(), 1, "only the lease in 10.0.0.0/24 is loaded");
    assert!(t.by_key.contains_key(&ours.key()));
    assert!(!t.by_ip.contains_key(&theirs.ip));
    // Filling the pool (and running dry) never hands out, reclaims or deletes theirs.
    for n in 3..=6u8 {
        let key = AddressLeaseKey::Mac(mac(n));
        let Some(ip) = t.allocate(&key, mac(n), 0, None, None) else {
            assert!(n > 4, "two free addresses");
            continue;
        };
        assert!(pool().contains_range(ip), "{ip}");
        let changes = t.bind(key, lease_of(mac(n), ip, i64::MAX));
        assert!(
            changes.iter().all(
                |c| !matches!(c, AddressLeaseChange::Reclaim { key, .. } if *key == theirs.key())
            ),
            "{changes:?}"
        );
    }
    assert_eq!(t.by_key.len(), 3);
}

#[test]
fn allocation_and_reclaim() {
    let mut t = AddressLeaseTable::new(Ipv4Addr::new(10, 0, 0, 1), &[pool()], Vec::new());
    let macs: Vec<MacAddr> = (1..=4).map(|i| MacAddr([2, 0, 0, 0, 0, i])).collect();
    let keys: Vec<AddressLeaseKey> = macs.iter().map(|m| AddressLeaseKey::Mac(*m)).collect();
    let a = t.allocate(&keys[0], macs[0], 0, None, None).expect("ip");
    t.record_offer(&keys[0], a);
    assert_eq!(
        t.allocate(&keys[0], macs[0], 0, None, None),
        Some(a),
        "same offer again"
    );
    let b = t.allocate(&keys[1], macs[1], 0, None, None).expect("ip");
    assert_ne!(a, b);
    t.record_offer(&keys[1], b);
    let c = t.allocate(&keys[2], macs[2], 0, None, None).expect("ip");
    t.record_offer(&keys[2], c);
    assert_eq!(
        t.allocate(&keys[3], macs[3], 0, None, None),
        None,
        "pool full"
    );
    // An expired lease of another client is reclaimed with a Reclaim first.
    t.drop_offer(&keys[0]);
    let changes = t.bind(keys[0].clone(), lease_of(macs[0], a, 0));
    assert_eq!(changes.len(), 1);
    let ip = t
        .allocate(&keys[3], macs[3], 0, None, None)
        .expect("reclaimed");
    assert_eq!(ip, a);
    let changes = t.bind(keys[3].clone(), lease_of(macs[3], ip, i64::MAX));
    assert_eq!(
        changes[0],
        AddressLeaseChange::Reclaim {
            key: keys[0].clone(),
            ip: a
        }
    );
    // Reservation outside the range but in the subnet.
    let r = Ipv4Addr::new(10, 0, 0, 50);
    assert_eq!(t.allocate(&keys[0], macs[0], 0, Some(r), None), Some(r));
}

#[test]
fn expired_leases_are_reclaimed_only_when_no_address_is_free_oldest_first() {
    let m = |i: u8| MacAddr([2, 0, 0, 0, 1, i]);
    let ip = |i: u8| Ipv4Addr::new(10, 0, 0, i);
    let now = now_ms();
    // Pool 10..=12: A (.10) expired a minute ago, B (.11) an hour ago; .12 never used.
    let mut released = lease_of(m(9), ip(12), now + 3_600_000);
    released.state = AddressLeaseState::Released;
    let mut t = AddressLeaseTable::new(
        SRV,
        &[pool()],
        vec![
            lease_of(m(1), ip(10), now - 60_000),
            lease_of(m(2), ip(11), now - 3_600_000),
        ],
    );
    let key = |i: u8| AddressLeaseKey::Mac(m(i));
    // A free address goes first, even though two expired ones come earlier in the range.
    assert_eq!(t.allocate(&key(3), m(3), 0, None, None), Some(ip(12)));
    // Asking for an expired address of someone else does not get it while one is free.
    assert_eq!(
        t.allocate(&key(3), m(3), 0, None, Some(ip(10))),
        Some(ip(12))
    );
    t.bind(key(3), lease_of(m(3), ip(12), now + 3_600_000));
    // The pool has no free address left: the oldest expiry (B's) goes first.
    assert_eq!(t.allocate(&key(4), m(4), 0, None, None), Some(ip(11)));
    let changes = t.bind(key(4), lease_of(m(4), ip(11), now + 3_600_000));
    assert_eq!(
        changes[0],
        AddressLeaseChange::Reclaim {
            key: key(2),
            ip: ip(11)
        }
    );
    // A client whose own lease expired gets its address back (it is still free for it).
    assert_eq!(t.allocate(&key(1), m(1), 0, None, None), Some(ip(10)));
    assert_eq!(t.allocate(&key(5), m(5), 0, None, None), Some(ip(10)));
    t.bind(key(5), lease_of(m(5), ip(10), now + 3_600_000));
    assert_eq!(t.allocate(&key(6), m(6), 0, None, None), None, "all live");
    // A released lease is reclaimable at once, before leases that expire later.
    let mut rel = lease_of(m(3), ip(12), now);
    rel.state = AddressLeaseState::Released;
    t.put(key(3), rel);
    assert_eq!(t.allocate(&key(6), m(6), 0, None, None), Some(ip(12)));
    let _ = released;
}

fn req_from(mac: [u8; 6], client_id: Option<&[u8]>, mt: MessageType) -> Message {
    let mut m = req(mt, vec![]);
    m.set_chaddr(&mac);
    if let Some(id) = client_id {
        m.opts_mut()
            .insert(DhcpOption::ClientIdentifier(id.to_vec()));
    }
    m
}

/// DISCOVER then REQUEST; returns the address and the store changes of the ACK.
fn dora(
    c: &DhcpCore,
    mac: [u8; 6],
    client_id: Option<&[u8]>,
) -> (Ipv4Addr, Vec<AddressLeaseChange>) {
    let (offer, _) = reply_of(&run(c, &req_from(mac, client_id, MessageType::Discover)));
    let ip = offer.yiaddr();
    let mut r = req_from(mac, client_id, MessageType::Request);
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SRV));
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    match run(c, &r) {
        DhcpOutcome::Durable {
            changes,
            reply,
            refusal,
        } => {
            let (ack, _) = reply_of(&DhcpOutcome::Durable {
                changes: changes.clone(),
                reply,
                refusal,
            });
            assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
            assert_eq!(ack.yiaddr(), ip);
            (ip, changes)
        }
        other => panic!("no ACK: {other:?}"),
    }
}

#[test]
fn client_identifier_keys_the_lease() {
    let c = core(StaticDirectory::new(), vec![pool()]);
    let m1 = [2, 0, 0, 0, 2, 1];
    let m2 = [2, 0, 0, 0, 2, 2];
    let (ip_x, changes) = dora(&c, m1, Some(b"\0host-x"));
    let [AddressLeaseChange::Upsert(l)] = &changes[..] else {
        panic!("{changes:?}")
    };
    assert_eq!(l.key(), AddressLeaseKey::ClientId(b"\0host-x".to_vec()));
    assert_eq!(l.key().to_string(), "id:00686f73742d78");
    assert_eq!(l.mac, MacAddr(m1));
    // Same client identifier from another NIC: the same lease.
    let (again, _) = dora(&c, m2, Some(b"\0host-x"));
    assert_eq!(
        again, ip_x,
        "the client identifier, not chaddr, names the client"
    );
    // Same chaddr, another identifier: another client, another address.
    let (ip_y, _) = dora(&c, m1, Some(b"\0host-y"));
    assert_ne!(ip_y, ip_x);
    // Same chaddr, no identifier: a third client.
    let (ip_m, changes) = dora(&c, m1, None);
    assert!(ip_m != ip_x && ip_m != ip_y, "{ip_m} {ip_x} {ip_y}");
    assert!(
        matches!(&changes[..], [AddressLeaseChange::Upsert(l)] if l.key() == AddressLeaseKey::Mac(MacAddr(m1)))
    );
    // An identifier that is hardware type 1 + this MAC is the MAC's key.
    let mut hw = vec![1u8];
    hw.extend_from_slice(&m1);
    let (ip_hw, _) = dora(&c, m1, Some(&hw));
    assert_eq!(ip_hw, ip_m);
    // RELEASE is matched by identifier too; another identifier's release is ignored.
    let mut rel = req_from(m2, Some(b"\0host-y"), MessageType::Release);
    rel.set_ciaddr(ip_x);
    assert_eq!(run(&c, &rel), DhcpOutcome::Silent);
    let mut rel = req_from(m2, Some(b"\0host-x"), MessageType::Release);
    rel.set_ciaddr(ip_x);
    assert!(matches!(
        run(&c, &rel),
        DhcpOutcome::Durable { reply: None, .. }
    ));
}

/// Applies a batch to a map the way a store does (in order).
fn apply(store: &mut HashMap<AddressLeaseKey, AddressLease>, changes: &[AddressLeaseChange]) {
    for ch in changes {
        match ch {
            AddressLeaseChange::Upsert(l) => {
                store.retain(|_, o| o.ip != l.ip);
                store.insert(l.key(), l.clone());
            }
            AddressLeaseChange::Delete { key } | AddressLeaseChange::Reclaim { key, .. } => {
                store.remove(key);
            }
        }
    }
}

#[test]
fn declined_address_is_persisted_and_stays_out_after_a_restart() {
    let c = core(StaticDirectory::new(), vec![pool()]);
    let mut store = HashMap::new();
    let a = [2, 0, 0, 0, 3, 1];
    let (ip, changes) = dora(&c, a, None);
    apply(&mut store, &changes);
    // Someone else declining A's address is ignored.
    let mut d = req_from([2, 0, 0, 0, 3, 9], None, MessageType::Decline);
    d.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    assert_eq!(run(&c, &d), DhcpOutcome::Silent);
    let mut d = req_from(a, None, MessageType::Decline);
    d.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    d.opts_mut().insert(DhcpOption::ServerIdentifier(SRV));
    let DhcpOutcome::Durable {
        changes,
        reply: None,
        ..
    } = run(&c, &d)
    else {
        panic!("DECLINE must be stored")
    };
    assert_eq!(
        changes[0],
        AddressLeaseChange::Delete {
            key: AddressLeaseKey::Mac(MacAddr(a))
        }
    );
    let AddressLeaseChange::Upsert(held) = &changes[1] else {
        panic!("{changes:?}")
    };
    assert_eq!(held.state, AddressLeaseState::Declined);
    assert_eq!(held.key(), AddressLeaseKey::Declined(ip));
    assert_eq!(held.key().to_string(), format!("declined:{ip}"));
    assert!(held.expires_at > now_ms() + 500_000);
    apply(&mut store, &changes);
    // A new server over the stored rows: nobody gets the address, not even A.
    let fresh = DhcpCore::new(
        c.cfg.clone(),
        Arc::new(StaticDirectory::new()),
        Arc::new(Metrics::new()),
        store.values().cloned().collect(),
    );
    let other = dora(&fresh, [2, 0, 0, 0, 4, 0], None).0;
    let (got_a, _) = dora(&fresh, a, None);
    assert!(other != ip && got_a != ip, "declined {ip} handed out");
    // The pool (3 addresses) is now full: the held address is not reclaimed.
    let o = run(
        &fresh,
        &req_from([2, 0, 0, 0, 4, 1], None, MessageType::Discover),
    );
    assert_eq!(o, DhcpOutcome::Silent, "pool exhausted while {ip} is held");
    // Once the hold is over the address is reclaimable like an expired lease.
    let mut over = held.clone();
    over.expires_at = now_ms() - 1;
    let fresh = DhcpCore::new(
        c.cfg.clone(),
        Arc::new(StaticDirectory::new()),
        Arc::new(Metrics::new()),
        vec![over],
    );
    let mut seen = Vec::new();
    for i in 0..3u8 {
        seen.push(dora(&fresh, [2, 0, 0, 0, 5, i], None).0);
    }
    assert_eq!(
        seen.last(),
        Some(&ip),
        "last, when nothing else is free: {seen:?}"
    );
}

#[test]
fn decline_hold_is_the_configured_one() {
    for hold in [Duration::from_secs(30), Duration::from_secs(7200)] {
        let mut c = core(StaticDirectory::new(), vec![pool()]);
        c.cfg.decline_hold = hold;
        let a = [2, 0, 0, 0, 6, 1];
        let (ip, _) = dora(&c, a, None);
        let mut d = req_from(a, None, MessageType::Decline);
        d.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        let before = now_ms();
        let DhcpOutcome::Durable { changes, .. } = run(&c, &d) else {
            panic!("DECLINE must be stored")
        };
        let after = now_ms();
        let [_, AddressLeaseChange::Upsert(held)] = &changes[..] else {
            panic!("{changes:?}")
        };
        let ms = hold.as_millis() as i64;
        assert!(
            (before + ms..=after + ms).contains(&held.expires_at),
            "held until {} for a {hold:?} hold (now {before})",
            held.expires_at
        );
    }
}

/// Two instances on one segment: a lease the shared store refused (another instance's client
/// holds the address) comes back as a NAK, and the table then offers the client another
/// address; an address another instance leased, read back from the store, is offered to nobody.
#[test]
fn a_refused_lease_is_naked_and_another_instances_lease_is_not_offered() {
    let c = core(StaticDirectory::new(), vec![pool()]);
    c.share_store();
    let a = [2, 0, 0, 0, 7, 1];
    let offer = reply_of(&run(&c, &req_from(a, None, MessageType::Discover))).0;
    let ip = offer.yiaddr();
    let mut r = req_from(a, None, MessageType::Request);
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SRV));
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    let DhcpOutcome::Durable {
        refusal: Some(nak), ..
    } = run(&c, &r)
    else {
        panic!("a REQUEST's outcome carries its refusal")
    };
    let nak = dhcproto::v4::Message::decode(&mut dhcproto::Decoder::new(&nak.bytes)).expect("nak");
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    // The store says another instance's client (b) holds `ip`.
    let holder = lease_of(MacAddr([2, 0, 0, 0, 7, 2]), ip, now_ms() + 600_000);
    c.lost(&[crate::lease::LostLease {
        key: AddressLeaseKey::Mac(MacAddr(a)),
        ip,
        holder,
    }]);
    let again = reply_of(&run(&c, &req_from(a, None, MessageType::Discover))).0;
    assert_ne!(
        again.yiaddr(),
        ip,
        "offered the address the store gave away"
    );
    // Another instance's lease read back from the store: nobody is offered its address.
    let other_ip = again.yiaddr();
    c.merge_stored(vec![lease_of(
        MacAddr([2, 0, 0, 0, 7, 3]),
        other_ip,
        now_ms() + 600_000,
    )]);
    let third = reply_of(&run(
        &c,
        &req_from([2, 0, 0, 0, 7, 4], None, MessageType::Discover),
    ))
    .0;
    assert!(third.yiaddr() != other_ip && third.yiaddr() != ip);
}
