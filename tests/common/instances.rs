//! Several instances on one PostgreSQL: starting them with one secret key, their status,
//! and what the scale-out tests ask of them.
#![allow(dead_code)]

use super::server::Service;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// One API call as `token`: (status, JSON body or null).
pub async fn api(
    s: &Service,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = s
        .http()
        .request(method, format!("{}{path}", s.url))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// An instance on `db` with the first instance's secret key (provisioned identically).
pub fn instance(db: &str, key_from: &std::path::Path, extra: &[&str]) -> Service {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let key = data.join("secret.key");
    std::fs::copy(key_from.join("secret.key"), &key).expect("copy the secret key");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let mut args: Vec<String> = [
        "serve",
        "--data-dir",
        &data.display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        db,
        "--energy-interval-secs",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Service::spawn(dir, args)
}

/// `rackshare status -o json` as `token`.
pub fn status(s: &Service, token: &str) -> Value {
    let out = s.cli_as(token, &["status", "-o", "json"]);
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status json")
}

/// The instance holding job `id`, per the status.
pub fn holder_of(st: &Value, id: i64) -> Option<String> {
    st["instances"].as_array()?.iter().find_map(|i| {
        let holds = i["jobs"].as_array()?.iter().any(|j| j.as_i64() == Some(id));
        holds.then(|| i["id"].as_str().unwrap_or_default().to_string())
    })
}

/// The first instance on `db`: it makes the admin and the secret key the others copy.
pub fn instance_first(db: &str) -> Service {
    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = [
        "serve",
        "--data-dir",
        &dir.path().join("data").display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        db,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Service::spawn(dir, args)
}

/// Polls the status (bounded, 45 s: a dead holder's claim expires in 15) until `pick`.
pub fn wait_for<T>(s: &Service, token: &str, what: &str, pick: impl Fn(&Value) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let st = status(s, token);
        if let Some(v) = pick(&st) {
            return v;
        }
        assert!(Instant::now() < deadline, "no {what}: {st:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A member of `group` named `who`, and a token of theirs.
pub async fn member(s: &Service, admin: &str, who: &str, group: &str) -> String {
    let (code, v) = api(
        s,
        admin,
        reqwest::Method::POST,
        "/api/v1/users",
        Some(json!({"name": who, "role": "member", "member_group": group})),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    let (code, v) = api(
        s,
        admin,
        reqwest::Method::POST,
        "/api/v1/tokens",
        Some(json!({"user": who})),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    v["token"].as_str().expect("token").to_string()
}
