//! DHCP sockets (SO_BINDTODEVICE, IP_PKTINFO), receive loops and the group-commit writer.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::dhcp::core::{DhcpCore, DhcpOutcome, Port, Reply};
use crate::error::PxeError;
use crate::lease::{AddressLeaseChange, AddressLeaseKey, AddressLeaseStore};
use crate::metrics::{DropReason, Metrics};

/// Receive and send buffer of the well-known-port sockets (DHCP 67/4011, TFTP 69).
const SOCKET_BUFFER: usize = 4 << 20;
/// ACKs released per step when a committed batch is sent (see [`reply_sender`]).
const PACE_CHUNK: usize = 32;

/// Creates a UDP socket bound to `interface` (SO_BINDTODEVICE) on `addr`, broadcast allowed.
pub(crate) fn bound_udp_socket(
    what: &'static str,
    interface: &str,
    addr: SocketAddrV4,
    pktinfo: bool,
) -> Result<UdpSocket, PxeError> {
    let s = bound_std_udp_socket(what, interface, addr, pktinfo)?;
    UdpSocket::from_std(s).map_err(|source| PxeError::Bind {
        what,
        addr: SocketAddr::V4(addr),
        interface: interface.to_string(),
        source,
    })
}

/// [`bound_udp_socket`] without the tokio registration (non-blocking std socket), for
/// sockets driven outside the runtime (the TFTP data plane).
pub(crate) fn bound_std_udp_socket(
    what: &'static str,
    interface: &str,
    addr: SocketAddrV4,
    pktinfo: bool,
) -> Result<std::net::UdpSocket, PxeError> {
    let err = |source: io::Error| PxeError::Bind {
        what,
        addr: SocketAddr::V4(addr),
        interface: interface.to_string(),
        source,
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    // Only for well-known ports: with SO_REUSEADDR the kernel may hand the same ephemeral
    // port to two sockets (port 0), mixing up TFTP transfers.
    if addr.port() != 0 {
        s.set_reuse_address(true).map_err(err)?;
    }
    s.set_broadcast(true).map_err(err)?;
    if !interface.is_empty() {
        s.bind_device(Some(interface.as_bytes())).map_err(err)?;
    }
    if pktinfo {
        setsockopt(&s, sockopt::Ipv4PacketInfo, &true).map_err(|e| err(e.into()))?;
    }
    if addr.port() != 0 {
        // Requests arrive in bursts (a rack powering on, a relay flushing): the default
        // ~208 KiB holds only a few hundred datagrams, and what overflows is lost silently.
        // SO_RCVBUFFORCE passes net.core.rmem_max (we run as root); if refused, take what
        // SO_RCVBUF gives.
        if setsockopt(&s, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
            let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
        }
        if setsockopt(&s, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
            let _ = s.set_send_buffer_size(SOCKET_BUFFER);
        }
    }
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&SocketAddr::V4(addr).into()).map_err(err)?;
    Ok(s.into())
}

/// One received datagram.
struct Received {
    len: usize,
    src: SocketAddrV4,
    truncated: bool,
    ifindex: Option<i32>,
}

async fn recv_pktinfo(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    let fd = sock.as_raw_fd();
    loop {
        sock.readable().await?;
        let r = sock.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut *buf)];
            let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
            let msg = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
                .map_err(io::Error::from)?;
            let mut ifindex = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::Ipv4PacketInfo(info) = c {
                        ifindex = Some(info.ipi_ifindex);
                    }
                }
            }
            let src = msg
                .address
                .map(|a| SocketAddrV4::new(a.ip(), a.port()))
                .unwrap_or_else(|| SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
            Ok(Received {
                len: msg.bytes,
                src,
                truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
                ifindex,
            })
        });
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// The sockets replies leave from.
pub(crate) struct Senders {
    pub interface: String,
    pub dhcp: Arc<UdpSocket>,
    pub proxy: Option<Arc<UdpSocket>>,
    pub metrics: Arc<Metrics>,
}

impl Senders {
    pub(crate) async fn send(&self, r: &Reply) {
        let sock = match r.via {
            Port::Dhcp => &self.dhcp,
            Port::Proxy => match &self.proxy {
                Some(s) => s,
                None => &self.dhcp,
            },
        };
        let mut dest = r.dest;
        if let Some((ip, mac)) = r.arp_unicast {
            match crate::dhcp::arp::set_arp_entry(sock.as_raw_fd(), &self.interface, ip, mac) {
                Ok(()) => {
                    dest = SocketAddrV4::new(ip, r.dest.port());
                    self.metrics
                        .dhcp_arp_unicast
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    if self.metrics.dhcp_arp_failed.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(%ip, %mac, "SIOCSARP failed ({e}); broadcasting replies instead");
                    }
                }
            }
        }
        match sock.send_to(&r.bytes, dest).await {
            Ok(_) => {
                self.metrics.dhcp_answered.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(%dest, "sending DHCP reply failed: {e}"),
        }
    }
}

/// Work for the lease writer: changes to make durable, then a reply to send (or the
/// refusal, when a shared store gives the address to another instance's client).
pub(crate) struct Pending {
    pub changes: Vec<AddressLeaseChange>,
    pub reply: Option<Reply>,
    pub refusal: Option<Reply>,
}

