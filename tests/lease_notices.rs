//! Issue 15, "lease ends are announced": a group's webhook is called 24 h and 1 h before its
//! leases end, once each, checked like a URL import (an address not allowed is never called).
//! The real binary; webhook receivers on loopback.

mod common;

use common::{Db, Service};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A webhook receiver on `ip`: every JSON body it was POSTed, answering 200.
async fn receiver(ip: &str) -> (u16, Arc<Mutex<Vec<Value>>>) {
    let l = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Bounded: a request is small; give up past 64 KiB.
                while buf.len() < 65_536 {
                    let Ok(n) = c.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some(head_end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let len: usize = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() >= head_end + 4 + len {
                        let body = &buf[head_end + 4..head_end + 4 + len];
                        if let Ok(v) = serde_json::from_slice::<Value>(body) {
                            g.lock().expect("lock").push(v);
                        }
                        let _ = c
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                }
            });
        }
    });
    (port, got)
}

fn token(s: &Service, user: &str) -> String {
    s.cli_json(&["token", "create", "--user", user])["token"]
        .as_str()
        .expect("token")
        .to_string()
}

fn ok_as(s: &Service, token: &str, args: &[&str]) -> String {
    let out = s.cli_as(token, args);
    assert!(
        out.status.success(),
        "rackshare {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn notices(s: &Service) -> Vec<Value> {
    s.cli_json(&["events", "--limit", "500"])
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["action"] == "lease.notice")
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_ends_are_announced_once_to_the_groups_webhook() {
    let (port, got) = receiver("127.0.0.1").await;
    // A receiver on an address the service may not call: it must never be reached.
    let (far_port, far_got) = receiver("::1").await;
    let s = Service::start_with(Db::Sqlite, &["--image-import-allow", "127.0.0.0/8"]).await;
    for g in ["coop", "far"] {
        s.cli(&["group", "add", g]);
    }
    s.cli(&["user", "add", "rosa", "--role", "member", "--group", "coop"]);
    s.cli(&["user", "add", "finn", "--role", "member", "--group", "far"]);
    let (rosa, finn) = (token(&s, "rosa"), token(&s, "finn"));
    for i in 1..=3 {
        let m = format!("n{i}");
        s.cli(&[
            "machine",
            "add",
            &m,
            "--mac",
            &format!("52:54:00:15:0a:0{i}"),
        ]);
        s.cli(&["machine", "state", &m, "available"]);
    }

    // Members set their own group's webhook, never another's; a bad URL is refused in words.
    let hook = format!("http://127.0.0.1:{port}/hook");
    let set = ok_as(
        &s,
        &rosa,
        &["group", "webhook", "set", "coop", &hook, "-o", "json"],
    );
    assert!(set.contains(&hook), "{set}");
    let shown = s.cli_json(&["group", "webhook", "show", "coop"]);
    assert_eq!(shown["url"], hook.as_str(), "{shown}");
    let out = s.cli_as(
        &finn,
        &["group", "webhook", "set", "coop", "http://127.0.0.1:1/"],
    );
    assert!(
        !out.status.success(),
        "another group's webhook is not theirs"
    );
    let out = s.cli_as(&rosa, &["group", "webhook", "set", "coop", "ftp://x/"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http"));
    ok_as(
        &s,
        &finn,
        &[
            "group",
            "webhook",
            "set",
            "far",
            &format!("http://[::1]:{far_port}/"),
        ],
    );

    // A lease ending in 3 h gets the day's notice; one ending in 30 min the hour's only.
    let day = s.cli_json(&[
        "lease",
        "create",
        "--group",
        "coop",
        "--count",
        "1",
        "--duration",
        "3h",
    ]);
    let hour = s.cli_json(&[
        "lease",
        "create",
        "--group",
        "coop",
        "--count",
        "1",
        "--duration",
        "30m",
    ]);
    s.cli(&[
        "lease",
        "create",
        "--group",
        "far",
        "--count",
        "1",
        "--duration",
        "30m",
    ]);
    let (day_id, hour_id) = (day["id"].clone(), hour["id"].clone());

    let deadline = Instant::now() + Duration::from_secs(60);
    while got.lock().expect("lock").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "notices never came: {:?}\n{}",
            got.lock(),
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The far group's notice fails three times, refused before any byte is sent.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !notices(&s).iter().any(|e| e["outcome"] == "failed") {
        assert!(
            Instant::now() < deadline,
            "the refused webhook was never given up: {:?}",
            notices(&s)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Once each: a few more worker ticks add nothing.
    std::thread::sleep(Duration::from_secs(11));
    let bodies = got.lock().expect("lock").clone();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    let of = |id: &Value| {
        bodies
            .iter()
            .find(|b| b["lease"] == *id)
            .unwrap_or_else(|| panic!("no notice for lease {id}: {bodies:?}"))
            .clone()
    };
    let (d, h) = (of(&day_id), of(&hour_id));
    assert_eq!(d["notice"], "day", "{d}");
    assert_eq!(h["notice"], "hour", "{h}");
    assert_eq!(d["event"], "lease.ending");
    assert_eq!(d["group"], "coop");
    assert_eq!(d["machines"].as_array().map(Vec::len), Some(1), "{d}");
    assert!(
        d["minutes_left"]
            .as_i64()
            .is_some_and(|m| m > 150 && m <= 180),
        "{d}"
    );
    assert!(
        far_got.lock().expect("lock").is_empty(),
        "an address not allowed was called"
    );

    let ev = notices(&s);
    let ok = ev.iter().filter(|e| e["outcome"] == "ok").count();
    let failed: Vec<&Value> = ev.iter().filter(|e| e["outcome"] == "failed").collect();
    assert_eq!(ok, 2, "{ev:?}");
    assert_eq!(failed.len(), 1, "{ev:?}");
    assert_eq!(failed[0]["detail"]["attempts"], 3, "{failed:?}");
    assert_eq!(failed[0]["detail"]["group"], "far", "{failed:?}");
}
