//! The boot services wired to the inventory: which machines PXE-boot into what, durable DHCP
//! leases, discovery of unknown machines, and what the HTTP side of booting needs (the
//! `/boot/{file}` handler itself is `routes/boot.rs`).

use crate::ApiError;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use futures::future::BoxFuture;
use futures::FutureExt;
use inventory::{Inventory, MacAddress, MachineState, NewMachine};
use pxe::{
    AgentMode, BootIntent, ClientArch, ClientInfo, DirectoryError, MacAddr, MachineDirectory,
    MachineEntry,
};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use tower::ServiceExt;

/// What a machine in `state` boots into. One pure function: the DHCP side and the iPXE
/// script side both ask it.
pub fn intent_for(state: MachineState) -> BootIntent {
    match state {
        MachineState::Inspecting => BootIntent::Agent {
            mode: AgentMode::Inspect,
        },
        MachineState::Deploying => BootIntent::Agent {
            mode: AgentMode::Deploy,
        },
        MachineState::Releasing => BootIntent::Agent {
            mode: AgentMode::Wipe,
        },
        MachineState::Retired => BootIntent::Ignore,
        // Enrolled or discovered but never inspected: boot the agent to find out what it is,
        // as MAAS enlists and Ironic inspects.
        MachineState::New => BootIntent::Discover,
        MachineState::Available
        | MachineState::Allocated
        | MachineState::Deployed
        | MachineState::Maintenance
        | MachineState::Failed => BootIntent::LocalDisk,
    }
}

/// The inventory as the boot server's machine directory.
pub struct InventoryDirectory {
    seen: Arc<crate::claim::BootAddresses>,
    /// The inventory.
    pub inv: Inventory,
    /// Every NIC's machine, read at most once per [`SNAPSHOT_TTL`]: DHCP asks for every
    /// DISCOVER, and a database round trip each time cost a third of the DHCP rate
    /// (bench/dhcp). The same staleness the DHCP core already accepts between DISCOVER and
    /// REQUEST; the iPXE script is always rendered from the database.
    snapshot: tokio::sync::Mutex<Option<(std::time::Instant, Arc<Snapshot>)>>,
}

type Snapshot = std::collections::HashMap<[u8; 6], (String, MachineState, Option<Ipv4Addr>)>;

/// How old the boot server's view of the machines may be.
const SNAPSHOT_TTL: std::time::Duration = std::time::Duration::from_secs(1);

impl InventoryDirectory {
    /// A directory over the inventory.
    pub fn new(inv: Inventory, seen: Arc<crate::claim::BootAddresses>) -> Self {
        InventoryDirectory {
            seen,
            inv,
            snapshot: tokio::sync::Mutex::new(None),
        }
    }

    async fn snapshot(&self) -> Result<Arc<Snapshot>, DirectoryError> {
        // One reader reloads while the others wait for it, instead of all querying at once.
        let mut guard = self.snapshot.lock().await;
        if let Some((at, snap)) = guard.as_ref() {
            if at.elapsed() < SNAPSHOT_TTL {
                return Ok(snap.clone());
            }
        }
        let rows = self
            .inv
            .boot_identities()
            .await
            .map_err(|e| DirectoryError(e.to_string()))?;
        let snap: Arc<Snapshot> = Arc::new(
            rows.into_iter()
                .map(|(mac, name, state, ip)| (mac.0, (name, state, ip)))
                .collect(),
        );
        *guard = Some((std::time::Instant::now(), snap.clone()));
        Ok(snap)
    }

    /// Forgets the snapshot (a machine was just enrolled by discovery).
    async fn invalidate(&self) {
        *self.snapshot.lock().await = None;
    }
}

