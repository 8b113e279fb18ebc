//! Issue 14, the request half, through the real binary: where requests come from (audit
//! origins), failed authentication limited and audited in aggregate, roles checked before
//! bodies are read, JSON errors on every status, image storage quotas, users that can be
//! disabled and deleted, and the first admin token kept out of the log.

mod common;

use common::{Db, Service};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn token_for(s: &Service, user: &str) -> String {
    s.cli_json(&["token", "create", "--user", user])["token"]
        .as_str()
        .expect("token")
        .to_string()
}

/// The public prefix of a `rs_<prefix>_<secret>` token.
fn prefix_of(token: &str) -> String {
    token.split('_').nth(1).expect("prefix").to_string()
}

/// A client whose connections come from `ip` (any 127.x.y.z is loopback).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

async fn events(s: &Service, http: &reqwest::Client) -> Vec<Value> {
    let r = http
        .get(format!("{}/api/v1/events?limit=5000", s.url))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .expect("events");
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

fn addr_of(s: &Service) -> SocketAddr {
    s.url
        .trim_start_matches("http://")
        .parse()
        .expect("service address")
}

/// What a raw client saw when it announced `content_length` bytes and kept sending zeros
/// while watching for an answer: the status, the body, and how many body bytes it sent.
struct HugeBody {
    status: u16,
    body: Value,
    sent: u64,
}

/// Sends `POST path` with a body of `content_length` spaces (never more), stopping as soon as
/// the server answers. Bounded by the length and a 60 s deadline.
async fn post_huge(s: &Service, path: &str, token: &str, content_length: u64) -> HugeBody {
    send_huge(s, "POST", path, token, content_length).await
}

/// [`post_huge`] with any method.
async fn send_huge(
    s: &Service,
    method: &str,
    path: &str,
    token: &str,
    content_length: u64,
) -> HugeBody {
    let stream = tokio::net::TcpStream::connect(addr_of(s))
        .await
        .expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    );
    wr.write_all(head.as_bytes()).await.expect("head");
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        let chunk = vec![b' '; 64 * 1024];
        let mut left = content_length;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if wr.write_all(&chunk[..n]).await.is_err() {
                break;
            }
            left -= n as u64;
            counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (status, body) = loop {
        let n = tokio::time::timeout_at(deadline, rd.read(&mut tmp))
            .await
            .expect("the server answered within 60 s")
            .expect("read the answer");
        assert!(n > 0, "the connection closed without an answer");
        buf.extend_from_slice(&tmp[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = &text[..end];
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("the answer has a Content-Length");
        if buf.len() < end + 4 + length {
            continue;
        }
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status");
        let body = serde_json::from_slice(&buf[end + 4..end + 4 + length])
            .unwrap_or_else(|e| panic!("the {status} answer is not JSON ({e}): {text}"));
        break (status, body);
    };
    let sent_when_answered = sent.load(std::sync::atomic::Ordering::Relaxed);
    writer.abort();
    HugeBody {
        status,
        body,
        sent: sent_when_answered,
    }
}

#[tokio::test]
async fn wrong_tokens_are_limited_and_audited_in_aggregate() {
    for db in common::databases() {
        wrong_tokens(db).await;
    }
}

async fn wrong_tokens(db: Db) {
    // Short windows, so the aggregate events are written within the test.
    let s = Service::start_with(db, &["--auth-failure-window-secs", "3"]).await;
    let attacker = client_from([127, 0, 0, 1]);
    let other = client_from([127, 0, 0, 2]);
    let (mut unauthorized, mut limited) = (0, 0);
    let mut checked_other_source = false;
    for i in 0..1000 {
        let r = attacker
            .get(format!("{}/api/v1/whoami", s.url))
            .bearer_auth(format!("rs_0123456789ab_wrong{i}"))
            .send()
            .await
            .expect("request");
        match r.status().as_u16() {
            401 => unauthorized += 1,
            429 => {
                limited += 1;
                let retry: u64 = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .expect("a 429 says when to retry");
                assert!((1..=3).contains(&retry), "Retry-After {retry}");
                let body: Value = r.json().await.expect("a 429 is JSON");
                assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
                if !checked_other_source {
                    // While this source is refused, even its correct token waits; another
                    // source's correct token works.
                    let me = attacker
                        .get(format!("{}/api/v1/whoami", s.url))
                        .bearer_auth(&s.admin_token)
                        .send()
                        .await
                        .expect("whoami");
                    assert_eq!(me.status(), 429, "{db:?}: a limited source is refused");
                    let me = other
                        .get(format!("{}/api/v1/whoami", s.url))
                        .bearer_auth(&s.admin_token)
                        .send()
                        .await
                        .expect("whoami");
                    assert_eq!(me.status(), 200, "{db:?}: another source is not limited");
                    checked_other_source = true;
                }
            }
            other => panic!("{db:?}: a wrong token answered {other}"),
        }
    }
    assert!(limited > 0, "{db:?}: no 429 in 1000 wrong tokens");
    assert!(unauthorized >= 20, "{db:?}: the first failures are 401s");

    // One event per source per window with the counts: together they account for every
    // request from the attacking source (the 1000 and the correct token it sent while limited).
    let mut total = 0;
    for _ in 0..60 {
        let evs = events(&s, &other).await;
        let windows: Vec<&Value> = evs
            .iter()
            .filter(|e| e["action"] == "auth.failed" && e["target"] == "127.0.0.1")
            .collect();
        total = windows
            .iter()
            .map(|e| {
                e["detail"]["failures"].as_u64().unwrap_or(0)
                    + e["detail"]["refused"].as_u64().unwrap_or(0)
            })
            .sum::<u64>();
        if total >= 1001 {
            for e in &windows {
                assert_eq!(e["outcome"], "denied", "{e}");
                assert_eq!(e["source"], "127.0.0.1", "{e}");
            }
            assert!(
                windows.len() < 100,
                "{db:?}: one event per window, not per request ({} events)",
                windows.len()
            );
            let prefix_windows = evs
                .iter()
                .filter(|e| e["action"] == "auth.failed" && e["target"] == "0123456789ab")
                .count();
            assert!(
                prefix_windows > 0,
                "{db:?}: failures per token prefix are audited"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        total, 1001,
        "{db:?}: every wrong-token request is counted once"
    );
}

#[tokio::test]
async fn a_guessed_prefix_is_limited_but_its_owner_is_not_locked_out() {
    let s = Service::start(Db::Sqlite).await;
    let prefix = prefix_of(&s.admin_token);
    let mut limited = false;
    // Wrong secrets for the admin's (public) prefix, each from its own source, so only the
    // prefix's count can trip.
    for i in 0..40u8 {
        let r = client_from([127, 0, 1, i + 1])
            .get(format!("{}/api/v1/whoami", s.url))
            .bearer_auth(format!("rs_{prefix}_guess{i}"))
            .send()
            .await
            .expect("request");
        match r.status().as_u16() {
            401 => {}
            429 => limited = true,
            other => panic!("a wrong secret answered {other}"),
        }
    }
    assert!(limited, "40 wrong secrets for one prefix met no limit");
    let r = client_from([127, 0, 2, 1])
        .get(format!("{}/api/v1/whoami", s.url))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .expect("whoami");
    assert_eq!(r.status(), 200, "the prefix's owner is locked out");
}

#[tokio::test]
async fn events_name_their_source_and_token_prefix() {
    let s = Service::start(Db::Sqlite).await;
    s.cli(&["group", "add", "alpha"]);
    s.cli(&["user", "add", "sam", "--role", "staff"]);
    let sam = token_for(&s, "sam");
    s.cli(&["user", "add", "ann", "--role", "member", "--group", "alpha"]);
    // Staff mint the member's token: the member's actions still carry the member's prefix,
    // and the minting carries the staff's.
    let out = s.cli_as(&sam, &["token", "create", "--user", "ann", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ann: Value = serde_json::from_slice(&out.stdout).expect("json");
    let ann = ann["token"].as_str().expect("token").to_string();
    let from = client_from([127, 0, 0, 9]);
    // A denied action of the member, from 127.0.0.9.
    let r = from
        .post(format!("{}/api/v1/groups", s.url))
        .bearer_auth(&ann)
        .json(&json!({"name": "beta"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    let evs = events(&s, &s.http()).await;
    let denied = evs
        .iter()
        .find(|e| e["action"] == "group.create" && e["outcome"] == "denied")
        .expect("the refusal is audited");
    assert_eq!(denied["token_prefix"], prefix_of(&ann), "{denied}");
    assert!(
        denied["source"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.9:")),
        "{denied}"
    );
    let minted = evs
        .iter()
        .find(|e| e["action"] == "token.create" && e["detail"]["user"] == "ann")
        .expect("token.create");
    assert_eq!(minted["actor"], "sam");
    assert_eq!(minted["token_prefix"], prefix_of(&sam), "{minted}");
    assert!(minted["source"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    // The member's ledger has the member's own origins, not the staff's.
    let ledger: Vec<Value> = from
        .get(format!("{}/api/v1/events", s.url))
        .bearer_auth(&ann)
        .send()
        .await
        .expect("ledger")
        .json()
        .await
        .expect("json");
    let minted_seen = ledger
        .iter()
        .find(|e| e["action"] == "token.create")
        .expect("the member sees its token's creation");
    assert!(
        minted_seen["source"].is_null() && minted_seen["token_prefix"].is_null(),
        "{minted_seen}"
    );
    let own = ledger
        .iter()
        .find(|e| e["action"] == "group.create")
        .expect("the member sees its own refusal");
    assert!(
        own["source"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.9:")),
        "{own}"
    );
    // The CLI shows them.
    let table = s.cli(&["events", "--limit", "50"]);
    assert!(
        table.contains("SOURCE") && table.contains(&prefix_of(&ann)),
        "{table}"
    );
    // Nothing in the audit log is a secret.
    let all = serde_json::to_string(&evs).expect("json");
    for t in [&ann, &sam, &s.admin_token] {
        assert!(
            !all.contains(t.as_str()),
            "a token's secret is in the audit log"
        );
    }
}

#[tokio::test]
async fn a_members_huge_bodies_are_refused_before_they_are_read() {
    let s = Service::start(Db::Sqlite).await;
    s.cli(&["group", "add", "alpha"]);
    s.cli(&["user", "add", "ann", "--role", "member", "--group", "alpha"]);
    let ann = token_for(&s, "ann");
    const HUGE: u64 = 500 << 20;
    let seen = post_huge(&s, "/api/v1/import", &ann, HUGE).await;
    assert_eq!(seen.status, 403, "{}", seen.body);
    assert_eq!(seen.body["error"]["code"], "forbidden");
    assert!(
        seen.sent < HUGE,
        "the answer came before the body was sent ({} of {HUGE} bytes)",
        seen.sent
    );
    let evs = events(&s, &s.http()).await;
    assert!(
        evs.iter().any(|e| e["action"] == "inventory.import"
            && e["outcome"] == "denied"
            && e["actor"] == "ann"),
        "the refused import is audited"
    );
    // An admin's import past the limit: 413 in JSON, also before the body.
    let seen = post_huge(&s, "/api/v1/import", &s.admin_token, HUGE).await;
    assert_eq!(seen.status, 413, "{}", seen.body);
    assert_eq!(seen.body["error"]["code"], "payload_too_large");
    assert!(seen.sent < HUGE);
    // The staff-only creations are gated the same way: the member's refusal is a 403 (not the
    // body limit's 413), answered before the body is sent, and audited.
    for (path, action) in [
        ("/api/v1/machines", "machine.create"),
        ("/api/v1/groups", "group.create"),
        ("/api/v1/sites", "site.create"),
        ("/api/v1/racks", "rack.create"),
    ] {
        let seen = post_huge(&s, path, &ann, HUGE).await;
        assert_eq!(seen.status, 403, "{path}: {}", seen.body);
        assert!(seen.sent < HUGE, "{path}");
        let evs = events(&s, &s.http()).await;
        assert!(
            evs.iter()
                .any(|e| e["action"] == action && e["outcome"] == "denied" && e["actor"] == "ann"),
            "{path}: the refusal is audited"
        );
    }
    // The routes on a path's machine, group or lease check the caller's right to it before
    // the body: a foreign machine or group is a 404 (audited as a denied lookup), the
    // member's own group a 403 (audited), and none of the 500 MB is read.
    s.cli(&["group", "add", "beta"]);
    s.cli(&["machine", "add", "m1", "--mac", "52:54:00:77:00:01"]);
    for (method, path, status, action) in [
        ("PATCH", "/api/v1/machines/m1", 404, Some("machine.lookup")),
        (
            "POST",
            "/api/v1/machines/m1/state",
            404,
            Some("machine.lookup"),
        ),
        (
            "POST",
            "/api/v1/machines/m1/power",
            404,
            Some("machine.lookup"),
        ),
        (
            "POST",
            "/api/v1/machines/m1/bootdev",
            404,
            Some("machine.lookup"),
        ),
        ("PATCH", "/api/v1/groups/beta", 404, Some("group.lookup")),
        (
            "PUT",
            "/api/v1/groups/beta/quota",
            404,
            Some("group.lookup"),
        ),
        (
            "POST",
            "/api/v1/groups/beta/ssh-keys",
            404,
            Some("group.lookup"),
        ),
        ("PATCH", "/api/v1/groups/alpha", 403, Some("group.update")),
        (
            "PUT",
            "/api/v1/groups/alpha/quota",
            403,
            Some("group.quota"),
        ),
        ("POST", "/api/v1/leases/999/extend", 404, None),
        ("POST", "/api/v1/leases/999/release", 404, None),
    ] {
        let seen = send_huge(&s, method, path, &ann, HUGE).await;
        assert_eq!(seen.status, status, "{method} {path}: {}", seen.body);
        assert!(
            seen.sent < HUGE,
            "{method} {path}: answered before the body"
        );
        if let Some(action) = action {
            let evs = events(&s, &s.http()).await;
            assert!(
                evs.iter().any(|e| e["action"] == action
                    && e["outcome"] == "denied"
                    && e["actor"] == "ann"),
                "{method} {path}: the refusal is audited as {action}"
            );
        }
    }
}

#[tokio::test]
async fn every_status_answers_json() {
    let s = Service::start(Db::Sqlite).await;
    let http = s.http();
    let check = |status: u16, body: &Value, code: &str| {
        assert_eq!(body["error"]["code"], code, "{status}: {body}");
        assert!(body["error"]["message"].is_string(), "{status}: {body}");
    };
    // 413: a JSON body past the default limit on an ordinary route.
    let r = http
        .post(format!("{}/api/v1/groups", s.url))
        .bearer_auth(&s.admin_token)
        .json(&json!({"name": "big", "description": "z".repeat(3 << 20)}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 413);
    check(413, &r.json().await.expect("json"), "payload_too_large");
    // 404 and 405.
    let r = http
        .get(format!("{}/api/v1/nothing-here", s.url))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    check(404, &r.json().await.expect("json"), "not_found");
    let r = http
        .put(format!("{}/api/v1/whoami", s.url))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 405);
    check(405, &r.json().await.expect("json"), "method_not_allowed");
    // A path segment axum cannot decode used to answer plain text.
    let r = http
        .get(format!("{}/api/v1/machines/%FF%FE", s.url))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .expect("get");
    assert!(r.status().is_client_error(), "{}", r.status());
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("application/json"), "{ct}");
    // The security headers are on errors too.
    let r = http
        .get(format!("{}/api/v1/nothing-here", s.url))
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.headers().contains_key("content-security-policy"));
}

#[tokio::test]
async fn image_storage_is_bounded_per_group() {
    for db in common::databases() {
        image_quota(db).await;
    }
}

async fn image_quota(db: Db) {
    let s = Service::start(db).await;
    s.cli(&["group", "add", "alpha"]);
    s.cli(&["user", "add", "ann", "--role", "member", "--group", "alpha"]);
    let ann = token_for(&s, "ann");
    // Members cannot set their own quota.
    let out = s.cli_as(
        &ann,
        &["group", "quota", "set", "alpha", "--max-images", "99"],
    );
    assert!(!out.status.success());
    s.cli(&["group", "quota", "set", "alpha", "--max-machines", "3"]);
    let q = s.cli_json(&[
        "group",
        "quota",
        "set",
        "alpha",
        "--max-image-bytes",
        "1M",
        "--max-images",
        "2",
    ]);
    assert_eq!(q["max_image_bytes"], 1 << 20);
    assert_eq!(q["max_images"], 2);
    assert_eq!(q["max_machines"], 3, "a quota left out keeps its value");

    let file = |name: &str, len: usize, seed: u8| {
        let f = s.dir.path().join(name);
        std::fs::write(&f, vec![seed; len]).expect("write image");
        f.display().to_string()
    };
    let add = |name: &str, path: &str| s.cli_as(&ann, &["image", "add", name, path]);
    assert!(add("a", &file("a.raw", 600 << 10, 1)).status.success());
    // 600 KiB stored, 424 KiB left: a 500 KiB image does not fit; the refusal has the numbers.
    let out = add("b", &file("b.raw", 500 << 10, 2));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains(&format!(
            "may store {} bytes of images and stores {}",
            1 << 20,
            600 << 10
        )),
        "{db:?}: {err}"
    );
    assert!(add("b", &file("c.raw", 100 << 10, 3)).status.success());
    // Two images: the count is full.
    let out = add("d", &file("d.raw", 4096, 4));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("may store 2 images and stores 2"),
        "{db:?}: {err}"
    );
    let shown = s.cli(&["group", "quota", "show", "alpha"]);
    assert!(
        shown.contains("Images stored") && shown.contains(&(700 << 10).to_string()),
        "{db:?}: {shown}"
    );
    // A URL import is refused before anything is fetched.
    let r = s
        .http()
        .post(format!("{}/api/v1/images/import", s.url))
        .bearer_auth(&ann)
        .json(&json!({"name": "e", "url": "http://192.0.2.1/e.raw"}))
        .send()
        .await
        .expect("import");
    assert_eq!(r.status(), 409, "{db:?}");
    let body: Value = r.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("2 images")),
        "{body}"
    );

    // Room for one more image but little room for bytes: a huge upload stops at the limit,
    // not after the whole body.
    s.cli(&["group", "quota", "set", "alpha", "--max-images", "10"]);
    const HUGE: u64 = 200 << 20;
    let seen = post_huge(&s, "/api/v1/images?name=huge", &ann, HUGE).await;
    assert_eq!(seen.status, 409, "{db:?}: {}", seen.body);
    assert!(
        seen.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("bytes of images")),
        "{}",
        seen.body
    );
    assert!(seen.sent < HUGE, "{db:?}: refused after the whole body");
    // Staff's own (public) images are not a group's.
    let out = s.cli(&["image", "add", "pub", &file("p.raw", 2 << 20, 5)]);
    assert!(!out.is_empty());
}

#[tokio::test]
async fn users_can_be_disabled_enabled_and_deleted() {
    let s = Service::start(Db::Sqlite).await;
    s.cli(&["group", "add", "alpha"]);
    s.cli(&["user", "add", "ann", "--role", "member", "--group", "alpha"]);
    s.cli(&["user", "add", "sam", "--role", "staff"]);
    s.cli(&["user", "add", "root2", "--role", "admin"]);
    let ann = token_for(&s, "ann");
    let sam = token_for(&s, "sam");
    let whoami = |t: &str| s.cli_as(t, &["whoami"]).status.success();
    assert!(whoami(&ann));

    // Staff may disable a member; its token stops at once, and works again once enabled.
    let out = s.cli_as(&sam, &["user", "disable", "ann"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!whoami(&ann), "a disabled user's token still works");
    let users = s.cli_json(&["user", "list"]);
    let row = users
        .as_array()
        .expect("list")
        .iter()
        .find(|u| u["name"] == "ann")
        .expect("ann")
        .clone();
    assert!(row["disabled_at"].is_i64(), "{row}");
    assert!(s.cli_as(&sam, &["user", "enable", "ann"]).status.success());
    assert!(whoami(&ann));
    // Staff may not touch admins (refused and audited); nobody disables themselves.
    assert!(!s
        .cli_as(&sam, &["user", "disable", "root2"])
        .status
        .success());
    let out = s.cli_as(&sam, &["user", "disable", "sam"]);
    assert!(!out.status.success());
    let out = s.cli_as(&s.admin_token, &["user", "disable", "admin"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("yourself"));
    // Deleting removes the user and its tokens.
    let out = s.cli_as(&s.admin_token, &["user", "delete", "ann"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!whoami(&ann));
    let users = s.cli(&["user", "list"]);
    assert!(!users.contains("ann"), "{users}");
    let evs = events(&s, &s.http()).await;
    for (action, outcome) in [
        ("user.disable", "ok"),
        ("user.enable", "ok"),
        ("user.delete", "ok"),
        ("user.disable", "denied"),
    ] {
        assert!(
            evs.iter()
                .any(|e| e["action"] == action && e["outcome"] == outcome),
            "{action} {outcome} is audited"
        );
    }
}

#[tokio::test]
async fn the_first_admin_token_stays_out_of_the_log() {
    let s = Service::start(Db::Sqlite).await;
    // stdout is a pipe here, not a terminal: the token is only in the file.
    assert!(
        s.admin_token.starts_with("rs_"),
        "the token file has the token"
    );
    assert!(
        !s.log_text().contains(&s.admin_token),
        "the service log holds the admin token"
    );
    assert!(s.cli(&["whoami"]).contains("admin"));
}
