//! `serve`'s flags and file turned into boot settings, and the refusals.

use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cmd {
    #[command(flatten)]
    s: ServeSettings,
}

fn flags(args: &[&str]) -> ServeSettings {
    Cmd::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
        .map(|c| c.s)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn file(text: &str) -> ServeSettings {
    parse_file(text).unwrap_or_else(|e| panic!("{e:#}"))
}

const BASE: &str = r#"
    pxe-interface = "br0"
    pxe-mode = "authoritative"
    pxe-pool = "10.77.0.100-10.77.0.150"
"#;

fn err(text: &str) -> String {
    match boot_settings(&file(text)) {
        Ok(b) => panic!("accepted: {b:?}"),
        Err(e) => format!("{e:#}"),
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("ip")
}

#[test]
fn flags_give_the_directly_attached_pool_with_ntp_mtu_and_the_decline_hold() {
    let s = flags(&[
        "--pxe-interface",
        "br0",
        "--pxe-mode",
        "authoritative",
        "--pxe-pool",
        "10.77.0.100-10.77.0.150",
        "--pxe-router",
        "10.77.0.1",
        "--pxe-ntp",
        "10.77.0.2",
        "--pxe-ntp",
        "10.77.0.3",
        "--pxe-mtu",
        "9000",
        "--pxe-decline-hold-secs",
        "90",
    ]);
    let b = boot_settings(&s).expect("valid").remove(0);
    assert_eq!(b.decline_hold, std::time::Duration::from_secs(90));
    let api::DhcpRole::Authoritative { pools } = b.mode else {
        panic!("{:?}", b.mode)
    };
    assert_eq!(
        pools,
        [api::BootPool {
            start: ip("10.77.0.100"),
            end: ip("10.77.0.150"),
            mask: None,
            router: Some(ip("10.77.0.1")),
            dns: vec![],
            domain: None,
            ntp: vec![ip("10.77.0.2"), ip("10.77.0.3")],
            mtu: Some(9000),
            lease_secs: 3600,
        }]
    );
    // The default hold is ten minutes; the file's key is the flag's name.
    let b = boot_settings(&file(BASE)).expect("valid").remove(0);
    assert_eq!(b.decline_hold, std::time::Duration::from_secs(600));
    let with_hold = file(&format!(
        "{BASE}\npxe-decline-hold-secs = 30\npxe-mtu = 1400"
    ));
    let b = boot_settings(&flags(&[]).or(with_hold.clone()))
        .expect("valid")
        .remove(0);
    assert_eq!(b.decline_hold, std::time::Duration::from_secs(30));
    // Flags win over the file.
    let b = boot_settings(&flags(&["--pxe-decline-hold-secs", "5"]).or(with_hold))
        .expect("valid")
        .remove(0);
    assert_eq!(b.decline_hold, std::time::Duration::from_secs(5));
}

#[test]
fn config_file_subnets_become_relayed_pools() {
    let s = file(&format!(
        r#"{BASE}
        pxe-lease-secs = 600
        [[pxe-subnet]]
        pool = "10.88.0.100-10.88.0.200"
        mask = "255.255.255.0"
        router = "10.88.0.1"
        dns = ["10.88.0.1"]
        domain = "rack2.coop"
        ntp = ["10.88.0.1"]
        mtu = 9000
        lease-secs = 3600

        [[pxe-subnet]]
        pool = "172.16.4.10-172.16.7.250"
        mask = "255.255.252.0"
        "#
    ));
    let b = boot_settings(&flags(&[]).or(s)).expect("valid").remove(0);
    let api::DhcpRole::Authoritative { pools } = b.mode else {
        panic!("{:?}", b.mode)
    };
    assert_eq!(pools.len(), 3);
    assert_eq!(pools[0].lease_secs, 600, "the flag pool");
    assert_eq!(
        pools[1],
        api::BootPool {
            start: ip("10.88.0.100"),
            end: ip("10.88.0.200"),
            mask: Some(ip("255.255.255.0")),
            router: Some(ip("10.88.0.1")),
            dns: vec![ip("10.88.0.1")],
            domain: Some("rack2.coop".into()),
            ntp: vec![ip("10.88.0.1")],
            mtu: Some(9000),
            lease_secs: 3600,
        }
    );
    // Defaults: a /24 mask is not assumed when one is given; lease time from pxe-lease-secs.
    assert_eq!(pools[2].mask, Some(ip("255.255.252.0")));
    assert_eq!(pools[2].lease_secs, 600);
    assert_eq!(pools[2].router, None);
}

#[test]
fn bad_subnets_are_refused_with_one_line_naming_the_subnet() {
    let sub = |body: &str| format!("{BASE}\n[[pxe-subnet]]\n{body}\n");
    let e = err(&format!(
        "{}[[pxe-subnet]]\npool = \"10.88.0.10-10.88.0.20\"\nmask = \"255.255.0.0\"\n",
        sub("pool = \"10.88.1.10-10.88.1.20\"")
    ));
    assert!(
        e.contains("subnet 10.88.0.0/16 overlaps subnet 10.88.1.0/24"),
        "{e}"
    );
    let e = err(&sub("pool = \"10.88.0.100-10.88.1.20\""));
    assert!(
        e.contains("subnet 10.88.0.0/24") && e.contains("does not fit in mask 255.255.255.0"),
        "{e}"
    );
    let e = err(&sub(
        "pool = \"10.88.0.100-10.88.0.200\"\nrouter = \"10.89.0.1\"",
    ));
    assert!(
        e.contains("subnet 10.88.0.0/24: router 10.89.0.1 is outside the subnet"),
        "{e}"
    );
    let e = err(&sub("pool = \"10.88.0.0-10.88.0.200\""));
    assert!(e.contains("network or broadcast"), "{e}");
    let e = err(&sub(
        "pool = \"10.88.0.10-10.88.0.20\"\nmask = \"255.0.255.0\"",
    ));
    assert!(e.contains("255.0.255.0 is not a subnet mask"), "{e}");
    let e = err(&sub("pool = \"10.77.0.160-10.77.0.170\""));
    assert!(
        e.contains("subnet 10.77.0.0/24 holds --pxe-pool 10.77.0.100-10.77.0.150"),
        "{e}"
    );
    let e = err(&sub("pool = \"10.88.0.20-10.88.0.10\""));
    assert!(e.contains("the first address comes after the last"), "{e}");
    let e = err(&sub("pool = \"10.88.0.10-10.88.0.20\"\nmtu = 40"));
    assert!(e.contains("MTU below 68"), "{e}");
    for e in [
        err(&sub("pool = \"10.88.0.10-10.88.0.20\"\nmtu = 40")),
        err(&sub("pool = \"10.88.0.100-10.88.1.20\"")),
    ] {
        assert!(!e.contains('\n'), "one line: {e}");
    }
    // Unknown keys are refused by the parser; subnets need authoritative mode.
    assert!(toml::from_str::<ServeSettings>(&sub("pool = \"a-b\"\nrouters = []")).is_err());
    let e = err("pxe-interface = \"br0\"\n[[pxe-subnet]]\npool = \"10.88.0.10-10.88.0.20\"\n");
    assert!(e.contains("authoritative"), "{e}");
}

const TWO: &str = r#"
    pxe-discovery = true
    pxe-decline-hold-secs = 60

    [[pxe-interface]]
    interface = "br-rack1"
    mode = "proxy"
    server-ip = "10.77.0.2"

    [[pxe-interface]]
    interface = "br-rack2"
    mode = "authoritative"
    pool = "10.78.0.100-10.78.0.200"
    router = "10.78.0.1"
    dns = ["10.78.0.1"]
    lease-secs = 600
    force = true

    [[pxe-interface.subnets]]
    pool = "10.79.0.100-10.79.0.200"
    router = "10.79.0.1"
"#;

#[test]
fn interface_tables_give_one_boot_interface_each_with_its_own_mode() {
    let all = boot_settings(&flags(&[]).or(file(TWO))).expect("valid");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].interface, "br-rack1");
    assert!(matches!(all[0].mode, api::DhcpRole::Proxy));
    assert_eq!(all[0].server_ip, Some(ip("10.77.0.2")));
    assert!(!all[0].force);
    assert_eq!(all[1].interface, "br-rack2");
    assert!(all[1].force);
    assert_eq!(all[1].server_ip, None);
    // Per-service settings reach every interface.
    for b in &all {
        assert!(b.discovery);
        assert_eq!(b.decline_hold, std::time::Duration::from_secs(60));
    }
    let api::DhcpRole::Authoritative { pools } = &all[1].mode else {
        panic!("{:?}", all[1].mode)
    };
    assert_eq!(pools.len(), 2);
    assert_eq!((pools[0].start, pools[0].mask), (ip("10.78.0.100"), None));
    assert_eq!(pools[0].router, Some(ip("10.78.0.1")));
    assert_eq!(pools[0].lease_secs, 600);
    // A relayed subnet of the table takes the table's lease time.
    assert_eq!(pools[1].start, ip("10.79.0.100"));
    assert_eq!(pools[1].lease_secs, 600);
    // The flag interface is one more, first.
    let all = boot_settings(&flags(&["--pxe-interface", "br0"]).or(file(TWO))).expect("valid");
    let names: Vec<&str> = all.iter().map(|b| b.interface.as_str()).collect();
    assert_eq!(names, ["br0", "br-rack1", "br-rack2"]);
}

