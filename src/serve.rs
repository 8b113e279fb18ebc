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
    /// URL machines use to reach the HTTP boot server [default: http://SERVER_IP:API_PORT]
    #[arg(long)]
    pub pxe_http_base: Option<String>,
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

/// `rackshare serve` arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML config file; its keys are the flag names below without the dashes in front, plus [[pxe-subnet]] tables (subnets behind DHCP relays: pool, mask, router, dns, domain, ntp, mtu, lease-secs)
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

/// The `[[pxe-subnet]]` tables as pools, checked on their own and against each other and the
/// directly attached pool `direct` (whose mask is the interface's, known only at start-up,
/// where `api::boot::prepare` checks the whole set again).
fn relayed_pools(
    s: &ServeSettings,
    direct: (Ipv4Addr, Ipv4Addr),
) -> anyhow::Result<Vec<api::BootPool>> {
    const DEFAULT_MASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);
    let mut pools = Vec::new();
    let mut checked = Vec::new();
    for sub in &s.pxe_subnet {
        let (start, end) = parse_pool("[[pxe-subnet]] pool", &sub.pool)?;
        let pool = api::BootPool {
            start,
            end,
            mask: Some(sub.mask.unwrap_or(DEFAULT_MASK)),
            router: sub.router,
            dns: sub.dns.clone(),
            domain: sub.domain.clone(),
            ntp: sub.ntp.clone(),
            mtu: sub.mtu,
            lease_secs: sub.lease_secs.or(s.pxe_lease_secs).unwrap_or(3600),
        };
        let p = pool.to_pxe(DEFAULT_MASK);
        checked.push(p.clone());
        pxe::validate_pools(&checked).map_err(|e| anyhow::anyhow!("[[pxe-subnet]] {e}"))?;
        if p.contains_subnet(direct.0) || p.contains_subnet(direct.1) {
            bail!(
                "[[pxe-subnet]] subnet {} holds --pxe-pool {}-{}: the directly attached subnet is not a relayed one",
                p.subnet(),
                direct.0,
                direct.1
            );
        }
        pools.push(pool);
    }
    Ok(pools)
}

