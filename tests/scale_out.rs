//! Several `rackshare serve` processes on one PostgreSQL database (the suite's throwaway
//! server): one set of three instances — two of site `a`, one of site `b` — shared by checks
//! that stay independent of each other: the status lists them; a site's BMC is called only by
//! its own instances; racing lease requests spread over the instances get exactly the
//! capacity, quotas holding; a lease that ends gets one wipe job; and a job whose instance is
//! killed (-9) is taken over by another, which drives it to its end.

mod common;

use common::{api, holder_of, instance, instance_first, member, status, wait_for, Service};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_share_one_postgres() {
    let db = common::fresh_postgres().await;
    // The first start makes the admin and the sites; it then stops (its row stays, dead).
    let mut first = instance_first(&db);
    let admin = first.admin_token.clone();
    let key_dir = first.data_dir();
    for site in ["a", "b"] {
        first.cli(&["site", "add", site]);
    }
    let bmc_a = testkit::fake_redfish::FakeRedfish::start(100.0).await;
    let bmc_b = testkit::fake_redfish::FakeRedfish::start(100.0).await;
    for (name, site, mac, bmc) in [
        ("ma", "a", "52:54:00:17:00:01", bmc_a.url()),
        ("mb", "b", "52:54:00:17:00:02", bmc_b.url()),
    ] {
        first.cli(&[
            "machine",
            "add",
            name,
            "--mac",
            mac,
            "--site",
            site,
            "--bmc",
            &bmc,
            "--bmc-user",
            "u",
        ]);
    }
    assert!(first.stop(), "the first instance stops cleanly");

    // An unknown site is refused at start-up, naming it.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
            "--site",
            "nowhere",
        ])
        .env("RACKSHARE_METRICS_LISTEN", "127.0.0.1:0")
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("site 'nowhere' not found"), "{err}");
    let [a1, a2, b1] = ["a", "a", "b"].map(|site| {
        let mut s = instance(&db, &key_dir, &["--site", site]);
        s.admin_token = admin.clone();
        s
    });

    // The status: three live instances with their sites, the first one dead.
    let st = status(&a1, &admin);
    let list = st["instances"].as_array().expect("instances");
    let alive: Vec<&Value> = list.iter().filter(|i| i["alive"] == true).collect();
    assert_eq!(alive.len(), 3, "{st:#}");
    assert_eq!(list.len(), 4, "the first instance is listed, dead: {st:#}");
    let mut sites: Vec<&str> = alive.iter().filter_map(|i| i["site"].as_str()).collect();
    sites.sort_unstable();
    assert_eq!(sites, ["a", "a", "b"], "{st:#}");
    assert_eq!(st["sites_without_instance"], json!([]), "{st:#}");
    let table = a2.cli_as(&admin, &["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("alive") && table.contains("dead"), "{table}");

    // One signing key for all (stored by the first instance, sealed in the database).
    let mut key_ids = Vec::new();
    for s in [&a1, &a2, &b1] {
        let (code, v) = api(s, &admin, reqwest::Method::GET, "/api/v1/trust/key", None).await;
        assert_eq!(code, 200, "{v}");
        key_ids.push(v["key_id"].clone());
    }
    assert!(
        key_ids.iter().all(|k| *k == key_ids[0] && !k.is_null()),
        "{key_ids:?}"
    );

    // Site b's instance never calls site a's BMC: it refuses, naming the site.
    let before = bmc_a.hits.load(Ordering::Relaxed);
    let (code, v) = api(
        &b1,
        &admin,
        reqwest::Method::GET,
        "/api/v1/machines/ma/power",
        None,
    )
    .await;
    assert_eq!(code, 409, "{v}");
    assert!(v.to_string().contains("site 'a'"), "{v}");
    assert_eq!(
        bmc_a.hits.load(Ordering::Relaxed),
        before,
        "no call to a's BMC"
    );
    let (code, v) = api(
        &a2,
        &admin,
        reqwest::Method::GET,
        "/api/v1/machines/ma/power",
        None,
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert!(bmc_a.hits.load(Ordering::Relaxed) > before);
    let (code, v) = api(
        &b1,
        &admin,
        reqwest::Method::GET,
        "/api/v1/machines/mb/power",
        None,
    )
    .await;
    assert_eq!(code, 200, "{v}");

    // 200 racing lease requests over the three instances: exactly the 12 machines go,
    // group q's quota of 4 holds.
    leases_race(&[&a1, &a2, &b1], &admin).await;

    // A lease that ends while three instances run gets exactly one wipe job.
    lease_end_wipes_once(&a1, &admin).await;

    // A job driven by one instance survives its kill -9: another takes it over.
    let job = a1.cli_json(&["job", "start", "loose", "--kind", "inspect"]);
    let id = job["id"].as_i64().expect("job id");
    // Killed once it waits for its agent (a step running), so the new holder resumes a step.
    let deadline = Instant::now() + Duration::from_secs(45);
    while !a1
        .cli(&["job", "logs", &id.to_string()])
        .contains("PXE-boot the agent")
    {
        assert!(
            Instant::now() < deadline,
            "job {id} never waited for its agent"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(1));
    let holder = wait_for(&a1, &admin, "a holder", |st| holder_of(st, id));
    let mut services = [a1, a2, b1];
    let ids: Vec<String> = services
        .iter()
        .map(|s| {
            std::fs::read_to_string(s.data_dir().join("instance-id"))
                .expect("instance id")
                .trim()
                .to_string()
        })
        .collect();
    let victim = ids
        .iter()
        .position(|i| *i == holder)
        .expect("one of the three holds the job");
    services[victim].kill9();
    let survivor = (victim + 1) % services.len();
    let s = &services[survivor];
    let new_holder = wait_for(s, &admin, "a new holder", |st| {
        holder_of(st, id).filter(|h| *h != holder)
    });
    assert_ne!(new_holder, holder);
    let events = s.cli(&["job", "logs", &id.to_string()]);
    assert!(
        events.contains(&format!("instance {new_holder}")),
        "the new holder resumed it: {events}"
    );
    // It drives the job to its end: a cancel is carried out by the new holder.
    s.cli(&["job", "cancel", &id.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = s.cli_json(&["job", "show", &id.to_string()]);
        if j["state"] == "cancelled" {
            break;
        }
        assert!(Instant::now() < deadline, "job not cancelled: {j:#}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

async fn leases_race(all: &[&Service; 3], admin: &str) {
    let s = all[0];
    for g in ["q", "r"] {
        let (code, v) = api(
            s,
            admin,
            reqwest::Method::POST,
            "/api/v1/groups",
            Some(json!({"name": g})),
        )
        .await;
        assert_eq!(code, 201, "{v}");
    }
    let (code, v) = api(
        s,
        admin,
        reqwest::Method::PUT,
        "/api/v1/groups/q/quota",
        Some(json!({"max_machines": 4})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let q = member(s, admin, "mq", "q").await;
    let r = member(s, admin, "mr", "r").await;
    for i in 0..12 {
        let name = format!("pool-{i}");
        let (code, v) = api(
            s,
            admin,
            reqwest::Method::POST,
            "/api/v1/machines",
            Some(json!({"name": name, "macs": [format!("52:54:00:17:01:{i:02x}")], "tags": ["pool"]})),
        )
        .await;
        assert_eq!(code, 201, "{v}");
        s.cli(&["machine", "state", &name, "available"]);
    }
    let mut tasks = Vec::new();
    for i in 0..200 {
        let token = if i % 2 == 0 { q.clone() } else { r.clone() };
        let (http, url) = (all[i % 3].http(), all[i % 3].url.clone());
        tasks.push(tokio::spawn(async move {
            let resp = http
                .post(format!("{url}/api/v1/leases"))
                .bearer_auth(token)
                .json(&json!({"count": 1, "duration_secs": 3600, "tags": ["pool"]}))
                .send()
                .await
                .expect("post");
            let code = resp.status().as_u16();
            (
                code,
                resp.json::<Value>().await.unwrap_or(Value::Null),
                i % 2 == 0,
            )
        }));
    }
    let (mut granted, mut to_q) = (Vec::new(), 0);
    for t in tasks {
        match t.await.expect("join") {
            (201, v, is_q) => {
                to_q += usize::from(is_q);
                granted.push(v["machines"][0]["name"].as_str().expect("name").to_string());
            }
            (409, _, _) => {}
            (code, v, _) => panic!("unexpected {code}: {v}"),
        }
    }
    assert_eq!(granted.len(), 12, "{granted:?}");
    assert_eq!(to_q, 4, "group q's quota holds");
    granted.sort();
    granted.dedup();
    assert_eq!(granted.len(), 12, "a machine went to two leases");
}

async fn lease_end_wipes_once(s: &Service, admin: &str) {
    let (code, v) = api(
        s,
        admin,
        reqwest::Method::POST,
        "/api/v1/machines",
        Some(json!({"name": "loose", "macs": ["52:54:00:17:02:01"], "tags": ["loose"]})),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    s.cli(&["machine", "state", "loose", "available"]);
    let token = member(s, admin, "ml", "r").await;
    let (code, v) = api(
        s,
        &token,
        reqwest::Method::POST,
        "/api/v1/leases",
        Some(json!({"count": 1, "duration_secs": 3600, "tags": ["loose"]})),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    let lease = v["id"].as_i64().expect("lease id");
    let (code, v) = api(
        s,
        &token,
        reqwest::Method::POST,
        &format!("/api/v1/leases/{lease}/release"),
        None,
    )
    .await;
    assert!(code == 200 || code == 202, "{code} {v}");
    // The scheduler's leader and the other instances all look for a few ticks.
    std::thread::sleep(Duration::from_secs(5));
    let jobs = s.cli_json(&["job", "list", "--machine", "loose"]);
    let wipes: Vec<&Value> = jobs
        .as_array()
        .expect("jobs")
        .iter()
        .filter(|j| j["kind"] == "wipe")
        .collect();
    assert_eq!(wipes.len(), 1, "{jobs:#}");
    // The wipe (no BMC, waiting for its agent) is cancelled so the machine is free again.
    let id = wipes[0]["id"].as_i64().expect("id").to_string();
    s.cli(&["job", "cancel", &id]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = s.cli_json(&["job", "show", &id]);
        if j["state"] == "cancelled" {
            break;
        }
        assert!(Instant::now() < deadline, "wipe not cancelled: {j:#}");
        std::thread::sleep(Duration::from_millis(300));
    }
    s.cli(&["machine", "state", "loose", "available"]);
}
