//! Staff pages in a real browser (Debian's Chromium over WebDriver) against the real
//! `rackshare serve` in a lab namespace: a staff user enrols a machine through the form
//! against a real BMC (sushy-tools), reads the BMC check's answer (a wrong password first, in
//! words), edits it, changes its state being offered exactly the lifecycle's next states,
//! reads its timeline with the DISCOVER/OFFER/ACK a real DHCP client (udhcpc in a namespace
//! on the lab's bridge) caused, and follows a running job's progress on the jobs page (a
//! scripted agent) before cancelling it. A member is refused the staff pages and another
//! group's jobs; a form without its CSRF token is refused. Screenshots go to
//! `target/screenshots/staff-*.png`.

mod common;

use common::browser::{
    browser, click, fill, option_values, shot, start_driver, text_of_page, wait_for_text,
};
use common::{agent_call, agent_claim, boot_token, pxe_udhcpc, serve_in_lab};
use fantoccini::{Client, Locator};
use inventory::MachineState;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use testkit::netns::{bind_in, relay, require, Lab};

/// The machine the form enrols, and the MAC its DHCP client uses.
const ENROLLED_MAC: &str = "52:54:00:5a:00:01";
/// The machine a scripted agent reimages (its reserved address 10.77.0.196 lies outside the
/// DHCP pool).
const JOB_MAC: &str = "52:54:00:5a:00:60";
const BMC_PASSWORD: &str = "correct-horse";

