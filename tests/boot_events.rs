//! Boot events through the real binary: a udhcpc client in a network namespace (showing a PXE
//! vendor class and arch), a TFTP fetch with tftp-hpa and a `/boot` script fetch with curl
//! from the same namespace; the API then lists what the boot server saw of the machine's MAC
//! (and of an unknown MAC, for staff only).

mod common;

use common::{pxe_udhcpc, Service};
use serde_json::Value;
use std::time::{Duration, Instant};
use testkit::netns::{require, Lab};

/// `GET path` with the admin's (or `token`'s) bearer token, from the server's namespace.
fn api_get(lab: &Lab, s: &Service, token: &str, path: &str) -> (u16, Value) {
    let out = lab.exec(
        &lab.srv,
        &[
            "curl",
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("{}{path}", s.url),
        ],
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn kinds(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["kind"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_boot_server_records_dhcp_tftp_and_boot_fetches_per_mac() {
    require("udhcpc", "udhcpc");
    require("tftp", "tftp-hpa");
    require("curl", "curl");
    let lab = Lab::new("bootev");
    let mac = "52:54:00:e7:00:01";
    let stranger = "52:54:00:e7:00:02";
    let client = lab.add_host("cli", mac, None);
    let other = lab.add_host("unk", stranger, None);
    let s = common::serve_in_lab(
        &lab.srv,
        tempfile::tempdir().expect("tmp"),
        &[
            "--pxe-mode",
            "authoritative",
            "--pxe-pool",
            "10.77.0.100-10.77.0.150",
            "--pxe-force",
        ],
    );
    s.cli(&["machine", "add", "bootee", "--mac", mac]);
    s.cli(&["machine", "state", "bootee", "available"]);

    pxe_udhcpc(&lab, &client);
    // udhcpc -q exits without keeping the address; the fetches need one.
    lab.ip(&client, "addr add 10.77.0.99/24 dev eth0");
    // The server learns the client's address from its ACK; the fetches come from the
    // address the test gave (udhcpc's is not kept), so one more exchange from it is not
    // needed: the TFTP and HTTP events are named by the ACKed address.
    let acked = {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, v) = api_get(
                &lab,
                &s,
                &s.admin_token,
                "/api/v1/machines/bootee/boot-events",
            );
            if let Some(ip) = v.as_array().and_then(|a| {
                a.iter()
                    .find(|e| e["kind"] == "dhcp.ack")
                    .and_then(|e| e["detail"]["address"].as_str().map(String::from))
            }) {
                break ip;
            }
            assert!(Instant::now() < end, "no dhcp.ack event: {v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    lab.ip(&client, "addr flush dev eth0");
    lab.ip(&client, &format!("addr add {acked}/24 dev eth0"));
    let dest = lab.path("undionly.kpxe");
    let out = lab.exec(
        &client,
        &[
            "tftp",
            "10.77.0.1",
            "-c",
            "get",
            "undionly.kpxe",
            dest.to_str().expect("path"),
        ],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "tftp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = lab.exec(
        &client,
        &[
            "curl",
            "-sf",
            &format!("http://10.77.0.1:8080/boot/{}.ipxe", mac.replace(':', "-")),
        ],
        Duration::from_secs(20),
    );
    assert!(
        String::from_utf8_lossy(&script.stdout).contains("#!ipxe"),
        "boot script: {}",
        String::from_utf8_lossy(&script.stderr)
    );

    let want = [
        "dhcp.discover",
        "dhcp.offer",
        "dhcp.request",
        "dhcp.ack",
        "tftp.read",
        "http.script",
    ];
    let end = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let (code, v) = api_get(
            &lab,
            &s,
            &s.admin_token,
            "/api/v1/machines/bootee/boot-events",
        );
        assert_eq!(code, 200, "{v}");
        let k = kinds(&v);
        if want.iter().all(|w| k.iter().any(|x| x == w)) {
            break v;
        }
        assert!(
            Instant::now() < end,
            "missing boot events, got {k:?}:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let list = events.as_array().expect("list");
    let discover = list
        .iter()
        .find(|e| e["kind"] == "dhcp.discover")
        .expect("discover");
    assert_eq!(
        discover["detail"]["vendor_class"], "PXEClient:Arch:00000:UNDI:002001",
        "{discover}"
    );
    assert_eq!(discover["detail"]["arch"], "bios", "{discover}");
    assert_eq!(discover["detail"]["answer"], "offer", "{discover}");
    let tftp = list
        .iter()
        .find(|e| e["kind"] == "tftp.read")
        .expect("tftp");
    assert_eq!(tftp["detail"]["file"], "undionly.kpxe", "{tftp}");
    let http = list
        .iter()
        .find(|e| e["kind"] == "http.script")
        .expect("script");
    assert_eq!(http["detail"]["script"], "local-disk", "{http}");
    assert!(list.iter().all(|e| e["mac"] == mac), "{events}");
    // Newest first, and `after` follows: nothing newer than the newest.
    let newest = list[0]["id"].as_i64().expect("id");
    let (_, none) = api_get(
        &lab,
        &s,
        &s.admin_token,
        &format!("/api/v1/machines/bootee/boot-events?after={newest}"),
    );
    assert_eq!(none, serde_json::json!([]));
    let (_, two) = api_get(
        &lab,
        &s,
        &s.admin_token,
        "/api/v1/machines/bootee/boot-events?limit=2",
    );
    assert_eq!(two.as_array().map(Vec::len), Some(2));

    // An unknown MAC's exchange: staff read it by MAC; a member neither by MAC nor by machine.
    pxe_udhcpc(&lab, &other);
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, v) = api_get(
            &lab,
            &s,
            &s.admin_token,
            &format!("/api/v1/boot-events?mac={stranger}"),
        );
        assert_eq!(code, 200, "{v}");
        if kinds(&v).iter().any(|k| k == "dhcp.discover") {
            break;
        }
        assert!(Instant::now() < end, "no events for the unknown MAC: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    s.cli(&["group", "add", "tenants"]);
    s.cli(&[
        "user", "add", "rosa", "--role", "member", "--group", "tenants",
    ]);
    let rosa = s.cli_json(&["token", "create", "--user", "rosa"])["token"]
        .as_str()
        .expect("token")
        .to_string();
    let (code, _) = api_get(
        &lab,
        &s,
        &rosa,
        &format!("/api/v1/boot-events?mac={stranger}"),
    );
    assert_eq!(code, 403);
    let (code, _) = api_get(&lab, &s, &rosa, "/api/v1/machines/bootee/boot-events");
    assert_eq!(
        code, 404,
        "another group's (here: no group's) machine is not found"
    );
    drop(s);
}
