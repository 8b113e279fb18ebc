//! Test harness: network namespaces with a bridge, real peer programs, the server in-process.
//!
//! Everything happens inside namespaces the test creates (names carry the pid and a
//! per-test tag) and are deleted on drop, with every spawned process killed.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::{Decodable, Encodable};
use nix::sched::{setns, CloneFlags};
use pxe::{LeaseStore, MachineDirectory, Metrics, PxeConfig, PxeError};
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// Fails (never skips) when a peer program is missing, naming the Debian package.
pub fn require(bin: &str, package: &str) -> PathBuf {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/bin",
        "/usr/local/sbin",
    ] {
        let p = Path::new(dir).join(bin);
        if p.exists() {
            return p;
        }
    }
    panic!("`{bin}` is missing: install the Debian package `{package}` (scripts/test installs it)");
}

pub fn must_be_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create network namespaces: run them as root"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A set of namespaces: `srv` holds bridge `br0` (10.77.0.1/24); hosts hang off it by veth.
pub struct Lab {
    pub prefix: String,
    pub srv: String,
    namespaces: Mutex<Vec<String>>,
    children: Mutex<Vec<Child>>,
    hosts: AtomicUsize,
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        must_be_root();
        require("ip", "iproute2");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("rspxe-{}-{}-{}", std::process::id(), tag, n);
        let srv = format!("{prefix}-srv");
        let lab = Lab {
            prefix: prefix.clone(),
            srv: srv.clone(),
            namespaces: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
            hosts: AtomicUsize::new(0),
            dir: tempfile::tempdir().unwrap(),
        };
        lab.add_ns(&srv);
        lab.ip(&srv, "link add br0 type bridge forward_delay 0 stp_state 0");
        lab.ip(&srv, "addr add 10.77.0.1/24 dev br0");
        lab.ip(&srv, "link set br0 up");
        lab.ip(&srv, "link set lo up");
        lab
    }

    fn add_ns(&self, name: &str) {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(Command::new("ip").args(["netns", "add", name]));
        self.namespaces.lock().unwrap().push(name.to_string());
    }

    pub fn ip(&self, ns: &str, args: &str) -> String {
        let mut c = Command::new("ip");
        c.args(["-n", ns]).args(args.split_whitespace());
        run(&mut c)
    }

    /// A namespace with `eth0` bridged to `br0`; `addr` like "10.77.0.2/24" or None.
    pub fn add_host(&self, role: &str, mac: &str, addr: Option<&str>) -> String {
        let i = self.hosts.fetch_add(1, Ordering::SeqCst);
        let ns = format!("{}-{role}", self.prefix);
        self.add_ns(&ns);
        self.ip(
            &self.srv,
            &format!("link add h{i} type veth peer name eth0 netns {ns}"),
        );
        self.ip(&self.srv, &format!("link set h{i} master br0 up"));
        self.ip(&ns, &format!("link set eth0 address {mac}"));
        self.ip(&ns, "link set eth0 up");
        self.ip(&ns, "link set lo up");
        if let Some(a) = addr {
            self.ip(&ns, &format!("addr add {a} dev eth0"));
        }
        ns
    }

    /// Spawns `argv` inside `ns`; killed when the lab drops.
    pub fn spawn(&self, ns: &str, argv: &[&str], log: &Path) -> u32 {
        let f = File::create(log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {argv:?}: {e}"));
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// Runs `argv` inside `ns` to completion (bounded by `timeout` via coreutils `timeout`).
    pub fn exec(&self, ns: &str, argv: &[&str], timeout: Duration) -> std::process::Output {
        let secs = format!("{}", timeout.as_secs().max(1));
        Command::new("ip")
            .args(["netns", "exec", ns, "timeout", "-k", "2", &secs])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {argv:?}: {e}"))
    }

    pub fn kill(&self, pid: u32, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A TFTP root with stand-in iPXE binaries.
    pub fn fake_tftp_root(&self) -> PathBuf {
        let root = self.path("tftp");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("undionly.kpxe"), pseudo_random(70_000, 1)).unwrap();
        std::fs::write(root.join("snponly.efi"), pseudo_random(200_000, 2)).unwrap();
        root
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self.children.lock().unwrap().iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.lock().unwrap().iter().rev() {
            // Kill anything left in the namespace (e.g. a daemonised client), then delete it.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(p) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(p),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

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
        store: Arc<dyn LeaseStore>,
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

pub const DNSMASQ_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// dnsmasq as the network's own DHCP server, in its own namespace on the bridge.
pub fn start_dnsmasq(lab: &Lab) -> String {
    require("dnsmasq", "dnsmasq-base");
    let ns = lab.add_host("dnsmasq", "02:00:00:00:00:02", Some("10.77.0.2/24"));
    let lease = lab.path("dnsmasq.leases").display().to_string();
    let pid = lab.path("dnsmasq.pid").display().to_string();
    lab.spawn(
        &ns,
        &[
            "dnsmasq",
            "-d",
            "--no-ping",
            "--port=0",
            "--conf-file=/dev/null",
            "-u",
            "root",
            "--interface=eth0",
            "--bind-interfaces",
            "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h",
            &format!("--dhcp-leasefile={lease}"),
            &format!("--pid-file={pid}"),
            "--log-dhcp",
        ],
        &lab.path("dnsmasq.log"),
    );
    ns
}
