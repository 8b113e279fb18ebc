//! Issue 16 with sites (issue 17): the instance of a machine's site brokers its console and
//! the others proxy to it. Two instances on the test PostgreSQL, of sites `a` and `b`; an
//! `ipmi_sim` BMC whose Serial-over-LAN is a TCP client of a serial endpoint this test serves
//! (it answers every byte upper-cased, so what comes back is the "machine"'s answer). A member
//! on instance b reaches the site-a machine's console over the WebSocket, SSH and the CLI; only
//! instance a ever runs `ipmitool` (every run is logged with its parent's pid); another group is
//! refused; tickets between instances are checked (a forged, replayed or expired one refused and
//! audited); the lease's end cuts the proxied session; with a killed, the refusal says so.
//!
//! Heavy (PostgreSQL, ipmi_sim): run under `flock /tmp/rackshare-heavy.lock`.

mod common;

use common::Service;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

const BMC_PASSWORD: &str = "s3cret-sites";
const TICKET_HEADER: &str = "x-rackshare-console-ticket";

fn tool(tool: &str, package: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !path.is_empty(),
        "`{tool}` is missing: install the Debian package `{package}` (scripts/test does)"
    );
    path
}

fn free_port(udp: bool) -> u16 {
    if udp {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        s.local_addr().expect("addr").port()
    } else {
        let s = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
        s.local_addr().expect("addr").port()
    }
}

/// The serial endpoint: every connection's bytes come back with a..z upper-cased.
fn serve_serial() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("serial port");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    buf[..n].make_ascii_uppercase();
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// `ipmi_sim` with SOL to the serial endpoint; killed on drop (its whole process group).
struct SolBmc {
    _sim: testkit::ipmi_sol::IpmiSolSim,
    _dir: tempfile::TempDir,
    lan_port: u16,
}

fn start_bmc(ipmitool: &str) -> SolBmc {
    let dir = tempfile::tempdir().expect("tempdir");
    let sol_port = serve_serial();
    let lan_port = free_port(true);
    let sim = testkit::ipmi_sol::IpmiSolSim::start(
        dir.path(),
        "rssites",
        lan_port,
        sol_port,
        BMC_PASSWORD,
    );
    let bmc = SolBmc {
        _sim: sim,
        _dir: dir,
        lan_port,
    };
    for _ in 0..60 {
        let out = Command::new(ipmitool)
            .args(["-I", "lanplus", "-H", "127.0.0.1", "-p"])
            .arg(lan_port.to_string())
            .args(["-U", "admin", "-E", "-C", "3", "chassis", "power", "status"])
            .env("IPMI_PASSWORD", BMC_PASSWORD)
            .output()
            .expect("ipmitool");
        if String::from_utf8_lossy(&out.stdout).contains("is on") {
            return bmc;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("ipmi_sim did not answer a power status with 'on'");
}

/// An instance on `db` with the first one's secret key.
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
    let data = data.display().to_string();
    let mut args: Vec<String> = [
        "serve",
        "--data-dir",
        &data,
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        db,
        "--energy-interval-secs",
        "0",
        "--log-level",
        "debug",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Service::spawn(dir, args)
}

async fn connect_with(
    s: &Service,
    header: (&'static str, String),
    machine: &str,
) -> Result<Ws, (u16, String)> {
    let url = format!(
        "{}/api/v1/machines/{machine}/console",
        s.url.replacen("http", "ws", 1)
    );
    let mut req = url.as_str().into_client_request().expect("request");
    req.headers_mut()
        .insert(header.0, header.1.parse().expect("header"));
    let addr = s.url.trim_start_matches("http://").trim_end_matches('/');
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            Err((
                resp.status().as_u16(),
                String::from_utf8_lossy(body).into_owned(),
            ))
        }
        Err(e) => panic!("websocket: {e}"),
    }
}

async fn connect(s: &Service, token: &str, machine: &str) -> Result<Ws, (u16, String)> {
    connect_with(s, ("authorization", format!("Bearer {token}")), machine).await
}

/// Reads until the output holds `want` (bounded, so a broken proxy fails rather than hangs).
async fn read_until(ws: &mut Ws, want: &str) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&seen).contains(want) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.extend_from_slice(&b),
            Ok(Some(Ok(Message::Text(t)))) => {
                assert!(
                    !t.contains("\"closed\""),
                    "closed waiting for {want:?}: {t}"
                )
            }
            Ok(Some(Ok(_))) => {}
            other => panic!(
                "no {want:?} (got {other:?}); so far {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
}

