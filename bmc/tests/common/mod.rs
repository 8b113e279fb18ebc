//! Test harness: real emulators (sushy-tools, pyghmi) as child processes killed on drop, and a
//! tiny HTTP server/proxy that counts concurrency and injects faults. Everything on 127.0.0.1.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where `tool` lives: `$RACKSHARE_VENV/bin`, `<repo>/.venv/bin`, then PATH. Fails loudly.
pub fn venv_tool(tool: &str) -> PathBuf {
    let mut candidates = Vec::new();
    if let Ok(v) = std::env::var("RACKSHARE_VENV") {
        candidates.push(PathBuf::from(v).join("bin").join(tool));
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(".venv/bin")
            .join(tool),
    );
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            candidates.push(dir.join(tool));
        }
    }
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "`{tool}` not found in $RACKSHARE_VENV/bin, <repo>/.venv/bin or PATH. Install the BMC \
             emulators: /usr/bin/python3 -m venv --system-site-packages .venv && \
             .venv/bin/pip install sushy-tools pyghmi (scripts/test does this), or set RACKSHARE_VENV"
        )
    })
}

/// A free TCP port on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (and reaped) on drop; its output goes to a log file.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: Command, log: PathBuf) -> Proc {
        Proc::spawn_with_stdin(name, cmd, log, Stdio::null())
    }

    pub fn spawn_with_stdin(name: &str, mut cmd: Command, log: PathBuf, stdin: Stdio) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(stdin)
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child: Some(child),
            log,
            name: name.to_string(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!(
                    "{} exited early ({status}):\n{}",
                    self.name,
                    self.log_text()
                );
            }
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until a TCP port accepts connections, within `deadline`.
pub fn wait_tcp(proc_: &mut Proc, port: u16, deadline: Duration) {
    let start = Instant::now();
    while start.elapsed() < deadline {
        proc_.assert_running();
        if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .is_ok()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{} did not listen on {port} within {deadline:?}:\n{}",
        proc_.name,
        proc_.log_text()
    );
}

/// One fake system for sushy-tools' fake driver.
pub struct FakeSystem {
    pub uuid: &'static str,
    pub name: &'static str,
    pub power: &'static str,
    pub macs: Vec<&'static str>,
}

pub fn default_system() -> FakeSystem {
    FakeSystem {
        uuid: "4f7f7d1c-7a3a-4c59-9a6e-5a1b2c3d4e5f",
        name: "node1",
        power: "Off",
        macs: vec!["52:54:00:12:34:01", "52:54:00:12:34:02"],
    }
}

