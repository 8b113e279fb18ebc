//! The real `rackshare serve` as a child process, on either database.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_rackshare");

/// Which database a service under test uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// The databases a test that runs on both uses: SQLite and PostgreSQL (only SQLite in
/// `scripts/test --quick`).
pub fn databases() -> Vec<Db> {
    if testkit::postgres_in_test_databases() {
        vec![Db::Sqlite, Db::Postgres]
    } else {
        vec![Db::Sqlite]
    }
}

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
    /// `http://ADDR/metrics` of the metrics listener (every test service has one on a free
    /// loopback port), when it printed one.
    pub metrics_url: Option<String>,
    /// The TLS certificate fingerprint it printed, when it speaks HTTPS.
    pub fingerprint: Option<String>,
    /// What it printed up to and including the listening line.
    pub banner: Vec<String>,
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
        let mut metrics_url = None;
        let mut fingerprint = None;
        let mut banner = Vec::new();
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
            if let Some(m) = line.strip_prefix("metrics on ") {
                metrics_url = Some(m.trim().to_string());
            }
            if let Some(f) = line.strip_prefix("TLS certificate fingerprint: ") {
                fingerprint = Some(f.trim().to_string());
            }
            banner.push(line);
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
            metrics_url,
            fingerprint,
            banner,
        }
    }

    fn command(netns: Option<&str>) -> Command {
        let mut c = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        // Tests run many services at once: each one's metrics listener on a free port (a
        // `--metrics-listen` flag still wins), found in `metrics_url`.
        c.env("RACKSHARE_METRICS_LISTEN", "127.0.0.1:0");
        if netns.is_some() {
            // A lab namespace's member API is plain HTTP on a private address.
            c.env("RACKSHARE_INSECURE_HTTP", "1");
        }
        c
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
