//! Jobs across instances on one PostgreSQL (the suite's throwaway server): a reimage whose
//! driving instance is killed (-9) while it waits for the agent is finished by another
//! instance, through the boot service the scripted agent knows, each step recorded once and
//! the takeover audited; and a wipe the lease scheduler makes (on one instance) for a machine
//! of another instance's site is started by that instance's wake-up (`LISTEN/NOTIFY`), not
//! by its poll, which is set to ten minutes.

mod common;

use common::{
    agent_call, agent_claim, api, boot_token, holder_of, instance, instance_first, json_of, member,
    reserved, serve_in_lab, status, wait_for, Service,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use testkit::netns::Lab;

fn instance_id(s: &Service) -> String {
    std::fs::read_to_string(s.data_dir().join("instance-id"))
        .expect("instance id")
        .trim()
        .to_string()
}

/// Waits (bounded, 60 s) until job `id`, as `s` shows it, satisfies `pred`.
fn wait_job(s: &Service, id: i64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = s.cli_json(&["job", "show", &id.to_string()]);
        if pred(&j) {
            return j;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never got to '{what}': {j:#}\nlog:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_instance_s_job_is_finished_by_its_agent_through_another() {
    let db = common::fresh_postgres().await;
    let lab = Lab::new("sotk");
    let mac = "52-54-00-17-0a-01";
    let in_lab = ["--database-url", db.as_str()];
    // Instance B is the site's boot service, in the lab. Its first start makes the admin,
    // the secret key, the machine and the image, then it stops, so that A (started next)
    // claims the job.
    let mut b = serve_in_lab(&lab.srv, tempfile::tempdir().expect("tmp"), &in_lab);
    let admin = b.admin_token.clone();
    b.cli(&["machine", "add", "n1", "--mac", &reserved(mac)]);
    b.cli(&["machine", "state", "n1", "available"]);
    let image = testkit::netns::pseudo_random(3 << 20, 17);
    let sha = hex::encode(Sha256::digest(&image));
    let f = b.dir.path().join("disk.raw");
    std::fs::write(&f, &image).expect("write image");
    b.cli(&[
        "image",
        "add",
        "debian",
        &f.display().to_string(),
        "--version",
        "12",
    ]);
    assert!(b.stop(), "B stops cleanly");

    let mut a = instance(&db, &b.data_dir(), &[]);
    a.admin_token = admin.clone();
    let a_id = instance_id(&a);
    let id = a.cli_json(&["reimage", "n1", "--image", "debian:12"])["id"]
        .as_i64()
        .expect("job id");
    wait_job(&a, id, "wait_agent", |j| j["step"] == "wait_agent");
    assert_eq!(
        wait_for(&a, &admin, "a holder", |st| holder_of(st, id)),
        a_id
    );

    // B again, on its data dir: it answers the machine while A drives the job.
    let dir = b.take_dir();
    let mut b = serve_in_lab(&lab.srv, dir, &in_lab);
    b.admin_token = admin.clone();
    let b_id = instance_id(&b);
    let (script, token) = boot_token(&lab, mac);
    let token = token.unwrap_or_else(|| panic!("B's script carries A's attempt token: {script}"));
    let (code, body) = agent_claim(&lab, mac, &token);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let session = json_of(&body)["session"]
        .as_str()
        .expect("session")
        .to_string();
    let (code, got) = agent_call(&lab, "GET", "/api/v1/agent/image", &session, None);
    assert_eq!(code, 200);
    assert_eq!(hex::encode(Sha256::digest(&got)), sha);
    let progress = json!({"phase": "writing", "bytes": 1048576, "total": image.len(), "message": "writing to /dev/vda"});
    let (code, _) = agent_call(
        &lab,
        "POST",
        "/api/v1/agent/progress",
        &session,
        Some(&progress),
    );
    assert_eq!(code, 204);
    wait_job(&b, id, "deploy", |j| j["step"] == "deploy");
    let alive = status(&b, &admin)["instances"]
        .as_array()
        .map_or(0, |l| l.iter().filter(|i| i["alive"] == true).count());
    assert_eq!(alive, 2, "A and B are both alive before the kill");

    // The driver dies; B takes the job over once A's claim expires.
    a.kill9();
    let killed = Instant::now();
    let new_holder = wait_for(&b, &admin, "B holding the job", |st| {
        holder_of(st, id).filter(|h| *h == b_id)
    });
    let takeover = killed.elapsed();
    eprintln!(
        "takeover: job {id} held by {new_holder} {:.1} s after the kill -9 of {a_id}",
        takeover.as_secs_f64()
    );

    // The agent goes on with the same session at the same URL: challenge, result.
    let (code, body) = agent_call(
        &lab,
        "POST",
        "/api/v1/agent/challenge",
        &session,
        Some(&json!({})),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let challenge = json_of(&body);
    let answers: Vec<Value> = challenge["ranges"]
        .as_array()
        .expect("ranges")
        .iter()
        .map(|r| {
            let off = r["offset"].as_u64().expect("offset") as usize;
            let len = r["length"].as_u64().expect("length") as usize;
            json!({"offset": off, "length": len,
                "sha256": hex::encode(Sha256::digest(&image[off..off + len]))})
        })
        .collect();
    let result = json!({"ok": true, "deploy": {"target_disk": "/dev/vda", "written_bytes": image.len(), "sha256": sha,
        "seed": "skipped: no Linux root filesystem on the image", "challenge": answers}});
    let (code, body) = agent_call(
        &lab,
        "POST",
        "/api/v1/agent/result",
        &session,
        Some(&result),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let j = wait_job(&b, id, "its end", |j| j["state"] != "running");
    assert_eq!(j["state"], "succeeded", "{j:#}\n{}", b.log_text());
    assert_eq!(b.cli_json(&["machine", "show", "n1"])["state"], "deployed");
    // Each step recorded once: the agent's steps were not started again by the new holder.
    for step in j["steps"].as_array().expect("steps") {
        assert!(
            step["state"] == "succeeded" || step["state"] == "skipped",
            "{step}"
        );
        assert!(step["attempts"].as_i64().unwrap_or(0) <= 1, "{step}");
    }
    let logs = b.cli(&["job", "logs", &id.to_string()]);
    assert_eq!(
        logs.matches("resuming at step").count(),
        1,
        "one takeover: {logs}"
    );
    assert!(
        logs.contains(&format!(
            "resuming at step deploy after a restart (instance {b_id})"
        )),
        "{logs}"
    );
    // The audit log names the takeover, from whom to whom.
    let ev = b.cli_json(&["events", "--machine", "n1"]);
    let took: Vec<&Value> = ev
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["action"] == "job.takeover")
        .collect();
    assert_eq!(took.len(), 1, "{ev:#}");
    let detail = took[0]["detail"].to_string();
    assert!(detail.contains(&a_id) && detail.contains(&b_id), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduler_made_wipe_starts_on_its_site_s_instance_by_wake_up() {
    let db = common::fresh_postgres().await;
    let mut first = instance_first(&db);
    let admin = first.admin_token.clone();
    let key_dir = first.data_dir();
    for site in ["a", "b"] {
        first.cli(&["site", "add", site]);
    }
    first.cli(&[
        "machine",
        "add",
        "w",
        "--mac",
        "52:54:00:17:0b:01",
        "--site",
        "b",
        "--tag",
        "w",
    ]);
    first.cli(&["machine", "state", "w", "available"]);
    let (code, v) = api(
        &first,
        &admin,
        reqwest::Method::POST,
        "/api/v1/groups",
        Some(json!({"name": "g"})),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    let token = member(&first, &admin, "mg", "g").await;
    assert!(first.stop(), "the first instance stops cleanly");

    // Site a's instance leads the scheduler; site b's looks for jobs every ten minutes.
    let mut sa = instance(&db, &key_dir, &["--site", "a"]);
    sa.admin_token = admin.clone();
    let sa_id = instance_id(&sa);
    let leader = wait_for(&sa, &admin, "a scheduler leader", |st| {
        st["instances"].as_array()?.iter().find_map(|i| {
            let leads = i["leads"].as_array()?.iter().any(|r| r == "scheduler");
            leads.then(|| i["id"].as_str().unwrap_or_default().to_string())
        })
    });
    assert_eq!(leader, sa_id);
    let mut tb = instance(&db, &key_dir, &["--site", "b", "--job-poll-secs", "600"]);
    tb.admin_token = admin.clone();
    let tb_id = instance_id(&tb);

    // A three-second lease: the scheduler (on a) ends it and makes the wipe job.
    let (code, v) = api(
        &tb,
        &token,
        reqwest::Method::POST,
        "/api/v1/leases",
        Some(json!({"count": 1, "duration_secs": 3, "tags": ["w"]})),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    let granted = Instant::now();
    let deadline = granted + Duration::from_secs(60);
    let wipe = loop {
        let jobs = sa.cli_json(&["job", "list", "--machine", "w"]);
        if let Some(j) = jobs
            .as_array()
            .and_then(|a| a.iter().find(|j| j["kind"] == "wipe"))
        {
            break j.clone();
        }
        assert!(Instant::now() < deadline, "no wipe job: {jobs:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let id = wipe["id"].as_i64().expect("id");
    assert_eq!(
        sa.cli_json(&["job", "show", &id.to_string()])["requested_by"],
        "scheduler"
    );
    // Only b's instance may drive it, and only a wake-up can make it look within ten minutes.
    let holder = wait_for(&sa, &admin, "b's instance driving the wipe", |st| {
        holder_of(st, id)
    });
    assert_eq!(holder, tb_id, "site b's instance drives site b's wipe");
    eprintln!(
        "wipe job {id} started by {tb_id} {:.1} s after the 3 s lease was granted",
        granted.elapsed().as_secs_f64()
    );
    assert!(tb.log_text().contains("driving job"), "{}", tb.log_text());
}
