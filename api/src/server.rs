//! Start-up and graceful shutdown.

use crate::bmc_service::BmcService;
use crate::listener::Listening;
use crate::metrics::HttpMetrics;
use crate::state::AppState;
use crate::{Config, StartError};
use inventory::{Inventory, SecretBox};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// How often finished windows of failed authentication are written to the audit log.
const FAILURE_AUDIT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The service, before it starts.
pub struct Server;

/// A started service.
pub struct RunningServer {
    /// The address the API listens on (useful with port 0).
    pub addr: SocketAddr,
    /// `https` or `http`: how the member listener speaks.
    pub scheme: &'static str,
    /// The member listener's TLS, when it speaks HTTPS.
    pub tls: Option<Arc<crate::tls::ReloadableTls>>,
    /// The agent listeners' TLS when it is not the member listener's (self-signed because the
    /// member API speaks plain HTTP).
    pub boot_tls: Option<Arc<crate::tls::ReloadableTls>>,
    /// Where `/metrics` is served, when it is.
    pub metrics_addr: Option<SocketAddr>,
    /// The admin token, only on the very first start of a new database.
    pub admin_token: Option<String>,
    /// Where the admin token was written, when it was.
    pub admin_token_file: Option<std::path::PathBuf>,
    /// The one shutdown signal: the API, the background workers and the boot services all
    /// stop when it is cancelled.
    shutdown: pxe::Shutdown,
    task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    pxe_tasks: Vec<JoinHandle<Result<(), pxe::PxeError>>>,
    inv: Inventory,
}

