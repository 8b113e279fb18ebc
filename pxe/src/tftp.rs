//! Read-only TFTP server (RFC 1350, 2347 options, 2348 blksize, 2349 tsize/timeout,
//! 7440 windowsize). Requests are taken and negotiated on tokio; the packets of running
//! transfers are moved by one data-plane thread ([`engine`]). A client ERROR ends its
//! transfer at once.

mod engine;

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::TftpConfig;
use crate::dhcp::net::bound_std_udp_socket;
use crate::metrics::Metrics;
use engine::{Engine, NewTransfer};

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// TFTP error codes we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TftpErrorCode {
    /// 0: not defined (busy).
    Undefined = 0,
    /// 1: file not found.
    NotFound = 1,
    /// 2: access violation.
    AccessViolation = 2,
    /// 4: illegal operation.
    IllegalOperation = 4,
    /// 5: unknown transfer ID.
    UnknownTid = 5,
    /// 8: option negotiation refused.
    BadOption = 8,
}

/// A decoded TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TftpPacket {
    /// Read request.
    Rrq(Request),
    /// Write request (always refused).
    Wrq(Request),
    /// Data block.
    Data {
        /// Block number.
        block: u16,
        /// Payload length.
        len: usize,
    },
    /// Acknowledgement.
    Ack(u16),
    /// Error from the peer.
    Error {
        /// Code.
        code: u16,
        /// Message.
        message: String,
    },
    /// Option acknowledgement.
    OAck,
}

/// RRQ/WRQ contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Requested file name.
    pub filename: String,
    /// Transfer mode (`octet`, `netascii`).
    pub mode: String,
    /// Options, names lower-cased.
    pub options: Vec<(String, String)>,
}

/// Malformed TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed TFTP packet: {0}")]
pub struct TftpParseError(pub &'static str);

fn cstrings(buf: &[u8]) -> Result<Vec<String>, TftpParseError> {
    if buf.last() != Some(&0) {
        return Err(TftpParseError("strings not NUL-terminated"));
    }
    let body = &buf[..buf.len() - 1];
    let parts: Vec<String> = body
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    if parts.len() > 64 {
        return Err(TftpParseError("too many options"));
    }
    Ok(parts)
}

/// Decodes one TFTP packet (never panics; fuzzed).
pub fn parse_tftp_packet(buf: &[u8]) -> Result<TftpPacket, TftpParseError> {
    if buf.len() < 4 {
        return Err(TftpParseError("short packet"));
    }
    if buf.len() > 65468 {
        return Err(TftpParseError("oversized packet"));
    }
    let op = u16::from_be_bytes([buf[0], buf[1]]);
    let n = u16::from_be_bytes([buf[2], buf[3]]);
    match op {
        OP_RRQ | OP_WRQ => {
            let parts = cstrings(&buf[2..])?;
            let mut it = parts.into_iter();
            let filename = it.next().ok_or(TftpParseError("no file name"))?;
            let mode = it
                .next()
                .ok_or(TftpParseError("no mode"))?
                .to_ascii_lowercase();
            if filename.is_empty() {
                return Err(TftpParseError("empty file name"));
            }
            if mode != "octet" && mode != "netascii" {
                return Err(TftpParseError("unsupported mode"));
            }
            let rest: Vec<String> = it.collect();
            if rest.len() % 2 != 0 {
                return Err(TftpParseError("option without value"));
            }
            let options = rest
                .chunks(2)
                .map(|c| (c[0].to_ascii_lowercase(), c[1].clone()))
                .collect();
            let r = Request {
                filename,
                mode,
                options,
            };
            Ok(if op == OP_RRQ {
                TftpPacket::Rrq(r)
            } else {
                TftpPacket::Wrq(r)
            })
        }
        OP_DATA => Ok(TftpPacket::Data {
            block: n,
            len: buf.len() - 4,
        }),
        OP_ACK => Ok(TftpPacket::Ack(n)),
        OP_ERROR => {
            let msg = buf.get(4..).unwrap_or_default();
            let msg = msg.split(|b| *b == 0).next().unwrap_or_default();
            Ok(TftpPacket::Error {
                code: n,
                message: String::from_utf8_lossy(msg).into_owned(),
            })
        }
        OP_OACK => Ok(TftpPacket::OAck),
        _ => Err(TftpParseError("unknown opcode")),
    }
}

fn error_packet(code: TftpErrorCode, msg: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + msg.len());
    p.extend_from_slice(&OP_ERROR.to_be_bytes());
    p.extend_from_slice(&(code as u16).to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    p.push(0);
    p
}

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    /// `..`, absolute, or a symlink leading out of the root.
    Escape,
    /// No such regular file.
    NotFound,
}

