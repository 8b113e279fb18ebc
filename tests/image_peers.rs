//! Images over thin links: two instances (sites a and b) on the suite's throwaway PostgreSQL,
//! each with its own image store. An image uploaded at a is fetched by b once, however many
//! clients ask b at once; a transfer killed half way resumes with Range after b restarts (the
//! bytes cross about once); a holder serving corrupted bytes is refused and nothing is stored;
//! a forged or expired peer request is refused and audited; `image prefetch --site` warms a
//! site, and a site without a live instance is a clear error. One pair of instances is
//! shared by the checks, which use images of their own.

mod common;

use common::Service;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

/// b's fetches are paced (8 MB/s) so a transfer lasts long enough to be killed half way.
const B_RATE: &str = "8000000";

fn serve_args(data: &std::path::Path, db: &str, extra: &[&str]) -> Vec<String> {
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
    args
}

/// An instance on `db` with the first instance's secret key (provisioned identically).
fn instance(db: &str, key_from: &std::path::Path, extra: &[&str]) -> Service {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let key = data.join("secret.key");
    std::fs::copy(key_from.join("secret.key"), &key).expect("copy the secret key");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let args = serve_args(&data, db, extra);
    Service::spawn(dir, args)
}

/// A counter of the service's `/metrics`.
async fn metric(s: &Service, name: &str) -> u64 {
    let url = s.metrics_url.clone().expect("metrics listener");
    let text = reqwest::get(&url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// Deterministic bytes that no compression or sniffing mistakes for a qcow2 or zstd image.
fn image_bytes(seed: u8, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut block = Sha256::digest([seed]).to_vec();
    while out.len() < len {
        block = Sha256::digest(&block).to_vec();
        out.extend_from_slice(&block);
    }
    out.truncate(len);
    out[0] = 0xeb;
    out
}

fn sha_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Uploads `bytes` as image `name` to `s`; returns its sha256.
fn upload(s: &Service, name: &str, bytes: &[u8]) -> String {
    let file = s.dir.path().join(format!("{name}.img"));
    std::fs::write(&file, bytes).expect("write image");
    let v = s.cli_json(&["image", "add", name, &file.display().to_string()]);
    assert_eq!(v["sha256"], sha_hex(bytes), "{v}");
    sha_hex(bytes)
}

/// Downloads image `name` from `s` as a client that retries while the instance fetches it
/// (503, bounded): the body's sha256, or the last error answer.
async fn download(base: &str, token: &str, name: &str) -> Result<String, (u16, String)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .expect("client");
    let mut last = (0, String::new());
    for _ in 0..20 {
        let resp = http
            .get(format!("{base}/api/v1/images/{name}/content"))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| (0, e.to_string()))?;
        let status = resp.status().as_u16();
        if status == 200 {
            let body = resp.bytes().await.map_err(|e| (0, e.to_string()))?;
            return Ok(sha_hex(&body));
        }
        last = (status, resp.text().await.unwrap_or_default());
        if status != 503 || last.1.contains("image_unavailable") {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blobs_cross_between_instances_once() {
    let db = common::fresh_postgres().await;
    // The first start makes the admin and the sites; it then stops (its row stays, dead).
    let first_dir = tempfile::tempdir().expect("tempdir");
    let first_args = serve_args(&first_dir.path().join("data"), &db, &[]);
    let mut first = Service::spawn(first_dir, first_args);
    let admin = first.admin_token.clone();
    let key_dir = first.data_dir();
    for site in ["a", "b", "c"] {
        first.cli(&["site", "add", site]);
    }
    assert!(first.stop(), "the first instance stops cleanly");
    let mut a = instance(&db, &key_dir, &["--site", "a"]);
    a.admin_token = admin.clone();
    let b_extra = ["--site", "b", "--image-peer-rate", B_RATE];
    let mut b = instance(&db, &key_dir, &b_extra);
    b.admin_token = admin.clone();

    many_clients_one_transfer(&a, &b, &admin).await;
    forged_peer_requests_are_refused(&a, &key_dir, &admin).await;
    corrupt_bytes_are_never_stored(&a, &b, &admin).await;
    let b = killed_transfer_resumes(&a, b, &db, &b_extra, &admin).await;
    prefetch_warms_a_site(&a, &b, &admin).await;
}

/// 20 clients ask b at once for an image only a holds: all get its bytes, one transfer ran.
async fn many_clients_one_transfer(a: &Service, b: &Service, admin: &str) {
    let bytes = image_bytes(1, 12 << 20);
    let sha = upload(a, "wave", &bytes);
    let started = Instant::now();
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let (url, token) = (b.url.clone(), admin.to_string());
            tokio::spawn(async move { download(&url, &token, "wave").await })
        })
        .collect();
    for c in clients {
        let got = c.await.expect("client task");
        assert_eq!(
            got.as_deref(),
            Ok(sha.as_str()),
            "every client gets the image's bytes"
        );
    }
    eprintln!(
        "20 clients served through one transfer in {:?}",
        started.elapsed()
    );
    assert_eq!(
        metric(a, "rackshare_image_peer_served_total").await,
        1,
        "exactly one transfer from a"
    );
    assert_eq!(metric(b, "rackshare_image_peer_fetched_total").await, 1);
    let served = metric(a, "rackshare_image_peer_served_bytes_total").await;
    assert_eq!(served, bytes.len() as u64, "the image crossed once");
    let log = a.log_text();
    assert_eq!(
        log.matches("serving an image blob to another instance")
            .count(),
        1,
        "a's log shows one transfer"
    );
    let shown = b.cli_json(&["image", "show", "wave"]);
    let held: Vec<&str> = shown["copies"]
        .as_array()
        .expect("copies")
        .iter()
        .filter(|c| c["state"] == "held")
        .filter_map(|c| c["site"].as_str())
        .collect();
    assert_eq!(held.len(), 2, "both sites hold it now: {shown:#}");
}

/// Unsigned, forged, renamed and expired requests for a blob: 401, each audited; a request
/// signed with the shared key passes (so the refusals are about the signature).
async fn forged_peer_requests_are_refused(a: &Service, key_dir: &std::path::Path, admin: &str) {
    use api::image_peers::signing;
    let bytes = image_bytes(2, 1 << 20);
    let sha = upload(a, "secret-blob", &bytes);
    let path = format!("/api/v1/peer/blobs/{sha}");
    let key = std::fs::read_to_string(key_dir.join("secret.key")).expect("key");
    let ours = inventory::SecretBox::from_base64(&key).expect("secret key");
    let stranger = inventory::SecretBox::from_key([9; 32]);
    let now = inventory::now_ms();
    let http = reqwest::Client::new();
    let get = |headers: Vec<(&'static str, String)>| {
        let mut r = http.get(format!("{}{path}", a.url));
        for (n, v) in headers {
            r = r.header(n, v);
        }
        r.send()
    };
    let refused_before = metric(a, "rackshare_image_peer_refused_total").await;
    let mut renamed = signing::sign(&ours, "GET", &path, "b-1", now).to_vec();
    renamed[0].1 = "someone-else".into();
    let cases: Vec<(&str, Vec<(&'static str, String)>)> = vec![
        ("unsigned", vec![]),
        (
            "another key",
            signing::sign(&stranger, "GET", &path, "b-1", now).to_vec(),
        ),
        ("renamed", renamed),
        (
            "expired",
            signing::sign(&ours, "GET", &path, "b-1", now - 2 * signing::VALID_FOR_MS).to_vec(),
        ),
        (
            "another blob's",
            signing::sign(
                &ours,
                "GET",
                &format!("/api/v1/peer/blobs/{}", "0".repeat(64)),
                "b-1",
                now,
            )
            .to_vec(),
        ),
    ];
    let n = cases.len() as u64;
    for (what, headers) in cases {
        let resp = get(headers).await.expect("request");
        assert_eq!(resp.status().as_u16(), 401, "{what} is refused");
        let text = resp.text().await.unwrap_or_default();
        assert!(
            !text.contains(&sha[..16]) || text.contains("error"),
            "{what}: {text}"
        );
    }
    let resp = get(signing::sign(&ours, "GET", &path, "b-1", now).to_vec())
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200, "a signed request passes");
    assert_eq!(sha_hex(&resp.bytes().await.expect("body")), sha);
    assert_eq!(
        metric(a, "rackshare_image_peer_refused_total").await,
        refused_before + n
    );
    let events: Value = http
        .get(format!("{}/api/v1/events?limit=200", a.url))
        .bearer_auth(admin)
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("events json");
    let denied = events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["action"] == "image.peer_fetch" && e["outcome"] == "denied")
        .count() as u64;
    assert_eq!(denied, n, "every refusal is audited: {events:#}");
}

