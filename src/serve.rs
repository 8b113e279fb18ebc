//! `rackshare serve`: flags and config file → validated `api::Config` → a running service
//! until SIGTERM/SIGINT.

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// Every key of the config file is also a `serve` flag of the same name (kebab-case): both
/// come from this one struct, so they cannot drift apart. Flags win over the file.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeSettings {
    /// Directory for the SQLite database, the secret key and the admin token [default: ./rackshare-data]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address the API listens on [default: 127.0.0.1:8080]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Database URL: sqlite://PATH or postgres://… [default: SQLite in the data dir]
    #[arg(long, env = "RACKSHARE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Log filter, e.g. info, debug, rackshare=debug [default: info]
    #[arg(long)]
    pub log_level: Option<String>,
    /// Seconds between power readings of every BMC, for the energy ledger; 0 turns it off [default: 60]
    #[arg(long)]
    pub energy_interval_secs: Option<u64>,
    /// At most this many reimage/inspect/wipe jobs run at once; more wait in the queue [default: 4]
    #[arg(long)]
    pub max_jobs: Option<usize>,
    /// Network interface to serve PXE boot on (DHCP, TFTP, HTTP boot); boot services are off without it
    #[arg(long)]
    pub pxe_interface: Option<String>,
    /// proxy (beside the network's DHCP server) or authoritative (rackshare hands out addresses) [default: proxy]
    #[arg(long)]
    pub pxe_mode: Option<String>,
    /// Authoritative mode: the address pool, FIRST-LAST
    #[arg(long)]
    pub pxe_pool: Option<String>,
    /// Authoritative mode: default gateway handed out
    #[arg(long)]
    pub pxe_router: Option<Ipv4Addr>,
    /// Authoritative mode: DNS server handed out (repeat)
    #[arg(long)]
    #[serde(default)]
    pub pxe_dns: Vec<Ipv4Addr>,
    /// Authoritative mode: domain name handed out
    #[arg(long)]
    pub pxe_domain: Option<String>,
    /// Authoritative mode: lease time in seconds [default: 3600]
    #[arg(long)]
    pub pxe_lease_secs: Option<u64>,
    /// Address machines reach the boot server at [default: the interface's]
    #[arg(long)]
    pub pxe_server_ip: Option<Ipv4Addr>,
    /// Enrol unknown machines that PXE-boot as `new` (they boot the discovery script)
    #[arg(long)]
    #[serde(default)]
    pub pxe_discovery: bool,
    /// Serve authoritative DHCP even when another DHCP server answers on the segment
    #[arg(long)]
    #[serde(default)]
    pub pxe_force: bool,
    /// Directory with the iPXE binaries [default: DATA_DIR/boot, filled from Debian's ipxe package]
    #[arg(long)]
    pub pxe_root: Option<PathBuf>,
    /// URL machines use to reach the HTTP boot server [default: http://SERVER_IP:API_PORT]
    #[arg(long)]
    pub pxe_http_base: Option<String>,
}

/// `rackshare serve` arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML config file; its keys are the flag names below without the dashes in front
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: ServeSettings,
}

impl ServeSettings {
    /// `self` with the gaps filled from `file`.
    fn or(self, file: ServeSettings) -> ServeSettings {
        ServeSettings {
            data_dir: self.data_dir.or(file.data_dir),
            listen: self.listen.or(file.listen),
            database_url: self.database_url.or(file.database_url),
            log_level: self.log_level.or(file.log_level),
            energy_interval_secs: self.energy_interval_secs.or(file.energy_interval_secs),
            max_jobs: self.max_jobs.or(file.max_jobs),
            pxe_interface: self.pxe_interface.or(file.pxe_interface),
            pxe_mode: self.pxe_mode.or(file.pxe_mode),
            pxe_pool: self.pxe_pool.or(file.pxe_pool),
            pxe_router: self.pxe_router.or(file.pxe_router),
            pxe_dns: if self.pxe_dns.is_empty() {
                file.pxe_dns
            } else {
                self.pxe_dns
            },
            pxe_domain: self.pxe_domain.or(file.pxe_domain),
            pxe_lease_secs: self.pxe_lease_secs.or(file.pxe_lease_secs),
            pxe_server_ip: self.pxe_server_ip.or(file.pxe_server_ip),
            pxe_discovery: self.pxe_discovery || file.pxe_discovery,
            pxe_force: self.pxe_force || file.pxe_force,
            pxe_root: self.pxe_root.or(file.pxe_root),
            pxe_http_base: self.pxe_http_base.or(file.pxe_http_base),
        }
    }
}

