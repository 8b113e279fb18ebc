//! The validated service configuration. The binary turns flags and the config file into this.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything `rackshare serve` needs, already validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the database (SQLite), secret key and admin token live.
    pub data_dir: PathBuf,
    /// The member-facing API's listen address (never a boot listener's).
    pub listen: SocketAddr,
    /// The port of each boot interface's own listener (boot files, scripts, the agent).
    pub boot_http_port: u16,
    /// The port of each boot interface's HTTPS listener (the agent API, certificate pinned).
    pub boot_https_port: u16,
    /// `sqlite://…` or `postgres://…`; default: SQLite in the data dir.
    pub database_url: Option<String>,
    /// How often to read every BMC's power draw; None: never.
    pub energy_interval: Option<Duration>,
    /// Timeouts, retries and polling for BMC commands.
    pub bmc_policy: bmc::Policy,
    /// Largest image upload accepted, in bytes.
    pub max_image_bytes: u64,
    /// PXE boot services (DHCP, TFTP, HTTP boot), one entry per interface; empty: off.
    pub boot: Vec<crate::BootSettings>,
    /// The job engine's settings.
    pub conductor: crate::ConductorConfig,
    /// Internal address ranges URL imports may reach anyway (staff's choice); empty: none.
    pub image_import_allow: Vec<crate::ImportRange>,
    /// When failed authentication is refused (429) and how long its windows are.
    pub auth_limit: crate::AuthLimitPolicy,
    /// HTTPS on the member listener: off, the operator's certificate, or self-signed.
    pub tls: TlsSetting,
    /// Where `/metrics` is served (never on the member listener); None: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the consoles' SSH door listens; None: nowhere (the default).
    pub console_ssh_listen: Option<SocketAddr>,
    /// Bounds on the member and boot listeners' connections.
    pub connections: crate::ConnectionLimits,
    /// The site this instance serves (`--site`; must exist); None: every machine.
    pub site: Option<String>,
    /// How blobs this instance lacks are fetched from other instances.
    pub image_peers: crate::PeerPolicy,
}

/// How the member listener speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSetting {
    /// Plain HTTP (loopback, or `--no-tls`).
    Off,
    /// The operator's PEM certificate chain and key (HSTS is sent).
    Operator {
        /// The certificate chain file.
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
    },
    /// A self-signed certificate made in the data dir at first start (no HSTS).
    SelfSigned,
}

impl Config {
    /// A configuration for a laptop: `./rackshare-data`, loopback, SQLite.
    pub fn local_default() -> Self {
        Config {
            data_dir: PathBuf::from("rackshare-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            boot_http_port: 8080,
            boot_https_port: 8443,
            database_url: None,
            energy_interval: Some(Duration::from_secs(60)),
            bmc_policy: bmc::Policy::default(),
            max_image_bytes: 64 << 30,
            boot: Vec::new(),
            conductor: crate::ConductorConfig::default(),
            image_import_allow: Vec::new(),
            auth_limit: crate::AuthLimitPolicy::default(),
            tls: TlsSetting::Off,
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9100))),
            console_ssh_listen: None,
            connections: crate::ConnectionLimits::default(),
            site: None,
            image_peers: crate::PeerPolicy::default(),
        }
    }

    /// The database URL actually used.
    pub fn effective_database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("rackshare.db").display()))
    }
}