/// The API as `token`, through the relay: (status, body).
async fn api(
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(30));
    if !body.is_null() {
        req = req.json(&body);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn api_ok(
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Value {
    let (status, v) = api(base, token, method.clone(), path, body).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

/// The offered next states on a machine's timeline page.
async fn offered(c: &Client) -> Vec<String> {
    option_values(c, "#to option").await
}

fn allowed(from: MachineState) -> Vec<String> {
    from.allowed_next()
        .iter()
        .map(|s| s.as_str().to_string())
        .collect()
}

/// A page fetched with a session cookie but no browser: (status, body).
async fn page_as(base: &str, cookie: &str, path: &str) -> (u16, String) {
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(format!("{base}{path}"))
        .header("Cookie", format!("rs_session={cookie}"))
        .send()
        .await
        .expect("get");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn staff_enrol_edit_move_and_follow_jobs_in_a_real_browser() {
    require("udhcpc", "udhcpc");
    let started = Instant::now();
    let lab = Lab::new("webstaff");
    let sushy = testkit::Sushy::start(
        &[testkit::default_system()],
        testkit::SushyOpts {
            users: vec![("admin".into(), BMC_PASSWORD.into())],
            tls: None,
        },
    );
    let s = serve_in_lab(
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
    // The service lives in the lab namespace: the BMC reaches it through a relay on the
    // namespace's loopback, the browser through one on the host's loopback.
    let bmc_in_ns = bind_in(&lab.srv, "127.0.0.1:0");
    let bmc_port = bmc_in_ns.local_addr().expect("addr").port();
    relay(
        bmc_in_ns,
        SocketAddr::from(([127, 0, 0, 1], sushy.port)),
        None,
    );
    let web = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", web.local_addr().expect("addr"));
    relay(web, "10.77.0.1:9090".parse().expect("addr"), Some(&lab.srv));

    let admin = s.admin_token.clone();
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;
    api_ok(
        &base,
        &admin,
        post.clone(),
        "/api/v1/sites",
        json!({"name": "hall"}),
    )
    .await;
    api_ok(
        &base,
        &admin,
        post.clone(),
        "/api/v1/racks",
        json!({"site": "hall", "name": "r1"}),
    )
    .await;
    api_ok(
        &base,
        &admin,
        post.clone(),
        "/api/v1/users",
        json!({"name": "sam", "role": "staff"}),
    )
    .await;
    let sam = api_ok(
        &base,
        &admin,
        post.clone(),
        "/api/v1/tokens",
        json!({"user": "sam"}),
    )
    .await;
    let sam = sam["token"].as_str().expect("token").to_string();
    for g in ["a", "b"] {
        api_ok(
            &base,
            &admin,
            post.clone(),
            "/api/v1/groups",
            json!({"name": g}),
        )
        .await;
    }
    api_ok(
        &base,
        &admin,
        post.clone(),
        "/api/v1/users",
        json!({"name": "ana", "role": "member", "member_group": "a"}),
    )
    .await;
    let ana = api_ok(
        &base,
        &admin,
        post.clone(),
        "/api/v1/tokens",
        json!({"user": "ana"}),
    )
    .await;
    let ana = ana["token"].as_str().expect("token").to_string();

    let driver = start_driver().await;
    // A phone's width: every staff page must work at 360 px.
    let c = browser(&driver, 360).await;
    c.goto(&format!("{base}/login")).await.expect("goto");
    fill(&c, "token", &sam).await;
    click(&c, "#sign-in-token").await;

    // Enrol through the form with a wrong BMC password: enrolled, and the check says why the
    // BMC refused, in words; the password is never shown back.
    c.goto(&format!("{base}/fleet")).await.expect("goto");
    click(&c, "#enrol").await;
    fill(&c, "m-name", "rf1").await;
    fill(&c, "m-macs", ENROLLED_MAC).await;
    fill(&c, "m-site", "hall").await;
    fill(&c, "m-rack", "r1").await;
    fill(&c, "m-tags", "lab, gpu").await;
    fill(&c, "m-arch", "x86_64").await;
    c.find(Locator::Css("#m-bmc-kind option[value='redfish+http']"))
        .await
        .expect("kind")
        .click()
        .await
        .expect("select");
    fill(&c, "m-bmc-address", &format!("127.0.0.1:{bmc_port}")).await;
    fill(&c, "m-bmc-user", "admin").await;
    fill(&c, "m-bmc-password", "wrong-battery").await;
    shot(&c, "staff-enrol").await;
    click(&c, "#save").await;
    let answer = wait_for_text(&c, "#bmc-check", "BMC check").await;
    assert!(
        answer.contains(&format!(
            "could not log in to the BMC at redfish+http://127.0.0.1:{bmc_port}"
        )) && answer.contains("check the BMC user and password"),
        "{answer}"
    );
    let source = c.source().await.expect("source");
    assert!(
        !source.contains("wrong-battery"),
        "the password is never shown back"
    );
    assert!(source.contains("one is stored; leave empty to keep it"));
    shot(&c, "staff-bmc-refused").await;
    let m = api_ok(
        &base,
        &admin,
        get.clone(),
        "/api/v1/machines/rf1",
        Value::Null,
    )
    .await;
    assert_eq!(
        (m["site"].as_str(), m["rack"].as_str()),
        (Some("hall"), Some("r1"))
    );
    assert_eq!(m["tags"], json!(["lab", "gpu"]));

    // Edit: the right password, a tag less; the check now reads the BMC's answer.
    fill(&c, "m-bmc-password", BMC_PASSWORD).await;
    fill(&c, "m-tags", "lab").await;
    click(&c, "#save").await;
    let answer = wait_for_text(&c, "#bmc-check", "power is").await;
    assert!(
        answer.contains("The BMC at redfish+http://127.0.0.1:") && answer.contains("power is off"),
        "{answer}"
    );
    assert!(text_of_page(&c).await.contains("rf1 is saved."));
    shot(&c, "staff-bmc-ok").await;
    // Another edit of the BMC that does not retype the password keeps it: the check still
    // logs in.
    let system = testkit::default_system().uuid;
    fill(
        &c,
        "m-bmc-address",
        &format!("127.0.0.1:{bmc_port}/redfish/v1/Systems/{system}"),
    )
    .await;
    fill(&c, "m-tags", "lab, quiet").await;
    click(&c, "#save").await;
    wait_for_text(&c, "#bmc-check", "power is off").await;
    let m = api_ok(
        &base,
        &admin,
        get.clone(),
        "/api/v1/machines/rf1",
        Value::Null,
    )
    .await;
    assert_eq!(m["tags"], json!(["lab", "quiet"]));
    assert_eq!(m["bmc"]["has_password"], true);
    assert!(
        m["bmc"]["url"]
            .as_str()
            .is_some_and(|u| u.ends_with(system)),
        "{m}"
    );
    // The API's own check answers the same, and a machine without a BMC is told so.
    let found = api_ok(
        &base,
        &sam,
        post.clone(),
        "/api/v1/machines/rf1/bmc/check",
        Value::Null,
    )
    .await;
    assert_eq!(found["power_state"], "off", "{found}");

    // A form posted without its CSRF token is refused and changes nothing.
    let old = c.find(Locator::Css("html")).await.expect("page");
    fill(&c, "m-tags", "forged").await;
    c.execute(
        "document.querySelectorAll('input[name=csrf]').forEach(e => e.remove()); \
         document.getElementById('machine-form').submit();",
        vec![],
    )
    .await
    .expect("submit without token");
    common::browser::wait_for_next_page(&c, old).await;
    assert!(text_of_page(&c)
        .await
        .contains("did not come from this site"));
    let m = api_ok(
        &base,
        &admin,
        get.clone(),
        "/api/v1/machines/rf1",
        Value::Null,
    )
    .await;
    assert_eq!(m["tags"], json!(["lab", "quiet"]), "nothing changed");

    // State changes offer exactly what the lifecycle table allows, before and after a move.
    c.goto(&format!("{base}/machines/rf1/timeline"))
        .await
        .expect("goto");
    assert_eq!(offered(&c).await, allowed(MachineState::New));
    c.find(Locator::Css("#to option[value=available]"))
        .await
        .expect("option")
        .click()
        .await
        .expect("select");
    fill(&c, "why", "racked and cabled").await;
    click(&c, "#move").await;
    assert_eq!(
        c.find(Locator::Id("state"))
            .await
            .expect("state")
            .text()
            .await
            .expect("text"),
        "available"
    );
    assert_eq!(offered(&c).await, allowed(MachineState::Available));

    // A real DHCP client with the machine's MAC on the lab's bridge: its DISCOVER, the
    // server's OFFER and ACK appear on the timeline.
    let client = lab.add_host("cli", ENROLLED_MAC, None);
    pxe_udhcpc(&lab, &client);
    let deadline = Instant::now() + Duration::from_secs(20);
    let timeline = loop {
        c.goto(&format!("{base}/machines/rf1/timeline"))
            .await
            .expect("goto");
        let t = text_of_page(&c).await;
        if ["dhcp.discover", "dhcp.offer", "dhcp.ack"]
            .iter()
            .all(|k| t.contains(k))
        {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no DHCP rows on the timeline: {t}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        timeline.contains("arch 0") || timeline.contains("vendor_class PXEClient"),
        "{timeline}"
    );
    assert!(
        timeline.contains("machine.bmc_check") && timeline.contains("machine.transition"),
        "{timeline}"
    );
    let wide = browser(&driver, 1100).await;
    wide.goto(&format!("{base}/login")).await.expect("goto");
    fill(&wide, "token", &sam).await;
    click(&wide, "#sign-in-token").await;
    wide.goto(&format!("{base}/machines/rf1/timeline"))
        .await
        .expect("goto");
    shot(&wide, "staff-timeline-boot-events").await;
    wide.close().await.expect("close");
    shot(&c, "staff-timeline-360").await;

    // A running job's progress on the jobs page, from a scripted agent, updating itself.
    api_ok(
        &base,
        &admin,
        post.clone(),
        "/api/v1/machines",
        json!({"name": "job1", "nics": [{"mac": JOB_MAC, "pxe": true, "ip": common::machine_ip(JOB_MAC)}]}),
    )
    .await;
    api_ok(
        &base,
        &admin,
        post.clone(),
        "/api/v1/machines/job1/state",
        json!({"state": "available"}),
    )
    .await;
    let image = testkit::netns::pseudo_random(1 << 20, 5);
    let f = s.dir.path().join("disk.raw");
    std::fs::write(&f, &image).expect("image");
    s.cli(&[
        "image",
        "add",
        "debian",
        &f.display().to_string(),
        "--version",
        "12",
    ]);
    let job = api_ok(
        &base,
        &admin,
        post.clone(),
        "/api/v1/jobs",
        json!({"machine": "job1", "kind": "reimage", "image": "debian:12"}),
    )
    .await;
    let id = job["id"].as_i64().expect("job id");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = api_ok(
            &base,
            &admin,
            get.clone(),
            &format!("/api/v1/jobs/{id}"),
            Value::Null,
        )
        .await;
        if j["step"] == "wait_agent" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job never waited for its agent: {j}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mac = JOB_MAC.replace(':', "-");
    let (_, token) = boot_token(&lab, &mac);
    let (code, body) = agent_claim(&lab, &mac, &token.expect("a boot token"));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let session = common::json_of(&body)["session"]
        .as_str()
        .expect("session")
        .to_string();
    let progress = |pct: usize| json!({"phase": "writing", "bytes": (image.len() * pct).div_ceil(100), "total": image.len(), "message": "writing to /dev/vda"});
    let (code, _) = agent_call(
        &lab,
        "POST",
        "/api/v1/agent/progress",
        &session,
        Some(&progress(43)),
    );
    assert_eq!(code, 204);
    c.goto(&format!("{base}/jobs")).await.expect("goto");
    let row = format!("#job-{id} .progress");
    wait_for_text(&c, &row, "Writing disk").await;
    // The page refreshes itself: the next report shows without a click.
    let before = wait_for_text(&c, &row, "Writing disk 43 %").await;
    assert!(
        c.source()
            .await
            .expect("source")
            .contains("http-equiv=\"refresh\""),
        "{before}"
    );
    let (code, _) = agent_call(
        &lab,
        "POST",
        "/api/v1/agent/progress",
        &session,
        Some(&progress(60)),
    );
    assert_eq!(code, 204);
    wait_for_text(&c, &row, "Writing disk 60 %").await;
    shot(&c, "staff-jobs").await;
    // Filters and the machine's own list.
    c.goto(&format!("{base}/jobs?kind=wipe"))
        .await
        .expect("goto");
    assert!(text_of_page(&c).await.contains("No jobs match."));
    c.goto(&format!("{base}/jobs?state=running&machine=job1"))
        .await
        .expect("goto");
    assert!(c.find(Locator::Id(&format!("job-{id}"))).await.is_ok());

    // A member: the staff pages are refused, another group's machine and jobs are 404s.
    click(&c, "header button[type=submit]").await;
    fill(&c, "token", &ana).await;
    click(&c, "#sign-in-token").await;
    let cookie = c
        .get_named_cookie("rs_session")
        .await
        .expect("session cookie")
        .value()
        .to_string();
    for (path, status) in [
        ("/machines/new".to_string(), 403),
        ("/machines/rf1/edit".to_string(), 404),
        ("/jobs?machine=job1".to_string(), 404),
        (format!("/jobs/{id}"), 404),
        (format!("/jobs/{id}/cancel"), 404),
    ] {
        let (got, body) = page_as(&base, &cookie, &path).await;
        assert_eq!(got, status, "{path}: {body}");
    }
    c.goto(&format!("{base}/jobs")).await.expect("goto");
    let jobs = text_of_page(&c).await;
    assert!(
        jobs.contains("No jobs match.") && !jobs.contains("job1"),
        "{jobs}"
    );
    c.goto(&format!("{base}/machines/new")).await.expect("goto");
    assert!(text_of_page(&c).await.contains("Not allowed"));
    shot(&c, "staff-member-refused").await;

    // Back as staff: cancel the job after a confirmation. (An error page has no header:
    // sign out from the overview.)
    c.goto(&format!("{base}/")).await.expect("goto");
    click(&c, "header button[type=submit]").await;
    fill(&c, "token", &sam).await;
    click(&c, "#sign-in-token").await;
    c.goto(&format!("{base}/jobs")).await.expect("goto");
    click(&c, &format!("#job-{id} a.cancel")).await;
    assert!(text_of_page(&c).await.contains("Writing disk 60 %"));
    click(&c, "#confirm").await;
    assert_eq!(
        c.current_url().await.expect("url").path(),
        format!("/jobs/{id}")
    );
    let j = api_ok(
        &base,
        &admin,
        get.clone(),
        &format!("/api/v1/jobs/{id}"),
        Value::Null,
    )
    .await;
    assert_eq!(j["cancel_requested_by"], "sam", "{j}");
    let events = api_ok(&base, &admin, get, "/api/v1/events?limit=1000", Value::Null).await;
    let actions: Vec<(&str, &str)> = events
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| Some((e["action"].as_str()?, e["outcome"].as_str()?)))
        .collect();
    for want in [
        ("machine.bmc_check", "failed"),
        ("machine.bmc_check", "ok"),
        ("web.csrf", "denied"),
        ("machine.create", "denied"),
    ] {
        assert!(actions.contains(&want), "{want:?} audited: {actions:?}");
    }
    c.close().await.expect("close browser");
    eprintln!("staff pages test took {:?}", started.elapsed());
}