/// a's copy rots on disk: b's transfer is refused at the hash, nothing enters b's store.
async fn corrupt_bytes_are_never_stored(a: &Service, b: &Service, admin: &str) {
    let bytes = image_bytes(3, 2 << 20);
    let sha = upload(a, "rotten", &bytes);
    let blob = a.data_dir().join("images/blobs/sha256").join(&sha);
    let mut rotten = std::fs::read(&blob).expect("blob");
    rotten[1 << 20] ^= 0xff;
    std::fs::write(&blob, &rotten).expect("rot the blob");
    let before = metric(b, "rackshare_image_peer_corrupt_total").await;
    let got = download(&b.url, admin, "rotten").await;
    let (code, text) = got.expect_err("corrupt bytes are not served");
    assert_eq!(code, 503, "{text}");
    assert!(
        text.contains("not the image") && text.contains("discarded"),
        "{text}"
    );
    assert_eq!(
        metric(b, "rackshare_image_peer_corrupt_total").await,
        before + 1
    );
    let store = b.data_dir().join("images");
    assert!(
        !store.join("blobs/sha256").join(&sha).exists(),
        "nothing stored"
    );
    assert!(!store.join("partial").join(&sha).exists(), "nothing kept");
    let shown = b.cli_json(&["image", "show", "rotten"]);
    let failed = shown["copies"]
        .as_array()
        .expect("copies")
        .iter()
        .any(|c| c["site"] == "b" && c["state"] == "failed");
    assert!(failed, "b's copy says it failed: {shown:#}");
}

