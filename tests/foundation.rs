//! The foundation through the real binary: CLI round trips, races, secrets, export/import,
//! bad input, shutdown.

mod common;

use common::{databases, Db, Service};
use serde_json::{json, Value};

#[tokio::test]
async fn cli_round_trip() {
    for db in databases() {
        let s = Service::start(db).await;
        assert!(
            s.admin_token.starts_with("rs_"),
            "{db:?}: first start prints the admin token"
        );
        let token_file = s.data_dir().join("admin-token");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&token_file)
                .expect("admin-token")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "admin-token is private");
        }

        s.cli(&["site", "add", "basement"]);
        s.cli(&[
            "rack",
            "add",
            "r1",
            "--site",
            "basement",
            "--position",
            "row 1",
        ]);
        s.cli(&["group", "add", "tenants"]);
        s.cli(&[
            "user", "add", "rosa", "--role", "member", "--group", "tenants",
        ]);
        s.cli(&["user", "add", "tom", "--role", "technician"]);
        let tok = s.cli_json(&[
            "token",
            "create",
            "--user",
            "rosa",
            "--description",
            "laptop",
        ]);
        let rosa = tok["token"].as_str().expect("token").to_string();
        assert!(rosa.starts_with("rs_"));

        let pw = common::write(s.dir.path(), "bmc-pw", "sekret-Passw0rd\n");
        let m = s.cli_json(&[
            "machine",
            "add",
            "node-1",
            "--mac",
            "52:54:00:10:00:01",
            "--mac",
            "52:54:00:10:00:02",
            "--bmc",
            "redfish+https://127.0.0.1:8443/redfish/v1/Systems/1",
            "--bmc-user",
            "root",
            "--bmc-password-file",
            pw.to_str().expect("path"),
            "--arch",
            "x86_64",
            "--tag",
            "gpu",
            "--site",
            "basement",
            "--rack",
            "r1",
            "--ram-gib",
            "64",
            "--cpus",
            "16",
        ]);
        assert_eq!(m["state"], "new");
        assert_eq!(m["nics"][0]["pxe"], true);
        assert_eq!(m["bmc"]["has_password"], true);
        assert_eq!(m["ram_mib"], 65536);

        let list = s.cli_json(&["machine", "list", "--min-ram-gib", "64", "--tag", "gpu"]);
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{db:?}");
        let table = s.cli(&["machine", "list"]);
        assert!(
            table.lines().next().is_some_and(|h| h.starts_with("NAME")),
            "{table}"
        );
        assert!(table.contains("node-1"));

        let edited = s.cli_json(&[
            "machine",
            "edit",
            "node-1",
            "--add-tag",
            "big",
            "--notes",
            "loud fan",
        ]);
        assert_eq!(edited["tags"], json!(["gpu", "big"]));

        // A forbidden transition: one clear line, non-zero exit, nothing changed.
        let out = s.cli_as(&s.admin_token, &["machine", "state", "node-1", "deployed"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "one error line: {err}");
        assert!(
            err.starts_with("error: ") && err.contains("cannot go from new to deployed"),
            "{err}"
        );
        assert_eq!(s.cli_json(&["machine", "show", "node-1"])["state"], "new");

        s.cli(&[
            "machine",
            "state",
            "node-1",
            "available",
            "--reason",
            "burn-in passed",
        ]);
        assert_eq!(
            s.cli_json(&["machine", "show", "node-1"])["state_reason"],
            "burn-in passed"
        );

        // Duplicate MAC.
        let out = s.cli_as(
            &s.admin_token,
            &["machine", "add", "node-2", "--mac", "52:54:00:10:00:02"],
        );
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("already belongs to machine 'node-1'")
        );

        // A member sees no machine of another group (here: none leased) and cannot enrol.
        assert_eq!(s.cli_json_as(&rosa, &["machine", "list"]), json!([]));
        let out = s.cli_as(&rosa, &["machine", "show", "node-1"]);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not found"),
            "404, not 403, for a member"
        );
        let out = s.cli_as(
            &rosa,
            &["machine", "add", "evil", "--mac", "52:54:00:10:00:09"],
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("needs the role"));

        // The audit log names who did what, including the refusal.
        let ev = s.cli_json(&["events", "--machine", "node-1"]);
        let actions: Vec<&str> = ev
            .as_array()
            .expect("events")
            .iter()
            .filter_map(|e| e["action"].as_str())
            .collect();
        assert!(
            actions.contains(&"machine.create")
                && actions.contains(&"machine.transition")
                && actions.contains(&"machine.update"),
            "{actions:?}"
        );
        let all = s.cli_json(&["events", "--limit", "1000"]);
        assert!(all
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["outcome"] == "denied" && e["actor"] == "rosa"));

        // Revoked tokens stop working.
        let prefix = tok["prefix"].as_str().expect("prefix");
        s.cli(&["token", "revoke", prefix]);
        let out = s.cli_as(&rosa, &["whoami"]);
        assert!(!out.status.success());

        s.cli(&["machine", "state", "node-1", "maintenance"]);
        s.cli(&["machine", "delete", "node-1"]);
        let out = s.cli_as(&s.admin_token, &["machine", "show", "node-1"]);
        assert!(!out.status.success());
    }
}

