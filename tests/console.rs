//! Issue 16, the console broker, against a real IPMI BMC with Serial-over-LAN: OpenIPMI's
//! `ipmi_sim`, whose simulated chassis starts a QEMU VM at power-on and whose SOL payload is a
//! TCP client of the VM's serial port. The guest is a 91-byte boot sector that prints
//! `rackshare guest up` on COM1 when it starts and then answers every byte upper-cased, so
//! what comes back is the VM's answer and not an echo. A job on the machine gets the VM's
//! output (its banner after a reset) in its `job logs` without anyone opening the console.
//! The same console is reached over the WebSocket, through `rackshare console` and over SSH
//! (`serve --console-ssh-listen`, a group key), through the one broker.
//!
//! Heavy (boots a VM): run under `flock -o /tmp/rackshare-heavy.lock`.

mod common;

use common::{Db, Service};
use futures::{SinkExt, StreamExt};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// The guest: print the banner, then poll COM1, upper-case a..z, send it back, forever
/// (GNU as, `.code16`: set up DS/SS/SP, `lodsb` the banner out through a THRE-polling
/// `putc`, then the echo loop).
const ECHO_BOOT_SECTOR: &str = "fa31c08ed88ed0bc007cfbbe447cac84c07405e81d00ebf6bafd03eca80174f8baf803ec3c6172063c7a77022c20e80200ebe588c3bafd03eca82074fb88d8baf803eec30d0a7261636b73686172652067756573742075700d0a00";
/// What the guest prints when it starts.
const GUEST_BANNER: &str = "rackshare guest up";

fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is missing: install the Debian package `{package}` (scripts/test does)"
    );
}

fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("udp port")
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("tcp port")
            .port()
    }
}

/// `ipmi_sim` and the VM behind its SOL payload; both killed on drop.
struct SolBmc {
    _sim: testkit::ipmi_sol::IpmiSolSim,
    vm: Child,
    _dir: tempfile::TempDir,
    lan_port: u16,
    /// QEMU's human monitor (a unix socket in the temp dir).
    monitor: std::path::PathBuf,
}

impl Drop for SolBmc {
    fn drop(&mut self) {
        let _already_gone = self.vm.kill();
        let _reaped = self.vm.wait();
    }
}

const BMC_PASSWORD: &str = "s3cret-sol";

