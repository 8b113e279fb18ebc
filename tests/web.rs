//! The web dashboard in a real browser: Debian's Chromium, headless, driven over WebDriver
//! (chromedriver) against the real `rackshare serve`. A member signs in with the first
//! password staff set (and must choose their own), requests a lease (a refusal first, in
//! words), sees only their machines, is shown a 404 page for another group's machine, has a
//! form without its CSRF token refused, releases, and signs out. Screenshots go to
//! `target/screenshots/` for a person to look at.

mod common;

use common::{Db, Service};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver as a child process, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn start_driver() -> Driver {
    for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        assert!(
            std::path::Path::new(path).exists(),
            "{path} is missing: install Debian's {package} (apt-get install chromium chromium-driver)"
        );
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await {
            if r.status().is_success() {
                return driver;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not answer on {}", driver.url);
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,900",
                     "--no-first-run", "--disable-extensions", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync"],
        }),
    );
    // The browser's console messages, read back by `console_errors`.
    caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

fn screenshot_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&d).expect("screenshot dir");
    d
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(screenshot_dir().join(format!("web-{name}.png")), png).expect("save screenshot");
}

async fn fill(c: &Client, id: &str, text: &str) {
    let e = c
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("field #{id}: {e}"));
    e.clear().await.expect("clear");
    e.send_keys(text).await.expect("type");
}

/// Clicks what submits a form and waits (bounded) until the next page has replaced this one.
async fn click(c: &Client, css: &str) {
    let old = c.find(Locator::Css("html")).await.expect("page");
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .expect("click");
    wait_for_next_page(c, old).await;
}