#[test]
fn old_configs_keep_working_and_top_level_subnets_go_to_the_first_interface() {
    // A name, as before: one interface.
    let all = boot_settings(&file(BASE)).expect("valid");
    assert_eq!(all.len(), 1);
    // No interface at all: boot services off.
    assert!(boot_settings(&file("max-jobs = 2"))
        .expect("valid")
        .is_empty());
    // Top-level [[pxe-subnet]] with only tables: the first table's.
    let text = r#"
        [[pxe-subnet]]
        pool = "10.88.0.100-10.88.0.200"
        [[pxe-interface]]
        interface = "br0"
        mode = "authoritative"
        pool = "10.77.0.100-10.77.0.150"
        [[pxe-interface]]
        interface = "br1"
        mode = "authoritative"
        pool = "10.78.0.100-10.78.0.150"
    "#;
    let all = boot_settings(&file(text)).expect("valid");
    let n = |b: &api::BootSettings| match &b.mode {
        api::DhcpRole::Authoritative { pools } => pools.len(),
        api::DhcpRole::Proxy => 0,
    };
    assert_eq!((n(&all[0]), n(&all[1])), (2, 1));
}

#[test]
fn bad_interface_tables_are_refused_with_one_line_naming_the_interface() {
    let table =
        |name: &str, body: &str| format!("[[pxe-interface]]\ninterface = \"{name}\"\n{body}\n");
    let auth = |name: &str, pool: &str| {
        table(
            name,
            &format!("mode = \"authoritative\"\npool = \"{pool}\""),
        )
    };
    let check = |text: String, want: &str| {
        let e = match boot_settings(&file(&text)) {
            Ok(b) => panic!("accepted: {b:?}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains(want), "{e}\nwanted: {want}");
        assert!(!e.contains('\n'), "one line: {e}");
    };
    check(
        format!("{}{}", table("br0", ""), table("br0", "")),
        "[[pxe-interface]] br0: the interface is configured twice",
    );
    let e = match boot_settings(&flags(&["--pxe-interface", "br0"]).or(file(&table("br0", "")))) {
        Ok(b) => panic!("accepted: {b:?}"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("br0: the interface is configured twice"), "{e}");
    check(
        format!(
            "{}{}",
            auth("br0", "10.77.0.100-10.77.0.150"),
            auth("br1", "10.77.0.140-10.77.0.200")
        ),
        "boot interface br1: pool 10.77.0.140-10.77.0.200 overlaps pool 10.77.0.100-10.77.0.150 of boot interface br0",
    );
    // A relayed subnet of one interface holding another's directly attached pool.
    check(
        format!(
            "{}{}[[pxe-interface.subnets]]\npool = \"10.77.5.10-10.77.5.20\"\nmask = \"255.255.0.0\"\n",
            auth("br0", "10.77.0.100-10.77.0.150"),
            auth("br1", "10.78.0.100-10.78.0.150")
        ),
        "boot interface br1: pool 10.77.5.10-10.77.5.20 overlaps pool 10.77.0.100-10.77.0.150 of boot interface br0",
    );
    check(
        table("br1", "mode = \"dhcp\""),
        "[[pxe-interface]] br1: mode must be proxy or authoritative, not 'dhcp'",
    );
    check(
        table("br1", "mode = \"authoritative\""),
        "[[pxe-interface]] br1: mode authoritative needs pool FIRST-LAST",
    );
    check(
        table("br1", "pool = \"10.78.0.10-10.78.0.20\""),
        "[[pxe-interface]] br1: pool and subnets are for mode authoritative",
    );
    check(
        format!(
            "{}[[pxe-interface.subnets]]\npool = \"10.78.0.160-10.78.0.170\"\n",
            auth("br1", "10.78.0.100-10.78.0.150")
        ),
        "[[pxe-interface]] br1: subnets subnet 10.78.0.0/24 holds pool 10.78.0.100-10.78.0.150",
    );
    check(
        format!("pxe-mode = \"proxy\"\n{}", table("br1", "")),
        "--pxe-mode, --pxe-pool and [[pxe-subnet]] need --pxe-interface IF",
    );
    // Unknown keys in a table are refused by the parser, naming the key.
    let e = format!(
        "{:#}",
        parse_file(&table("br1", "pools = []")).expect_err("unknown key")
    );
    assert!(e.contains("pools"), "{e}");
    assert!(parse_file("pxe-interface = 3").is_err());
}

fn loaded(args: &[&str]) -> api::Config {
    let s = flags(args);
    load(ServeArgs {
        config: None,
        settings: s,
    })
    .map(|(c, _)| c)
    .unwrap_or_else(|e| panic!("{args:?}: {e:#}"))
}

fn refused(args: &[&str]) -> String {
    let s = flags(args);
    match load(ServeArgs {
        config: None,
        settings: s,
    }) {
        Ok(_) => panic!("accepted: {args:?}"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn tls_is_off_on_loopback_self_signed_beyond_it_and_the_operators_when_given() {
    assert_eq!(
        loaded(&["--listen", "127.0.0.1:9090"]).tls,
        api::TlsSetting::Off
    );
    assert_eq!(
        loaded(&["--listen", "0.0.0.0:9090"]).tls,
        api::TlsSetting::SelfSigned
    );
    assert_eq!(
        loaded(&["--listen", "0.0.0.0:9090", "--no-tls"]).tls,
        api::TlsSetting::Off
    );
    assert_eq!(
        loaded(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).tls,
        api::TlsSetting::Operator {
            cert: "c.pem".into(),
            key: "k.pem".into()
        }
    );
    assert!(
        refused(&["--tls-cert", "c.pem", "--tls-key", "k.pem", "--no-tls"]).contains("--no-tls")
    );
    let file = file("listen = \"10.0.0.1:9090\"\nno-tls = true\nmetrics-listen = \"off\"\nmax-connections = 10\n");
    let (c, _) = load(ServeArgs {
        config: None,
        settings: ServeSettings::default().or(file),
    })
    .expect("file keys");
    assert_eq!(c.tls, api::TlsSetting::Off);
    assert_eq!(c.metrics_listen, None);
    assert_eq!(c.connections.max_connections, 10);
}

#[test]
fn metrics_and_connection_flags() {
    let c = loaded(&[
        "--metrics-listen",
        "127.0.0.1:9200",
        "--http-header-timeout-secs",
        "5",
        "--max-connections-per-source",
        "3",
    ]);
    assert_eq!(
        c.metrics_listen,
        Some("127.0.0.1:9200".parse().expect("addr"))
    );
    assert_eq!(
        c.connections.header_timeout,
        std::time::Duration::from_secs(5)
    );
    assert_eq!(c.connections.max_per_source, 3);
    assert!(refused(&["--metrics-listen", "nowhere"]).contains("--metrics-listen"));
    assert!(refused(&["--max-connections", "0"]).contains("at least 1"));
}

#[test]
fn the_agent_https_port_is_a_flag_and_a_file_key() {
    assert_eq!(loaded(&[]).boot_https_port, 8443);
    assert_eq!(loaded(&["--boot-https-port", "9443"]).boot_https_port, 9443);
    let (c, _) = load(ServeArgs {
        config: None,
        settings: ServeSettings::default().or(file("boot-https-port = 10443\n")),
    })
    .expect("file key");
    assert_eq!(c.boot_https_port, 10443);
}
