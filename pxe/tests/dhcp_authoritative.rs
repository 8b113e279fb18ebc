//! Authoritative mode against real clients: busybox udhcpc and ISC dhclient.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use pxe::{
    BootIntent, DhcpMode, FileAddressLeaseStore, MachineEntry, PoolConfig, PxeConfig,
    StaticDirectory,
};

fn config(lab: &Lab, lease_secs: u64) -> PxeConfig {
    let mut pool = PoolConfig::new(
        Ipv4Addr::new(10, 77, 0, 100),
        Ipv4Addr::new(10, 77, 0, 150),
        Ipv4Addr::new(255, 255, 255, 0),
    );
    pool.router = Some(SERVER_IP);
    pool.dns = vec![Ipv4Addr::new(10, 77, 0, 53)];
    pool.domain = Some("lab.example".into());
    pool.ntp = vec![SERVER_IP];
    pool.mtu = Some(1500);
    pool.lease_time = Duration::from_secs(lease_secs);
    let mut c = PxeConfig::new("br0", lab.fake_tftp_root());
    c.mode = DhcpMode::Authoritative { pools: vec![pool] };
    c
}

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
echo "$1 ip=$ip mask=$mask router=$router dns=$dns domain=$domain lease=$lease" >> "$LOG"
case "$1" in
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/24" dev "$interface" ;;
  deconfig) ip addr flush dev "$interface" ;;
esac
exit 0
"#;

fn udhcpc_script(lab: &Lab, name: &str) -> (String, std::path::PathBuf) {
    let log = lab.path(&format!("{name}.events"));
    let script = lab.path(&format!("{name}.sh"));
    std::fs::write(
        &script,
        UDHCPC_SCRIPT.replace("\"$LOG\"", &format!("'{}'", log.display())),
    )
    .unwrap();
    let mut perm = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&script, perm).unwrap();
    (script.display().to_string(), log)
}

fn events(log: &std::path::Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn udhcpc_lease_renew_release() {
    require("udhcpc", "udhcpc");
    let lab = Lab::new("udhcpc");
    let client = lab.add_host("cli", "02:00:00:00:01:01", None);
    let leases = lab.path("leases.jsonl");
    let srv = Server::start(
        &lab.srv,
        config(&lab, 3600),
        Arc::new(StaticDirectory::new()),
        Arc::new(FileAddressLeaseStore::new(&leases)),
    );
    let (script, log) = udhcpc_script(&lab, "u");
    let pid = lab.spawn(
        &client,
        &[
            "udhcpc", "-f", "-i", "eth0", "-s", &script, "-t", "5", "-T", "1", "-A", "1",
        ],
        &lab.path("udhcpc.log"),
    );
    wait_for("udhcpc bound", Duration::from_secs(15), || {
        events(&log).contains("bound ip=")
    });
    let ev = events(&log);
    assert!(ev.contains("bound ip=10.77.0.100 mask=24 router=10.77.0.1 dns=10.77.0.53 domain=lab.example lease=3600"), "{ev}");
    assert!(std::fs::read_to_string(&leases)
        .unwrap()
        .contains("\"ip\":\"10.77.0.100\""));

    // SIGUSR1: renew (unicast REQUEST with ciaddr).
    lab.kill(pid, Signal::SIGUSR1);
    wait_for("udhcpc renew", Duration::from_secs(15), || {
        events(&log).contains("renew ip=10.77.0.100")
    });
    assert!(get(&srv.metrics.leases_acked) >= 2);

    // SIGUSR2: release.
    lab.kill(pid, Signal::SIGUSR2);
    wait_for("server saw RELEASE", Duration::from_secs(10), || {
        get(&srv.metrics.leases_released) == 1
    });
    wait_for("release stored", Duration::from_secs(5), || {
        std::fs::read_to_string(&leases)
            .unwrap()
            .contains("\"state\":\"released\"")
    });
    assert!(srv.prometheus().contains("rackshare_dhcp_releases_total 1"));
    srv.stop().unwrap();
}

const DHCLIENT_SCRIPT: &str = r#"#!/bin/sh
echo "$reason ip=$new_ip_address mask=$new_subnet_mask routers=$new_routers" >> "$LOG"
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT) ip addr flush dev "$interface"; ip addr add "$new_ip_address/24" dev "$interface" ;;
  RELEASE|EXPIRE|STOP) ip addr flush dev "$interface" ;;
