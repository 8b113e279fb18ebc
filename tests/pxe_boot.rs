//! Real firmware PXE-boots from the real `rackshare serve`: a QEMU VM (TCG, SeaBIOS with the
//! iPXE ROM) on a bridge inside a network namespace the test creates. Authoritative mode with
//! a known machine (local-disk script, lease in the database), then proxy mode beside dnsmasq
//! with discovery (an unknown VM is enrolled as `new`). udhcpc clients check durable leases,
//! relayed subnets and several boot interfaces (`[[pxe-interface]]`) from one `serve`.

mod common;

use common::Service;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::netns::{require, start_dnsmasq, Lab};

fn check_firmware() {
    require("qemu-system-x86_64", "qemu-system-x86");
    require("dnsmasq", "dnsmasq-base");
    for (f, pkg) in [
        ("/usr/lib/ipxe/qemu/efi-virtio.rom", "ipxe-qemu"),
        ("/usr/lib/ipxe/undionly.kpxe", "ipxe"),
    ] {
        assert!(
            Path::new(f).exists(),
            "{f} is missing: install the Debian package `{pkg}`"
        );
    }
}

/// Starts a VM with `mac` on tap0 — SeaBIOS with the iPXE ROM, or with `uefi` OVMF's own PXE
/// (no option ROM) — and waits (bounded) for `marker` on its serial console.
fn boot_vm_with(lab: &Lab, mac: &str, marker: &str, uefi: bool) -> String {
    let serial = lab.path(&format!("serial-{mac}.log"));
    let sercon = lab.path("sercon");
    std::fs::write(&sercon, [0xf8, 0x03]).expect("sercon");
    let vars = lab.path(&format!("vars-{mac}.fd"));
    let nic = if uefi {
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
            .expect("OVMF vars (Debian package ovmf)");
        format!("virtio-net-pci,netdev=n0,mac={mac},romfile=")
    } else {
        format!("virtio-net-pci,netdev=n0,mac={mac}")
    };
    let serial_arg = format!("file:{}", serial.display());
    let sercon_arg = format!("name=etc/sercon-port,file={}", sercon.display());
    let code = "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".to_string();
    let vars_arg = format!("if=pflash,format=raw,file={}", vars.display());
    let mut argv = vec![
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
        argv.extend(["-drive", code.as_str(), "-drive", vars_arg.as_str()]);
    } else {
        argv.extend(["-fw_cfg", sercon_arg.as_str()]);
    }
    let pid = lab.spawn(&lab.srv, &argv, &lab.path(&format!("qemu-{mac}.log")));
    let read = || String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).to_string();
    let end = Instant::now() + Duration::from_secs(180);
    while Instant::now() < end && !read().contains(marker) {
        std::thread::sleep(Duration::from_millis(250));
    }
    lab.kill(pid, nix::sys::signal::Signal::SIGKILL);
    read()
}

/// A BIOS VM (SeaBIOS with the iPXE ROM).
fn boot_vm(lab: &Lab, mac: &str, marker: &str) -> String {
    boot_vm_with(lab, mac, marker, false)
}

fn serve_in(lab: &Lab, extra: &[&str]) -> Service {
    common::serve_in_lab(&lab.srv, tempfile::tempdir().expect("tmp"), extra)
}