fn load(args: ServeArgs) -> anyhow::Result<(api::Config, String)> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            toml::from_str::<ServeSettings>(&text)
                .with_context(|| format!("config file {}", path.display()))?
        }
        None => ServeSettings::default(),
    };
    let s = args.settings.or(file);
    let mut config = api::Config::local_default();
    config.boot = boot_settings(&s)?;
    if let Some(d) = s.data_dir {
        config.data_dir = d;
    }
    if let Some(l) = s.listen {
        config.listen = l;
    }
    if let Some(url) = s.database_url {
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            bail!("--database-url must start with sqlite:// or postgres://, got '{url}'");
        }
        config.database_url = Some(url);
    }
    if let Some(secs) = s.energy_interval_secs {
        config.energy_interval = (secs > 0).then(|| std::time::Duration::from_secs(secs));
    }
    if let Some(n) = s.max_jobs {
        if n == 0 {
            bail!("--max-jobs must be at least 1");
        }
        config.conductor.max_running = n;
    }
    Ok((config, s.log_level.unwrap_or_else(|| "info".into())))
}

fn boot_settings(s: &ServeSettings) -> anyhow::Result<Option<api::BootSettings>> {
    let Some(interface) = s.pxe_interface.clone() else {
        if s.pxe_mode.is_some() || s.pxe_pool.is_some() {
            bail!("--pxe-mode and --pxe-pool need --pxe-interface IF");
        }
        return Ok(None);
    };
    let mode = match s.pxe_mode.as_deref().unwrap_or("proxy") {
        "proxy" => {
            if s.pxe_pool.is_some() {
                bail!("--pxe-pool is for --pxe-mode authoritative; proxy mode never hands out addresses");
            }
            api::BootMode::Proxy
        }
        "authoritative" => {
            let pool = s
                .pxe_pool
                .as_deref()
                .context("--pxe-mode authoritative needs --pxe-pool FIRST-LAST, e.g. 10.77.0.100-10.77.0.200")?;
            let (a, b) = pool
                .split_once('-')
                .with_context(|| format!("--pxe-pool '{pool}' must be FIRST-LAST"))?;
            let start: Ipv4Addr = a
                .trim()
                .parse()
                .with_context(|| format!("--pxe-pool: '{a}' is not an IPv4 address"))?;
            let end: Ipv4Addr = b
                .trim()
                .parse()
                .with_context(|| format!("--pxe-pool: '{b}' is not an IPv4 address"))?;
            if u32::from(start) > u32::from(end) {
                bail!("--pxe-pool {pool}: the first address comes after the last");
            }
            api::BootMode::Authoritative {
                pool_start: start,
                pool_end: end,
                router: s.pxe_router,
                dns: s.pxe_dns.clone(),
                domain: s.pxe_domain.clone(),
                lease_secs: s.pxe_lease_secs.unwrap_or(3600),
            }
        }
        other => bail!("--pxe-mode must be proxy or authoritative, not '{other}'"),
    };
    Ok(Some(api::BootSettings {
        interface,
        mode,
        server_ip: s.pxe_server_ip,
        discovery: s.pxe_discovery,
        force: s.pxe_force,
        root: s.pxe_root.clone(),
        http_base: s.pxe_http_base.clone(),
    }))
}

/// Runs the service until a signal.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (config, log_level) = load(args)?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&log_level).context("--log-level")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let server = api::Server::start(config.clone())
        .await
        .context("starting rackshare")?;
    if let Some(token) = &server.admin_token {
        // Printed once, on the first start of a new database; it is stored only hashed.
        println!("First start: created user 'admin'. Its API token (shown once):");
        println!("  {token}");
        if let Some(f) = &server.admin_token_file {
            println!("It is also in {} (mode 0600).", f.display());
        }
    }
    println!("rackshare API listening on http://{}", server.addr);
    wait_for_signal().await?;
    tracing::info!("shutting down");
    server.shutdown().await.context("shutting down")?;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}