impl MachineDirectory for InventoryDirectory {
    fn lookup(&self, mac: MacAddr) -> BoxFuture<'_, Result<Option<MachineEntry>, DirectoryError>> {
        async move {
            let snap = self.snapshot().await?;
            Ok(snap.get(&mac.0).map(|(name, state, ip)| MachineEntry {
                intent: intent_for(*state),
                reserved_ip: *ip,
                hostname: Some(name.clone()),
            }))
        }
        .boxed()
    }

    fn address_seen(&self, mac: MacAddr, ip: Ipv4Addr) {
        self.seen.record(mac.0, ip);
    }

    fn discovered(&self, info: ClientInfo) -> BoxFuture<'_, Result<(), DirectoryError>> {
        async move {
            let mac = MacAddress(info.mac.0);
            if self
                .inv
                .machine_by_mac(mac)
                .await
                .map_err(|e| DirectoryError(e.to_string()))?
                .is_some()
            {
                return Ok(());
            }
            let arch = match info.arch {
                Some(ClientArch::UefiArm64 | ClientArch::UefiArm64Http) => "aarch64",
                _ => "x86_64",
            };
            let name = format!("new-{}", mac.to_string().replace(':', ""));
            let new = NewMachine {
                name: name.clone(),
                macs: vec![mac],
                arch: Some(arch.into()),
                notes: Some(format!(
                    "discovered by PXE on {} (vendor class {})",
                    info.interface,
                    info.vendor_class.as_deref().unwrap_or("none")
                )),
                ..Default::default()
            };
            match self
                .inv
                .add_machine_in_state(
                    "pxe",
                    &new,
                    MachineState::New,
                    "discovered by PXE",
                    "machine.discover",
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(%mac, machine = %name, "discovered a new machine");
                    self.invalidate().await;
                    Ok(())
                }
                // Two DHCP packets racing: the other one enrolled it.
                Err(inventory::Error::Conflict { .. }) => Ok(()),
                Err(e) => Err(DirectoryError(e.to_string())),
            }
        }
        .boxed()
    }
}

/// What the HTTP side of booting needs.
#[derive(Clone, Debug)]
pub struct BootHttp {
    /// Where the iPXE binaries (and the agent, later) are served from.
    pub root: PathBuf,
    /// `http://SERVER:PORT` as machines on the boot network reach the API: the first boot
    /// interface's, for requests that arrive on no boot interface's address.
    pub base: String,
    /// Every boot interface's server address with its base, in configuration order.
    pub bases: Vec<(Ipv4Addr, String)>,
    /// The boot listeners' addresses: each interface's own address on the boot HTTP port.
    pub listen: Vec<std::net::SocketAddr>,
    /// Proxy mode: the addresses machines' PXE exchanges showed, shared with the DHCP side.
    pub seen: Arc<crate::claim::BootAddresses>,
    /// The agent API's HTTPS listeners (None: the agent is sent the plain base, in-process
    /// tests only).
    pub agent_tls: Option<AgentTls>,
    /// Where DHCP, TFTP and these routes record what each MAC did (shared by every interface).
    pub events: pxe::BootEvents,
}

/// Where the agent API is served over HTTPS, and with which certificate (its fingerprint goes
/// on the agent's command line as the pin).
#[derive(Clone)]
pub struct AgentTls {
    /// The HTTPS port on every boot interface's address.
    pub port: u16,
    /// The certificate the HTTPS listeners present (it follows reloads).
    pub tls: Arc<crate::tls::ReloadableTls>,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTls")
            .field("port", &self.port)
            .field("fingerprint", &self.tls.fingerprint())
            .finish()
    }
}

/// Where the agent reaches the API, and the pin it checks the certificate against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentApi {
    /// `https://SERVER:BOOT_HTTPS_PORT` (the plain base when no HTTPS listener runs).
    pub url: String,
    /// The leaf certificate's SHA-256, 64 hex digits (None with the plain base).
    pub pin: Option<String>,
}