#[tokio::test]
async fn bios_vm_boots_its_script_authoritative_then_discovered_in_proxy_mode() {
    check_firmware();

    // Authoritative: rackshare hands out the address and the machine's local-disk script.
    let lab = Lab::new("e2eauth");
    lab.ip(&lab.srv, "tuntap add tap0 mode tap");
    lab.ip(&lab.srv, "link set tap0 master br0 up");
    let mut s = serve_in(
        &lab,
        &[
            "--pxe-mode",
            "authoritative",
            "--pxe-pool",
            "10.77.0.100-10.77.0.150",
            "--pxe-router",
            "10.77.0.1",
        ],
    );
    let mac = "52:54:00:b0:00:11";
    // A static reservation outside the dynamic pool.
    s.cli(&[
        "machine",
        "add",
        "vm1",
        "--mac",
        &format!("{mac}=10.77.0.42"),
    ]);
    s.cli(&["machine", "state", "vm1", "available"]);
    let log = boot_vm(
        &lab,
        mac,
        &format!("rackshare: booting {mac} from its local disk"),
    );
    assert!(
        log.contains(&format!("rackshare: booting {mac} from its local disk")),
        "serial console:\n{log}\nserver log:\n{}",
        s.log_text()
    );
    // UEFI: OVMF's own PXE takes snponly.efi over TFTP (after its tsize probe), then iPXE
    // fetches the same route.
    let uefi_mac = "52:54:00:e0:00:12";
    s.cli(&["machine", "add", "vm2", "--mac", uefi_mac]);
    s.cli(&["machine", "state", "vm2", "available"]);
    let ulog = boot_vm_with(
        &lab,
        uefi_mac,
        &format!("rackshare: booting {uefi_mac} from its local disk"),
        true,
    );
    assert!(
        ulog.contains(&format!(
            "rackshare: booting {uefi_mac} from its local disk"
        )),
        "UEFI serial console:\n{ulog}\nserver log:\n{}",
        s.log_text()
    );
    let ev = s.cli_json(&["events", "--machine", "vm1"]);
    assert!(
        ev.as_array()
            .expect("ev")
            .iter()
            .any(|e| e["action"] == "machine.boot_script" && e["detail"]["script"] == "local-disk"),
        "{ev}"
    );
    // The lease is durable: it is in the database the service writes.
    let db = s.data_dir().join("rackshare.db");
    assert!(s.stop(), "SIGTERM stops DHCP, TFTP and the API cleanly");
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("db");
    let leased: Vec<String> = sqlx::query_scalar("SELECT ip FROM dhcp_leases WHERE mac = $1")
        .bind(mac)
        .fetch_all(&pool)
        .await
        .expect("q");
    assert_eq!(
        leased,
        ["10.77.0.42"],
        "one durable lease for the VM, at its reserved address"
    );
    assert!(
        log.contains("10.77.0.42"),
        "the VM got its reserved address:\n{log}"
    );
    pool.close().await;
    drop(s);
    drop(lab);

    // Proxy beside dnsmasq, discovery on: an unknown machine is enrolled as `new`, an inspect
    // job starts for it, and its next script boots the agent in inspect mode.
    let lab = Lab::new("e2eproxy");
    lab.ip(&lab.srv, "tuntap add tap0 mode tap");
    lab.ip(&lab.srv, "link set tap0 master br0 up");
    start_dnsmasq(&lab);
    let s = serve_in(&lab, &["--pxe-mode", "proxy", "--pxe-discovery"]);
    let unknown = "52:54:00:b0:00:22";
    let marker = format!("rackshare: booting the agent on {unknown} (mode inspect)");
    let log = boot_vm(&lab, unknown, &marker);
    assert!(
        log.contains(&marker) && log.contains("waits: its inspection is starting"),
        "serial console:\n{log}\nserver log:\n{}",
        s.log_text()
    );
    let found = s.cli_json(&["machine", "list", "--mac", unknown]);
    assert_eq!(found[0]["name"], "new-525400b00022", "{found}");
    assert_eq!(found[0]["state"], "inspecting");
    let jobs = s.cli_json(&["job", "list", "--machine", "new-525400b00022"]);
    assert_eq!(jobs[0]["kind"], "inspect", "{jobs}");
    assert_eq!(jobs[0]["requested_by"], "pxe", "{jobs}");
    let dns_leases = std::fs::read_to_string(lab.path("dnsmasq.leases")).unwrap_or_default();
    assert!(
        dns_leases.contains(unknown),
        "the address came from dnsmasq: {dns_leases}"
    );
}