/// Takes control and types `keys`; the answer `want` must come back.
async fn type_and_see(ws: &mut Ws, keys: &str, want: &str) {
    ws.send(Message::Text(r#"{"type":"take"}"#.into()))
        .await
        .expect("take");
    ws.send(Message::Binary(keys.as_bytes().to_vec().into()))
        .await
        .expect("keys");
    read_until(ws, want).await;
}

/// Kills, on drop, every `ipmitool` the wrapper started that still runs: a killed instance's
/// `sol activate` outlives it (its own kill-on-drop never ran).
struct Orphans(std::path::PathBuf);

impl Drop for Orphans {
    fn drop(&mut self) {
        let log = std::fs::read_to_string(&self.0).unwrap_or_default();
        for pid in log
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<i32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("ipmitool") {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _gone = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// The parent pids of every `ipmitool` run so far.
fn ipmitool_parents(log: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// `ssh -tt -p PORT MACHINE@127.0.0.1` typing `keys`; all it printed once `want` came back (or
/// it ended, or 30 s passed).
fn ssh_console(port: u16, key: &std::path::Path, machine: &str, keys: &[u8], want: &str) -> String {
    let mut child = Command::new("ssh")
        .args(["-tt", "-p", &port.to_string(), "-i"])
        .arg(key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg(format!("{machine}@127.0.0.1"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let outs: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().expect("stdout")),
        Box::new(child.stderr.take().expect("stderr")),
    ];
    for mut stream in outs {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        });
    }
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::sleep(Duration::from_secs(2));
    let _ = stdin.write_all(keys);
    let _ = stdin.flush();
    let text = || String::from_utf8_lossy(&seen.lock().expect("lock")).into_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text().contains(want)
        && !matches!(child.try_wait(), Ok(Some(_)))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    text()
}

fn ssh_key(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(format!("id_{name}"));
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// A man in the middle between the instances: forwards one connection to `to`, keeping the
/// ticket it carried.
async fn relay_once(to: String) -> (u16, tokio::task::JoinHandle<String>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("relay");
    let port = l.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let (mut inbound, _) = l.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            inbound.read_exact(&mut byte).await.expect("head");
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let ticket = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(TICKET_HEADER)
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        let mut outbound = tokio::net::TcpStream::connect(to).await.expect("to a");
        outbound.write_all(&head).await.expect("forward head");
        tokio::spawn(async move {
            let _done = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
        ticket
    });
    (port, task)
}

fn instance_id(s: &Service) -> String {
    std::fs::read_to_string(s.data_dir().join("instance-id"))
        .expect("instance id")
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consoles_of_another_site_are_brokered_by_its_instance() {
    tool("ssh", "openssh-client");
    let ipmitool = tool("ipmitool", "ipmitool");
    // Every `ipmitool` any instance runs goes through this wrapper, which logs its parent.
    let bin = tempfile::tempdir().expect("bin dir");
    let runs = bin.path().join("runs.log");
    let wrapper = bin.path().join("ipmitool");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$PPID $$ $*\" >> {}\nexec {ipmitool} \"$@\"\n",
            runs.display()
        ),
    )
    .expect("wrapper");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::env::set_var("PATH", path);
    let _orphans = Orphans(runs.clone());
    let bmc = start_bmc(&ipmitool);

    let db = common::fresh_postgres().await;
    let mut first = instance_first(&db);
    let admin = first.admin_token.clone();
    let key_dir = first.data_dir();
    for args in [
        &["site", "add", "a"][..],
        &["site", "add", "b"],
        &["group", "add", "alpha"],
        &["group", "add", "beta"],
        &["user", "add", "ann", "--role", "member", "--group", "alpha"],
        &["user", "add", "bob", "--role", "member", "--group", "beta"],
        &["user", "add", "tess", "--role", "technician"],
    ] {
        first.cli(args);
    }
    let pw = common::write(first.dir.path(), "bmc-pw", BMC_PASSWORD);
    first.cli(&[
        "machine",
        "add",
        "ma",
        "--mac",
        "52:54:00:16:10:01",
        "--site",
        "a",
        "--bmc",
        &format!("ipmi://127.0.0.1:{}", bmc.lan_port),
        "--bmc-user",
        "admin",
        "--bmc-password-file",
        pw.to_str().expect("path"),
    ]);
    first.cli(&["machine", "state", "ma", "available"]);
    let tokens: Vec<String> = ["ann", "bob", "tess"]
        .iter()
        .map(|u| {
            first.cli_json(&["token", "create", "--user", u])["token"]
                .as_str()
                .expect("token")
                .to_string()
        })
        .collect();
    let (ann, bob, tess) = (&tokens[0], &tokens[1], &tokens[2]);
    let lease = first.cli_as(
        ann,
        &[
            "lease",
            "create",
            "--count",
            "1",
            "--duration",
            "2h",
            "-o",
            "json",
        ],
    );
    assert!(
        lease.status.success(),
        "{}",
        String::from_utf8_lossy(&lease.stderr)
    );
    let lease: Value = serde_json::from_slice(&lease.stdout).expect("lease json");
    let lease_id = lease["id"].as_i64().expect("id").to_string();
    let keys = tempfile::tempdir().expect("keys");
    let ann_key = ssh_key(keys.path(), "ann");
    let pubkey = format!("{}.pub", ann_key.display());
    let out = first.cli_as(
        ann,
        &["group", "ssh-key", "add", "alpha", "--file", &pubkey],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tess_key = ssh_key(keys.path(), "tess");
    first.cli(&[
        "user",
        "ssh-key",
        "add",
        "tess",
        "--file",
        &format!("{}.pub", tess_key.display()),
    ]);
    assert!(first.stop(), "the first instance stops cleanly");

    let ssh_port = free_port(false);
    let mut a = instance(&db, &key_dir, &["--site", "a"]);
    let b = instance(
        &db,
        &key_dir,
        &[
            "--site",
            "b",
            "--console-ssh-listen",
            &format!("127.0.0.1:{ssh_port}"),
        ],
    );
    a.admin_token = admin.clone();
    let mut b = b;
    b.admin_token = admin;
    let pid_a = a.child.as_ref().expect("a runs").id();
    let pid_b = b.child.as_ref().expect("b runs").id();

    // A member on instance b types into the site-a machine's console; it answers.
    let mut ws = connect(&b, ann, "ma").await.expect("ann through b");
    type_and_see(&mut ws, "hello\r", "HELLO").await;
    // Over SSH to b's door, with the group's key (the WebSocket gives the seat up first).
    ws.send(Message::Text(r#"{"type":"give"}"#.into()))
        .await
        .expect("give");
    let said = ssh_console(ssh_port, &ann_key, "ma", b"over ssh\r", "OVER SSH");
    assert!(
        said.contains("OVER SSH"),
        "no answer over SSH through b: {said}"
    );
    // Through the CLI against b (piped: exits after 2 s of quiet).
    let mut cli = Command::new(common::BIN)
        .args(["console", "ma"])
        .env("RACKSHARE_URL", &b.url)
        .env("RACKSHARE_TOKEN", ann)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rackshare console");
    {
        let mut stdin = cli.stdin.take().expect("stdin");
        std::thread::sleep(Duration::from_secs(2));
        stdin.write_all(b"from cli\r").expect("cli input");
    }
    let out = cli.wait_with_output().expect("cli ran");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("FROM CLI"),
        "cli: {:?} / {:?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Only instance a ran ipmitool; b never did.
    let parents = ipmitool_parents(&runs);
    assert!(
        parents.contains(&pid_a),
        "instance a opened the SOL: {parents:?}"
    );
    assert!(
        !parents.contains(&pid_b),
        "instance b ran ipmitool: {parents:?}"
    );

    // Another group's member is refused through b, as for any machine not theirs.
    assert_eq!(connect(&b, bob, "ma").await.err().map(|e| e.0), Some(404));

    // Tickets between instances: a man in the middle keeps the one b sends to a.
    let pool = sqlx::postgres::PgPool::connect(&db).await.expect("db");
    let a_addr = a
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let (relay_port, captured) = relay_once(a_addr).await;
    let set_url = |url: String| {
        let (pool, id) = (pool.clone(), instance_id(&a));
        async move {
            sqlx::query("UPDATE instances SET api_url = $1 WHERE id = $2")
                .bind(url)
                .bind(id)
                .execute(&pool)
                .await
                .expect("api_url")
        }
    };
    set_url(format!("http://127.0.0.1:{relay_port}")).await;
    let mut through = connect(&b, tess, "ma")
        .await
        .expect("tess through the relay");
    type_and_see(&mut through, "relayed\r", "RELAYED").await;
    let ticket = captured.await.expect("relay");
    assert!(!ticket.is_empty(), "b sent a ticket");
    set_url(a.url.trim_end_matches('/').to_string()).await;
    // Replayed: refused, said so.
    let e = connect_with(&a, (TICKET_HEADER, ticket.clone()), "ma")
        .await
        .expect_err("replay refused");
    assert!(e.0 == 401 && e.1.contains("already used"), "{e:?}");
    // Tampered (one character of its body changed): the signature no longer matches.
    let mut forged: Vec<char> = ticket.chars().collect();
    forged[10] = if forged[10] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    let e = connect_with(&a, (TICKET_HEADER, forged), "ma")
        .await
        .expect_err("forgery refused");
    assert!(e.0 == 401 && e.1.contains("signature"), "{e:?}");
    // Only the console route reads tickets: elsewhere it authenticates nobody.
    let resp = a
        .http()
        .get(format!("{}/api/v1/machines", a.url))
        .header(TICKET_HEADER, &ticket)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 401);
    // Expired: past its 10 s (checked before it is found used).
    tokio::time::sleep(Duration::from_secs(11)).await;
    let e = connect_with(&a, (TICKET_HEADER, ticket.clone()), "ma")
        .await
        .expect_err("expired refused");
    assert!(e.0 == 401 && e.1.contains("expired"), "{e:?}");
    drop(through);

    // The lease ends: a cuts the member's session, and the proxy on b closes with it.
    let out = a.cli_as(ann, &["lease", "release", &lease_id]);
    assert!(
        out.status.success(),
        "release: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains("\"closed\"") => break t.to_string(),
            Ok(Some(Ok(_))) => {}
            other => panic!("the proxied session was not cut: {other:?}"),
        }
    };
    assert!(reason.contains("lease"), "{reason}");

    // Audited on both sides: the proxy's `console.proxy`, a's open and the refused tickets.
    let events = b
        .cli_json(&["events", "--machine", "ma", "--limit", "500"])
        .to_string();
    for action in ["console.proxy", "console.open", "console.ticket"] {
        assert!(events.contains(action), "no {action} in the audit log");
    }
    assert!(
        events.contains("via instance"),
        "a's console.open names the proxy"
    );
    assert!(!events.contains(BMC_PASSWORD));

    // Instance a killed: b's refusal says the site has no live instance, on every door.
    a.kill9();
    let e = connect(&b, tess, "ma").await.expect_err("refused");
    assert_eq!(e.0, 503, "{e:?}");
    assert!(
        e.1.contains("site a has no live instance; its consoles are unavailable until one starts"),
        "{e:?}"
    );
    let said = ssh_console(ssh_port, &tess_key, "ma", b"x\r", "no live instance");
    assert!(said.contains("site a has no live instance"), "ssh: {said}");
    let out = b.cli_as(tess, &["console", "ma"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("site a has no live instance"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing of b's ever touched the BMC.
    assert!(!ipmitool_parents(&runs).contains(&pid_b));
}

/// The first instance: it makes the admin, the secret key the others copy, the shared secrets.
fn instance_first(db: &str) -> Service {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data").display().to_string();
    let args = [
        "serve",
        "--data-dir",
        &data,
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        db,
    ];
    Service::spawn(dir, args.iter().map(|s| s.to_string()).collect())
}
