//! The transport half of issue 14 through the real binary: HTTPS with an operator's certificate
//! (a throwaway CA made here) and with the self-signed default, the CLI's `--ca-cert`,
//! `--fingerprint` and its refusal to send a token in clear, SIGHUP reload, /metrics on its
//! own listener, and bounded connections (2,000 idle ones, half-sent heads, the caps).
//! Loopback only: the many clients are distinct 127.x.y.z sources.

mod common;

use common::{Db, Service, BIN};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A throwaway CA and a server certificate it signed for loopback.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// `SHA256:hex` of the server certificate.
    fingerprint: String,
}

fn make_ca() -> (rcgen::Certificate, rcgen::KeyPair) {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "throwaway test CA");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().expect("key");
    (p.self_signed(&key).expect("ca"), key)
}

/// Writes a server certificate signed by `ca` into `dir` (replacing what is there).
fn issue(dir: &Path, ca: &(rcgen::Certificate, rcgen::KeyPair)) -> Pki {
    let p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
        .expect("params");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, &ca.0, &ca.1).expect("signed");
    let pki = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        fingerprint: api::tls::fingerprint(cert.der()),
    };
    std::fs::write(&pki.ca, ca.0.pem()).expect("ca file");
    std::fs::write(&pki.cert, cert.pem()).expect("cert file");
    std::fs::write(&pki.key, key.serialize_pem()).expect("key file");
    pki
}

/// The CLI against `url` with `token` and `env`.
fn cli(url: &str, token: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("RACKSHARE_URL", url)
        .env("RACKSHARE_TOKEN", token)
        .env_remove("RACKSHARE_CA_CERT")
        .env_remove("RACKSHARE_FINGERPRINT")
        .env_remove("RACKSHARE_INSECURE_HTTP");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run rackshare")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn https_with_an_operator_certificate_and_the_clis_ca_cert() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = issue(dir.path(), &make_ca());
    let (cert, key) = (
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
    );
    let s = Service::start_with(Db::Sqlite, &["--tls-cert", &cert, "--tls-key", &key]).await;
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    assert_eq!(s.fingerprint.as_deref(), Some(pki.fingerprint.as_str()));

    let ca = pki.ca.display().to_string();
    let ok = cli(
        &s.url,
        &s.admin_token,
        &[("RACKSHARE_CA_CERT", &ca)],
        &["whoami"],
    );
    assert!(ok.status.success(), "--ca-cert: {}", stderr(&ok));
    let flag = cli(&s.url, &s.admin_token, &[], &["--ca-cert", &ca, "whoami"]);
    assert!(flag.status.success(), "--ca-cert flag: {}", stderr(&flag));

    let untrusted = cli(&s.url, &s.admin_token, &[], &["whoami"]);
    assert!(!untrusted.status.success());
    let e = stderr(&untrusted);
    assert!(
        e.contains("certificate not trusted")
            && e.contains(&format!("--fingerprint {}", pki.fingerprint)),
        "the refusal names what to pass and the fingerprint seen: {e}"
    );

    // An operator's certificate: browsers are told to insist on HTTPS.
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).expect("ca")).expect("pem"),
        )
        .build()
        .expect("client");
    let r = http
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .expect("healthz over HTTPS");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()
            .get("strict-transport-security")
            .is_some_and(|v| v.to_str().unwrap_or("").contains("max-age=")),
        "HSTS with the operator's certificate"
    );
}

