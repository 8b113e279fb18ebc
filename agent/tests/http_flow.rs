//! The agent against a tiny in-test API on 127.0.0.1: claim, ranged image download that
//! breaks once and resumes, progress, result.

use rackshare_agent::api::Retry;
use rackshare_agent::cmdline::BootParams;
use rackshare_agent::job::{self, Env, Outcome};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Seen {
    requests: Vec<(String, String, String)>,
    result: Option<serde_json::Value>,
    image_gets: usize,
    /// GETs to the end of the image (no range end): the first of them breaks.
    streams: usize,
}

struct Api {
    image: Vec<u8>,
    claim: serde_json::Value,
    seen: Mutex<Seen>,
}

/// What the double's server chooses to have read back: the first 4 KiB and 4 KiB at 1 MiB
/// of a deploy's disk; the first and the last 4 KiB of each wiped disk.
fn challenge_for(body: &str) -> serde_json::Value {
    let req: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let disks: Vec<serde_json::Value> = req["disks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    let size = d["size_bytes"].as_u64().unwrap_or(0);
                    serde_json::json!({"name": d["name"], "ranges": [
                        {"offset": 0, "length": 4096},
                        {"offset": size.saturating_sub(4096), "length": 4096}]})
                })
                .collect()
        })
        .unwrap_or_default();
    let ranges = if disks.is_empty() {
        serde_json::json!([{"offset": 0, "length": 4096}, {"offset": 1 << 20, "length": 4096}])
    } else {
        serde_json::json!([])
    };
    serde_json::json!({"ranges": ranges, "disks": disks})
}

fn handle(api: &Api, stream: TcpStream) -> std::io::Result<()> {
    let mut r = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut len = 0usize;
    let mut range = None;
    let mut auth = String::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((h, ""));
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().unwrap_or(0),
            "range" => range = Some(v.trim().to_string()),
            "authorization" => auth = v.trim().to_string(),
            _ => {}
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut w = stream;
    let mut seen = api.seen.lock().expect("lock");
    seen.requests
        .push((path.clone(), auth.clone(), body.clone()));
    let json = |w: &mut TcpStream, code: &str, v: &serde_json::Value| {
        let b = v.to_string();
        write!(w, "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}", b.len())
    };
    match (method.as_str(), path.as_str()) {
        ("POST", "/api/v1/agent/claim") if auth == "Bearer tok" => {
            json(&mut w, "200 OK", &api.claim)
        }
        ("POST", "/api/v1/agent/claim") => json(
            &mut w,
            "401 Unauthorized",
            &serde_json::json!({"error": "bad token"}),
        ),
        ("POST", "/api/v1/agent/progress") => {
            write!(w, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        }
        ("POST", "/api/v1/agent/challenge") if auth == "Bearer sess" => {
            json(&mut w, "200 OK", &challenge_for(&body))
        }
        ("POST", "/api/v1/agent/result") => {
            seen.result = serde_json::from_str(&body).ok();
            json(&mut w, "200 OK", &serde_json::json!({"action": "none"}))
        }
        ("GET", "/api/v1/agent/image") if auth == "Bearer sess" => {
            seen.image_gets += 1;
            let open_ended = range
                .as_deref()
                .is_none_or(|r| r.split('-').nth(1).is_none_or(str::is_empty));
            if open_ended {
                seen.streams += 1;
            }
            let first = open_ended && seen.streams == 1;
            drop(seen);
            let spec = range.as_deref().and_then(|r| r.strip_prefix("bytes="));
            let start: usize = spec
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let end: usize = spec
                .and_then(|r| r.split('-').nth(1))
                .and_then(|s| s.parse::<usize>().ok())
                .map_or(api.image.len(), |e| (e + 1).min(api.image.len()));
            let rest = &api.image[start..end];
            let code = if range.is_some() {
                "206 Partial Content"
            } else {
                "200 OK"
            };
            write!(
                w,
                "HTTP/1.1 {code}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                rest.len()
            )?;
            // The first download breaks after 1 MiB: the agent must resume with a range.
            let n = if first {
                rest.len().min(1 << 20)
            } else {
                rest.len()
            };
            w.write_all(&rest[..n])
        }
        _ => json(&mut w, "404 Not Found", &serde_json::json!({"error": "no"})),
    }
}

fn serve(api: Arc<Api>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let api = api.clone();
            std::thread::spawn(move || {
                let _ = handle(&api, s);
            });
        }
    });
    format!("http://{addr}")
}

fn quick() -> Retry {
    Retry {
        first: Duration::from_millis(10),
        max: Duration::from_millis(50),
        total: Duration::from_secs(5),
        claim_pause: Duration::from_millis(10),
        claim_total: Duration::from_millis(100),
    }
}

fn env() -> Env {
    Env {
        retry: quick(),
        ..Env::default()
    }
}

fn image() -> Vec<u8> {
    (0..3 * 1024 * 1024 + 100)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn deploy_api(
    base_holder: &str,
    disk: &std::path::Path,
    data: &[u8],
    sha: &str,
    image_format: &str,
) -> serde_json::Value {
    serde_json::json!({
        "job_id": 12, "session": "sess",
        "task": {"mode": "deploy",
            "image": {"url": format!("{base_holder}/api/v1/agent/image"), "sha256": sha,
                      "size_bytes": data.len(), "format": image_format},
            "target_disk": disk.display().to_string(), "hostname": "node-7",
            "ssh_keys": ["ssh-ed25519 AAAA alice"], "user_data": null}
    })
}

/// Starts an API whose claim names a URL on itself.
fn start(data: Vec<u8>, disk: &std::path::Path, sha: &str) -> (Arc<Api>, String) {
    start_format(data, disk, sha, "raw")
}

fn start_format(
    data: Vec<u8>,
    disk: &std::path::Path,
    sha: &str,
    format: &str,
) -> (Arc<Api>, String) {
    // Bind first to learn the address, then fill in the claim that points back at it.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", l.local_addr().expect("addr"));
    let api = Arc::new(Api {
        claim: deploy_api(&base, disk, &data, sha, format),
        image: data,
        seen: Mutex::new(Seen::default()),
    });
    let a = api.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let api = a.clone();
            std::thread::spawn(move || {
                let _ = handle(&api, s);
            });
        }
    });
    (api, base)
}

