//! Shared harness for rackshare's integration tests: real peers (sushy-tools, pyghmi,
//! PostgreSQL) started as child processes that are killed on drop. Only loopback addresses.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod fake_redfish;
pub mod fake_redfish_fleet;
pub mod ipmi_sol;
pub mod netns;
pub mod vmlab;

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
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
            let htpasswd = write_htpasswd(&exe, dir.path(), &opts.users);
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

/// Writes an htpasswd file for sushy-emulator (`SUSHY_EMULATOR_AUTH_FILE`) into `dir`, hashing
/// with the venv's own python next to `sushy_exe` (bcrypt is what sushy-tools accepts).
pub(crate) fn write_htpasswd(sushy_exe: &Path, dir: &Path, users: &[(String, String)]) -> PathBuf {
    let htpasswd = dir.join("htpasswd");
    let python = sushy_exe.parent().unwrap().join("python3");
    let mut lines = String::new();
    for (user, pass) in users {
        // The password goes through stdin, never argv.
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
    htpasswd
}

/// Whether tests that run on both databases include PostgreSQL: always, unless
/// `RACKSHARE_TEST_DATABASES=sqlite` (set by `scripts/test --quick`, which names the tests it
/// leaves out). Never silently: the full suite has no way to drop PostgreSQL.
pub fn postgres_in_test_databases() -> bool {
    std::env::var("RACKSHARE_TEST_DATABASES").map_or(true, |v| v.trim() != "sqlite")
}

/// The PostgreSQL server the test command starts (`scripts/test` sets this variable).
pub fn postgres_admin_url() -> String {
    std::env::var("RACKSHARE_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "RACKSHARE_TEST_POSTGRES_URL is not set. Run the suite with ./scripts/test, which starts a \
             throwaway PostgreSQL (Debian package 'postgresql'), or point it at a server you own."
        )
    })
}

/// Creates a fresh, empty database on the test PostgreSQL server and returns its URL.
pub async fn fresh_postgres_database(prefix: &str) -> String {
    use sqlx::Connection;
    let admin = postgres_admin_url();
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create database");
    let (head, tail) = admin
        .split_once('?')
        .map(|(h, t)| (h, format!("?{t}")))
        .unwrap_or((admin.as_str(), String::new()));
    let base = head.rsplit_once('/').map(|(b, _)| b).unwrap_or(head);
    format!("{base}/{name}{tail}")
}
