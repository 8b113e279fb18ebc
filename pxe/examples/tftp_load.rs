//! A light TFTP load generator: one thread, N concurrent read transfers driven by one `mio`
//! poll loop, so a server comparison is not drowned by N client processes (or by an async
//! runtime's own bookkeeping). The same client runs against every server in a benchmark.
//!
//! `tftp_load SERVER_IP FILE N [--blksize B] [--windowsize W] [--expect-size BYTES]`
//! Prints wall time, failures and throughput. Bounded: a transfer that gets no packet for a
//! second resends its last packet, and fails after five silent seconds.
#![allow(missing_docs)]

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

const RETRY_AFTER: Duration = Duration::from_secs(1);
const MAX_RETRIES: u32 = 5;

struct Opts {
    server: SocketAddr,
    file: String,
    blksize: usize,
    window: u16,
}

/// One transfer's client state.
struct Fetch {
    sock: UdpSocket,
    /// Set once the server's transfer port (its TID) is known: the socket is then connected.
    connected: bool,
    last_sent: Vec<u8>,
    expect: u16,
    got: u64,
    blksize: usize,
    window: u16,
    since_ack: u16,
    retries: u32,
    last_progress: Instant,
    /// `Some(Ok(bytes))` or `Some(Err(why))` once finished.
    done: Option<Result<u64, String>>,
}

impl Fetch {
    fn start(o: &Opts) -> std::io::Result<Fetch> {
        let sock = UdpSocket::bind("0.0.0.0:0".parse().expect("literal address"))?;
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
        sock.send_to(&rrq, o.server)?;
        Ok(Fetch {
            sock,
            connected: false,
            last_sent: rrq,
            expect: 1,
            got: 0,
            blksize: 512,
            window: 1,
            since_ack: 0,
            retries: 0,
            last_progress: Instant::now(),
            done: None,
        })
    }

    fn send(&mut self, pkt: Vec<u8>) {
        if let Err(e) = self.sock.send(&pkt) {
            if e.kind() != ErrorKind::WouldBlock {
                self.done = Some(Err(e.to_string()));
            }
        }
        self.last_sent = pkt;
    }

    /// Reads up to the next ACK it sends; returns true when the transfer finished.
    fn on_readable(&mut self, buf: &mut [u8]) -> bool {
        loop {
            if self.done.is_some() {
                return true;
            }
            let (n, from) = match self.sock.recv_from(buf) {
                Ok(x) => x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) => {
                    self.done = Some(Err(e.to_string()));
                    return true;
                }
            };
            if n < 4 {
                continue;
            }
            if !self.connected {
                // The first answer names the server's transfer port: talk only to it now.
                if let Err(e) = self.sock.connect(from) {
                    self.done = Some(Err(e.to_string()));
                    return true;
                }
                self.connected = true;
            }
            self.retries = 0;
            self.last_progress = Instant::now();
            let p = &buf[..n];
            match u16::from_be_bytes([p[0], p[1]]) {
                6 => {
                    // OACK: read the granted values.
                    for kv in p[2..].split(|b| *b == 0).collect::<Vec<_>>().chunks(2) {
                        if let [k, v] = kv {
                            let v: usize = String::from_utf8_lossy(v).parse().unwrap_or(0);
                            match String::from_utf8_lossy(k).to_ascii_lowercase().as_str() {
                                "blksize" => self.blksize = v,
                                "windowsize" => self.window = v as u16,
                                _ => {}
                            }
                        }
                    }
                    self.send(vec![0, 4, 0, 0]);
                }
                3 => {
                    let block = u16::from_be_bytes([p[2], p[3]]);
                    if block != self.expect {
                        // Lost or reordered: re-ACK the last good block to restart the window.
                        let again = self.last_sent.clone();
                        self.send(again);
                        self.since_ack = 0;
                        continue;
                    }
                    self.got += (n - 4) as u64;
                    let last = n - 4 < self.blksize;
                    self.since_ack += 1;
                    let acked = self.since_ack >= self.window || last;
                    if acked {
                        self.send(vec![0, 4, p[2], p[3]]);
                        self.since_ack = 0;
                    }
                    self.expect = self.expect.wrapping_add(1);
                    if last {
                        self.done = Some(Ok(self.got));
                        return true;
                    }
                    if acked {
                        // The server sends nothing new before this ACK reaches it: anything
                        // still queued is a stale duplicate, skipped at the next arrival.
                        // Saves the receive that would only say "empty".
                        return false;
                    }
                }
                5 => {
                    self.done = Some(Err(format!(
                        "server error: {}",
                        String::from_utf8_lossy(&p[4..])
                    )));
                    return true;
                }
                _ => {}
            }
        }
    }

    /// Resends after a silent second; gives up after `MAX_RETRIES`.
    fn on_tick(&mut self, now: Instant, server: SocketAddr) {
        if self.done.is_some() || now.duration_since(self.last_progress) < RETRY_AFTER {
            return;
        }
        self.retries += 1;
        if self.retries > MAX_RETRIES {
            self.done = Some(Err(format!("timeout at block {}", self.expect)));
            return;
        }
        self.last_progress = now;
        let r = if self.connected {
            self.sock.send(&self.last_sent)
        } else {
            self.sock.send_to(&self.last_sent, server)
        };
        if let Err(e) = r {
            if e.kind() != ErrorKind::WouldBlock {
                self.done = Some(Err(e.to_string()));
            }
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

    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 70_000];
    let start = Instant::now();
    let mut fetches = Vec::with_capacity(n);
    for t in 0..n {
        let mut f = Fetch::start(&o)?;
        poll.registry()
            .register(&mut f.sock, Token(t), Interest::READABLE)?;
        fetches.push(f);
    }
    let mut open = n;
    let mut last_tick = Instant::now();
    while open > 0 {
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            let Some(f) = fetches.get_mut(ev.token().0) else {
                continue;
            };
            if f.done.is_none() && f.on_readable(&mut buf) {
                open -= 1;
                poll.registry().deregister(&mut f.sock)?;
            }
        }
        let now = Instant::now();
        if now.duration_since(last_tick) >= Duration::from_millis(100) {
            last_tick = now;
            for f in fetches.iter_mut().filter(|f| f.done.is_none()) {
                f.on_tick(now, o.server);
                if f.done.is_some() {
                    open -= 1;
                    poll.registry().deregister(&mut f.sock)?;
                }
            }
        }
    }
    let elapsed = start.elapsed();

    let mut bytes = 0u64;
    let mut failures = 0;
    for f in &fetches {
        match &f.done {
            Some(Ok(b)) if expect_size.is_none_or(|e| e == *b) => bytes += b,
            Some(Ok(b)) => {
                failures += 1;
                eprintln!("short transfer: {b} bytes");
            }
            Some(Err(e)) => {
                failures += 1;
                eprintln!("failed: {e}");
            }
            None => failures += 1,
        }
    }
    println!(
        "{n} transfers in {:.2} s, failures {failures}, {:.1} MiB/s",
        elapsed.as_secs_f64(),
        bytes as f64 / 1_048_576.0 / elapsed.as_secs_f64()
    );
    Ok(())
}