fn boot_settings(s: &ServeSettings) -> anyhow::Result<Option<api::BootSettings>> {
    let Some(interface) = s.pxe_interface.clone() else {
        if s.pxe_mode.is_some() || s.pxe_pool.is_some() || !s.pxe_subnet.is_empty() {
            bail!("--pxe-mode, --pxe-pool and [[pxe-subnet]] need --pxe-interface IF");
        }
        return Ok(None);
    };
    let mode = match s.pxe_mode.as_deref().unwrap_or("proxy") {
        "proxy" => {
            if s.pxe_pool.is_some() || !s.pxe_subnet.is_empty() {
                bail!("--pxe-pool and [[pxe-subnet]] are for --pxe-mode authoritative; proxy mode never hands out addresses");
            }
            api::BootMode::Proxy
        }
        "authoritative" => {
            let pool = s
                .pxe_pool
                .as_deref()
                .context("--pxe-mode authoritative needs --pxe-pool FIRST-LAST, e.g. 10.77.0.100-10.77.0.200")?;
            let (start, end) = parse_pool("--pxe-pool", pool)?;
            let mut pools = vec![api::BootPool {
                start,
                end,
                // The interface's: this is the segment the boot interface is on.
                mask: None,
                router: s.pxe_router,
                dns: s.pxe_dns.clone(),
                domain: s.pxe_domain.clone(),
                ntp: s.pxe_ntp.clone(),
                mtu: s.pxe_mtu,
                lease_secs: s.pxe_lease_secs.unwrap_or(3600),
            }];
            if pools[0].lease_secs == 0 {
                bail!("--pxe-lease-secs must be at least 1");
            }
            if pools[0].mtu.is_some_and(|m| m < 68) {
                bail!("--pxe-mtu must be at least 68");
            }
            pools.extend(relayed_pools(s, (start, end))?);
            api::BootMode::Authoritative { pools }
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
        decline_hold: s
            .pxe_decline_hold_secs
            .map(std::time::Duration::from_secs)
            .unwrap_or(pxe::DEFAULT_DECLINE_HOLD),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        s: ServeSettings,
    }

    fn flags(args: &[&str]) -> ServeSettings {
        Cmd::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .map(|c| c.s)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn file(text: &str) -> ServeSettings {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    const BASE: &str = r#"
        pxe-interface = "br0"
        pxe-mode = "authoritative"
        pxe-pool = "10.77.0.100-10.77.0.150"
    "#;

    fn err(text: &str) -> String {
        match boot_settings(&file(text)) {
            Ok(b) => panic!("accepted: {b:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn flags_give_the_directly_attached_pool_with_ntp_mtu_and_the_decline_hold() {
        let s = flags(&[
            "--pxe-interface",
            "br0",
            "--pxe-mode",
            "authoritative",
            "--pxe-pool",
            "10.77.0.100-10.77.0.150",
            "--pxe-router",
            "10.77.0.1",
            "--pxe-ntp",
            "10.77.0.2",
            "--pxe-ntp",
            "10.77.0.3",
            "--pxe-mtu",
            "9000",
            "--pxe-decline-hold-secs",
            "90",
        ]);
        let b = boot_settings(&s).expect("valid").expect("boot on");
        assert_eq!(b.decline_hold, std::time::Duration::from_secs(90));
        let api::BootMode::Authoritative { pools } = b.mode else {
            panic!("{:?}", b.mode)
        };
        assert_eq!(
            pools,
            [api::BootPool {
                start: ip("10.77.0.100"),
                end: ip("10.77.0.150"),
                mask: None,
                router: Some(ip("10.77.0.1")),
                dns: vec![],
                domain: None,
                ntp: vec![ip("10.77.0.2"), ip("10.77.0.3")],
                mtu: Some(9000),
                lease_secs: 3600,
            }]
        );
        // The default hold is ten minutes; the file's key is the flag's name.
        let b = boot_settings(&file(BASE)).expect("valid").expect("on");
        assert_eq!(b.decline_hold, std::time::Duration::from_secs(600));
        let with_hold = file(&format!(
            "{BASE}\npxe-decline-hold-secs = 30\npxe-mtu = 1400"
        ));
        let b = boot_settings(&flags(&[]).or(with_hold.clone()))
            .expect("valid")
            .expect("on");
        assert_eq!(b.decline_hold, std::time::Duration::from_secs(30));
        // Flags win over the file.
        let b = boot_settings(&flags(&["--pxe-decline-hold-secs", "5"]).or(with_hold))
            .expect("valid")
            .expect("on");
        assert_eq!(b.decline_hold, std::time::Duration::from_secs(5));
    }

    #[test]
    fn config_file_subnets_become_relayed_pools() {
        let s = file(&format!(
            r#"{BASE}
            pxe-lease-secs = 600
            [[pxe-subnet]]
            pool = "10.88.0.100-10.88.0.200"
            mask = "255.255.255.0"
            router = "10.88.0.1"
            dns = ["10.88.0.1"]
            domain = "rack2.coop"
            ntp = ["10.88.0.1"]
            mtu = 9000
            lease-secs = 3600

            [[pxe-subnet]]
            pool = "172.16.4.10-172.16.7.250"
            mask = "255.255.252.0"
            "#
        ));
        let b = boot_settings(&flags(&[]).or(s))
            .expect("valid")
            .expect("on");
        let api::BootMode::Authoritative { pools } = b.mode else {
            panic!("{:?}", b.mode)
        };
        assert_eq!(pools.len(), 3);
        assert_eq!(pools[0].lease_secs, 600, "the flag pool");
        assert_eq!(
            pools[1],
            api::BootPool {
                start: ip("10.88.0.100"),
                end: ip("10.88.0.200"),
                mask: Some(ip("255.255.255.0")),
                router: Some(ip("10.88.0.1")),
                dns: vec![ip("10.88.0.1")],
                domain: Some("rack2.coop".into()),
                ntp: vec![ip("10.88.0.1")],
                mtu: Some(9000),
                lease_secs: 3600,
            }
        );
        // Defaults: a /24 mask is not assumed when one is given; lease time from pxe-lease-secs.
        assert_eq!(pools[2].mask, Some(ip("255.255.252.0")));
        assert_eq!(pools[2].lease_secs, 600);
        assert_eq!(pools[2].router, None);
    }

    #[test]
    fn bad_subnets_are_refused_with_one_line_naming_the_subnet() {
        let sub = |body: &str| format!("{BASE}\n[[pxe-subnet]]\n{body}\n");
        let e = err(&format!(
            "{}[[pxe-subnet]]\npool = \"10.88.0.10-10.88.0.20\"\nmask = \"255.255.0.0\"\n",
            sub("pool = \"10.88.1.10-10.88.1.20\"")
        ));
        assert!(
            e.contains("subnet 10.88.0.0/16 overlaps subnet 10.88.1.0/24"),
            "{e}"
        );
        let e = err(&sub("pool = \"10.88.0.100-10.88.1.20\""));
        assert!(
            e.contains("subnet 10.88.0.0/24") && e.contains("does not fit in mask 255.255.255.0"),
            "{e}"
        );
        let e = err(&sub(
            "pool = \"10.88.0.100-10.88.0.200\"\nrouter = \"10.89.0.1\"",
        ));
        assert!(
            e.contains("subnet 10.88.0.0/24: router 10.89.0.1 is outside the subnet"),
            "{e}"
        );
        let e = err(&sub("pool = \"10.88.0.0-10.88.0.200\""));
        assert!(e.contains("network or broadcast"), "{e}");
        let e = err(&sub(
            "pool = \"10.88.0.10-10.88.0.20\"\nmask = \"255.0.255.0\"",
        ));
        assert!(e.contains("255.0.255.0 is not a subnet mask"), "{e}");
        let e = err(&sub("pool = \"10.77.0.160-10.77.0.170\""));
        assert!(
            e.contains("subnet 10.77.0.0/24 holds --pxe-pool 10.77.0.100-10.77.0.150"),
            "{e}"
        );
        let e = err(&sub("pool = \"10.88.0.20-10.88.0.10\""));
        assert!(e.contains("the first address comes after the last"), "{e}");
        let e = err(&sub("pool = \"10.88.0.10-10.88.0.20\"\nmtu = 40"));
        assert!(e.contains("MTU below 68"), "{e}");
        for e in [
            err(&sub("pool = \"10.88.0.10-10.88.0.20\"\nmtu = 40")),
            err(&sub("pool = \"10.88.0.100-10.88.1.20\"")),
        ] {
            assert!(!e.contains('\n'), "one line: {e}");
        }
        // Unknown keys are refused by the parser; subnets need authoritative mode.
        assert!(toml::from_str::<ServeSettings>(&sub("pool = \"a-b\"\nrouters = []")).is_err());
        let e = err("pxe-interface = \"br0\"\n[[pxe-subnet]]\npool = \"10.88.0.10-10.88.0.20\"\n");
        assert!(e.contains("authoritative"), "{e}");
    }
}
