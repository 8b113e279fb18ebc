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
