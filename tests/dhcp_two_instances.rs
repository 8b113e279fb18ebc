//! Two `rackshare serve` instances on one PostgreSQL, each running authoritative DHCP with
//! the same pool on its own veth into one bridge the test creates, and 200 real DHCP clients
//! (one ISC dhclient on 200 macvlan interfaces, in a namespace of their own). Every lease is
//! read back from the database and from the clients' lease file: no address twice. Then one
//! instance is killed (-9) and the clients start again (INIT-REBOOT): the other instance
//! answers them all, with the same addresses.

mod common;

use common::Service;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::netns::{require, Lab};

const CLIENTS: usize = 200;
const SERVER_A: &str = "10.77.0.2";
const SERVER_B: &str = "10.77.0.3";

/// One instance inside `ns` (whose `eth0` is on the bridge), authoritative for the pool.
fn instance_in(ns: &str, db: &str, key_from: Option<&Path>) -> Service {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    if let Some(from) = key_from {
        // Instances share the secret key (provisioned identically).
        let key = data.join("secret.key");
        std::fs::copy(from.join("secret.key"), &key).expect("copy the secret key");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let args: Vec<String> = [
        "serve",
        "--data-dir",
        &data.display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        db,
        "--energy-interval-secs",
        "0",
        "--pxe-interface",
        "eth0",
        "--pxe-mode",
        "authoritative",
        "--pxe-pool",
        "10.77.0.10-10.77.0.250",
        "--pxe-router",
        "10.77.0.1",
        // Each instance hears the other answer on the segment; the probe that refuses
        // authoritative mode then is for a foreign server, and this one is ours (README).
        "--pxe-force",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Service::spawn_in(Some(ns), dir, args)
}

/// The last lease dhclient recorded per interface: (address, server identifier).
fn client_leases(path: &Path) -> BTreeMap<String, (String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = BTreeMap::new();
    for block in text.split("lease {").skip(1) {
        let field = |name: &str| {
            block.lines().find_map(|l| {
                let l = l.trim().trim_end_matches(';');
                l.strip_prefix(name)
                    .map(|v| v.trim().trim_matches('"').to_string())
            })
        };
        if let (Some(i), Some(ip), Some(sid)) = (
            field("interface"),
            field("fixed-address"),
            field("option dhcp-server-identifier"),
        ) {
            out.insert(i, (ip, sid));
        }
    }
    out
}

/// Starts one dhclient on every client interface (foreground; killed -9 by the caller, so
/// it sends no RELEASE and the leases stay the clients'). Returns its pid.
fn start_clients(lab: &Lab, ns: &str, leases: &Path, tag: &str, ifaces: &[String]) -> u32 {
    let conf = lab.path("dhclient.conf");
    std::fs::write(
        &conf,
        "timeout 120;\nretry 5;\ninitial-interval 1;\nbackoff-cutoff 4;\n\
         request subnet-mask, routers;\n",
    )
    .expect("conf");
    let pidfile = lab.path(&format!("dhclient-{tag}.pid"));
    let mut argv: Vec<String> = [
        "dhclient",
        "-d",
        "-4",
        "-cf",
        &conf.display().to_string(),
        "-lf",
        &leases.display().to_string(),
        "-pf",
        &pidfile.display().to_string(),
        "-sf",
        "/bin/true",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(ifaces.iter().cloned());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    lab.spawn(ns, &argv, &lab.path(&format!("dhclient-{tag}.log")))
}

/// Polls `done` every half second for at most three minutes.
async fn wait_until(lab: &Lab, tag: &str, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} (round {tag}); dhclient log:\n{}",
            std::fs::read_to_string(lab.path(&format!("dhclient-{tag}.log"))).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The bound leases in the database: (key, address, written_at).
async fn stored_leases(db: &str) -> Vec<(String, String, i64)> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(db).await.expect("database");
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT lease_key, ip, written_at FROM dhcp_leases WHERE state = 'bound'")
            .fetch_all(&pool)
            .await
            .expect("leases");
    pool.close().await;
    rows
}

#[tokio::test]
async fn two_instances_on_one_segment_never_give_one_address_twice() {
    require("dhclient", "isc-dhcp-client");
    let lab = Lab::new("dhcp2");
    let ns_a = lab.add_host(
        "dhcpa",
        "52:54:00:aa:00:02",
        Some(&format!("{SERVER_A}/24")),
    );
    let ns_b = lab.add_host(
        "dhcpb",
        "52:54:00:aa:00:03",
        Some(&format!("{SERVER_B}/24")),
    );
    let ns_c = lab.add_host("clients", "52:54:00:aa:00:04", None);
    let ifaces: Vec<String> = (0..CLIENTS).map(|i| format!("mv{i}")).collect();
    for (i, name) in ifaces.iter().enumerate() {
        lab.ip(
            &ns_c,
            &format!(
                "link add {name} link eth0 address 02:42:{:02x}:{:02x}:00:01 type macvlan mode bridge",
                i / 256,
                i % 256
            ),
        );
        lab.ip(&ns_c, &format!("link set {name} up"));
    }
    let db = common::fresh_postgres().await;
    let a = instance_in(&ns_a, &db, None);
    let b = instance_in(&ns_b, &db, Some(&a.data_dir()));

    // Round 1: 200 clients, both servers answering every DISCOVER.
    let leases = lab.path("dhclient.leases");
    let pid = start_clients(&lab, &ns_c, &leases, "first", &ifaces);
    wait_until(&lab, "first", "not every client got a lease", || {
        client_leases(&leases).len() == CLIENTS
    })
    .await;
    lab.kill(pid, nix::sys::signal::Signal::SIGKILL);
    let first = client_leases(&leases);
    let addrs: HashSet<&String> = first.values().map(|(ip, _)| ip).collect();
    assert_eq!(
        addrs.len(),
        CLIENTS,
        "an address went to two clients: {first:?}"
    );
    let stored = stored_leases(&db).await;
    let stored_ips: HashSet<&String> = stored.iter().map(|(_, ip, _)| ip).collect();
    assert_eq!(
        stored_ips.len(),
        stored.len(),
        "the database holds one address twice"
    );
    assert_eq!(
        stored.len(),
        CLIENTS,
        "one stored lease per client: {stored:?}"
    );
    for (iface, (ip, _)) in &first {
        assert!(
            stored_ips.contains(ip),
            "{iface}'s address {ip} is not in the database"
        );
    }

    // Round 2: the instance that answered more is killed; the clients reboot and ask for
    // their addresses again (INIT-REBOOT), and the other one serves them all.
    let a_count = first.values().filter(|(_, s)| s == SERVER_A).count();
    let (mut killed, _survivor, survivor_ip) = if a_count * 2 >= CLIENTS {
        (a, b, SERVER_B)
    } else {
        (b, a, SERVER_A)
    };
    killed.kill9();
    let killed_at = inventory::now_ms();
    let pid = start_clients(&lab, &ns_c, &leases, "second", &ifaces);
    let mut renewed = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    while renewed < CLIENTS {
        renewed = stored_leases(&db)
            .await
            .iter()
            .filter(|(_, _, at)| *at > killed_at)
            .count();
        assert!(
            Instant::now() < deadline,
            "{renewed} of {CLIENTS} leases renewed by the survivor; dhclient log:\n{}",
            std::fs::read_to_string(lab.path("dhclient-second.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_until(
        &lab,
        "second",
        "the clients did not record the survivor's ACKs",
        || {
            let now = client_leases(&leases);
            now.len() == CLIENTS && now.values().all(|(_, by)| by == survivor_ip)
        },
    )
    .await;
    lab.kill(pid, nix::sys::signal::Signal::SIGKILL);
    let second = client_leases(&leases);
    for (iface, (ip, _)) in &first {
        assert_eq!(
            &second[iface].0, ip,
            "{iface} got another address after the failover"
        );
    }
    let stored = stored_leases(&db).await;
    assert_eq!(stored.len(), CLIENTS, "{stored:?}");
    eprintln!(
        "two instances: round 1 {a_count} of {CLIENTS} clients answered by {SERVER_A}; \
         round 2 all by {survivor_ip}, same addresses"
    );
}
