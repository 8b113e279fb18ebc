//! Issue 14, "safe to expose", through the real binary: each finding of the audit reproduced
//! and shown closed (image shadowing across groups, server-side fetches of internal URLs,
//! hygiene of request bodies and times).

mod common;

use common::{Db, Service};
use serde_json::Value;
use std::process::Output;

fn ok_json(out: Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e})"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn token_for(s: &Service, user: &str) -> String {
    s.cli_json(&["token", "create", "--user", user])["token"]
        .as_str()
        .expect("token")
        .to_string()
}

/// Two groups with one member each, and a technician.
fn people(s: &Service) -> (String, String, String) {
    s.cli(&["group", "add", "alpha"]);
    s.cli(&["group", "add", "beta"]);
    s.cli(&["user", "add", "ann", "--role", "member", "--group", "alpha"]);
    s.cli(&["user", "add", "bob", "--role", "member", "--group", "beta"]);
    s.cli(&["user", "add", "tess", "--role", "technician"]);
    (
        token_for(s, "ann"),
        token_for(s, "bob"),
        token_for(s, "tess"),
    )
}

fn image_file(s: &Service, name: &str, seed: u8) -> String {
    let f = s.dir.path().join(name);
    std::fs::write(&f, vec![seed; 4096]).expect("write image");
    f.display().to_string()
}

#[tokio::test]
async fn image_names_do_not_shadow_across_groups() {
    for db in common::databases() {
        image_scopes(db).await;
    }
}

async fn image_scopes(db: Db) {
    let s = Service::start(db).await;
    let (ann, bob, tess) = people(&s);
    let public = image_file(&s, "public.raw", 1);
    let private = image_file(&s, "private.raw", 2);

    s.cli(&["image", "add", "pub-img", &public, "--version", "1"]);
    // A member's private image of the same name, even the same version, coexists with the
    // public one: no conflict, so nothing is revealed either way.
    let a1 = ok_json(
        s.cli_as(
            &ann,
            &[
                "image",
                "add",
                "pub-img",
                &private,
                "--version",
                "1",
                "-o",
                "json",
            ],
        ),
        "ann adds pub-img:1",
    );
    assert_eq!(a1["owner_group"], "alpha");
    let a2 = ok_json(
        s.cli_as(
            &ann,
            &[
                "image",
                "add",
                "pub-img",
                &private,
                "--version",
                "2",
                "-o",
                "json",
            ],
        ),
        "ann adds pub-img:2",
    );
    assert_eq!(a2["owner_group"], "alpha");

    // Staff and technicians resolving the bare name get the public image.
    let shown = s.cli_json(&["image", "show", "pub-img"]);
    assert!(shown["owner_group"].is_null(), "{shown}");
    assert_eq!(shown["version"], "1");
    let shown = ok_json(
        s.cli_as(&tess, &["image", "show", "pub-img", "-o", "json"]),
        "tess shows pub-img",
    );
    assert!(shown["owner_group"].is_null(), "{shown}");
    // ... and the group's image when named with its group.
    let shown = s.cli_json(&["image", "show", "alpha/pub-img"]);
    assert_eq!(shown["owner_group"], "alpha");
    assert_eq!(shown["version"], "2");
    let shown = s.cli_json(&["image", "show", "alpha/pub-img:1"]);
    assert_eq!(shown["id"], a1["id"]);
    // The API takes the group as a parameter or a percent-encoded reference.
    let http = s.http();
    for path in [
        "/api/v1/images/pub-img?group=alpha",
        "/api/v1/images/alpha%2Fpub-img",
    ] {
        let v: Value = http
            .get(format!("{}{path}", s.url))
            .bearer_auth(&s.admin_token)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(v["owner_group"], "alpha", "{path}: {v}");
    }

    // The member resolves the bare name in their group first; another group's member never
    // sees it, neither bare nor named.
    let shown = ok_json(
        s.cli_as(&ann, &["image", "show", "pub-img", "-o", "json"]),
        "ann shows pub-img",
    );
    assert_eq!(shown["owner_group"], "alpha");
    let shown = ok_json(
        s.cli_as(&bob, &["image", "show", "pub-img", "-o", "json"]),
        "bob shows pub-img",
    );
    assert!(shown["owner_group"].is_null(), "{shown}");
    let out = s.cli_as(&bob, &["image", "show", "alpha/pub-img"]);
    assert!(!out.status.success() && stderr(&out).contains("not found"));
    let st = http
        .get(format!("{}/api/v1/images/pub-img?group=alpha", s.url))
        .bearer_auth(&bob)
        .send()
        .await
        .expect("get")
        .status();
    assert_eq!(st, 404);
    // The probes are audited as denied.
    let ev = s.cli_json(&["events", "--limit", "1000"]);
    let denied = ev
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| {
            e["action"] == "image.lookup" && e["outcome"] == "denied" && e["actor"] == "bob"
        })
        .count();
    assert_eq!(denied, 2, "{ev}");

    // Bob's upload of the same name and version is no conflict; a second one conflicts with
    // his own image only, and the message names no other group.
    ok_json(
        s.cli_as(
            &bob,
            &[
                "image",
                "add",
                "pub-img",
                &private,
                "--version",
                "1",
                "-o",
                "json",
            ],
        ),
        "bob adds pub-img:1",
    );
    let out = s.cli_as(
        &bob,
        &["image", "add", "pub-img", &private, "--version", "1"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already exists") && !stderr(&out).contains("alpha"),
        "{}",
        stderr(&out)
    );

    // A reimage uses a group's private image only on that group's machines.
    s.cli(&["machine", "add", "n1", "--mac", "52:54:00:00:14:01"]);
    s.cli(&["machine", "state", "n1", "available"]);
    let out = s.cli_as(
        &s.admin_token,
        &["reimage", "n1", "--image", "alpha/pub-img"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("only be deployed on that group's machines"),
        "{}",
        stderr(&out)
    );
    let out = s.cli_as(&tess, &["reimage", "n1", "--image", "beta/pub-img:1"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    // Staff deleting the bare name delete the public image, never the member's.
    let out = s.cli_as(&s.admin_token, &["image", "delete", "pub-img:1"]);
    assert!(out.status.success(), "{}", s.log_text());
    let shown = s.cli_json(&["image", "show", "alpha/pub-img:1"]);
    assert_eq!(shown["id"], a1["id"]);
    let out = s.cli_as(&s.admin_token, &["image", "show", "pub-img"]);
    assert!(!out.status.success(), "the public image is gone");
}

/// A one-answer-per-connection HTTP server on `ip`: `answer(path)` is the whole response.
/// Returns its port and a counter of requests it received.
async fn web(
    ip: &str,
    answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (h, answer) = (hits.clone(), std::sync::Arc::new(answer));
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                let _ = c.write_all(&answer(&path)).await;
            });
        }
    });
    (port, hits)
}