/// One DHCP exchange with busybox udhcpc from namespace `ns`; returns the address it was given.
fn udhcpc_once(lab: &Lab, ns: &str, tag: &str) -> String {
    let ip = lease_field(&udhcpc_env(lab, ns, tag), "ip");
    assert!(!ip.is_empty(), "udhcpc got no lease (its stderr is above)");
    ip
}

/// The value of `key` in a lease environment from [`udhcpc_env`]; empty when absent.
fn lease_field(env: &str, key: &str) -> String {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn dhcp_leases_survive_a_restart_of_the_service() {
    let lab = Lab::new("e2erestart");
    let client = lab.add_host("cli", "52:54:00:c0:00:01", None);
    let args = [
        "--pxe-mode",
        "authoritative",
        "--pxe-pool",
        "10.77.0.100-10.77.0.150",
        "--pxe-force",
    ];
    let mut s = serve_in(&lab, &args);
    let first = udhcpc_once(&lab, &client, "a");
    assert!(s.stop());
    // Same data dir, new process: the lease comes back from the database.
    let dir = s.take_dir();
    // Another client takes an address meanwhile, so a forgetful server would hand ours out.
    let s2 = common::serve_in_lab(&lab.srv, dir, &args);
    let other = lab.add_host("cli2", "52:54:00:c0:00:02", None);
    let second_client_ip = udhcpc_once(&lab, &other, "b");
    let again = udhcpc_once(&lab, &client, "c");
    assert_eq!(
        again, first,
        "the same client gets the same address after a restart"
    );
    assert_ne!(second_client_ip, first);
    drop(s2);
}

/// A relayed segment: rackshare (authoritative, one `[[pxe-subnet]]` from its config file) on
/// the lab's bridge; dnsmasq as a DHCP relay in a namespace with one leg on the bridge and one
/// on a segment of its own; a udhcpc client on that segment gets an address from the relayed
/// subnet's pool with that subnet's router, MTU and lease time, while a client on the bridge
/// still gets one from the flag pool.
#[tokio::test]
async fn a_client_behind_a_dhcp_relay_gets_its_subnets_pool_and_options() {
    require("dnsmasq", "dnsmasq-base");
    require("udhcpc", "udhcpc");
    let lab = Lab::new("e2erelay");
    let relay = lab.add_host("relay", "02:00:00:00:00:05", Some("10.77.0.2/24"));
    let client = lab.add_linked_host("rcli", "52:54:00:c0:00:09", &relay, "eth1");
    lab.ip(&relay, "addr add 10.88.0.1/24 dev eth1");
    // Replies go to the relay's giaddr (10.88.0.1): the server routes to it via the relay.
    lab.ip(&lab.srv, "route add 10.88.0.0/24 via 10.77.0.2");
    let fwd = lab.exec(
        &relay,
        &["sysctl", "-w", "net.ipv4.ip_forward=1"],
        Duration::from_secs(5),
    );
    assert!(fwd.status.success(), "{fwd:?}");
    let pid = lab.path("relay.pid").display().to_string();
    lab.spawn(
        &relay,
        &[
            "dnsmasq",
            "-d",
            "--port=0",
            "--conf-file=/dev/null",
            "-u",
            "root",
            &format!("--pid-file={pid}"),
            "--dhcp-relay=10.88.0.1,10.77.0.1",
            "--log-dhcp",
        ],
        &lab.path("relay.log"),
    );

    let dir = tempfile::tempdir().expect("tmp");
    let config = common::write(
        dir.path(),
        "rackshare.toml",
        r#"
pxe-mode = "authoritative"
pxe-pool = "10.77.0.100-10.77.0.150"
pxe-router = "10.77.0.1"
pxe-force = true

[[pxe-subnet]]
pool = "10.88.0.100-10.88.0.200"
mask = "255.255.255.0"
router = "10.88.0.1"
dns = ["10.88.0.1"]
domain = "rack2.coop"
ntp = ["10.88.0.1"]
mtu = 9000
lease-secs = 1234
"#,
    );
    let config = config.display().to_string();
    let s = common::serve_in_lab(&lab.srv, dir, &["--config", &config]);

    let env = udhcpc_env(&lab, &client, "relayed");
    let field = |k: &str| lease_field(&env, k);
    let ip: std::net::Ipv4Addr = field("ip").parse().unwrap_or_else(|_| {
        panic!(
            "no address: {env}\nrelay log:\n{}\nserver log:\n{}",
            std::fs::read_to_string(lab.path("relay.log")).unwrap_or_default(),
            s.log_text()
        )
    });
    assert!(
        (u32::from(std::net::Ipv4Addr::new(10, 88, 0, 100))
            ..=u32::from(std::net::Ipv4Addr::new(10, 88, 0, 200)))
            .contains(&u32::from(ip)),
        "{ip} is not from the relayed pool: {env}"
    );
    assert_eq!(field("router"), "10.88.0.1", "{env}");
    assert_eq!(field("subnet"), "255.255.255.0", "{env}");
    assert_eq!(field("mtu"), "9000", "{env}");
    assert_eq!(field("lease"), "1234", "{env}");
    assert_eq!(field("domain"), "rack2.coop", "{env}");
    assert_eq!(field("dns"), "10.88.0.1", "{env}");
    assert_eq!(field("ntpsrv"), "10.88.0.1", "{env}");
    assert_eq!(field("serverid"), "10.77.0.1", "{env}");

    // The directly attached segment still gets the flag pool.
    let direct = lab.add_host("dcli", "52:54:00:c0:00:0a", None);
    let direct_ip = udhcpc_once(&lab, &direct, "direct");
    assert!(direct_ip.starts_with("10.77.0.1"), "{direct_ip}");
    // Both leases are durable and listed, each with its client's MAC.
    let leases = s.cli_json(&["dhcp", "leases"]);
    let has = |ip: &str, mac: &str| {
        leases
            .as_array()
            .is_some_and(|a| a.iter().any(|l| l["ip"] == ip && l["mac"] == mac))
    };
    assert!(has(&ip.to_string(), "52:54:00:c0:00:09"), "{leases}");
    assert!(has(&direct_ip, "52:54:00:c0:00:0a"), "{leases}");
    drop(s);
}

/// One DHCP exchange with udhcpc from `ns` asking for MTU and NTP too; returns the
/// environment the lease script saw (`key=value` lines), empty without a lease.
fn udhcpc_env(lab: &Lab, ns: &str, tag: &str) -> String {
    require("udhcpc", "udhcpc");
    let script = lab.path(&format!("udhcpc-{tag}.sh"));
    let got = lab.path(&format!("udhcpc-{tag}.env"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && env > '{}'\nexit 0\n",
            got.display()
        ),
    )
    .expect("script");
    std::process::Command::new("chmod")
        .arg("755")
        .arg(&script)
        .status()
        .expect("chmod");
    let out = lab.exec(
        ns,
        &[
            "udhcpc",
            "-f",
            "-q",
            "-n",
            "-i",
            "eth0",
            "-s",
            script.to_str().expect("p"),
            "-O",
            "mtu",
            "-O",
            "ntpsrv",
            "-t",
            "5",
            "-T",
            "1",
        ],
        Duration::from_secs(20),
    );
    let env = std::fs::read_to_string(&got).unwrap_or_default();
    if env.is_empty() {
        eprintln!("udhcpc: {}", String::from_utf8_lossy(&out.stderr));
    }
    env
}

/// A second bridge br1 (10.78.0.1/24) in the server namespace; returns a client on br0
/// (`mac_a`) and one on br1 (`mac_b`).
fn second_segment(lab: &Lab, mac_a: &str, mac_b: &str) -> (String, String) {
    lab.ip(
        &lab.srv,
        "link add br1 type bridge forward_delay 0 stp_state 0",
    );
    lab.ip(&lab.srv, "addr add 10.78.0.1/24 dev br1");
    lab.ip(&lab.srv, "link set br1 up");
    let a = lab.add_host("clia", mac_a, None);
    let b = lab.add_linked_host("clib", mac_b, &lab.srv, "h1b");
    lab.ip(&lab.srv, "link set h1b master br1 up");
    (a, b)
}

/// Two boot interfaces from one `serve` (`[[pxe-interface]]` tables, issue #3): the server
/// namespace has bridges br0 (10.77.0.1/24) and br1 (10.78.0.1/24), each authoritative with a
/// pool and router of its own. A udhcpc client on each segment gets its own segment's pool,
/// router and lease time; both leases are in `dhcp_leases`; the iPXE script fetched over each
/// segment carries that segment's server address; after a restart both clients get their
/// addresses again (each interface loads only its own subnets' leases).
#[tokio::test]
async fn two_interfaces_each_hand_out_their_own_segments_pool() {
    require("udhcpc", "udhcpc");
    require("curl", "curl");
    let lab = Lab::new("e2emultiif");
    let (a, b) = second_segment(&lab, "52:54:00:c1:00:01", "52:54:00:c1:00:02");

    let dir = tempfile::tempdir().expect("tmp");
    let config = common::write(
        dir.path(),
        "rackshare.toml",
        r#"
listen = "0.0.0.0:9090"
no-tls = true
energy-interval-secs = 0

[[pxe-interface]]
interface = "br0"
mode = "authoritative"
pool = "10.77.0.100-10.77.0.150"
router = "10.77.0.1"
force = true

[[pxe-interface]]
interface = "br1"
mode = "authoritative"
pool = "10.78.0.200-10.78.0.220"
router = "10.78.0.1"
lease-secs = 900
"#,
    )
    .display()
    .to_string();
    let data = dir.path().join("data").display().to_string();
    let args: Vec<String> = ["serve", "--data-dir", &data, "--config", &config]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut s = Service::spawn_in(Some(&lab.srv), dir, args.clone());

    let field = lease_field;
    let env_a = udhcpc_env(&lab, &a, "a1");
    let env_b = udhcpc_env(&lab, &b, "b1");
    let (ip_a, ip_b) = (field(&env_a, "ip"), field(&env_b, "ip"));
    let in_range = |ip: &str, first: [u8; 4], last: [u8; 4]| {
        ip.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| {
            (u32::from(std::net::Ipv4Addr::from(first))..=u32::from(std::net::Ipv4Addr::from(last)))
                .contains(&u32::from(ip))
        })
    };
    assert!(
        in_range(&ip_a, [10, 77, 0, 100], [10, 77, 0, 150]),
        "br0 client: {env_a}\nserver log:\n{}",
        s.log_text()
    );
    assert!(
        in_range(&ip_b, [10, 78, 0, 200], [10, 78, 0, 220]),
        "br1 client: {env_b}\nserver log:\n{}",
        s.log_text()
    );
    assert_eq!(field(&env_a, "router"), "10.77.0.1", "{env_a}");
    assert_eq!(field(&env_a, "serverid"), "10.77.0.1", "{env_a}");
    assert_eq!(field(&env_a, "lease"), "3600", "{env_a}");
    assert_eq!(field(&env_b, "router"), "10.78.0.1", "{env_b}");
    assert_eq!(field(&env_b, "serverid"), "10.78.0.1", "{env_b}");
    assert_eq!(field(&env_b, "lease"), "900", "{env_b}");

    // Both leases are durable rows of dhcp_leases, each with its client's MAC.
    let leases = s.cli_json(&["dhcp", "leases"]);
    let has = |ip: &str, mac: &str| {
        leases
            .as_array()
            .is_some_and(|a| a.iter().any(|l| l["ip"] == ip && l["mac"] == mac))
    };
    assert!(has(&ip_a, "52:54:00:c1:00:01"), "{leases}");
    assert!(has(&ip_b, "52:54:00:c1:00:02"), "{leases}");

    // The script fetched over each segment sends the machine back to that segment's address.
    let script = |ns: &str, ip: &str, server: &str, mac: &str| {
        lab.ip(ns, &format!("addr add {ip}/24 dev eth0"));
        let out = lab.exec(
            ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                "10",
                &format!("http://{server}:8080/boot/{mac}.ipxe"),
            ],
            Duration::from_secs(15),
        );
        lab.ip(ns, &format!("addr del {ip}/24 dev eth0"));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let on_b = script(&b, &ip_b, "10.78.0.1", "52-54-00-c1-00-02");
    assert!(on_b.contains("http://10.78.0.1:8080/boot/"), "{on_b}");
    assert!(!on_b.contains("10.77.0.1"), "{on_b}");
    let on_a = script(&a, &ip_a, "10.77.0.1", "52-54-00-c1-00-01");
    assert!(on_a.contains("http://10.77.0.1:8080/boot/"), "{on_a}");
    assert!(!on_a.contains("10.78.0.1"), "{on_a}");

    // Restart on the same data: each interface loads its own leases back.
    assert!(s.stop());
    let dir = s.take_dir();
    let s2 = Service::spawn_in(Some(&lab.srv), dir, args);
    let again_b = field(&udhcpc_env(&lab, &b, "b2"), "ip");
    let again_a = field(&udhcpc_env(&lab, &a, "a2"), "ip");
    assert_eq!(
        (again_a.as_str(), again_b.as_str()),
        (ip_a.as_str(), ip_b.as_str()),
        "both clients keep their addresses after a restart; server log:\n{}",
        s2.log_text()
    );
    drop(s2);
}