impl Server {
    /// Opens the data dir and database, bootstraps the admin on a new database, binds the
    /// listener and starts serving in the background.
    pub async fn start(config: Config) -> Result<RunningServer, StartError> {
        let data_dir = &config.data_dir;
        create_private_dir(data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let secrets = SecretBox::load_or_create(data_dir)?;
        let inv = Inventory::open(&config.effective_database_url(), secrets).await?;
        let issued = inv.bootstrap_admin().await?;
        let mut admin_token_file = None;
        if let Some(t) = &issued {
            let path = data_dir.join("admin-token");
            write_token_file(&path, &t.token).map_err(|source| StartError::DataDir {
                path: path.display().to_string(),
                source,
            })?;
            admin_token_file = Some(path);
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.listen.to_string(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen.to_string(),
            source,
        })?;
        let tls = match &config.tls {
            crate::TlsSetting::Off => None,
            crate::TlsSetting::Operator { cert, key } => Some(crate::tls::TlsSource::Operator {
                cert: cert.clone(),
                key: key.clone(),
            }),
            crate::TlsSetting::SelfSigned => Some(crate::tls::TlsSource::SelfSigned {
                data_dir: data_dir.clone(),
                names: certificate_names(config.listen),
            }),
        };
        let self_signed = matches!(tls, Some(crate::tls::TlsSource::SelfSigned { .. }));
        let tls = match tls {
            Some(source) => Some(load_tls(source).await?),
            None => None,
        };
        if let (Some(t), true) = (&tls, self_signed) {
            crate::shared_secrets::self_signed_tls(&inv, data_dir, t).await?;
        }
        let id_path = data_dir.join("instance-id");
        let instance_id =
            crate::instance::load_or_create_id(data_dir).map_err(|source| StartError::DataDir {
                path: id_path.display().to_string(),
                source,
            })?;
        let api_url = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
        let instance =
            crate::instance::Instance::register(&inv, instance_id, config.site.clone(), api_url)
                .await?;
        // Leases that fell due while rackshare was down end before the API answers anyone
        // (on the scheduler's leader; another instance's leader has been ending them).
        crate::scheduler::catch_up_as_leader(&inv, &instance, 100).await;

        let console_ssh = match config.console_ssh_listen {
            Some(at) => {
                let l = tokio::net::TcpListener::bind(at).await.map_err(|source| {
                    StartError::Listen {
                        addr: format!("{at} (--console-ssh-listen)"),
                        source,
                    }
                })?;
                let key = crate::shared_secrets::console_ssh_host_key(&inv, data_dir).await?;
                Some((l, key))
            }
            None => None,
        };
        let metrics_listener = match config.metrics_listen {
            Some(at) => Some(tokio::net::TcpListener::bind(at).await.map_err(|source| {
                StartError::Listen {
                    addr: format!("{at} (--metrics-listen)"),
                    source,
                }
            })?),
            None => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr().map_err(|source| StartError::Listen {
                addr: "the metrics listener".into(),
                source,
            })?),
            None => None,
        };
        // Every connection is a descriptor: take all the process may have, and keep the
        // connection cap below it with room for the database, images and boot services.
        let nofile = crate::listener::raise_open_file_limit();
        let mut limits = config.connections.clone();
        let room = usize::try_from(nofile.saturating_sub(256)).unwrap_or(usize::MAX);
        if limits.max_connections > room {
            tracing::warn!(
                configured = limits.max_connections,
                open_file_limit = nofile,
                "the connection cap is lowered to fit the open-file limit"
            );
            limits.max_connections = room.max(16);
        }
        let pxe_metrics = Arc::new(pxe::Metrics::default());
        // rackshare's one shutdown primitive (tokio_util's CancellationToken, which `pxe`
        // re-exports): everything started below stops when it is cancelled.
        let shutdown = pxe::Shutdown::new();
        // Everything that can fail is done before the boot services start, so a failed start-up
        // never leaves them serving on their own (the one exception, an interface that fails
        // to start, stops the ones already started).
        let image_store = images::ImageStore::open(data_dir.join("images"))
            .await
            .map_err(StartError::Images)?;
        let signing_key = crate::shared_secrets::signing_key(&inv, data_dir).await?;
        let mut boot_http: Option<crate::boot::BootHttp> = None;
        let mut pxe_tasks = Vec::new();
        let mut prepared = Vec::new();
        if !config.boot.is_empty() && config.boot_http_port == 0 {
            return Err(StartError::Boot(
                "--boot-http-port must be a fixed port: it goes into every boot script".into(),
            ));
        }
        for b in &config.boot {
            prepared.push(crate::boot::prepare(b, data_dir, config.boot_http_port).await?);
        }
        crate::boot::check_interfaces(prepared.iter().map(|(c, _)| c))?;
        if !config.boot.is_empty()
            && (config.boot_https_port == 0 || config.boot_https_port == config.boot_http_port)
        {
            return Err(StartError::Boot(format!(
                "--boot-https-port must be a fixed port apart from --boot-http-port ({}): it goes into every boot script",
                config.boot_http_port
            )));
        }
        let https_at = |boot: &SocketAddr| SocketAddr::new(boot.ip(), config.boot_https_port);
        for (_, http) in &prepared {
            for boot in &http.listen {
                check_apart(config.listen, *boot)?;
                check_apart(config.listen, https_at(boot))?;
            }
        }
        // The agent API's certificate: the member listener's, else the data dir's self-signed
        // one (the agent pins it, so self-signed is as good as any).
        let boot_tls = match (&tls, prepared.is_empty()) {
            (_, true) => None,
            (Some(t), false) => Some(t.clone()),
            (None, false) => {
                let t = load_tls(crate::tls::TlsSource::SelfSigned {
                    data_dir: data_dir.clone(),
                    names: certificate_names(config.listen),
                })
                .await?;
                crate::shared_secrets::self_signed_tls(&inv, data_dir, &t).await?;
                Some(t)
            }
        };
        // Bound before the boot services start, so a taken port fails the start cleanly.
        let mut boot_listeners = Vec::new();
        let mut agent_listeners = Vec::new();
        for (_, http) in &prepared {
            for boot in &http.listen {
                for (at, into) in [
                    (*boot, &mut boot_listeners),
                    (https_at(boot), &mut agent_listeners),
                ] {
                    let l = tokio::net::TcpListener::bind(at).await.map_err(|source| {
                        StartError::Listen {
                            addr: at.to_string(),
                            source,
                        }
                    })?;
                    into.push(l);
                }
            }
        }
        // One DHCP core, socket set and TFTP server per interface; the machine directory,
        // the lease store (each core loads only its own subnets' leases), the boot root and
        // the counters are shared.
        // One record of PXE-exchange addresses for every interface (a claim's check reads it).
        let seen = Arc::new(crate::claim::BootAddresses::default());
        // One boot event writer for every interface and the boot routes.
        let events = if prepared.is_empty() {
            pxe::BootEvents::off()
        } else {
            let sink = Arc::new(crate::boot_events::InventoryBootEvents { inv: inv.clone() });
            let (events, writer) =
                pxe::BootEvents::start(sink, pxe_metrics.clone(), shutdown.clone());
            // Awaited with the boot services, so what is queued at shutdown is written.
            pxe_tasks.push(tokio::spawn(async move {
                writer
                    .await
                    .map_err(|e| pxe::PxeError::Config(format!("boot event writer failed: {e}")))
            }));
            events
        };
        for (cfg, mut http) in prepared {
            let interface = cfg.interface.clone();
            http.seen = seen.clone();
            http.events = events.clone();
            http.agent_tls = boot_tls.as_ref().map(|t| crate::boot::AgentTls {
                port: config.boot_https_port,
                tls: t.clone(),
            });
            match crate::boot::start(
                cfg,
                inv.clone(),
                pxe_metrics.clone(),
                shutdown.clone(),
                seen.clone(),
                events.clone(),
            )
            .await
            {
                Ok(t) => pxe_tasks.push(t),
                Err(e) => {
                    // The interfaces already serving stop with the failed start.
                    stop_boot_services(&shutdown, pxe_tasks).await;
                    return Err(e);
                }
            }
            tracing::info!(%interface, base = %http.base, "boot services running");
            match &mut boot_http {
                None => boot_http = Some(http),
                Some(all) => {
                    all.bases.extend(http.bases);
                    all.listen.extend(http.listen);
                }
            }
        }
        let bmc = Arc::new(BmcService::new(
            inv.clone(),
            config.bmc_policy,
            instance.scope.clone(),
        ));
        let consoles = Arc::new(crate::console::ConsoleHub::default());
        let conductor = crate::engine::Conductor::new(
            inv.clone(),
            bmc.clone(),
            config.conductor.clone(),
            signing_key.clone(),
            instance.clone(),
            consoles.clone(),
        );
        let http_metrics = Arc::new(HttpMetrics::default());
        let console_ticket_key = crate::shared_secrets::console_ticket_key(&inv).await?;
        // Peers pin the certificate every instance's member listener shares, when it has one.
        let peer_pin = tls
            .as_ref()
            .and_then(|t| pin::parse_fingerprint(&t.fingerprint()));
        let peers = crate::image_peers::ImagePeers::new(
            instance.id.clone(),
            inv.clone(),
            image_store.clone(),
            config.image_peers.clone(),
            peer_pin,
        )
        .map_err(StartError::Boot)?;
        peers.reconcile().await;
        let state = AppState {
            inv: inv.clone(),
            http_metrics: http_metrics.clone(),
            bmc: bmc.clone(),
            images: image_store,
            max_image_bytes: config.max_image_bytes,
            image_import_allow: Arc::new(config.image_import_allow.clone()),
            boot: boot_http,
            pxe_metrics,
            conductor: conductor.clone(),
            auth_limiter: Arc::new(std::sync::Mutex::new(crate::auth_limit::AuthLimiter::new(
                config.auth_limit,
            ))),
            signing_key,
            // Session cookies are `Secure` whenever the member listener speaks TLS.
            web: Arc::new(crate::web::WebState {
                // The console page's `ssh -p PORT` line names the door's real port.
                console_ssh_port: console_ssh
                    .as_ref()
                    .and_then(|(l, _)| l.local_addr().ok())
                    .map(|a| a.port()),
                ..crate::web::WebState::new(tls.is_some(), crate::web::WebState::default().lifetime)
            }),
            consoles,
            console_routing: Arc::new(crate::console::route::ConsoleRouting {
                instance_id: instance.id.clone(),
                scope: instance.scope.clone(),
                tickets: crate::console::ticket::TicketKeys::new(console_ticket_key),
                tls: tls.clone(),
            }),
            peers: peers.clone(),
        };
        let auth_limiter = state.auth_limiter.clone();
        let boot_app = crate::routes::boot_router(state.clone(), config.boot_https_port);
        let agent_app = crate::routes::agent_router(state.clone());
        let metrics_app = crate::routes::metrics_router(state.clone());
        let console_state = state.clone();
        let app = crate::routes::router(state);
        let mut background = Vec::new();
        background.push(peers.spawn_prefetcher(shutdown.clone()));
        background.push(
            instance
                .clone()
                .spawn_heartbeat(inv.clone(), shutdown.clone()),
        );
        background.push(crate::idle::spawn(
            inv.clone(),
            bmc.clone(),
            instance.clone(),
            shutdown.clone(),
        ));
        if let Some(every) = config.energy_interval {
            let stop = shutdown.clone();
            let (inv, instance) = (inv.clone(), instance.clone());
            background.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            let leads = instance.site_leads(&inv).await;
                            bmc.sample_energy(every, |site| leads.covers(&instance.scope, site)).await
                        }
                        _ = stop.cancelled() => break,
                    }
                }
            }));
        }
        background.push(tokio::spawn(conductor.run(shutdown.clone())));
        background.push(crate::origin::spawn_failure_audit(
            inv.clone(),
            auth_limiter,
            FAILURE_AUDIT_EVERY,
            shutdown.clone(),
        ));
        background.push(crate::scheduler::spawn(
            inv.clone(),
            instance.clone(),
            crate::scheduler::LEASE_TICK,
            shutdown.clone(),
        ));
        background.push(crate::lease_notices::spawn(
            inv.clone(),
            instance.clone(),
            Arc::new(config.image_import_allow.clone()),
            shutdown.clone(),
        ));
        for l in boot_listeners {
            let at = l.local_addr().ok();
            let what = Listening {
                app: boot_app.clone(),
                tls: None,
                hsts: false,
                boot: true,
                limits: limits.clone(),
                metrics: http_metrics.clone(),
            };
            background.push(tokio::spawn(crate::listener::serve(
                l,
                what,
                shutdown.clone(),
            )));
            tracing::info!(addr = ?at, "boot listener serving /boot (plain HTTP, firmware)");
        }
        for l in agent_listeners {
            let at = l.local_addr().ok();
            let what = Listening {
                app: agent_app.clone(),
                tls: boot_tls.clone(),
                hsts: false,
                boot: true,
                limits: limits.clone(),
                metrics: http_metrics.clone(),
            };
            background.push(tokio::spawn(crate::listener::serve(
                l,
                what,
                shutdown.clone(),
            )));
            tracing::info!(addr = ?at, "agent listener serving /api/v1/agent (HTTPS, pinned)");
        }
        if let Some((l, key)) = console_ssh {
            let at = l.local_addr().ok();
            let fingerprint = crate::console_ssh::host_key_fingerprint(&key);
            let door = Arc::new(crate::console::HubDoor {
                state: console_state,
            });
            background.push(tokio::spawn(crate::console_ssh::serve(
                l,
                key,
                inv.clone(),
                door,
                crate::console_ssh::SshDoorLimits::default(),
                shutdown.clone(),
            )));
            tracing::info!(addr = ?at, %fingerprint, "console SSH door listening (host key fingerprint)");
        }
        if let Some(l) = metrics_listener {
            let what = Listening {
                app: metrics_app,
                tls: None,
                hsts: false,
                boot: false,
                limits: limits.clone(),
                metrics: http_metrics.clone(),
            };
            background.push(tokio::spawn(crate::listener::serve(
                l,
                what,
                shutdown.clone(),
            )));
            tracing::info!(addr = ?metrics_addr, "metrics listener serving /metrics");
        }
        let what = Listening {
            app,
            tls: tls.clone(),
            hsts: tls.as_ref().is_some_and(|t| t.is_operator()),
            boot: false,
            limits,
            metrics: http_metrics,
        };
        let task = tokio::spawn(crate::listener::serve(listener, what, shutdown.clone()));
        tracing::info!(%addr, database = ?inv.backend(), "rackshare API listening");
        Ok(RunningServer {
            addr,
            scheme: if tls.is_some() { "https" } else { "http" },
            boot_tls: boot_tls.filter(|b| !tls.as_ref().is_some_and(|t| Arc::ptr_eq(t, b))),
            tls,
            metrics_addr,
            admin_token: issued.map(|t| t.token),
            admin_token_file,
            shutdown,
            task,
            background,
            pxe_tasks,
            inv,
        })
    }
}

