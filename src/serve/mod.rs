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
    /// Address the member-facing API listens on; never a boot listener's address and port [default: 127.0.0.1:8080]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Port of each boot interface's own listener (boot files, boot scripts, the agent API) [default: 8080]
    #[arg(long)]
    pub boot_http_port: Option<u16>,
    /// Port of each boot interface's HTTPS listener: the agent API only, the certificate pinned on the agent's command line [default: 8443]
    #[arg(long)]
    pub boot_https_port: Option<u16>,
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
    /// Seconds between looks for queued jobs when no wake-up came (new jobs wake the conductors of every instance at once on PostgreSQL; this is the fallback) [default: 2]
    #[arg(long)]
    pub job_poll_secs: Option<u64>,
    /// The site this instance serves: it calls the BMCs of and drives jobs only for machines of that site (and those without one); the site must exist. Without it: every machine
    #[arg(long)]
    pub site: Option<String>,
    /// Network interface to serve PXE boot on (DHCP, TFTP, HTTP boot); boot services are off without it and without [[pxe-interface]] tables
    #[arg(long)]
    #[serde(skip)]
    pub pxe_interface: Option<String>,
    /// The config file's `pxe-interface`: one name (as the flag), or [[pxe-interface]] tables
    /// (more interfaces, each with its own mode); `load` splits it into the two fields.
    #[arg(skip)]
    #[serde(rename = "pxe-interface", default)]
    pub pxe_interface_file: Option<InterfaceKey>,
    /// Config file only ([[pxe-interface]] tables): more boot interfaces
    #[arg(skip)]
    #[serde(skip)]
    pub pxe_interfaces: Vec<InterfaceSettings>,
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
    /// Authoritative mode: NTP server handed out (repeat)
    #[arg(long)]
    #[serde(default)]
    pub pxe_ntp: Vec<Ipv4Addr>,
    /// Authoritative mode: interface MTU handed out
    #[arg(long)]
    pub pxe_mtu: Option<u16>,
    /// Authoritative mode: seconds an address a client declined (in use on the wire) stays out of the pool [default: 600]
    #[arg(long)]
    pub pxe_decline_hold_secs: Option<u64>,
    /// Config file only ([[pxe-subnet]] tables): more subnets, on segments behind DHCP relays
    #[arg(skip)]
    #[serde(default)]
    pub pxe_subnet: Vec<SubnetSettings>,
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
    /// URL machines use to reach the HTTP boot server [default: http://SERVER_IP:BOOT_HTTP_PORT]
    #[arg(long)]
    pub pxe_http_base: Option<String>,
    /// HTTPS: the member API's certificate chain (PEM, leaf first); reread on SIGHUP. Needs --tls-key; the API then sends HSTS
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// HTTPS: the private key of --tls-cert (PEM); reread on SIGHUP
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve the member API in plain HTTP even on a non-loopback --listen (without it and without --tls-cert, a self-signed certificate is made in the data dir)
    #[arg(long)]
    #[serde(default)]
    pub no_tls: bool,
    /// Where /metrics is served (never on the member API), or `off` [default: 127.0.0.1:9100]
    #[arg(long, env = "RACKSHARE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Serve machines' consoles over SSH here (`ssh -p PORT MACHINE@HOST`, public keys of users and groups), or `off` [default: off]
    #[arg(long)]
    pub console_ssh_listen: Option<String>,
    /// Seconds a request head (and a TLS handshake) may take, counted from the connection's opening or its previous answer; also the idle keep-alive timeout [default: 15]
    #[arg(long)]
    pub http_header_timeout_secs: Option<u64>,
    /// Request bodies slower than this many bytes per second (over 20 s of waiting) are cut off; 0: no minimum [default: 1024]
    #[arg(long)]
    pub http_min_body_rate: Option<u64>,
    /// Open HTTP connections at most, all clients together (kept below the open-file limit) [default: 4096]
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Open HTTP connections at most from one client address (IPv6: one /64) [default: 256]
    #[arg(long)]
    pub max_connections_per_source: Option<usize>,
    /// Internal address range (CIDR) that image imports from a URL may reach anyway; repeat. Loopback, private, link-local, CGNAT, multicast and this host's addresses are refused otherwise
    #[arg(long, num_args = 1..)]
    #[serde(default)]
    pub image_import_allow: Vec<String>,
    /// Failed authentications from one address (or against one token prefix) in a window before it is answered 429 [default: 20]
    #[arg(long)]
    pub auth_failure_limit: Option<u64>,
    /// Length of the failed-authentication window, in seconds; each window with failures is one audit event [default: 60]
    #[arg(long)]
    pub auth_failure_window_secs: Option<u64>,
    /// Image blobs fetched from other instances at once (a blob this instance lacks is fetched once, however many agents ask) [default: 2]
    #[arg(long)]
    pub image_peer_transfers: Option<usize>,
    /// Bytes per second one fetch from another instance may take, so a thin uplink keeps room; 0: no cap [default: 0]
    #[arg(long)]
    pub image_peer_rate: Option<u64>,
}

