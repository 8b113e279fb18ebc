//! Keystroke driver for `bench/console/run.sh`: the round trip of one keystroke to a machine's
//! serial port and back, through rackshare's console broker or straight through ipmitool.
//!
//!   bench-console-rtt serial PORT
//!       the "machine": a TCP serial endpoint on 127.0.0.1:PORT (ipmi_sim's SOL connects to
//!       it) that answers every byte with a..z upper-cased; runs until killed
//!   bench-console-rtt ws URL TOKEN MACHINE N
//!       the console WebSocket: takes control, then N keystrokes one at a time
//!   bench-console-rtt cmd N PROGRAM ARGS…
//!       a terminal program on pipes (`ssh -tt …`, `script -qec "ipmitool … sol activate"`):
//!       N keystrokes one at a time on its standard input, answers read from its output
//!
//! A keystroke is a lower-case letter; it has come back when its upper-case letter is read (an
//! answer, never a local echo). Prints one JSON line: n, p50/p95/p99/max in milliseconds.
//! Talks only to 127.0.0.1.

use futures::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn report(mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{{\"n\":{},\"p50_ms\":{:.2},\"p95_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2}}}",
        ms.len(),
        pct(&ms, 0.50),
        pct(&ms, 0.95),
        pct(&ms, 0.99),
        ms.last().copied().unwrap_or(0.0)
    );
}

/// Keystrokes through `send`, answers from `answers` (bytes as they arrive): first until the
/// console answers at all (bounded), then N measured ones.
async fn measure<S, F>(
    n: usize,
    mut send: S,
    answers: &mut mpsc::Receiver<Vec<u8>>,
) -> Result<(), Error>
where
    S: FnMut(u8) -> F,
    F: std::future::Future<Output = Result<(), Error>>,
{
    // Warm-up: the link is up once a keystroke comes back.
    let ready = Instant::now() + Duration::from_secs(30);
    'warm: loop {
        if Instant::now() > ready {
            return Err("the console never answered a keystroke".into());
        }
        send(b'q').await?;
        let until = Instant::now() + Duration::from_millis(500);
        while let Ok(Some(b)) = tokio::time::timeout_at(until.into(), answers.recv()).await {
            if b.contains(&b'Q') {
                break 'warm;
            }
        }
    }
    // Whatever else is on its way is drained before measuring.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), answers.recv()).await {
    }
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        let key = b'a' + (i % 26) as u8;
        let want = key.to_ascii_uppercase();
        let t0 = Instant::now();
        send(key).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), answers.recv()).await {
                Ok(Some(b)) if b.contains(&want) => break,
                Ok(Some(_)) => {}
                _ => return Err(format!("keystroke {i} never came back").into()),
            }
        }
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    report(ms);
    Ok(())
}

async fn serial(port: u16) -> Result<(), Error> {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (mut conn, _) = l.accept().await?;
        let _ = conn.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = conn.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                buf[..n].make_ascii_uppercase();
                if conn.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn ws(url: &str, token: &str, machine: &str, n: usize) -> Result<(), Error> {
    let parsed = url::Url::parse(url)?;
    let host = parsed.host_str().ok_or("no host")?.to_string();
    let port = parsed.port_or_known_default().ok_or("no port")?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let mut req =
        format!("ws://{host}:{port}/api/v1/machines/{machine}/console").into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (socket, _) = tokio_tungstenite::client_async(req, tcp).await?;
    let (mut tx, mut rx) = socket.split();
    tx.send(Message::Text(r#"{"type":"take"}"#.into())).await?;
    let (out_tx, mut out_rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(Ok(m)) = rx.next().await {
            if let Message::Binary(b) = m {
                if out_tx.send(b.to_vec()).await.is_err() {
                    return;
                }
            }
        }
    });
    let tx = std::sync::Arc::new(tokio::sync::Mutex::new(tx));
    measure(
        n,
        |key| {
            let tx = tx.clone();
            async move {
                tx.lock()
                    .await
                    .send(Message::Binary(vec![key].into()))
                    .await?;
                Ok(())
            }
        },
        &mut out_rx,
    )
    .await
}

async fn cmd(n: usize, program: &str, args: &[String]) -> Result<(), Error> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let (out_tx, mut out_rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(k) = stdout.read(&mut buf).await {
            if k == 0 || out_tx.send(buf[..k].to_vec()).await.is_err() {
                return;
            }
        }
    });
    let stdin = std::sync::Arc::new(tokio::sync::Mutex::new(stdin));
    let res = measure(
        n,
        |key| {
            let stdin = stdin.clone();
            async move {
                let mut s = stdin.lock().await;
                s.write_all(&[key]).await?;
                s.flush().await?;
                Ok(())
            }
        },
        &mut out_rx,
    )
    .await;
    let _ = child.kill().await;
    res
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some("serial") if a.len() == 3 => serial(a[2].parse()?).await,
        Some("ws") if a.len() == 6 => ws(&a[2], &a[3], &a[4], a[5].parse()?).await,
        Some("cmd") if a.len() >= 4 => cmd(a[2].parse()?, &a[3], &a[4..]).await,
        _ => Err(
            "usage: bench-console-rtt serial PORT | ws URL TOKEN MACHINE N | cmd N PROGRAM ARGS…"
                .into(),
        ),
    }
}