impl RunningServer {
    /// Rereads the member listener's certificate and key (on SIGHUP) without touching the
    /// listener; returns the new fingerprint, or None when it speaks plain HTTP. On error the
    /// current certificate stays.
    pub async fn reload_tls(&self) -> Result<Option<String>, crate::tls::TlsError> {
        if let Some(boot) = self.boot_tls.clone() {
            tokio::task::spawn_blocking(move || boot.reload())
                .await
                .map_err(|e| crate::tls::TlsError::Config(e.to_string()))??;
        }
        let Some(tls) = self.tls.clone() else {
            return Ok(None);
        };
        tokio::task::spawn_blocking(move || tls.reload())
            .await
            .map_err(|e| crate::tls::TlsError::Config(e.to_string()))?
            .map(Some)
    }

    /// Stops accepting, lets in-flight requests finish, closes the database.
    pub async fn shutdown(self) -> std::io::Result<()> {
        stop_boot_services(&self.shutdown, self.pxe_tasks).await;
        for t in self.background {
            let _ = t.await;
        }
        let res = self.task.await.map_err(std::io::Error::other);
        self.inv.close().await;
        res
    }
}

/// Loads (or makes) a listener's certificate off the async threads.
async fn load_tls(
    source: crate::tls::TlsSource,
) -> Result<Arc<crate::tls::ReloadableTls>, StartError> {
    let tls = tokio::task::spawn_blocking(move || crate::tls::ReloadableTls::new(source))
        .await
        .map_err(|e| StartError::Boot(format!("loading the TLS certificate: {e}")))??;
    Ok(Arc::new(tls))
}