trait JsonAs {
    fn cli_json_as(&self, token: &str, args: &[&str]) -> Value;
}

impl JsonAs for Service {
    fn cli_json_as(&self, token: &str, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.cli_as(token, &a);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }
}

#[tokio::test]
async fn hundred_concurrent_transitions_one_winner_over_http() {
    for db in databases() {
        let s = Service::start(db).await;
        s.cli(&["machine", "add", "contested", "--mac", "52:54:00:20:00:01"]);
        s.cli(&["machine", "state", "contested", "available"]);
        let http = s.http();
        let mut tasks = Vec::new();
        for i in 0..100 {
            let http = http.clone();
            let url = format!("{}/api/v1/machines/contested/state", s.url);
            let token = s.admin_token.clone();
            tasks.push(tokio::spawn(async move {
                http.post(url)
                    .bearer_auth(token)
                    .json(&json!({"state": "maintenance", "reason": format!("racer {i}"), "expected_state": "available"}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }));
        }
        let mut codes = Vec::new();
        for t in tasks {
            codes.push(t.await.expect("join").expect("request"));
        }
        assert_eq!(
            codes.iter().filter(|c| **c == 200).count(),
            1,
            "{db:?}: exactly one wins: {codes:?}"
        );
        assert!(
            codes.iter().all(|c| *c == 200 || *c == 409),
            "{db:?}: losers get 409: {codes:?}"
        );
        let ev = s.cli_json(&["events", "--machine", "contested"]);
        let moves = ev
            .as_array()
            .expect("ev")
            .iter()
            .filter(|e| e["action"] == "machine.transition" && e["detail"]["to"] == "maintenance")
            .count();
        assert_eq!(moves, 1, "{db:?}: one audited transition");
    }
}

#[tokio::test]
async fn secrets_never_appear_in_responses_or_logs() {
    let s = Service::start(Db::Sqlite).await;
    let secret = "pw-NEVER-LEAK-4711";
    let pw = common::write(s.dir.path(), "pw", secret);
    s.cli(&[
        "machine",
        "add",
        "vault",
        "--mac",
        "52:54:00:30:00:01",
        "--bmc",
        "ipmi://127.0.0.1:6230",
        "--bmc-user",
        "admin",
        "--bmc-password-file",
        pw.to_str().expect("p"),
    ]);
    s.cli(&[
        "machine",
        "edit",
        "vault",
        "--bmc",
        "ipmi://127.0.0.1:6231",
        "--bmc-user",
        "admin",
        "--bmc-password-file",
        pw.to_str().expect("p"),
    ]);
    s.cli(&["user", "add", "ops", "--role", "staff"]);
    let issued = s.cli_json(&["token", "create", "--user", "ops"]);
    let new_token = issued["token"].as_str().expect("token").to_string();
    let http = s.http();
    let mut bodies = String::new();
    for path in [
        "/api/v1/machines",
        "/api/v1/machines/vault",
        "/api/v1/events?limit=1000",
        "/api/v1/export",
        "/api/v1/tokens",
        "/api/v1/users",
        "/api/v1/whoami",
        "METRICS",
        "/api/v1/openapi.json",
    ] {
        // /metrics is on its own listener.
        let url = match path {
            "METRICS" => s.metrics_url.clone().expect("metrics listener"),
            p => format!("{}{p}", s.url),
        };
        let r = http
            .get(url)
            .bearer_auth(&s.admin_token)
            .send()
            .await
            .expect("get");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        bodies.push_str(&r.text().await.expect("body"));
    }
    assert!(
        !bodies.contains(secret),
        "the BMC password must never be in an API response"
    );
    assert!(
        !bodies.contains(&new_token),
        "a token is shown only when created"
    );
    assert!(!bodies.contains(&s.admin_token));
    let with = http
        .get(format!("{}/api/v1/export?with_secrets=true", s.url))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .expect("get");
    assert!(
        with.text().await.expect("body").contains(secret),
        "only an explicit --with-secrets export carries it"
    );
    let log = s.log_text();
    assert!(!log.is_empty(), "the debug log was written");
    assert!(!log.contains(secret), "the BMC password is in the log");
    assert!(
        !log.contains(&new_token) && !log.contains(&s.admin_token),
        "a token is in the log"
    );
    // And not in the database in clear.
    let db = std::fs::read(s.data_dir().join("rackshare.db")).expect("db");
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()));
}

