//! Measures what happens after a PXE-style "tsize probe, then ERROR 8" against async-tftp 0.4
//! and against this crate's TFTP server, both on loopback. Evidence for docs/pxe-notes.md.
//!
//! `cargo run -p pxe --example async_tftp_issue18` (root not needed; uses 127.0.0.1 only).
#![allow(missing_docs)]

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rrq() -> Vec<u8> {
    let mut p = vec![0, 1];
    for s in [
        "probe.bin",
        "octet",
        "tsize",
        "0",
        "blksize",
        "1468",
        "timeout",
        "1",
    ] {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    p
}

/// Sends the probe and the ERROR; returns packets received in `watch` afterwards.
fn probe(server: &str, watch: Duration) -> (usize, Option<Duration>) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    s.send_to(&rrq(), server).expect("send");
    let mut buf = [0u8; 2048];
    let (n, tid) = loop {
        match s.recv_from(&mut buf) {
            Ok(x) => break x,
            Err(_) => continue,
        }
    };
    assert_eq!(&buf[..2], &[0, 6], "expected OACK, got {:?}", &buf[..n]);
    s.send_to(b"\x00\x05\x00\x08tsize probe\x00", tid)
        .expect("send error");
    let start = Instant::now();
    let mut count = 0;
    let mut last = None;
    while start.elapsed() < watch {
        if s.recv_from(&mut buf).is_ok() {
            count += 1;
            last = Some(start.elapsed());
        }
    }
    (count, last)
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("probe.bin"), vec![7u8; 300_000]).expect("write");
    let watch = Duration::from_secs(10);

    // async-tftp 0.4 (runs on its own executor).
    let root = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        futures::executor::block_on(async move {
            let server = async_tftp::server::TftpServerBuilder::with_dir_ro(&root)
                .expect("dir")
                .bind("127.0.0.1:0".parse().expect("addr"))
                .build()
                .await
                .expect("build");
            tx.send(server.listen_addr().expect("addr")).expect("send");
            let _ = server.serve().await;
        })
    });
    let addr = rx.recv().expect("addr").to_string();
    let (n, last) = probe(&addr, watch);
    println!(
        "async-tftp 0.4: {n} packets (OACK retransmissions) in {watch:?} after the client's ERROR 8; last at {last:?}"
    );

    // This crate's server on lo.
    let mut cfg = pxe::PxeConfig::new("lo", dir.path());
    std::fs::write(dir.path().join("undionly.kpxe"), b"x").expect("w");
    std::fs::write(dir.path().join("snponly.efi"), b"x").expect("w");
    cfg.server_ip = Some("127.0.0.1".parse().expect("ip"));
    cfg.dhcp_enabled = false;
    cfg.tftp.port = 16_969;
    let metrics = Arc::new(pxe::Metrics::new());
    let m = Arc::clone(&metrics);
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let t = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(pxe::run(
            cfg,
            Arc::new(pxe::StaticDirectory::new()),
            Arc::new(pxe::NullAddressLeaseStore),
            m,
            s,
        ))
    });
    std::thread::sleep(Duration::from_millis(300));
    let (n, last) = probe("127.0.0.1:16969", watch);
    println!(
        "pxe crate: {n} packets in {watch:?} after the client's ERROR 8; last at {last:?}; aborted_by_client={} active={}",
        metrics.tftp_aborted_by_client.load(std::sync::atomic::Ordering::Relaxed),
        metrics.tftp_active.load(std::sync::atomic::Ordering::Relaxed)
    );
    stop.cancel();
    let _ = t.join();
}
