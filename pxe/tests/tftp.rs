//! TFTP against real clients (tftp-hpa, curl) and a raw client for the edge cases.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pxe::{NullAddressLeaseStore, PxeConfig, StaticDirectory};

struct Setup {
    lab: Lab,
    client: String,
    srv: Server,
    root: std::path::PathBuf,
}

fn setup(tag: &str) -> Setup {
    setup_with(tag, |_| {})
}

fn setup_with(tag: &str, tune: impl FnOnce(&mut PxeConfig)) -> Setup {
    let lab = Lab::new(tag);
    let client = lab.add_host("cli", "52:54:00:cc:00:01", Some("10.77.0.9/24"));
    let root = lab.fake_tftp_root();
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/big.bin"), pseudo_random(1_000_000, 3)).unwrap();
    std::fs::write(lab.path("secret"), b"outside the root").unwrap();
    std::os::unix::fs::symlink(lab.path("secret"), root.join("escape")).unwrap();
    let mut cfg = PxeConfig::new("br0", &root);
    cfg.dhcp_enabled = false;
    tune(&mut cfg);
    let srv = Server::start(
        &lab.srv,
        cfg,
        Arc::new(StaticDirectory::new()),
        Arc::new(NullAddressLeaseStore),
    );
    Setup {
        lab,
        client,
        srv,
        root,
    }
}

