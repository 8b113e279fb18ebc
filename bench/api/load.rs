//! Load driver for `bench/api/run.sh`: CLIENTS concurrent clients, each in a loop asking for a
//! one-machine lease and releasing it, for SECONDS. Prints one JSON line with throughput and
//! latency percentiles. Talks only to the URL given (the script uses 127.0.0.1).
//!
//!   cargo run --release --example bench-api-load -- URL TOKEN CLIENTS SECONDS GROUPS

use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        return Err("usage: bench-api-load URL TOKEN CLIENTS SECONDS GROUPS".into());
    }
    let (url, token) = (a[1].clone(), a[2].clone());
    let clients: usize = a[3].parse()?;
    let secs: u64 = a[4].parse()?;
    let groups: usize = a[5].parse::<usize>()?.max(1);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(60))
        .build()?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        let group = format!("g{}", c % groups);
        tasks.push(tokio::spawn(async move {
            let (mut alloc, mut release, mut refused, mut errors) =
                (Vec::new(), Vec::new(), 0u64, 0u64);
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = http
                    .post(format!("{url}/api/v1/leases"))
                    .bearer_auth(&token)
                    .json(&json!({"group": group, "count": 1, "duration_secs": 3600}))
                    .send()
                    .await;
                let Ok(r) = r else {
                    errors += 1;
                    continue;
                };
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                alloc.push(t.elapsed().as_secs_f64() * 1000.0);
                let id = match (status, body["id"].as_i64()) {
                    (201, Some(id)) => id,
                    (409, _) => {
                        // The pool is used up (released machines wait for their wipe).
                        refused += 1;
                        break;
                    }
                    _ => {
                        errors += 1;
                        continue;
                    }
                };
                let t = Instant::now();
                match http
                    .post(format!("{url}/api/v1/leases/{id}/release"))
                    .bearer_auth(&token)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        release.push(t.elapsed().as_secs_f64() * 1000.0)
                    }
                    _ => errors += 1,
                }
            }
            (alloc, release, refused, errors)
        }));
    }
    let (mut alloc, mut release, mut refused, mut errors) = (Vec::new(), Vec::new(), 0, 0);
    for t in tasks {
        let (a, r, f, e) = t.await?;
        alloc.extend(a);
        release.extend(r);
        refused += f;
        errors += e;
    }
    let wall = start.elapsed().as_secs_f64();
    let ops = alloc.len() + release.len();
    println!(
        "{}",
        json!({
            "clients": clients, "seconds": wall, "leases": release.len(), "refused": refused, "errors": errors,
            "requests_per_sec": ops as f64 / wall, "leases_per_sec": release.len() as f64 / wall,
            "alloc_ms": {"p50": pct(&mut alloc, 0.50), "p99": pct(&mut alloc, 0.99), "max": pct(&mut alloc, 1.0)},
            "release_ms": {"p50": pct(&mut release, 0.50), "p99": pct(&mut release, 0.99), "max": pct(&mut release, 1.0)},
        })
    );
    Ok(())
}