/// One `[[pxe-subnet]]` of the config file: a segment whose DHCP relay forwards to rackshare
/// (authoritative mode). A table, so the one setting without a flag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SubnetSettings {
    /// The address pool, FIRST-LAST.
    pub pool: String,
    /// Subnet mask [default: 255.255.255.0].
    pub mask: Option<Ipv4Addr>,
    /// Default gateway handed out.
    pub router: Option<Ipv4Addr>,
    /// DNS servers handed out.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// Domain name handed out.
    pub domain: Option<String>,
    /// NTP servers handed out.
    #[serde(default)]
    pub ntp: Vec<Ipv4Addr>,
    /// Interface MTU handed out.
    pub mtu: Option<u16>,
    /// Lease time in seconds [default: pxe-lease-secs, or 3600].
    pub lease_secs: Option<u64>,
}

/// The config file's `pxe-interface` key: a name (`pxe-interface = "br0"`, as the flag) or an
/// array of tables (`[[pxe-interface]]`). TOML allows one or the other in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceKey {
    /// `pxe-interface = "IF"`.
    One(String),
    /// `[[pxe-interface]]` tables.
    Tables(Vec<InterfaceSettings>),
}

impl<'de> Deserialize<'de> for InterfaceKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // Through a value, so that a bad table gets the table's own error, not "no variant".
        match toml::Value::deserialize(d)? {
            toml::Value::String(s) => Ok(InterfaceKey::One(s)),
            v @ toml::Value::Array(_) => Vec::<InterfaceSettings>::deserialize(v)
                .map(InterfaceKey::Tables)
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!(
                "pxe-interface must be an interface name or [[pxe-interface]] tables, not a {}",
                other.type_str()
            ))),
        }
    }
}

/// One `[[pxe-interface]]` of the config file: a boot interface with its own mode. The keys
/// are the `--pxe-…` flags' without the prefix; its relayed subnets are its `subnets`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InterfaceSettings {
    /// Network interface to serve on.
    pub interface: String,
    /// proxy or authoritative [default: proxy].
    pub mode: Option<String>,
    /// Authoritative mode: the directly attached pool, FIRST-LAST.
    pub pool: Option<String>,
    /// Default gateway handed out.
    pub router: Option<Ipv4Addr>,
    /// DNS servers handed out.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// Domain name handed out.
    pub domain: Option<String>,
    /// Lease time in seconds [default: 3600].
    pub lease_secs: Option<u64>,
    /// NTP servers handed out.
    #[serde(default)]
    pub ntp: Vec<Ipv4Addr>,
    /// Interface MTU handed out.
    pub mtu: Option<u16>,
    /// Address machines reach the boot server at [default: the interface's].
    pub server_ip: Option<Ipv4Addr>,
    /// Serve authoritative DHCP even when another DHCP server answers on the segment.
    #[serde(default)]
    pub force: bool,
    /// Subnets behind DHCP relays that forward to this interface (`[[pxe-interface.subnets]]`).
    #[serde(default)]
    pub subnets: Vec<SubnetSettings>,
}

