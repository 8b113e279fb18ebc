//! Load driver for `bench/tls/run.sh`: the cost of HTTPS on the member API.
//!
//!   bench-tls-load cert DIR
//!       writes a throwaway CA (DIR/ca.pem) and a certificate for 127.0.0.1 it signed
//!       (DIR/server.pem, DIR/server.key), for `serve --tls-cert/--tls-key`
//!   bench-tls-load load URL TOKEN CLIENTS SECONDS reuse|fresh [CA_FILE]
//!       CLIENTS concurrent clients GET /api/v1/whoami (token lookup, no write) for SECONDS,
//!       over kept-alive connections (reuse) or a new connection per request (fresh: a TCP
//!       and, for https, a TLS handshake each time). Prints one JSON line.
//!
//! Talks only to the URL given (the script uses 127.0.0.1).

use std::time::{Duration, Instant};

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn cert(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?;
    let key = rcgen::KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("server.pem"), leaf_cert.pem())?;
    std::fs::write(dir.join("server.key"), key.serialize_pem())?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() == 3 && a[1] == "cert" {
        return cert(std::path::Path::new(&a[2]));
    }
    if !(a.len() == 7 || a.len() == 8) || a[1] != "load" {
        return Err(
            "usage: bench-tls-load cert DIR | load URL TOKEN CLIENTS SECONDS reuse|fresh [CA_FILE]"
                .into(),
        );
    }
    let (url, token) = (a[2].clone(), a[3].clone());
    let clients: usize = a[4].parse()?;
    let secs: u64 = a[5].parse()?;
    let fresh = match a[6].as_str() {
        "reuse" => false,
        "fresh" => true,
        other => return Err(format!("reuse or fresh, not {other}").into()),
    };
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30));
    b = if fresh {
        b.pool_max_idle_per_host(0)
    } else {
        b.pool_max_idle_per_host(clients)
    };
    if let Some(ca) = a.get(7) {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca)?)?);
    }
    let http = b.build()?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let t = Instant::now();
                let mut req = http.get(format!("{url}/api/v1/whoami")).bearer_auth(&token);
                if fresh {
                    req = req.header(reqwest::header::CONNECTION, "close");
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let (mut lat, mut errors) = (Vec::new(), 0u64);
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = lat.len();
    println!(
        "{{\"requests\":{n},\"errors\":{errors},\"req_per_s\":{:.0},\"p50_ms\":{:.2},\"p99_ms\":{:.2}}}",
        n as f64 / elapsed,
        pct(&mut lat, 0.50),
        pct(&mut lat, 0.99)
    );
    Ok(())
}
