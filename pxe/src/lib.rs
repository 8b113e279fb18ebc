//! PXE boot server for rackshare: DHCPv4 (proxy or authoritative), TFTP and iPXE scripts.
//!
//! The crate knows nothing of the database or HTTP routing: the `api` crate implements
//! [`MachineDirectory`] and [`AddressLeaseStore`], serves `/boot/MAC.ipxe` with
//! [`render_boot_script`], and calls [`run`].

pub mod boot;
pub mod config;
pub mod dhcp;
pub mod directory;
pub mod error;
pub mod events;
pub mod files;
pub mod lease;
pub mod mac;
pub mod metrics;
pub mod script;
pub mod tftp;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use boot::{
    decide_boot, script_url, AgentMode, BootContext, BootDecision, BootFiles, BootIntent,
    ClientArch, ClientInfo, IgnoreReason,
};
pub use config::{
    validate_pools, DhcpMode, PoolConfig, PxeConfig, TftpConfig, DEFAULT_DECLINE_HOLD,
};
pub use dhcp::probe::{probe_dhcp_servers, ServerSeen};
pub use directory::{DirectoryError, MachineDirectory, MachineEntry, StaticDirectory};
pub use error::PxeError;
pub use events::{BootEvent, BootEventSink, BootEventSinkError, BootEvents};
pub use files::{check_tftp_root, populate_tftp_root, RootCheck, DEBIAN_IPXE_DIR};
pub use lease::{
    AddressLease, AddressLeaseChange, AddressLeaseKey, AddressLeaseState, AddressLeaseStore,
    AddressLeaseStoreError, FileAddressLeaseStore, LostLease, NullAddressLeaseStore,
};
pub use mac::MacAddr;
pub use metrics::{DropReason, Metrics};
pub use script::{render_boot_script, try_render_boot_script, AgentBoot, BootScript};
pub use tokio_util::sync::CancellationToken as Shutdown;

use dhcp::core::{CoreConfig, DhcpCore, Port, PROXY_PORT, SERVER_PORT};
use dhcp::net::{bound_udp_socket, dhcp_loop, lease_writer, reply_sender, Senders};

/// The first IPv4 address of `interface`.
pub fn interface_ipv4(interface: &str) -> Result<Ipv4Addr, PxeError> {
    interface_ipv4_with_mask(interface).map(|(ip, _)| ip)
}

/// The first IPv4 address of `interface` and its netmask (for a [`PoolConfig`]'s `subnet_mask`).
pub fn interface_ipv4_with_mask(interface: &str) -> Result<(Ipv4Addr, Ipv4Addr), PxeError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| PxeError::Io {
        context: "listing interface addresses".into(),
        source: e.into(),
    })?;
    let mut exists = false;
    for a in addrs {
        if a.interface_name != interface {
            continue;
        }
        exists = true;
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            let mask = a
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map(|m| m.ip())
                .unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
            return Ok((sin.ip(), mask));
        }
    }
    if exists {
        Err(PxeError::NoInterfaceAddress(interface.to_string()))
    } else {
        Err(PxeError::NoInterface(interface.to_string()))
    }
}

/// Runs DHCP (67, and 4011 in proxy mode) and TFTP (69) on `config.interface` until
/// `shutdown` is cancelled. Fails at start-up on a missing iPXE binary, an unusable
/// interface, a port already in use, or a lease store that cannot load.
pub async fn run(
    config: PxeConfig,
    directory: Arc<dyn MachineDirectory>,
    lease_store: Arc<dyn AddressLeaseStore>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), PxeError> {
    let events = BootEvents::off();
    run_inner(
        config,
        directory,
        lease_store,
        metrics,
        events,
        shutdown,
        None,
    )
    .await
}

/// Like [`run`], but returns once every socket is bound and the leases are loaded, with the
/// server running in a task: start-up errors come back here, serving errors from the task.
/// What DHCP and TFTP see of each client is recorded in `events`.
pub async fn start(
    config: PxeConfig,
    directory: Arc<dyn MachineDirectory>,
    lease_store: Arc<dyn AddressLeaseStore>,
    metrics: Arc<Metrics>,
    events: BootEvents,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<Result<(), PxeError>>, PxeError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut task = tokio::spawn(run_inner(
        config,
        directory,
        lease_store,
        metrics,
        events,
        shutdown,
        Some(tx),
    ));
    tokio::select! {
        ready = rx => match ready {
            Ok(()) => Ok(task),
            // The sender was dropped without a signal: the task ended with an error.
            Err(_) => match (&mut task).await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => Ok(task),
                Err(e) => Err(PxeError::Config(format!("PXE server task failed: {e}"))),
            },
        },
        done = &mut task => match done {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(PxeError::Config("PXE server stopped during start-up".into())),
            Err(e) => Err(PxeError::Config(format!("PXE server task failed: {e}"))),
        },
    }
}