/// Options for a sushy-emulator instance.
#[derive(Default)]
pub struct SushyOpts {
    pub users: Vec<(String, String)>,
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// sushy-emulator with the fake driver, on 127.0.0.1 and a free port, killed on drop.
pub struct Sushy {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub proc_: Proc,
    pub tls: bool,
}

impl Sushy {
    pub fn start(systems: &[FakeSystem], opts: SushyOpts) -> Sushy {
        let exe = venv_tool("sushy-emulator");
        let dir = tempfile::tempdir().unwrap();
        let port = free_tcp_port();
        let mut conf = String::new();
        conf.push_str("SUSHY_EMULATOR_FAKE_DRIVER = True\n");
        conf.push_str(&format!(
            "SUSHY_EMULATOR_STATE_DIR = {:?}\n",
            dir.path().join("state").display().to_string()
        ));
        conf.push_str("SUSHY_EMULATOR_FAKE_SYSTEMS = [\n");
        for s in systems {
            let nics: Vec<String> = s
                .macs
                .iter()
                .map(|m| format!("{{'mac': '{m}', 'ip': '10.0.0.1'}}"))
                .collect();
            conf.push_str(&format!(
                "  {{'uuid': '{}', 'name': '{}', 'power_state': '{}', 'nics': [{}]}},\n",
                s.uuid,
                s.name,
                s.power,
                nics.join(", ")
            ));
        }
        conf.push_str("]\n");
        if !opts.users.is_empty() {
            let htpasswd = dir.path().join("htpasswd");
            let python = exe.parent().unwrap().join("python3");
            let mut lines = String::new();
            for (user, pass) in &opts.users {
                // bcrypt is what sushy-tools accepts; the password goes through stdin.
                let mut child = Command::new(&python)
                    .args(["-c", "import bcrypt,sys; print(bcrypt.hashpw(sys.stdin.read().encode(), bcrypt.gensalt(4)).decode())"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(pass.as_bytes())
                    .unwrap();
                let out = child.wait_with_output().unwrap();
                assert!(out.status.success(), "bcrypt hashing failed");
                lines.push_str(&format!(
                    "{user}:{}\n",
                    String::from_utf8(out.stdout).unwrap().trim()
                ));
            }
            std::fs::write(&htpasswd, lines).unwrap();
            conf.push_str(&format!(
                "SUSHY_EMULATOR_AUTH_FILE = {:?}\n",
                htpasswd.display().to_string()
            ));
        }
        let conf_path = dir.path().join("sushy.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut cmd = Command::new(&exe);
        cmd.arg("--config")
            .arg(&conf_path)
            .args(["-i", "127.0.0.1", "-p", &port.to_string()]);
        if let Some((cert, key)) = &opts.tls {
            cmd.arg("--ssl-certificate")
                .arg(cert)
                .arg("--ssl-key")
                .arg(key);
        }
        let mut proc_ = Proc::spawn("sushy-emulator", cmd, dir.path().join("sushy.log"));
        wait_tcp(&mut proc_, port, Duration::from_secs(30));
        Sushy {
            dir,
            port,
            proc_,
            tls: opts.tls.is_some(),
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls {
            "redfish+https"
        } else {
            "redfish+http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The emulator's own view of a System (read directly, not through the crate).
    pub async fn system_json(&self, uuid: &str, auth: Option<(&str, &str)>) -> serde_json::Value {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut req = client.get(format!(
            "http://127.0.0.1:{}/redfish/v1/Systems/{uuid}",
            self.port
        ));
        if let Some((u, p)) = auth {
            req = req.basic_auth(u, Some(p));
        }
        req.send().await.unwrap().json().await.unwrap()
    }
}

// ---- a tiny HTTP/1.1 server: enough for a mock BMC and a counting proxy ----------------------

/// A parsed request.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub raw_head: String,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response to write.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: v.to_string().into_bytes(),
        }
    }

    pub fn with_header(mut self, k: &str, v: &str) -> Response {
        self.headers.push((k.into(), v.into()));
        self
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} X\r\n", self.status);
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Request {
        method,
        path,
        headers,
        body,
        raw_head: head,
    })
}

/// Counters kept by [`serve`].
#[derive(Default)]
pub struct Stats {
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub total: AtomicUsize,
    pub log: Mutex<Vec<(String, String)>>,
}

impl Stats {
    pub fn max(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p)| m == method && p.contains(path_contains))
            .count()
    }
}

type Handler = Arc<dyn Fn(Request) -> futures_like::BoxFut + Send + Sync>;

pub mod futures_like {
    use std::future::Future;
    use std::pin::Pin;
    pub type BoxFut = Pin<Box<dyn Future<Output = super::Response> + Send>>;
}

/// Serves HTTP on 127.0.0.1 (one request per connection), counting requests in flight.
/// Returns the port, the stats and the task (abort it to stop).
pub async fn serve(handler: Handler) -> (u16, Arc<Stats>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stats = Arc::new(Stats::default());
    let st = stats.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let st = st.clone();
            tokio::spawn(async move {
                let Some(req) = read_request(&mut sock).await else {
                    return;
                };
                let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                st.max_in_flight.fetch_max(now, Ordering::SeqCst);
                st.total.fetch_add(1, Ordering::SeqCst);
                st.log
                    .lock()
                    .unwrap()
                    .push((req.method.clone(), req.path.clone()));
                let resp = handler(req).await;
                // Counted as done before the client can see the answer.
                st.in_flight.fetch_sub(1, Ordering::SeqCst);
                let _ = sock.write_all(&resp.to_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (port, stats, task)
}

/// What the proxy does to each request.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Forward unchanged.
    None,
    /// Wait, then forward.
    Delay(Duration),
    /// Answer this status without forwarding (for all methods, or one).
    Status(u16, Option<&'static str>),
}

/// Forwards one request to 127.0.0.1:`upstream` and returns the whole response.
pub async fn forward(upstream: u16, req: &Request) -> Response {
    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
        return Response::json(
            502,
            &serde_json::json!({"error": {"message": "proxy: upstream down"}}),
        );
    };
    let mut head = String::new();
    for (i, line) in req.raw_head.split("\r\n").enumerate() {
        if i > 0 && line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&req.body);
    if up.write_all(&out).await.is_err() {
        return Response::json(
            502,
            &serde_json::json!({"error": {"message": "proxy: write failed"}}),
        );
    }
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), up.read_to_end(&mut raw)).await;
    if !matches!(read, Ok(Ok(_))) {
        return Response::json(
            504,
            &serde_json::json!({"error": {"message": "proxy: upstream timeout"}}),
        );
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = raw.get(split + 4..).unwrap_or_default().to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(502);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k != "content-length" && k != "connection" && k != "transfer-encoding"
        })
        .collect();
    Response {
        status,
        headers,
        body,
    }
}

/// A proxy to 127.0.0.1:`upstream` that applies `fault` (changeable at run time).
pub async fn proxy(
    upstream: u16,
    fault: Arc<Mutex<Fault>>,
) -> (u16, Arc<Stats>, tokio::task::JoinHandle<()>) {
    let handler: Handler = Arc::new(move |req: Request| {
        let fault = *fault.lock().unwrap();
        Box::pin(async move {
            match fault {
                Fault::None => forward(upstream, &req).await,
                Fault::Delay(d) => {
                    tokio::time::sleep(d).await;
                    forward(upstream, &req).await
                }
                Fault::Status(code, method) if method.is_none_or(|m| m == req.method) => {
                    Response::json(
                        code,
                        &serde_json::json!({"error": {"code": "Base.1.0.GeneralError",
                        "message": "injected fault: service temporarily overloaded"}}),
                    )
                }
                Fault::Status(..) => forward(upstream, &req).await,
            }
        })
    });
    serve(handler).await
}

/// A Policy with short delays for tests.
pub fn fast_policy() -> bmc::Policy {
    bmc::Policy {
        driver: bmc::DriverOptions {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(15),
        },
        op_timeout: Duration::from_secs(60),
        queue_timeout: Duration::from_secs(120),
        attempts: 3,
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        power_deadline: Duration::from_secs(45),
        poll_interval: Duration::from_millis(500),
    }
}