/// Resolves `name` inside `root` (canonical). Refuses `..`, absolute paths and symlinks
/// that end outside the root; accepts `\` as a separator (Windows-style PXE requests).
pub fn resolve_path(root: &Path, name: &str) -> Result<PathBuf, PathRefusal> {
    if name.contains('\0') {
        return Err(PathRefusal::Escape);
    }
    let name = name.replace('\\', "/");
    let rel = Path::new(&name);
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(PathRefusal::Escape)
            }
        }
    }
    let canon = std::fs::canonicalize(root.join(rel)).map_err(|_| PathRefusal::NotFound)?;
    if !canon.starts_with(root) {
        return Err(PathRefusal::Escape);
    }
    if !canon.is_file() {
        return Err(PathRefusal::NotFound);
    }
    Ok(canon)
}

/// Shared state of the TFTP server.
pub(crate) struct Tftp {
    root: PathBuf,
    local_ip: Ipv4Addr,
    interface: String,
    cfg: TftpConfig,
    metrics: Arc<Metrics>,
    active: Arc<Mutex<HashSet<SocketAddr>>>,
    slots: Arc<Semaphore>,
    engine: Engine,
    events: crate::events::BootEvents,
}

/// A running transfer's claim: its place among `max_transfers` and its client in the set of
/// active peers (so a retransmitted RRQ does not start a second transfer). Dropping it, at
/// whatever point the transfer ends, gives both back.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    peer: SocketAddr,
    active: Arc<Mutex<HashSet<SocketAddr>>>,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.tftp_active.fetch_sub(1, Ordering::Relaxed);
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.peer);
    }
}

impl Tftp {
    pub(crate) fn new(
        root: PathBuf,
        local_ip: Ipv4Addr,
        interface: String,
        cfg: TftpConfig,
        metrics: Arc<Metrics>,
        events: crate::events::BootEvents,
    ) -> io::Result<Self> {
        let root = std::fs::canonicalize(root)?;
        let slots = Arc::new(Semaphore::new(cfg.max_transfers.max(1)));
        let engine = Engine::start(Arc::clone(&metrics))?;
        Ok(Tftp {
            root,
            local_ip,
            interface,
            cfg,
            metrics,
            active: Arc::new(Mutex::new(HashSet::new())),
            slots,
            engine,
            events,
        })
    }