/// `rackshare serve` arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML config file; its keys are the flag names below without the dashes in front, plus [[pxe-subnet]] tables (subnets behind DHCP relays: pool, mask, router, dns, domain, ntp, mtu, lease-secs) and [[pxe-interface]] tables (more boot interfaces, each with its own mode: interface, mode, pool, router, dns, domain, lease-secs, ntp, mtu, server-ip, force, and [[pxe-interface.subnets]])
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
            boot_http_port: self.boot_http_port.or(file.boot_http_port),
            boot_https_port: self.boot_https_port.or(file.boot_https_port),
            database_url: self.database_url.or(file.database_url),
            log_level: self.log_level.or(file.log_level),
            energy_interval_secs: self.energy_interval_secs.or(file.energy_interval_secs),
            max_jobs: self.max_jobs.or(file.max_jobs),
            job_poll_secs: self.job_poll_secs.or(file.job_poll_secs),
            site: self.site.or(file.site),
            pxe_interface: self.pxe_interface.or(file.pxe_interface),
            pxe_interface_file: None,
            // Only the file has them.
            pxe_interfaces: file.pxe_interfaces,
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
            pxe_ntp: if self.pxe_ntp.is_empty() {
                file.pxe_ntp
            } else {
                self.pxe_ntp
            },
            pxe_mtu: self.pxe_mtu.or(file.pxe_mtu),
            pxe_decline_hold_secs: self.pxe_decline_hold_secs.or(file.pxe_decline_hold_secs),
            // Only the file has them.
            pxe_subnet: file.pxe_subnet,
            pxe_server_ip: self.pxe_server_ip.or(file.pxe_server_ip),
            pxe_discovery: self.pxe_discovery || file.pxe_discovery,
            pxe_force: self.pxe_force || file.pxe_force,
            pxe_root: self.pxe_root.or(file.pxe_root),
            pxe_http_base: self.pxe_http_base.or(file.pxe_http_base),
            image_import_allow: if self.image_import_allow.is_empty() {
                file.image_import_allow
            } else {
                self.image_import_allow
            },
            auth_failure_limit: self.auth_failure_limit.or(file.auth_failure_limit),
            auth_failure_window_secs: self
                .auth_failure_window_secs
                .or(file.auth_failure_window_secs),
            image_peer_transfers: self.image_peer_transfers.or(file.image_peer_transfers),
            image_peer_rate: self.image_peer_rate.or(file.image_peer_rate),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            no_tls: self.no_tls || file.no_tls,
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            console_ssh_listen: self.console_ssh_listen.or(file.console_ssh_listen),
            http_header_timeout_secs: self
                .http_header_timeout_secs
                .or(file.http_header_timeout_secs),
            http_min_body_rate: self.http_min_body_rate.or(file.http_min_body_rate),
            max_connections: self.max_connections.or(file.max_connections),
            max_connections_per_source: self
                .max_connections_per_source
                .or(file.max_connections_per_source),
        }
    }
}

/// The config file's text as settings, `pxe-interface` split into the name and the tables.
fn parse_file(text: &str) -> anyhow::Result<ServeSettings> {
    let mut s: ServeSettings = toml::from_str(text)?;
    match s.pxe_interface_file.take() {
        Some(InterfaceKey::One(name)) => s.pxe_interface = Some(name),
        Some(InterfaceKey::Tables(t)) => s.pxe_interfaces = t,
        None => {}
    }
    Ok(s)
}