#[tokio::test]
async fn export_then_import_into_empty_then_export_is_identical() {
    for (a_db, b_db) in [(Db::Sqlite, Db::Postgres), (Db::Postgres, Db::Sqlite)] {
        let a = Service::start(a_db).await;
        a.cli(&["site", "add", "hall", "--description", "the hall"]);
        a.cli(&["rack", "add", "a1", "--site", "hall"]);
        a.cli(&["group", "add", "coop-radio"]);
        a.cli(&[
            "user",
            "add",
            "lin",
            "--role",
            "member",
            "--group",
            "coop-radio",
        ]);
        let pw = common::write(a.dir.path(), "pw", "bmcpass");
        a.cli(&[
            "machine",
            "add",
            "m1",
            "--mac",
            "52:54:00:40:00:01",
            "--site",
            "hall",
            "--rack",
            "a1",
            "--tag",
            "ssd",
            "--bmc",
            "redfish+http://127.0.0.1:8000",
            "--bmc-user",
            "u",
            "--bmc-password-file",
            pw.to_str().expect("p"),
        ]);
        a.cli(&[
            "machine",
            "add",
            "m2",
            "--mac",
            "52:54:00:40:00:02",
            "--arch",
            "aarch64",
        ]);
        a.cli(&[
            "machine",
            "state",
            "m2",
            "maintenance",
            "--reason",
            "dead PSU",
        ]);
        let exported = a.cli(&["export"]);
        let file = common::write(a.dir.path(), "coop.json", &exported);

        let b = Service::start(b_db).await;
        let own: Value = serde_json::from_str(&b.cli(&["export"])).expect("json");
        let out = b.cli(&["import", file.to_str().expect("p")]);
        assert!(out.contains("imported 2 machines"), "{out}");
        let again = b.cli(&["export"]);
        // Everything is identical but the audit log, which is append-only: the receiving
        // instance's own events, then the file's (with source and token prefix), then the import.
        let mut sent: Value = serde_json::from_str(&exported).expect("json");
        let mut got: Value = serde_json::from_str(&again).expect("json");
        let sent_log = sent["audit_events"].take();
        let got_log = got["audit_events"].take();
        let own_log = own["audit_events"].as_array().cloned().unwrap_or_default();
        let (sent_log, got_log) = (
            sent_log.as_array().expect("a log was exported"),
            got_log.as_array().expect("log"),
        );
        assert!(sent_log.iter().any(|e| e["action"] == "machine.create"
            && e["token_prefix"].is_string()
            && e["source"].is_string()));
        // (Reading the empty instance's export was itself logged.)
        let n = own_log.len() + 1;
        assert_eq!(got_log[..n - 1], own_log[..], "{a_db:?} -> {b_db:?}");
        assert_eq!(got_log[n - 1]["action"], "inventory.export");
        assert_eq!(
            got_log[n..got_log.len() - 1],
            sent_log[..],
            "{a_db:?} -> {b_db:?}"
        );
        assert_eq!(got_log[got_log.len() - 1]["action"], "inventory.import");
        assert_eq!(
            sent, got,
            "{a_db:?} -> {b_db:?}: export, import, export must be identical"
        );
        assert_eq!(got["format"], "rackshare-inventory");
    }
}

