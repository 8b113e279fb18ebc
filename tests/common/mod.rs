//! Harness for end-to-end tests: the real `rackshare` binary, real HTTP, real databases.
#![allow(dead_code)]

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use testkit::netns::Lab;

pub const BIN: &str = env!("CARGO_BIN_EXE_rackshare");

/// Which database a service under test uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub const BOTH: [Db; 2] = [Db::Sqlite, Db::Postgres];

/// A fresh, empty PostgreSQL database; returns its URL.
pub async fn fresh_postgres() -> String {
    testkit::fresh_postgres_database("rs_e2e").await
}

/// A running `rackshare serve`, stopped on drop.
pub struct Service {
    /// The network namespace the service runs in (CLI calls enter it too).
    pub netns: Option<String>,
    pub child: Option<Child>,
    pub url: String,
    pub admin_token: String,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Service {
    pub async fn start(db: Db) -> Service {
        Self::start_with(db, &[]).await
    }

    pub async fn start_with(db: Db, extra: &[&str]) -> Service {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--log-level".into(),
            "debug".into(),
        ];
        if db == Db::Postgres {
            args.push("--database-url".into());
            args.push(fresh_postgres().await);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(dir, args)
    }

    /// Starts the binary with exactly `args`, in `dir`.
    pub fn spawn(dir: tempfile::TempDir, args: Vec<String>) -> Service {
        Self::spawn_in(None, dir, args)
    }

    /// Like `spawn`, inside network namespace `netns` when given.
    pub fn spawn_in(netns: Option<&str>, dir: tempfile::TempDir, args: Vec<String>) -> Service {
        let log = dir.path().join("serve.log");
        let mut child = Self::command(netns)
            .args(&args)
            .current_dir(dir.path())
            .env_remove("RACKSHARE_DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn rackshare serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut token = String::new();
        let mut url = String::new();
        while url.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "rackshare serve did not start in 60 s; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
            if let Some(t) = line.trim().strip_prefix("rs_") {
                token = format!("rs_{t}");
            }
            if let Some(u) = line.strip_prefix("rackshare API listening on ") {
                url = u.trim().to_string();
            }
        }
        if token.is_empty() {
            if let Ok(t) = std::fs::read_to_string(dir.path().join("data/admin-token")) {
                token = t.trim().to_string();
            }
        }
        Service {
            netns: netns.map(str::to_string),
            child: Some(child),
            url,
            admin_token: token,
            dir,
            log,
        }
    }

    fn command(netns: Option<&str>) -> Command {
        match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        }
    }

    /// Runs a CLI command against this service with `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        Self::command(self.netns.as_deref())
            .args(args)
            .env("RACKSHARE_URL", &self.url)
            .env("RACKSHARE_TOKEN", token)
            .current_dir(self.dir.path())
            .output()
            .expect("run rackshare")
    }

    /// Runs a CLI command as admin and returns stdout, failing the test on a non-zero exit.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_as(&self.admin_token, args);
        assert!(
            out.status.success(),
            "rackshare {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like `cli` with `-o json`, parsed.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let text = self.cli(&a);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("rackshare {args:?} printed non-JSON ({e}): {text}"))
    }

    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client")
    }

    /// SIGTERM and wait (bounded); returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write");
    p
}

