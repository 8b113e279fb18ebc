//! Leasing end to end: the real `rackshare serve`, its CLI and HTTP API. Lifecycle, the
//! scheduler ending a lease on time and at start-up after downtime, racing allocation on both
//! databases, and the isolation matrix (every documented operation × every role).

mod common;

use common::{databases, Db, Service};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl rosa@laptop";

/// Users by role name, with their tokens.
struct People {
    tokens: HashMap<&'static str, String>,
}

impl People {
    fn token(&self, who: &str) -> &str {
        &self.tokens[who]
    }
}

async fn api(
    s: &Service,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = s
        .http()
        .request(method, format!("{}{path}", s.url))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Groups a and b, a staff user, a technician and one member of each group; `n` available
/// machines `node-i` (64 GiB, 8 CPUs).
async fn setup(s: &Service, n: usize) -> People {
    let admin = s.admin_token.clone();
    for g in ["a", "b", "c", "d"] {
        let (st, v) = api(
            s,
            &admin,
            reqwest::Method::POST,
            "/api/v1/groups",
            Some(json!({"name": g})),
        )
        .await;
        assert_eq!(st, 201, "{v}");
    }
    let mut tokens = HashMap::new();
    tokens.insert("admin", admin.clone());
    for (who, role, group) in [
        ("staff", "staff", None),
        ("technician", "technician", None),
        ("member-a", "member", Some("a")),
        ("member-b", "member", Some("b")),
        ("member-c", "member", Some("c")),
        ("member-d", "member", Some("d")),
    ] {
        let (st, v) = api(
            s,
            &admin,
            reqwest::Method::POST,
            "/api/v1/users",
            Some(json!({"name": who, "role": role, "member_group": group})),
        )
        .await;
        assert_eq!(st, 201, "{v}");
        let (st, v) = api(
            s,
            &admin,
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(json!({"user": who})),
        )
        .await;
        assert_eq!(st, 201, "{v}");
        tokens.insert(who, v["token"].as_str().expect("token").to_string());
    }
    for i in 0..n {
        let name = format!("node-{i}");
        let (st, v) = api(
            s,
            &admin,
            reqwest::Method::POST,
            "/api/v1/machines",
            Some(json!({
                "name": name, "macs": [format!("52:54:00:aa:{:02x}:{:02x}", i / 256, i % 256)],
                "ram_mib": 65536, "cpu_count": 8, "tags": ["ssd"],
            })),
        )
        .await;
        assert_eq!(st, 201, "{v}");
        let (st, v) = api(
            s,
            &admin,
            reqwest::Method::POST,
            &format!("/api/v1/machines/{name}/state"),
            Some(json!({"state": "available"})),
        )
        .await;
        assert_eq!(st, 200, "{v}");
    }
    People { tokens }
}

fn cli_as(s: &Service, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = s.cli_as(token, args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli_json(s: &Service, token: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let (ok, out, err) = cli_as(s, token, &a);
    assert!(ok, "rackshare {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

#[tokio::test]
async fn lease_lifecycle_over_cli_and_http() {
    let s = Service::start(Db::Sqlite).await;
    let p = setup(&s, 3).await;
    let (ma, mb) = (p.token("member-a"), p.token("member-b"));

    let lease = cli_json(
        &s,
        ma,
        &[
            "lease",
            "create",
            "--count",
            "2",
            "--duration",
            "2h",
            "--min-ram-gib",
            "32",
            "--tag",
            "ssd",
        ],
    );
    assert_eq!(lease["state"], "active", "{lease}");
    assert_eq!(lease["group"], "a");
    assert_eq!(lease["machines"].as_array().map(Vec::len), Some(2));
    let id = lease["id"].as_i64().expect("id").to_string();
    let m0 = lease["machines"][0]["name"]
        .as_str()
        .expect("name")
        .to_string();

    // The member sees the machine as theirs; the other group sees nothing of it.
    let m = cli_json(&s, ma, &["machine", "show", &m0]);
    assert_eq!(m["member_group"], "a");
    assert_eq!(m["state"], "allocated");
    let (ok, _, err) = cli_as(&s, mb, &["lease", "show", &id]);
    assert!(
        !ok && err.contains("not found") && err.contains("404"),
        "{err}"
    );
    assert_eq!(cli_json(&s, mb, &["lease", "list"]), json!([]));
    let (ok, _, err) = cli_as(&s, mb, &["machine", "show", &m0]);
    assert!(!ok && err.contains("404"), "{err}");

    // Nothing left that fits: the refusal says why, with the numbers.
    let (ok, _, err) = cli_as(
        &s,
        ma,
        &["lease", "create", "--count", "2", "--min-ram-gib", "128"],
    );
    assert!(!ok, "over-asking succeeded");
    assert!(
        err.contains("1 available machine: 1 has less than 128 GiB RAM"),
        "{err}"
    );

    // Extend, quota, policy.
    let ext = cli_json(&s, ma, &["lease", "extend", &id, "--by", "1h"]);
    assert_eq!(
        ext["ends_at"].as_i64().expect("ends") - lease["ends_at"].as_i64().expect("ends"),
        3_600_000
    );
    let (ok, _, err) = cli_as(
        &s,
        ma,
        &["group", "quota", "set", "a", "--max-machines", "2"],
    );
    assert!(
        !ok && err.contains("403"),
        "members cannot set quotas: {err}"
    );
    let q = cli_json(
        &s,
        p.token("staff"),
        &["group", "quota", "set", "a", "--max-machines", "2"],
    );
    assert_eq!(q["max_machines"], 2);
    assert_eq!(q["machines_in_use"], 2);
    let (ok, _, err) = cli_as(&s, ma, &["lease", "create", "--count", "1"]);
    assert!(
        !ok && err.contains("may hold 2 machines at once; it holds or has booked 2"),
        "{err}"
    );
    let pol = cli_json(
        &s,
        p.token("staff"),
        &["lease", "policy", "--max-hours", "48"],
    );
    assert_eq!(pol["max_lease_hours"], 48);
    let (ok, _, err) = cli_as(&s, ma, &["lease", "extend", &id, "--by", "72h"]);
    assert!(!ok && err.contains("maximum lease length of 48 h"), "{err}");

    // Group SSH keys: members of the group and staff.
    let keys = cli_json(&s, ma, &["group", "ssh-key", "add", "a", KEY]);
    let fp = keys[0]["fingerprint"].as_str().expect("fp").to_string();
    assert!(fp.starts_with("SHA256:"));
    let (ok, _, err) = cli_as(&s, mb, &["group", "ssh-key", "list", "a"]);
    assert!(!ok && err.contains("404"), "{err}");
    let (ok, _, err) = cli_as(&s, ma, &["group", "ssh-key", "remove", "a", &fp]);
    assert!(ok, "{err}");
    assert_eq!(
        cli_json(&s, p.token("staff"), &["group", "ssh-key", "list", "a"]),
        json!([])
    );

    // Technicians cannot change leases; members release their own; staff revoke.
    let (ok, _, err) = cli_as(&s, p.token("technician"), &["lease", "release", &id]);
    assert!(!ok && err.contains("403"), "{err}");
    let ended = cli_json(&s, ma, &["lease", "release", &id, "--reason", "done"]);
    assert_eq!(ended["state"], "ended");
    assert_eq!(ended["end_reason"], "released: done");
    let m = cli_json(&s, p.token("staff"), &["machine", "show", &m0]);
    // The wipe job owns it now (with no BMC here the conductor may already have failed it):
    // never straight back to available.
    assert!(m["state"] == "releasing" || m["state"] == "failed", "{m}");
    assert!(m["member_group"].is_null());
    let second = cli_json(&s, ma, &["lease", "create", "--count", "1"]);
    let sid = second["id"].as_i64().expect("id").to_string();
    let (ok, _, err) = cli_as(&s, ma, &["lease", "revoke", &sid]);
    assert!(!ok && err.contains("403"), "{err}");
    let rv = cli_json(
        &s,
        p.token("staff"),
        &["lease", "revoke", &sid, "--reason", "maintenance"],
    );
    assert_eq!(rv["end_reason"], "revoked: maintenance");
    let detail = cli_json(&s, ma, &["lease", "show", &id]);
    assert_eq!(detail["energy_kwh"], 0.0);
    assert_eq!(detail["wipe_certificates"], json!([]));
    let (ok, table, err) = cli_as(&s, ma, &["lease", "show", &id]);
    assert!(ok && table.contains("Energy (kWh)"), "{err}");

    // The group's ledger: allocation, wipes, lease changes, with who.
    let events = cli_json(&s, ma, &["events", "--group", "a"]);
    let actions: Vec<&str> = events
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "lease.create",
        "machine.allocate",
        "lease.extend",
        "lease.release",
        "lease.revoke",
        "job.wipe",
        "group.quota",
        "group.ssh_key.add",
    ] {
        assert!(actions.contains(&a), "ledger lacks {a}: {actions:?}");
    }
    let (ok, _, err) = cli_as(&s, mb, &["events", "--group", "a"]);
    assert!(!ok && err.contains("404"), "{err}");
    let denied = cli_json(&s, p.token("admin"), &["events", "--limit", "1000"]);
    assert!(
        denied
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["outcome"] == "denied" && e["action"] == "lease.release"),
        "denied actions are audited"
    );
}

/// Polls lease `id` until it is ended; returns it.
async fn wait_ended(s: &Service, token: &str, id: i64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (st, v) = api(
            s,
            token,
            reqwest::Method::GET,
            &format!("/api/v1/leases/{id}"),
            None,
        )
        .await;
        assert_eq!(st, 200, "{v}");
        if v["state"] == "ended" {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "lease {id} did not end in {within:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn scheduler_ends_a_short_lease_on_time() {
    let s = Service::start(Db::Sqlite).await;
    let p = setup(&s, 1).await;
    let lease = cli_json(
        &s,
        p.token("member-a"),
        &["lease", "create", "--duration", "3s"],
    );
    let id = lease["id"].as_i64().expect("id");
    let ended = wait_ended(&s, p.token("member-a"), id, Duration::from_secs(15)).await;
    assert_eq!(ended["end_reason"], "expired");
    let late =
        ended["ended_at"].as_i64().expect("ended") - ended["ends_at"].as_i64().expect("ends");
    assert!((0..4_000).contains(&late), "ended {late} ms after its end");
    let m = cli_json(&s, p.token("staff"), &["machine", "show", "node-0"]);
    assert!(
        m["state"] == "releasing" || m["state"] == "failed",
        "wiped first: {m}"
    );
}

#[tokio::test]
async fn a_lease_due_while_rackshare_was_down_ends_at_start_up() {
    let mut s = Service::start(Db::Sqlite).await;
    let p = setup(&s, 1).await;
    let lease = cli_json(
        &s,
        p.token("member-a"),
        &["lease", "create", "--duration", "4s"],
    );
    let id = lease["id"].as_i64().expect("id");
    assert!(s.stop(), "clean shutdown");
    let ends = lease["ends_at"].as_i64().expect("ends");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis((ends - now + 500).max(0) as u64)).await;
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
    // The catch-up step runs before the API answers: the very first read sees it ended.
    let (st, v) = api(
        &s2,
        p.token("member-a"),
        reqwest::Method::GET,
        &format!("/api/v1/leases/{id}"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "ended", "{v}");
    assert_eq!(v["end_reason"], "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_clients_racing_for_fifty_machines_get_fifty() {
    for db in databases() {
        let s = Service::start(db).await;
        let p = setup(&s, 50).await;
        let url = s.url.clone();
        let http = s.http();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let token = p
                .token(["member-a", "member-b", "member-c", "member-d"][i % 4])
                .to_string();
            let (http, url) = (http.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let r = http
                    .post(format!("{url}/api/v1/leases"))
                    .bearer_auth(token)
                    .json(&json!({"count": 1, "duration_secs": 3600}))
                    .send()
                    .await
                    .expect("post");
                let st = r.status().as_u16();
                (st, r.json::<Value>().await.unwrap_or(Value::Null))
            }));
        }
        let mut machines = Vec::new();
        let mut refused = 0;
        for t in tasks {
            match t.await.expect("join") {
                (201, v) => {
                    machines.push(v["machines"][0]["name"].as_str().expect("name").to_string())
                }
                (409, _) => refused += 1,
                (st, v) => panic!("{db:?}: unexpected {st}: {v}"),
            }
        }
        assert_eq!(machines.len(), 50, "{db:?}");
        assert_eq!(refused, 150, "{db:?}");
        machines.sort();
        machines.dedup();
        assert_eq!(machines.len(), 50, "{db:?}: a machine went to two leases");
    }
}

/// What each role gets for an operation on group A's resources.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Must not be 403 or 404 (it may still fail for other reasons, e.g. no BMC).
    Allowed,
    /// 403.
    Forbidden,
    /// 404: the resource is hidden.
    Hidden,
    /// Not checked.
    Any,
}

#[tokio::test]
async fn isolation_matrix_every_operation_by_every_role() {
    let s = Service::start(Db::Sqlite).await;
    let p = setup(&s, 3).await;
    // Group A's resources: a lease with a machine, an image, a member token.
    let (st, lease) = api(
        &s,
        p.token("member-a"),
        reqwest::Method::POST,
        "/api/v1/leases",
        Some(json!({"count": 1, "duration_secs": 7200})),
    )
    .await;
    assert_eq!(st, 201, "{lease}");
    let lease_id = lease["id"].as_i64().expect("id").to_string();
    let machine = lease["machines"][0]["name"]
        .as_str()
        .expect("machine")
        .to_string();
    let img = s
        .http()
        .post(format!(
            "{}/api/v1/images?name=a-img&version=1&format=raw",
            s.url
        ))
        .bearer_auth(p.token("member-a"))
        .body(vec![0u8; 4096])
        .send()
        .await
        .expect("upload");
    assert_eq!(img.status().as_u16(), 201, "{:?}", img.text().await);
    let (st, tok) = api(
        &s,
        p.token("member-a"),
        reqwest::Method::GET,
        "/api/v1/tokens",
        None,
    )
    .await;
    assert_eq!(st, 200);
    let prefix = tok[0]["prefix"].as_str().expect("prefix").to_string();
    let (_, keys) = api(
        &s,
        p.token("member-a"),
        reqwest::Method::POST,
        "/api/v1/groups/a/ssh-keys",
        Some(json!({"key": KEY})),
    )
    .await;
    let fingerprint = keys[0]["fingerprint"]
        .as_str()
        .expect("fp")
        .replace('/', "%2F")
        .replace('+', "%2B");
    // A job of group A: member A reimages their machine with their image (with no BMC behind
    // it the conductor fails it soon; the job stays, which is all the matrix needs).
    let (st, job) = api(
        &s,
        p.token("member-a"),
        reqwest::Method::POST,
        "/api/v1/jobs",
        Some(json!({"machine": machine, "kind": "reimage", "image": "a-img:1"})),
    )
    .await;
    assert_eq!(st, 202, "{job}");
    let job_of_a = job["id"].as_i64().expect("job id").to_string();

    // A body each request schema accepts, so a refusal is about who asks, not what.
    let bodies: HashMap<&str, Value> = [
        (
            "NewLease",
            json!({"group": "a", "count": 1, "duration_secs": 60}),
        ),
        ("LeaseExtend", json!({"by_secs": 60})),
        ("LeaseEnd", json!({"reason": "matrix"})),
        ("LeasePolicy", json!({"max_lease_hours": null})),
        (
            "QuotaRequest",
            json!({"max_machines": null, "machine_hours_month": null}),
        ),
        ("SshKeyRequest", json!({"key": KEY})),
        ("PowerRequest", json!({"action": "on"})),
        ("BootRequest", json!({"device": "pxe"})),
        ("StateChange", json!({"state": "maintenance"})),
        ("MachinePatch", json!({"notes": "matrix"})),
        ("GroupPatch", json!({})),
        ("NewGroup", json!({"name": "matrix-group"})),
        ("TokenRequest", json!({"user": "member-a"})),
        ("PasswordRequest", json!({"password": "matrix-password-1"})),
        (
            "JobRequest",
            json!({"machine": machine, "kind": "reimage", "image": "a/a-img:1"}),
        ),
    ]
    .into_iter()
    .collect();

    let doc: Value = s
        .http()
        .get(format!("{}/api/v1/openapi.json", s.url))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    let roles = ["admin", "staff", "technician", "member-a", "member-b"];
    let mut checked = 0;
    let mut failures = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        if !path.starts_with("/api/v1/") || path.ends_with("openapi.json") {
            continue;
        }
        for (method, op) in ops.as_object().expect("ops") {
            // Resources of group A in the path; an unknown kind names a resource nobody has.
            let mut concrete = path.clone();
            let mut names_a_resource = false;
            for (param, value) in [
                (
                    "{name}",
                    if path.starts_with("/api/v1/groups") {
                        "a".to_string()
                    } else {
                        machine.clone()
                    },
                ),
                (
                    "{id}",
                    if path.starts_with("/api/v1/leases") {
                        lease_id.clone()
                    } else {
                        job_of_a.clone()
                    },
                ),
                // A group's image is named with its group (issue 14: a bare name is a public image).
                ("{reference}", "a%2Fa-img:1".to_string()),
                ("{prefix}", prefix.clone()),
                ("{fingerprint}", fingerprint.clone()),
            ] {
                if concrete.contains(param) {
                    concrete = concrete.replace(param, &value);
                    names_a_resource = true;
                }
            }
            if concrete.contains('{') {
                concrete = concrete
                    .split('/')
                    .map(|seg| {
                        if seg.starts_with('{') {
                            "matrix-unknown"
                        } else {
                            seg
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("/");
            }
            let schema = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .and_then(|r| r.rsplit('/').next())
                .unwrap_or("");
            let body = bodies.get(schema).cloned().unwrap_or_else(|| json!({}));
            let changes = method != "get";
            let lease_or_group_change = changes
                && (path.starts_with("/api/v1/leases")
                    || path.starts_with("/api/v1/groups")
                    || path.starts_with("/api/v1/lease-policy"));
            // Destructive operations run only as the roles that must be refused.
            let destructive = changes
                && !matches!(
                    path.as_str(),
                    "/api/v1/leases" | "/api/v1/groups/{name}/ssh-keys"
                );
            for role in roles {
                let expect = match role {
                    // A user is nobody's group resource: managing one is a role question.
                    "member-a" | "member-b" | "technician"
                        if path.starts_with("/api/v1/users/") =>
                    {
                        Expect::Forbidden
                    }
                    "member-b" if names_a_resource => Expect::Hidden,
                    // Bodies that name A's group or machine.
                    "member-b"
                        if (path == "/api/v1/leases" || path == "/api/v1/jobs")
                            && method == "post" =>
                    {
                        Expect::Hidden
                    }
                    "technician" if lease_or_group_change => Expect::Forbidden,
                    "admin" | "staff" | "member-a"
                        if method == "get"
                            && names_a_resource
                            && !path.contains("/power")
                            && !path.starts_with("/api/v1/jobs")
                            && !path.starts_with("/api/v1/users")
                            // The matrix wipes nothing: there is no certificate to show.
                            && !path.starts_with("/api/v1/certificates") =>
                    {
                        Expect::Allowed
                    }
                    _ => Expect::Any,
                };
                if expect == Expect::Any || (destructive && expect == Expect::Allowed) {
                    continue;
                }
                let m =
                    reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
                let mut req = s
                    .http()
                    .request(m, format!("{}{concrete}", s.url))
                    .bearer_auth(p.token(role));
                if op.get("requestBody").is_some() {
                    req = req.json(&body);
                }
                let resp = req.send().await.expect("request");
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                checked += 1;
                let ok = match expect {
                    Expect::Hidden => status == 404,
                    Expect::Forbidden => status == 403,
                    Expect::Allowed => status != 403 && status != 404 && status != 401,
                    Expect::Any => true,
                };
                if !ok {
                    failures.push(format!("{role} {method} {path} ({concrete}): expected {expect:?}, got {status}: {text}"));
                }
            }
        }
    }
    assert!(checked > 40, "the matrix checked only {checked} requests");
    assert!(
        failures.is_empty(),
        "isolation failures:\n{}",
        failures.join("\n")
    );
    // A's lease survived the walk: B could not end it and the technician could not either.
    let (st, v) = api(
        &s,
        p.token("member-a"),
        reqwest::Method::GET,
        &format!("/api/v1/leases/{lease_id}"),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["state"], "active", "{v}");
}

#[tokio::test]
async fn an_expired_lease_is_wiped_and_the_group_reads_its_certificate() {
    let lab = testkit::netns::Lab::new("lswipe");
    let s = common::serve_in_lab(&lab.srv, tempfile::tempdir().expect("tmp"), &[]);
    s.cli(&["group", "add", "a"]);
    s.cli(&["user", "add", "rosa", "--role", "member", "--group", "a"]);
    let rosa = s.cli_json(&["token", "create", "--user", "rosa"])["token"]
        .as_str()
        .expect("token")
        .to_string();
    s.cli(&[
        "machine",
        "add",
        "w1",
        "--mac",
        &common::reserved("52:54:00:0c:00:01"),
    ]);
    s.cli(&["machine", "state", "w1", "available"]);
    // An inspection recorded its disk: the wipe report is checked against it.
    let disks =
        json!({"disks": [{"name": "vda", "size_bytes": 8_589_934_592_u64, "serial": "W1-DISK"}]});
    let (code, body) = lab_call_text(
        &lab,
        "PATCH",
        "/api/v1/machines/w1",
        &s.admin_token,
        Some(&disks),
    );
    assert_eq!(code, 200, "{body}");

    let lease = cli_json(&s, &rosa, &["lease", "create", "--duration", "2s"]);
    let id = lease["id"].as_i64().expect("id");
    // The scheduler ends it and queues the wipe; the conductor waits for the agent.
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let jobs = s.cli_json(&["job", "list"]);
        let wipe = jobs.as_array().and_then(|a| {
            a.iter()
                .find(|j| j["kind"] == "wipe" && j["lease_id"] == id && j["step"] == "wait_agent")
                .cloned()
        });
        if let Some(j) = wipe {
            break j;
        }
        assert!(
            Instant::now() < deadline,
            "no wipe job waiting for its agent: {jobs}\n{}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        cli_json(&s, &rosa, &["lease", "show", &id.to_string()])["state"],
        "ended"
    );
    assert_eq!(s.cli_json(&["machine", "show", "w1"])["state"], "releasing");

    // The machine PXE-boots the agent in wipe mode; the agent claims and reports.
    let (code, script) = lab_call_text(&lab, "GET", "/boot/52-54-00-0c-00-01.ipxe", "-", None);
    assert_eq!(code, 200);
    assert!(script.contains("rackshare.mode=wipe"), "{script}");
    let token = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rackshare.token="))
        .expect("token in the boot script")
        .to_string();
    let (code, body) = common::agent_claim(&lab, "52:54:00:0c:00:01", &token);
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(code, 200, "{body}");
    let claim: Value = serde_json::from_str(&body).expect("claim");
    assert_eq!(claim["task"]["mode"], "wipe");
    let session = claim["session"].as_str().expect("session").to_string();
    // After the wipe the server chooses where the agent reads back; it read zeros there.
    let ask = json!({"disks": [{"name": "vda", "size_bytes": 8_589_934_592_u64}]});
    let (code, body) = lab_call_text(
        &lab,
        "POST",
        "/api/v1/agent/challenge",
        &session,
        Some(&ask),
    );
    assert_eq!(code, 200, "{body}");
    let challenge: Value = serde_json::from_str(&body).expect("challenge");
    let samples: Vec<Value> = challenge["disks"][0]["ranges"]
        .as_array()
        .expect("ranges")
        .iter()
        .map(|r| {
            let len = r["length"].as_u64().expect("length") as usize;
            let zeros = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(vec![0u8; len]));
            json!({"offset": r["offset"], "length": len, "sha256": zeros})
        })
        .collect();
    assert!(samples.len() >= 3, "{challenge}");
    let result = json!({"ok": true, "wipe": {"disks": [{"name": "vda", "serial": "W1-DISK", "size_bytes": 8_589_934_592_u64, "bytes": 8_589_934_592_u64, "method": "blkdiscard+zero", "verified": true, "samples": samples}]}});
    let (code, body) = lab_call_text(
        &lab,
        "POST",
        "/api/v1/agent/result",
        &session,
        Some(&result),
    );
    assert_eq!(code, 200, "{body}");

    // Wiped: available again, and the group that held it reads the certificate.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = s.cli_json(&["machine", "show", "w1"]);
        if m["state"] == "available" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never available: {m}\njob: {}\n{}",
            s.cli_json(&["job", "show", &job["id"].to_string()]),
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let detail = cli_json(&s, &rosa, &["lease", "show", &id.to_string()]);
    let certs = detail["wipe_certificates"]
        .as_array()
        .expect("certificates");
    assert_eq!(certs.len(), 1, "{detail}");
    assert_eq!(certs[0]["machine"], "w1");
    assert_eq!(certs[0]["body"]["disks"][0]["verified"], true, "{detail}");
    assert_eq!(certs[0]["body"]["lease_id"], id);
    assert_eq!(certs[0]["body"]["disks"][0]["nist_sp800_88"], "Clear");
    let checked = certs[0]["body"]["disks"][0]["server_verification"].to_string();
    assert!(
        checked.contains("offsets the server chose read back as zeros"),
        "{detail}"
    );

    // The member downloads the signed certificate and checks it; a changed byte fails it.
    let cid = certs[0]["id"].as_i64().expect("certificate id").to_string();
    let file = s.dir.path().join("cert.json");
    let file_arg = file.display().to_string();
    let out = s.cli_as(&rosa, &["certificate", "get", &cid, "-O", &file_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s.cli_as(&rosa, &["certificate", "verify", &file_arg]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("valid"),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Offline, with the key saved from the API.
    let (code, key) = lab_call_text(&lab, "GET", "/api/v1/trust/key", &rosa, None);
    assert_eq!(code, 200, "{key}");
    let key_file = s.dir.path().join("key.json");
    std::fs::write(&key_file, &key).expect("key file");
    let key_arg = key_file.display().to_string();
    let out = s.cli_as(
        "",
        &[
            "--url",
            "http://192.0.2.1:9",
            "certificate",
            "verify",
            &file_arg,
            "--key",
            &key_arg,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).expect("cert");
    let changed = text.replacen("W1-DISK", "W1-DISX", 1);
    assert_ne!(text, changed);
    std::fs::write(&file, changed).expect("change");
    let out = s.cli_as(
        &rosa,
        &["certificate", "verify", &file_arg, "--key", &key_arg],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("NOT VALID") && err.contains("changed"),
        "{err}"
    );
    // Another group cannot download it.
    let (code, _) = lab_call_text(
        &lab,
        "GET",
        &format!("/api/v1/certificates/{cid}"),
        "no-such-token",
        None,
    );
    assert_eq!(code, 401);
    // The export carries the key.
    let export = s.cli_json(&["export"]);
    assert!(
        export["trust_keys"]
            .as_array()
            .is_some_and(|k| !k.is_empty()),
        "{export}"
    );
}

/// An HTTP call from inside the lab (curl), as the agent makes it: status and body text.
/// One call from inside the lab: boot and agent paths to the boot listener, everything else
/// to the member API (the two are apart, issue 13).
fn lab_call_text(
    lab: &testkit::netns::Lab,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let url = if path.starts_with("/boot/") || path.starts_with("/api/v1/agent/") {
        common::lab_url(path)
    } else {
        format!("http://10.77.0.1:9090{path}")
    };
    let (code, body) = common::call_in(lab, &lab.srv, &url, method, token, body, &[]);
    (code, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_user_ssh_key_is_theirs_alone_and_members_manage_only_their_own() {
    let s = Service::start(Db::Sqlite).await;
    let p = setup(&s, 0).await;
    const OTHER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFyqHg0z2hEJx7z0i0e1ZcH6mZ3M0vV7qQm0Qm8m4kUw ada@desk";
    // Staff give a member a key; the member lists their own.
    let (st, v) = api(
        &s,
        p.token("staff"),
        reqwest::Method::POST,
        "/api/v1/users/member-a/ssh-keys",
        Some(json!({"key": OTHER})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let fp = v[0]["fingerprint"].as_str().expect("fp").to_string();
    let (st, v) = api(
        &s,
        p.token("member-a"),
        reqwest::Method::GET,
        "/api/v1/users/member-a/ssh-keys",
        None,
    )
    .await;
    assert_eq!((st, v[0]["fingerprint"].as_str()), (200, Some(fp.as_str())));
    // Another member may not look, nor add to someone else.
    let (st, _) = api(
        &s,
        p.token("member-b"),
        reqwest::Method::GET,
        "/api/v1/users/member-a/ssh-keys",
        None,
    )
    .await;
    assert_eq!(st, 403);
    // The key is member-a's: no other user and no group may hold it (409, audited).
    let (st, v) = api(
        &s,
        p.token("member-b"),
        reqwest::Method::POST,
        "/api/v1/groups/b/ssh-keys",
        Some(json!({"key": OTHER})),
    )
    .await;
    assert_eq!(st, 409, "{v}");
    let (st, v) = api(
        &s,
        p.token("staff"),
        reqwest::Method::POST,
        "/api/v1/users/member-b/ssh-keys",
        Some(json!({"key": OTHER})),
    )
    .await;
    assert_eq!(st, 409, "{v}");
    // A group's key cannot become a user's.
    let (st, _) = api(
        &s,
        p.token("member-b"),
        reqwest::Method::POST,
        "/api/v1/groups/b/ssh-keys",
        Some(json!({"key": KEY})),
    )
    .await;
    assert_eq!(st, 201);
    let (st, _) = api(
        &s,
        p.token("member-b"),
        reqwest::Method::POST,
        "/api/v1/users/member-b/ssh-keys",
        Some(json!({"key": KEY})),
    )
    .await;
    assert_eq!(st, 409);
    // The owner removes it.
    let enc = fp.replace('/', "%2F").replace('+', "%2B");
    let (st, _) = api(
        &s,
        p.token("member-a"),
        reqwest::Method::DELETE,
        &format!("/api/v1/users/member-a/ssh-keys/{enc}"),
        None,
    )
    .await;
    assert_eq!(st, 204);
}