async fn run_inner(
    config: PxeConfig,
    directory: Arc<dyn MachineDirectory>,
    lease_store: Arc<dyn AddressLeaseStore>,
    metrics: Arc<Metrics>,
    events: BootEvents,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), PxeError> {
    let server_ip = match config.server_ip {
        Some(ip) => ip,
        None => interface_ipv4(&config.interface)?,
    };
    if let DhcpMode::Authoritative { pools } = &config.mode {
        if pools.is_empty() {
            return Err(PxeError::Config(
                "authoritative mode needs at least one pool".into(),
            ));
        }
        validate_pools(pools).map_err(PxeError::Config)?;
    }
    if config.tftp.enabled {
        let check = check_tftp_root(&config.tftp_root, &config.boot_files)?;
        for w in check.warnings {
            tracing::warn!("{w}");
        }
    }
    let leases = match &config.mode {
        DhcpMode::Authoritative { .. } if config.dhcp_enabled => lease_store.load().await?,
        _ => Vec::new(),
    };
    let http_base = config.http_base_for(server_ip);
    let any = |port| SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);

    // Bind everything first so every start-up error comes before serving.
    let mut dhcp_socks = Vec::new();
    if config.dhcp_enabled {
        dhcp_socks.push((
            Port::Dhcp,
            Arc::new(bound_udp_socket(
                "DHCP",
                &config.interface,
                any(SERVER_PORT),
                true,
            )?),
        ));
        if config.mode == DhcpMode::Proxy {
            dhcp_socks.push((
                Port::Proxy,
                Arc::new(bound_udp_socket(
                    "PXE proxy",
                    &config.interface,
                    any(PROXY_PORT),
                    true,
                )?),
            ));
        }
    }
    let tftp = if config.tftp.enabled {
        let sock = bound_udp_socket("TFTP", &config.interface, any(config.tftp.port), false)?;
        let t = tftp::Tftp::new(
            config.tftp_root.clone(),
            server_ip,
            config.interface.clone(),
            config.tftp.clone(),
            Arc::clone(&metrics),
            events.clone(),
        )
        .map_err(|source| PxeError::Io {
            context: format!("opening TFTP root {}", config.tftp_root.display()),
            source,
        })?;
        Some((Arc::new(t), sock))
    } else {
        None
    };
    tracing::info!(
        interface = %config.interface,
        %server_ip,
        mode = if config.mode == DhcpMode::Proxy { "proxy" } else { "authoritative" },
        leases = leases.len(),
        "PXE boot server starting"
    );
    if let Some(r) = ready {
        let _ = r.send(());
    }

    let mut tasks = tokio::task::JoinSet::new();
    let mut writer_task = None;
    if let Some((_, main)) = dhcp_socks.first() {
        let core = Arc::new(
            DhcpCore::new(
                CoreConfig {
                    interface: config.interface.clone(),
                    server_ip,
                    http_base,
                    discovery: config.discovery,
                    files: config.boot_files.clone(),
                    mode: config.mode.clone(),
                    decline_hold: config.decline_hold,
                },
                directory,
                Arc::clone(&metrics),
                leases,
            )
            .with_events(events),
        );
        let senders = Arc::new(Senders {
            interface: config.interface.clone(),
            dhcp: Arc::clone(main),
            proxy: dhcp_socks
                .iter()
                .find(|(p, _)| *p == Port::Proxy)
                .map(|(_, s)| Arc::clone(s)),
            metrics: Arc::clone(&metrics),
        });
        let (tx, rx) = mpsc::channel(16 * 1024);
        let (reply_tx, reply_rx) = mpsc::unbounded_channel();
        let sender_task = tokio::spawn(reply_sender(reply_rx, Arc::clone(&senders)));
        if lease_store.shared() && matches!(config.mode, DhcpMode::Authoritative { .. }) {
            core.share_store();
            tasks.spawn(shared_lease_sync(
                Arc::clone(&lease_store),
                Arc::clone(&core),
                shutdown.clone(),
            ));
        }
        let writer = tokio::spawn(lease_writer(
            lease_store,
            Arc::clone(&core),
            rx,
            reply_tx,
            Arc::clone(&metrics),
        ));
        // The sender ends when the writer (holding its channel) has flushed and ended.
        writer_task = Some(async move {
            let _ = writer.await;
            let _ = sender_task.await;
        });
        for (port, sock) in &dhcp_socks {
            tasks.spawn(dhcp_loop(
                Arc::clone(sock),
                *port,
                Arc::clone(&core),
                Arc::clone(&senders),
                tx.clone(),
                Arc::clone(&metrics),
                shutdown.clone(),
            ));
        }
    }
    if let Some((t, sock)) = tftp {
        tasks.spawn(t.serve(sock, shutdown.clone()));
    }
    shutdown.cancelled().await;
    while tasks.join_next().await.is_some() {}
    if let Some(w) = writer_task {
        // Every packet task holding a sender finishes, then the writer flushes and ends.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), w).await;
    }
    tracing::info!(interface = %config.interface, "PXE boot server stopped");
    Ok(())
}