/// `rackshare serve` inside the lab namespace `ns`: API on 10.77.0.1:8080, boot services on
/// br0 (proxy mode unless `extra` says otherwise), data in `dir/data`.
pub fn serve_in_lab(ns: &str, dir: tempfile::TempDir, extra: &[&str]) -> Service {
    let mut args: Vec<String> = vec!["serve".into(), "--data-dir".into()];
    args.push(dir.path().join("data").display().to_string());
    args.extend(
        [
            "--listen",
            "10.77.0.1:8080",
            "--pxe-interface",
            "br0",
            "--energy-interval-secs",
            "0",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    Service::spawn_in(Some(ns), dir, args)
}

impl Service {
    /// SIGKILL, as a crash would: no graceful shutdown.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Takes the data directory away (the caller restarts a service on it).
    pub fn take_dir(&mut self) -> tempfile::TempDir {
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tmp"))
    }
}

/// The target directory the test binary lives in.
pub fn target_dir() -> PathBuf {
    // The test binary is TARGET/debug/deps/agent_boot-HASH.
    let exe = std::env::current_exe().expect("test exe");
    exe.ancestors()
        .nth(3)
        .expect("target dir above the test binary")
        .to_path_buf()
}

/// The agent kernel and ramdisk, built once per (agent binary, build code) by `rackshare agent build`.
pub fn agent_boot_files() -> PathBuf {
    // The tests of this file run in parallel; one builds, the others wait and reuse.
    static BUILD: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let target = target_dir();
    let agent = target.join("x86_64-unknown-linux-gnu/release/rackshare-agent");
    let agent_bytes = std::fs::read(&agent).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build the static agent first with scripts/build-agent (scripts/test does)",
            agent.display()
        )
    });
    let mut h = Sha256::new();
    h.update(&agent_bytes);
    h.update(include_bytes!("../../src/agent_build.rs"));
    let key = hex::encode(&h.finalize()[..8]);
    let cache = target.join("agent-boot-cache");
    let data_dir = cache.join(&key);
    let boot = data_dir.join("boot");
    if boot.join("agent-initrd.img").is_file() && boot.join("agent-vmlinuz").is_file() {
        return boot;
    }
    // Builds for older agents are of no further use (26 MiB each).
    for old in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
        if old.file_name() != "debs" && old.file_name() != key.as_str() {
            let _ = std::fs::remove_dir_all(old.path());
        }
    }
    // The .debs are shared between keys, so only the first build ever downloads.
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).expect("mkdir debs");
    std::fs::create_dir_all(data_dir.join("cache")).expect("mkdir cache");
    let link = data_dir.join("cache/agent");
    if !link.exists() {
        std::os::unix::fs::symlink(&debs, &link).expect("symlink the deb cache");
    }
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rackshare"))
        .args(["agent", "build", "--data-dir"])
        .arg(&data_dir)
        .arg("--agent-bin")
        .arg(&agent)
        .output()
        .expect("run rackshare agent build");
    assert!(
        out.status.success(),
        "rackshare agent build failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "rackshare agent build took {:.1} s:\n{}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout)
    );
    boot
}

/// Copies the agent kernel and ramdisk into a boot root (`DATA_DIR/boot`).
pub fn install_agent_boot_files(boot_root: &Path) {
    let src = agent_boot_files();
    std::fs::create_dir_all(boot_root).expect("mkdir boot root");
    for f in ["agent-vmlinuz", "agent-initrd.img"] {
        std::fs::copy(src.join(f), boot_root.join(f)).expect("copy agent boot file");
    }
}

/// Where `serve_in_lab` answers, inside the lab.
pub const LAB_API: &str = "http://10.77.0.1:8080";

/// One HTTP call from inside the lab, as the agent makes it: (status, body).
pub fn agent_call(
    lab: &Lab,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Vec<u8>) {
    agent_call_with(lab, method, path, token, body, &[])
}

pub fn agent_call_with(
    lab: &Lab,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
    extra: &[&str],
) -> (u16, Vec<u8>) {
    let out_file = lab.path(&format!("curl-{}.out", rand_tag()));
    let auth = format!("Authorization: Bearer {token}");
    let url = format!("{LAB_API}{path}");
    let out_path = out_file.display().to_string();
    let data = body.map(|b| b.to_string());
    let mut argv = vec![
        "curl",
        "-s",
        "-o",
        &out_path,
        "-w",
        "%{http_code}",
        "-X",
        method,
        "-H",
        &auth,
    ];
    if let Some(d) = &data {
        argv.extend(["-H", "Content-Type: application/json", "--data-binary", d]);
    }
    argv.extend(extra);
    argv.push(&url);
    let out = lab.exec(&lab.srv, &argv, Duration::from_secs(30));
    let code: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl {argv:?}: {}", String::from_utf8_lossy(&out.stderr)));
    (code, std::fs::read(&out_file).unwrap_or_default())
}

fn rand_tag() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

pub fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

/// The boot script the machine would fetch, and the one-time token in it (None: local boot).
pub fn boot_token(lab: &Lab, mac: &str) -> (String, Option<String>) {
    let (code, body) = agent_call(lab, "GET", &format!("/boot/{mac}.ipxe"), "-", None);
    assert_eq!(code, 200);
    let script = String::from_utf8_lossy(&body).into_owned();
    let token = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rackshare.token="))
        .map(str::to_string);
    (script, token)
}
