//! Issue 18, running a cooperative: health-gated allocation, usage and energy reports, idle
//! power-off. The real binary over its CLI and HTTP API, real (fake-Redfish, sushy-tools) BMCs.

mod common;

use common::{databases, Service};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A group `coop` with member `rosa` and staff `ops`; their tokens.
fn people(s: &Service) -> (String, String) {
    s.cli(&["group", "add", "coop"]);
    s.cli(&["user", "add", "rosa", "--role", "member", "--group", "coop"]);
    s.cli(&["user", "add", "ops", "--role", "staff"]);
    let token = |u: &str| {
        s.cli_json(&["token", "create", "--user", u])["token"]
            .as_str()
            .expect("token")
            .to_string()
    };
    (token("rosa"), token("ops"))
}

fn run(s: &Service, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = s.cli_as(token, args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_as(s: &Service, token: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let (ok, out, err) = run(s, token, &a);
    assert!(ok, "rackshare {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// Waits (bounded) until `job show` satisfies `pred`.
fn wait_job(s: &Service, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = s.cli_json(&["job", "show", id]);
        if pred(&j) {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id}: {j:#}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_holds_back_a_dead_bmc_and_a_failed_wipe() {
    for db in databases() {
        let live = testkit::fake_redfish::FakeRedfish::start(100.0).await;
        // A BMC that answered once and is now gone: its port is closed.
        let dead_url = {
            let gone = testkit::fake_redfish::FakeRedfish::start(100.0).await;
            gone.url()
        };
        let s = Service::start(db).await;
        let (rosa, ops) = people(&s);
        for (name, mac, bmc) in [
            ("good", "52:54:00:18:00:01", Some(live.url())),
            ("dead", "52:54:00:18:00:02", Some(dead_url.clone())),
            ("unwiped", "52:54:00:18:00:03", None),
        ] {
            let mut args = vec!["machine", "add", name, "--mac", mac];
            if let Some(b) = &bmc {
                args.extend(["--bmc", b.as_str(), "--bmc-user", "u"]);
            }
            s.cli(&args);
            s.cli(&["machine", "state", name, "available"]);
        }
        // The dead BMC fails a command: its health record says so.
        let (ok, _, _) = run(&s, &s.admin_token, &["power", "dead", "status"]);
        assert!(!ok, "a closed port answers no power status");
        // A wipe that did not succeed (cancelled while it waited for its agent); staff put the
        // machine back to available by hand anyway.
        let job = s.cli_json(&["job", "start", "unwiped", "--kind", "wipe"]);
        let id = job["id"].as_i64().expect("job id").to_string();
        s.cli(&["job", "cancel", &id]);
        wait_job(&s, &id, |j| j["state"] == "cancelled");
        s.cli(&["machine", "state", "unwiped", "available"]);

        // The member asks for all three: refused, in counts only.
        let (ok, _, err) = run(&s, &rosa, &["lease", "create", "--count", "3"]);
        assert!(!ok, "three machines cannot be had");
        assert!(
            err.contains(
                "2 matching machines are held back: 1 BMC unreachable, 1 last wipe failed"
            ),
            "{err}"
        );
        assert!(err.contains("1 fit"), "{err}");
        let port = dead_url.rsplit(':').next().expect("port");
        assert!(
            !err.contains(port) && !err.contains("dead") && !err.contains("unwiped"),
            "no BMC details and no names for members: {err}"
        );
        // One machine is fine, and it is the healthy one.
        let lease = json_as(&s, &rosa, &["lease", "create", "--count", "1"]);
        assert_eq!(lease["machines"][0]["name"], "good", "{lease}");

        // Staff see the held-back machines and why on one list; members may not.
        let held = json_as(&s, &ops, &["machine", "list", "--held-back"]);
        let held = held.as_array().expect("list");
        assert_eq!(held.len(), 2, "{held:?}");
        assert_eq!(held[0]["name"], "dead");
        assert_eq!(held[0]["reasons"], serde_json::json!(["bmc_unreachable"]));
        assert!(held[0]["bmc_last_error"].is_string(), "{:?}", held[0]);
        assert_eq!(held[1]["name"], "unwiped");
        assert_eq!(held[1]["reasons"], serde_json::json!(["last_wipe_failed"]));
        assert_eq!(held[1]["last_wipe_job"].to_string(), id);
        let table = run(&s, &ops, &["machine", "list", "--held-back"]).1;
        assert!(table.contains("bmc_unreachable"), "{table}");
        let (ok, _, err) = run(&s, &rosa, &["machine", "list", "--held-back"]);
        assert!(!ok, "members do not see the held-back list: {err}");

        // The BMC answers again (pointed at a live one): the machine is back in the pool.
        s.cli(&["machine", "edit", "dead", "--bmc", &live.url()]);
        s.cli(&["power", "dead", "status"]);
        let lease = json_as(&s, &rosa, &["lease", "create", "--count", "1"]);
        assert_eq!(lease["machines"][0]["name"], "dead", "{lease}");
    }
}

/// Waits (bounded) until this month's report row of `coop`, as `token` sees it, satisfies `pred`.
fn wait_report(s: &Service, token: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = json_as(s, token, &["report", "usage", "--group", "coop"]);
        let row = r[0].clone();
        if pred(&row) {
            return row;
        }
        assert!(Instant::now() < deadline, "report never got there: {r:#}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_report_prefers_the_bmc_energy_counter_and_estimates_the_rest() {
    for db in databases() {
        // One BMC keeps an energy counter (at 100 kWh), the other only reports 360 W.
        let metered = testkit::fake_redfish::FakeRedfish::start_metered(1000.0, 100.0).await;
        let plain = testkit::fake_redfish::FakeRedfish::start(360.0).await;
        let s = Service::start_with(db, &["--energy-interval-secs", "1"]).await;
        let (rosa, ops) = people(&s);
        s.cli(&["group", "add", "other"]);
        for (name, mac, url) in [
            ("metered", "52:54:00:18:01:01", metered.url()),
            ("plain", "52:54:00:18:01:02", plain.url()),
        ] {
            s.cli(&[
                "machine",
                "add",
                name,
                "--mac",
                mac,
                "--bmc",
                &url,
                "--bmc-user",
                "u",
            ]);
            s.cli(&["machine", "state", name, "available"]);
        }
        let before = Instant::now();
        let lease = json_as(&s, &rosa, &["lease", "create", "--count", "2"]);
        let id = lease["id"].as_i64().expect("lease id").to_string();
        // Samples taken while the lease holds both machines: the counter's first reading in
        // the window is 100 kWh; then the BMC's counter rises by exactly 0.5 kWh.
        wait_report(&s, &rosa, |r| {
            r["energy_kwh_estimated"].as_f64() > Some(0.0)
        });
        metered.set_energy_kwh(100.5);
        wait_report(&s, &rosa, |r| r["energy_kwh_counter"] == 0.5);
        s.cli(&["lease", "release", &id]);
        let held = before.elapsed().as_secs_f64() / 3600.0;
        // The wipes cannot finish here (no agent; the fake BMC takes no power actions): they
        // fail, or are cancelled, and count as wipes that did not succeed.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let jobs = s.cli_json(&["job", "list"]);
            let open: Vec<String> = jobs
                .as_array()
                .into_iter()
                .flatten()
                .filter(|j| j["state"] == "queued" || j["state"] == "running")
                .map(|j| j["id"].to_string())
                .collect();
            if open.is_empty() {
                break;
            }
            for jid in open {
                // It may end on its own meanwhile: a refused cancel is fine.
                let _ = run(&s, &s.admin_token, &["job", "cancel", &jid]);
            }
            assert!(Instant::now() < deadline, "wipe jobs never ended: {jobs:#}");
            std::thread::sleep(Duration::from_millis(300));
        }
        let row = wait_report(&s, &rosa, |r| r["wipes"] == 2);
        assert_eq!(row["group"], "coop");
        assert_eq!(row["leases"], 1);
        assert_eq!(row["wipes_failed"], 2, "{row}");
        // The metered machine's kWh is the counter's rise, not its 1000 W integrated; the
        // plain one's is estimated from its readings: 360 W over at most the time held.
        assert_eq!(row["energy_kwh_counter"], 0.5, "{row}");
        let estimated = row["energy_kwh_estimated"].as_f64().expect("estimated");
        assert!(
            estimated > 0.0 && estimated <= 0.36 * held + 0.001,
            "{estimated} kWh estimated for {held} h at 360 W"
        );
        assert_eq!(row["energy_source"], "mixed");
        let total = row["energy_kwh"].as_f64().expect("total");
        assert!((total - 0.5 - estimated).abs() < 0.0015, "{row}");
        let used = row["machine_hours_used"].as_f64().expect("used");
        assert!(
            used > 0.0 && used <= 2.0 * held + 0.002,
            "two machines for at most {held} h: {used}"
        );
        assert_eq!(row["machine_hours_booked"], 0.0, "the lease ended: {row}");

        // Members see their own group's only; staff see every group; another month is empty.
        let mine = json_as(&s, &rosa, &["report", "usage"]);
        assert_eq!(mine.as_array().map(Vec::len), Some(1), "{mine}");
        let theirs = json_as(&s, &rosa, &["report", "usage", "--group", "other"]);
        assert_eq!(theirs, serde_json::json!([]));
        let all = json_as(&s, &ops, &["report", "usage"]);
        assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");
        let old = json_as(
            &s,
            &ops,
            &["report", "usage", "--month", "2026-01", "--group", "coop"],
        );
        assert_eq!(old[0]["month"], "2026-01");
        assert_eq!(old[0]["energy_kwh"], 0.0);
        assert_eq!(old[0]["energy_source"], "none");
        let (ok, _, err) = run(&s, &ops, &["report", "usage", "--month", "November"]);
        assert!(!ok && err.contains("YYYY-MM"), "{err}");
        // CSV for spreadsheets: a header of field names, one line per group.
        let (ok, csv, err) = run(&s, &ops, &["report", "usage", "-o", "csv"]);
        assert!(ok, "{err}");
        let lines: Vec<&str> = csv.lines().collect();
        assert!(
            lines[0].starts_with("month,group,machine_hours_used,machine_hours_booked,energy_kwh,"),
            "{csv}"
        );
        assert_eq!(lines.len(), 3, "{csv}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains(",coop,") && l.contains(",mixed,")),
            "{csv}"
        );
    }
}

fn idle_events(s: &Service, machine: &str) -> Vec<Value> {
    events_named(s, machine, "machine.idle_power_off")
}

fn events_named(s: &Service, machine: &str, action: &str) -> Vec<Value> {
    s.cli_json(&["events", "--machine", machine])
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_machines_are_powered_off_once_and_a_lease_powers_them_on() {
    use testkit::{default_system, Sushy, SushyOpts};
    let sys = default_system();
    let uuid = sys.uuid;
    let sushy = Sushy::start(
        &[sys],
        SushyOpts {
            users: vec![("admin".into(), "correct-horse".into())],
            ..Default::default()
        },
    );
    let dead_url = {
        let gone = testkit::fake_redfish::FakeRedfish::start(100.0).await;
        gone.url()
    };
    let s = Service::start_with(common::Db::Sqlite, &["--energy-interval-secs", "0"]).await;
    let (rosa, ops) = people(&s);
    let pw = common::write(s.dir.path(), "bmc-pw", "correct-horse\n");
    let url = format!("{}/redfish/v1/Systems/{uuid}", sushy.url());
    s.cli(&[
        "machine",
        "add",
        "idle1",
        "--mac",
        "52:54:00:18:02:01",
        "--bmc",
        &url,
        "--bmc-user",
        "admin",
        "--bmc-password-file",
        pw.to_str().expect("path"),
    ]);
    s.cli(&[
        "machine",
        "add",
        "stuck",
        "--mac",
        "52:54:00:18:02:02",
        "--bmc",
        &dead_url,
    ]);
    s.cli(&["power", "idle1", "on"]);
    for m in ["idle1", "stuck"] {
        s.cli(&["machine", "state", m, "available"]);
    }
    // Off by default: nothing is powered off until staff set a time.
    let policy = json_as(&s, &ops, &["lease", "policy"]);
    assert_eq!(policy["idle_power_off"], serde_json::json!([]), "{policy}");
    let (ok, _, _) = run(&s, &rosa, &["lease", "policy", "--idle-power-off", "2s"]);
    assert!(!ok, "members do not set the policy");
    let policy = json_as(&s, &ops, &["lease", "policy", "--idle-power-off", "2s"]);
    assert_eq!(policy["idle_power_off"][0]["after_secs"], 2, "{policy}");
    let table = run(&s, &ops, &["lease", "policy"]).1;
    assert!(table.contains("every site: after 2s"), "{table}");

    // The machine sitting available and unleased is powered off through its BMC, audited.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let raw = sushy
            .system_json(uuid, Some(("admin", "correct-horse")))
            .await;
        if raw["PowerState"] == "Off" && !idle_events(&s, "idle1").is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never powered off: {raw}\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let ev = idle_events(&s, "idle1");
    assert_eq!(ev[0]["outcome"], "ok", "{ev:?}");
    // The BMC that cannot do it is reported once, not retried: a few worker ticks later
    // there is still one failed event.
    let deadline = Instant::now() + Duration::from_secs(60);
    while idle_events(&s, "stuck").is_empty() {
        assert!(Instant::now() < deadline, "the failure was never reported");
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(5));
    let ev = idle_events(&s, "stuck");
    assert_eq!(ev.len(), 1, "reported once: {ev:?}");
    assert_eq!(ev[0]["outcome"], "failed", "{ev:?}");
    assert_eq!(idle_events(&s, "idle1").len(), 1);

    // A lease powers it on again, once, audited.
    let lease = json_as(&s, &rosa, &["lease", "create", "--count", "1"]);
    assert_eq!(lease["machines"][0]["name"], "idle1", "{lease}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let raw = sushy
            .system_json(uuid, Some(("admin", "correct-horse")))
            .await;
        if raw["PowerState"] == "On" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lease never powered it on: {raw}\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let woken = loop {
        let woken = events_named(&s, "idle1", "machine.idle_power_on");
        if !woken.is_empty() || Instant::now() > deadline {
            break woken;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(woken.len(), 1, "{woken:?}");
    assert_eq!(woken[0]["outcome"], "ok", "{woken:?}");
    // Once: it stays leased and on, and the idle rule leaves a leased machine alone.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        idle_events(&s, "idle1").len(),
        1,
        "not powered off while leased"
    );
}
