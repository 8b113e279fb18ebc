//! Images through the real binary: streamed upload, URL import, dedup, verification, Range
//! downloads, ownership.

mod common;

use common::{Db, Service};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn blob_count(s: &Service) -> usize {
    std::fs::read_dir(s.data_dir().join("images/blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn upload_import_dedup_verify_range_and_ownership() {
    // The web server the import test starts is on loopback, which imports may reach only
    // when staff allow it.
    let s = Service::start_with(Db::Sqlite, &["--image-import-allow", "127.0.0.0/8"]).await;
    // 5 MiB of pseudo-random bytes: larger than any default body limit.
    let mut data = Vec::with_capacity(5 << 20);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while data.len() < 5 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    let sha = hex::encode(Sha256::digest(&data));
    let file = s.dir.path().join("disk.raw");
    std::fs::write(&file, &data).expect("write image");
    let f = file.to_str().expect("p");

    let img = s.cli_json(&[
        "image",
        "add",
        "debian",
        f,
        "--version",
        "12",
        "--sha256",
        &sha,
    ]);
    assert_eq!(img["sha256"], sha.as_str());
    assert_eq!(img["size_bytes"], data.len());
    assert_eq!(img["format"], "raw");
    assert!(
        img["owner_group"].is_null(),
        "staff images are public by default"
    );
    assert_eq!(blob_count(&s), 1);

    // The same bytes under another name are stored once.
    s.cli(&["image", "add", "debian-copy", f]);
    assert_eq!(blob_count(&s), 1);

    // A wrong hash is refused and leaves nothing behind.
    let wrong = "0".repeat(64);
    let out = s.cli_as(
        &s.admin_token,
        &["image", "add", "broken", f, "--sha256", &wrong],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sha256 mismatch"));
    assert!(
        s.cli_as(&s.admin_token, &["image", "show", "broken"])
            .status
            .code()
            != Some(0)
    );
    assert_eq!(
        std::fs::read_dir(s.data_dir().join("images/tmp"))
            .expect("tmp")
            .count(),
        0
    );

    // A format that the bytes contradict is refused.
    let out = s.cli_as(
        &s.admin_token,
        &["image", "add", "liar", f, "--format", "qcow2"],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("its bytes are raw"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Downloads stream with Range support.
    let http = s.http();
    let url = format!("{}/api/v1/images/debian:12/content", s.url);
    let part = http
        .get(&url)
        .bearer_auth(&s.admin_token)
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .expect("range");
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(
        part.bytes().await.expect("bytes").as_ref(),
        &data[1000..2000]
    );
    let whole = http
        .get(&url)
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(hex::encode(Sha256::digest(&whole)), sha);

    // Import from a URL (a web server on 127.0.0.1 that the test starts).
    let web = s.dir.path().join("web");
    std::fs::create_dir_all(&web).expect("mkdir");
    let mut small = data[..4096].to_vec();
    small[0] = 0x28; // not a zstd stream beyond its magic, but the magic is what is checked
    small[1..4].copy_from_slice(&[0xb5, 0x2f, 0xfd]);
    std::fs::write(web.join("img.raw.zst"), &small).expect("write");
    let port = testkit::free_tcp_port();
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        &port.to_string(),
        "--directory",
    ])
    .arg(&web);
    let mut srv = testkit::Proc::spawn("python http.server", cmd, s.dir.path().join("web.log"));
    testkit::wait_tcp(&mut srv, port, std::time::Duration::from_secs(20));
    let imported = s.cli_json(&[
        "image",
        "add",
        "zstd-img",
        &format!("http://127.0.0.1:{port}/img.raw.zst"),
    ]);
    assert_eq!(
        imported["format"], "raw.zst",
        "format sniffed from the bytes: {imported}"
    );
    assert_eq!(
        imported["sha256"],
        hex::encode(Sha256::digest(&small)).as_str()
    );
    let out = s.cli_as(
        &s.admin_token,
        &[
            "image",
            "add",
            "gone",
            &format!("http://127.0.0.1:{port}/missing"),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot download"));
    drop(srv);

    // Members own what they add and see only public and their own images.
    s.cli(&["group", "add", "alpha"]);
    s.cli(&["group", "add", "beta"]);
    s.cli(&["user", "add", "ann", "--role", "member", "--group", "alpha"]);
    s.cli(&["user", "add", "bob", "--role", "member", "--group", "beta"]);
    let ann = s.cli_json(&["token", "create", "--user", "ann"])["token"]
        .as_str()
        .expect("t")
        .to_string();
    let bob = s.cli_json(&["token", "create", "--user", "bob"])["token"]
        .as_str()
        .expect("t")
        .to_string();
    let small_file = web.join("img.raw.zst");
    let out = s.cli_as(
        &ann,
        &[
            "image",
            "add",
            "ann-os",
            small_file.to_str().expect("p"),
            "-o",
            "json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mine: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(mine["owner_group"], "alpha");
    let out = s.cli_as(&bob, &["image", "list", "-o", "json"]);
    let seen: Value = serde_json::from_slice(&out.stdout).expect("json");
    let names: Vec<&str> = seen
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert!(
        names.contains(&"debian") && !names.contains(&"ann-os"),
        "{names:?}"
    );
    let out = s.cli_as(&bob, &["image", "show", "ann-os"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = s.cli_as(&bob, &["image", "delete", "debian:12"]);
    assert!(!out.status.success(), "members cannot delete public images");

    // Deleting one of two names for the same bytes keeps the bytes; the last one removes them.
    let before = blob_count(&s);
    s.cli(&["image", "delete", "debian-copy"]);
    assert_eq!(blob_count(&s), before);
    s.cli(&["image", "delete", "debian:12"]);
    assert_eq!(blob_count(&s), before - 1);
    let ev = s.cli_json(&["events", "--limit", "1000"]);
    assert!(ev
        .as_array()
        .expect("ev")
        .iter()
        .any(|e| e["action"] == "image.delete" && e["actor"] == "admin"));
}