    /// Listens on `sock` until shutdown.
    pub(crate) async fn serve(self: Arc<Self>, sock: UdpSocket, shutdown: CancellationToken) {
        let mut buf = vec![0u8; 2048];
        loop {
            let got = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = sock.recv_from(&mut buf) => r,
            };
            let (n, peer) = match got {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("TFTP receive failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Some(data) = buf.get(..n) else { continue };
            match parse_tftp_packet(data) {
                Ok(TftpPacket::Rrq(req)) => {
                    if !self
                        .active
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(peer)
                    {
                        continue; // retransmitted RRQ of a running transfer
                    }
                    let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
                        self.forget(peer);
                        self.metrics.tftp_refused.fetch_add(1, Ordering::Relaxed);
                        let _ = sock
                            .send_to(&error_packet(TftpErrorCode::Undefined, "server busy"), peer)
                            .await;
                        continue;
                    };
                    self.metrics.tftp_active.fetch_add(1, Ordering::Relaxed);
                    let slot = Slot {
                        _permit: permit,
                        peer,
                        active: Arc::clone(&self.active),
                        metrics: Arc::clone(&self.metrics),
                    };
                    let this = Arc::clone(&self);
                    let stop = shutdown.clone();
                    // Negotiation (path checks, open) off the listener; the engine then owns
                    // the slot until the transfer ends.
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = this.transfer(peer, req, slot) => {}
                        }
                    });
                }
                Ok(TftpPacket::Wrq(_)) => {
                    self.metrics.tftp_refused.fetch_add(1, Ordering::Relaxed);
                    let _ = sock
                        .send_to(
                            &error_packet(TftpErrorCode::AccessViolation, "read-only server"),
                            peer,
                        )
                        .await;
                }
                Ok(_) => {
                    // Stray DATA/ACK/ERROR to the listening port.
                    self.metrics.tftp_malformed.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.metrics.tftp_malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "{e}");
                }
            }
        }
        // Running transfers end with the service.
        self.engine.stop();
    }

    fn forget(&self, peer: SocketAddr) {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&peer);
    }

    /// Resolves and opens the file, negotiates options, and hands the transfer to the data
    /// plane, which keeps `slot` until the transfer is over.
    async fn transfer(&self, peer: SocketAddr, req: Request, slot: Slot) {
        let sock = match bound_std_udp_socket(
            "TFTP transfer",
            &self.interface,
            SocketAddrV4::new(self.local_ip, 0),
            false,
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("{e}");
                return;
            }
        };
        // Connected to the client (as tftpd-hpa does): the kernel keeps the route instead of
        // looking it up for every DATA packet, and datagrams from any other address never
        // reach this socket (it answers them with ICMP port unreachable, not ERROR 5).
        if let Err(e) = sock.connect(peer) {
            tracing::warn!(%peer, "TFTP transfer socket: connect failed: {e}");
            return;
        }
        let refuse = |code, msg: &'static str| {
            self.metrics.tftp_refused.fetch_add(1, Ordering::Relaxed);
            let _ = sock.send(&error_packet(code, msg));
        };
        let root = self.root.clone();
        let name = req.filename.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let path = resolve_path(&root, &name)?;
            let file = std::fs::File::open(&path).map_err(|_| PathRefusal::NotFound)?;
            let size = file.metadata().map_err(|_| PathRefusal::NotFound)?.len();
            Ok::<_, PathRefusal>((file, size))
        })
        .await
        .unwrap_or(Err(PathRefusal::NotFound));
        if let std::net::IpAddr::V4(ip) = peer.ip() {
            let detail = match &opened {
                Ok((_, size)) => serde_json::json!({ "file": req.filename, "size": size }),
                Err(PathRefusal::Escape) => {
                    serde_json::json!({ "file": req.filename, "error": "access violation" })
                }
                Err(PathRefusal::NotFound) => {
                    serde_json::json!({ "file": req.filename, "error": "file not found" })
                }
            };
            let kind = if opened.is_ok() {
                "tftp.read"
            } else {
                "tftp.refused"
            };
            self.events.record_from(ip, kind, detail);
        }
        let (file, size) = match opened {
            Ok(x) => x,
            Err(PathRefusal::Escape) => {
                tracing::info!(%peer, file = %req.filename, "TFTP path outside the root refused");
                return refuse(TftpErrorCode::AccessViolation, "access violation");
            }
            Err(PathRefusal::NotFound) => {
                tracing::info!(%peer, file = %req.filename, "TFTP file not found");
                return refuse(TftpErrorCode::NotFound, "file not found");
            }
        };
        self.metrics.tftp_transfers.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, file = %req.filename, size, "TFTP transfer");

        // Option negotiation.
        let mut blksize = 512usize;
        let mut window = 1usize;
        let mut timeout = self.cfg.timeout;
        let mut oack: Vec<u8> = Vec::new();
        for (name, value) in &req.options {
            let v: Option<u64> = value.trim().parse().ok();
            match (name.as_str(), v) {
                ("blksize", Some(b)) if b >= 8 => {
                    let b = b.min(u64::from(self.cfg.max_block_size)).min(65464) as usize;
                    blksize = b;
                    push_opt(&mut oack, "blksize", b as u64);
                }
                ("tsize", Some(_)) => push_opt(&mut oack, "tsize", size),
                ("timeout", Some(t)) if (1..=255).contains(&t) => {
                    timeout = Duration::from_secs(t);
                    push_opt(&mut oack, "timeout", t);
                }
                ("windowsize", Some(w)) if w >= 1 => {
                    let w = w.min(u64::from(self.cfg.max_window_size.max(1))).min(65535);
                    window = w as usize;
                    push_opt(&mut oack, "windowsize", w);
                }
                _ => {} // unknown or invalid options are ignored (RFC 2347)
            }
        }
        let oack = (!oack.is_empty()).then(|| {
            let mut pkt = OP_OACK.to_be_bytes().to_vec();
            pkt.extend_from_slice(&oack);
            pkt
        });
        self.engine.submit(NewTransfer {
            sock,
            peer,
            file,
            size,
            blksize,
            window,
            timeout,
            retries: self.cfg.retries,
            oack,
            slot,
        });
    }
}