/// b is killed (-9) a quarter into a transfer and restarted: the next request resumes the
/// partial file with Range, and about one image's worth of bytes left a in all.
async fn killed_transfer_resumes(
    a: &Service,
    mut b: Service,
    db: &str,
    b_extra: &[&str],
    admin: &str,
) -> Service {
    let bytes = image_bytes(4, 24 << 20);
    let size = bytes.len() as u64;
    let sha = upload(a, "resumable", &bytes);
    let sent_before = metric(a, "rackshare_image_peer_served_bytes_total").await;
    let partial = b.data_dir().join("images/partial").join(&sha);
    let (url, token) = (b.url.clone(), admin.to_string());
    let first = tokio::spawn(async move { download(&url, &token, "resumable").await });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let len = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if len >= size / 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the transfer did not start: {len} bytes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.kill9();
    let kept = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(kept > 0 && kept < size, "a partial file is kept: {kept}");
    assert!(
        first.await.expect("client").is_err(),
        "the first client lost its instance"
    );
    let dir = b.take_dir();
    let args = serve_args(&dir.path().join("data"), db, b_extra);
    let mut b = Service::spawn(dir, args);
    b.admin_token = admin.to_string();
    assert_eq!(
        download(&b.url, admin, "resumable").await.as_deref(),
        Ok(sha.as_str())
    );
    assert_eq!(
        metric(&b, "rackshare_image_peer_resumed_total").await,
        1,
        "resumed with Range"
    );
    let sent = metric(a, "rackshare_image_peer_served_bytes_total").await - sent_before;
    eprintln!("killed at {kept} of {size} bytes; {sent} bytes left a in all");
    assert!(sent >= size, "{sent}");
    assert!(
        sent < size + size / 2,
        "the image crossed about once, not twice: {sent} of {size}"
    );
    assert!(a.log_text().contains("bytes="), "a served a ranged request");
    b
}

/// `image prefetch --site b --wait` makes b hold an image before anyone asks; a site without
/// a live instance, an unknown site and a member are refused.
async fn prefetch_warms_a_site(a: &Service, b: &Service, admin: &str) {
    let bytes = image_bytes(5, 3 << 20);
    let sha = upload(a, "warm", &bytes);
    let served_before = metric(a, "rackshare_image_peer_served_total").await;
    let out = a.cli_as(
        admin,
        &[
            "image", "prefetch", "warm", "--site", "b", "--wait", "-o", "json",
        ],
    );
    assert!(
        out.status.success(),
        "prefetch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).expect("json");
    let held = shown["copies"]
        .as_array()
        .expect("copies")
        .iter()
        .any(|c| c["site"] == "b" && c["state"] == "held");
    assert!(held, "{shown:#}");
    assert!(b.data_dir().join("images/blobs/sha256").join(&sha).exists());
    assert_eq!(
        metric(a, "rackshare_image_peer_served_total").await,
        served_before + 1
    );
    // Asked again: nothing moves.
    a.cli(&["image", "prefetch", "warm", "--site", "b"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        metric(a, "rackshare_image_peer_served_total").await,
        served_before + 1
    );
    let table = a.cli(&["image", "show", "warm"]);
    assert!(table.contains("held"), "{table}");

    let out = a.cli_as(admin, &["image", "prefetch", "warm", "--site", "c"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("site 'c' has no live instance"),
        "{err}"
    );
    let out = a.cli_as(admin, &["image", "prefetch", "warm", "--site", "nowhere"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nowhere"), "{err}");
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value, token: &str| {
        http.post(format!("{}{path}", a.url))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let r = post("/api/v1/groups", serde_json::json!({"name": "g1"}), admin)
        .await
        .expect("group");
    assert_eq!(r.status().as_u16(), 201);
    let r = post(
        "/api/v1/users",
        serde_json::json!({"name": "mem", "role": "member", "member_group": "g1"}),
        admin,
    )
    .await
    .expect("user");
    assert_eq!(r.status().as_u16(), 201);
    let v: Value = post("/api/v1/tokens", serde_json::json!({"user": "mem"}), admin)
        .await
        .expect("token")
        .json()
        .await
        .expect("token json");
    let token = v["token"].as_str().expect("member token").to_string();
    // A public image belongs to the cooperative: a member may not move it around.
    let r = post(
        "/api/v1/images/warm/prefetch",
        serde_json::json!({"site": "b"}),
        &token,
    )
    .await
    .expect("prefetch");
    assert_eq!(r.status().as_u16(), 403);
}