impl BootHttp {
    /// The base for a request that arrived on the local address `local`: the base of the
    /// interface whose server address it is, else the first interface's. The request's own
    /// `Host` header is never used: it would land verbatim in a script machines execute.
    pub fn base_for(&self, local: Option<std::net::IpAddr>) -> &str {
        let local = match local {
            Some(std::net::IpAddr::V4(ip)) => Some(ip),
            Some(std::net::IpAddr::V6(ip)) => ip.to_ipv4_mapped(),
            None => None,
        };
        local
            .and_then(|ip| self.bases.iter().find(|(a, _)| *a == ip))
            .map(|(_, b)| b.as_str())
            .unwrap_or(&self.base)
    }

    /// The agent API for a request that arrived on `local`: HTTPS on the same interface's
    /// address (the one in [`Self::base_for`]'s choice), with the certificate's pin.
    pub fn agent_api_for(&self, local: Option<std::net::IpAddr>) -> AgentApi {
        let local4 = match local {
            Some(std::net::IpAddr::V4(ip)) => Some(ip),
            Some(std::net::IpAddr::V6(ip)) => ip.to_ipv4_mapped(),
            None => None,
        };
        let ip = local4
            .filter(|ip| self.bases.iter().any(|(a, _)| a == ip))
            .or_else(|| self.bases.first().map(|(a, _)| *a));
        match (&self.agent_tls, ip) {
            (Some(t), Some(ip)) => AgentApi {
                url: format!("https://{ip}:{}", t.port),
                pin: Some(
                    t.tls
                        .fingerprint()
                        .trim_start_matches("SHA256:")
                        .to_string(),
                ),
            },
            _ => AgentApi {
                url: self.base_for(local).to_string(),
                pin: None,
            },
        }
    }
}

/// A boot listener's connection: the local address it arrived on (for
/// [`BootHttp::base_for`]) and the peer's (a claim is checked against it). The boot listeners
/// put it in every request's extensions as `ConnectInfo<BootConnection>`.
#[derive(Clone, Copy, Debug)]
pub struct BootConnection {
    /// Our address the connection arrived on.
    pub local: Option<std::net::SocketAddr>,
    /// The client's address.
    pub peer: Option<std::net::SocketAddr>,
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for BootConnection
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        BootConnection {
            local: stream.io().local_addr().ok(),
            peer: Some(*stream.remote_addr()),
        }
    }
}

/// Streams a file with Range support (boot files, image downloads).
/// On a plain boot connection a GET's bytes then go out by sendfile (crate::sendfile);
/// ServeFile still decides the status, range and headers.
pub(crate) async fn serve_file(path: PathBuf, req: Request) -> Result<Response, ApiError> {
    let zero_copy = req
        .extensions()
        .get::<crate::sendfile::SendfileSocket>()
        .filter(|_| req.method() == axum::http::Method::GET)
        .cloned();
    let resp = tower_http::services::ServeFile::new(&path)
        // 1 MiB reads instead of 64 KiB: fewer wake-ups per GiB (bench/http).
        .with_buf_chunk_size(1 << 20)
        .oneshot(req)
        .await
        .map_err(ApiError::internal)?
        .map(Body::new);
    Ok(match zero_copy {
        Some(socket) => crate::sendfile::zero_copy(resp, &path, socket),
        None => resp,
    })
}

/// One boot interface's settings, as `serve` flags or a `[[pxe-interface]]` table give them.
#[derive(Debug, Clone)]
pub struct BootSettings {
    /// Interface to serve DHCP/TFTP on.
    pub interface: String,
    /// Proxy or authoritative.
    pub mode: DhcpRole,
    /// Address to announce; default the interface's.
    pub server_ip: Option<Ipv4Addr>,
    /// Unknown machines are enrolled as `new` and boot discovery.
    pub discovery: bool,
    /// Serve authoritative DHCP even if another server answers.
    pub force: bool,
    /// TFTP/HTTP boot root; default `DATA_DIR/boot`, filled from Debian's `ipxe` package.
    pub root: Option<PathBuf>,
    /// Base URL machines use to reach the HTTP boot server; default `http://SERVER_IP:BOOT_HTTP_PORT`.
    pub http_base: Option<String>,
    /// Authoritative mode: how long a declined address is held out of the pool.
    pub decline_hold: std::time::Duration,
}