/// The issue's cooperative: br0's router already runs DHCP (dnsmasq here), so rackshare is a
/// proxy there, while on br1 it hands out addresses. The br0 client's address comes from
/// dnsmasq and rackshare stores no lease for it; the br1 client's comes from rackshare's pool.
#[tokio::test]
async fn a_proxy_interface_beside_the_networks_dhcp_and_an_authoritative_one() {
    require("udhcpc", "udhcpc");
    let lab = Lab::new("e2emixif");
    start_dnsmasq(&lab);
    let (a, b) = second_segment(&lab, "52:54:00:c2:00:01", "52:54:00:c2:00:02");

    let dir = tempfile::tempdir().expect("tmp");
    let config = common::write(
        dir.path(),
        "rackshare.toml",
        r#"
listen = "0.0.0.0:9090"
no-tls = true
energy-interval-secs = 0

[[pxe-interface]]
interface = "br0"
mode = "proxy"

[[pxe-interface]]
interface = "br1"
mode = "authoritative"
pool = "10.78.0.200-10.78.0.220"
router = "10.78.0.1"
"#,
    )
    .display()
    .to_string();
    let data = dir.path().join("data").display().to_string();
    let args: Vec<String> = ["serve", "--data-dir", &data, "--config", &config]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let s = Service::spawn_in(Some(&lab.srv), dir, args);
    let field = lease_field;
    let env_a = udhcpc_env(&lab, &a, "a");
    let env_b = udhcpc_env(&lab, &b, "b");
    assert_eq!(
        field(&env_a, "serverid"),
        "10.77.0.2",
        "br0's address comes from dnsmasq: {env_a}\nserver log:\n{}",
        s.log_text()
    );
    assert!(field(&env_a, "ip").starts_with("10.77.0.1"), "{env_a}");
    assert_eq!(field(&env_b, "serverid"), "10.78.0.1", "{env_b}");
    assert!(field(&env_b, "ip").starts_with("10.78.0.2"), "{env_b}");
    let leases = s.cli_json(&["dhcp", "leases"]);
    let rows = leases.as_array().cloned().unwrap_or_default();
    assert_eq!(
        rows.len(),
        1,
        "only br1's client has a rackshare lease: {leases}"
    );
    assert_eq!(rows[0]["mac"], "52:54:00:c2:00:02", "{leases}");
    assert_eq!(rows[0]["ip"], field(&env_b, "ip").as_str(), "{leases}");
    drop(s);
}