fn load(args: ServeArgs) -> anyhow::Result<(api::Config, String)> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            parse_file(&text).with_context(|| format!("config file {}", path.display()))?
        }
        None => ServeSettings::default(),
    };
    let s = args.settings.or(file);
    let mut config = api::Config::local_default();
    config.boot = boot_settings(&s)?;
    config.tls = tls_setting(&s, s.listen.unwrap_or(config.listen))?;
    if let Some(d) = s.data_dir {
        config.data_dir = d;
    }
    if let Some(l) = s.listen {
        config.listen = l;
    }
    if let Some(p) = s.boot_http_port {
        config.boot_http_port = p;
    }
    if let Some(p) = s.boot_https_port {
        config.boot_https_port = p;
    }
    if let Some(url) = s.database_url {
        inventory::Backend::of_url(&url).context("--database-url")?;
        config.database_url = Some(url);
    }
    if let Some(secs) = s.energy_interval_secs {
        config.energy_interval = (secs > 0).then(|| std::time::Duration::from_secs(secs));
    }
    for r in &s.image_import_allow {
        let range = r
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--image-import-allow: {e}"))?;
        config.image_import_allow.push(range);
    }
    if let Some(n) = s.auth_failure_limit {
        if n == 0 {
            bail!("--auth-failure-limit must be at least 1");
        }
        config.auth_limit.max_per_source = n;
        config.auth_limit.max_per_prefix = n;
    }
    if let Some(secs) = s.auth_failure_window_secs {
        if !(1..=86_400).contains(&secs) {
            bail!("--auth-failure-window-secs must be between 1 and 86400");
        }
        config.auth_limit.window_ms = i64::try_from(secs * 1000).unwrap_or(i64::MAX);
    }
    if let Some(n) = s.image_peer_transfers {
        if !(1..=64).contains(&n) {
            bail!("--image-peer-transfers must be between 1 and 64");
        }
        config.image_peers.max_transfers = n;
    }
    if let Some(rate) = s.image_peer_rate {
        config.image_peers.max_bytes_per_sec = rate;
    }
    if let Some(m) = &s.metrics_listen {
        config.metrics_listen = match m.trim() {
            "off" | "none" => None,
            addr => Some(addr.parse().with_context(|| {
                format!("--metrics-listen '{addr}' must be ADDRESS:PORT or off")
            })?),
        };
    }
    if let Some(m) = &s.console_ssh_listen {
        config.console_ssh_listen = match m.trim() {
            "off" | "none" => None,
            addr => Some(addr.parse().with_context(|| {
                format!("--console-ssh-listen '{addr}' must be ADDRESS:PORT or off")
            })?),
        };
    }
    if let Some(secs) = s.http_header_timeout_secs {
        if secs == 0 {
            bail!("--http-header-timeout-secs must be at least 1");
        }
        config.connections.header_timeout = std::time::Duration::from_secs(secs);
    }
    if let Some(rate) = s.http_min_body_rate {
        config.connections.min_body_rate = rate;
    }
    if let Some(n) = s.max_connections {
        if n == 0 {
            bail!("--max-connections must be at least 1");
        }
        config.connections.max_connections = n;
    }
    if let Some(n) = s.max_connections_per_source {
        if n == 0 {
            bail!("--max-connections-per-source must be at least 1");
        }
        config.connections.max_per_source = n;
    }
    if let Some(n) = s.max_jobs {
        if n == 0 {
            bail!("--max-jobs must be at least 1");
        }
        config.conductor.max_running = n;
    }
    if let Some(secs) = s.job_poll_secs {
        if secs == 0 {
            bail!("--job-poll-secs must be at least 1");
        }
        config.conductor.look_every = std::time::Duration::from_secs(secs);
    }
    if let Some(site) = s.site {
        if site.trim().is_empty() {
            bail!("--site must name a site");
        }
        config.site = Some(site);
    }
    Ok((config, s.log_level.unwrap_or_else(|| "info".into())))
}