/// The names a self-signed certificate is made for: the listen address when it is one
/// address, loopback, and this host's name (clients pin the fingerprint, names matter only to
/// browsers).
fn certificate_names(listen: SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
        names.push(listen.ip().to_string());
    }
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && !names.iter().any(|n| n == host) {
            names.push(host.to_string());
        }
    }
    names
}

/// Refuses a member listener that would take a boot listener's address and port: the boot
/// paths must never answer where members reach the API.
fn check_apart(member: SocketAddr, boot: SocketAddr) -> Result<(), StartError> {
    let same_ip = member.ip().is_unspecified() || member.ip() == boot.ip();
    if member.port() == boot.port() && same_ip {
        return Err(StartError::Boot(format!(
            "--listen {member} takes the boot listener {boot} (boot files and the agent API are served only there); \
             move the member API to another port (e.g. --listen {}:9090) or the boot listener with --boot-http-port",
            member.ip()
        )));
    }
    Ok(())
}

/// Cancels the shutdown signal and waits for the boot services to stop.
async fn stop_boot_services(
    shutdown: &pxe::Shutdown,
    tasks: Vec<JoinHandle<Result<(), pxe::PxeError>>>,
) {
    shutdown.cancel();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "boot services ended with an error"),
            Err(e) => tracing::warn!(error = %e, "boot services task failed"),
        }
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn write_token_file(path: &Path, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    // A stale file from a database that was wiped would hold a dead token: replace it.
    let _ = std::fs::remove_file(path);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    writeln!(f, "{token}")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_member_listener_stays_off_the_boot_listeners() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let boot = a("10.77.0.1:8080");
        assert!(check_apart(a("0.0.0.0:8080"), boot).is_err());
        assert!(check_apart(a("10.77.0.1:8080"), boot).is_err());
        assert!(check_apart(a("[::]:8080"), boot).is_err());
        assert!(check_apart(a("10.77.0.1:9090"), boot).is_ok());
        assert!(check_apart(a("127.0.0.1:8080"), boot).is_ok());
        assert!(check_apart(a("0.0.0.0:9090"), boot).is_ok());
    }
}