impl SolBmc {
    /// Resets the VM, as a machine that reboots under its job does: the guest prints its
    /// banner again. (ipmi_sim answers chassis power control with "invalid data field" and
    /// does not own this VM, so the job's own power cycle cannot be what resets it.)
    fn reset_vm(&self) {
        use std::os::unix::net::UnixStream;
        if let Ok(mut mon) = UnixStream::connect(&self.monitor) {
            let _ = mon.write_all(b"system_reset\n");
            // The monitor reads the line before the socket closes.
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn start() -> SolBmc {
        need("ipmi_sim", "openipmi");
        need("ipmitool", "ipmitool");
        need("qemu-system-x86_64", "qemu-system-x86");
        let dir = tempfile::tempdir().expect("tempdir");
        let code: Vec<u8> = (0..ECHO_BOOT_SECTOR.len() / 2)
            .map(|i| u8::from_str_radix(&ECHO_BOOT_SECTOR[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        let mut img = code;
        img.resize(510, 0);
        img.extend([0x55, 0xaa]);
        img.resize(1024 * 1024, 0);
        let disk = dir.path().join("echo.img");
        std::fs::write(&disk, img).expect("disk");
        let lan_port = free_port(true);
        let sol_port = free_port(false);
        let monitor = dir.path().join("monitor.sock");
        // The VM starts first: ipmi_sim connects to the serial port once, right after its
        // `startcmd` (measured: a VM launched by `startcmd` is often not listening yet, and that
        // session never carries a byte), so `startcmd` here only stands for the running VM.
        let vm = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", "32", "-display", "none", "-monitor"])
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=ide", disk.display()))
            .arg("-chardev")
            .arg(format!(
                "socket,id=s0,host=127.0.0.1,port={sol_port},server=on,wait=off"
            ))
            .args(["-serial", "chardev:s0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn qemu");
        let listening = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::net::TcpStream::connect(("127.0.0.1", sol_port)).is_ok()
        });
        assert!(listening, "QEMU's serial port never listened");
        std::thread::sleep(Duration::from_millis(500));
        let sim = testkit::ipmi_sol::IpmiSolSim::start(
            dir.path(),
            "rsconsole",
            lan_port,
            sol_port,
            BMC_PASSWORD,
        );
        let bmc = SolBmc {
            _sim: sim,
            vm,
            _dir: dir,
            lan_port,
            monitor,
        };
        // Up when it answers a power status (bounded).
        for _ in 0..60 {
            let out = Command::new("ipmitool")
                .args([
                    "-I",
                    "lanplus",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &lan_port.to_string(),
                ])
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
}

/// A fresh ed25519 key pair in the service's directory; the private key's path.
fn ssh_key(s: &Service, name: &str) -> std::path::PathBuf {
    let path = s.dir.path().join(format!("id_{name}"));
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

/// `ssh -p PORT vm@127.0.0.1` with `key`, typing `keys`; whether `want` came back within 30 s,
/// and everything the session printed.
fn ssh_console(port: u16, key: &std::path::Path, keys: &[u8], want: &str) -> (bool, String) {
    use std::io::Read;
    let mut child = Command::new("ssh")
        .args(["-tt", "-p", &port.to_string(), "-i"])
        .arg(key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "vm@127.0.0.1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    for stream in [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut stream = stream;
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
    // Time to log in and take the seat before the keys.
    std::thread::sleep(Duration::from_secs(2));
    let _ = stdin.write_all(keys);
    let _ = stdin.flush();
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = || String::from_utf8_lossy(&seen.lock().expect("lock")).into_owned();
    let answered = loop {
        if text().contains(want) {
            break true;
        }
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited || Instant::now() > deadline {
            // Whatever was on its way out still lands.
            std::thread::sleep(Duration::from_millis(300));
            break text().contains(want);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    (answered, text())
}

fn token_for(s: &Service, user: &str) -> String {
    s.cli_json(&["token", "create", "--user", user])["token"]
        .as_str()
        .expect("token")
        .to_string()
}

async fn connect(s: &Service, token: &str, machine: &str) -> Result<Ws, u16> {
    let url = format!(
        "{}/api/v1/machines/{machine}/console",
        s.url.replacen("http", "ws", 1)
    );
    let mut req = url.as_str().into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let addr = s.url.trim_start_matches("http://").trim_end_matches('/');
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket: {e}"),
    }
}

/// Reads until the output holds `want` (bounded: 60 s, so a broken broker fails, not hangs).
async fn read_until(s: &Service, ws: &mut Ws, want: &str) -> String {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !String::from_utf8_lossy(&seen).contains(want) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.extend_from_slice(&b),
            Ok(Some(Ok(Message::Text(t)))) => {
                assert!(
                    !t.contains("\"closed\""),
                    "closed while waiting for {want:?}: {t}"
                );
            }
            Ok(Some(Ok(_))) => {}
            other => panic!(
                "no {want:?} (got {other:?}); output so far: {:?}; the service's console log:\n{}",
                String::from_utf8_lossy(&seen),
                console_log_lines(s)
            ),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

fn console_log_lines(s: &Service) -> String {
    s.log_text()
        .lines()
        .filter(|l| l.contains("console"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The next JSON control message (output skipped), bounded.
async fn next_control(ws: &mut Ws) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).expect("json"),
            Ok(Some(Ok(_))) => {}
            other => panic!("no control message: {other:?}"),
        }
    }
}

async fn take(ws: &mut Ws, me: &str) {
    ws.send(Message::Text(r#"{"type":"take"}"#.into()))
        .await
        .expect("take");
    loop {
        let c = next_control(ws).await;
        if c["type"] == "control" && c["writer"] == me {
            return;
        }
        assert_ne!(c["type"], "error", "take refused: {c}");
    }
}

#[tokio::test]
async fn console_over_websocket_ssh_and_cli_to_a_real_sol_bmc() {
    need("ssh", "openssh-client");
    need("ssh-keygen", "openssh-client");
    let bmc = SolBmc::start();
    let ssh_port = free_port(false);
    let s = Service::start_with(
        Db::Sqlite,
        &["--console-ssh-listen", &format!("127.0.0.1:{ssh_port}")],
    )
    .await;
    s.cli(&["group", "add", "alpha"]);
    s.cli(&["group", "add", "beta"]);
    s.cli(&["user", "add", "ann", "--role", "member", "--group", "alpha"]);
    s.cli(&["user", "add", "bob", "--role", "member", "--group", "beta"]);
    s.cli(&["user", "add", "tess", "--role", "technician"]);
    let (ann, bob, tess) = (
        token_for(&s, "ann"),
        token_for(&s, "bob"),
        token_for(&s, "tess"),
    );
    let pw = common::write(s.dir.path(), "bmc-pw", BMC_PASSWORD);
    s.cli(&[
        "machine",
        "add",
        "vm",
        "--mac",
        "52:54:00:16:00:01",
        "--bmc",
        &format!("ipmi://127.0.0.1:{}", bmc.lan_port),
        "--bmc-user",
        "admin",
        "--bmc-password-file",
        pw.to_str().expect("path"),
    ]);
    s.cli(&["machine", "state", "vm", "available"]);

    // A job on the machine, nobody watching its console: the job holds the console session
    // open and keeps what the machine printed. ipmi_sim refuses the job's power cycle, so the
    // job fails after its retries, and a failed job's log ends with the console's last lines.
    let job = s.cli_json(&["job", "start", "vm", "--kind", "inspect"]);
    let job_id = job["id"].as_i64().expect("job id").to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let j = s.cli_json(&["job", "show", &job_id]);
        if matches!(
            j["state"].as_str(),
            Some("failed" | "succeeded" | "cancelled")
        ) {
            assert_eq!(j["state"], "failed", "{j}");
            break;
        }
        assert!(Instant::now() < deadline, "the job never ended: {j}");
        if j["state"] == "running" {
            bmc.reset_vm();
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    // A viewer within the session's 5 s linger keeps this one SOL session: ipmi_sim carries no
    // byte on a SOL session that follows an ended one (decision 47), so the rest of this test
    // shares it.
    let mut t = connect(&s, &tess, "vm").await.expect("tess connects");
    let mut logs = String::new();
    for _ in 0..40 {
        logs = s.cli(&["job", "logs", &job_id]);
        if logs.contains(GUEST_BANNER) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        logs.contains("-- the machine's console, last lines") && logs.contains(GUEST_BANNER),
        "the failed job's log has no console lines: {logs}\n{}",
        console_log_lines(&s)
    );
    // Another group's member: 404, as for the job itself.
    let status = reqwest::Client::new()
        .get(format!("{}/api/v1/jobs/{job_id}/console", s.url))
        .bearer_auth(&bob)
        .send()
        .await
        .expect("console tail")
        .status();
    assert_eq!(status.as_u16(), 404, "another group read the job's console");
    // The failed power cycles left the BMC unhealthy; a status that succeeds clears it, and
    // staff put the machine back.
    s.cli(&["power", "vm", "status"]);
    s.cli(&["machine", "state", "vm", "available"]);

    // No lease yet: the member is refused (the machine is not theirs to see).
    assert!(connect(&s, &ann, "vm").await.is_err());
    let lease = s.cli_as(
        &ann,
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
    let lease: serde_json::Value = serde_json::from_slice(&lease.stdout).expect("lease json");
    let lease_id = lease["id"].as_i64().expect("id").to_string();

    // Another group's member is refused before the upgrade, as for any of its machines.
    assert_eq!(connect(&s, &bob, "vm").await.err(), Some(404));

    // The member types and the VM answers.
    let mut a = connect(&s, &ann, "vm").await.expect("ann connects");
    take(&mut a, "ann").await;
    a.send(Message::Binary(b"hello\r".to_vec().into()))
        .await
        .expect("keys");
    read_until(&s, &mut a, "HELLO").await;
    // ipmitool's own escape is not reachable from the console: `~.` after a newline reaches
    // the VM (as `~.`) and the session stays.
    a.send(Message::Binary(b"\r~.x\r".to_vec().into()))
        .await
        .expect("keys");
    read_until(&s, &mut a, "~.X").await;

    // A second viewer (the technician, connected since the job) sees the same output; one that
    // never reads does not hold them up.
    let _stalled = connect(&s, &s.admin_token, "vm")
        .await
        .expect("admin connects");
    for i in 0..50 {
        let line = format!("line{i:03}{}\r", "z".repeat(200));
        a.send(Message::Binary(line.into_bytes().into()))
            .await
            .expect("keys");
    }
    a.send(Message::Binary(b"both\r".to_vec().into()))
        .await
        .expect("keys");
    read_until(&s, &mut a, "BOTH").await;
    read_until(&s, &mut t, "BOTH").await;

    // Power commands still go through while the console is open.
    let out = s.cli_as(&tess, &["power", "vm", "status"]);
    assert!(
        out.status.success(),
        "power status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .to_lowercase()
        .contains("on"));

    // Over SSH with a key of the group's: the same console, the VM answers; another group's
    // key is refused in words.
    a.send(Message::Text(r#"{"type":"give"}"#.into()))
        .await
        .expect("give");
    let ann_key = ssh_key(&s, "ann");
    let bob_key = ssh_key(&s, "bob");
    let add = |token: &str, group: &str, key: &std::path::Path| {
        let pubkey = format!("{}.pub", key.display());
        let out = s.cli_as(
            token,
            &["group", "ssh-key", "add", group, "--file", &pubkey],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    add(&ann, "alpha", &ann_key);
    add(&bob, "beta", &bob_key);
    let (answered, _) = ssh_console(ssh_port, &ann_key, b"over ssh\r", "OVER SSH");
    assert!(answered, "no answer from the VM over SSH");
    let (answered, said) = ssh_console(ssh_port, &bob_key, b"intruder\r", "INTRUDER");
    assert!(!answered, "another group's key reached the console: {said}");
    assert!(
        said.contains("rackshare: vm:"),
        "the refusal is in words: {said}"
    );

    // The CLI, with piped input: sends it, prints the answer, exits after 2 s of quiet.
    let mut cli = Command::new(common::BIN)
        .args(["console", "vm"])
        .env("RACKSHARE_URL", &s.url)
        .env("RACKSHARE_TOKEN", &ann)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rackshare console");
    {
        let mut stdin = cli.stdin.take().expect("stdin");
        // Give the CLI time to take the seat before the keys arrive (it sends take first).
        std::thread::sleep(Duration::from_secs(2));
        stdin.write_all(b"from cli\r").expect("cli input");
    }
    let out = cli.wait_with_output().expect("cli ran");
    assert!(
        out.status.success(),
        "console cli: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("FROM CLI"),
        "cli output: {:?} / {:?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The lease's recording holds the VM's answers: its member reads it (polled, bounded: the
    // recorder writes in batches), another group's member gets 404, the technician reads it.
    let log_of = |token: &str| s.cli_as(token, &["lease", "console-log", &lease_id]);
    let mut recorded = String::new();
    for _ in 0..40 {
        let out = log_of(&ann);
        assert!(
            out.status.success(),
            "console-log: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        recorded = String::from_utf8_lossy(&out.stdout).into_owned();
        if recorded.contains("FROM CLI") {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for answer in ["HELLO", "BOTH", "OVER SSH", "FROM CLI"] {
        assert!(
            recorded.contains(answer),
            "no {answer:?} in the lease's console log: {recorded:?}"
        );
    }
    let out = log_of(&bob);
    assert!(!out.status.success(), "another group read the console log");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 404"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = log_of(&tess);
    assert!(String::from_utf8_lossy(&out.stdout).contains("HELLO"));
    let metrics = reqwest::get(s.metrics_url.clone().expect("metrics listener"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let recorded: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rackshare_console_recorded_bytes_total "))
        .and_then(|n| n.trim().parse().ok())
        .expect("rackshare_console_recorded_bytes_total");
    assert!(recorded > 0, "{metrics}");
    assert!(metrics.contains("rackshare_console_recording_dropped_total"));

    // Ending the lease cuts the member's session (the technician's stays) and refuses new ones.
    let out = s.cli_as(&ann, &["lease", "release", &lease_id]);
    assert!(
        out.status.success(),
        "release: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    loop {
        let c = next_control(&mut a).await;
        if c["type"] == "closed" {
            break;
        }
    }
    assert!(
        connect(&s, &ann, "vm").await.is_err(),
        "a member without a lease is refused"
    );

    // After the lease: the member may no longer read its console log; the technician may.
    let out = log_of(&ann);
    assert!(!out.status.success(), "the console log outlived the lease");
    let out = log_of(&tess);
    assert!(String::from_utf8_lossy(&out.stdout).contains("HELLO"));

    let events = s.cli_json(&["events"]);
    let text = events.to_string();
    for action in [
        "console.open",
        "console.control",
        "console.close",
        "lease.console_log",
    ] {
        assert!(text.contains(action), "no {action} in the audit log");
    }
    assert!(
        !text.contains(BMC_PASSWORD),
        "the BMC password is in the audit log"
    );
    drop(t);
}