fn rrq(name: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut p = vec![0, 1];
    for s in [name, "octet"]
        .into_iter()
        .chain(opts.iter().flat_map(|(a, b)| [*a, *b]))
    {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    p
}

fn raw_socket() -> UdpSocket {
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

fn recv(s: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let end = Instant::now() + wait;
    let mut buf = vec![0u8; 70_000];
    while Instant::now() < end {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            return Some((buf[..n].to_vec(), from));
        }
    }
    None
}

#[test]
fn real_clients_fetch_files() {
    require("tftp", "tftp-hpa");
    require("curl", "curl");
    let s = setup("tftpreal");
    let out_hpa = s.lab.path("hpa.out");
    let o = s.lab.exec(
        &s.client,
        &[
            "tftp",
            "10.77.0.1",
            "-m",
            "binary",
            "-c",
            "get",
            "undionly.kpxe",
            out_hpa.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        std::fs::read(&out_hpa).unwrap(),
        std::fs::read(s.root.join("undionly.kpxe")).unwrap()
    );

    // curl negotiates blksize and tsize.
    let out_curl = s.lab.path("curl.out");
    let o = s.lab.exec(
        &s.client,
        &[
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--tftp-blksize",
            "1468",
            "-o",
            out_curl.to_str().unwrap(),
            "tftp://10.77.0.1/sub/big.bin",
        ],
        Duration::from_secs(25),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(&out_curl).unwrap(),
        pseudo_random(1_000_000, 3)
    );

    // 20 clients at once.
    let script = (0..20)
        .map(|i| format!("curl -sS --max-time 30 --tftp-blksize 1468 -o {}/c{i}.out tftp://10.77.0.1/snponly.efi &", s.lab.dir.path().display()))
        .collect::<Vec<_>>()
        .join("\n")
        + "\nfail=0; for j in $(jobs -p); do wait $j || fail=1; done; exit $fail\n";
    let o = s
        .lab
        .exec(&s.client, &["sh", "-c", &script], Duration::from_secs(40));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = std::fs::read(s.root.join("snponly.efi")).unwrap();
    for i in 0..20 {
        assert_eq!(
            std::fs::read(s.lab.path(&format!("c{i}.out"))).unwrap(),
            want,
            "client {i}"
        );
    }
    wait_for("transfers finished", Duration::from_secs(5), || {
        get(&s.srv.metrics.tftp_active) == 0
    });
    assert_eq!(get(&s.srv.metrics.tftp_completed), 22);
    assert!(get(&s.srv.metrics.tftp_bytes) >= 1_000_000 + 20 * 200_000);
}

#[test]
fn escapes_writes_and_garbage_are_refused() {
    let s = setup("tftpdeny");
    let results = in_ns(&s.client, || {
        let mut codes = Vec::new();
        for name in [
            "../secret",
            "sub/../../secret",
            "/etc/passwd",
            "escape",
            "missing.efi",
            "sub",
        ] {
            let sock = raw_socket();
            sock.send_to(&rrq(name, &[]), "10.77.0.1:69").unwrap();
            let (p, _) = recv(&sock, Duration::from_secs(2))
                .unwrap_or_else(|| panic!("no answer for {name}"));
            assert_eq!(&p[..2], &[0, 5], "{name}: expected ERROR, got {p:?}");
            codes.push((name, p[3]));
        }
        // WRQ.
        let sock = raw_socket();
        let mut wrq = rrq("new.bin", &[]);
        wrq[1] = 2;
        sock.send_to(&wrq, "10.77.0.1:69").unwrap();
        let (p, _) = recv(&sock, Duration::from_secs(2)).expect("no answer to WRQ");
        codes.push(("WRQ", p[3]));
        // Garbage, then a valid request still works.
        for g in [
            &b""[..],
            b"\x00",
            b"\x00\x01nonul",
            b"\x00\x09\x00\x00",
            b"\x00\x01a\x00bogus\x00",
            &pseudo_random(1500, 4),
        ] {
            let _ = sock.send_to(g, "10.77.0.1:69");
        }
        sock.send_to(&rrq("undionly.kpxe", &[]), "10.77.0.1:69")
            .unwrap();
        let (p, _) = recv(&sock, Duration::from_secs(2)).expect("no DATA after garbage");
        codes.push(("valid", p[1]));
        codes
    });
    assert_eq!(
        results,
        vec![
            ("../secret", 2),
            ("sub/../../secret", 2),
            ("/etc/passwd", 2),
            ("escape", 2),
            ("missing.efi", 1),
            ("sub", 1),
            ("WRQ", 2),
            ("valid", 3)
        ]
    );
    assert!(
        get(&s.srv.metrics.tftp_malformed) >= 5,
        "{}",
        s.srv.prometheus()
    );
    assert!(get(&s.srv.metrics.tftp_refused) >= 7);
}

/// A PXE ROM asks for tsize, then aborts with ERROR 8: the transfer must end at once.
#[test]
fn tsize_probe_then_error_ends_transfer() {
    let s = setup("tftpprobe");
    let metrics = Arc::clone(&s.srv.metrics);
    let (oack, after) = in_ns(&s.client, move || {
        let sock = raw_socket();
        sock.send_to(
            &rrq(
                "snponly.efi",
                &[("tsize", "0"), ("blksize", "1468"), ("timeout", "1")],
            ),
            "10.77.0.1:69",
        )
        .unwrap();
        let (oack, tid) = recv(&sock, Duration::from_secs(2)).expect("no OACK");
        sock.send_to(b"\x00\x05\x00\x08tsize probe\x00", tid)
            .unwrap();
        // With timeout=1 a server that ignored the ERROR would retransmit the OACK within ~1 s.
        let after = recv(&sock, Duration::from_millis(2500));
        (oack, after)
    });
    assert_eq!(&oack[..2], &[0, 6], "expected OACK");
    let text = String::from_utf8_lossy(&oack[2..]).replace('\0', " ");
    assert!(text.contains("tsize 200000"), "{text}");
    assert!(text.contains("blksize 1468"), "{text}");
    assert!(
        after.is_none(),
        "server kept sending after the client's ERROR: {after:?}"
    );
    assert_eq!(get(&metrics.tftp_aborted_by_client), 1);
    assert_eq!(get(&metrics.tftp_active), 0);
    assert_eq!(get(&metrics.tftp_timeouts), 0);
    assert_eq!(get(&metrics.tftp_completed), 0);
}

/// RFC 7440 windowsize with a raw client acking once per window.
#[test]
fn windowsize_transfer() {
    let s = setup("tftpwin");
    let data = in_ns(&s.client, || {
        let sock = raw_socket();
        sock.send_to(
            &rrq("sub/big.bin", &[("blksize", "1024"), ("windowsize", "8")]),
            "10.77.0.1:69",
        )
        .unwrap();
        let (oack, tid) = recv(&sock, Duration::from_secs(2)).expect("no OACK");
        assert_eq!(&oack[..2], &[0, 6]);
        assert!(String::from_utf8_lossy(&oack).contains("windowsize\u{0}8"));
        sock.send_to(&[0, 4, 0, 0], tid).unwrap();
        let mut out = Vec::new();
        let mut expect: u16 = 1;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "windowed transfer too slow");
            let (p, _) = recv(&sock, Duration::from_secs(3)).expect("transfer stalled");
            let block = u16::from_be_bytes([p[2], p[3]]);
            if block != expect {
                continue; // out of order: wait for retransmission
            }
            out.extend_from_slice(&p[4..]);
            let last = p.len() - 4 < 1024;
            if expect % 8 == 0 || last {
                sock.send_to(&[0, 4, p[2], p[3]], tid).unwrap();
            }
            expect = expect.wrapping_add(1);
            if last {
                break;
            }
        }
        out
    });
    assert_eq!(data, pseudo_random(1_000_000, 3));
    wait_for("completed", Duration::from_secs(2), || {
        get(&s.srv.metrics.tftp_completed) == 1
    });
}

/// Lock-step ACKs, one block at a time, from `first` on; returns the payload.
fn lockstep(sock: &UdpSocket, tid: SocketAddr, blksize: usize, first: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut p = first;
    let mut expect: u16 = 1;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "lock-step transfer too slow");
        assert_eq!(&p[..2], &[0, 3], "DATA expected");
        let block = u16::from_be_bytes([p[2], p[3]]);
        if block == expect {
            out.extend_from_slice(&p[4..]);
            sock.send_to(&[0, 4, p[2], p[3]], tid).unwrap();
            if p.len() - 4 < blksize {
                return out;
            }
            expect = expect.wrapping_add(1);
        }
        p = recv(sock, Duration::from_secs(3))
            .expect("transfer stalled")
            .0;
    }
}