#[tokio::test]
async fn beyond_loopback_a_self_signed_certificate_is_made_and_pinned() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    // Listening on every address is what makes rackshare refuse to run in clear; the test
    // talks to it over loopback only.
    let mut s = Service::spawn(dir, serve_args_in(&data, "0.0.0.0:0", &[]));
    let url = s.url.replace("0.0.0.0", "127.0.0.1");
    assert!(url.starts_with("https://127.0.0.1:"), "{}", s.url);
    let fp = s.fingerprint.clone().expect("a printed fingerprint");
    assert!(
        s.banner
            .iter()
            .any(|l| l.contains("self-signed") && l.contains(&fp)),
        "{:?}",
        s.banner
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("tls/key.pem"))
            .expect("key in the data dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
    }

    let pinned = cli(&url, &s.admin_token, &[], &["--fingerprint", &fp, "whoami"]);
    assert!(
        pinned.status.success(),
        "--fingerprint: {}",
        stderr(&pinned)
    );
    let env = cli(
        &url,
        &s.admin_token,
        &[("RACKSHARE_FINGERPRINT", &fp)],
        &["whoami"],
    );
    assert!(
        env.status.success(),
        "RACKSHARE_FINGERPRINT: {}",
        stderr(&env)
    );

    let wrong = format!("SHA256:{}", "0".repeat(64));
    let refused = cli(
        &url,
        &s.admin_token,
        &[],
        &["--fingerprint", &wrong, "whoami"],
    );
    assert!(!refused.status.success());
    let e = stderr(&refused);
    assert!(
        e.contains("certificate not trusted") && e.contains(&fp),
        "a wrong pin is refused, naming the certificate seen: {e}"
    );
    let unpinned = cli(&url, &s.admin_token, &[], &["whoami"]);
    assert!(stderr(&unpinned).contains(&format!("--fingerprint {fp}")));

    // Never HSTS for the self-signed default: a browser must still be able to accept it.
    let r = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client")
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("strict-transport-security").is_none());

    // The certificate is made once: a restart shows the same one.
    assert!(s.stop());
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().expect("tmp"));
    let again = Service::spawn(dir, serve_args_in(&data, "0.0.0.0:0", &[]));
    assert_eq!(again.fingerprint.as_deref(), Some(fp.as_str()));
}

fn serve_args_in(data: &Path, listen: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "serve".into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--listen".into(),
        listen.into(),
        "--energy-interval-secs".into(),
        "0".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
fn a_token_is_not_sent_in_clear_to_a_host_beyond_loopback() {
    // 10.99.99.99 is never contacted: the refusal comes before any connection.
    let o = cli("http://10.99.99.99:9", "rs_secret", &[], &["whoami"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("refusing to send the API token") && e.contains("--insecure-http"),
        "{e}"
    );
    assert!(!e.contains("cannot reach"), "no connection was tried: {e}");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_under_the_same_listener() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = make_ca();
    let first = issue(dir.path(), &ca);
    let (cert, key) = (
        first.cert.display().to_string(),
        first.key.display().to_string(),
    );
    let s = Service::start_with(Db::Sqlite, &["--tls-cert", &cert, "--tls-key", &key]).await;
    assert_eq!(s.fingerprint.as_deref(), Some(first.fingerprint.as_str()));
    let second = issue(dir.path(), &ca);
    assert_ne!(first.fingerprint, second.fingerprint);
    let pid = s.child.as_ref().expect("child").id().to_string();
    let hup = || {
        let st = Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill");
        assert!(st.success());
    };
    hup();
    let mut served = false;
    for _ in 0..100 {
        let o = cli(
            &s.url,
            &s.admin_token,
            &[],
            &["--fingerprint", &second.fingerprint, "whoami"],
        );
        if o.status.success() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "the new certificate on the same address after SIGHUP"
    );
    let ca_file = second.ca.display().to_string();
    let trusted = cli(
        &s.url,
        &s.admin_token,
        &[],
        &["--ca-cert", &ca_file, "whoami"],
    );
    assert!(trusted.status.success(), "{}", stderr(&trusted));

    // A broken file keeps the current certificate.
    std::fs::write(&second.key, "not a key").expect("break");
    hup();
    let mut logged = false;
    for _ in 0..100 {
        if s.log_text().contains("TLS reload failed") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(logged, "{}", s.log_text());
    let still = cli(
        &s.url,
        &s.admin_token,
        &[],
        &["--fingerprint", &second.fingerprint, "whoami"],
    );
    assert!(still.status.success(), "{}", stderr(&still));
}

#[tokio::test]
async fn metrics_are_served_on_their_own_listener_only() {
    let s = Service::start(Db::Sqlite).await;
    let http = s.http();
    let member = http
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .expect("member");
    assert_eq!(member.status(), 404);
    let body = member.text().await.expect("body");
    assert!(body.contains("no such endpoint"), "JSON 404: {body}");
    let metrics_url = s.metrics_url.clone().expect("a metrics listener");
    assert!(
        metrics_url.starts_with("http://127.0.0.1:"),
        "{metrics_url}"
    );
    let m = http.get(&metrics_url).send().await.expect("metrics");
    assert_eq!(m.status(), 200);
    let text = m.text().await.expect("text");
    assert!(text.contains("rackshare_http_requests_total"), "{text}");
    assert!(text.contains("rackshare_http_connections_open"), "{text}");

    let off = Service::start_with(Db::Sqlite, &["--metrics-listen", "off"]).await;
    assert!(off.metrics_url.is_none(), "{:?}", off.banner);
}

/// The number a metric line shows, from the metrics listener.
async fn metric(s: &Service, name: &str) -> u64 {
    let url = s.metrics_url.clone().expect("metrics listener");
    let text = reqwest::get(url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((from, 0)))?;
    sock.connect(to).await
}

fn addr_of(s: &Service) -> SocketAddr {
    s.url
        .trim_start_matches("http://")
        .parse()
        .expect("member address")
}

/// Raises this test process's open-file limit (2,000 sockets of its own).
fn enough_descriptors() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    assert!(
        hard >= 4096,
        "the open-file hard limit is {hard}; this test needs 4096"
    );
}

/// Reads until the server closes the connection (Ok(true)), answers (Ok(false)), or `limit`.
async fn closed_by_server(c: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 512];
    match tokio::time::timeout(limit, c.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        // hyper may answer a timed-out head with 408 before closing.
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).contains(" 408 "),
        Err(_) => false,
    }
}