#[test]
fn deploy_over_http_resumes_and_reports_the_read_back_hash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk");
    std::fs::write(&disk, b"").expect("write");
    let data = image();
    let sha = hex::encode(Sha256::digest(&data));
    let (api, base) = start(data.clone(), &disk, &sha);
    let out = job::run(
        &BootParams {
            api: base,
            pin: None,
            token: "tok".into(),
            mode: Some(proto::AgentMode::Deploy),
        },
        &env(),
    );
    assert_eq!(
        out,
        Outcome::Reported {
            job_id: 12,
            action: proto::AgentAction::None,
            ok: true
        }
    );
    let seen = api.seen.lock().expect("lock");
    let r = seen.result.clone().expect("a result");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["deploy"]["sha256"], sha.as_str());
    assert_eq!(r["deploy"]["written_bytes"], data.len() as u64);
    assert_eq!(
        r["deploy"]["challenge"][1]["sha256"],
        hex::encode(Sha256::digest(&data[1 << 20..(1 << 20) + 4096])),
        "the server's chunk, read back from the disk: {r}"
    );
    assert!(
        r["deploy"]["seed"]
            .as_str()
            .expect("seed")
            .starts_with("skipped"),
        "{r}"
    );
    assert_eq!(seen.image_gets, 2, "one broken stream, one resumed");
    assert_eq!(std::fs::read(&disk).expect("read"), data);
    let progress: Vec<_> = seen
        .requests
        .iter()
        .filter(|r| r.0.ends_with("/progress"))
        .collect();
    assert!(
        progress.iter().any(|p| p.2.contains("\"verifying\"")),
        "{progress:?}"
    );
    assert!(progress.iter().all(|p| p.1 == "Bearer sess"));
}

#[test]
fn a_hash_mismatch_is_reported_as_a_failed_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk");
    std::fs::write(&disk, b"").expect("write");
    let (api, base) = start(image(), &disk, &"ab".repeat(32));
    let out = job::run(
        &BootParams {
            api: base,
            pin: None,
            token: "tok".into(),
            mode: None,
        },
        &env(),
    );
    assert_eq!(
        out,
        Outcome::Reported {
            job_id: 12,
            action: proto::AgentAction::None,
            ok: false
        }
    );
    let r = api
        .seen
        .lock()
        .expect("lock")
        .result
        .clone()
        .expect("a result");
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]
            .as_str()
            .expect("error")
            .contains("hash mismatch"),
        "{r}"
    );
}

#[test]
fn a_refused_token_stops_after_the_claim_window() {
    let api = Arc::new(Api {
        image: vec![],
        claim: serde_json::json!({}),
        seen: Mutex::new(Seen::default()),
    });
    let base = serve(api.clone());
    let out = job::run(
        &BootParams {
            api: base,
            pin: None,
            token: "wrong".into(),
            mode: None,
        },
        &env(),
    );
    assert!(
        matches!(&out, Outcome::Stopped(why) if why.contains("401")),
        "{out:?}"
    );
    assert!(
        api.seen.lock().expect("lock").requests.len() >= 2,
        "the claim was retried"
    );
}

#[test]
fn qcow2_over_http_uses_ranges_and_survives_a_broken_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("disk.raw");
    let mut data = vec![0u8; 4 << 20];
    data[..1 << 20].copy_from_slice(&image()[..1 << 20]);
    data[3 << 20..(3 << 20) + 5000].fill(9);
    std::fs::write(&raw, &data).expect("write");
    let q = dir.path().join("disk.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&q)
        .output()
        .expect("qemu-img (Debian package qemu-utils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let qbytes = std::fs::read(&q).expect("read");
    let disk = dir.path().join("target");
    std::fs::write(&disk, vec![0xFFu8; 5 << 20]).expect("write");
    let (api, base) = start_format(
        qbytes.clone(),
        &disk,
        &hex::encode(Sha256::digest(&qbytes)),
        "qcow2",
    );
    let out = job::run(
        &BootParams {
            api: base,
            pin: None,
            token: "tok".into(),
            mode: None,
        },
        &env(),
    );
    let seen = api.seen.lock().expect("lock");
    let r = seen.result.clone().expect("a result");
    assert_eq!(
        out,
        Outcome::Reported {
            job_id: 12,
            action: proto::AgentAction::None,
            ok: true
        },
        "{r}"
    );
    assert_eq!(r["deploy"]["sha256"], hex::encode(Sha256::digest(&data)));
    assert_eq!(r["deploy"]["written_bytes"], data.len() as u64);
    assert_eq!(
        &std::fs::read(&disk).expect("read")[..data.len()],
        &data[..]
    );
    // Header, L1, L2 by range; then the stream (broken once) and its resumption.
    assert!(seen.image_gets >= 4, "{} GETs", seen.image_gets);
    assert_eq!(seen.streams, 2, "one broken stream, one resumed");
}