fn push_opt(out: &mut Vec<u8>, name: &str, v: u64) {
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.extend_from_slice(v.to_string().as_bytes());
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rrq() {
        let p = b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001468\x00TSIZE\x000\x00";
        match parse_tftp_packet(p) {
            Ok(TftpPacket::Rrq(r)) => {
                assert_eq!(r.filename, "undionly.kpxe");
                assert_eq!(r.options[1], ("tsize".to_string(), "0".to_string()));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_tftp_packet(b"\x00\x01abc").is_err());
        assert!(parse_tftp_packet(b"\x00\x01abc\x00mail\x00").is_err());
        assert!(parse_tftp_packet(b"\x00\x01abc\x00octet\x00blksize\x00").is_err());
        assert!(parse_tftp_packet(b"\x00\x09\x00\x00").is_err());
        assert_eq!(
            parse_tftp_packet(b"\x00\x04\x00\x07"),
            Ok(TftpPacket::Ack(7))
        );
        assert!(matches!(
            parse_tftp_packet(b"\x00\x05\x00\x08tsize probe\x00"),
            Ok(TftpPacket::Error { code: 8, .. })
        ));
        for n in 0..p.len() {
            let _ = parse_tftp_packet(&p[..n]);
        }
    }

    #[test]
    fn path_rules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(dir.path()).expect("canon");
        std::fs::write(root.join("a.efi"), b"x").expect("write");
        std::fs::create_dir(root.join("sub")).expect("mkdir");
        std::fs::write(root.join("sub/b"), b"x").expect("write");
        std::os::unix::fs::symlink("/etc/hostname", root.join("out")).expect("symlink");
        std::os::unix::fs::symlink("a.efi", root.join("in")).expect("symlink");
        assert!(resolve_path(&root, "a.efi").is_ok());
        assert!(resolve_path(&root, "sub/b").is_ok());
        assert!(resolve_path(&root, "sub\\b").is_ok());
        assert!(resolve_path(&root, "in").is_ok());
        assert_eq!(
            resolve_path(&root, "../etc/passwd"),
            Err(PathRefusal::Escape)
        );
        assert_eq!(resolve_path(&root, "sub/../../x"), Err(PathRefusal::Escape));
        assert_eq!(resolve_path(&root, "/etc/passwd"), Err(PathRefusal::Escape));
        assert_eq!(resolve_path(&root, "out"), Err(PathRefusal::Escape));
        assert_eq!(resolve_path(&root, "nope"), Err(PathRefusal::NotFound));
        assert_eq!(resolve_path(&root, "sub"), Err(PathRefusal::NotFound));
    }
}