#[tokio::test]
async fn bad_input_gets_json_errors_and_changes_nothing() {
    let s = Service::start(Db::Sqlite).await;
    let http = s.http();
    let post = |body: Value| {
        let http = http.clone();
        let url = format!("{}/api/v1/machines", s.url);
        let token = s.admin_token.clone();
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("post");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("json error body"))
        }
    };
    let cases = [
        (json!({"name": "a", "macs": ["zz:zz"]}), 400, "mac"),
        (
            json!({"name": "a", "macs": ["52:54:00:50:00:01"], "colour": "red"}),
            400,
            "colour",
        ),
        (
            json!({"name": "a b", "macs": ["52:54:00:50:00:01"]}),
            400,
            "name",
        ),
        (
            json!({"name": "a", "macs": ["52:54:00:50:00:01"], "bmc": {"url": "ftp://x"}}),
            400,
            "bmc",
        ),
        (
            json!({"name": "a", "macs": ["52:54:00:50:00:01"], "arch": "z80"}),
            400,
            "arch",
        ),
        (json!({"macs": ["52:54:00:50:00:01"]}), 400, "name"),
    ];
    for (body, status, field) in cases {
        let (got, err) = post(body.clone()).await;
        assert_eq!(got, status, "{body}: {err}");
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{body}: a message for a person");
        assert!(
            err["error"]["field"]
                .as_str()
                .is_some_and(|f| f.contains(field))
                || message.contains(field),
            "{body}: the error names '{field}': {err}"
        );
    }
    let r = http
        .post(format!("{}/api/v1/machines", s.url))
        .bearer_auth(&s.admin_token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 400);
    let r = http
        .get(format!("{}/api/v1/machines", s.url))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.json::<Value>().await.expect("json")["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("token")));
    let r = http
        .get(format!("{}/api/v1/machines?state=sleeping", s.url))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(
        s.cli_json(&["machine", "list"]),
        json!([]),
        "nothing was written"
    );
}