async fn wait_for_next_page(c: &Client, old: fantoccini::elements::Element) {
    for _ in 0..200 {
        // The old page's root goes stale once the browser has navigated.
        if old.tag_name().await.is_err() {
            for _ in 0..200 {
                let ready = c.execute("return document.readyState", vec![]).await;
                if ready
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .as_deref()
                    == Some("complete")
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("the next page did not finish loading");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the form did not lead to another page");
}

async fn text_of_page(c: &Client) -> String {
    c.find(Locator::Css("body"))
        .await
        .expect("body")
        .text()
        .await
        .expect("text")
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

/// Groups a and b, members ana (a) and bo (b) with tokens, three available machines.
async fn setup(s: &Service) -> (String, String) {
    let admin = s.admin_token.clone();
    let post = reqwest::Method::POST;
    for g in ["a", "b"] {
        api(
            s,
            &admin,
            post.clone(),
            "/api/v1/groups",
            json!({"name": g}),
        )
        .await;
    }
    let mut tokens = vec![];
    for (who, g) in [("ana", "a"), ("bo", "b")] {
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
            json!({"name": name, "macs": [format!("52:54:00:bb:00:{i:02x}")], "ram_mib": 16384, "cpu_count": 4}),
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
    (tokens[0].clone(), tokens[1].clone())
}

/// A plain HTTP client that keeps no cookies and follows no redirects, to check statuses.
fn raw_http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

#[tokio::test]
async fn a_member_uses_the_dashboard_in_a_real_browser() {
    let driver = start_driver().await;
    let s = Service::start(Db::Sqlite).await;
    let (ana_token, bo_token) = setup(&s).await;
    // Staff set ana's first password with the CLI; it is temporary.
    let pw_file = common::write(s.dir.path(), "ana.pw", "first-password-1\n");
    s.cli(&[
        "user",
        "passwd",
        "ana",
        "--password-file",
        &pw_file.display().to_string(),
    ]);
    // Bo's group holds a machine too.
    let bo_lease = api(
        &s,
        &bo_token,
        reqwest::Method::POST,
        "/api/v1/leases",
        json!({"count": 1, "duration_secs": 7200}),
    )
    .await;
    let bo_machine = bo_lease["machines"][0]["name"]
        .as_str()
        .expect("bo's machine")
        .to_string();

    let c = browser(&driver).await;
    // Signed out, every page leads to the sign-in page.
    c.goto(&format!("{}/", s.url)).await.expect("goto /");
    assert_eq!(c.current_url().await.expect("url").path(), "/login");
    // A wrong password is refused in words.
    fill(&c, "name", "ana").await;
    fill(&c, "password", "not-the-password").await;
    click(&c, "#sign-in").await;
    assert!(text_of_page(&c).await.contains("do not match"));
    fill(&c, "name", "ana").await;
    fill(&c, "password", "first-password-1").await;
    shot(&c, "login").await;
    click(&c, "#sign-in").await;
    // The temporary password must be changed first.
    assert_eq!(c.current_url().await.expect("url").path(), "/password");
    c.goto(&format!("{}/leases/new", s.url))
        .await
        .expect("goto");
    assert_eq!(
        c.current_url().await.expect("url").path(),
        "/password",
        "nothing else is reachable before the new password"
    );
    fill(&c, "current", "first-password-1").await;
    fill(&c, "new", "anas-own-password").await;
    fill(&c, "again", "anas-own-password").await;
    click(&c, "form.card button[type=submit]").await;
    assert!(text_of_page(&c).await.contains("Your password was changed"));

    // The session cookie's flags (no TLS here, so no Secure).
    let cookie = c
        .get_named_cookie("rs_session")
        .await
        .expect("session cookie");
    assert_eq!(cookie.http_only(), Some(true), "{cookie:?}");
    assert_eq!(
        format!("{:?}", cookie.same_site()),
        "Some(Strict)",
        "{cookie:?}"
    );
    assert_eq!(cookie.path(), Some("/"));
    assert_ne!(cookie.secure(), Some(true), "plain HTTP: not Secure");
    let session_value = cookie.value().to_string();

    // Asking for more machines than exist: the API's refusal, in words, beside the form.
    c.goto(&format!("{}/leases/new", s.url))
        .await
        .expect("goto");
    fill(&c, "count", "5").await;
    click(&c, "#request").await;
    let problem = c
        .find(Locator::Id("problem"))
        .await
        .expect("refusal shown")
        .text()
        .await
        .expect("text");
    assert!(!problem.is_empty(), "the refusal is explained");
    shot(&c, "lease-refused").await;
    fill(&c, "count", "1").await;
    click(&c, "#request").await;
    let page = text_of_page(&c).await;
    assert!(page.contains("Your lease request was accepted"), "{page}");
    let leases = api(
        &s,
        &s.admin_token,
        reqwest::Method::GET,
        "/api/v1/leases?group=a",
        json!(null),
    )
    .await;
    let lease = &leases.as_array().expect("leases")[0];
    let lease_id = lease["id"].as_i64().expect("id");
    let ana_machine = lease["machines"][0]["name"]
        .as_str()
        .expect("machine")
        .to_string();
    // The overview shows ana's machine and nothing of bo's.
    let overview = c.source().await.expect("source");
    assert!(
        overview.contains(&format!("/machines/{ana_machine}")),
        "{overview}"
    );
    assert!(
        !overview.contains(&bo_machine),
        "bo's machine leaks: {overview}"
    );
    shot(&c, "overview").await;
    c.set_window_size(360, 800).await.expect("phone width");
    shot(&c, "overview-360px").await;
    c.set_window_size(1100, 900).await.expect("width");

    // Her sessions: this browser is listed.
    c.goto(&format!("{}/sessions", s.url)).await.expect("goto");
    assert!(text_of_page(&c).await.contains("this browser"));

    // A token made on the page is shown once and works with the API; revoked, it does not.
    c.goto(&format!("{}/tokens", s.url)).await.expect("goto");
    fill(&c, "description", "laptop").await;
    click(&c, "#create-token").await;
    let made = c
        .find(Locator::Id("issued"))
        .await
        .expect("the new token is shown")
        .text()
        .await
        .expect("text");
    let whoami = api(
        &s,
        &made,
        reqwest::Method::GET,
        "/api/v1/whoami",
        json!(null),
    )
    .await;
    assert_eq!(whoami["user"], "ana");
    let prefix = made.split('_').nth(1).expect("token prefix");
    click(
        &c,
        &format!("form[action='/tokens/{prefix}/revoke'] button"),
    )
    .await;
    let r = s
        .http()
        .get(format!("{}/api/v1/whoami", s.url))
        .bearer_auth(&made)
        .send()
        .await
        .expect("whoami");
    assert_eq!(r.status().as_u16(), 401, "revoked on the page");

    // Ana's machine page; bo's machine is a 404 page, as in the API.
    c.goto(&format!("{}/machines/{ana_machine}", s.url))
        .await
        .expect("goto");
    assert!(text_of_page(&c).await.contains("Energy so far"));
    c.goto(&format!("{}/machines/{bo_machine}", s.url))
        .await
        .expect("goto");
    assert!(text_of_page(&c).await.contains("Not found"));
    shot(&c, "foreign-machine-404").await;
    let r = raw_http()
        .get(format!("{}/machines/{bo_machine}", s.url))
        .header("Cookie", format!("rs_session={session_value}"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 404);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap_or_default()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");

    // Reimage with the group's own image: the picker offers it, the group's SSH keys are
    // listed, and the job's page tells its progress in words and refreshes itself.
    let up = s
        .http()
        .post(format!(
            "{}/api/v1/images?name=demo&version=1&format=raw",
            s.url
        ))
        .bearer_auth(&ana_token)
        .body(vec![0u8; 4096])
        .send()
        .await
        .expect("upload");
    assert_eq!(up.status().as_u16(), 201, "{:?}", up.text().await);
    c.goto(&format!("{}/machines/{ana_machine}", s.url))
        .await
        .expect("goto");
    click(&c, "a#reimage").await;
    let picker = c.source().await.expect("source");
    assert!(
        picker.contains("a/demo:1"),
        "the group's image is offered: {picker}"
    );
    fill(&c, "user_data", "#cloud-config\nhostname: ana-box\n").await;
    shot(&c, "reimage").await;
    click(&c, "button#reimage").await;
    assert!(c
        .current_url()
        .await
        .expect("url")
        .path()
        .starts_with("/jobs/"));
    let job_page = c.source().await.expect("source");
    assert!(
        job_page.contains("Write the image to the disk"),
        "{job_page}"
    );
    assert!(c.find(Locator::Id("headline")).await.is_ok());
    assert!(
        job_page.contains("http-equiv=\"refresh\""),
        "a running job's page refreshes itself"
    );
    shot(&c, "reimage-progress").await;

    // A form without its CSRF token is refused, and nothing changes.
    c.goto(&format!("{}/", s.url)).await.expect("goto");
    let old = c.find(Locator::Css("html")).await.expect("page");
    c.execute(
        "document.querySelectorAll('input[name=csrf]').forEach(e => e.remove()); \
         document.getElementById(arguments[0]).form.submit();",
        vec![json!(format!("release-{lease_id}"))],
    )
    .await
    .expect("submit without token");
    wait_for_next_page(&c, old).await;
    assert!(text_of_page(&c)
        .await
        .contains("did not come from this site"));
    shot(&c, "csrf-refused").await;
    let r = raw_http()
        .post(format!("{}/leases/{lease_id}/release", s.url))
        .header("Cookie", format!("rs_session={session_value}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("csrf=forged")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 403);
    let l = api(
        &s,
        &s.admin_token,
        reqwest::Method::GET,
        &format!("/api/v1/leases/{lease_id}"),
        json!(null),
    )
    .await;
    assert_eq!(l["state"], "active", "the refused forms changed nothing");

    // Release through the page.
    c.goto(&format!("{}/", s.url)).await.expect("goto");
    click(&c, &format!("#release-{lease_id}")).await;
    assert!(text_of_page(&c).await.contains("The lease was released"));
    let l = api(
        &s,
        &s.admin_token,
        reqwest::Method::GET,
        &format!("/api/v1/leases/{lease_id}"),
        json!(null),
    )
    .await;
    assert_eq!(l["state"], "ended");

    // The group's ledger shows the lease and the release; nothing group b did.
    c.goto(&format!("{}/ledger", s.url)).await.expect("goto");
    let ledger = text_of_page(&c).await;
    assert!(
        ledger.contains("lease.create") && ledger.contains("lease.release"),
        "{ledger}"
    );
    // (Ana's own 404 probe of bo's machine is in her group's ledger, as the API records it.)
    assert!(
        !ledger.contains(&format!("machine.allocate {bo_machine}")) && !ledger.contains(" bo "),
        "group b's events leak into a's ledger: {ledger}"
    );

    // Sign out: the cookie no longer opens anything.
    click(&c, "header button[type=submit]").await;
    assert_eq!(c.current_url().await.expect("url").path(), "/login");
    let r = raw_http()
        .get(format!("{}/", s.url))
        .header("Cookie", format!("rs_session={session_value}"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/login");

    // Failed sign-ins are limited per name: after five, the sixth is not even checked.
    for _ in 0..5 {
        fill(&c, "name", "bo").await;
        fill(&c, "password", "guessing-wrong").await;
        click(&c, "#sign-in").await;
        assert!(text_of_page(&c).await.contains("do not match"));
    }
    fill(&c, "name", "bo").await;
    fill(&c, "password", "guessing-wrong").await;
    click(&c, "#sign-in").await;
    assert!(text_of_page(&c).await.contains("Too many failed sign-ins"));

    // Bo signs in by pasting his API token and sees his group's machine.
    fill(&c, "token", &bo_token).await;
    click(&c, "#sign-in-token").await;
    let overview = c.source().await.expect("source");
    assert!(
        overview.contains(&format!("/machines/{bo_machine}")),
        "{overview}"
    );
    // Failed sign-ins are audited.
    let events = api(
        &s,
        &s.admin_token,
        reqwest::Method::GET,
        "/api/v1/events?limit=200",
        json!(null),
    )
    .await;
    assert!(
        events
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["action"] == "session.create" && e["outcome"] == "denied"),
        "a failed sign-in is in the audit log"
    );
    // Sessions through the API: bo lists his and ends the browser's; the page then asks to
    // sign in again.
    let mine = api(
        &s,
        &bo_token,
        reqwest::Method::GET,
        "/api/v1/sessions",
        json!(null),
    )
    .await;
    let live = mine
        .as_array()
        .expect("sessions")
        .iter()
        .find(|x| x["revoked_at"].is_null() && x["method"] == "token")
        .expect("the browser's session")["id"]
        .as_i64()
        .expect("id");
    let r = s
        .http()
        .delete(format!("{}/api/v1/sessions/{live}", s.url))
        .bearer_auth(&bo_token)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status().as_u16(), 204);
    c.goto(&format!("{}/", s.url)).await.expect("goto");
    assert_eq!(c.current_url().await.expect("url").path(), "/login");
    fill(&c, "token", &bo_token).await;
    click(&c, "#sign-in-token").await;
    assert_eq!(c.current_url().await.expect("url").path(), "/");

    // Staff force a password reset: bo's open session ends at once.
    s.cli(&["user", "reset-password", "bo"]);
    c.goto(&format!("{}/", s.url)).await.expect("goto");
    assert_eq!(c.current_url().await.expect("url").path(), "/login");
    c.close().await.expect("close browser");
}

#[tokio::test]
async fn staff_page_through_the_fleet_and_change_a_machine_state() {
    let driver = start_driver().await;
    let s = Service::start(Db::Sqlite).await;
    let admin = s.admin_token.clone();
    // 105 machines: more than one fleet page (100).
    for i in 0..105 {
        api(
            &s,
            &admin,
            reqwest::Method::POST,
            "/api/v1/machines",
            json!({"name": format!("rack1-{i:03}"), "macs": [format!("52:54:00:cc:00:{i:02x}")], "ram_mib": 8192}),
        )
        .await;
    }
    // The machine list API pages by name; the old call still returns everything.
    let all = api(
        &s,
        &admin,
        reqwest::Method::GET,
        "/api/v1/machines",
        json!(null),
    )
    .await;
    assert_eq!(all.as_array().expect("list").len(), 105);
    let r = s
        .http()
        .get(format!("{}/api/v1/machines?limit=40", s.url))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("page");
    let cursor = r.headers()["x-next-cursor"]
        .to_str()
        .expect("cursor")
        .to_string();
    let first: Value = r.json().await.expect("json");
    assert_eq!(first.as_array().expect("page").len(), 40);
    assert_eq!(cursor, "rack1-039");
    let second = api(
        &s,
        &admin,
        reqwest::Method::GET,
        &format!("/api/v1/machines?limit=100&after={cursor}"),
        json!(null),
    )
    .await;
    assert_eq!(second.as_array().expect("page").len(), 65);
    assert_eq!(second[0]["name"], "rack1-040");

    let c = browser(&driver).await;
    c.goto(&format!("{}/login", s.url)).await.expect("goto");
    fill(&c, "token", &admin).await;
    click(&c, "#sign-in-token").await;
    c.goto(&format!("{}/fleet", s.url)).await.expect("goto");
    let rows = c
        .find_all(Locator::Css("#fleet tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 100, "one page");
    assert!(
        text_of_page(&c).await.contains("new 105"),
        "counts per state"
    );
    shot(&c, "fleet").await;
    click(&c, "#next").await;
    let rows = c
        .find_all(Locator::Css("#fleet tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 5, "the rest on the second page");

    // A machine's timeline and a state change offering only the allowed next states.
    c.goto(&format!("{}/machines/rack1-007/timeline", s.url))
        .await
        .expect("goto");
    let options: Vec<String> = {
        let mut v = vec![];
        for o in c
            .find_all(Locator::Css("#to option"))
            .await
            .expect("options")
        {
            v.push(o.attr("value").await.expect("value").unwrap_or_default());
        }
        v
    };
    assert_eq!(
        options,
        [
            "inspecting",
            "available",
            "maintenance",
            "failed",
            "retired"
        ]
    );
    c.find(Locator::Css("#to option[value=maintenance]"))
        .await
        .expect("option")
        .click()
        .await
        .expect("select");
    fill(&c, "why", "fan noise").await;
    click(&c, "#move").await;
    assert_eq!(
        c.find(Locator::Id("state"))
            .await
            .expect("state")
            .text()
            .await
            .expect("text"),
        "maintenance"
    );
    let timeline = text_of_page(&c).await;
    assert!(timeline.contains("machine.transition"), "{timeline}");
    assert!(timeline.contains("machine.create"), "{timeline}");
    shot(&c, "timeline").await;
    // The DHCP lease table (none stored here: no boot services in this test).
    c.goto(&format!("{}/dhcp-leases", s.url))
        .await
        .expect("dhcp leases page");
    let dhcp = text_of_page(&c).await;
    assert!(dhcp.contains("No DHCP leases are stored"), "{dhcp}");
    shot(&c, "dhcp-leases").await;
    // Staff give a new member a temporary password on the users page; signing in with it
    // asks for their own first.
    api(
        &s,
        &admin,
        reqwest::Method::POST,
        "/api/v1/groups",
        json!({"name": "c"}),
    )
    .await;
    api(
        &s,
        &admin,
        reqwest::Method::POST,
        "/api/v1/users",
        json!({"name": "cai", "role": "member", "member_group": "c"}),
    )
    .await;
    c.goto(&format!("{}/users", s.url)).await.expect("goto");
    fill(&c, "pw-cai", "temporary-pass-1").await;
    click(&c, "#set-cai").await;
    assert!(text_of_page(&c)
        .await
        .contains("cai has a temporary password"));
    shot(&c, "users").await;

    // Filtering by state on the server.
    c.goto(&format!("{}/fleet?state=maintenance", s.url))
        .await
        .expect("goto");
    let rows = c
        .find_all(Locator::Css("#fleet tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1);
    click(&c, "header button[type=submit]").await;
    fill(&c, "name", "cai").await;
    fill(&c, "password", "temporary-pass-1").await;
    click(&c, "#sign-in").await;
    assert_eq!(c.current_url().await.expect("url").path(), "/password");
    c.close().await.expect("close browser");
}

/// Waits (bounded) until element `css` has text containing `want`; returns that text.
async fn wait_for_text(c: &Client, css: &str, want: &str) -> String {
    let mut last = String::new();
    for _ in 0..400 {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            last = e.text().await.unwrap_or_default();
            if last.contains(want) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{css} never said '{want}'; it says '{last}'");
}

/// Ends a lease of `token`'s group and returns the wipe job the release queued.
async fn released_wipe_job(s: &Service, token: &str) -> Value {
    let post = reqwest::Method::POST;
    let lease = api(
        s,
        token,
        post.clone(),
        "/api/v1/leases",
        json!({"count": 1, "duration_secs": 7200}),
    )
    .await;
    let id = lease["id"].as_i64().expect("lease id");
    api(
        s,
        token,
        post,
        &format!("/api/v1/leases/{id}/release"),
        json!({"reason": "done with it"}),
    )
    .await;
    let jobs = api(
        s,
        &s.admin_token,
        reqwest::Method::GET,
        "/api/v1/jobs",
        json!(null),
    )
    .await;
    jobs.as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["kind"] == "wipe" && j["lease_id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no wipe job for lease {id}: {jobs}"))
}

/// Stores a certificate for `job` signed with the service's own key, as the conductor does
/// after a wipe (the agent's side of a wipe is tests/leasing.rs's; here only the pages matter).
/// `tamper` changes the content after signing. Returns the certificate's id.
async fn store_certificate(s: &Service, job: &Value, tamper: bool) -> i64 {
    let key = trust::SigningKey::load_or_create(&s.data_dir().join("signing.key"))
        .expect("the service's signing key");
    let body = json!({
        "kind": "rackshare wipe certificate", "job": job["id"], "machine": job["machine"],
        "machine_serial": "SER-1", "lease_id": job["lease_id"], "member_group": job["member_group"],
        "disks": [{"name": "vda", "serial": "W1-DISK", "size_bytes": 8_589_934_592_u64,
                   "bytes": 8_589_934_592_u64, "method": "blkdiscard+zero", "verified": true,
                   "nist_sp800_88": "clear", "server_verification": "16 ranges of 1 MiB read back as zeros"}],
        "started_at": 1_795_629_600_000_i64, "completed_at": 1_795_629_900_000_i64,
        "requested_by": "scheduler", "signing_key_id": key.public().key_id,
    });
    let mut doc = key.sign(body);
    if tamper {
        doc.certificate["disks"][0]["method"] = json!("none");
    }
    sqlx::any::install_default_drivers();
    let db = s.data_dir().join("rackshare.db");
    let pool = sqlx::AnyPool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("the service's database");
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO wipe_certificates (job_id, machine_id, lease_id, body, created_at, signature) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(job["id"].as_i64().expect("job id"))
    .bind(job["machine_id"].as_i64().expect("machine id"))
    .bind(job["lease_id"].as_i64().expect("lease id"))
    .bind(doc.certificate.to_string())
    .bind(1_795_629_900_000_i64)
    .bind(serde_json::to_string(&doc.signature).expect("signature"))
    .fetch_one(&pool)
    .await
    .expect("insert certificate");
    pool.close().await;
    id
}

#[tokio::test]
async fn a_member_reads_certificates_adds_a_key_and_uploads_an_image() {
    let driver = start_driver().await;
    let s = Service::start(Db::Sqlite).await;
    let (ana_token, bo_token) = setup(&s).await;
    let ana_job = released_wipe_job(&s, &ana_token).await;
    let good = store_certificate(&s, &ana_job, false).await;
    let changed = store_certificate(&s, &ana_job, true).await;
    let bo_job = released_wipe_job(&s, &bo_token).await;
    let bos = store_certificate(&s, &bo_job, false).await;

    let c = browser(&driver).await;
    c.goto(&format!("{}/login", s.url)).await.expect("goto");
    fill(&c, "token", &ana_token).await;
    click(&c, "#sign-in-token").await;
    let session = c
        .get_named_cookie("rs_session")
        .await
        .expect("session cookie")
        .value()
        .to_string();

    // The list: ana's two certificates, each checked on the server; none of bo's.
    c.goto(&format!("{}/certificates", s.url))
        .await
        .expect("goto");
    let rows = c
        .find_all(Locator::Css("#certificates tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 2, "ana's certificates only");
    let list = text_of_page(&c).await;
    assert!(
        list.contains("verifies") && list.contains("does not verify"),
        "{list}"
    );
    shot(&c, "certificates").await;
    // One certificate: machine, method, disks, sampled ranges, times, and a good signature.
    click(&c, &format!("a[href='/certificates/{good}']")).await;
    let verdict = c
        .find(Locator::Id("verification"))
        .await
        .expect("verdict")
        .text()
        .await
        .expect("text");
    assert!(verdict.contains("The signature verifies"), "{verdict}");
    let view = text_of_page(&c).await;
    for shown in [
        "blkdiscard+zero",
        "W1-DISK",
        "16 ranges of 1 MiB read back as zeros",
        "8.0 GiB",
        ana_job["machine"].as_str().expect("machine"),
    ] {
        assert!(view.contains(shown), "{shown} missing: {view}");
    }
    shot(&c, "certificate").await;
    // The download is the signed file, and it verifies offline with the service's key.
    let r = raw_http()
        .get(format!("{}/certificates/{good}/download", s.url))
        .header("Cookie", format!("rs_session={session}"))
        .send()
        .await
        .expect("download");
    assert_eq!(r.status().as_u16(), 200);
    let file = r.bytes().await.expect("file");
    let key = trust::SigningKey::load_or_create(&s.data_dir().join("signing.key")).expect("key");
    trust::verify_bytes(&file, &[key.public()]).expect("the downloaded file verifies");
    // A changed certificate says so; another group's is a 404 page.
    c.goto(&format!("{}/certificates/{changed}", s.url))
        .await
        .expect("goto");
    let verdict = c
        .find(Locator::Id("verification"))
        .await
        .expect("verdict")
        .text()
        .await
        .expect("text");
    assert!(verdict.contains("does not verify"), "{verdict}");
    c.goto(&format!("{}/certificates/{bos}", s.url))
        .await
        .expect("goto");
    assert!(text_of_page(&c).await.contains("Not found"));
    let r = raw_http()
        .get(format!("{}/certificates/{bos}/download", s.url))
        .header("Cookie", format!("rs_session={session}"))
        .send()
        .await
        .expect("download");
    assert_eq!(r.status().as_u16(), 404);

    // SSH keys: ana adds one on the page; the API lists it; she removes it again.
    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICFOdyhjR0c/rVXRp3H0TA3Q4CHNfmtk0ORfbevouAWR ana@laptop";
    c.goto(&format!("{}/keys", s.url)).await.expect("goto");
    fill(&c, "key", "not a key").await;
    click(&c, "#add-key").await;
    assert!(
        c.find(Locator::Id("problem")).await.is_ok(),
        "refused in words"
    );
    fill(&c, "key", KEY).await;
    click(&c, "#add-key").await;
    assert!(text_of_page(&c).await.contains("The key was added"));
    let keys = api(
        &s,
        &ana_token,
        reqwest::Method::GET,
        "/api/v1/groups/a/ssh-keys",
        json!(null),
    )
    .await;
    assert_eq!(keys[0]["key"], KEY, "{keys}");
    shot(&c, "ssh-keys").await;
    click(&c, "form[action='/keys/remove'] button").await;
    assert!(text_of_page(&c).await.contains("The key was removed"));
    let keys = api(
        &s,
        &ana_token,
        reqwest::Method::GET,
        "/api/v1/groups/a/ssh-keys",
        json!(null),
    )
    .await;
    assert_eq!(keys, json!([]));

    // Upload with progress: our script sends the form with XMLHttpRequest and shows its upload
    // events; the image lands in the group's list through the API's upload path.
    let image = s.dir.path().join("web-upload.img");
    std::fs::write(&image, vec![0u8; 3 * 1024 * 1024]).expect("image file");
    c.goto(&format!("{}/images", s.url)).await.expect("goto");
    fill(&c, "image-name", "web-upload").await;
    fill(&c, "image-version", "1").await;
    c.find(Locator::Id("image-file"))
        .await
        .expect("file field")
        .send_keys(&image.display().to_string())
        .await
        .expect("choose file");
    c.find(Locator::Id("upload"))
        .await
        .expect("button")
        .click()
        .await
        .expect("upload");
    wait_for_text(&c, "#upload-status", "The image was uploaded").await;
    let progress = c
        .execute(
            "return document.getElementById('upload-progress').value",
            vec![],
        )
        .await
        .expect("progress bar");
    assert_eq!(progress, json!(100), "the bar reached the end");
    assert_eq!(
        c.current_url().await.expect("url").path(),
        "/images",
        "the script kept the page"
    );
    assert!(text_of_page(&c).await.contains("a/web-upload:1"));
    shot(&c, "image-uploaded").await;
    let all = api(
        &s,
        &ana_token,
        reqwest::Method::GET,
        "/api/v1/images",
        json!(null),
    )
    .await;
    let img = all
        .as_array()
        .expect("images")
        .iter()
        .find(|i| i["name"] == "web-upload")
        .unwrap_or_else(|| panic!("the upload is listed: {all}"));
    assert_eq!(img["size_bytes"], 3 * 1024 * 1024);
    assert_eq!(img["owner_group"], "a");
    // The form without its CSRF token (first field) stores nothing.
    let r = raw_http()
        .post(format!("{}/images", s.url))
        .header("Cookie", format!("rs_session={session}"))
        .header("Content-Type", "multipart/form-data; boundary=XyZ")
        .body("--XyZ\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nforged\r\n--XyZ--\r\n")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 403);
    c.close().await.expect("close browser");
}

/// The browser console's errors since the last call (chromedriver's log endpoint).
async fn console_errors(driver: &Driver, c: &Client) -> Vec<String> {
    let id = c
        .session_id()
        .await
        .expect("session id")
        .expect("a session");
    let log: Value = reqwest::Client::new()
        .post(format!("{}/session/{id}/se/log", driver.url))
        .json(&json!({"type": "browser"}))
        .send()
        .await
        .expect("browser log")
        .json()
        .await
        .expect("log json");
    log["value"]
        .as_array()
        .unwrap_or_else(|| panic!("no browser log: {log}"))
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn a_member_is_told_of_a_lease_ending_and_opens_the_console_page() {
    let driver = start_driver().await;
    let s = Service::start(Db::Sqlite).await;
    let (ana_token, bo_token) = setup(&s).await;
    let post = reqwest::Method::POST;
    // Ana's lease ends in an hour; bo's in three days.
    let lease = api(
        &s,
        &ana_token,
        post.clone(),
        "/api/v1/leases",
        json!({"count": 1, "duration_secs": 3600}),
    )
    .await;
    let id = lease["id"].as_i64().expect("id");
    let machine = lease["machines"][0]["name"]
        .as_str()
        .expect("machine")
        .to_string();
    let bo_lease = api(
        &s,
        &bo_token,
        post,
        "/api/v1/leases",
        json!({"count": 1, "duration_secs": 3 * 86_400}),
    )
    .await;
    let bo_machine = bo_lease["machines"][0]["name"]
        .as_str()
        .expect("machine")
        .to_string();

    let c = browser(&driver).await;
    c.goto(&format!("{}/login", s.url)).await.expect("goto");
    fill(&c, "token", &ana_token).await;
    click(&c, "#sign-in-token").await;
    let banner = c
        .find(Locator::Id("ending-soon"))
        .await
        .expect("the ending-soon banner")
        .text()
        .await
        .expect("text");
    assert!(banner.contains(&format!("lease #{id}")), "{banner}");
    shot(&c, "ending-soon").await;
    click(&c, &format!("#extend-soon-{id}")).await;
    assert!(text_of_page(&c).await.contains("The lease was extended"));
    assert!(
        c.find(Locator::Id("ending-soon")).await.is_err(),
        "a day more: no longer ending soon"
    );

    // The console page: xterm.js and our script load under the CSP; with no console behind
    // the WebSocket here it says the console is unavailable, and nothing else went wrong.
    let _ = console_errors(&driver, &c).await;
    c.goto(&format!("{}/machines/{machine}", s.url))
        .await
        .expect("goto");
    click(&c, "a#console").await;
    wait_for_text(&c, "#console-status", "unavailable").await;
    let loaded = c
        .execute(
            "return [typeof Terminal, document.querySelectorAll('#console .xterm').length]",
            vec![],
        )
        .await
        .expect("script state");
    assert_eq!(loaded, json!(["function", 1]), "xterm.js ran and opened");
    assert!(c.find(Locator::Id("take-control")).await.is_ok());
    assert!(c.find(Locator::Id("give-control")).await.is_ok());
    shot(&c, "console-unavailable").await;
    let errors: Vec<String> = console_errors(&driver, &c)
        .await
        .into_iter()
        .filter(|m| !m.contains("WebSocket"))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    // Without JavaScript the page points to ssh and the CLI; scripts stay 'self' only.
    let session = c
        .get_named_cookie("rs_session")
        .await
        .expect("cookie")
        .value()
        .to_string();
    let r = raw_http()
        .get(format!("{}/machines/{machine}/console", s.url))
        .header("Cookie", format!("rs_session={session}"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        csp.contains("script-src 'self';") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = r.text().await.expect("html");
    assert!(html.contains("needs JavaScript"), "{html}");
    assert!(
        html.contains(&format!("rackshare console {machine}")),
        "{html}"
    );
    assert!(html.contains(&format!("{machine}@127.0.0.1")), "{html}");
    for asset in ["/static/vendor/xterm.js", "/static/console.js"] {
        let r = raw_http()
            .get(format!("{}{asset}", s.url))
            .send()
            .await
            .expect("asset");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/javascript"));
    }
    // Another group's machine: the console page is a 404 page, as the API answers.
    c.goto(&format!("{}/machines/{bo_machine}/console", s.url))
        .await
        .expect("goto");
    assert!(text_of_page(&c).await.contains("Not found"));
    c.close().await.expect("close browser");
}