esac
exit 0
"#;

#[test]
fn dhclient_lease_renew_release() {
    require("dhclient", "isc-dhcp-client");
    let lab = Lab::new("dhclient");
    let client = lab.add_host("cli", "02:00:00:00:02:01", None);
    let leases = lab.path("leases.jsonl");
    // 16 s leases: T1 = 8 s, so dhclient renews by itself during the test.
    let srv = Server::start(
        &lab.srv,
        config(&lab, 16),
        Arc::new(StaticDirectory::new()),
        Arc::new(FileAddressLeaseStore::new(&leases)),
    );
    let log = lab.path("dh.events");
    let script = lab.path("dh.sh");
    std::fs::write(
        &script,
        DHCLIENT_SCRIPT.replace("\"$LOG\"", &format!("'{}'", log.display())),
    )
    .unwrap();
    let mut perm = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&script, perm).unwrap();
    let (script, lf, pf) = (
        script.display().to_string(),
        lab.path("dh.leases").display().to_string(),
        lab.path("dh.pid").display().to_string(),
    );
    lab.spawn(
        &client,
        &[
            "dhclient", "-d", "-v", "-1", "-sf", &script, "-lf", &lf, "-pf", &pf, "eth0",
        ],
        &lab.path("dhclient.log"),
    );
    wait_for("dhclient BOUND", Duration::from_secs(20), || {
        events(&log).contains("BOUND ip=10.77.0.100")
    });
    assert!(events(&log).contains("mask=255.255.255.0 routers=10.77.0.1"));
    wait_for("dhclient RENEW", Duration::from_secs(20), || {
        events(&log).contains("RENEW ip=10.77.0.100")
    });
    let out = lab.exec(
        &client,
        &[
            "dhclient", "-r", "-v", "-sf", &script, "-lf", &lf, "-pf", &pf, "eth0",
        ],
        Duration::from_secs(15),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("server saw RELEASE", Duration::from_secs(10), || {
        get(&srv.metrics.leases_released) == 1
    });
    srv.stop().unwrap();
}

#[test]
fn reservation_gives_reserved_address() {
    require("udhcpc", "udhcpc");
    let lab = Lab::new("resv");
    let client = lab.add_host("cli", "02:00:00:00:03:01", None);
    let dir = StaticDirectory::new();
    dir.insert(
        "02:00:00:00:03:01".parse().unwrap(),
        MachineEntry {
            intent: BootIntent::LocalDisk,
            reserved_ip: Some(Ipv4Addr::new(10, 77, 0, 42)),
            hostname: Some("node42".into()),
        },
    );
    let srv = Server::start(
        &lab.srv,
        config(&lab, 3600),
        Arc::new(dir),
        Arc::new(FileAddressLeaseStore::new(lab.path("leases.jsonl"))),
    );
    let (script, log) = udhcpc_script(&lab, "r");
    let out = lab.exec(
        &client,
        &[
            "udhcpc", "-f", "-q", "-n", "-i", "eth0", "-s", &script, "-t", "5", "-T", "1",
        ],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        events(&log).contains("bound ip=10.77.0.42"),
        "{}",
        events(&log)
    );
    srv.stop().unwrap();
}