#[tokio::test]
async fn two_thousand_idle_connections_leave_room_for_a_real_request() {
    enough_descriptors();
    let s = Service::start_with(Db::Sqlite, &["--http-header-timeout-secs", "300"]).await;
    let to = addr_of(&s);
    let mut idle = Vec::with_capacity(2000);
    // 250 sources × 8 connections: under the per-source cap, like many members behind NATs.
    for i in 0..2000u32 {
        let from = [127, 1, (i / 250) as u8, (i % 250 + 1) as u8];
        idle.push(connect_from(from, to).await.expect("idle connection"));
    }
    let mut open = 0;
    for _ in 0..200 {
        open = metric(&s, "rackshare_http_connections_open").await;
        if open >= 2000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        open >= 2000,
        "the server holds the idle connections ({open})"
    );
    let r = s
        .http()
        .get(format!("{}/api/v1/whoami", s.url))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .expect("a legitimate request");
    assert_eq!(r.status(), 200);
    let who = cli(&s.url, &s.admin_token, &[], &["whoami"]);
    assert!(who.status.success(), "{}", stderr(&who));
    drop(idle);
}

#[tokio::test]
async fn half_sent_and_silent_connections_are_closed_after_the_header_timeout() {
    let s = Service::start_with(Db::Sqlite, &["--http-header-timeout-secs", "1"]).await;
    let to = addr_of(&s);
    let mut half = connect_from([127, 3, 0, 1], to).await.expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: rackshare\r\n")
        .await
        .expect("half a head");
    let mut silent = connect_from([127, 3, 0, 2], to).await.expect("connect");
    assert!(
        closed_by_server(&mut half, Duration::from_secs(60)).await,
        "a half-sent head is closed"
    );
    assert!(
        closed_by_server(&mut silent, Duration::from_secs(60)).await,
        "a connection that never sends is closed"
    );
    // A keep-alive connection that goes idle after an answer is closed too.
    let mut kept = connect_from([127, 3, 0, 3], to).await.expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: rackshare\r\n\r\n")
        .await
        .expect("request");
    let mut buf = vec![0u8; 4096];
    let n = kept.read(&mut buf).await.expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_by_server(&mut kept, Duration::from_secs(60)).await,
        "an idle keep-alive connection is closed"
    );
}

#[tokio::test]
async fn connections_are_capped_per_source_and_in_total() {
    let s = Service::start_with(
        Db::Sqlite,
        &[
            "--http-header-timeout-secs",
            "300",
            "--max-connections-per-source",
            "4",
            "--max-connections",
            "6",
        ],
    )
    .await;
    let to = addr_of(&s);
    let mut mine = Vec::new();
    for _ in 0..4 {
        mine.push(connect_from([127, 4, 0, 1], to).await.expect("connect"));
    }
    let mut fifth = connect_from([127, 4, 0, 1], to).await.expect("connect");
    assert!(
        closed_by_server(&mut fifth, Duration::from_secs(30)).await,
        "the fifth from one source is closed at once"
    );
    let mut others = Vec::new();
    for i in 2..4u8 {
        others.push(connect_from([127, 4, 0, i], to).await.expect("connect"));
    }
    let mut over = connect_from([127, 4, 0, 9], to).await.expect("connect");
    assert!(
        closed_by_server(&mut over, Duration::from_secs(30)).await,
        "the seventh in total is closed at once"
    );
    assert!(metric(&s, "rackshare_http_connections_refused_total").await >= 2);
    // The admitted ones are served.
    let c = &mut mine[0];
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: rackshare\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