/// How often an instance on a shared lease store reads what the others wrote.
const SHARED_LEASE_SYNC: std::time::Duration = std::time::Duration::from_secs(1);

/// On a store shared with other instances: every second, the leases they wrote go into
/// this instance's table, so it stops offering their addresses (the store still refuses a
/// lease it has not seen yet; this only keeps such refusals rare).
async fn shared_lease_sync(
    store: Arc<dyn AddressLeaseStore>,
    core: Arc<DhcpCore>,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(SHARED_LEASE_SYNC) => {}
        }
        match store.refresh().await {
            Ok(leases) => {
                if failing {
                    tracing::info!("reading other instances' DHCP leases works again");
                    failing = false;
                }
                core.merge_stored(leases);
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(
                    "cannot read other instances' DHCP leases ({e}); retrying every second"
                );
            }
            Err(_) => {}
        }
    }
}

#[doc(hidden)]
pub mod fuzzing {
    //! Entry points for `pxe/fuzz` (not a stable API).
    use super::*;

    /// Runs one DHCP packet through the full handler in both modes.
    pub fn dhcp_packet(data: &[u8]) {
        let dir: Arc<dyn MachineDirectory> = Arc::new(StaticDirectory::new());
        for mode in [
            DhcpMode::Proxy,
            DhcpMode::Authoritative {
                pools: vec![PoolConfig::new(
                    Ipv4Addr::new(10, 0, 0, 10),
                    Ipv4Addr::new(10, 0, 0, 20),
                    Ipv4Addr::new(255, 255, 255, 0),
                )],
            },
        ] {
            let core = DhcpCore::new(
                CoreConfig {
                    interface: "fuzz0".into(),
                    server_ip: Ipv4Addr::new(10, 0, 0, 1),
                    http_base: "http://10.0.0.1:8080".into(),
                    discovery: true,
                    files: BootFiles::default(),
                    mode,
                    decline_hold: config::DEFAULT_DECLINE_HOLD,
                },
                Arc::clone(&dir),
                Arc::new(Metrics::new()),
                Vec::new(),
            );
            let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 99), 68);
            for port in [Port::Dhcp, Port::Proxy] {
                let _ = futures::executor::block_on(core.handle(data, port, src));
            }
        }
    }

    /// Parses one TFTP packet and resolves a requested file name against a fixed root.
    pub fn tftp_packet(data: &[u8]) {
        if let Ok(tftp::TftpPacket::Rrq(r)) = tftp::parse_tftp_packet(data) {
            let _ = tftp::resolve_path(std::path::Path::new("/nonexistent-fuzz-root"), &r.filename);
        }
    }
}

#[cfg(test)]
mod smoke_fuzz {
    //! A cheap stable-toolchain stand-in for `pxe/fuzz`: mutated packets must never panic.
    use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
    use dhcproto::Encodable;

    fn seeds() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for mt in [
            MessageType::Discover,
            MessageType::Request,
            MessageType::Inform,
            MessageType::Release,
            MessageType::Decline,
        ] {
            let mut m = Message::default();
            m.set_opcode(Opcode::BootRequest)
                .set_xid(1)
                .set_chaddr(&[2, 0, 0, 0, 0, 1]);
            m.opts_mut().insert(DhcpOption::MessageType(mt));
            m.opts_mut().insert(DhcpOption::ClassIdentifier(
                b"PXEClient:Arch:00007".to_vec(),
            ));
            m.opts_mut()
                .insert(DhcpOption::ClientSystemArchitecture(7u16.into()));
            m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
            m.opts_mut()
                .insert(DhcpOption::RequestedIpAddress([10, 0, 0, 11].into()));
            if let Ok(b) = m.to_vec() {
                out.push(b);
            }
        }
        out
    }

    #[test]
    fn mutated_packets_never_panic() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds = seeds();
        for i in 0..3000 {
            let mut p = seeds[i % seeds.len()].clone();
            for _ in 0..(1 + rnd() % 8) {
                let len = p.len().max(1);
                match rnd() % 4 {
                    0 => {
                        let at = (rnd() as usize) % len;
                        if let Some(b) = p.get_mut(at) {
                            *b = rnd() as u8;
                        }
                    }
                    1 => p.truncate((rnd() as usize) % len),
                    2 => {
                        let at = 236 + (rnd() as usize) % 40;
                        if at <= p.len() {
                            p.insert(at, rnd() as u8);
                        }
                    }
                    _ => p.extend((0..rnd() % 16).map(|_| rnd() as u8)),
                }
            }
            super::fuzzing::dhcp_packet(&p);
            super::fuzzing::tftp_packet(&p);
            let mut t = vec![0, (rnd() % 7) as u8];
            t.extend(p.iter().take((rnd() % 64) as usize));
            super::fuzzing::tftp_packet(&t);
        }
    }
}
