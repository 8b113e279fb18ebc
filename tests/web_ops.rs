//! Staff pages II in a real browser (Debian's Chromium over WebDriver, one session and one
//! `rackshare serve` for the whole test): groups with usage against quota and the quota form,
//! the lease policy, BMC health worst first, energy per group per month and capacity, each
//! screenshot at 360 px under `target/screenshots/` and checked to fit that width. A member
//! gets the 404 page for each staff page and only their own group's energy; a form without
//! its CSRF token is refused; pages and static files are compressed as negotiated.

mod common;

use common::browser::{browser, click, fill, start_driver, wait_for_next_page};
use common::{Db, Service};
use fantoccini::{Client, Locator};
use serde_json::{json, Value};
use std::io::Read;
use std::time::Duration;

/// Saves a screenshot, after checking the page fits the phone-sized window (no sideways
/// scrolling of the page itself; wide tables scroll in their own box).
async fn shot(c: &Client, name: &str) {
    let fits = c
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth]",
            vec![],
        )
        .await
        .expect("widths");
    let (page, window) = (fits[0].as_i64().unwrap_or(0), fits[1].as_i64().unwrap_or(0));
    assert!(
        page <= window,
        "{name}: {page} px wide in a {window} px window"
    );
    common::browser::shot(c, &format!("web-ops-{name}-360px")).await;
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .expect("text")
}

async fn visit(c: &Client, s: &Service, path: &str) {
    c.goto(&format!("{}{path}", s.url)).await.expect("goto");
}