/// HTTPS or not: the operator's certificate when given; plain HTTP on loopback or when
/// asked (`--no-tls`); otherwise self-signed, so no deployment runs in clear by accident.
fn tls_setting(s: &ServeSettings, listen: SocketAddr) -> anyhow::Result<api::TlsSetting> {
    match (&s.tls_cert, &s.tls_key) {
        (Some(_), Some(_)) if s.no_tls => bail!("--no-tls and --tls-cert contradict each other"),
        (Some(cert), Some(key)) => Ok(api::TlsSetting::Operator {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (Some(_), None) => bail!("--tls-cert needs --tls-key"),
        (None, Some(_)) => bail!("--tls-key needs --tls-cert"),
        (None, None) if s.no_tls || listen.ip().is_loopback() => Ok(api::TlsSetting::Off),
        (None, None) => Ok(api::TlsSetting::SelfSigned),
    }
}

/// `FIRST-LAST` as two addresses, first ≤ last; errors start with `what`.
fn parse_pool(what: &str, pool: &str) -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
    let (a, b) = pool
        .split_once('-')
        .with_context(|| format!("{what} '{pool}' must be FIRST-LAST"))?;
    let start: Ipv4Addr = a
        .trim()
        .parse()
        .with_context(|| format!("{what}: '{a}' is not an IPv4 address"))?;
    let end: Ipv4Addr = b
        .trim()
        .parse()
        .with_context(|| format!("{what}: '{b}' is not an IPv4 address"))?;
    if u32::from(start) > u32::from(end) {
        bail!("{what} {pool}: the first address comes after the last");
    }
    Ok((start, end))
}

/// How errors name one interface's settings: the flags (`--pxe-pool`, `[[pxe-subnet]]`) or a
/// `[[pxe-interface]]` table's keys (`pool`, `subnets`; the table is named around them).
#[derive(Clone, Copy)]
enum Naming {
    Flags,
    Table,
}

impl Naming {
    fn key(self, k: &str) -> String {
        match self {
            Naming::Flags => format!("--pxe-{k}"),
            Naming::Table => k.to_string(),
        }
    }

    fn subnets(self) -> &'static str {
        match self {
            Naming::Flags => "[[pxe-subnet]]",
            Naming::Table => "subnets",
        }
    }
}

/// An interface's relayed subnets as pools, checked on their own and against each other and
/// the directly attached pool `direct` (whose mask is the interface's, known only at
/// start-up, where `api::boot::prepare` checks the whole set again).
fn relayed_pools(
    i: &InterfaceSettings,
    naming: Naming,
    direct: (Ipv4Addr, Ipv4Addr),
) -> anyhow::Result<Vec<api::BootPool>> {
    const DEFAULT_MASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);
    let what = naming.subnets();
    let mut pools = Vec::new();
    let mut checked = Vec::new();
    for sub in &i.subnets {
        let (start, end) = parse_pool(&format!("{what} pool"), &sub.pool)?;
        let pool = api::BootPool {
            start,
            end,
            mask: Some(sub.mask.unwrap_or(DEFAULT_MASK)),
            router: sub.router,
            dns: sub.dns.clone(),
            domain: sub.domain.clone(),
            ntp: sub.ntp.clone(),
            mtu: sub.mtu,
            lease_secs: sub.lease_secs.or(i.lease_secs).unwrap_or(3600),
        };
        let p = pool.to_pxe(DEFAULT_MASK);
        checked.push(p.clone());
        pxe::validate_pools(&checked).map_err(|e| anyhow::anyhow!("{what} {e}"))?;
        if p.contains_subnet(direct.0) || p.contains_subnet(direct.1) {
            bail!(
                "{what} subnet {} holds {} {}-{}: the directly attached subnet is not a relayed one",
                p.subnet(),
                naming.key("pool"),
                direct.0,
                direct.1
            );
        }
        pools.push(pool);
    }
    Ok(pools)
}

