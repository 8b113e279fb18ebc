//! The database's own HA, as rackshare sees it: a throwaway PostgreSQL of the test's own (its
//! own data dir, on a unix socket; never the suite's shared server) is crashed and restarted
//! (`pg_ctl restart -m immediate`) while `serve` is busy with API writes and its background
//! workers (scheduler, heartbeats). Afterwards serve answers again without a restart, every
//! write it acknowledged is in the database, and every write that failed got a 503 JSON
//! error asking for a retry, never a 500.

mod common;

use common::Service;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::netns::require;

/// A PostgreSQL server in a directory of its own, stopped (immediately) on drop.
struct OwnPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl OwnPostgres {
    fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.path().join("data");
        let sock = self.dir.path().display().to_string();
        let opts = format!("-k {sock} -c listen_addresses='' -c fsync=off");
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-l", &self.dir.path().join("log").display().to_string()])
            .args(["-o", &opts, "-w", "-t", "60"])
            .args(args)
            .output()
            .expect("pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start() -> OwnPostgres {
        require("runuser", "util-linux");
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path().join("bin"))
                    .filter(|p| p.join("initdb").exists())
                    .max()
            })
            .unwrap_or_else(|| {
                panic!("PostgreSQL's initdb is missing: install the Debian package `postgresql`")
            });
        let dir = tempfile::Builder::new()
            .prefix("rackshare-failover-pg")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let st = Command::new("chown")
            .arg("postgres:")
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(st.success());
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-A", "trust", "-U", "postgres"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = OwnPostgres { bin, dir };
        pg.pg_ctl(&["start"]);
        pg
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@localhost/postgres?host={}",
            self.dir.path().display()
        )
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// What one API write got: its machine name and the status (0: no HTTP answer at all).
type Outcome = (String, u16, Value);

async fn enrol(http: &reqwest::Client, url: &str, token: &str, name: &str) -> Outcome {
    let r = http
        .post(format!("{url}/api/v1/machines"))
        .bearer_auth(token)
        .json(&json!({"name": name}))
        .send()
        .await;
    match r {
        Ok(r) => {
            let code = r.status().as_u16();
            let body = r.json::<Value>().await.unwrap_or(Value::Null);
            (name.to_string(), code, body)
        }
        Err(e) => (name.to_string(), 0, json!(e.to_string())),
    }
}

#[tokio::test]
async fn serve_rides_out_a_postgres_crash_and_restart() {
    let pg = OwnPostgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = [
        "serve",
        "--data-dir",
        &dir.path().join("data").display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &pg.url(),
        "--energy-interval-secs",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let s = Service::spawn(dir, args);
    let http = s.http();

    // Busy: writers enrol machines one after another, before, during and after the crash.
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (http, outcomes, stop) = (http.clone(), Arc::clone(&outcomes), Arc::clone(&stop));
        let s_url = s.url.clone();
        let token = s.admin_token.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && i < 2_000 {
                let o = enrol(&http, &s_url, &token, &format!("fo-{w}-{i}")).await;
                outcomes.lock().expect("outcomes").push(o);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_crash = outcomes.lock().expect("o").len();
    assert!(before_crash > 0, "no writes before the crash");

    // The crash: no clean shutdown, connections cut mid-transaction, then recovery.
    pg.pg_ctl(&["-m", "immediate", "restart"]);
    let restarted = Instant::now();

    // serve answers again without a restart: a write succeeds after the restart.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let name = format!("after-{}", restarted.elapsed().as_millis());
        let o = enrol(&http, &s.url, &s.admin_token, &name).await;
        let ok = o.1 == 201;
        outcomes.lock().expect("o").push(o);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "serve never recovered; log:\n{}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "serve wrote again {:?} after the restart",
        restarted.elapsed()
    );
    // Let the writers run on a little past the recovery, then stop them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }

    let outcomes = outcomes.lock().expect("o").clone();
    let r = http
        .get(format!("{}/api/v1/machines", s.url))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .expect("list");
    assert_eq!(r.status().as_u16(), 200);
    let listed: Vec<String> = r
        .json::<Value>()
        .await
        .expect("json")
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect();
    let mut acked = 0;
    let mut refused = 0;
    for (name, code, body) in &outcomes {
        match code {
            201 => {
                acked += 1;
                assert!(
                    listed.contains(name),
                    "{name} was acknowledged but is not in the database"
                );
            }
            503 => {
                refused += 1;
                assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
                let msg = body["error"]["message"].as_str().unwrap_or_default();
                assert!(msg.contains("retry"), "{body}");
            }
            // A write whose first attempt committed before the crash and whose retry (by
            // nobody: the client saw 503) would conflict: not expected here.
            other => panic!("{name}: status {other}: {body}; log:\n{}", s.log_text()),
        }
    }
    eprintln!(
        "{} writes: {acked} acknowledged (all stored), {refused} answered 503",
        outcomes.len()
    );
    // The background workers carried on: the instance's heartbeat is renewed after the
    // restart (it is alive in the status, which reads the database).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = http
            .get(format!("{}/api/v1/instances", s.url))
            .bearer_auth(&s.admin_token)
            .send()
            .await
            .expect("instances");
        let v: Value = r.json().await.unwrap_or(Value::Null);
        let fresh = v["instances"].as_array().is_some_and(|l| {
            l.iter().any(|i| {
                i["alive"] == true
                    && i["heartbeat_at"].as_i64().unwrap_or(0) > inventory::now_ms() - 10_000
            })
        });
        if fresh {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat after the restart: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
