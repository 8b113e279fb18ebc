//! Test harness: network namespaces with a bridge, real peer programs, the server in-process.
//!
//! Everything happens inside namespaces the test creates (names carry the pid and a
//! per-test tag) and are deleted on drop, with every spawned process killed.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::{Decodable, Encodable};
use nix::sched::{setns, CloneFlags};
use pxe::{AddressLeaseStore, MachineDirectory, Metrics, PxeConfig, PxeError};
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

pub use testkit::netns::*;

/// Runs `f` on a new thread inside namespace `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap();
        setns(fd, CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// The boot server running in-process inside a namespace.
pub struct Server {
    pub metrics: Arc<Metrics>,
    stop: CancellationToken,
    thread: Option<JoinHandle<Result<(), PxeError>>>,
}

impl Server {
    pub fn start(
        ns: &str,
        config: PxeConfig,
        directory: Arc<dyn MachineDirectory>,
        store: Arc<dyn AddressLeaseStore>,
    ) -> Server {
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        let path = format!("/run/netns/{ns}");
        let (m, s) = (Arc::clone(&metrics), stop.clone());
        let thread = std::thread::spawn(move || {
            let fd = File::open(&path).unwrap();
            setns(fd, CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(pxe::run(config, directory, store, m, s))
        });
        let srv = Server {
            metrics,
            stop,
            thread: Some(thread),
        };
        std::thread::sleep(Duration::from_millis(300));
        if srv.thread.as_ref().is_some_and(|t| t.is_finished()) {
            let mut srv = srv;
            let r = srv.thread.take().unwrap().join().unwrap();
            panic!("server exited at start: {r:?}");
        }
        srv
    }

    pub fn stop(mut self) -> Result<(), PxeError> {
        self.stop.cancel();
        self.thread.take().unwrap().join().unwrap()
    }

    pub fn prometheus(&self) -> String {
        let mut s = String::new();
        self.metrics.render_prometheus(&mut s);
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Waits (bounded) until `f` holds.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A UDP socket on `eth0` at `port` (call inside the client namespace).
pub fn client_socket(port: u16) -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_broadcast(true).unwrap();
    s.bind_device(Some(b"eth0")).unwrap();
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.into()
}

/// A BOOTREQUEST for `mac` with message type `mt` and extra options.
pub fn request(mac: [u8; 6], xid: u32, mt: MessageType, extra: Vec<DhcpOption>) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_xid(xid)
        .set_chaddr(&mac)
        .set_flags(dhcproto::v4::Flags::default().set_broadcast());
    m.opts_mut().insert(DhcpOption::MessageType(mt));
    for o in extra {
        m.opts_mut().insert(o);
    }
    m
}

pub fn pxe_bios_options(ipxe: bool) -> Vec<DhcpOption> {
    let mut v = vec![
        DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
        DhcpOption::ClientSystemArchitecture(0u16.into()),
        DhcpOption::ClientNetworkInterface(1, 2, 1),
        DhcpOption::ClientMachineIdentifier(vec![0; 17]),
    ];
    if ipxe {
        v.push(DhcpOption::UserClass(b"iPXE".to_vec()));
    }
    v
}

/// Sends `packets` raw to `dest` and collects replies with `xid` for `wait`.
pub fn exchange(
    sock: &UdpSocket,
    packets: &[Vec<u8>],
    dest: SocketAddrV4,
    xid: u32,
    wait: Duration,
) -> Vec<(SocketAddr, Message)> {
    for p in packets {
        sock.send_to(p, dest).unwrap();
    }
    let end = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if let Ok(m) = Message::decode(&mut dhcproto::Decoder::new(&buf[..n])) {
                if m.xid() == xid && m.opcode() == Opcode::BootReply {
                    out.push((from, m));
                }
            }
        }
    }
    out
}

pub fn encode(m: &Message) -> Vec<u8> {
    m.to_vec().unwrap()
}

pub fn bcast67() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::BROADCAST, 67)
}
