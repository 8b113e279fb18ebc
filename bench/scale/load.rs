//! Driver of `bench/scale/run.sh`. Three modes, each printing one JSON line:
//!
//!   bench-scale-load bmcs COUNT PORT
//!       serves COUNT simulated Redfish BMCs on 127.0.0.1:PORT until killed
//!       (testkit's `FakeRedfishFleet`; prints `ready` once listening).
//!   bench-scale-load api URLS TOKEN CLIENTS SECONDS GROUPS
//!       CLIENTS concurrent clients, client c on instance c % len(URLS) (comma-separated),
//!       run each operation for SECONDS in turn: the whole list, a page of 100, one machine,
//!       a lease of one machine. Latency p50/p99 per operation.
//!   bench-scale-load jobs URLS TOKEN FLEET_PORT COUNT PIDS
//!       queues COUNT inspect jobs on node-00000… (the machines with simulated BMCs), spread
//!       over the instances, and waits (bounded) until the fleet has served COUNT resets (each
//!       job's power cycle): jobs started per minute. Then the CPU time of the instances
//!       (PIDS, comma-separated, from /proc/PID/stat) over 30 s while they hold those jobs.
//!
//! Talks only to the URLs given (the script uses 127.0.0.1).

use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// utime + stime of `pid` in seconds.
fn cpu_secs(pid: &str, ticks: f64) -> Res<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').ok_or("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f[11].parse()?, f[12].parse()?);
    Ok((utime + stime) / ticks)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn client(clients: usize) -> Res<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(60))
        .build()?)
}

#[derive(Clone, Copy, Debug)]
enum Op {
    ListAll,
    ListPage,
    Show,
    Lease,
}

async fn one(http: &reqwest::Client, url: &str, token: &str, op: Op, c: usize, n: u64) -> bool {
    let req = match op {
        Op::ListAll => http.get(format!("{url}/api/v1/machines")),
        Op::ListPage => {
            // Pages start at different machines (the cursor is a name).
            let after = format!("node-{:05}", (n as usize * 97 + c * 131) % 9_900);
            http.get(format!("{url}/api/v1/machines?limit=100&after={after}"))
        }
        Op::Show => http.get(format!(
            "{url}/api/v1/machines/node-{:05}",
            (n as usize * 37 + c * 101) % 10_000
        )),
        Op::Lease => http
            .post(format!("{url}/api/v1/leases"))
            // Machines without a simulated BMC, so the job phase finds its machines free.
            .json(&json!({"group": format!("g{}", c % 10), "count": 1, "duration_secs": 3600, "tags": ["standard"]})),
    };
    match req.bearer_auth(token).send().await {
        Ok(r) => {
            let ok = r.status().is_success();
            let _ = r.bytes().await;
            ok
        }
        Err(_) => false,
    }
}

async fn api(a: &[String]) -> Res<()> {
    let urls: Vec<String> = a[2].split(',').map(str::to_string).collect();
    let token = a[3].clone();
    let clients: usize = a[4].parse()?;
    let secs: u64 = a[5].parse()?;
    let http = client(clients)?;
    let mut out = serde_json::Map::new();
    for op in [Op::ListAll, Op::ListPage, Op::Show, Op::Lease] {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (http, url, token) = (http.clone(), urls[c % urls.len()].clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                let (mut ms, mut errors, mut n) = (Vec::new(), 0u64, 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if one(&http, &url, &token, op, c, n).await {
                        ms.push(t.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        errors += 1;
                    }
                    n += 1;
                }
                (ms, errors)
            }));
        }
        let (mut ms, mut errors) = (Vec::new(), 0);
        for t in tasks {
            let (m, e) = t.await?;
            ms.extend(m);
            errors += e;
        }
        let wall = start.elapsed().as_secs_f64();
        out.insert(
            format!("{op:?}"),
            json!({"ok": ms.len(), "errors": errors, "per_sec": ms.len() as f64 / wall,
                   "p50_ms": pct(&mut ms, 0.50), "p99_ms": pct(&mut ms, 0.99)}),
        );
    }
    println!("{}", Value::Object(out));
    Ok(())
}

async fn jobs(a: &[String]) -> Res<()> {
    let urls: Vec<String> = a[2].split(',').map(str::to_string).collect();
    let token = a[3].clone();
    let fleet = format!("http://127.0.0.1:{}/stats", a[4]);
    let count: usize = a[5].parse()?;
    let pids: Vec<String> = a[6].split(',').map(str::to_string).collect();
    let ticks = clock_ticks();
    let http = client(100)?;
    let cpu = |pids: &[String]| -> Res<f64> { pids.iter().map(|p| cpu_secs(p, ticks)).sum() };
    let resets_before = http.get(&fleet).send().await?.json::<Value>().await?["resets"]
        .as_u64()
        .unwrap_or(0);
    let cpu_start = cpu(&pids)?;
    let start = Instant::now();
    // 100 clients queue the jobs, spread over the instances.
    let mut tasks = Vec::new();
    for c in 0..100usize {
        let (http, token, urls) = (http.clone(), token.clone(), urls.clone());
        tasks.push(tokio::spawn(async move {
            let mut failed = 0u64;
            for i in (c..count).step_by(100) {
                let url = &urls[i % urls.len()];
                let r = http
                    .post(format!("{url}/api/v1/jobs"))
                    .bearer_auth(&token)
                    .json(&json!({"machine": format!("node-{i:05}"), "kind": "inspect"}))
                    .send()
                    .await;
                if !matches!(&r, Ok(r) if r.status().is_success()) {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await?;
    }
    let queued = start.elapsed().as_secs_f64();
    // Bounded: 10 minutes for every job's power cycle.
    let deadline = start + Duration::from_secs(600);
    let mut resets = 0;
    while Instant::now() < deadline {
        let s: Value = http.get(&fleet).send().await?.json().await?;
        resets = s["resets"].as_u64().unwrap_or(0) - resets_before;
        if resets as usize >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started_in = start.elapsed().as_secs_f64();
    let cpu_starting = cpu(&pids)? - cpu_start;
    // Holding: every job waits for an agent that never comes (the conductor polls its rows).
    let hold = Duration::from_secs(30);
    let before = cpu(&pids)?;
    tokio::time::sleep(hold).await;
    let holding = cpu(&pids)? - before;
    let per_k = 1000.0 / count as f64;
    println!(
        "{}",
        json!({
            "jobs": count, "refused": refused, "queued_in_s": queued, "power_cycles": resets,
            "all_started_in_s": started_in, "jobs_started_per_min": resets as f64 / started_in * 60.0,
            "cpu_s_while_starting": cpu_starting,
            "cpu_pct_per_1000_machines_holding": holding / hold.as_secs_f64() * 100.0 * per_k,
        })
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    let a: Vec<String> = std::env::args().collect();
    match (a.get(1).map(String::as_str), a.len()) {
        (Some("bmcs"), 4) => {
            let fleet = testkit::fake_redfish_fleet::FakeRedfishFleet::start(
                a[2].parse()?,
                a[3].parse()?,
            )
            .await?;
            println!("ready {}", fleet.port);
            std::future::pending::<()>().await;
            Ok(())
        }
        (Some("api"), 7) => api(&a).await,
        (Some("jobs"), 7) => jobs(&a).await,
        _ => Err("usage: bench-scale-load bmcs COUNT PORT | api URLS TOKEN CLIENTS SECONDS GROUPS | jobs URLS TOKEN FLEET_PORT COUNT PIDS".into()),
    }
}