/// The DHCP server's role on a boot interface (not `bmc::BootMode`, the firmware's UEFI or
/// legacy boot).
#[derive(Debug, Clone)]
pub enum DhcpRole {
    /// Beside the network's DHCP server: boot information only.
    Proxy,
    /// rackshare hands out addresses.
    Authoritative {
        /// One pool per subnet: the first is the boot interface's own segment, the others are
        /// segments behind DHCP relays (chosen by the relay's giaddr).
        pools: Vec<BootPool>,
    },
}

/// One subnet rackshare hands out addresses in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPool {
    /// First address of the pool.
    pub start: Ipv4Addr,
    /// Last address of the pool.
    pub end: Ipv4Addr,
    /// Subnet mask; `None` takes the boot interface's (for the directly attached subnet).
    pub mask: Option<Ipv4Addr>,
    /// Default gateway.
    pub router: Option<Ipv4Addr>,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// Domain name.
    pub domain: Option<String>,
    /// NTP servers.
    pub ntp: Vec<Ipv4Addr>,
    /// Interface MTU.
    pub mtu: Option<u16>,
    /// Lease time in seconds.
    pub lease_secs: u64,
}

impl BootPool {
    /// The pxe crate's pool, with `interface_mask` where no mask is given.
    pub fn to_pxe(&self, interface_mask: Ipv4Addr) -> pxe::PoolConfig {
        let mut pool =
            pxe::PoolConfig::new(self.start, self.end, self.mask.unwrap_or(interface_mask));
        pool.router = self.router;
        pool.dns = self.dns.clone();
        pool.domain = self.domain.clone();
        pool.ntp = self.ntp.clone();
        pool.mtu = self.mtu;
        pool.lease_time = std::time::Duration::from_secs(self.lease_secs);
        pool
    }
}

/// Builds the pxe crate's configuration; refuses authoritative mode where another DHCP
/// server answers (unless forced).
pub async fn prepare(
    s: &BootSettings,
    data_dir: &std::path::Path,
    boot_http_port: u16,
) -> Result<(pxe::PxeConfig, BootHttp), crate::StartError> {
    let err = |m: String| crate::StartError::Boot(m);
    let root = s.root.clone().unwrap_or_else(|| data_dir.join("boot"));
    let files = pxe::BootFiles::default();
    if pxe::check_tftp_root(&root, &files).is_err() {
        pxe::populate_tftp_root(&root, std::path::Path::new(pxe::DEBIAN_IPXE_DIR), &files)
            .map_err(|e| err(e.to_string()))?;
    }
    let (if_ip, mask) =
        pxe::interface_ipv4_with_mask(&s.interface).map_err(|e| err(e.to_string()))?;
    let server_ip = s.server_ip.unwrap_or(if_ip);
    let mode = match &s.mode {
        DhcpRole::Proxy => pxe::DhcpMode::Proxy,
        DhcpRole::Authoritative { pools } => {
            let pools: Vec<pxe::PoolConfig> = pools.iter().map(|p| p.to_pxe(mask)).collect();
            if pools.is_empty() {
                return Err(err("authoritative mode needs at least one pool".into()));
            }
            pxe::validate_pools(&pools).map_err(err)?;
            if !s.force {
                let seen = pxe::probe_dhcp_servers(&s.interface, std::time::Duration::from_secs(3))
                    .await
                    .map_err(|e| {
                        err(format!(
                            "probing for other DHCP servers on {}: {e}",
                            s.interface
                        ))
                    })?;
                if let Some(other) = seen.iter().find(|x| !x.proxy) {
                    return Err(err(format!(
                        "another DHCP server ({}) answers on {}; refusing authoritative mode (use --pxe-mode proxy, or --pxe-force if you are sure)",
                        other.server_id.map(|i| i.to_string()).unwrap_or_else(|| other.source.ip().to_string()),
                        s.interface
                    )));
                }
            }
            pxe::DhcpMode::Authoritative { pools }
        }
    };
    let base = s
        .http_base
        .clone()
        .unwrap_or_else(|| format!("http://{server_ip}:{boot_http_port}"));
    let mut cfg = pxe::PxeConfig::new(s.interface.clone(), root.clone());
    cfg.mode = mode;
    cfg.server_ip = Some(server_ip);
    cfg.http_port = boot_http_port;
    cfg.http_base = Some(base.clone());
    cfg.discovery = s.discovery;
    cfg.decline_hold = s.decline_hold;
    Ok((
        cfg,
        BootHttp {
            root,
            base: base.clone(),
            // The interface's own address too, when the announced one differs (NAT, a VIP):
            // a request that arrives there came over this interface all the same.
            bases: if if_ip == server_ip {
                vec![(server_ip, base)]
            } else {
                vec![(server_ip, base.clone()), (if_ip, base)]
            },
            listen: vec![std::net::SocketAddr::from((if_ip, boot_http_port))],
            seen: Arc::default(),
            agent_tls: None,
            events: pxe::BootEvents::off(),
        },
    ))
}

