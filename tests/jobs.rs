//! The job engine through the real binary, with the agent's side of the protocol played by
//! curl inside the lab namespace (the real agent in a VM is tests/reimage.rs). The machine has
//! no BMC, so the conductor skips the power steps and the test is quick; what is checked is
//! the protocol and the persistence: one-time tokens, sessions, Range downloads, progress,
//! verification, failure, cancel, and a kill -9 in the middle of a deploy.

mod common;

use common::{
    agent_call, agent_call_with, agent_claim, boot_token, claim_from_host, json_of, lab_call,
    reserved, serve_in_lab, Service,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use testkit::netns::Lab;

use common::LAB_AGENT_API as AGENT_API;
use common::LAB_API as API;

fn job(s: &Service, id: i64) -> Value {
    s.cli_json(&["job", "show", &id.to_string()])
}

/// Waits (bounded) until the job satisfies `pred`.
fn wait_job(s: &Service, id: i64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = job(s, id);
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

struct Setup {
    lab: Lab,
    s: Service,
    image: Vec<u8>,
    sha: String,
}

fn setup(tag: &str, machines: &[(&str, &str)]) -> Setup {
    let lab = Lab::new(tag);
    let s = serve_in_lab(&lab.srv, tempfile::tempdir().expect("tmp"), &[]);
    for (name, mac) in machines {
        s.cli(&["machine", "add", name, "--mac", &reserved(mac)]);
        s.cli(&["machine", "state", name, "available"]);
    }
    let image = testkit::netns::pseudo_random(3 << 20, 7);
    let sha = hex::encode(Sha256::digest(&image));
    let f = s.dir.path().join("disk.raw");
    std::fs::write(&f, &image).expect("write image");
    s.cli(&[
        "image",
        "add",
        "debian",
        &f.display().to_string(),
        "--version",
        "12",
    ]);
    Setup { lab, s, image, sha }
}

/// The scripted agent asks for its deploy challenge.
fn deploy_challenge(lab: &Lab, session: &str) -> Value {
    let (code, body) = agent_call(
        lab,
        "POST",
        "/api/v1/agent/challenge",
        session,
        Some(&json!({})),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    json_of(&body)
}

/// The hashes of the challenged ranges of `disk`, as the real agent reads them back.
fn answer_from(disk: &[u8], challenge: &Value) -> Vec<Value> {
    let ranges = challenge["ranges"].as_array().expect("ranges");
    ranges
        .iter()
        .map(|r| {
            let off = r["offset"].as_u64().expect("offset") as usize;
            let len = r["length"].as_u64().expect("length") as usize;
            json!({"offset": off, "length": len, "sha256": hex::encode(Sha256::digest(&disk[off..off + len]))})
        })
        .collect()
}

fn start_reimage(s: &Service, machine: &str) -> i64 {
    let j = s.cli_json(&["reimage", machine, "--image", "debian:12"]);
    j["id"].as_i64().expect("job id")
}

#[tokio::test]
async fn reimage_job_with_a_scripted_agent_and_a_crash_in_the_middle() {
    let Setup {
        lab,
        mut s,
        image,
        sha,
    } = setup("jobok", &[("n1", "52:54:00:0b:00:01")]);
    let mac = "52-54-00-0b-00-01";
    let id = start_reimage(&s, "n1");
    assert_eq!(s.cli_json(&["machine", "show", "n1"])["state"], "deploying");
    let j = wait_job(&s, id, "wait_agent", |j| j["step"] == "wait_agent");
    assert_eq!(
        j["steps"][0]["state"], "skipped",
        "no BMC: PXE boot is set by hand"
    );

    // The boot attempt's token: every fetch in the attempt carries the same one (a GET
    // never mints or changes it); it works once, then the script carries none.
    let (script, first) = boot_token(&lab, mac);
    assert!(
        script.contains("agent-vmlinuz") && script.contains("rackshare.mode=deploy"),
        "{script}"
    );
    let first = first.expect("token");
    // The agent is sent to the HTTPS agent listener with the certificate's pin; the plain
    // boot listener serves no agent endpoint (only a 404 saying where it is).
    let (cert, key) = api::tls::self_signed_paths(&s.data_dir());
    let pin = api::tls::TlsIdentity::load(&cert, &key)
        .expect("the data dir's certificate")
        .fingerprint();
    let pin = pin.trim_start_matches("SHA256:");
    assert!(
        script.contains(&format!(
            "rackshare.api={AGENT_API} rackshare.pin={pin} rackshare.token="
        )),
        "{script}"
    );
    let (code, body) = lab_call(
        &lab,
        &format!("{API}/api/v1/agent/claim"),
        "POST",
        &first,
        Some(&json!({"macs": ["52:54:00:0b:00:01"]})),
        &[],
    );
    assert_eq!(code, 404);
    assert!(
        json_of(&body)["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("HTTPS only")),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (_, second) = boot_token(&lab, mac);
    assert_eq!(
        second.as_deref(),
        Some(first.as_str()),
        "one attempt, one token"
    );
    // The member listener serves neither the boot script nor the agent's endpoints.
    let (code, _) = lab_call(
        &lab,
        &format!("{}/boot/{mac}.ipxe", s.url),
        "GET",
        "-",
        None,
        &[],
    );
    assert_eq!(code, 404);
    let claim_body = json!({"macs": ["52:54:00:0b:00:01"]});
    let (code, body) = lab_call(
        &lab,
        &format!("{}/api/v1/agent/claim", s.url),
        "POST",
        &first,
        Some(&claim_body),
        &[],
    );
    assert_eq!(code, 404);
    assert_eq!(json_of(&body)["error"]["code"], "not_found");
    // The audit's reproductions: the right token from another address on the boot segment
    // (the server's own namespace here), or from the machine's address with foreign MACs, is
    // refused, audited with its source and counted, and changes nothing.
    let (code, body) = agent_call(
        &lab,
        "POST",
        "/api/v1/agent/claim",
        &first,
        Some(&claim_body),
    );
    assert_eq!(code, 403, "{}", String::from_utf8_lossy(&body));
    let (code, _) = claim_from_host(&lab, mac, &first, &json!({"macs": ["de:ad:be:ef:00:01"]}));
    assert_eq!(code, 403, "none of the machine's MACs");
    s.cli(&["machine", "add", "other", "--mac", "52:54:00:0b:00:09"]);
    let (code, _) = claim_from_host(
        &lab,
        mac,
        &first,
        &json!({"macs": ["52:54:00:0b:00:01", "52:54:00:0b:00:09"]}),
    );
    assert_eq!(code, 403, "another machine's MAC");
    let ev = s.cli_json(&["events", "--machine", "n1"]).to_string();
    assert!(
        ev.contains("job.agent_claim") && ev.contains("denied") && ev.contains("10.77.0.1"),
        "{ev}"
    );
    let metrics_url = s.metrics_url.clone().expect("metrics listener");
    let (_, metrics) = lab_call(&lab, &metrics_url, "GET", "-", None, &[]);
    assert!(
        String::from_utf8_lossy(&metrics).contains("rackshare_agent_claims_refused_total 3"),
        "{}",
        String::from_utf8_lossy(&metrics)
    );
    let (_, again) = boot_token(&lab, mac);
    assert_eq!(
        again.as_deref(),
        Some(first.as_str()),
        "a refused claim changes nothing"
    );
    let (code, body) = agent_claim(&lab, mac, &first);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let claim = json_of(&body);
    let (code, _) = agent_claim(&lab, mac, &first);
    assert_eq!(code, 401, "a token works once");
    let (script, after) = boot_token(&lab, mac);
    assert_eq!(
        after, None,
        "a claimed attempt's script carries no token: {script}"
    );
    let session = claim["session"].as_str().expect("session").to_string();
    assert_eq!(claim["task"]["mode"], "deploy");
    assert_eq!(claim["task"]["hostname"], "n1");
    assert_eq!(claim["task"]["image"]["sha256"], sha.as_str());
    assert_eq!(
        claim["task"]["image"]["url"],
        format!("{AGENT_API}/api/v1/agent/image")
    );
    // An API token is not an agent session, and the session is not an API token.
    let (code, _) = agent_call(&lab, "GET", "/api/v1/agent/image", &s.admin_token, None);
    assert_eq!(code, 401);
    // The boot listener serves nothing of the member API.
    let (code, _) = agent_call(&lab, "GET", "/api/v1/machines", &session, None);
    assert_eq!(code, 404);

    // The image, whole and resumed with Range.
    let (code, body) = agent_call(&lab, "GET", "/api/v1/agent/image", &session, None);
    assert_eq!(code, 200);
    assert_eq!(hex::encode(Sha256::digest(&body)), sha);
    let (code, tail) = agent_call_with(
        &lab,
        "GET",
        "/api/v1/agent/image",
        &session,
        None,
        &["-r", "1048576-"],
    );
    assert_eq!(code, 206);
    assert_eq!(tail, image[1 << 20..]);

    let progress = json!({"phase": "writing", "bytes": 1048576, "total": image.len(), "message": "writing to /dev/vda"});
    let (code, _) = agent_call(
        &lab,
        "POST",
        "/api/v1/agent/progress",
        &session,
        Some(&progress),
    );
    assert_eq!(code, 204);
    let j = wait_job(&s, id, "deploy", |j| j["step"] == "deploy");
    assert_eq!(j["phase"], "writing");
    assert_eq!(j["progress_bytes"], 1048576);

    // Crash in the middle of the deploy; the agent keeps its session and reports afterwards.
    s.kill9();
    let dir = s.take_dir();
    let s = serve_in_lab(&lab.srv, dir, &[]);
    // The deploy challenge: chunks the server picks now, answered from what was "written".
    let challenge = deploy_challenge(&lab, &session);
    let again = deploy_challenge(&lab, &session);
    assert_eq!(
        challenge, again,
        "one draw per boot: a retried request gets the same ranges"
    );
    let answers = answer_from(&image, &challenge);
    assert_eq!(
        answers.len(),
        3,
        "a 3 MiB image has three chunks: {challenge}"
    );
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
    assert_eq!(
        json_of(&body)["action"],
        "reboot",
        "no BMC: the agent reboots itself"
    );
    let j = wait_job(&s, id, "succeeded", |j| j["state"] != "running");
    assert_eq!(j["state"], "succeeded", "{j:#}\n{}", s.log_text());
    let m = s.cli_json(&["machine", "show", "n1"]);
    assert_eq!(m["state"], "deployed");
    let logs = s.cli(&["job", "logs", &id.to_string()]);
    assert!(
        logs.contains("resuming at step deploy after a restart"),
        "{logs}"
    );
    assert!(logs.contains("agent claimed the job"), "{logs}");
    assert!(logs.contains("agent: writing to /dev/vda"), "{logs}");
    // Done: the session is dead, the machine boots its disk.
    let (code, _) = agent_call(&lab, "GET", "/api/v1/agent/image", &session, None);
    assert_eq!(code, 401);
    let (script, token) = boot_token(&lab, mac);
    assert!(token.is_none() && script.contains("sanboot"), "{script}");
    // The reimage is in the audit log with who asked.
    let ev = s.cli_json(&["events", "--machine", "n1"]);
    assert!(ev.to_string().contains("job.reimage"), "{ev}");
    // The agent's claim and report are events, with the address they came from.
    for action in ["job.agent_claim", "job.agent_report"] {
        let e = ev
            .as_array()
            .expect("events")
            .iter()
            .find(|e| e["action"] == action && e["outcome"] == "ok")
            .unwrap_or_else(|| panic!("no {action} event: {ev}"));
        assert!(e["source"].as_str().is_some_and(|a| !a.is_empty()), "{e}");
    }
}

#[tokio::test]
async fn hash_mismatch_fails_the_job_and_cancel_stops_one() {
    let Setup { lab, s, .. } = setup(
        "jobbad",
        &[("n2", "52:54:00:0b:00:02"), ("n3", "52:54:00:0b:00:03")],
    );
    let id = start_reimage(&s, "n2");
    wait_job(&s, id, "wait_agent", |j| j["step"] == "wait_agent");
    let (_, token) = boot_token(&lab, "52-54-00-0b-00-02");
    let (code, body) = agent_claim(&lab, "52-54-00-0b-00-02", &token.expect("token"));
    assert_eq!(code, 200);
    let session = json_of(&body)["session"]
        .as_str()
        .expect("session")
        .to_string();
    let wrong = "0".repeat(64);
    let result = json!({"ok": true, "deploy": {"target_disk": "/dev/vda", "sha256": wrong}});
    let (code, _) = agent_call(
        &lab,
        "POST",
        "/api/v1/agent/result",
        &session,
        Some(&result),
    );
    assert_eq!(code, 200);
    let j = wait_job(&s, id, "failed", |j| j["state"] != "running");
    assert_eq!(j["state"], "failed");
    let err = j["error"].as_str().unwrap_or("");
    assert!(
        err.contains("verify") && err.contains("reads back"),
        "{err}"
    );
    let m = s.cli_json(&["machine", "show", "n2"]);
    assert_eq!(
        m["state"], "failed",
        "a corrupt deploy never marks the machine deployed"
    );
    assert!(
        m["state_reason"].as_str().unwrap_or("").contains("failed"),
        "{m}"
    );

    // The audit's forged deploy: the hash the claim returned, nothing written, no challenge
    // asked for; then one that asks but answers with bytes that are not the image.
    for answer in [false, true] {
        let id = start_reimage(&s, "n2");
        wait_job(&s, id, "wait_agent", |j| j["step"] == "wait_agent");
        let (_, token) = boot_token(&lab, "52-54-00-0b-00-02");
        let (_, body) = agent_claim(&lab, "52-54-00-0b-00-02", &token.expect("token"));
        let claim = json_of(&body);
        let session = claim["session"].as_str().expect("session").to_string();
        let claimed = claim["task"]["image"]["sha256"].clone();
        let mut deploy =
            json!({"target_disk": "/dev/vda", "written_bytes": 3 << 20, "sha256": claimed});
        if answer {
            let challenge = deploy_challenge(&lab, &session);
            deploy["challenge"] = json!(answer_from(&vec![0u8; 3 << 20], &challenge));
        }
        let result = json!({"ok": true, "deploy": deploy});
        let (code, _) = agent_call(
            &lab,
            "POST",
            "/api/v1/agent/result",
            &session,
            Some(&result),
        );
        assert_eq!(code, 200);
        let j = wait_job(&s, id, "failed", |j| j["state"] != "running");
        assert_eq!(
            j["state"], "failed",
            "a forged deploy never succeeds: {j:#}"
        );
        let err = j["error"].as_str().unwrap_or("");
        let want = if answer {
            "the image is not on the disk"
        } else {
            "without asking for the challenge"
        };
        assert!(err.contains(want), "{err}");
        assert_eq!(s.cli_json(&["machine", "show", "n2"])["state"], "failed");
        let ev = s.cli_json(&["events", "--machine", "n2"]).to_string();
        assert!(ev.contains("agent.report") && ev.contains(want), "{ev}");
    }

    // An agent's own failure report ends the job with its words.
    let id = start_reimage(&s, "n2");
    wait_job(&s, id, "wait_agent", |j| j["step"] == "wait_agent");
    let (_, token) = boot_token(&lab, "52-54-00-0b-00-02");
    let (_, body) = agent_claim(&lab, "52-54-00-0b-00-02", &token.expect("token"));
    let session = json_of(&body)["session"]
        .as_str()
        .expect("session")
        .to_string();
    let result = json!({"ok": false, "error": "no disk found: /sys/block lists only loop devices"});
    agent_call(
        &lab,
        "POST",
        "/api/v1/agent/result",
        &session,
        Some(&result),
    );
    let j = wait_job(&s, id, "failed", |j| j["state"] != "running");
    assert!(
        j["error"].as_str().unwrap_or("").contains("no disk found"),
        "{j}"
    );

    // Cancel a job waiting for its agent: it ends, the token stops working, the machine is failed.
    let id = start_reimage(&s, "n3");
    wait_job(&s, id, "wait_agent", |j| j["step"] == "wait_agent");
    let (_, token) = boot_token(&lab, "52-54-00-0b-00-03");
    s.cli(&["job", "cancel", &id.to_string()]);
    let j = wait_job(&s, id, "cancelled", |j| j["state"] != "running");
    assert_eq!(j["state"], "cancelled");
    let (code, _) = agent_claim(&lab, "52-54-00-0b-00-03", &token.expect("token"));
    assert_eq!(code, 401);
    assert_eq!(s.cli_json(&["machine", "show", "n3"])["state"], "failed");
    // A second job on a machine with one in progress is refused with a clear message.
    let id = start_reimage(&s, "n3");
    let out = s.cli_as(&s.admin_token, &["reimage", "n3", "--image", "debian:12"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("already has job {id}")), "{err}");
    // The image cannot be deleted while that job is pending.
    let out = s.cli_as(&s.admin_token, &["image", "delete", "debian:12"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("pending job {id}")));
    s.cli(&["job", "cancel", &id.to_string()]);
    wait_job(&s, id, "cancelled", |j| j["state"] == "cancelled");
}

#[tokio::test]
async fn the_concurrency_limit_queues_jobs_and_queued_machines_wait() {
    let lab = Lab::new("jobmax");
    let s = serve_in_lab(
        &lab.srv,
        tempfile::tempdir().expect("tmp"),
        &["--max-jobs", "1"],
    );
    for (name, mac) in [("q1", "52:54:00:0b:01:01"), ("q2", "52:54:00:0b:01:02")] {
        s.cli(&["machine", "add", name, "--mac", mac]);
        s.cli(&["machine", "state", name, "available"]);
    }
    let f = s.dir.path().join("img.raw");
    std::fs::write(&f, testkit::netns::pseudo_random(1 << 20, 1)).expect("image");
    s.cli(&["image", "add", "img", &f.display().to_string()]);
    let first = start_reimage_of(&s, "q1", "img");
    let second = start_reimage_of(&s, "q2", "img");
    wait_job(&s, first, "wait_agent", |j| j["step"] == "wait_agent");
    // The second waits for a slot; its machine, if it PXE-boots now, is told to wait too.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(job(&s, second)["state"], "queued");
    let (script, token) = boot_token(&lab, "52-54-00-0b-01-02");
    assert!(
        token.is_none() && script.contains("is queued") && script.contains("sleep 5"),
        "{script}"
    );
    // The first ends (cancelled here): the second starts.
    s.cli(&["job", "cancel", &first.to_string()]);
    wait_job(&s, second, "running", |j| j["state"] == "running");
    s.cli(&["job", "cancel", &second.to_string()]);
}

fn start_reimage_of(s: &Service, machine: &str, image: &str) -> i64 {
    let j = s.cli_json(&["reimage", machine, "--image", image]);
    j["id"].as_i64().expect("job id")
}
