//! A light TFTP load generator: one process, N concurrent read transfers (tokio), so a server
//! comparison is not drowned by N client processes.
//!
//! `tftp_load SERVER_IP FILE N [--blksize B] [--windowsize W] [--expect-size BYTES]`
//! Prints wall time, failures and throughput.
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

struct Opts {
    server: SocketAddr,
    file: String,
    blksize: usize,
    window: u16,
}

async fn fetch(o: &Opts) -> Result<u64, String> {
    let sock = UdpSocket::bind("0.0.0.0:0")
        .await
        .map_err(|e| e.to_string())?;
    let mut rrq = vec![0u8, 1];
    let blk = o.blksize.to_string();
    let win = o.window.to_string();
    let mut parts = vec![o.file.as_str(), "octet", "blksize", blk.as_str()];
    if o.window > 1 {
        parts.extend(["windowsize", win.as_str()]);
    }
    for p in parts {
        rrq.extend_from_slice(p.as_bytes());
        rrq.push(0);
    }
    let mut buf = vec![0u8; 70_000];
    let mut last_sent = rrq.clone();
    let mut dest = o.server;
    sock.send_to(&rrq, dest).await.map_err(|e| e.to_string())?;
    let mut expect: u16 = 1;
    let mut got: u64 = 0;
    let mut blksize = 512usize;
    let mut window: u16 = 1;
    let mut since_ack: u16 = 0;
    let mut retries = 0;
    loop {
        let r = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await;
        let (n, from) = match r {
            Err(_) => {
                retries += 1;
                if retries > 5 {
                    return Err(format!("timeout at block {expect}"));
                }
                sock.send_to(&last_sent, dest)
                    .await
                    .map_err(|e| e.to_string())?;
                continue;
            }
            Ok(x) => x.map_err(|e| e.to_string())?,
        };
        retries = 0;
        let p = &buf[..n];
        if n < 4 {
            continue;
        }
        match u16::from_be_bytes([p[0], p[1]]) {
            6 => {
                // OACK: read the granted values.
                dest = from;
                let fields: Vec<&[u8]> = p[2..].split(|b| *b == 0).collect();
                for kv in fields.chunks(2) {
                    if let [k, v] = kv {
                        let v: usize = String::from_utf8_lossy(v).parse().unwrap_or(0);
                        match String::from_utf8_lossy(k).to_ascii_lowercase().as_str() {
                            "blksize" => blksize = v,
                            "windowsize" => window = v as u16,
                            _ => {}
                        }
                    }
                }
                last_sent = vec![0, 4, 0, 0];
                sock.send_to(&last_sent, dest)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            3 => {
                dest = from;
                let block = u16::from_be_bytes([p[2], p[3]]);
                if block != expect {
                    // Lost or reordered: re-ACK the last good block to restart the window.
                    sock.send_to(&last_sent, dest)
                        .await
                        .map_err(|e| e.to_string())?;
                    since_ack = 0;
                    continue;
                }
                got += (n - 4) as u64;
                let last = n - 4 < blksize;
                since_ack += 1;
                if since_ack >= window || last {
                    last_sent = vec![0, 4, p[2], p[3]];
                    sock.send_to(&last_sent, dest)
                        .await
                        .map_err(|e| e.to_string())?;
                    since_ack = 0;
                }
                expect = expect.wrapping_add(1);
                if last {
                    return Ok(got);
                }
            }
            5 => {
                return Err(format!(
                    "server error: {}",
                    String::from_utf8_lossy(&p[4..])
                ))
            }
            _ => {}
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 3 {
        return Err("usage: tftp_load SERVER_IP FILE N [--blksize B] [--windowsize W] [--expect-size BYTES]".into());
    }
    let mut o = Opts {
        server: format!("{}:69", a[0]).parse()?,
        file: a[1].clone(),
        blksize: 1468,
        window: 1,
    };
    let n: usize = a[2].parse()?;
    let mut expect_size: Option<u64> = None;
    let mut i = 3;
    while i + 1 < a.len() {
        match a[i].as_str() {
            "--blksize" => o.blksize = a[i + 1].parse()?,
            "--windowsize" => o.window = a[i + 1].parse()?,
            "--expect-size" => expect_size = Some(a[i + 1].parse()?),
            x => return Err(format!("unknown option {x}").into()),
        }
        i += 2;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (elapsed, results) = rt.block_on(async {
        let o = std::sync::Arc::new(o);
        let start = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let o = std::sync::Arc::clone(&o);
                tokio::spawn(async move { fetch(&o).await })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
        }
        (start.elapsed(), results)
    });
    let mut bytes = 0u64;
    let mut failures = 0;
    for r in &results {
        match r {
            Ok(b) if expect_size.is_none_or(|e| e == *b) => bytes += b,
            Ok(b) => {
                failures += 1;
                eprintln!("short transfer: {b} bytes");
            }
            Err(e) => {
                failures += 1;
                eprintln!("failed: {e}");
            }
        }
    }
    println!(
        "{n} transfers in {:.2} s, failures {failures}, {:.1} MiB/s",
        elapsed.as_secs_f64(),
        bytes as f64 / 1_048_576.0 / elapsed.as_secs_f64()
    );
    Ok(())
}