/// Checks prepared boot interfaces against each other: no interface twice, and no two
/// authoritative interfaces handing out overlapping subnets (each would lease the other's
/// addresses). Masks are the interfaces' own, so this runs after [`prepare`].
pub fn check_interfaces<'a>(
    cfgs: impl IntoIterator<Item = &'a pxe::PxeConfig>,
) -> Result<(), crate::StartError> {
    let cfgs: Vec<&pxe::PxeConfig> = cfgs.into_iter().collect();
    let pools = |c: &pxe::PxeConfig| match &c.mode {
        pxe::DhcpMode::Authoritative { pools } => pools.clone(),
        pxe::DhcpMode::Proxy => Vec::new(),
    };
    for (i, a) in cfgs.iter().enumerate() {
        for b in &cfgs[..i] {
            if a.interface == b.interface {
                return Err(crate::StartError::Boot(format!(
                    "boot interface {} is configured twice",
                    a.interface
                )));
            }
            for pa in pools(a) {
                for pb in pools(b) {
                    if pa.collides_with(&pb) {
                        return Err(crate::StartError::Boot(format!(
                            "boot interface {}: subnet {} overlaps subnet {} of boot interface {}; two authoritative interfaces cannot hand out the same addresses",
                            a.interface,
                            pa.subnet(),
                            pb.subnet(),
                            b.interface
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Starts DHCP and TFTP; returns once they are bound.
pub async fn start(
    cfg: pxe::PxeConfig,
    inv: Inventory,
    metrics: Arc<pxe::Metrics>,
    shutdown: pxe::Shutdown,
    seen: Arc<crate::claim::BootAddresses>,
    events: pxe::BootEvents,
) -> Result<tokio::task::JoinHandle<Result<(), pxe::PxeError>>, crate::StartError> {
    let directory = Arc::new(InventoryDirectory::new(inv.clone(), seen));
    let leases = Arc::new(crate::dhcp_store::InventoryAddressLeaseStore::new(inv));
    pxe::start(cfg, directory, leases, metrics, events, shutdown)
        .await
        .map_err(|e| crate::StartError::Boot(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_has_a_boot_intent() {
        for s in MachineState::ALL {
            let i = intent_for(s);
            match s {
                MachineState::Deploying => assert_eq!(
                    i,
                    BootIntent::Agent {
                        mode: AgentMode::Deploy
                    }
                ),
                MachineState::Inspecting => assert_eq!(
                    i,
                    BootIntent::Agent {
                        mode: AgentMode::Inspect
                    }
                ),
                MachineState::Releasing => assert_eq!(
                    i,
                    BootIntent::Agent {
                        mode: AgentMode::Wipe
                    }
                ),
                MachineState::Retired => assert_eq!(i, BootIntent::Ignore),
                MachineState::New => assert_eq!(i, BootIntent::Discover),
                _ => assert_eq!(i, BootIntent::LocalDisk, "{s}"),
            }
        }
    }

    #[test]
    fn the_base_is_the_interface_the_request_arrived_on() {
        let http = BootHttp {
            root: PathBuf::from("/boot"),
            base: "http://10.77.0.1:8080".into(),
            bases: vec![
                (Ipv4Addr::new(10, 77, 0, 1), "http://10.77.0.1:8080".into()),
                (Ipv4Addr::new(10, 78, 0, 1), "http://10.78.0.1:8080".into()),
            ],
            listen: Vec::new(),
            seen: Arc::default(),
            agent_tls: None,
            events: pxe::BootEvents::off(),
        };
        let on = |s: &str| Some(s.parse::<std::net::IpAddr>().expect("ip"));
        assert_eq!(http.base_for(on("10.78.0.1")), "http://10.78.0.1:8080");
        assert_eq!(
            http.base_for(on("::ffff:10.78.0.1")),
            "http://10.78.0.1:8080"
        );
        assert_eq!(http.base_for(on("10.77.0.1")), "http://10.77.0.1:8080");
        // Loopback, another address, no connection info: the first interface's.
        assert_eq!(http.base_for(on("127.0.0.1")), "http://10.77.0.1:8080");
        assert_eq!(http.base_for(None), "http://10.77.0.1:8080");
        // Without HTTPS listeners the agent gets the plain base and no pin.
        assert_eq!(http.agent_api_for(on("10.78.0.1")).pin, None);
        let dir = tempfile::tempdir().expect("tmp");
        let tls = crate::tls::ReloadableTls::new(crate::tls::TlsSource::SelfSigned {
            data_dir: dir.path().to_path_buf(),
            names: vec!["localhost".into()],
        })
        .expect("tls");
        let fp = tls.fingerprint();
        let http = BootHttp {
            agent_tls: Some(AgentTls {
                port: 8443,
                tls: Arc::new(tls),
            }),
            ..http
        };
        let api = http.agent_api_for(on("10.78.0.1"));
        assert_eq!(api.url, "https://10.78.0.1:8443");
        assert_eq!(api.pin.map(|p| format!("SHA256:{p}")), Some(fp));
        assert_eq!(
            http.agent_api_for(on("127.0.0.1")).url,
            "https://10.77.0.1:8443"
        );
    }

    #[test]
    fn interfaces_are_checked_against_each_other() {
        let cfg = |ifname: &str, pools: &[(&str, &str, &str)]| {
            let mut c = pxe::PxeConfig::new(ifname, PathBuf::from("/boot"));
            c.mode = if pools.is_empty() {
                pxe::DhcpMode::Proxy
            } else {
                pxe::DhcpMode::Authoritative {
                    pools: pools
                        .iter()
                        .map(|(a, b, m)| {
                            pxe::PoolConfig::new(
                                a.parse().expect("ip"),
                                b.parse().expect("ip"),
                                m.parse().expect("mask"),
                            )
                        })
                        .collect(),
                }
            };
            c
        };
        let m24 = "255.255.255.0";
        let a = cfg("br0", &[("10.77.0.100", "10.77.0.150", m24)]);
        let b = cfg("br1", &[("10.78.0.100", "10.78.0.150", m24)]);
        let p = cfg("br2", &[]);
        check_interfaces([&a, &b, &p]).expect("disjoint");
        let msg = |r: Result<(), crate::StartError>| match r {
            Err(e) => e.to_string(),
            Ok(()) => panic!("accepted"),
        };
        let e = msg(check_interfaces([&a, &cfg("br0", &[])]));
        assert!(e.contains("boot interface br0 is configured twice"), "{e}");
        let wide = cfg("br3", &[("10.77.1.10", "10.77.1.20", "255.255.0.0")]);
        let e = msg(check_interfaces([&a, &b, &wide]));
        assert!(
            e.contains("boot interface br3: subnet 10.77.0.0/16 overlaps subnet 10.77.0.0/24 of boot interface br0"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }
}