async fn api(s: &Service, token: &str, method: reqwest::Method, path: &str, body: Value) -> Value {
    let r = s
        .http()
        .request(method.clone(), format!("{}{path}", s.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{method} {path}: {status} {v}");
    v
}

/// A client that keeps no cookies, follows no redirects and decodes nothing.
fn raw_http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

async fn sign_in_with_token(c: &Client, s: &Service, token: &str) {
    visit(c, s, "/login").await;
    fill(c, "token", token).await;
    click(c, "#sign-in-token").await;
}

/// Groups a and b, members ana (a) and bo (b) with tokens; three available machines; a fourth,
/// new, whose BMC (a closed loopback port) fails.
async fn setup(s: &Service) -> (String, String) {
    let admin = s.admin_token.clone();
    let post = reqwest::Method::POST;
    let mut tokens = vec![];
    for (who, g) in [("ana", "a"), ("bo", "b")] {
        api(
            s,
            &admin,
            post.clone(),
            "/api/v1/groups",
            json!({"name": g}),
        )
        .await;
        api(
            s,
            &admin,
            post.clone(),
            "/api/v1/users",
            json!({"name": who, "role": "member", "member_group": g}),
        )
        .await;
        let t = api(
            s,
            &admin,
            post.clone(),
            "/api/v1/tokens",
            json!({"user": who}),
        )
        .await;
        tokens.push(t["token"].as_str().expect("token").to_string());
    }
    for i in 0..3 {
        let name = format!("node-{i}");
        api(
            s,
            &admin,
            post.clone(),
            "/api/v1/machines",
            json!({"name": name, "macs": [format!("52:54:00:dd:00:{i:02x}")], "ram_mib": 65536, "cpu_count": 16, "tags": ["ssd"]}),
        )
        .await;
        api(
            s,
            &admin,
            post.clone(),
            &format!("/api/v1/machines/{name}/state"),
            json!({"state": "available"}),
        )
        .await;
    }
    api(
        s,
        &admin,
        post.clone(),
        "/api/v1/machines",
        json!({"name": "sick-0", "macs": ["52:54:00:dd:01:00"],
               "bmc": {"url": "redfish+http://127.0.0.1:9/redfish/v1/Systems/1", "username": "bmc-login-x", "password": "bmc-secret-pw"}}),
    )
    .await;
    // One power query that cannot reach it: the health record says so.
    let r = s
        .http()
        .get(format!("{}/api/v1/machines/sick-0/power", s.url))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("power");
    assert!(!r.status().is_success(), "nothing listens on port 9");
    (tokens[0].clone(), tokens[1].clone())
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("gzip");
    out
}

#[tokio::test]
async fn staff_run_the_cooperative_from_the_ops_pages() {
    let driver = start_driver().await;
    let s = Service::start(Db::Sqlite).await;
    let admin = s.admin_token.clone();
    let (ana, bo) = setup(&s).await;
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    // Group a holds one machine for two hours; b reserves one from in an hour.
    api(
        &s,
        &ana,
        post.clone(),
        "/api/v1/leases",
        json!({"count": 1, "duration_secs": 7200}),
    )
    .await;
    let soon = common_now_ms() + 3_600_000;
    api(
        &s,
        &bo,
        post.clone(),
        "/api/v1/leases",
        json!({"count": 1, "starts_at": soon, "duration_secs": 3600}),
    )
    .await;

    let c = browser(&driver, 360).await;
    sign_in_with_token(&c, &s, &admin).await;
    let staff_cookie = c
        .get_named_cookie("rs_session")
        .await
        .expect("session cookie")
        .value()
        .to_string();

    // Groups: usage against (no) quota, then a quota set through the form.
    visit(&c, &s, "/groups").await;
    let row = text(&c, "#groups tbody tr:first-child").await;
    assert!(row.contains("1 of unlimited"), "{row}");
    shot(&c, "groups").await;
    click(&c, "#groups a[href='/groups/a']").await;
    fill(&c, "q-machines", "2").await;
    fill(&c, "q-hours", "10").await;
    click(&c, "#save-quota").await;
    assert!(text(&c, "main").await.contains("The quotas of a are saved"));
    assert_eq!(text(&c, "#machines-usage").await, "1 of 2");
    let hours = text(&c, "#hours-usage").await;
    assert!(hours.contains("of 10 ("), "{hours}");
    shot(&c, "group").await;
    let q = api(
        &s,
        &admin,
        get.clone(),
        "/api/v1/groups/a/quota",
        json!(null),
    )
    .await;
    assert_eq!(
        (q["max_machines"].clone(), q["machine_hours_month"].clone()),
        (json!(2), json!(10))
    );
    // Words where a number belongs: refused beside the form, nothing stored.
    fill(&c, "q-machines", "two").await;
    click(&c, "#save-quota").await;
    assert!(text(&c, ".problem").await.contains("whole number"));
    let q = api(
        &s,
        &admin,
        get.clone(),
        "/api/v1/groups/a/quota",
        json!(null),
    )
    .await;
    assert_eq!(q["max_machines"], 2, "the refused form stored nothing");

    // The lease policy in words; changed by keyboard alone (Enter submits the form).
    visit(&c, &s, "/policy").await;
    assert!(text(&c, "#rules").await.contains("720 hours"));
    let old = c.find(Locator::Css("html")).await.expect("page");
    let field = c.find(Locator::Id("p-max")).await.expect("field");
    field.clear().await.expect("clear");
    field.send_keys("48\u{e007}").await.expect("type and Enter");
    wait_for_next_page(&c, old).await;
    assert_eq!(text(&c, "#max-length").await, "48 hours");
    fill(&c, "p-idle", "90").await;
    click(&c, "#save-idle").await;
    assert!(text(&c, "#rules")
        .await
        .contains("powered off after 1 h 30 min"));
    shot(&c, "policy").await;
    let p = api(&s, &admin, get.clone(), "/api/v1/lease-policy", json!(null)).await;
    assert_eq!(p["max_lease_hours"], 48);

    // BMC health: the failing BMC first, its address but never its credentials.
    visit(&c, &s, "/bmc-health").await;
    let first = text(&c, "#bmc-health tbody tr:first-child").await;
    assert!(
        first.contains("sick-0") && first.contains("failing"),
        "{first}"
    );
    assert!(first.contains("127.0.0.1:9"), "{first}");
    let src = c.source().await.expect("source");
    assert!(
        !src.contains("bmc-secret-pw") && !src.contains("bmc-login-x"),
        "credentials leak"
    );
    shot(&c, "bmc-health").await;

    // Energy per group per month (no meter readings here: zero, but every group's row).
    visit(&c, &s, "/energy").await;
    let rows = c
        .find_all(Locator::Css("#energy tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 2, "a row per group");
    shot(&c, "energy").await;

    // Capacity: two available, b's reservation takes one in an hour, a's lease ends in two.
    visit(&c, &s, "/capacity?min_ram_gib=32").await;
    let free = text(&c, "#free-now").await;
    assert!(free.contains("Free now for a new request: 2"), "{free}");
    let timeline = text(&c, "#capacity-timeline").await;
    assert!(
        timeline.contains("a reservation starts: −1 machine"),
        "{timeline}"
    );
    assert!(timeline.contains("a lease ends: +1 machine"), "{timeline}");
    shot(&c, "capacity").await;
    // The API's own answer, to a member too; an unknown parameter is a JSON error.
    let o = api(
        &s,
        &ana,
        get.clone(),
        "/api/v1/capacity?min_ram_gib=32&tags=ssd",
        json!(null),
    )
    .await;
    assert_eq!(o["free_now"], 2, "{o}");
    assert_eq!(o["timeline"].as_array().map(Vec::len), Some(3), "{o}");
    let r = s
        .http()
        .get(format!("{}/api/v1/capacity?ram=lots", s.url))
        .bearer_auth(&ana)
        .send()
        .await
        .expect("capacity");
    assert_eq!(r.status().as_u16(), 400);
    let e: Value = r.json().await.expect("json error");
    let why = e["error"]["message"].as_str().unwrap_or_default();
    assert!(why.contains("unknown field `ram`"), "{e}");

    // A form without its CSRF token is refused and changes nothing.
    let r = raw_http()
        .post(format!("{}/groups/a/quota", s.url))
        .header("Cookie", format!("rs_session={staff_cookie}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("max_machines=99")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 403);
    let q = api(
        &s,
        &admin,
        get.clone(),
        "/api/v1/groups/a/quota",
        json!(null),
    )
    .await;
    assert_eq!(q["max_machines"], 2, "the forged form changed nothing");

    // Compression is negotiated: a page and a static file, each decoding to the same bytes.
    let page = |enc: Option<&'static str>| {
        let mut r = raw_http()
            .get(format!("{}/groups", s.url))
            .header("Cookie", format!("rs_session={staff_cookie}"));
        if let Some(e) = enc {
            r = r.header("Accept-Encoding", e);
        }
        r.send()
    };
    let plain = page(None).await.expect("page");
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.bytes().await.expect("body");
    let zipped = page(Some("gzip")).await.expect("page");
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    let zipped = zipped.bytes().await.expect("body");
    assert!(zipped.len() < plain.len());
    assert_eq!(gunzip(&zipped), plain);
    let xterm: &[u8] = include_bytes!("../api/src/web/static/vendor/xterm.js");
    let r = raw_http()
        .get(format!("{}/static/vendor/xterm.js", s.url))
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .expect("asset");
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(gunzip(&r.bytes().await.expect("body")), xterm);

    // A member: every staff page is the 404 page; energy shows their own group only.
    click(&c, "header button[type=submit]").await;
    sign_in_with_token(&c, &s, &ana).await;
    let ana_cookie = c
        .get_named_cookie("rs_session")
        .await
        .expect("session cookie")
        .value()
        .to_string();
    for path in [
        "/groups",
        "/groups/a",
        "/groups/b",
        "/policy",
        "/bmc-health",
        "/capacity",
    ] {
        visit(&c, &s, path).await;
        assert!(text(&c, "main").await.contains("Not found"), "{path}");
        let r = raw_http()
            .get(format!("{}{path}", s.url))
            .header("Cookie", format!("rs_session={ana_cookie}"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 404, "{path}");
    }
    shot(&c, "member-404").await;
    // An error page has no header and so no form token: take ana's from her overview.
    visit(&c, &s, "/").await;
    let r = raw_http()
        .post(format!("{}/groups/a/quota", s.url))
        .header("Cookie", format!("rs_session={ana_cookie}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("csrf={}&max_machines=50", csrf_of(&c).await))
        .send()
        .await
        .expect("post");
    assert_eq!(
        r.status().as_u16(),
        404,
        "a member cannot set their own quota"
    );
    let q = api(
        &s,
        &admin,
        get.clone(),
        "/api/v1/groups/a/quota",
        json!(null),
    )
    .await;
    assert_eq!(q["max_machines"], 2);
    visit(&c, &s, "/energy").await;
    let rows = c
        .find_all(Locator::Css("#energy tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1, "only ana's group");
    assert!(text(&c, "#energy tbody").await.starts_with('a'));
    shot(&c, "member-energy").await;
    // The refusals are audited.
    let ev = api(
        &s,
        &admin,
        get,
        "/api/v1/events?group=a&limit=1000",
        json!(null),
    )
    .await;
    let denied = ev
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["actor"] == "ana" && e["outcome"] == "denied")
        .count();
    assert!(denied >= 7, "every refusal audited: {ev}");
    c.close().await.expect("close browser");
}

/// The page's CSRF token (the sign-out form carries it).
async fn csrf_of(c: &Client) -> String {
    c.find(Locator::Css("input[name=csrf]"))
        .await
        .expect("csrf field")
        .attr("value")
        .await
        .expect("value")
        .unwrap_or_default()
}

fn common_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