#[test]
fn restart_keeps_leases() {
    require("udhcpc", "udhcpc");
    let lab = Lab::new("restart");
    let a = lab.add_host("a", "02:00:00:00:04:01", None);
    let b = lab.add_host("b", "02:00:00:00:04:02", None);
    let leases = lab.path("leases.jsonl");
    let dhcp = |ns: &str, name: &str| {
        let (script, log) = udhcpc_script(&lab, name);
        let out = lab.exec(
            ns,
            &[
                "udhcpc", "-f", "-q", "-n", "-i", "eth0", "-s", &script, "-t", "5", "-T", "1",
            ],
            Duration::from_secs(20),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ev = events(&log);
        let ip = ev
            .lines()
            .find_map(|l| l.strip_prefix("bound ip="))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no lease: {ev}"))
            .to_string();
        ip
    };
    let srv = Server::start(
        &lab.srv,
        config(&lab, 3600),
        Arc::new(StaticDirectory::new()),
        Arc::new(FileAddressLeaseStore::new(&leases)),
    );
    let ip_a = dhcp(&a, "a1");
    srv.stop().unwrap();

    // A new server over the same lease file.
    let srv = Server::start(
        &lab.srv,
        config(&lab, 3600),
        Arc::new(StaticDirectory::new()),
        Arc::new(FileAddressLeaseStore::new(&leases)),
    );
    let ip_b = dhcp(&b, "b1");
    assert_ne!(
        ip_a, ip_b,
        "the restarted server handed out a leased address again"
    );
    let ip_a2 = dhcp(&a, "a2");
    assert_eq!(ip_a, ip_a2, "client A lost its address across the restart");
    srv.stop().unwrap();
}

/// Starts `dhclient -d` in `ns` with its own lease file and an optional extra config line;
/// returns (pid, events log).
fn dhclient(
    lab: &Lab,
    ns: &str,
    name: &str,
    conf: &str,
    script_body: &str,
) -> (u32, std::path::PathBuf) {
    let log = lab.path(&format!("{name}.events"));
    let script = lab.path(&format!("{name}.sh"));
    std::fs::write(
        &script,
        script_body.replace("\"$LOG\"", &format!("'{}'", log.display())),
    )
    .unwrap();
    let mut perm = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&script, perm).unwrap();
    let cf = lab.path(&format!("{name}.conf"));
    std::fs::write(&cf, conf).unwrap();
    let (script, cf, lf, pf) = (
        script.display().to_string(),
        cf.display().to_string(),
        lab.path(&format!("{name}.leases")).display().to_string(),
        lab.path(&format!("{name}.pid")).display().to_string(),
    );
    let pid = lab.spawn(
        ns,
        &[
            "dhclient", "-d", "-v", "-cf", &cf, "-sf", &script, "-lf", &lf, "-pf", &pf, "eth0",
        ],
        &lab.path(&format!("{name}.log")),
    );
    (pid, log)
}

/// The address of the first `BOUND` in a dhclient events log.
fn bound_ip(log: &std::path::Path) -> Option<String> {
    events(log)
        .lines()
        .find_map(|l| l.strip_prefix("BOUND ip="))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
}

/// RFC 2131 §4.2: a client that sends a client identifier is known by it. dhclient with
/// `send dhcp-client-identifier` keeps its address after its NIC (MAC) changes, and another
/// client identifier on the first MAC is another client.
#[test]
fn dhclient_client_identifier_keys_the_lease() {
    require("dhclient", "isc-dhcp-client");
    let lab = Lab::new("clientid");
    let a = lab.add_host("a", "02:00:00:00:05:01", None);
    let leases = lab.path("leases.jsonl");
    let srv = Server::start(
        &lab.srv,
        config(&lab, 3600),
        Arc::new(StaticDirectory::new()),
        Arc::new(FileAddressLeaseStore::new(&leases)),
    );
    let conf_x = "send dhcp-client-identifier \"rackshare-host-x\";\n";
    let (pid, log) = dhclient(&lab, &a, "x1", conf_x, DHCLIENT_SCRIPT);
    wait_for("dhclient x BOUND", Duration::from_secs(20), || {
        bound_ip(&log).is_some()
    });
    let ip_x = bound_ip(&log).unwrap();
    lab.kill(pid, Signal::SIGTERM);
    let stored = std::fs::read_to_string(&leases).unwrap();
    // dhclient sends a quoted string as-is: the key is its hex.
    let hex: String = b"rackshare-host-x"
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        stored.contains(&format!("\"client_id\":\"{hex}\"")),
        "{stored}"
    );

    // The same machine with another NIC: a fresh DISCOVER (new lease file) from a new MAC.
    lab.ip(&a, "link set eth0 down");
    lab.ip(&a, "addr flush dev eth0");
    lab.ip(&a, "link set eth0 address 02:00:00:00:05:02");
    lab.ip(&a, "link set eth0 up");
    let (pid, log) = dhclient(&lab, &a, "x2", conf_x, DHCLIENT_SCRIPT);
    wait_for(
        "dhclient x on the new NIC BOUND",
        Duration::from_secs(20),
        || bound_ip(&log).is_some(),
    );
    assert_eq!(
        bound_ip(&log).unwrap(),
        ip_x,
        "same client identifier, same lease"
    );
    lab.kill(pid, Signal::SIGTERM);

    // The first MAC again, with another client identifier: another client, another address.
    let b = lab.add_host("b", "02:00:00:00:05:01", None);
    let conf_y = "send dhcp-client-identifier \"rackshare-host-y\";\n";
    let (pid, log) = dhclient(&lab, &b, "y", conf_y, DHCLIENT_SCRIPT);
    wait_for("dhclient y BOUND", Duration::from_secs(20), || {
        bound_ip(&log).is_some()
    });
    let ip_y = bound_ip(&log).unwrap();
    assert_ne!(
        ip_y, ip_x,
        "a MAC-keyed server would have given y x's address"
    );
    lab.kill(pid, Signal::SIGTERM);
    assert_eq!(get(&srv.metrics.leases_nak), 0);
    srv.stop().unwrap();
}