/// One boot interface's settings; the per-service ones (root, discovery, HTTP base, DECLINE
/// hold) come from `s`.
fn interface_settings(
    i: &InterfaceSettings,
    naming: Naming,
    s: &ServeSettings,
) -> anyhow::Result<api::BootSettings> {
    let k = |name: &str| naming.key(name);
    let mode = match i.mode.as_deref().unwrap_or("proxy") {
        "proxy" => {
            if i.pool.is_some() || !i.subnets.is_empty() {
                bail!(
                    "{} and {} are for {} authoritative; proxy mode never hands out addresses",
                    k("pool"),
                    naming.subnets(),
                    k("mode")
                );
            }
            api::DhcpRole::Proxy
        }
        "authoritative" => {
            let pool = i.pool.as_deref().with_context(|| {
                format!(
                    "{} authoritative needs {} FIRST-LAST, e.g. 10.77.0.100-10.77.0.200",
                    k("mode"),
                    k("pool")
                )
            })?;
            let (start, end) = parse_pool(&k("pool"), pool)?;
            let mut pools = vec![api::BootPool {
                start,
                end,
                // The interface's: this is the segment the boot interface is on.
                mask: None,
                router: i.router,
                dns: i.dns.clone(),
                domain: i.domain.clone(),
                ntp: i.ntp.clone(),
                mtu: i.mtu,
                lease_secs: i.lease_secs.unwrap_or(3600),
            }];
            if pools[0].lease_secs == 0 {
                bail!("{} must be at least 1", k("lease-secs"));
            }
            if pools[0].mtu.is_some_and(|m| m < 68) {
                bail!("{} must be at least 68", k("mtu"));
            }
            pools.extend(relayed_pools(i, naming, (start, end))?);
            api::DhcpRole::Authoritative { pools }
        }
        other => bail!(
            "{} must be proxy or authoritative, not '{other}'",
            k("mode")
        ),
    };
    Ok(api::BootSettings {
        interface: i.interface.clone(),
        mode,
        server_ip: i.server_ip,
        discovery: s.pxe_discovery,
        force: i.force,
        root: s.pxe_root.clone(),
        http_base: s.pxe_http_base.clone(),
        decline_hold: s
            .pxe_decline_hold_secs
            .map(std::time::Duration::from_secs)
            .unwrap_or(pxe::DEFAULT_DECLINE_HOLD),
    })
}

/// Every boot interface: the flags' (`--pxe-interface`, with the top-level `[[pxe-subnet]]`
/// tables) first, then the `[[pxe-interface]]` tables; empty when the boot services are off.
fn boot_settings(s: &ServeSettings) -> anyhow::Result<Vec<api::BootSettings>> {
    let mut out = Vec::new();
    if let Some(interface) = s.pxe_interface.clone() {
        let flags = InterfaceSettings {
            interface,
            mode: s.pxe_mode.clone(),
            pool: s.pxe_pool.clone(),
            router: s.pxe_router,
            dns: s.pxe_dns.clone(),
            domain: s.pxe_domain.clone(),
            lease_secs: s.pxe_lease_secs,
            ntp: s.pxe_ntp.clone(),
            mtu: s.pxe_mtu,
            server_ip: s.pxe_server_ip,
            force: s.pxe_force,
            subnets: s.pxe_subnet.clone(),
        };
        out.push(interface_settings(&flags, Naming::Flags, s)?);
    } else if s.pxe_mode.is_some()
        || s.pxe_pool.is_some()
        || (!s.pxe_subnet.is_empty() && s.pxe_interfaces.is_empty())
    {
        bail!("--pxe-mode, --pxe-pool and [[pxe-subnet]] need --pxe-interface IF");
    }
    for (n, table) in s.pxe_interfaces.iter().enumerate() {
        let mut t = table.clone();
        if t.interface.is_empty() {
            bail!("[[pxe-interface]] number {} has an empty interface", n + 1);
        }
        // Old configs' top-level [[pxe-subnet]] tables belong to the first interface.
        if n == 0 && s.pxe_interface.is_none() {
            t.subnets.splice(0..0, s.pxe_subnet.iter().cloned());
        }
        let b = interface_settings(&t, Naming::Table, s)
            .with_context(|| format!("[[pxe-interface]] {}", t.interface))?;
        if out.iter().any(|o| o.interface == b.interface) {
            bail!(
                "[[pxe-interface]] {}: the interface is configured twice",
                b.interface
            );
        }
        out.push(b);
    }
    check_across(&out)?;
    Ok(out)
}