#[tokio::test]
async fn every_status_answers_json_with_security_headers() {
    let s = Service::start(Db::Sqlite).await;
    let http = s.http();
    let check = |r: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(r.status().as_u16(), status, "{code}");
        let h = r.headers().clone();
        assert_eq!(h["x-content-type-options"], "nosniff", "{code}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{code}");
        assert_eq!(h["x-frame-options"], "DENY", "{code}");
        assert!(
            h["content-security-policy"]
                .to_str()
                .is_ok_and(|v| v.contains("default-src 'none'")),
            "{code}"
        );
        let v: Value = r.json().await.expect("a JSON error body");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    };
    let unknown = http
        .get(format!("{}/api/v1/no-such-thing", s.url))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .expect("get");
    check(unknown, 404, "not_found").await;
    let wrong_method = http
        .put(format!("{}/api/v1/machines", s.url))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .expect("put");
    check(wrong_method, 405, "method_not_allowed").await;
    // 3 MB of JSON to an endpoint that takes 2 MB: 413 in JSON, not a plain-text 400.
    let big = format!(
        r#"{{"name":"a","macs":[],"notes":"{}"}}"#,
        "x".repeat(3 << 20)
    );
    let too_big = http
        .post(format!("{}/api/v1/machines", s.url))
        .bearer_auth(&s.admin_token)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("post");
    check(too_big, 413, "payload_too_large").await;
    assert_eq!(
        s.cli_json(&["machine", "list"]),
        json!([]),
        "nothing was written"
    );
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let s = Service::start(Db::Sqlite).await;
    let http = s.http();
    let doc: Value = http
        .get(format!("{}/api/v1/openapi.json", s.url))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 15);
    for (path, ops) in paths {
        for method in ops.as_object().expect("ops").keys() {
            let concrete = path
                .replace("{name}", "nope")
                .replace("{prefix}", "nope")
                .replace("{reference}", "nope")
                .replace("{file}", "nope")
                .replace("{id}", "999999");
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let r = http
                .request(m, format!("{}{concrete}", s.url))
                .bearer_auth(&s.admin_token)
                .json(&json!({}))
                .send()
                .await
                .expect("req");
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            if ops[method]["x-rackshare-listener"] == "metrics" {
                // Counters are for the operator's scraper on --metrics-listen, not members.
                assert!(
                    status == 404 && body.contains("no such endpoint"),
                    "{method} {path} is a metrics-listener operation but the member API answers it ({status}: {body})"
                );
                let m = http
                    .get(s.metrics_url.clone().expect("metrics listener"))
                    .send()
                    .await
                    .expect("metrics");
                assert_eq!(m.status(), 200, "{path} on the metrics listener");
                continue;
            }
            if ops[method]["x-rackshare-listener"] == "boot" {
                // Boot files and the agent's endpoints live only on the boot interfaces.
                assert!(
                    status == 404 && body.contains("no such endpoint"),
                    "{method} {path} is a boot-listener operation but the member API answers it ({status}: {body})"
                );
                continue;
            }
            assert_eq!(
                ops[method]["x-rackshare-listener"], "member",
                "{method} {path}"
            );
            assert!(
                !body.contains("no such endpoint") && status != 405,
                "{method} {path} is documented but not routed ({status}: {body})"
            );
        }
    }
}

#[tokio::test]
async fn config_file_and_graceful_shutdown() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = common::write(
        dir.path(),
        "rackshare.toml",
        &format!(
            "data-dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nlog-level = \"info\"\n",
            dir.path().join("d").display()
        ),
    );
    let mut s = Service::spawn(
        dir,
        vec!["serve".into(), "--config".into(), cfg.display().to_string()],
    );
    assert!(
        s.data_dir()
            .parent()
            .expect("p")
            .join("d/rackshare.db")
            .exists(),
        "data-dir from the config file is used"
    );
    let r = s
        .http()
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status().as_u16(), 200);
    assert!(s.stop(), "SIGTERM ends the service cleanly with exit 0");

    // An unknown key is refused with a message naming it.
    let dir = tempfile::tempdir().expect("tmp");
    let bad = common::write(dir.path(), "bad.toml", "lisen = \"127.0.0.1:0\"\n");
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--config", bad.to_str().expect("p")])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lisen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn restart_keeps_everything_and_prints_no_new_token() {
    let mut s = Service::start(Db::Sqlite).await;
    s.cli(&["machine", "add", "keep", "--mac", "52:54:00:60:00:01"]);
    let token = s.admin_token.clone();
    assert!(s.stop());
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().expect("tmp"));
    let data = dir.path().join("data").display().to_string();
    let s2 = Service::spawn(
        dir,
        vec![
            "serve".into(),
            "--data-dir".into(),
            data,
            "--listen".into(),
            "127.0.0.1:0".into(),
        ],
    );
    assert_eq!(
        s2.admin_token, token,
        "no new admin token on restart (the file still holds the first)"
    );
    let out = s2.cli_as(&token, &["machine", "show", "keep", "-o", "json"]);
    assert!(out.status.success());
}