/// dhclient's script exits 1 on its first BOUND ("address in use"), so dhclient sends a
/// DHCPDECLINE and starts over. The declined address is stored, and a restarted server over
/// the same store does not hand it out.
#[test]
fn dhclient_decline_is_kept_across_a_restart() {
    require("dhclient", "isc-dhcp-client");
    require("udhcpc", "udhcpc");
    let lab = Lab::new("decline");
    let a = lab.add_host("a", "02:00:00:00:06:01", None);
    let leases = lab.path("leases.jsonl");
    let srv = Server::start(
        &lab.srv,
        config(&lab, 3600),
        Arc::new(StaticDirectory::new()),
        Arc::new(FileAddressLeaseStore::new(&leases)),
    );
    let marker = lab.path("declined-once");
    // The check comes before the script's own logging, so the only BOUND logged is the
    // address kept after the decline.
    let script = DHCLIENT_SCRIPT.replacen(
        "#!/bin/sh\n",
        &format!(
            "#!/bin/sh\nif [ \"$reason\" = BOUND ] && [ ! -e '{m}' ]; then touch '{m}'; echo \"DECLINING ip=$new_ip_address\" >> \"$LOG\"; exit 1; fi\n",
            m = marker.display()
        ),
        1,
    );
    let (pid, log) = dhclient(&lab, &a, "d", "", &script);
    wait_for(
        "dhclient declined then BOUND",
        Duration::from_secs(45),
        || bound_ip(&log).is_some(),
    );
    lab.kill(pid, Signal::SIGTERM);
    let ev = events(&log);
    let declined = ev
        .lines()
        .find_map(|l| l.strip_prefix("DECLINING ip="))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("the script never declined: {ev}"));
    let bound = bound_ip(&log).unwrap();
    assert_ne!(bound, declined, "{ev}");
    assert_eq!(get(&srv.metrics.leases_declined), 1);
    let stored = std::fs::read_to_string(&leases).unwrap();
    assert!(
        stored.contains(&format!("\"ip\":\"{declined}\""))
            && stored.contains("\"state\":\"declined\""),
        "{stored}"
    );
    srv.stop().unwrap();

    // A new server over the same store: two new clients get neither address.
    let srv = Server::start(
        &lab.srv,
        config(&lab, 3600),
        Arc::new(StaticDirectory::new()),
        Arc::new(FileAddressLeaseStore::new(&leases)),
    );
    for (i, mac) in ["02:00:00:00:06:02", "02:00:00:00:06:03"]
        .iter()
        .enumerate()
    {
        let c = lab.add_host(&format!("c{i}"), mac, None);
        let (script, log) = udhcpc_script(&lab, &format!("c{i}"));
        let out = lab.exec(
            &c,
            &[
                "udhcpc", "-f", "-q", "-n", "-i", "eth0", "-s", &script, "-t", "5", "-T", "1",
            ],
            Duration::from_secs(20),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ev = events(&log);
        assert!(ev.contains("bound ip="), "{ev}");
        assert!(
            !ev.contains(&format!("bound ip={declined} "))
                && !ev.contains(&format!("bound ip={bound} ")),
            "the restarted server handed out {declined} (declined) or {bound} (leased): {ev}"
        );
    }
    srv.stop().unwrap();
}
