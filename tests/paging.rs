//! Lists page with `limit` and a cursor through the real binary, on SQLite and PostgreSQL:
//! leases and jobs take `after` (the last id of the previous page, newest first), the audit
//! log `before` (its `after` follows new events); without them the old answers are unchanged.
//! The machine list without `limit` streams, and is its pages put together.

mod common;

use common::{databases, Service};
use serde_json::{json, Value};

async fn api(s: &Service, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let mut r = s
        .http()
        .request(method, format!("{}{path}", s.url))
        .bearer_auth(&s.admin_token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status < 300, "{path}: {status} {v}");
    v
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("a list")
        .iter()
        .filter_map(|x| x["id"].as_i64())
        .collect()
}

/// Walks a list `limit` at a time with `cursor=` until a short page; returns every id seen.
async fn walk(s: &Service, path: &str, cursor: &str, limit: usize) -> Vec<i64> {
    let mut all = Vec::new();
    let mut next: Option<i64> = None;
    for _ in 0..100 {
        let sep = if path.contains('?') { '&' } else { '?' };
        let q = match next {
            Some(c) => format!("{path}{sep}limit={limit}&{cursor}={c}"),
            None => format!("{path}{sep}limit={limit}"),
        };
        let page = ids(&api(s, reqwest::Method::GET, &q, None).await);
        assert!(page.len() <= limit);
        all.extend(&page);
        if page.len() < limit {
            return all;
        }
        next = page.last().copied();
    }
    panic!("{path}: no end after 100 pages");
}

#[tokio::test]
async fn leases_jobs_and_events_page_with_a_cursor() {
    for db in databases() {
        let s = Service::start(db).await;
        api(
            &s,
            reqwest::Method::POST,
            "/api/v1/groups",
            Some(json!({"name": "p"})),
        )
        .await;
        for i in 0..5 {
            let name = format!("pg-{i}");
            api(
                &s,
                reqwest::Method::POST,
                "/api/v1/machines",
                Some(json!({"name": name, "macs": [format!("52:54:00:ab:00:{i:02x}")]})),
            )
            .await;
            api(
                &s,
                reqwest::Method::POST,
                &format!("/api/v1/machines/{name}/state"),
                Some(json!({"state": "available"})),
            )
            .await;
            api(
                &s,
                reqwest::Method::POST,
                "/api/v1/leases",
                Some(json!({"group": "p", "count": 1, "duration_secs": 3600})),
            )
            .await;
        }
        machines_stream_as_their_pages(&s, &format!("{db:?}")).await;
        let every = ids(&api(&s, reqwest::Method::GET, "/api/v1/leases", None).await);
        assert_eq!(every.len(), 5, "{db:?}");
        assert_eq!(
            walk(&s, "/api/v1/leases", "after", 2).await,
            every,
            "{db:?}"
        );
        let filtered = walk(&s, "/api/v1/leases?group=p", "after", 3).await;
        assert_eq!(filtered, every, "{db:?}");

        let events = ids(&api(&s, reqwest::Method::GET, "/api/v1/events", None).await);
        assert!(events.len() >= 15, "{db:?}: {events:?}");
        assert_eq!(
            walk(&s, "/api/v1/events", "before", 4).await,
            events,
            "{db:?}"
        );

        // No jobs yet: a cursor on an empty list is an empty page.
        let jobs = api(
            &s,
            reqwest::Method::GET,
            "/api/v1/jobs?limit=2&after=5",
            None,
        )
        .await;
        assert_eq!(jobs, json!([]), "{db:?}");
    }
}

/// The unpaged machine list (streamed as the database renders it) is the pages put together,
/// with each page's cursor naming its last machine.
async fn machines_stream_as_their_pages(s: &Service, db: &str) {
    let resp = s
        .http()
        .get(format!("{}/api/v1/machines", s.url))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .expect("list");
    assert_eq!(resp.status().as_u16(), 200, "{db}");
    assert_eq!(resp.headers()["content-type"], "application/json", "{db}");
    let whole: Value = resp.json().await.expect("the whole list parses");
    let mut pages = Vec::new();
    let mut after = String::new();
    for _ in 0..10 {
        let resp = s
            .http()
            .get(format!("{}/api/v1/machines?limit=2{after}", s.url))
            .bearer_auth(&s.admin_token)
            .send()
            .await
            .expect("page");
        let cursor = resp
            .headers()
            .get("x-next-cursor")
            .map(|v| v.to_str().expect("ascii").to_string());
        let page: Value = resp.json().await.expect("page parses");
        let page = page.as_array().expect("a page is a list").clone();
        pages.extend(page.iter().cloned());
        match cursor {
            Some(c) => {
                assert_eq!(
                    page.last().map(|m| m["name"].clone()),
                    Some(json!(c)),
                    "{db}"
                );
                after = format!("&after={c}");
            }
            None => break,
        }
    }
    assert_eq!(whole, Value::Array(pages), "{db}");
    assert_eq!(whole.as_array().map(Vec::len), Some(5), "{db}");
}
