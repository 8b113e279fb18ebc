//! Boot server configuration.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use crate::boot::BootFiles;

/// One address pool (one subnet) in authoritative mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// First address handed out.
    pub range_start: Ipv4Addr,
    /// Last address handed out (inclusive).
    pub range_end: Ipv4Addr,
    /// Subnet mask (option 1); the subnet is `range_start & mask`.
    pub subnet_mask: Ipv4Addr,
    /// Default gateway (option 3).
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Domain name (option 15).
    pub domain: Option<String>,
    /// NTP servers (option 42).
    pub ntp: Vec<Ipv4Addr>,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
    /// Lease time (option 51); T1/T2 are 1/2 and 7/8 of it.
    pub lease_time: Duration,
}

impl PoolConfig {
    /// A pool with a /24-style mask and one-hour leases, no other options.
    pub fn new(range_start: Ipv4Addr, range_end: Ipv4Addr, subnet_mask: Ipv4Addr) -> Self {
        PoolConfig {
            range_start,
            range_end,
            subnet_mask,
            router: None,
            dns: Vec::new(),
            domain: None,
            ntp: Vec::new(),
            mtu: None,
            lease_time: Duration::from_secs(3600),
        }
    }

    /// Whether `ip` is in this pool's subnet.
    pub fn contains_subnet(&self, ip: Ipv4Addr) -> bool {
        let m = u32::from(self.subnet_mask);
        (u32::from(ip) & m) == (u32::from(self.range_start) & m)
    }

    /// Whether `ip` is inside the dynamic range.
    pub fn contains_range(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v >= u32::from(self.range_start) && v <= u32::from(self.range_end)
    }
}

/// DHCP mode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DhcpMode {
    /// ProxyDHCP beside the network's DHCP server: boot information only, no addresses.
    #[default]
    Proxy,
    /// Full DHCP server with these pools (the first pool whose subnet holds the
    /// server address serves directly attached clients; relays pick by giaddr).
    Authoritative {
        /// Address pools, one per subnet.
        pools: Vec<PoolConfig>,
    },
}

/// TFTP settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpConfig {
    /// Serve TFTP at all.
    pub enabled: bool,
    /// UDP port (69).
    pub port: u16,
    /// Largest blksize granted (RFC 2348, ≤ 65464).
    pub max_block_size: u16,
    /// Largest windowsize granted (RFC 7440).
    pub max_window_size: u16,
    /// Retransmission timeout when the client does not ask for one.
    pub timeout: Duration,
    /// Retransmissions before a transfer is abandoned.
    pub retries: u32,
    /// Concurrent transfers (more are refused with an ERROR).
    pub max_transfers: usize,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            enabled: true,
            port: 69,
            max_block_size: 65464,
            max_window_size: 64,
            timeout: Duration::from_secs(2),
            retries: 5,
            max_transfers: 1024,
        }
    }
}

/// Everything [`crate::run`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PxeConfig {
    /// Interface to serve on (sockets are bound to it with SO_BINDTODEVICE).
    pub interface: String,
    /// Proxy (default) or authoritative.
    pub mode: DhcpMode,
    /// Address to announce (siaddr, option 54, URLs); default: the interface's first IPv4.
    pub server_ip: Option<Ipv4Addr>,
    /// Directory holding the iPXE binaries (see [`crate::populate_tftp_root`]).
    pub tftp_root: PathBuf,
    /// Port of the api's HTTP server (used when `http_base` is `None`).
    pub http_port: u16,
    /// Base URL of the HTTP boot server; default `http://SERVER_IP:HTTP_PORT`.
    pub http_base: Option<String>,
    /// Unknown MACs get the discovery script and are reported to the directory.
    pub discovery: bool,
    /// iPXE binary names per architecture.
    pub boot_files: BootFiles,
    /// TFTP settings.
    pub tftp: TftpConfig,
    /// Answer DHCP on 67 (and 4011 in proxy mode).
    pub dhcp_enabled: bool,
}

impl PxeConfig {
    /// A proxy-mode configuration for `interface` with defaults.
    pub fn new(interface: impl Into<String>, tftp_root: impl Into<PathBuf>) -> Self {
        PxeConfig {
            interface: interface.into(),
            mode: DhcpMode::Proxy,
            server_ip: None,
            tftp_root: tftp_root.into(),
            http_port: 8080,
            http_base: None,
            discovery: false,
            boot_files: BootFiles::default(),
            tftp: TftpConfig::default(),
            dhcp_enabled: true,
        }
    }

    /// The HTTP base URL for a resolved server address.
    pub fn http_base_for(&self, server_ip: Ipv4Addr) -> String {
        match &self.http_base {
            Some(b) => b.trim_end_matches('/').to_string(),
            None => format!("http://{}:{}", server_ip, self.http_port),
        }
    }
}
