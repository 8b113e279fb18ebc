//! Power, boot device and inspection through the real binary against a real Redfish emulator
//! (sushy-tools, fake driver) on 127.0.0.1.

mod common;

use common::{Db, Service};
use serde_json::Value;
use testkit::{default_system, Sushy, SushyOpts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_bootdev_inspect_through_cli_and_audit() {
    let sys = default_system();
    let uuid = sys.uuid;
    let sushy = Sushy::start(
        &[sys],
        SushyOpts {
            users: vec![("admin".into(), "correct-horse".into())],
            ..Default::default()
        },
    );
    let s = Service::start_with(Db::Sqlite, &["--energy-interval-secs", "0"]).await;
    let pw = common::write(s.dir.path(), "bmc-pw", "correct-horse\n");
    let url = format!("{}/redfish/v1/Systems/{uuid}", sushy.url());
    s.cli(&[
        "machine",
        "add",
        "rf1",
        "--mac",
        "52:54:00:12:34:01",
        "--bmc",
        &url,
        "--bmc-user",
        "admin",
        "--bmc-password-file",
        pw.to_str().expect("p"),
    ]);
    s.cli(&["user", "add", "tech", "--role", "technician"]);
    let tech = s.cli_json(&["token", "create", "--user", "tech"])["token"]
        .as_str()
        .expect("token")
        .to_string();

    let st = s.cli_json(&["power", "rf1", "status"]);
    assert_eq!(st["power_state"], "off", "{st}");
    // On waits until the emulator reports it (sushy lands power changes after 1-11 s).
    let out = s.cli_as(&tech, &["power", "rf1", "on", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["power_state"], "on");
    let raw = sushy
        .system_json(uuid, Some(("admin", "correct-horse")))
        .await;
    assert_eq!(raw["PowerState"], "On", "the emulator agrees");

    s.cli(&["bootdev", "rf1", "pxe", "--mode", "uefi"]);
    let raw = sushy
        .system_json(uuid, Some(("admin", "correct-horse")))
        .await;
    assert_eq!(raw["Boot"]["BootSourceOverrideTarget"], "Pxe");
    assert_eq!(raw["Boot"]["BootSourceOverrideMode"], "UEFI");

    let inspected = s.cli_json(&["machine", "inspect", "rf1"]);
    let m = &inspected["machine"];
    assert_eq!(m["vendor"], raw["Manufacturer"], "{inspected}");
    let macs: Vec<&str> = m["nics"]
        .as_array()
        .expect("nics")
        .iter()
        .filter_map(|n| n["mac"].as_str())
        .collect();
    assert_eq!(
        macs,
        default_system().macs,
        "the BMC's second NIC joined the inventory"
    );
    assert_eq!(
        m["nics"][0]["pxe"], true,
        "the PXE NIC stays the enrolled one"
    );

    let shown = s.cli_json(&["machine", "show", "rf1"]);
    assert_eq!(shown["bmc"]["consecutive_failures"], 0);
    assert!(shown["bmc"]["last_success_at"].is_i64());
    assert_eq!(shown["bmc"]["power_state"], "on");

    // Who did what is in the audit log.
    let ev = s.cli_json(&["events", "--machine", "rf1"]);
    let find = |action: &str| {
        ev.as_array()
            .expect("ev")
            .iter()
            .find(|e| e["action"] == action)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(find("machine.power")["actor"], "tech");
    assert_eq!(find("machine.power")["outcome"], "ok");
    assert_eq!(find("machine.bootdev")["actor"], "admin");
    assert_eq!(find("machine.inspect")["outcome"], "ok");

    // A wrong password: one clear line naming the machine, no secret, health records it.
    let bad = common::write(s.dir.path(), "bad-pw", "battery-staple\n");
    s.cli(&[
        "machine",
        "edit",
        "rf1",
        "--bmc",
        &url,
        "--bmc-user",
        "admin",
        "--bmc-password-file",
        bad.to_str().expect("p"),
    ]);
    let out = s.cli_as(&s.admin_token, &["power", "rf1", "status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rf1") && err.trim().lines().count() == 1,
        "{err}"
    );
    assert!(
        !err.contains("battery-staple") && !err.contains("correct-horse"),
        "{err}"
    );
    let shown = s.cli_json(&["machine", "show", "rf1"]);
    assert_eq!(shown["bmc"]["consecutive_failures"], 1);
    assert!(shown["bmc"]["last_error"]
        .as_str()
        .is_some_and(|e| !e.contains("battery-staple")));
    assert!(!s.log_text().contains("battery-staple") && !s.log_text().contains("correct-horse"));

    // A machine without a BMC says so.
    s.cli(&["machine", "add", "bare", "--mac", "52:54:00:12:34:99"]);
    let out = s.cli_as(&s.admin_token, &["power", "bare", "on"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no BMC"));
    // And a bad BMC URL is refused at enrolment.
    let out = s.cli_as(
        &s.admin_token,
        &[
            "machine",
            "add",
            "odd",
            "--mac",
            "52:54:00:12:34:98",
            "--bmc",
            "redfish+gopher://x",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("BMC URL"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn energy_sampler_integrates_bmc_power_readings() {
    let bmc = testkit::fake_redfish::FakeRedfish::start(360.0).await;
    let s = Service::start_with(Db::Sqlite, &["--energy-interval-secs", "1"]).await;
    s.cli(&[
        "machine",
        "add",
        "meter",
        "--mac",
        "52:54:00:12:35:01",
        "--bmc",
        &bmc.url(),
        "--bmc-user",
        "u",
    ]);
    let reading: Value = s
        .http()
        .get(format!("{}/api/v1/machines/meter/power/reading", s.url))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .expect("reading")
        .json()
        .await
        .expect("json");
    assert_eq!(reading["watts"], 360.0);
    // 360 W for a few 1-second intervals: 0.1 Wh per second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut wh = 0.0;
    while std::time::Instant::now() < deadline {
        wh = s.cli_json(&["machine", "show", "meter"])["energy_wh"]
            .as_f64()
            .unwrap_or(0.0);
        if wh >= 0.2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(wh >= 0.2, "energy accumulates from the sampler: {wh} Wh");
    // Every sample is one trapezoid of 360 W: the total is a multiple of 0.1 Wh per second.
    assert!(
        wh < 360.0 / 3600.0 * 40.0,
        "no more than the elapsed time allows: {wh}"
    );
}