/// Group commit: takes everything queued, stores it in one batch, then hands the replies to
/// [`reply_sender`]. While one batch commits the next one queues, so the batch size follows
/// the load and a reply waits at most about two commits.
pub(crate) async fn lease_writer(
    store: Arc<dyn AddressLeaseStore>,
    core: Arc<DhcpCore>,
    mut rx: mpsc::Receiver<Pending>,
    replies: mpsc::UnboundedSender<Vec<Reply>>,
    metrics: Arc<Metrics>,
) {
    let shared = store.shared();
    let mut batch: Vec<Pending> = Vec::with_capacity(1024);
    while rx.recv_many(&mut batch, 4096).await > 0 {
        // Which addresses each packet's lease asks for: a shared store may refuse some.
        let asked: Vec<Vec<(AddressLeaseKey, Ipv4Addr)>> = if shared {
            batch
                .iter()
                .map(|p| {
                    p.changes
                        .iter()
                        .filter_map(|c| match c {
                            AddressLeaseChange::Upsert(l) => Some((l.key(), l.ip)),
                            _ => None,
                        })
                        .collect()
                })
                .collect()
        } else {
            Vec::new()
        };
        let changes: Vec<AddressLeaseChange> = batch
            .iter_mut()
            .flat_map(|p| std::mem::take(&mut p.changes))
            .collect();
        let n = changes.len() as u64;
        match store.commit(changes).await {
            Ok(lost) => {
                metrics.lease_batches.fetch_add(1, Ordering::Relaxed);
                metrics.lease_writes.fetch_add(n, Ordering::Relaxed);
                let refused = |i: usize| {
                    !lost.is_empty()
                        && asked.get(i).is_some_and(|a| {
                            a.iter()
                                .any(|(k, ip)| lost.iter().any(|l| l.key == *k && l.ip == *ip))
                        })
                };
                // Durable now: only from here may the ACKs leave. A refused lease's ACK
                // never does: its client is NAKed and asks again.
                let mut out = Vec::with_capacity(batch.len());
                for (i, p) in batch.drain(..).enumerate() {
                    if refused(i) {
                        metrics.lease_conflicts.fetch_add(1, Ordering::Relaxed);
                        metrics.leases_nak.fetch_add(1, Ordering::Relaxed);
                        out.extend(p.refusal);
                    } else {
                        out.extend(p.reply);
                    }
                }
                if !lost.is_empty() {
                    tracing::info!(
                        refused = lost.len(),
                        "another instance holds the addresses of {} leases in this batch; \
                         their clients are NAKed and will be offered other addresses",
                        lost.len()
                    );
                    core.lost(&lost);
                }
                if !out.is_empty() && replies.send(out).is_err() {
                    tracing::warn!("reply sender gone; ACKs dropped");
                }
            }
            Err(e) => {
                // No ACK without a durable lease: the clients retry. On a shared store an
                // ACK we cannot record could hand out an address another instance gives
                // away next, so withholding is the only safe answer.
                metrics.lease_store_errors.fetch_add(1, Ordering::Relaxed);
                let withheld = batch.iter().filter(|p| p.reply.is_some()).count();
                metrics
                    .acks_withheld
                    .fetch_add(withheld as u64, Ordering::Relaxed);
                tracing::error!(
                    "the lease store could not record {n} lease changes ({e}); {withheld} \
                     DHCP ACKs withheld: no address is handed out unless it is stored, and \
                     the clients will ask again"
                );
                batch.clear();
            }
        }
    }
}

/// Sends the ACKs of committed batches, [`PACE_CHUNK`] at a time with a 1 ms pause between
/// steps of a large batch: a batch of hundreds sent back to back overflows the receive buffer
/// of a relay or a load generator (measured with perfdhcp), and the pause also lets the
/// receive loop run. Separate from the writer so the next commit is not held up.
pub(crate) async fn reply_sender(
    mut rx: mpsc::UnboundedReceiver<Vec<Reply>>,
    senders: Arc<Senders>,
) {
    while let Some(batch) = rx.recv().await {
        let mut chunks = batch.chunks(PACE_CHUNK).peekable();
        while let Some(chunk) = chunks.next() {
            for r in chunk {
                senders.send(r).await;
            }
            if chunks.peek().is_some() {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    }
}

/// Receive loop of one DHCP socket.
pub(crate) async fn dhcp_loop(
    sock: Arc<UdpSocket>,
    port: Port,
    core: Arc<DhcpCore>,
    senders: Arc<Senders>,
    writer: mpsc::Sender<Pending>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let inflight = Arc::new(Semaphore::new(4096));
    let mut buf = vec![0u8; 8192];
    loop {
        let got = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = recv_pktinfo(&sock, &mut buf) => r,
        };
        let rx = match got {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("DHCP receive failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if rx.truncated || rx.len > buf.len() {
            metrics.dhcp_received.fetch_add(1, Ordering::Relaxed);
            metrics.drop_packet(DropReason::BadOptions);
            continue;
        }
        let Ok(permit) = Arc::clone(&inflight).try_acquire_owned() else {
            metrics.dhcp_received.fetch_add(1, Ordering::Relaxed);
            metrics.drop_packet(DropReason::Overload);
            continue;
        };
        let data = buf[..rx.len].to_vec();
        let (core, senders, writer) = (Arc::clone(&core), Arc::clone(&senders), writer.clone());
        let (src, ifindex) = (rx.src, rx.ifindex);
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = core.handle(&data, port, src).await;
            tracing::trace!(%src, ?ifindex, ?outcome, "DHCP packet");
            match outcome {
                DhcpOutcome::Reply(r) => senders.send(&r).await,
                DhcpOutcome::Durable {
                    changes,
                    reply,
                    refusal,
                } => {
                    let pending = Pending {
                        changes,
                        reply,
                        refusal,
                    };
                    if writer.send(pending).await.is_err() {
                        tracing::warn!("lease writer gone; reply dropped");
                    }
                }
                DhcpOutcome::Drop(_) | DhcpOutcome::Silent => {}
            }
        });
    }
}