/// No two authoritative interfaces may hand out the same addresses. Here only what the
/// settings show (pool ranges, relayed subnets' masks); the directly attached subnets' masks
/// are the interfaces', checked again at start (`api::boot::check_interfaces`).
fn check_across(all: &[api::BootSettings]) -> anyhow::Result<()> {
    let pools = |b: &api::BootSettings| match &b.mode {
        api::DhcpRole::Authoritative { pools } => pools.clone(),
        api::DhcpRole::Proxy => Vec::new(),
    };
    for (n, a) in all.iter().enumerate() {
        for b in &all[..n] {
            for pa in pools(a) {
                for pb in pools(b) {
                    // The rule is pxe's; a mask not known before start-up counts as /32.
                    let known = |p: &api::BootPool| p.to_pxe(Ipv4Addr::BROADCAST);
                    if known(&pa).collides_with(&known(&pb)) {
                        bail!(
                            "boot interface {}: pool {}-{} overlaps pool {}-{} of boot interface {}; two authoritative interfaces cannot hand out the same subnet",
                            a.interface,
                            pa.start,
                            pa.end,
                            pb.start,
                            pb.end,
                            b.interface
                        );
                    }
                }
            }
        }
    }
    Ok(())
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
        // On the first start of a new database. The token goes to the terminal only: stdout
        // that is not a terminal is usually a service log, which must never hold it.
        let file = server
            .admin_token_file
            .as_ref()
            .map_or_else(|| "the data dir".to_string(), |f| f.display().to_string());
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            println!("First start: created user 'admin'. Its API token (shown once):");
            println!("  {token}");
            println!("It is also in {file} (mode 0600).");
        } else {
            println!("First start: created user 'admin'; its API token is in {file} (mode 0600).");
        }
    }
    if let Some(tls) = &server.tls {
        match tls.source() {
            api::tls::TlsSource::SelfSigned { data_dir, .. } => println!(
                "TLS: self-signed certificate {} (clients: --fingerprint {})",
                api::tls::self_signed_paths(data_dir).0.display(),
                tls.fingerprint()
            ),
            api::tls::TlsSource::Operator { cert, .. } => {
                println!("TLS: certificate {}", cert.display())
            }
        }
        println!("TLS certificate fingerprint: {}", tls.fingerprint());
    }
    if let Some(tls) = &server.boot_tls {
        // The member API is plain HTTP; the agent listeners still speak HTTPS, pinned.
        println!(
            "agent API (boot interfaces, HTTPS): certificate fingerprint {}",
            tls.fingerprint()
        );
    }
    if let Some(m) = server.metrics_addr {
        println!("metrics on http://{m}/metrics");
    }
    println!(
        "rackshare API listening on {}://{}",
        server.scheme, server.addr
    );
    wait_for_signal(&server).await?;
    tracing::info!("shutting down");
    server.shutdown().await.context("shutting down")?;
    Ok(())
}

/// Waits for SIGTERM or SIGINT; on SIGHUP rereads the TLS certificate and key (the listener
/// stays; a bad file keeps the current certificate).
async fn wait_for_signal(server: &api::RunningServer) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => match server.reload_tls().await {
                Ok(Some(fp)) => tracing::info!(fingerprint = %fp, "TLS certificate reloaded"),
                Ok(None) => tracing::info!("SIGHUP: no TLS certificate to reload"),
                Err(e) => tracing::error!(error = %e, "TLS reload failed; the current certificate stays"),
            },
        }
    }
}

#[cfg(test)]
mod tests;