/// More than 65,535 blocks: block numbers wrap to 0 and the file still arrives whole.
#[test]
fn block_numbers_roll_over() {
    let s = setup("tftproll");
    let want = pseudo_random(8 * 66_000 + 3, 5);
    std::fs::write(s.root.join("sub/roll.bin"), &want).unwrap();
    let got = in_ns(&s.client, || {
        let sock = raw_socket();
        sock.send_to(&rrq("sub/roll.bin", &[("blksize", "8")]), "10.77.0.1:69")
            .unwrap();
        let (oack, tid) = recv(&sock, Duration::from_secs(2)).expect("no OACK");
        assert_eq!(&oack[..2], &[0, 6]);
        sock.send_to(&[0, 4, 0, 0], tid).unwrap();
        let first = recv(&sock, Duration::from_secs(2)).expect("no DATA 1").0;
        lockstep(&sock, tid, 8, first)
    });
    assert_eq!(got.len(), want.len());
    assert!(got == want, "rolled-over transfer differs");
    wait_for("completed", Duration::from_secs(2), || {
        get(&s.srv.metrics.tftp_completed) == 1
    });
}

/// A lost ACK gets the block again after the timeout; a silent client is given up on after
/// the configured retries, and its slot is freed.
#[test]
fn lost_acks_are_retransmitted_then_the_transfer_times_out() {
    let s = setup_with("tftpretx", |c| {
        c.tftp.timeout = Duration::from_secs(1);
        c.tftp.retries = 2;
    });
    // The socket outlives the closure: a closed port would answer the retransmissions with
    // ICMP port unreachable, which ends the transfer early (a different path).
    let _sock = in_ns(&s.client, || {
        let sock = raw_socket();
        sock.send_to(&rrq("sub/big.bin", &[]), "10.77.0.1:69")
            .unwrap();
        let (d1, tid) = recv(&sock, Duration::from_secs(2)).expect("no DATA 1");
        assert_eq!(&d1[..4], &[0, 3, 0, 1]);
        // No ACK: the same block comes again after about a second.
        let t0 = Instant::now();
        let (again, from) = recv(&sock, Duration::from_secs(3)).expect("no retransmission");
        assert_eq!(from, tid, "retransmitted from another port");
        assert_eq!(again, d1);
        assert!(
            t0.elapsed() >= Duration::from_millis(700),
            "{:?}",
            t0.elapsed()
        );
        // ACK it: block 2 follows at once; then go silent.
        sock.send_to(&[0, 4, 0, 1], tid).unwrap();
        let (d2, _) = recv(&sock, Duration::from_secs(1)).expect("no DATA 2");
        assert_eq!(&d2[..4], &[0, 3, 0, 2]);
        sock
    });
    wait_for("timeout", Duration::from_secs(6), || {
        get(&s.srv.metrics.tftp_timeouts) == 1 && get(&s.srv.metrics.tftp_active) == 0
    });
    assert_eq!(get(&s.srv.metrics.tftp_completed), 0);
}

/// RFC 7440: an ACK inside the window (the client lost a packet) restarts the window right
/// after the acknowledged block.
#[test]
fn partial_window_ack_restarts_after_the_acked_block() {
    let s = setup("tftppart");
    in_ns(&s.client, || {
        let sock = raw_socket();
        sock.send_to(
            &rrq("sub/big.bin", &[("blksize", "512"), ("windowsize", "4")]),
            "10.77.0.1:69",
        )
        .unwrap();
        let (_oack, tid) = recv(&sock, Duration::from_secs(2)).expect("no OACK");
        sock.send_to(&[0, 4, 0, 0], tid).unwrap();
        let blocks: Vec<u16> = (0..4)
            .map(|_| {
                let (p, _) = recv(&sock, Duration::from_secs(2)).expect("window");
                u16::from_be_bytes([p[2], p[3]])
            })
            .collect();
        assert_eq!(blocks, [1, 2, 3, 4]);
        // Pretend block 3 was lost: ACK 2.
        sock.send_to(&[0, 4, 0, 2], tid).unwrap();
        let blocks: Vec<u16> = (0..4)
            .map(|_| {
                let (p, _) = recv(&sock, Duration::from_secs(2)).expect("next window");
                u16::from_be_bytes([p[2], p[3]])
            })
            .collect();
        assert_eq!(blocks, [3, 4, 5, 6]);
        // Abort politely.
        sock.send_to(b"\x00\x05\x00\x00done\x00", tid).unwrap();
    });
    wait_for("aborted", Duration::from_secs(2), || {
        get(&s.srv.metrics.tftp_aborted_by_client) == 1 && get(&s.srv.metrics.tftp_active) == 0
    });
}