fn image_response(_: &str) -> Vec<u8> {
    let body = vec![7u8; 4096];
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(&body);
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn url_imports_cannot_reach_inside() {
    use std::sync::atomic::Ordering;
    // The image is on loopback (127.0.0.1); a "public" redirector on 127.0.0.2, the only
    // range staff allowed, points at it.
    let (inside, inside_hits) = web("127.0.0.1", image_response).await;
    let (redirector, redirector_hits) = web("127.0.0.2", move |_| {
        format!(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{inside}/img\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .into_bytes()
    })
    .await;
    let s = Service::start_with(Db::Sqlite, &["--image-import-allow", "127.0.0.2/32"]).await;
    let add = |name: &str, url: String| s.cli_as(&s.admin_token, &["image", "add", name, &url]);
    let refusal = |out: &Output| {
        assert!(!out.status.success());
        let e = stderr(out);
        assert!(e.contains("could not import from this URL"), "{e}");
        e.split(": ").last().unwrap_or_default().to_string()
    };

    let direct = refusal(&add("direct", format!("http://127.0.0.1:{inside}/img")));
    let redirected = refusal(&add(
        "redirected",
        format!("http://127.0.0.2:{redirector}/"),
    ));
    assert_eq!(
        redirector_hits.load(Ordering::SeqCst),
        1,
        "the allowed hop was asked"
    );
    assert_eq!(
        inside_hits.load(Ordering::SeqCst),
        0,
        "nothing was ever sent to the loopback server"
    );
    // A private literal is refused before connecting (no traffic leaves: it answers at once).
    let t = std::time::Instant::now();
    let private = refusal(&add("private", "http://10.11.12.13:8080/img".into()));
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    // A closed port in the allowed range fails with the very same answer: no port oracle.
    let closed_port = testkit::free_tcp_port();
    let closed = refusal(&add("closed", format!("http://127.0.0.2:{closed_port}/")));
    assert_eq!(direct, redirected);
    assert_eq!(direct, private);
    assert_eq!(direct, closed);
    let out = add("scheme", "file:///etc/passwd".into());
    assert!(!out.status.success());

    // With loopback allowed by staff, the same import works.
    let s2 = Service::start_with(Db::Sqlite, &["--image-import-allow", "127.0.0.0/8"]).await;
    let img = s2.cli_json(&[
        "image",
        "add",
        "allowed",
        &format!("http://127.0.0.2:{redirector}/"),
    ]);
    assert_eq!(img["size_bytes"], 4096);
    assert_eq!(inside_hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn hygiene_unknown_fields_and_absurd_times() {
    let s = Service::start(Db::Sqlite).await;
    s.cli(&["group", "add", "alpha"]);
    let http = s.http();
    let post = |path: &str, body: Value| {
        http.post(format!("{}{path}", s.url))
            .bearer_auth(&s.admin_token)
            .json(&body)
            .send()
    };
    // An unknown field is refused, not ignored.
    let r = post(
        "/api/v1/users",
        serde_json::json!({"name": "mallory", "role": "member", "member_group": "alpha", "is_admin": true}),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 400);
    assert!(r.text().await.expect("body").contains("is_admin"));

    // Free text is bounded: a 1.9 MB token description is refused, a short one is fine.
    s.cli(&["user", "add", "ann", "--role", "member", "--group", "alpha"]);
    let r = post(
        "/api/v1/tokens",
        serde_json::json!({"user": "ann", "description": "x".repeat(1_900_000)}),
    )
    .await
    .expect("post");
    assert!(r.status().is_client_error(), "{}", r.status());
    let r = post(
        "/api/v1/tokens",
        serde_json::json!({"user": "ann", "description": "laptop"}),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 201);
    let r = post(
        "/api/v1/groups",
        serde_json::json!({"name": "gamma", "description": "y".repeat(5000)}),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 400);

    // With no policy set, leases are bounded by the 30-day default; absurd times are refused.
    let policy: Value = http
        .get(format!("{}/api/v1/lease-policy", s.url))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(policy["max_lease_hours"], 720);
    let r = post(
        "/api/v1/leases",
        serde_json::json!({"group": "alpha", "count": 1, "ends_at": i64::MAX}),
    )
    .await
    .expect("post");
    assert!(r.status().is_client_error(), "{}", r.status());
    let r = post(
        "/api/v1/leases",
        serde_json::json!({"group": "alpha", "count": 1, "duration_secs": 31 * 24 * 3600}),
    )
    .await
    .expect("post");
    assert!(r.status().is_client_error(), "{}", r.status());
    assert!(r
        .text()
        .await
        .expect("body")
        .contains("maximum lease length"));
    // Staff may raise it, and still cannot go past the calendar.
    s.cli(&["lease", "policy", "--max-hours", "9000000000"]);
    let r = post(
        "/api/v1/leases",
        serde_json::json!({"group": "alpha", "count": 1, "ends_at": i64::MAX}),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 400);
    assert!(r.text().await.expect("body").contains("year 9999"));
}

#[tokio::test]
async fn members_see_no_bmc_details() {
    for db in common::databases() {
        bmc_details(db).await;
    }
}

async fn bmc_details(db: Db) {
    let s = Service::start(db).await;
    let (ann, bob, tess) = people(&s);
    s.cli(&[
        "machine",
        "add",
        "n1",
        "--mac",
        "52:54:00:00:14:02",
        "--bmc",
        "redfish+https://10.99.0.7",
        "--bmc-user",
        "root",
    ]);
    s.cli(&["machine", "state", "n1", "available"]);
    ok_json(
        s.cli_as(&ann, &["lease", "create", "--count", "1", "-o", "json"]),
        "ann leases",
    );
    let shown = ok_json(
        s.cli_as(&ann, &["machine", "show", "n1", "-o", "json"]),
        "ann shows n1",
    );
    let listed = ok_json(
        s.cli_as(&ann, &["machine", "list", "-o", "json"]),
        "ann lists",
    );
    for (what, m) in [("show", &shown), ("list", &listed[0])] {
        assert_eq!(m["name"], "n1", "{what}: {m}");
        assert_eq!(m["bmc"]["url"], "", "{what}: {m}");
        assert_eq!(m["bmc"]["username"], "", "{what}: {m}");
        assert!(m["bmc"]["last_error"].is_null(), "{what}: {m}");
        assert!(!m.to_string().contains("10.99.0.7"), "{what}: {m}");
    }
    // Another group's member gets a 404, and the probe is audited as denied.
    let out = s.cli_as(&bob, &["machine", "show", "n1"]);
    assert!(!out.status.success() && stderr(&out).contains("not found"));
    let ev = s.cli_json(&["events", "--limit", "1000"]);
    assert!(
        ev.as_array()
            .expect("events")
            .iter()
            .any(|e| e["action"] == "machine.lookup"
                && e["outcome"] == "denied"
                && e["actor"] == "bob"
                && e["target"] == "n1"),
        "{ev}"
    );
    // Staff and technicians do see them.
    for token in [&s.admin_token, &tess] {
        let m = ok_json(
            s.cli_as(token, &["machine", "show", "n1", "-o", "json"]),
            "show n1",
        );
        assert!(
            m["bmc"]["url"]
                .as_str()
                .unwrap_or_default()
                .contains("10.99.0.7"),
            "{m}"
        );
        assert_eq!(m["bmc"]["username"], "root");
        let l = ok_json(s.cli_as(token, &["machine", "list", "-o", "json"]), "list");
        assert_eq!(l[0]["bmc"]["username"], "root");
    }
}
