//! Network namespaces for tests: a bridge in one namespace, hosts hanging off it by veth,
//! processes spawned inside, everything killed and deleted on drop. Traffic stays inside.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

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

    /// A namespace with `eth0` linked by veth to `peer_if` in `peer_ns` (not on the bridge):
    /// a segment of its own behind `peer_ns`, e.g. a client behind a relay. Both ends are up;
    /// addresses are the caller's.
    pub fn add_linked_host(&self, role: &str, mac: &str, peer_ns: &str, peer_if: &str) -> String {
        let ns = format!("{}-{role}", self.prefix);
        self.add_ns(&ns);
        self.ip(
            peer_ns,
            &format!("link add {peer_if} type veth peer name eth0 netns {ns}"),
        );
        self.ip(peer_ns, &format!("link set {peer_if} up"));
        self.ip(&ns, &format!("link set eth0 address {mac}"));
        self.ip(&ns, "link set eth0 up");
        self.ip(&ns, "link set lo up");
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

/// Where [`start_dnsmasq`] puts dnsmasq on the lab's bridge.
pub const DNSMASQ_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 77, 0, 2);

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

/// A TCP listener on `addr` inside namespace `ns`: bound from a thread that joined it; the
/// socket stays in that namespace wherever it is used.
pub fn bind_in(ns: &str, addr: &str) -> std::net::TcpListener {
    let ns_path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let f = File::open(&ns_path).unwrap_or_else(|e| panic!("open {ns_path}: {e}"));
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr} in {ns}: {e}"))
        })
        .join()
        .expect("bind thread")
    })
}

/// Relays every connection `listener` accepts to `to`, connecting from namespace
/// `connect_ns` (None: the test's own), e.g. a browser on the host's loopback to a service
/// inside a lab namespace, or a service inside one to a peer on the host's loopback. Threads
/// live as long as the test process; each connection is copied both ways until either end
/// closes.
pub fn relay(listener: std::net::TcpListener, to: std::net::SocketAddr, connect_ns: Option<&str>) {
    let ns_path = connect_ns.map(|ns| format!("/var/run/netns/{ns}"));
    std::thread::spawn(move || {
        if let Some(p) = &ns_path {
            let Ok(f) = File::open(p) else { return };
            if nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                return;
            }
        }
        for inbound in listener.incoming().flatten() {
            let Ok(outbound) = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
            else {
                continue;
            };
            for (mut from, mut into) in [
                (inbound.try_clone(), outbound.try_clone()),
                (outbound.try_clone(), inbound.try_clone()),
            ]
            .into_iter()
            .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
            {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut into);
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
}
